"""Benchmarks of DP-SGD's per-example clipping: the clipped kernel beside the plain
kernel and a numpy reference.

For every loss (squared, logistic, softmax with k = 10), shape, dtype and thread
count the same parametrization times one gradient-sum pass of a prepared problem
(what `DistributedGD` runs every iteration; row norms cached, as there):

* ``plain``: ``Problem.sums`` -- the unclipped fused kernel;
* ``clipped``: ``Problem.clipped_sums`` -- the same pass, every example's gradient
  clipped to norm C (C = the median example norm, so about half are clipped);
* ``numpy``: per-example clipping in numpy without materialising per-example
  gradients (the r_i ||x_i|| trick, row norms precomputed too): margins, residuals,
  their norms, scale, then ``X.T @ r``.

Each (loss, shape, dtype, threads) is one pytest-benchmark group, e.g.
``logistic-100000x100-float32-t1-dp``; ``extra_info["implementation"]`` names the
side.  The clipped sums of cyfed and numpy are cross-checked (relative 1e-10 in
float64, 2e-4 in float32; the clipped counts may differ by the few examples
whose norm is C to rounding -- the median one is).  (1,000,000, 10) is in the narrow-X regime, where the
plain kernel takes its compile-time-d path and clipping the general path.

Full run (about a minute on 2 idle cores)::

    cd /work/main
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_dpsgd.py --benchmark-json=dp.json -q

Smoke run for CI (seconds, nothing timed): add ``--smoke``.
"""
import numpy as np
import pytest

from cyfed import gradients

LOSSES = ("squared", "logistic", "softmax")
SHAPES = ((100_000, 100), (1_000_000, 10))
DTYPES = ("float64", "float32")
THREADS = (1, 2)
IMPLS = ("plain", "clipped", "numpy")
RTOL = {"float64": 1e-10, "float32": 2e-4}

CASES = [pytest.param(loss, shape, dtype, threads, impl,
                      id=f"{loss}-{shape[0]}x{shape[1]}-{dtype}-t{threads}-{impl}")
         for shape in SHAPES for dtype in DTYPES for loss in LOSSES for threads in THREADS
         for impl in IMPLS]


def residuals(loss, X, y, labels, coef, b):
    """Per-row gradient multipliers r (n, k) of the loss, in X's dtype, and the loss sum."""
    z = X @ coef + b
    if loss == "squared":
        r = (2 * (z - y))[:, None]
        return r, float(np.sum((z - y) ** 2))
    if loss == "logistic":
        e = np.exp(-np.abs(z))                          # in (0, 1]: cannot overflow
        p = np.where(z >= 0, 1, e) / (1 + e)            # sigmoid(z) without overflow
        return (p - y)[:, None], float(np.sum(np.logaddexp(0, z) - y * z))
    rows = np.arange(len(X))
    z -= z.max(axis=1, keepdims=True)                   # stable logsumexp
    P = np.exp(z)
    s = P.sum(axis=1, keepdims=True)
    loss_sum = float(np.sum(np.log(s[:, 0]) - z[rows, labels]))
    P /= s
    P[rows, labels] -= 1
    return P, loss_sum


def numpy_clipped(loss, X, y, labels, coef, b, row_sq, clip_norm, *, n_threads=None):
    """(loss_sum, clipped grad sums (d*k + k,), n_clipped): the r_i ||x_i|| trick in numpy."""
    r, loss_sum = residuals(loss, X, y, labels, coef, b)
    norms = np.sqrt(np.einsum("ij,ij->i", r, r) * (row_sq + 1))
    clipped = norms > clip_norm
    r[clipped] *= (clip_norm / norms[clipped])[:, None]
    return loss_sum, np.r_[(X.T @ r).ravel(), r.sum(axis=0)], int(clipped.sum())


def cyfed_plain(problem, coef2d, b, out, *, n_threads):
    loss_sum, _ = problem.sums(coef2d, b, None, out, n_threads)
    return loss_sum, out.copy(), 0


def cyfed_clipped(problem, coef2d, b, out, clip_norm, *, n_threads):
    loss_sum, _, n_clipped = problem.clipped_sums(coef2d, b, None, out, n_threads, clip_norm)
    return loss_sum, out.copy(), n_clipped


def _setup(bench_data, loss, shape, dtype):
    """(generated problem, cyfed Problem with its row norms, coef2d, intercept, C), cached."""
    key = ("dp-setup", bench_data.shape(shape), np.dtype(dtype).name, loss)
    if key not in bench_data.results:
        p = bench_data.problem(loss, shape, dtype)
        prepared = gradients.prepare(loss, p.X, p.y)
        coef2d = p.coef.reshape(p.X.shape[1], -1)
        b = np.atleast_1d(p.intercept).astype(p.dtype)
        r, _ = residuals(loss, p.X, p.y, p.labels, p.coef, p.intercept)
        norms = np.sqrt(np.einsum("ij,ij->i", r, r) * (prepared.row_sq_norms + 1))
        bench_data.results[key] = (p, prepared, coef2d, b, float(np.median(norms)))
    return bench_data.results[key]


@pytest.mark.parametrize("loss, shape, dtype, threads, impl", CASES)
def test_clipping(benchmark, timed, bench_data, loss, shape, dtype, threads, impl):
    p, prepared, coef2d, b, clip_norm = _setup(bench_data, loss, shape, dtype)
    n, d = p.shape
    benchmark.group = f"{loss}-{n}x{d}-{dtype}-t{threads}-dp"
    benchmark.extra_info.update(implementation=impl, loss=loss, n=n, d=d, dtype=dtype,
                                threads=threads, clip_norm=clip_norm)
    out = np.empty(coef2d.size + coef2d.shape[1])
    if impl == "plain":
        result = timed(cyfed_plain, (prepared, coef2d, b, out), threads=threads)
    elif impl == "clipped":
        result = timed(cyfed_clipped, (prepared, coef2d, b, out, clip_norm), threads=threads)
    else:
        y = p.y if loss != "softmax" else None
        args = (loss, p.X, y, p.labels, p.coef, p.intercept,
                prepared.row_sq_norms.astype(p.dtype), p.dtype.type(clip_norm))
        result = timed(numpy_clipped, args, threads=threads)
    loss_sum, grad, n_clipped = result
    assert np.isfinite(loss_sum) and np.isfinite(grad).all()
    seen = bench_data.results.setdefault(("dp", loss, p.shape, dtype, threads), {})
    seen[impl] = result
    if {"clipped", "numpy"} <= seen.keys():
        (l1, g1, c1), (l2, g2, c2) = seen["clipped"], seen["numpy"]
        rtol = RTOL[dtype]
        assert abs(l1 - l2) <= rtol * abs(l2)
        assert np.linalg.norm(g1 - g2) <= rtol * np.linalg.norm(g2)
        assert abs(c1 - c2) <= max(2, n // 10_000)
        assert 0.4 * n < c1 < 0.6 * n
