"""Shared machinery of the cyfed benchmarks (pytest-benchmark).

Run the full suite (~7 minutes on 2 idle cores; unset the OpenBLAS tuning variables some machines
set, they slow numpy's BLAS down)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/ --benchmark-json=bench.json -q

and the CI smoke run (tiny shapes, every benchmarked function called once with
``--benchmark-disable`` semantics, results of cyfed and numpy cross-checked)::

    PYTHONPATH=src python -m pytest benchmarks/ --smoke -q
    # or: CYFED_BENCH_SMOKE=1 PYTHONPATH=src python -m pytest benchmarks/ -q

What lives here:

* ``--smoke`` / ``CYFED_BENCH_SMOKE=1`` and the ``smoke`` fixture; in smoke mode
  every nominal (n, d) runs as (257, d) (``DataCache.shape``), test ids keep
  the nominal shape.
* ``bench_data``: a session-wide cache of generated problems, keyed by
  (shape, dtype, loss); X is shared by the losses of one (shape, dtype). Arrays are
  made on first use and dropped as soon as the last test needing that
  (shape, dtype) has run (tests are reordered so they run back to back); an LRU
  byte budget (``MAX_CACHE_BYTES``) bounds what stays alive whatever the order.
* ``timed``: runs a callable under pytest-benchmark (pedantic, rounds sized to
  ~1 s, at least 5) with cyfed's ``n_threads=t`` *and* numpy's BLAS (and any
  OpenMP pool) limited to t threads by ``threadpoolctl.threadpool_limits(t)``, so
  both sides of a comparison use the same threads, and records how much CPU
  other processes took meanwhile (``foreign_cpu``; report.py flags busy rows).
  ``call_threaded`` does the same threading for a single untimed call.
"""
import collections
import dataclasses
import gc
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

#: Upper bound on the bytes of generated data kept alive at once (~3 GB).
MAX_CACHE_BYTES = 3 * 10**9
#: In smoke mode every shape keeps its d and gets this many rows (odd, so
#: vector-width remainders are exercised).
SMOKE_ROWS = 257
#: Number of classes of the softmax problems.
N_CLASSES = 10
#: Seconds of timed calls aimed at per benchmark (at least 5 rounds whatever it takes).
TARGET_S = 1.0

_CACHE_KEY = pytest.StashKey()
_HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- options

def pytest_addoption(parser):
    group = parser.getgroup("cyfed benchmarks")
    group.addoption(
        "--smoke", action="store_true", default=False,
        help="cyfed benchmarks: tiny shapes, run each benchmarked function once without "
             "timing (as --benchmark-disable), cross-check results; for CI. "
             "Also enabled by the environment variable CYFED_BENCH_SMOKE=1.")


def _smoke_requested(config):
    env = os.environ.get("CYFED_BENCH_SMOKE", "").strip().lower()
    return bool(config.getoption("--smoke", default=False)) or env not in ("", "0", "false", "no")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pytest-benchmark builds its session in a trylast pytest_configure and reads
    # these options there, so setting them here gives --benchmark-disable semantics.
    if _smoke_requested(config):
        config.option.benchmark_disable = True
        config.option.benchmark_enable = False
    config.stash[_CACHE_KEY] = DataCache(smoke=_smoke_requested(config))


def pytest_report_header(config):
    if _smoke_requested(config):
        return f"cyfed benchmarks: SMOKE mode (n -> {SMOKE_ROWS} rows, no timing)"
    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                     for i in threadpool_info() if i["user_api"] == "blas") or "none found"
    unset = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ]
    note = f"; WARNING: {', '.join(unset)} set, numpy may be slowed" if unset else ""
    return f"cyfed benchmarks: BLAS {blas}{note}"


# ------------------------------------------------------------------ ordering / freeing

def _params(item):
    callspec = getattr(item, "callspec", None)
    return callspec.params if callspec is not None else {}


def _data_key(item):
    """(nominal shape, dtype name) a benchmark's data belongs to; None for any
    item outside this directory (conftest hooks see the whole session)."""
    p = _params(item)
    if "shape" not in p or "dtype" not in p or _HERE not in Path(item.path).resolve().parents:
        return None
    return tuple(p["shape"]), np.dtype(p["dtype"]).name


def pytest_collection_modifyitems(session, config, items):
    """Run the benchmarks of one (shape, dtype) back to back, and within it those
    of one (loss, threads) group back to back (cyfed next to its numpy baseline),
    so each big array is generated once and freed before the next is made.
    Other items keep their order, ahead of the benchmarks."""
    block_order, group_order = {}, {}
    keys = []
    for index, item in enumerate(items):
        dk = _data_key(item)
        if dk is None:
            keys.append((-1, index))
            continue
        p = _params(item)
        gk = (dk, p.get("loss"), p.get("threads"))
        block_order.setdefault(dk, len(block_order))
        group_order.setdefault(gk, len(group_order))
        keys.append((block_order[dk], group_order[gk]))
    order = {id(item): k for item, k in zip(items, keys)}
    items.sort(key=lambda it: order[id(it)])


