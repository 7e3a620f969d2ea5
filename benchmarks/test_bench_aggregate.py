"""Benchmarks of the aggregation rules of ``cyfed.aggregate`` beside numpy/scipy baselines.

For every (K clients, d parameters) in {10, 100} x {100,000, 1,000,000}, float64,
and thread count t in (1, 2), one pytest-benchmark group per (rule, K, d, t),
e.g. ``median-100x1000000-float64-t1``, times

* ``cyfed``: the rule from ``cyfed.aggregate`` called with ``n_threads=t``
  (argument validation included in the time), and
* its baseline(s), with numpy's BLAS limited to t threads (threadpoolctl):

  ========================  ==========================================================
  ``weighted_mean(U, w)``   ``numpy-gemv``: ``w @ U / w.sum()`` (one read of U, the
                            memory-bound floor); ``numpy-average``:
                            ``np.average(U, axis=0, weights=w)``
  ``median(U)``             ``numpy``: ``np.median(U, axis=0)``
  ``trimmed_mean(U, 0.1)``  ``scipy``: ``scipy.stats.trim_mean(U, 0.1, axis=0)``
  ``krum(U, f)``            ``numpy``: Krum through the Gram matrix ``U @ U.T`` (syrk),
                            f = min((K - 3) // 2, K // 4)
  ``geometric_median(U)``   ``numpy``: the same 5 Weiszfeld iterations (from the mean;
                            ``maxiter=5, tol=0.0`` on the cyfed side)
  ========================  ==========================================================

``extra_info["implementation"]`` names the side.  The data of one (K, d) is made
once (standard normal rows, the last ``max(1, K // 10)`` of them scaled by 10 as
outliers, client weights in [10, 1000)) and dropped when the next shape starts:
the cases run shape by shape, and within a shape each group's cyfed and baseline
benchmarks back to back, so at most one 800 MB array (K = 100, d = 1,000,000) is
alive.  When every side of a group has run their results are compared (krum: the
same row; geometric median: relative 1e-6; the others to rounding), so a
benchmark never times a wrong answer.

The slow baselines (np.median, trim_mean and the numpy Weiszfeld loop take
1.5-2 s per call at 100 x 1,000,000, np.average 0.15 s) run with ``SLOW_ROUNDS``
(at least 3 rounds, no extra warm-up: the ``timed`` fixture's calibration call
warms up) instead of the fixture's default of at least 5 rounds plus a warm-up.

Full run (3-4 minutes on 2 cores, peak RSS ~2.5 GB: the 800 MB array
plus one (K, d) temporary of np.average / np.median / trim_mean / the numpy
Weiszfeld loop) and the table::

    cd /work/main
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_aggregate.py --benchmark-json=agg.json -q
    python benchmarks/report_aggregate.py agg.json

Smoke run for CI (d = 1,000, nothing timed, results cross-checked): add ``--smoke``.
"""
import dataclasses
import functools
import gc

import numpy as np
import pytest
import scipy.stats

from cyfed import aggregate
from report_aggregate import BASELINES

KS = (10, 100)
DS = (100_000, 1_000_000)
THREADS = (1, 2)
DTYPE = "float64"
#: In smoke mode every nominal d runs as this d (test ids keep the nominal d).
SMOKE_D = 1000
#: Trimmed fraction at each end (trimmed mean) and Weiszfeld iterations (geometric median).
BETA = 0.1
MAXITER = 5
#: ``timed`` overrides for the baselines that take seconds per call at the big shapes.
SLOW_ROUNDS = dict(min_rounds=3, warmup_rounds=0)

SLOW = {("weighted_mean", "numpy-average"), ("median", "numpy"), ("trimmed_mean", "scipy"),
        ("geometric_median", "numpy")}


