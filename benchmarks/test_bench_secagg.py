"""Secure aggregation (cyfed.secagg) timed beside a plain sum, same run, one core.

* ``mask``: one mask expansion + modular add (``MaskPRG.apply``: AES-256-CTR or
  ChaCha20 keystream by ``update_into`` into a reused buffer, ``np.add(out=)``)
  for 10,000- and 1,000,000-parameter uint32 vectors; report_secagg.py turns the
  times into GB/s of ring vector per core.  A client pays (#neighbours + 1) of
  these per round, the server one per surviving client plus those of the
  dropped clients' pairwise masks.
* ``round``: one ``secure_sum`` round (LocalComm: every client and the server in
  this process, so the time is the total work of all parties) beside
  ``np.sum(updates, axis=0)`` of the same (n, d) float64 updates: 100 clients x
  10,000 params over the complete graph (SecAgg) and 1,000 clients with SecAgg+
  neighbourhoods (k = 2 ceil(log2 n) = 20).
* ``scaling``: SecAgg+ rounds for n = 100, 300, 1000 (d = 10,000); the table
  divides by n log2 n.

    PYTHONPATH=src python -m pytest benchmarks/test_bench_secagg.py \\
        --benchmark-json=secagg.json -q
    python benchmarks/report_secagg.py secagg.json

``--smoke`` runs every benchmarked call once on small shapes and checks the
secure total against the float sum within the documented bound.
"""
import numpy as np
import pytest

from cyfed.comm import LocalComm
from cyfed.secagg import MaskPRG, SecureAggregation, quantization_step

D = 10_000
SMOKE = dict(n=12, d=300, mask_d=1000)


def updates(n, d, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, d))


def secure_round(sa, X, n_threads=None):
    n, d = X.shape
    ids = np.arange(n, dtype=np.int64)
    return sa.secure_sum(LocalComm(), (0,), ids, ids, dict(enumerate(X)), d)


def plain_sum(X, n_threads=None):
    return np.sum(X, axis=0)


@pytest.mark.parametrize("cipher", ["aes-ctr", "chacha20"])
@pytest.mark.parametrize("d", [10_000, 1_000_000])
def test_mask_expand_add(benchmark, timed, smoke, cipher, d):
    d = SMOKE["mask_d"] if smoke else d
    prg = MaskPRG(np.uint32, cipher)
    y = np.zeros(d, dtype=np.uint32)
    seed = bytes(range(32))
    benchmark.group = f"mask-d{d}"
    benchmark.extra_info.update(implementation=cipher, bytes=y.nbytes)
    timed(lambda n_threads: prg.apply(y, seed, +1), (), threads=1)


def check(result, X):
    n = X.shape[0]
    bound = n * quantization_step(1.0, 32, n)
    assert np.abs(result.total - X.sum(axis=0)).max() <= bound * (1 + 1e-9)


@pytest.mark.parametrize("n,neighbours", [(100, None), (1000, "log")],
                         ids=["100x10k-complete", "1000x10k-log"])
@pytest.mark.parametrize("impl", ["cyfed", "numpy"])
def test_round(benchmark, timed, smoke, n, neighbours, impl):
    n, d = (SMOKE["n"], SMOKE["d"]) if smoke else (n, D)
    X = updates(n, d)
    sa = SecureAggregation(neighbours=neighbours)
    benchmark.group = f"round-{'complete' if neighbours is None else 'log'}"
    benchmark.extra_info.update(implementation=impl, n=n, d=d, degree=sa.degree(n))
    if impl == "numpy":
        np.testing.assert_allclose(timed(plain_sum, (X,), threads=1), X.sum(axis=0))
    else:
        check(timed(secure_round, (sa, X), threads=1, min_rounds=3), X)


@pytest.mark.parametrize("n", [100, 300, 1000])
def test_scaling(benchmark, timed, smoke, n):
    n, d = (max(4, n // 25), SMOKE["d"]) if smoke else (n, D)
    X = updates(n, d)
    sa = SecureAggregation(neighbours="log")
    benchmark.group = "scaling-log"
    benchmark.extra_info.update(implementation="cyfed", n=n, d=d, degree=sa.degree(n))
    check(timed(secure_round, (sa, X), threads=1, min_rounds=3), X)