def pytest_runtest_teardown(item, nextitem):
    key = _data_key(item)
    if key is not None and (nextitem is None or _data_key(nextitem) != key):
        item.config.stash[_CACHE_KEY].drop(key)


# ------------------------------------------------------------------------ data cache

@dataclasses.dataclass(frozen=True)
class Problem:
    """One generated loss/gradient problem; every float array is in ``dtype``.

    ``y`` is what cyfed takes (targets, or 0/1 / class labels in X's dtype);
    ``labels`` is the same labels as an intp array (what a numpy softmax needs to
    index with), None for the squared loss.  ``intercept`` is a dtype scalar, or a
    (k,) array for softmax.
    """
    loss: str
    X: np.ndarray
    y: np.ndarray
    labels: "np.ndarray | None"
    coef: np.ndarray
    intercept: "np.generic | np.ndarray"

    @property
    def shape(self):
        return self.X.shape

    @property
    def dtype(self):
        return self.X.dtype


def _nbytes(obj):
    if isinstance(obj, Problem):  # X is accounted for under its own key
        return sum(a.nbytes for a in (obj.y, obj.labels, obj.coef) if a is not None)
    return obj.nbytes


class DataCache:
    """Lazily generated benchmark data, bounded by ``MAX_CACHE_BYTES`` (LRU)."""

    _LOSS_SEED = {"squared": 1, "logistic": 2, "softmax": 3}

    def __init__(self, smoke=False, max_bytes=MAX_CACHE_BYTES):
        self.smoke = smoke
        self.max_bytes = max_bytes
        self._store = collections.OrderedDict()   # key -> ndarray | Problem
        self.results = {}                         # (loss, shape, dtype, threads) -> {impl: result}

    # shapes ------------------------------------------------------------------
    def shape(self, shape):
        """The (n, d) actually run for a nominal (n, d)."""
        n, d = shape
        return (min(n, SMOKE_ROWS), d) if self.smoke else (n, d)

    # store -------------------------------------------------------------------
    def _get(self, key, make, nbytes):
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        self._evict(nbytes)
        value = make()
        self._store[key] = value
        return value

    def _evict(self, incoming):
        while self._store and self.nbytes + incoming > self.max_bytes:
            key, _ = self._store.popitem(last=False)
            if key[0] == "X":  # problems hold X too: drop them so X is really freed
                for other in [k for k in self._store if k[1:3] == key[1:3]]:
                    del self._store[other]
        gc.collect()

    @property
    def nbytes(self):
        return sum(_nbytes(v) for v in self._store.values())

    def drop(self, data_key):
        """Forget everything generated for a nominal (shape, dtype)."""
        shape, dtype = data_key
        real = self.shape(shape)
        for key in [k for k in self._store if k[1:3] == (real, dtype)]:
            del self._store[key]
        for key in [k for k in self.results if k[1:3] == (real, dtype)]:
            del self.results[key]
        gc.collect()

    # generators --------------------------------------------------------------
    @staticmethod
    def _rng(*parts):
        return np.random.default_rng([int(p) for p in parts])

    def X(self, shape, dtype):
        """Standard normal (n, d) design matrix, C-contiguous, made directly in dtype."""
        n, d = self.shape(shape)
        dtype = np.dtype(dtype)

        def make():
            return self._rng(n, d, dtype.itemsize).standard_normal((n, d), dtype=dtype)

        return self._get(("X", (n, d), dtype.name), make, n * d * dtype.itemsize)

    def problem(self, loss, shape, dtype):
        """Problem for (loss, shape, dtype); X shared with the other losses.

        The true model has N(0, 1/d) weights, so margins are O(1) at every d; the
        evaluation point ``coef`` is an independent draw, so gradients are O(1) too
        (no cancellation that would make float32 comparisons meaningless).
        """
        dtype = np.dtype(dtype)
        X = self.X(shape, dtype)
        n, d = X.shape
        k = N_CLASSES if loss == "softmax" else 1

        def make():
            rng = self._rng(n, d, dtype.itemsize, self._LOSS_SEED[loss])
            wshape = (d, k) if k > 1 else (d,)
            w_true = rng.standard_normal(wshape) / np.sqrt(d)
            coef = (rng.standard_normal(wshape) / np.sqrt(d)).astype(dtype)
            z = X @ w_true.astype(dtype)
            if loss == "squared":
                y = (z + 0.5 + 0.1 * rng.standard_normal(n, dtype=dtype)).astype(dtype)
                labels = None
                intercept = dtype.type(0.3)
            elif loss == "logistic":
                p1 = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
                labels = (rng.random(n) < p1).astype(np.intp)
                y = labels.astype(dtype)
                intercept = dtype.type(-0.2)
            elif loss == "softmax":
                # Gumbel-max draws from softmax(z): labels follow the model.
                gumbel = rng.gumbel(size=z.shape).astype(dtype)
                labels = np.argmax(z + gumbel, axis=1).astype(np.intp)
                y = labels.astype(dtype)
                intercept = np.linspace(-0.5, 0.5, k).astype(dtype)
            else:
                raise ValueError(f"unknown loss {loss!r}")
            return Problem(loss, X, y, labels, coef, intercept)

        nbytes = n * (dtype.itemsize + 8) + d * k * dtype.itemsize
        return self._get(("problem", (n, d), dtype.name, loss), make, nbytes)


