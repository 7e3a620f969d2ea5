"""Readable numpy references for cyfed's losses, and comparison helpers.

Everything here is plain float64 numpy/scipy, written straight from the maths
in cyfed.gradients' docstring, so that the compiled kernels are checked against
something independent of them:

    z_i = x_i . coef + b                (z_i in R^k for softmax, coef of shape (d, k))
    squared   l_i = (z_i - y_i)^2                  dl/dz = 2 (z_i - y_i)
    logistic  l_i = logaddexp(0, z_i) - y_i z_i    dl/dz = sigmoid(z_i) - y_i
    softmax   l_i = logsumexp(z_i) - z_{i, y_i}    dl/dz = softmax(z_i) - onehot(y_i)

    value     = sum_i w_i l_i / sum_i w_i + (l2/2) ||coef||^2   (intercept not penalised)
    grad_coef = X^T (w * dl/dz) / sum_i w_i + l2 coef
    grad_b    = sum_i w_i dl/dz_i / sum_i w_i

Inputs are first cast to the working dtype (X's float dtype, float64 for
integer/bool X) and then to float64, so a float32 call is compared with the
exact maths on exactly the float32 numbers it received.
"""
from typing import NamedTuple, Optional

import numpy as np
from scipy.special import expit, log_softmax, logsumexp, softmax

# Absolute differences below these are underflow, not error (e.g. e^-708 for
# e^-800): float64 (rtol 1e-12) and float32 (rtol 1e-5) results.
UNDERFLOW = {1e-12: 1e-300, 1e-5: 1e-36}
LOSSES = ("squared", "logistic", "softmax")

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def working_dtype(X):
    X = np.asarray(X)
    return X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def as_working64(a, dtype):
    """`a` rounded to the working dtype, then held in float64 for the reference maths."""
    return None if a is None else np.asarray(a).astype(dtype).astype(np.float64)


class Reference(NamedTuple):
    value: float
    grad_coef: np.ndarray
    grad_intercept: Optional[np.ndarray]
    # Floating-point scale of each result: the reference formulas with every
    # term replaced by its absolute value (|z| + |y| for z - y, sigmoid + y for
    # sigmoid - y, ...), plus the effect of rounding the margins themselves in
    # the working dtype, i.e. the size of what an implementation adds and
    # subtracts.  Rounding errors live at rtol * this scale even where the
    # result itself cancels to ~0 (a perfect fit, a confidently right row).
    scale_value: float
    scale_coef: float
    scale_intercept: float


