"""Benchmarks of ``cyfed.loss_grad`` beside two-pass numpy references.

For every loss (squared, logistic, softmax with k = 10 classes), shape (n, d),
dtype (float64, float32) and thread count (1, 2) the same parametrization times

* ``cyfed``: ``cyfed.loss_grad(loss, X, y, coef, intercept, n_threads=t)`` with
  default arguments otherwise, so argument validation is part of the time
  (``extra_info["path"]`` records whether the kernel took its fused pass or its
  BLAS path, ``cyfed._losses.uses_blas``);
* ``numpy``: the plain-numpy reference of the same loss, value and gradients, in
  the same dtype, with numpy's BLAS limited to t threads (threadpoolctl);

and, for the squared loss at 1,000,000 x 100, a single ``X @ coef`` (one gemv,
one read of X): the floor a fused one-pass kernel can approach (target: cyfed
within 1.3x of it).

Each (loss, shape, dtype, threads) is one pytest-benchmark group, e.g.
``squared-1000000x100-float64-t1``, so the table shows cyfed beside numpy;
``extra_info["implementation"]`` names the side.  Both sides get the data in the
form they work on: cyfed the labels as floats in X's dtype (what it coerces y to
anyway), numpy the class labels as intp for fancy indexing.  When both sides of a
group have run, their values and gradients are compared (relative 1e-10 in
float64, 2e-4 in float32), so a benchmark never times a wrong answer.

Full run (about 2.5 minutes on 2 idle cores, peak RSS ~1.2 GB) and the table::

    cd /work/main
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_losses.py --benchmark-json=bench.json -q
    python benchmarks/report.py bench.json

Smoke run for CI (seconds, nothing timed): add ``--smoke``.
"""
import functools

import numpy as np
import pytest

import cyfed

LOSSES = ("squared", "logistic", "softmax")
#: Nominal (n, d).  Rounds are sized per benchmark by the ``timed`` fixture
#: (conftest.py): ~1 s of calls, at least 5 rounds, so ~5 for the 800 MB arrays.
SHAPES = ((2_000_000, 2), (1_000_000, 10), (1_000_000, 100), (100_000, 1_000), (10_000, 100))
DTYPES = ("float64", "float32")
THREADS = (1, 2)
GEMV_SHAPE = (1_000_000, 100)
#: Relative tolerances of the cyfed-vs-numpy cross-check.  cyfed accumulates in
#: float64 whatever the dtype, numpy's float32 BLAS in float32.
RTOL = {"float64": 1e-10, "float32": 2e-4}


def _case_id(loss, shape, dtype, threads):
    return f"{loss}-{shape[0]}x{shape[1]}-{dtype}-t{threads}"


CASES = [pytest.param(loss, shape, dtype, threads, id=_case_id(loss, shape, dtype, threads))
         for shape in SHAPES for dtype in DTYPES for loss in LOSSES for threads in THREADS]
GEMV_CASES = [pytest.param(GEMV_SHAPE, dtype, threads,
                           id=f"gemv-{GEMV_SHAPE[0]}x{GEMV_SHAPE[1]}-{dtype}-t{threads}")
              for dtype in DTYPES for threads in THREADS]


# -------------------------------------------------------------------- numpy references
# Straightforward two-pass numpy: margins with one BLAS call, pointwise work on
# the (n,) or (n, k) margins, gradient with a second BLAS call.  Everything stays
# in X's dtype (Python scalars are "weak" under NEP 50).  ``n_threads`` is
# ignored: the BLAS thread count is set around the call by threadpoolctl.

def numpy_squared(X, y, coef, b, *, n_threads=None):
    n = X.shape[0]
    r = X @ coef + b - y
    value = (r @ r) / n
    grad = (2 / n) * (X.T @ r)
    return float(value), grad, (2 / n) * r.sum()


def numpy_logistic(X, y, coef, b, *, n_threads=None):
    n = X.shape[0]
    z = X @ coef + b
    value = np.mean(np.logaddexp(0, z) - y * z)
    e = np.exp(-np.abs(z))                      # in (0, 1]: cannot overflow
    p = np.where(z >= 0, 1, e) / (1 + e)        # sigmoid(z) without overflow
    r = (p - y) / n
    return float(value), X.T @ r, r.sum()


