"""Benchmarks of ``cyfed.compress`` beside numpy baselines, one thread.

At d = 1,000,000 (standard normal, float32 and float64), one pytest-benchmark
group per (case, dtype), e.g. ``roundtrip-QSGD15-float32``, times

* ``roundtrip-<compressor>``: ``decode(encode(x))`` on the cyfed side (validation,
  payload and output allocation included); goal >= 1 GB/s of input per core for
  all but PowerSGD (rank 4 on x viewed as 1000 x 1000, warm-started).  QSGD also
  runs ``numpy``: the same quantiser written in numpy (one int8 code per
  coordinate, no bit packing), in the same group.
* ``topk-select``: ``TopK(k).encode(x)`` (k = 1% of d: selection, values, payload)
  against ``numpy``: ``np.argpartition(np.abs(x), -k)[-k:]`` plus gathering the
  values; goal >= 5x faster.

``extra_info`` records implementation, case, dtype, d and the input bytes (for
GB/s).  Results are cross-checked (same top-k set; QSGD round trips on the
quantisation grid).  Full run and the table::

    cd /work/main
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_compress.py --benchmark-json=compress.json -q
    python benchmarks/report_compress.py compress.json

Smoke run for CI (d = 1,024, nothing timed): add ``--smoke``.
"""
import numpy as np
import pytest

from cyfed import compress

D = 1_000_000
SMOKE_D = 1024          # a square, for PowerSGD
DTYPES = ("float32", "float64")
K_FRACTION = 0.01
QSGD_LEVELS = 15


def compressors(d):
    """{case name: compressor} for a length-d vector."""
    side = int(round(np.sqrt(d)))
    return {"FP16": compress.FP16(), "BF16": compress.BF16(),
            f"QSGD{QSGD_LEVELS}": compress.QSGD(QSGD_LEVELS),
            "TopK1%": compress.TopK(K_FRACTION), "RandK1%": compress.RandK(K_FRACTION),
            "ScaledSign": compress.ScaledSign(),
            "PowerSGD4": compress.PowerSGD(4, shape=(side, d // side))}


NAMES = list(compressors(D))
CASES = ([pytest.param(f"roundtrip-{name}", impl, id=f"roundtrip-{name}-{impl}")
          for name in NAMES for impl in (("cyfed", "numpy") if name.startswith("QSGD")
                                         else ("cyfed",))]
         + [pytest.param("topk-select", impl, id=f"topk-select-{impl}")
            for impl in ("cyfed", "numpy")])


@pytest.fixture(scope="module")
def vectors(smoke):
    d = SMOKE_D if smoke else D
    rng = np.random.default_rng(0)
    return {dtype: rng.standard_normal(d).astype(dtype) for dtype in DTYPES}


def numpy_qsgd_roundtrip(x, levels, rng):
    """QSGD in numpy: norm, stochastic rounding, int8 codes, dequantised."""
    norm = np.linalg.norm(x)
    r = np.abs(x) * (levels / norm)
    level = np.floor(r)
    level += rng.random(x.size, dtype=x.dtype) < r - level
    codes = (np.copysign(level, x)).astype(np.int8)
    return codes.astype(x.dtype) * x.dtype.type(norm / levels)


def numpy_topk(x, k):
    idx = np.argpartition(np.abs(x), -k)[-k:]
    return idx, x[idx]


def _call(case, impl, x):
    """A callable taking n_threads (ignored: everything here is one thread)."""
    k = max(1, round(K_FRACTION * x.size))
    if case == "topk-select":
        if impl == "cyfed":
            topk = compress.TopK(k)
            return lambda n_threads: topk.encode(x)
        return lambda n_threads: numpy_topk(x, k)
    comp = compressors(x.size)[case.split("-", 1)[1]]
    if impl == "numpy":
        rng = np.random.default_rng(1)
        return lambda n_threads: numpy_qsgd_roundtrip(x, comp.levels, rng)
    return lambda n_threads: comp.decode(comp.encode(x))


def _check(case, impl, x, result):
    k = max(1, round(K_FRACTION * x.size))
    if case == "topk-select":
        if impl == "cyfed":
            idx = np.frombuffer(result[compress.HEADER_NBYTES + k * x.itemsize:].tobytes(),
                                np.uint32)
        else:
            idx = np.sort(result[0])
        np.testing.assert_array_equal(idx, np.sort(numpy_topk(x, k)[0]))
        return
    assert result.dtype == x.dtype and result.shape == x.shape
    if case.startswith("roundtrip-QSGD"):
        unit = np.linalg.norm(x.astype(np.float64)) / QSGD_LEVELS
        np.testing.assert_allclose(result / unit, np.round(result / unit), atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, impl", CASES)
def test_compress(benchmark, timed, vectors, case, impl, dtype):
    x = vectors[dtype]
    benchmark.group = f"{case}-{dtype}"
    benchmark.extra_info.update(implementation=impl, case=case, dtype=dtype, d=x.size,
                                nbytes=x.nbytes)
    result = timed(_call(case, impl, x), (), threads=1)
    _check(case, impl, x, result)