def loss_grad(loss, X, y, coef, intercept=None, *, l2=0.0, sample_weight=None, rows=None):
    """The reference (value, grad_coef, grad_intercept, scales) in float64."""
    dtype = working_dtype(X)
    X = as_working64(X, dtype)
    y = as_working64(y, dtype)
    coef = as_working64(coef, dtype)
    b = as_working64(intercept, dtype)
    w = np.ones(X.shape[0]) if sample_weight is None else as_working64(sample_weight, dtype)
    if rows is not None:
        rows = np.asarray(rows).astype(np.int64)
        X, y, w = X[rows], y[rows], w[rows]
    W = w.sum()

    z = X @ coef
    if b is not None:
        z = z + b
    # losses and dl/dz, and beside them the same formulas with every term made
    # non-negative (abs_*): the size of what is added up, for conditioned checks
    if loss == "squared":
        losses = (z - y) ** 2
        dz = 2.0 * (z - y)
        abs_losses = (np.abs(z) + np.abs(y)) ** 2
        abs_dz = 2.0 * (np.abs(z) + np.abs(y))
        curvature = 2.0 * np.ones_like(z)
    elif loss == "logistic":
        # logaddexp(0, z) - y z, written for y in {0, 1} without cancellation:
        # y = 0: softplus(z);  y = 1: softplus(-z).  Likewise sigmoid(z) - y.
        s = 1.0 - 2.0 * y                                 # +1 for y = 0, -1 for y = 1
        losses = np.logaddexp(0.0, s * z)
        dz = s * expit(s * z)
        abs_losses = np.logaddexp(0.0, z) + np.abs(y * z)
        abs_dz = expit(z) + np.abs(y)
        curvature = expit(z) * expit(-z)
    elif loss == "softmax":
        # logsumexp(z) - z_y = logsumexp(z - z_y), and softmax(z) - onehot(y),
        # with the label's own term split off so nothing cancels when the label
        # has the largest margin (loss log1p(sum of the others' e^(z_c - z_y))).
        labels = y.astype(np.int64)
        assert np.array_equal(labels, y), "softmax reference needs integer labels"
        rows_ = np.arange(len(labels))
        onehot = np.eye(coef.shape[1])[labels]
        z_label = z[rows_, labels]
        dlt = z - z_label[:, None]                        # dlt[i, y_i] = 0
        m = dlt.max(axis=1)                               # >= 0
        others = np.where(onehot == 1, 0.0, np.exp(dlt - m[:, None])).sum(axis=1)
        losses = np.where(m == 0, np.log1p(others), m + np.log(np.exp(-m) + others))
        p = softmax(z, axis=1)
        p_others = np.where(onehot == 1, 0.0, p)
        dz = p_others - onehot * p_others.sum(axis=1, keepdims=True)
        abs_losses = np.abs(logsumexp(z, axis=1)) + np.abs(z_label)
        abs_dz = p + onehot
        curvature = 2.0 * p                  # |d p_c / dz| summed over all z_j <= 2 p_c
    else:
        raise ValueError(loss)

    # The working dtype rounds each margin at rtol * |X| . |coef| (+ |b|); that
    # error reaches the loss through dl/dz and the gradient through d2l/dz2.
    zabs = np.abs(X) @ np.abs(coef) + (0.0 if b is None else np.abs(b))
    if loss == "softmax":
        zabs = zabs.max(axis=1, keepdims=True)
        abs_losses = abs_losses + (np.abs(dz) * zabs).sum(axis=1)
    else:
        abs_losses = abs_losses + np.abs(dz) * zabs
    abs_dz = abs_dz + curvature * zabs

    wdz = w[:, None] * dz if dz.ndim == 2 else w * dz
    value = float(w @ losses / W + 0.5 * l2 * np.sum(coef * coef))
    grad_coef = X.T @ wdz / W + l2 * coef
    grad_b = None if b is None else wdz.sum(axis=0) / W

    abs_wdz = w[:, None] * abs_dz if abs_dz.ndim == 2 else w * abs_dz
    scale_value = float(w @ abs_losses / W + 0.5 * l2 * np.sum(coef * coef))
    scale_coef = float(np.max(np.abs(X).T @ abs_wdz / W + l2 * np.abs(coef)))
    scale_b = float(np.max(abs_wdz.sum(axis=0) / W))
    return Reference(value, grad_coef, grad_b, scale_value, scale_coef, scale_b)


def margins(X, coef, intercept=None):
    dtype = working_dtype(X)
    z = as_working64(X, dtype) @ as_working64(coef, dtype)
    return z if intercept is None else z + as_working64(intercept, dtype)


def predict_proba(loss, X, coef, intercept=None):
    z = margins(X, coef, intercept)
    if loss == "logistic":
        p1 = expit(z)
        return np.column_stack([1.0 - p1, p1])
    return np.exp(log_softmax(z, axis=1))


def assert_close(got, ref, rtol, scale=None, err_msg=""):
    """|got - ref| <= rtol * scale elementwise, scale = max |ref| unless given.

    Comparing to the largest reference entry (not entry by entry) is the right
    yardstick for a vector of sums: each entry carries rounding of the size of
    the whole vector, not of itself.
    """
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"shape {got.shape} != reference shape {ref.shape} {err_msg}"
    assert np.isfinite(got).all(), f"non-finite result {got} {err_msg}"
    if scale is None:
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    floor = UNDERFLOW.get(rtol, 1e-300)
    assert err <= max(rtol * scale, floor), (
        f"max abs error {err:.3e} > rtol {rtol:.0e} * scale {scale:.3e} "
        f"(relative {err / max(scale, floor):.3e}) {err_msg}")