def num_malicious(K):
    """Krum's f: as many as Krum tolerates (K > 2f + 2), at most a quarter of K."""
    return min((K - 3) // 2, K // 4)


def _group(func, K, d, threads):
    return f"{func}-{K}x{d}-{DTYPE}-t{threads}"


CASES = [pytest.param(K, d, func, impl, threads, id=f"{_group(func, K, d, threads)}-{impl}")
         for K in KS for d in DS for func in BASELINES for threads in THREADS
         for impl in ("cyfed",) + BASELINES[func]]


# ------------------------------------------------------------------------------- data

@dataclasses.dataclass(frozen=True)
class Updates:
    """One (K, d) problem: updates U (C-contiguous float64), weights w, Krum's f."""
    U: np.ndarray
    w: np.ndarray
    f: int
    n_outliers: int


def make_updates(K, d):
    rng = np.random.default_rng([K, d])
    U = rng.standard_normal((K, d))
    n_outliers = max(1, K // 10)
    U[K - n_outliers:] *= 10.0          # large-norm rows: what Krum is there to reject
    w = rng.integers(10, 1000, K).astype(np.float64)
    return Updates(U, w, num_malicious(K), n_outliers)


class OneShape:
    """The updates of one (K, d) at a time, plus the results of the group under way.

    ``get`` makes the data of a new shape only after dropping the previous one,
    so a single 800 MB array is alive at once (the cases run shape by shape)."""

    def __init__(self, smoke):
        self.smoke = smoke
        self.key = None
        self.value = None
        self.results = {}                 # group -> {implementation: result}

    def get(self, K, d):
        if self.smoke:
            d = SMOKE_D
        if self.key != (K, d):
            self.clear()
            self.value = make_updates(K, d)
            self.key = (K, d)
        return self.value

    def clear(self):
        self.key = self.value = None
        self.results.clear()
        gc.collect()


@pytest.fixture(scope="module")
def updates(smoke):
    store = OneShape(smoke)
    yield store
    store.clear()


# ---------------------------------------------------------------------------- baselines
# ``n_threads`` is ignored: the BLAS thread count is set around the call by threadpoolctl.

def numpy_gemv(U, w, *, n_threads=None):
    """``w @ U / w.sum()``: one read of U, the floor of any weighted mean."""
    return w @ U / w.sum()


def numpy_average(U, w, *, n_threads=None):
    return np.average(U, axis=0, weights=w)


def numpy_median(U, *, n_threads=None):
    return np.median(U, axis=0)


def scipy_trimmed_mean(U, beta, *, n_threads=None):
    return scipy.stats.trim_mean(U, beta, axis=0)


def numpy_krum(U, f, *, n_threads=None):
    """Krum (Blanchard et al. 2017) the numpy way: squared distances from the Gram
    matrix, each row scored by the sum of its max(1, K - f - 2) smallest
    off-diagonal distances, the row of least score returned."""
    K = U.shape[0]
    G = U @ U.T                          # syrk: one pass over U
    sq = np.diag(G)
    D = sq[:, None] + sq[None, :] - 2 * G
    np.fill_diagonal(D, np.inf)
    m = max(1, K - f - 2)
    scores = np.partition(D, m - 1, axis=1)[:, :m].sum(axis=1)
    return U[np.argmin(scores)]


def numpy_weiszfeld(U, maxiter, *, n_threads=None):
    """``maxiter`` Weiszfeld iterations from the mean (distances floored at 1e-6)."""
    v = U.mean(axis=0)
    for _ in range(maxiter):
        dist = np.linalg.norm(U - v, axis=1)
        b = 1.0 / np.maximum(1e-6, dist)
        v = b @ U / b.sum()
    return v


def _calls(func, impl, data):
    """(callable, args, timed overrides) of one side of a group."""
    U, w = data.U, data.w
    cyfed_calls = {
        "weighted_mean": (aggregate.weighted_mean, (U, w)),
        "median": (aggregate.median, (U,)),
        "trimmed_mean": (aggregate.trimmed_mean, (U, BETA)),
        "krum": (functools.partial(aggregate.krum, num_malicious=data.f), (U,)),
        "geometric_median": (functools.partial(aggregate.geometric_median, maxiter=MAXITER,
                                               tol=0.0), (U,)),
    }
    baseline_calls = {
        ("weighted_mean", "numpy-gemv"): (numpy_gemv, (U, w)),
        ("weighted_mean", "numpy-average"): (numpy_average, (U, w)),
        ("median", "numpy"): (numpy_median, (U,)),
        ("trimmed_mean", "scipy"): (scipy_trimmed_mean, (U, BETA)),
        ("krum", "numpy"): (functools.partial(numpy_krum, f=data.f), (U,)),
        ("geometric_median", "numpy"): (functools.partial(numpy_weiszfeld, maxiter=MAXITER),
                                        (U,)),
    }
    fn, args = cyfed_calls[func] if impl == "cyfed" else baseline_calls[func, impl]
    return fn, args, (SLOW_ROUNDS if (func, impl) in SLOW else {})


# ------------------------------------------------------------------------- cross-check

def _cross_check(store, group, func, impl, result, data):
    """Store this side's result; once every side of the group has run, compare them."""
    seen = store.results.setdefault(group, {})
    seen[impl] = np.asarray(result)
    sides = ("cyfed",) + BASELINES[func]
    if not set(sides) <= seen.keys():
        return
    results = store.results.pop(group)
    cy = results["cyfed"]
    scale = float(np.abs(data.U).max())
    for ref_name in BASELINES[func]:
        ref = results[ref_name]
        msg = f"{group}: cyfed vs {ref_name}"
        assert cy.shape == ref.shape == (data.U.shape[1],), f"{msg}: {cy.shape} vs {ref.shape}"
        if func == "krum":                               # the same row, bit for bit
            np.testing.assert_allclose(cy, ref, rtol=0, atol=0, err_msg=msg)
        elif func == "geometric_median":                 # iterates; sums in another order
            np.testing.assert_allclose(cy, ref, rtol=1e-6, atol=1e-9 * scale, err_msg=msg)
        else:                                            # rounding of K-term sums only
            np.testing.assert_allclose(cy, ref, rtol=1e-10, atol=1e-12 * scale, err_msg=msg)


# -------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("K, d, func, impl, threads", CASES)
def test_aggregate(benchmark, timed, updates, K, d, func, impl, threads):
    data = updates.get(K, d)
    group = _group(func, K, d, threads)
    benchmark.group = group
    benchmark.extra_info.update(implementation=impl, function=func, K=K, d=d, dtype=DTYPE,
                                threads=threads)
    fn, args, rounds = _calls(func, impl, data)
    result = timed(fn, args, threads=threads, **rounds)
    result = np.asarray(result)
    assert result.dtype == np.float64 and np.all(np.isfinite(result))
    if func == "krum":
        head = np.flatnonzero((data.U[:, :16] == result[:16]).all(axis=1))
        index = [i for i in head if np.array_equal(data.U[i], result)]
        assert len(index) == 1 and index[0] < K - data.n_outliers, \
            f"{impl} krum selected row {index} (outliers are the last {data.n_outliers})"
    _cross_check(updates, group, func, impl, result, data)
