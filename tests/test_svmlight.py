"""LIBSVM / svmlight reading (cyfed.io.load_svmlight, the compiled cyfed._svmlight
parser, io.load's CSR X and cyfed.data.load_shard's byte shares), against
scikit-learn's load_svmlight_file / dump_svmlight_file as the oracle."""
import bz2
import gzip
import lzma
import mmap
import tracemalloc

import numpy as np
import pytest
from scipy import sparse

from cyfed.comm import LocalComm, get_comm
from cyfed.data import load_shard
from cyfed.io import load, load_svmlight, save_svmlight

datasets = pytest.importorskip("sklearn.datasets")


class FakeComm(LocalComm):
    """Rank `rank` of `size` in one process (its collectives see this rank only)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def random_data(seed, n=200, d=30, density=0.3):
    """(X CSR with random sparsity and signed values of mixed magnitude, y in -1, 0, 1)."""
    rng = np.random.default_rng(seed)
    X = sparse.random(n, d, density=density, format="csr", random_state=rng)
    X.data = rng.standard_normal(X.nnz) * 10.0 ** rng.integers(-5, 6, X.nnz)
    return X, rng.integers(-1, 2, n).astype(float)


def dump(path, seed=0, *, zero_based=True, query_id=False, **shape):
    """A random LIBSVM file written by scikit-learn; returns its path."""
    X, y = random_data(seed, **shape)
    qid = np.sort(np.random.default_rng(seed).integers(1, 9, X.shape[0])) if query_id else None
    datasets.dump_svmlight_file(X, y, str(path), zero_based=zero_based, query_id=qid)
    return path


def write(path, text):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def assert_same(got, expected):
    """Equal X (shape, CSR arrays, values bit for bit), y and qid."""
    X, Xe = got[0], expected[0]
    assert isinstance(X, sparse.csr_matrix) and X.shape == Xe.shape and X.dtype == Xe.dtype
    np.testing.assert_array_equal(X.indptr, Xe.indptr)
    np.testing.assert_array_equal(X.indices, Xe.indices)
    np.testing.assert_array_equal(X.data, Xe.data)
    for a, b in zip(got[1:], expected[1:]):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def sklearn_load(path, **kwargs):
    return datasets.load_svmlight_file(str(path), **kwargs)


def located(path, line, column):
    return pytest.raises(ValueError, match=f"^{path}:{line}:{column}: ")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """A ~2.5 MB file: the parser cuts it into several chunks."""
    return dump(tmp_path_factory.mktemp("big") / "big.svm", 7, n=6000, d=200, density=0.1)


# -- against scikit-learn ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("zero_based", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_random_files_equal_scikit_learn(tmp_path, dtype, seed, zero_based, threads):
    path = dump(tmp_path / "r.svm", seed, zero_based=zero_based)
    got = load_svmlight(path, dtype=dtype, n_threads=threads)
    assert_same(got, sklearn_load(path, dtype=dtype))
    assert got[0].indices.dtype == got[0].indptr.dtype == np.int32


@pytest.mark.parametrize("threads", [1, 2])
def test_a_file_of_several_chunks(big_file, dtype, threads):
    assert_same(load_svmlight(big_file, dtype=dtype, n_threads=threads),
                sklearn_load(big_file, dtype=dtype))


def test_query_ids(tmp_path):
    path = dump(tmp_path / "q.svm", 3, query_id=True)
    got = load_svmlight(path, query_id=True)
    assert len(got) == 3 and got[2].dtype == np.int64
    assert_same(got, sklearn_load(path, query_id=True))
    assert_same(load_svmlight(path), sklearn_load(path))            # qid read and dropped
    X, y, qid = load_svmlight(write(tmp_path / "m.svm", "1 qid:-4 1:1\n2 2:1\n"), query_id=True)
    np.testing.assert_array_equal(qid, [-4, 0])                      # no qid: 0


@pytest.mark.parametrize("text", [
    "# a header\n# another\n1 1:0.5 3:2 # note\n\n   \n-1 2:-1e-3\n# between\n0 1:1.5E+2\n",
    "1 1:1 2:2#no space before the comment\n0 3:3\n",
    "+1 1:+1 2:-.5 3:5. 4:0 5:-0\n",                           # signs, dots, explicit zeros
    "1 1:1\n0 2:2",                                            # no trailing newline
    "1 1:1\r\n0 2:2\r\n\r\n# c\r\n3 1:4 3:0.25\r\n",           # CRLF
    "  2\t 1:1\t\t3:3  \n",                                     # tabs and blanks
    "1 1:0.1234567890123456789012345 2:1e-320 3:123456789012345678901234567890\n",  # strtod
    "1 1:3.141592653589793 2:2.718281828459045 3:3.4028234663852886e38 "
    "4:-2.2250738585072014e-308\n",
])
def test_hand_written_files_equal_scikit_learn(tmp_path, text, dtype):
    path = write(tmp_path / "h.svm", text)
    for zero_based in ("auto", True, False):
        assert_same(load_svmlight(path, dtype=dtype, zero_based=zero_based),
                    sklearn_load(path, dtype=dtype, zero_based=zero_based))


def test_zero_based_auto(tmp_path):
    zero = write(tmp_path / "z.svm", "1 0:5 2:1\n0 1:2\n")
    one = write(tmp_path / "o.svm", "1 1:5 3:1\n0 2:2\n")
    for path in (zero, one):
        X, _ = load_svmlight(path)
        np.testing.assert_array_equal(X.toarray(), [[5, 0, 1], [0, 2, 0]])
        assert_same((X, _), sklearn_load(path))
    with located(zero, 1, 3) as error:
        load_svmlight(zero, zero_based=False)
    assert "zero_based=False: LIBSVM indices are 1-based" in str(error.value)
    assert load_svmlight(one, zero_based=True)[0].shape == (2, 4)


def test_n_features(tmp_path):
    path = write(tmp_path / "n.svm", "1 1:1 2:2\n0\n1 3:1\n")
    for n, zero_based in ((5, "auto"), (3, "auto"), (4, True), (3, False)):
        assert_same(load_svmlight(path, n, zero_based=zero_based),
                    sklearn_load(path, n_features=n, zero_based=zero_based))
    with located(path, 3, 3) as error:                       # 1-based ("auto"): index 3 is
        load_svmlight(path, 2)                               # column 2, beyond 2 features
    assert "feature index 3 is out of range for n_features=2 (indices up to 2 if 1-based, " \
           "1 if 0-based)" in str(error.value)
    with located(path, 3, 3):
        load_svmlight(path, 3, zero_based=True)
    with located(path, 1, 7):
        load_svmlight(path, 1, zero_based=False)
    zero = write(tmp_path / "z.svm", "1 0:1\n1 3:1\n")      # "auto" decides 0-based after
    with located(zero, 2, 3) as error:                       # the parse: found by a rescan
        load_svmlight(zero, 3)
    assert "(0-based indices 0..2)" in str(error.value)
    with pytest.raises(TypeError, match="n_features must be an int"):
        load_svmlight(path, 2.0)


def test_indices_beyond_int32(tmp_path):
    path = write(tmp_path / "w.svm", "1 1:1 3000000000:2\n0 2:1\n")
    X, y = load_svmlight(path)
    assert X.indices.dtype == X.indptr.dtype == np.int64
    assert X.shape == (2, 3_000_000_000)
    np.testing.assert_array_equal(X.indices, [0, 2_999_999_999, 1])


@pytest.mark.parametrize("last", ["1:0.12345678901234567890123", "1:2.5", "1:7", "qid:7"])
def test_a_file_ending_at_a_page_boundary_without_newline(tmp_path, last):
    """The memory map ends with the file: the parser never reads past its last byte."""
    filler = "1 1:1\n"
    head = filler * ((mmap.PAGESIZE - len(last) - 3) // len(filler))
    text = head + "#" * (mmap.PAGESIZE - len(head) - len(last) - 3) + "\n0 " + last
    path = write(tmp_path / "page.svm", text)
    assert path.stat().st_size == mmap.PAGESIZE
    assert_same(load_svmlight(path), sklearn_load(path))


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "   "])
def test_files_without_rows(tmp_path, text):
    X, y = load_svmlight(write(tmp_path / "e.svm", text))
    assert X.shape == (0, 0) and y.shape == (0,)       # scikit-learn says (0, 1)


def test_rows_without_features(tmp_path):
    path = write(tmp_path / "l.svm", "1\n2 # c\n")
    X, y = load_svmlight(path)
    assert X.shape == (2, 0) and X.nnz == 0
    np.testing.assert_array_equal(y, [1, 2])


# -- byte ranges ------------------------------------------------------------------------------

def cut_points(n, parts, rng=None):
    if rng is None:
        return [n * k // parts for k in range(parts + 1)]
    return [0, *sorted(rng.integers(0, n, parts - 1)), n]


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("random_cuts", [False, True])
def test_byte_ranges_equal_scikit_learn_and_tile_the_file(tmp_path, parts, random_cuts):
    path = dump(tmp_path / "r.svm", parts, zero_based=False, n=60, d=12)
    whole = sklearn_load(path, zero_based=True)
    n = path.stat().st_size
    cuts = cut_points(n, parts, np.random.default_rng(parts) if random_cuts else None)
    got = []
    for a, b in zip(cuts, cuts[1:]):
        if b == a:             # length 0 means "to the end" (scikit-learn): no empty ranges
            continue
        kwargs = {"offset": a, "length": b - a}
        part = load_svmlight(path, 13, **kwargs)
        if part[1].size:       # scikit-learn reads the next line into a range without one
            assert_same(part, sklearn_load(path, n_features=13, **kwargs))
        got.append(part)
    assert_same((sparse.vstack([X for X, _ in got], format="csr"),
                 np.concatenate([y for _, y in got])), whole)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_byte_ranges_tile_files_with_comments_and_blank_lines(tmp_path, newline):
    lines = ["# head", "1 1:1", "", "2 2:2 # c", "   ", "# mid", "3 1:3 3:3", "4", "5 2:5"]
    path = write(tmp_path / "c.svm", newline.join(lines))             # no final newline
    whole = load_svmlight(path, 4, zero_based=True)
    n = path.stat().st_size
    for parts in range(1, 6):
        for cuts in (cut_points(n, parts), *[cut_points(n, parts, np.random.default_rng(s))
                                             for s in range(5)]):
            ranges = [load_svmlight(path, 4, offset=a, length=b - a)
                      for a, b in zip(cuts, cuts[1:]) if b > a]
            assert_same((sparse.vstack([X for X, _ in ranges], format="csr"),
                         np.concatenate([y for _, y in ranges])), whole)


def test_byte_range_past_the_end_is_empty(tmp_path):
    path = write(tmp_path / "r.svm", "1 1:1\n")
    X, y = load_svmlight(path, 2, offset=100, length=5)
    assert X.shape == (0, 2) and y.size == 0


def test_byte_range_arguments_are_checked(tmp_path):
    path = write(tmp_path / "r.svm", "1 1:1\n")
    with pytest.raises(ValueError, match="offset must be >= 0"):
        load_svmlight(path, offset=-1)
    with pytest.raises(TypeError, match="length must be an int"):
        load_svmlight(path, length=1.5)


# -- compressed files -------------------------------------------------------------------------

@pytest.mark.parametrize("suffix,compress", [(".gz", gzip.compress), (".bz2", bz2.compress),
                                              (".xz", lzma.compress)])
def test_compressed_files(tmp_path, suffix, compress):
    plain = dump(tmp_path / "p.svm", 5, n=80, d=10)
    path = write(tmp_path / f"p.svm{suffix}", compress(plain.read_bytes()))
    assert_same(load_svmlight(path), sklearn_load(plain))
    n = plain.stat().st_size
    for a, b in zip(cut_points(n, 3), cut_points(n, 3)[1:]):   # ranges of the decompressed text
        expected = sklearn_load(plain, n_features=10, offset=a, length=b - a)
        assert_same(load_svmlight(path, 10, offset=a, length=b - a), expected)
        if suffix != ".xz":                                    # scikit-learn seeks in .gz/.bz2
            assert_same(expected, sklearn_load(path, n_features=10, offset=a, length=b - a))


def test_corrupt_compressed_file_is_named(tmp_path):
    path = write(tmp_path / "junk.svm.gz", b"not gzip")
    with pytest.raises(ValueError, match="junk.svm.gz: cannot decompress as .gz"):
        load_svmlight(path)


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,line,column,match", [
    ("1 1:1\nyes 1:2\n", 2, 1, "label 'yes' is not a finite number"),
    ("inf 1:2\n", 1, 1, "label 'inf' is not a finite number"),
    ("1 qid:x 1:2\n", 1, 3, "qid in 'qid:x' is not an integer"),
    ("1 1:1\n1 1:2   3\n", 2, 9, "expected index:value, got '3'"),
    ("1 1:1\n1 -1:2\n", 2, 3, "feature index in '-1:2' must be an integer >= 0"),
    ("1 1:1\n\n1  x:2\n", 3, 4, "feature index in 'x:2' must be an integer >= 0"),
    ("1 :2\n", 1, 3, "must be an integer >= 0"),
    ("1 1:1 qid:3\n", 1, 7, "feature index in 'qid:3'"),     # qid only right after the label
    ("1 99999999999999999999:1\n", 1, 3, "must be an integer"),
    ("1 1:1\n1 2:1 2:3\n", 2, 7, "feature index 2 follows 2; indices must increase"),
    ("1 3:1 1:1\n", 1, 7, "feature index 1 follows 3"),
    ("# c\n1 1:1 2:abc # x\n", 2, 7, "value in '2:abc' is not a finite number"),
    ("1 1:nan\n", 1, 3, "value in '1:nan'"),
    ("1 1:inf\n", 1, 3, "value in '1:inf'"),
    ("1 1:0x10\n", 1, 3, "value in '1:0x10'"),
    ("1 1:1e999\n", 1, 3, "value in '1:1e999'"),
    ("1 1:\n", 1, 3, "value in '1:'"),
    ("1 1:1:2\n", 1, 3, "value in '1:1:2'"),
    ("1 1:1_0\n", 1, 3, "value in '1:1_0'"),
    ("1 1:1\r\n2 2:x\r\n", 2, 3, "value in '2:x'"),
    ("1 1:1\n\u00e9t\u00e9 1:2\n", 2, 1, "label '\u00e9t\u00e9'"),
    ("1 \u00e9:2 x\n", 1, 3, "must be an integer"),
    ("1 1:1 \u00e9 x:1\n", 1, 7, "expected index:value"),
])
def test_malformed_lines_are_located(tmp_path, text, line, column, match):
    path = write(tmp_path / "bad.svm", text)
    for threads in (1, 2):
        with located(path, line, column) as error:
            load_svmlight(path, n_threads=threads)
        assert match in str(error.value)


def test_float32_range_is_checked(tmp_path):
    path = write(tmp_path / "f.svm", "1 1:1e39\n")
    assert load_svmlight(path)[0].data[0] == 1e39
    with located(path, 1, 3) as error:
        load_svmlight(path, dtype=np.float32)
    assert "beyond float32's range" in str(error.value)


def test_an_error_deep_in_a_chunked_file_is_located(tmp_path, big_file):
    lines = big_file.read_bytes().split(b"\n")
    lines[5000] = lines[5000].replace(b":", b";", 1)
    path = write(tmp_path / "deep.svm", b"\n".join(lines))
    for threads in (1, 2):
        with located(path, 5001, len(lines[5000].split(b" ")[0]) + 2):
            load_svmlight(path, n_threads=threads)


def test_truncated_files_parse_like_scikit_learn_or_raise(tmp_path):
    text = dump(tmp_path / "t.svm", 11, n=6, d=5, zero_based=True).read_bytes()
    for cut in range(len(text)):
        path = write(tmp_path / "cut.svm", text[:cut])
        try:
            expected = sklearn_load(path, zero_based=True, n_features=5)
        except ValueError:
            with pytest.raises(ValueError, match=f"^{path}:1?[0-9]:[0-9]+: "):
                load_svmlight(path, 5, zero_based=True)
            continue
        assert_same(load_svmlight(path, 5, zero_based=True), expected)


def test_garbage_never_crashes(tmp_path):
    """Random byte edits of a valid file: a result or a located ValueError."""
    text = bytearray(dump(tmp_path / "g.svm", 12, n=20, d=6).read_bytes())
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"0123456789:.-+eE# \t\r\nqidx\x00\xff", dtype=np.uint8)
    for trial in range(300):
        edited = text.copy()
        for pos in rng.integers(0, len(edited), rng.integers(1, 6)):
            edited[pos] = rng.choice(alphabet)
        path = write(tmp_path / "garbage.svm", bytes(edited[:rng.integers(1, len(edited) + 1)]))
        try:
            X, y = load_svmlight(path, n_threads=1 + trial % 2)
        except ValueError as error:
            assert str(error).startswith(f"{path}:")
        else:
            assert X.shape[0] == y.shape[0] and np.isfinite(X.data).all()


# -- memory -----------------------------------------------------------------------------------

def test_memory_stays_within_the_result(big_file):
    """Peak traced allocations while parsing <= 1.3 x the arrays returned."""
    load_svmlight(big_file)                                  # warm imports and caches
    tracemalloc.start()
    try:
        X, y = load_svmlight(big_file, n_threads=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    result = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes + y.nbytes
    assert peak <= 1.3 * result, (peak, result)


# -- writing --------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("zero_based", [False, True])
def test_save_svmlight_round_trips(tmp_path, dtype, suffix, zero_based):
    X, y = random_data(8, n=40, d=6)
    X = X.astype(dtype)
    qid = np.arange(40) // 7
    path = save_svmlight(tmp_path / f"w.svm{suffix}", X, y, zero_based=zero_based,
                         query_id=qid)
    got = load_svmlight(path, 6, dtype=dtype, zero_based=zero_based, query_id=True)
    assert_same(got, (X, y, qid))
    if not suffix:
        assert_same(got, sklearn_load(path, n_features=6, dtype=dtype, zero_based=zero_based,
                                      query_id=True))
    dense = save_svmlight(tmp_path / "d.svm", X.toarray(), y)       # "auto" reads 1-based back
    np.testing.assert_array_equal(load_svmlight(dense, 6, dtype=dtype)[0].toarray(),
                                  X.toarray())


def test_save_svmlight_refuses_what_cannot_be_read(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        save_svmlight(tmp_path / "n.svm", np.array([[np.nan]]), [1.0])
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        save_svmlight(tmp_path / "n.svm", np.ones((2, 2)), [1.0])


# -- io.load and load_shard -------------------------------------------------------------------

def test_io_load_returns_csr_and_densifies_on_request(tmp_path, dtype):
    path = dump(tmp_path / "l.svm", 4, zero_based=False, n=50, d=8)
    Xe, ye = sklearn_load(path)
    X, y = load(path, dtype=dtype.name)
    assert isinstance(X, sparse.csr_matrix) and X.dtype == dtype and y.dtype == dtype
    np.testing.assert_array_equal(X.toarray(), Xe.toarray().astype(dtype))
    dense, _ = load(path, dtype=dtype.name, dense=True)
    assert isinstance(dense, np.ndarray) and dense.flags.c_contiguous
    np.testing.assert_array_equal(dense, X.toarray())
    with pytest.raises(ValueError, match="densifying 50 rows x 8 features"):
        load(path, dense=True, max_bytes=100)


@pytest.mark.parametrize("size", [2, 3, 7])
def test_io_load_ranks_read_byte_shares_that_tile_the_file(tmp_path, size):
    path = dump(tmp_path / "s.svm", 5, zero_based=False, n=40, d=9)
    zero = write(tmp_path / "z.svm", "1 1:1\n" * 20 + "0 0:1 5:2\n")   # index 0 on the last line
    for file, kwargs in ((path, {}), (path, {"n_features": 9, "zero_based": False}),
                         (zero, {})):
        whole = load(file, **kwargs)
        parts = [load(file, rank=r, size=size, **kwargs) for r in range(size)]
        assert all(X.shape[1] == whole.X.shape[1] for X, _ in parts)
        assert_same((sparse.vstack([X for X, _ in parts], format="csr"),
                     np.concatenate([y for _, y in parts])), whole)


def test_load_shard_reads_libsvm_byte_shares(tmp_path, big_file):
    whole = load_svmlight(big_file, zero_based=True)
    X, y = load_shard(big_file, dtype="float32")                 # LocalComm: the whole file
    assert X.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(X.toarray(), whole[0].toarray().astype(np.float32))
    n_features = whole[0].shape[1]
    for size in (2, 5):       # ranks simulated: give what they would agree on
        parts = [load_shard(big_file, comm=FakeComm(r, size), n_features=n_features,
                            zero_based=True) for r in range(size)]
        assert_same((sparse.vstack([X for X, _ in parts], format="csr"),
                     np.concatenate([y for _, y in parts])), whole)


@pytest.mark.parametrize("compressed", [True, False])
def test_load_shard_reads_csr_npz_rows(tmp_path, compressed):
    X, y = random_data(9, n=101, d=7)
    sparse.save_npz(tmp_path / "X.npz", X, compressed=compressed)
    np.save(tmp_path / "y.npy", y)
    for size in (1, 3, 4):
        parts = [load_shard(tmp_path / "X.npz", tmp_path / "y.npy", FakeComm(r, size))
                 for r in range(size)]
        assert all(isinstance(Xr, sparse.csr_matrix) for Xr, _ in parts)
        assert_same((sparse.vstack([Xr for Xr, _ in parts], format="csr"),
                     np.concatenate([yr for _, yr in parts])), (X, y))


def test_load_shard_refuses_other_npz(tmp_path):
    sparse.save_npz(tmp_path / "X.npz", sparse.random(5, 3, format="csc", random_state=0))
    np.save(tmp_path / "y.npy", np.zeros(5))
    with pytest.raises(ValueError, match="'csc'|b'csc'"):
        load_shard(tmp_path / "X.npz", tmp_path / "y.npy")
    sparse.save_npz(tmp_path / "X.npz", sparse.random(5, 3, format="csr", random_state=0))
    np.save(tmp_path / "y.npy", np.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        load_shard(tmp_path / "X.npz", tmp_path / "y.npy")


@pytest.mark.mpi
def test_load_shard_over_the_world_reads_this_ranks_bytes(tmp_path_factory):
    comm = get_comm()
    # every rank writes the same file in its own directory, then parses its share
    path = write(tmp_path_factory.mktemp("svm") / "w.svm",
                 "".join(f"{k % 3} {k % 5 + 1}:{k} {k % 5 + 7}:-{k}.5\n" for k in range(97))
                 + "# the end\n")
    X, y = load_shard(path, comm=comm)
    assert X.shape[1] == 11                  # agreed: 1-based, largest index 11 over all ranks
    text = path.read_bytes()
    n = len(text)
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == ord("\n")][:-2]
    lo, hi = comm.rank * n // comm.size, (comm.rank + 1) * n // comm.size
    mine = [k for k, s in enumerate(starts) if (lo < s <= hi) or (s == 0 and lo == 0 < hi)]
    np.testing.assert_array_equal(y, [k % 3 for k in mine])
    whole = load_svmlight(path)
    np.testing.assert_array_equal(X.toarray(), whole[0][mine].toarray())
    rows = comm.allgather_obj(mine)
    assert sum(rows, []) == list(range(97))          # the ranks' rows tile the file in order


@pytest.mark.mpi
def test_load_shard_error_on_one_rank_is_raised_on_every_rank(tmp_path_factory):
    path = write(tmp_path_factory.mktemp("bad") / "bad.svm", "1 1:1\n" * 50 + "1 2:x\n")
    with pytest.raises(ValueError, match=r"bad.svm:51:3: value in '2:x'"):
        load_shard(path, comm=get_comm())