def numpy_softmax(X, labels, W, b, *, n_threads=None):
    n = X.shape[0]
    rows = np.arange(n)
    Z = X @ W + b
    Z -= Z.max(axis=1, keepdims=True)           # stable logsumexp
    P = np.exp(Z)
    s = P.sum(axis=1, keepdims=True)
    value = np.mean(np.log(s[:, 0]) - Z[rows, labels])
    P /= s                                      # softmax probabilities
    P[rows, labels] -= 1                        # P - onehot(labels)
    P /= n
    return float(value), X.T @ P, P.sum(axis=0)


def numpy_gemv(X, y, coef, b, *, n_threads=None):
    """One ``X @ coef``: a single read of X, the floor of any one-pass kernel."""
    return X @ coef


NUMPY = {"squared": numpy_squared, "logistic": numpy_logistic, "softmax": numpy_softmax}


# ------------------------------------------------------------------------------ helpers

def _label(benchmark, impl, loss, problem, threads):
    n, d = problem.shape
    dtype = problem.dtype.name
    benchmark.group = f"{loss}-{n}x{d}-{dtype}-t{threads}"
    benchmark.extra_info.update(
        implementation=impl, loss=loss, n=n, d=d, dtype=dtype, threads=threads,
        n_classes=int(problem.coef.shape[1]) if problem.coef.ndim == 2 else 1)


def _cross_check(bench_data, key, impl, result, dtype):
    """Store this side's (value, grad, grad_intercept); compare with the other side."""
    seen = bench_data.results.setdefault(key, {})
    seen[impl] = result
    if {"cyfed", "numpy"} <= seen.keys():
        rtol = RTOL[dtype]
        (v1, g1, b1), (v2, g2, b2) = seen["cyfed"], seen["numpy"]
        assert abs(v1 - v2) <= rtol * max(abs(v2), 1.0), f"value: cyfed {v1!r} numpy {v2!r}"
        for name, a, ref in (("grad_coef", g1, g2), ("grad_intercept", b1, b2)):
            a = np.asarray(a, dtype=np.float64)
            ref = np.asarray(ref, dtype=np.float64)
            assert a.shape == ref.shape, f"{name}: shape {a.shape} vs numpy {ref.shape}"
            err = np.linalg.norm((a - ref).ravel())
            scale = max(np.linalg.norm(ref.ravel()), 1e-3)
            assert err <= rtol * scale, (f"{name}: |cyfed - numpy| = {err:.3g}, "
                                         f"|numpy| = {scale:.3g}")


# -------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("loss, shape, dtype, threads", CASES)
def test_cyfed(benchmark, timed, bench_data, loss, shape, dtype, threads):
    problem = bench_data.problem(loss, shape, dtype)
    _label(benchmark, "cyfed", loss, problem, threads)
    k = int(problem.coef.shape[1]) if problem.coef.ndim == 2 else 1
    blas = cyfed.gradients._kernels.uses_blas(cyfed.gradients.LOSSES[loss], *problem.shape, k,
                                              problem.dtype.itemsize)
    benchmark.extra_info["path"] = "blas" if blas else "fused"
    fn = functools.partial(cyfed.loss_grad, loss)
    args = (problem.X, problem.y, problem.coef, problem.intercept)
    result = timed(fn, args, threads=threads)
    value, grad, grad_b = result
    assert np.isfinite(value)
    assert grad.dtype == problem.dtype and grad.shape == problem.coef.shape
    _cross_check(bench_data, (loss, problem.shape, dtype, threads), "cyfed", result, dtype)


@pytest.mark.parametrize("loss, shape, dtype, threads", CASES)
def test_numpy(benchmark, timed, bench_data, loss, shape, dtype, threads):
    problem = bench_data.problem(loss, shape, dtype)
    _label(benchmark, "numpy", loss, problem, threads)
    y = problem.labels if loss == "softmax" else problem.y
    result = timed(NUMPY[loss], (problem.X, y, problem.coef, problem.intercept),
                   threads=threads)
    value, grad, grad_b = result
    assert np.isfinite(value)
    assert grad.dtype == problem.dtype, f"numpy reference left {dtype}: {grad.dtype}"
    _cross_check(bench_data, (loss, problem.shape, dtype, threads), "numpy", result, dtype)


@pytest.mark.parametrize("shape, dtype, threads", GEMV_CASES)
def test_numpy_gemv(benchmark, timed, bench_data, shape, dtype, threads):
    problem = bench_data.problem("squared", shape, dtype)
    _label(benchmark, "numpy-gemv", "squared", problem, threads)
    args = (problem.X, problem.y, problem.coef, problem.intercept)
    z = timed(numpy_gemv, args, threads=threads)
    assert z.shape == (problem.shape[0],) and z.dtype == problem.dtype
