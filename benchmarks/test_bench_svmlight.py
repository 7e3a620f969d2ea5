"""Benchmark: parsing a ~100 MB LIBSVM file, ``cyfed.io.load_svmlight`` beside
scikit-learn's ``load_svmlight_file`` in the same run.

The file (made once per session, in a temporary directory) has 100,000 rows of
75 nonzeros each (increasing 1-based indices up to about 100,000; values with
at most five significant digits, ``-12.345``; labels 0/1): 7.5 million
``index:value`` tokens, about 105 MB.  One benchmark group, ``svmlight-parse``,
times

* ``cyfed-t1``, ``cyfed-t2``: ``load_svmlight(path, n_threads=t)`` (file opened,
  memory-mapped, parsed into a csr_matrix);
* ``sklearn``: ``sklearn.datasets.load_svmlight_file(path)`` (single-threaded).

The goal is cyfed-t2 at least 2x faster than sklearn.  Both results are compared
(CSR arrays and labels equal) before the next case runs, so a benchmark never
times a wrong answer.  Each case runs at least 3 rounds (sklearn takes ~5 s per
parse on one core of the development machine).

Full run (about a minute, plus ~20 s to write the file)::

    cd /work/main
    PYTHONPATH=src python -m pytest benchmarks/test_bench_svmlight.py -q \\
        --benchmark-columns=min,median,mean,rounds

Smoke run for CI (257 rows, nothing timed, results cross-checked): add ``--smoke``.
"""
import numpy as np
import pytest

from cyfed.io import load_svmlight

datasets = pytest.importorskip("sklearn.datasets")

ROWS, NNZ, D = 100_000, 75, 100_000
SMOKE_ROWS = 257
CASES = [("cyfed", 1), ("cyfed", 2), ("sklearn", 1)]
IMPLEMENTATIONS = {
    "cyfed": lambda path, n_threads: load_svmlight(path, n_threads=n_threads),
    "sklearn": lambda path, n_threads: datasets.load_svmlight_file(str(path)),
}
_results = {}


def write_file(path, rows, seed=0):
    """Rows of NNZ increasing 1-based indices (gaps drawn uniformly, so about 1..D)
    with short decimal values."""
    rng = np.random.default_rng(seed)
    indices = np.cumsum(rng.integers(1, 2 * D // NNZ, (rows, NNZ)), axis=1)
    values = (rng.integers(-99_999, 100_000, (rows, NNZ)) / 1000).astype(str)
    tokens = np.strings.add(np.strings.add(indices.astype(str), ":"), values)
    labels = rng.integers(0, 2, rows).astype(str)
    with open(path, "w") as f:
        for label, row in zip(labels.tolist(), tokens.tolist()):
            f.write(f"{label} {' '.join(row)}\n")
    return path


@pytest.fixture(scope="module")
def svm_file(tmp_path_factory, smoke):
    return write_file(tmp_path_factory.mktemp("svmlight") / "bench.svm",
                      SMOKE_ROWS if smoke else ROWS)


@pytest.mark.parametrize("impl,threads", CASES, ids=[f"{i}-t{t}" if i == "cyfed" else i
                                                     for i, t in CASES])
def test_parse(benchmark, timed, svm_file, impl, threads):
    benchmark.group = "svmlight-parse"
    benchmark.extra_info["implementation"] = impl
    benchmark.extra_info["file_bytes"] = svm_file.stat().st_size
    X, y = timed(IMPLEMENTATIONS[impl], (svm_file,), threads=threads, min_rounds=3,
                 warmup_rounds=0)
    _results[(impl, threads)] = X, y
    if len(_results) == len(CASES):
        (Xe, ye), *others = [_results.pop(case) for case in CASES[::-1]]
        for X, y in others:
            assert X.shape == Xe.shape and (X != Xe).nnz == 0
            np.testing.assert_array_equal(y, ye)
