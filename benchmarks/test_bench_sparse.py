"""Benchmarks of cyfed's CSR kernels beside scipy.sparse.

X is a 1,000,000 x 50,000 CSR matrix, 75 nonzeros per row with power-law
(Zipf-like) column frequencies (`power_law_csr`), float64, labels 0/1 from a
logistic model.  For thread counts 1 and 2, group
``sparse-logistic-1000000x50000-nnz75-float64-t{threads}`` times

* ``cyfed``: ``cyfed.loss_grad("logistic", X, y, coef, intercept, n_threads=t)``,
  one fused pass over the nonzeros (argument validation included);
* ``scipy``: the plain two-pass scipy/numpy version, ``z = X @ coef + b``, the
  elementwise logistic loss and residual, then ``X.T @ r`` (goal: >= 2x cyfed's time);
* ``scipy-matvec``: a single ``X @ coef``, one read of X, the floor of any one-pass
  kernel (goal: cyfed <= 1.3x it);

and group ``sparse-hv-logistic-...-t{threads}`` a Hessian-vector product at a
fixed curvature (what each conjugate-gradient step of newton-cg costs):

* ``cyfed-hess_vec``: ``hessian.hess_vec_sums`` (one fused pass);
* ``scipy-hess_vec``: ``X.T @ (D * (X @ v + v_b))``.

scipy's sparse products are single-threaded whatever t; numpy's BLAS (unused
here) is limited to t threads by the ``timed`` fixture as everywhere.  When both
sides of a group have run, their results are compared (relative 1e-10).  The
best times and the ratios (``scipy/cyfed``, ``cyfed/matvec``; ``scipy/hess_vec``)
go to ``extra_info``.

Full run (about 35 seconds on 2 idle cores, ~17 of them generating X; peak RSS
~1.9 GB)::

    cd /work/main
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_sparse.py --benchmark-json=sparse.json -q

Smoke run for CI (257 rows, nothing timed, results cross-checked): add ``--smoke``.
"""
import functools

import numpy as np
import pytest
import scipy.sparse as sp

import cyfed
from cyfed import gradients, hessian

SHAPE = (1_000_000, 50_000)
NNZ_PER_ROW = 75
DTYPE = "float64"
THREADS = (1, 2)
RTOL = 1e-10
#: group kind -> (implementations, cross-checked pair, ratios (name, numerator, denominator))
GROUPS = {
    "sparse-logistic": (("cyfed", "scipy", "scipy-matvec"), ("cyfed", "scipy"),
                        (("scipy/cyfed", "scipy", "cyfed"),
                         ("cyfed/matvec", "cyfed", "scipy-matvec"))),
    "sparse-hv-logistic": (("cyfed-hess_vec", "scipy-hess_vec"),
                           ("cyfed-hess_vec", "scipy-hess_vec"),
                           (("scipy/hess_vec", "scipy-hess_vec", "cyfed-hess_vec"),)),
}


# ------------------------------------------------------------------------------- data

def power_law_csr(n, d, nnz_per_row, *, dtype=np.float64, exponent=1.1, seed=0):
    """A canonical (sorted, no duplicates) n x d CSR matrix with exactly nnz_per_row
    nonzeros per row, N(0, 1) values, and power-law column frequencies.

    Each row's columns are drawn one after another with P(rank r) ~ r^-exponent,
    r = 1..d (Zipf-like: at 1.1 and d = 50,000 the top 512 ranks take ~70% of the
    draws, like word frequencies), a repeat within the row being drawn again
    (sampling without replacement); a random permutation maps ranks to column
    indices, so the frequent columns are spread over the coefficient vector (as
    with hashed features).  Indices int32 when n * nnz_per_row fits, as scipy's.
    """
    if nnz_per_row > d:
        raise ValueError(f"nnz_per_row ({nnz_per_row}) must be <= d ({d})")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(np.arange(1, d + 1, dtype=np.float64) ** -exponent)

    def draw(size):
        return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1]), d - 1)

    ranks = draw((n, nnz_per_row)).astype(np.int32)
    todo = np.arange(n)                 # rows that may still hold a repeat
    while todo.size:
        part = np.sort(ranks[todo], axis=1)
        repeat = np.zeros(part.shape, dtype=bool)
        repeat[:, 1:] = part[:, 1:] == part[:, :-1]
        part[repeat] = draw(int(repeat.sum()))
        ranks[todo] = part
        todo = todo[repeat.any(axis=1)]
    index = np.int32 if n * nnz_per_row < 2**31 else np.int64
    cols = rng.permutation(d).astype(index)[ranks]
    cols.sort(axis=1)
    indptr = np.arange(0, n * nnz_per_row + 1, nnz_per_row, dtype=index)
    data = rng.standard_normal(n * nnz_per_row).astype(dtype)
    return sp.csr_matrix((data, cols.ravel(), indptr), shape=(n, d))