def assert_matches_reference(result, ref, rtol, dtype=None, *, conditioned=False, err_msg=""):
    """Check a loss_grad result (value, grad_coef, grad_intercept) against a Reference.

    By default each array is compared relative to its largest reference entry.
    With conditioned=True the yardstick is the larger of that and the sum of the
    absolute terms (Reference.scale_*): the honest one for data whose gradient
    cancels to ~0 (e.g. a well-fitted model with huge margins).
    """
    value, grad_coef, grad_b = result
    assert isinstance(value, float)

    def scale(ref_arr, cond):
        top = float(np.max(np.abs(ref_arr)))
        return max(top, cond) if conditioned else top

    assert_close(value, ref.value, rtol, scale(ref.value, ref.scale_value),
                 err_msg=f"value {err_msg}")
    assert_close(grad_coef, ref.grad_coef, rtol, scale(ref.grad_coef, ref.scale_coef),
                 err_msg=f"grad_coef {err_msg}")
    if ref.grad_intercept is None:
        assert grad_b is None
    else:
        assert grad_b is not None
        assert_close(np.reshape(grad_b, ref.grad_intercept.shape), ref.grad_intercept, rtol,
                     scale(ref.grad_intercept, ref.scale_intercept),
                     err_msg=f"grad_intercept {err_msg}")
    if dtype is not None:
        assert grad_coef.dtype == dtype
        if grad_b is not None:
            assert grad_b.dtype == dtype


# --------------------------------------------------------------------------- test data

def make_problem(loss, n, d, k=3, *, dtype=np.float64, seed=0, intercept=False,
                 weights=False):
    """A random (X, y, coef, intercept, sample_weight) problem in `dtype`.

    X is N(0.3, 1) (a non-zero mean so gradients do not cancel to nothing), the
    margins are O(1), y is a real target (squared), 0/1 (logistic) or a class id
    in 0..k-1 (softmax).  Weights are U(0, 2) with a few exact zeros.
    """
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) + 0.3).astype(dtype)
    if loss == "softmax":
        coef = rng.standard_normal((d, k)) / np.sqrt(d)
        y = rng.integers(0, k, size=n)
        b = rng.standard_normal(k) if intercept else None
    else:
        coef = rng.standard_normal(d) / np.sqrt(d)
        y = (rng.standard_normal(n) if loss == "squared"
             else rng.integers(0, 2, size=n))
        b = float(rng.standard_normal()) if intercept else None
    sw = None
    if weights:
        sw = rng.uniform(0.0, 2.0, size=n)
        sw[rng.random(n) < 0.05] = 0.0
        if sw.sum() == 0:
            sw[0] = 1.0
        sw = sw.astype(dtype)
    return X, y.astype(dtype), coef.astype(dtype), b, sw


class Interrupted(Exception):
    """Raised from a fit() callback to stop training as a killed run would."""


def solver_problem(loss, n=800, d=5, k=3, seed=0, scales=None):
    """(X, y, sample weights) of a noisy linear problem for the full-batch solvers:
    targets (squared), 0/1 labels (logistic) or k classes (softmax); columns of X
    multiplied by `scales` when given."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if scales is not None:
        X = X * scales
    z = X @ rng.standard_normal((d, k)) + 0.5 * rng.standard_normal((n, k))
    y = {"squared": z[:, 0] + 0.3, "logistic": (z[:, 0] > 0).astype(float),
         "softmax": z.argmax(1).astype(float)}[loss]
    return X, y, rng.uniform(0.5, 2.0, n)


def interrupted_and_resumed(make, data, path, every):
    """(full run, run stopped halfway and resumed from its checkpoint) of the trainer
    `make(**kwargs)` on `data` (the args of fit), checkpointing at `path` every
    `every` iterations."""
    full = make().fit(*data)
    stop_at = full.n_iter_ // 2 + 1

    def stop(record):
        if record["iter"] == stop_at:
            raise Interrupted

    try:
        make(checkpoint=path, checkpoint_every=every).fit(*data, callback=stop)
    except Interrupted:
        pass
    else:
        raise AssertionError(f"training never reached iteration {stop_at}")
    return full, make(checkpoint=path, resume=True).fit(*data)