@pytest.fixture(scope="session")
def smoke(pytestconfig):
    """True in smoke mode (--smoke or CYFED_BENCH_SMOKE=1)."""
    return _smoke_requested(pytestconfig)


@pytest.fixture(scope="session")
def bench_data(pytestconfig):
    """The session's DataCache (see the module docstring)."""
    return pytestconfig.stash[_CACHE_KEY]


# ------------------------------------------------------------------------- threading

def _blas_threads():
    return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})


def call_threaded(fn, threads, *args, **kwargs):
    """``fn(*args, n_threads=threads, **kwargs)`` with every BLAS/OpenMP pool that
    threadpoolctl controls limited to ``threads`` (one untimed call)."""
    with threadpool_limits(limits=threads):
        return fn(*args, n_threads=threads, **kwargs)


@pytest.fixture
def timed(benchmark):
    """``timed(fn, args, threads=t)`` benchmarks ``fn(*args, n_threads=t)`` in
    pedantic mode with cyfed given ``n_threads=t`` and numpy's BLAS limited to t
    threads for the whole measurement (the limit is entered once, outside the
    timed calls; callables that are not cyfed accept and ignore ``n_threads``).

    Rounds are sized from one untimed calibration call: ``warmup_rounds`` (1)
    warm-up, then at least ``min_rounds`` (5) rounds and about ``target_s`` (1 s)
    in all, at most ``max_rounds``; calls under ``min_round_s`` (5 ms) are
    repeated within a round (pytest-benchmark ``iterations``) so a round is long
    enough to time.  So the 800 MB problems get ~5 rounds and the small ones
    hundreds.  Returns fn's result (one plain call when benchmarks are disabled,
    as in smoke mode).  Records ``blas_threads`` and ``foreign_cpu`` (the share of
    the machine other processes used meanwhile) in ``extra_info``."""
    def run(fn, args, *, threads, target_s=TARGET_S, min_rounds=5, max_rounds=500,
            warmup_rounds=1, min_round_s=0.005):
        kwargs = {"n_threads": threads}
        with threadpool_limits(limits=threads):
            blas = _blas_threads()
            if blas and blas != [threads]:
                pytest.fail(f"threadpoolctl could not limit BLAS to {threads} threads: {blas}")
            if benchmark.disabled:
                return benchmark.pedantic(fn, args=args, kwargs=kwargs)
            start = time.perf_counter()
            fn(*args, **kwargs)
            once = max(time.perf_counter() - start, 1e-6)
            iterations = max(1, math.ceil(min_round_s / once))
            rounds = min(max_rounds, max(min_rounds, round(target_s / (once * iterations))))
            benchmark.extra_info.update(blas_threads=blas, rounds=rounds, iterations=iterations)
            before = _cpu_ticks()
            result = benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=rounds,
                                        warmup_rounds=warmup_rounds, iterations=iterations)
            benchmark.extra_info["foreign_cpu"] = _foreign_share(before, _cpu_ticks())
            return result
    return run


def _cpu_ticks():
    """(machine busy ticks, this process's ticks, wall seconds), or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        with open("/proc/self/stat") as fh:
            own = fh.read().rsplit(")", 1)[1].split()
        busy = sum(f[:3]) + sum(f[5:8])          # user nice system + irq softirq steal
        return busy, int(own[11]) + int(own[12]), time.perf_counter()
    except (OSError, ValueError, IndexError):
        return None


def _foreign_share(before, after):
    """Fraction of the machine's CPU used by *other* processes during a measurement
    (0 = quiet, 1 = every core busy elsewhere): other jobs on a small shared
    machine are the main source of noise, so report.py flags rows where this is
    high.  Clock-tick resolution (10 ms), so only a rough guide for short runs."""
    if before is None or after is None:
        return None
    wall = after[2] - before[2]
    if wall <= 0:
        return None
    foreign = (after[0] - before[0]) - (after[1] - before[1])
    hz = os.sysconf("SC_CLK_TCK")
    return round(max(foreign, 0) / hz / wall / (os.cpu_count() or 1), 3)