class Point:
    """The logistic problem on X: labels, coef, intercept, and for Hv the curvature at
    (coef, intercept) and a direction (v, vb)."""

    def __init__(self, n, d):
        rng = np.random.default_rng(11)
        self.X = power_law_csr(n, d, NNZ_PER_ROW, dtype=np.dtype(DTYPE))
        w_true = rng.standard_normal(d) / np.sqrt(NNZ_PER_ROW)
        z = self.X @ w_true
        self.y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(DTYPE)
        self.coef = (rng.standard_normal(d) / np.sqrt(NNZ_PER_ROW)).astype(DTYPE)
        self.intercept = -0.2
        self.prepared = gradients.prepare("logistic", self.X, self.y)
        self.b = np.array([self.intercept], dtype=DTYPE)
        self.curv = hessian.curvature(self.prepared, self.coef.reshape(d, 1), self.b, None, 1)
        self.v = rng.standard_normal((d, 1)).astype(DTYPE)
        self.vb = rng.standard_normal(1).astype(DTYPE)


@functools.lru_cache(maxsize=1)
def _point(shape):
    return Point(*shape)


# --------------------------------------------------------------------------- timed calls

def scipy_logistic(X, y, coef, b, *, n_threads=None):
    """Two passes over X: margins, the elementwise loss and residual, X.T @ r."""
    n = X.shape[0]
    z = X @ coef + b
    value = np.mean(np.logaddexp(0, z) - y * z)
    e = np.exp(-np.abs(z))
    r = (np.where(z >= 0, 1, e) / (1 + e) - y) / n
    return float(value), X.T @ r, r.sum()


def scipy_matvec(X, y, coef, b, *, n_threads=None):
    return X @ coef


def cyfed_hess_vec(point, *, n_threads):
    out = np.empty(point.v.size + 1)
    hessian.hess_vec_sums(point.prepared, point.curv, point.v, point.vb, None, out, n_threads)
    return out


def scipy_hess_vec(point, *, n_threads=None):
    h = point.curv * (point.X @ point.v[:, 0] + point.vb[0])
    return np.concatenate([point.X.T @ h, [h.sum()]])


# ------------------------------------------------------------------------------- helpers

_RESULTS = {}


def _label(benchmark, kind, impl, shape, threads):
    n, d = shape
    group = f"{kind}-{n}x{d}-nnz{NNZ_PER_ROW}-{DTYPE}-t{threads}"
    benchmark.group = group
    benchmark.extra_info.update(implementation=impl, n=n, d=d, nnz_per_row=NNZ_PER_ROW,
                                dtype=DTYPE, threads=threads)
    return group


def _record(benchmark, kind, group, impl, result):
    """Keep this side's result and best time; cross-check the pair; add the group's
    ratios to extra_info once all of it has run."""
    members, pair, ratios = GROUPS[kind]
    seen = _RESULTS.setdefault(group, {})
    seconds = None if benchmark.stats is None else benchmark.stats.stats.min
    seen[impl] = (result, seconds)
    if set(pair) <= seen.keys():
        got, want = (np.concatenate([np.atleast_1d(np.asarray(part, dtype=np.float64))
                                     for part in seen[name][0]]) for name in pair)
        err = np.linalg.norm(got - want)
        assert err <= RTOL * max(np.linalg.norm(want), 1e-3), f"{pair}: |difference| {err:.3g}"
    if set(members) <= seen.keys() and seconds is not None:
        benchmark.extra_info.update({name: seen[num][1] / seen[den][1]
                                     for name, num, den in ratios})


# -------------------------------------------------------------------------------- tests

LOSS_IMPLS = {"cyfed": functools.partial(cyfed.loss_grad, "logistic"),
              "scipy": scipy_logistic, "scipy-matvec": scipy_matvec}


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("impl", list(LOSS_IMPLS))
def test_loss_grad(benchmark, timed, bench_data, impl, threads):
    shape = bench_data.shape(SHAPE)
    point = _point(shape)
    group = _label(benchmark, "sparse-logistic", impl, shape, threads)
    result = timed(LOSS_IMPLS[impl], (point.X, point.y, point.coef, point.intercept),
                   threads=threads)
    if impl == "scipy-matvec":
        assert result.shape == (shape[0],)
        result = (result,)
    else:
        value, grad, _ = result
        assert np.isfinite(value) and grad.shape == (shape[1],)
    _record(benchmark, "sparse-logistic", group, impl, result)


HV_IMPLS = {"cyfed-hess_vec": cyfed_hess_vec, "scipy-hess_vec": scipy_hess_vec}


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("impl", list(HV_IMPLS))
def test_hess_vec(benchmark, timed, bench_data, impl, threads):
    shape = bench_data.shape(SHAPE)
    point = _point(shape)
    group = _label(benchmark, "sparse-hv-logistic", impl, shape, threads)
    result = timed(HV_IMPLS[impl], (point,), threads=threads)
    assert result.shape == (shape[1] + 1,)
    _record(benchmark, "sparse-hv-logistic", group, impl, (result,))
