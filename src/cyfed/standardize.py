"""standardize=True: train a linear model on (x - mu) / s without copying X.

The standardised model theta' = [coef' (d, k) row-major, b' (k,)] is the raw model

    coef = coef' / s   (row j divided by s_j),      b = b' - mu^T coef,

so the kernels run on the raw rows at (coef, b), and the chain rule maps their
gradient sums (g, g_b) back:  dF/dcoef'_j = (g_j - mu_j g_b) / s_j,  dF/db' = g_b.
Both maps are linear: theta = S theta', and a gradient or Hessian-vector product
in raw coordinates becomes S^T of it.  mu and s are the features' means and
standard deviations over every rank's rows (unweighted, as scikit-learn's
StandardScaler; s = 1 for a constant feature).  Without an intercept the features
are only scaled (mu = 0 in the maps).  Either way the kernels see the raw rows,
so CSR data stays sparse.
"""
import copy

import numpy as np
from scipy import sparse

from cyfed.models import LinearModel, row_curvature

#: Rows per chunk of the moment passes (bounds the temporary to CHUNK x d).
CHUNK = 1 << 14


def feature_moments(comm, X, center):
    """Collective: (mu, s) of the columns of every rank's X, float64 (mu = 0 unless
    center; s is the standard deviation either way, as StandardScaler(with_mean=False)).

    Dense X: two passes over the local rows (mean, then squared deviations), one
    Allreduce each.  CSR X: the same two passes over the nonzeros only, a column's
    zeros adding (n - nnz_j) mu_j^2 (centring is folded into the intercept, so X
    stays sparse).
    """
    d = X.shape[1]
    first = np.zeros(d + 1)
    if sparse.issparse(X):
        first[:d] = np.asarray(X.sum(axis=0, dtype=np.float64)).ravel()
    else:
        for start in range(0, X.shape[0], CHUNK):
            first[:d] += X[start:start + CHUNK].sum(axis=0, dtype=np.float64)
    first[d] = X.shape[0]
    comm.allreduce_sum(first)
    n = first[d]
    mu = first[:d] / n if n > 0 else np.zeros(d)
    if sparse.issparse(X):      # the zeros of column j add (n_local - nnz_j) mu_j^2
        nnz = np.bincount(X.indices, minlength=d)
        second = np.bincount(X.indices, weights=np.square(X.data - mu[X.indices]), minlength=d)
        second += (X.shape[0] - nnz) * mu ** 2
    else:
        second = np.zeros(d)
        for start in range(0, X.shape[0], CHUNK):
            second += ((X[start:start + CHUNK] - mu) ** 2).sum(axis=0, dtype=np.float64)
    comm.allreduce_sum(second)
    variance = second / n if n > 0 else np.ones(d)
    s = np.sqrt(variance)
    s[~(s > 0)] = 1.0
    return (mu if center else np.zeros(d)), s


class Standardized:
    """A bound `LinearModel` seen in standardised coordinates (module docstring).

    Trainers use it as the model: parameters, `start`, `sums`, `gram` and the
    second-order methods are in theta' coordinates; `raw(theta')` gives the
    inner model's parameters for predictions and reporting.
    """

    def __init__(self, inner, mean, scale):
        if not isinstance(inner, LinearModel):
            raise TypeError("standardize=True needs a linear model (a loss name), got "
                            f"{type(inner).__name__}")
        self.inner, self.mean, self.scale = inner, mean, scale

    def __getattr__(self, name):            # d, k, n_params, frozen, predict, ...
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def raw(self, theta):
        """theta = S theta': the inner model's parameters (a new array)."""
        d, k = self.inner.d, self.inner.k
        out = np.array(theta, dtype=np.float64)
        coef = out[:d * k].reshape(d, k)
        coef /= self.scale[:, None]
        out[d * k:] -= self.mean @ coef
        return out

    def standardized(self, theta):
        """theta' = S^{-1} theta."""
        d, k = self.inner.d, self.inner.k
        out = np.array(theta, dtype=np.float64)
        out[d * k:] += self.mean @ out[:d * k].reshape(d, k)
        out[:d * k].reshape(d, k)[:] *= self.scale[:, None]
        return out

    def pull_back(self, grad):
        """grad <- S^T grad in place (raw gradient sums to theta' coordinates)."""
        d, k = self.inner.d, self.inner.k
        g = grad[:d * k].reshape(d, k)
        g -= np.outer(self.mean, grad[d * k:d * k + k])
        g /= self.scale[:, None]

    def start(self, coef_init=None, intercept_init=None):
        return self.standardized(self.inner.start(coef_init, intercept_init))

    def sums(self, data, theta, rows, out, n_threads, clip_norm=None):
        result = self.inner.sums(data, self.raw(theta), rows, out, n_threads, clip_norm)
        self.pull_back(out)
        return result

    def curvature(self, data, theta, n_threads):
        return self.inner.curvature(data, self.raw(theta), n_threads)

    def hess_vec_sums(self, data, curv, v, out, n_threads):
        """S^T H S v."""
        self.inner.hess_vec_sums(data, curv, self.raw(v), out, n_threads)
        self.pull_back(out)

    def hessian_sums(self, data, curv, out, n_threads):
        """S^T H S, S built column by column from `raw` (p is small for this solver)."""
        self.inner.hessian_sums(data, curv, out, n_threads)
        S = np.column_stack([self.raw(e) for e in np.eye(len(out))])
        out[:] = S.T @ out @ S

    def hessian_diag_sums(self, data, curv, out):
        """The diagonal of S^T H S as if every standardised feature were independent of
        the curvature: sum_i D_i for every coefficient and the intercept (TRON only
        preconditions with it)."""
        d, k = self.inner.d, self.inner.k
        total = row_curvature(data, curv).sum(axis=0)
        out[:d * k] = np.tile(total, d)
        out[d * k:] = total if self.inner.fit_intercept else 0.0

    def gram(self, data):
        gram_model, gram_data, lipschitz = self.inner.gram(data)
        return Standardized(gram_model, self.mean, self.scale), gram_data, lipschitz

    def bind(self, d, k):
        bound = copy.copy(self)
        bound.inner = self.inner.bind(d, k)
        return bound
