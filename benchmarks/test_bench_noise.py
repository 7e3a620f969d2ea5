"""Distributed-DP noise shares: the compiled Philox4x32-10 + Box-Muller kernel
(``cyfed._noise.add_gaussian_rows``) against the numpy code it replaced (a
Philox bit generator whose counter is set per client, then ``standard_normal``).

Shapes (clients x columns): 1,000 x 612 (a FedAvg round of a small model) and
100 x 100,000; threads 1 and 2 (numpy's loop is single-threaded whatever the
thread count).  One pytest-benchmark group per (shape, threads); ``extra_info``
records the number of normals (ns per normal = mean / normals).  Results are
checked: the kernel's rows are standard normal to a loose bound, numpy's too.

    cd /work/main
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_noise.py --benchmark-json=noise.json -q

Smoke run for CI (257 rows, nothing timed): add ``--smoke``.
"""
import numpy as np
import pytest

from cyfed._simd import load

from conftest import SMOKE_ROWS

noise, LEVEL = load("_noise")
SHAPES = [(1000, 612), (100, 100_000)]
KEY = np.random.SeedSequence([0, 1, 2]).generate_state(2, np.uint64)


def numpy_shares(rows, client_ids, key, scale):
    """The former PrivateRounds._add_shares loop."""
    bits = np.random.Philox(key=key)
    normal, state = np.random.Generator(bits).standard_normal, bits.state
    for row, cid in zip(rows, client_ids):
        state["state"]["counter"] = np.array([0, 0, 0, cid], dtype=np.uint64)
        state["buffer_pos"] = 4
        bits.state = state
        row += normal(rows.shape[1]) * scale
    return rows


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("impl", ["cyfed", "numpy"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_noise(benchmark, timed, smoke, shape, impl, threads):
    m, w = (min(SMOKE_ROWS, shape[0]), min(shape[1], 1000)) if smoke else shape
    rows = np.zeros((m, w))
    ids = np.arange(m, dtype=np.int64) * 3 + 1
    scale = np.ones(w)
    benchmark.group = f"noise-{shape[0]}x{shape[1]}-t{threads}"
    benchmark.extra_info.update(implementation=impl, simd=LEVEL, normals=m * w,
                                shape=list(shape))
    if impl == "cyfed":
        def call(n_threads):
            noise.add_gaussian_rows(rows, ids, int(KEY[0]), int(KEY[1]), scale, n_threads)
            return rows
    else:
        def call(n_threads):
            return numpy_shares(rows, ids, KEY, scale)
    timed(call, (), threads=threads)
    fresh = np.zeros((m, w))                  # one call's rows: standard normal
    if impl == "cyfed":
        noise.add_gaussian_rows(fresh, ids, int(KEY[0]), int(KEY[1]), scale, threads)
    else:
        numpy_shares(fresh, ids, KEY, scale)
    assert abs(fresh.mean()) < 6 / np.sqrt(fresh.size)
    assert abs(fresh.var() - 1) < 6 * np.sqrt(2 / fresh.size)
