"""Data loading (cyfed.io): every format against hand-written files, rank slicing,
located errors, clients on disk and the built-in data sets; class-name labels,
missing values, delimiters, compression and LIBSVM indexing."""
import bz2
import copy
import gzip
import lzma
import pickle
import subprocess
import sys

import numpy as np
import pytest
from scipy import sparse

from cyfed.data import make_fedprox_synthetic, shard_rows
from cyfed.io import (BUILTINS, LabeledData, builtin, load, load_clients, load_xy, relabel,
                      save_clients)

# Five rows, three features and a label (last column) in every format below.
TABLE = np.array([[1.0, 2.0, 3.0, 0.0],
                  [4.0, 5.0, 6.0, 1.0],
                  [7.0, 8.0, 9.0, 0.0],
                  [1.5, -2.5, 0.0, 1.0],
                  [0.0, 0.0, 1e3, 2.0]])
X_TABLE, Y_TABLE = TABLE[:, :3], TABLE[:, 3]

CSV_TEXT = """a,b,c,target
1,2,3,0
4,5,6,1

7,8,9,0
1.5,-2.5,0,1
0,0,1e3,2
"""
SVM_TEXT = """# label index:value ... (1-based)
0 1:1 2:2 3:3
1 1:4 2:5 3:6   # trailing comment

0 1:7 2:8 3:9
1 1:1.5 2:-2.5
2 3:1e3
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(params=["npy", "npz", "csv", "svm"])
def table_file(request, tmp_path):
    """TABLE written in one of the formats load reads."""
    path = tmp_path / f"table.{request.param}"
    if request.param == "npy":
        np.save(path, TABLE)
    elif request.param == "npz":
        np.savez(path, X=X_TABLE, y=Y_TABLE)
    else:
        path.write_text(CSV_TEXT if request.param == "csv" else SVM_TEXT)
    return path


def dense(X):
    """X as a dense array (LIBSVM files load as CSR)."""
    return X.toarray() if sparse.issparse(X) else X


def located(path, line, column):
    """pytest.raises for a ValueError reported at path:line:column."""
    return pytest.raises(ValueError, match=f"^{path}:{line}:{column}: ")


# -- every format ----------------------------------------------------------------------------

def test_every_format_gives_the_known_values(table_file, dtype):
    X, y = load(table_file, dtype=dtype.name)
    assert X.dtype == dtype and y.dtype == dtype
    assert sparse.isspmatrix_csr(X) if table_file.suffix == ".svm" else X.flags.c_contiguous
    assert X.shape == (5, 3) and y.shape == (5,)
    np.testing.assert_array_equal(dense(X), X_TABLE.astype(dtype))
    np.testing.assert_array_equal(y, Y_TABLE.astype(dtype))


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_ranks_get_the_shard_rows_and_together_all_rows(table_file, size):
    parts = [load(table_file, rank=r, size=size) for r in range(size)]
    for rank, (X, y) in enumerate(parts):
        if table_file.suffix == ".svm":             # split by bytes: checked as a whole
            break
        rows = shard_rows(5, rank, size)
        np.testing.assert_array_equal(X, X_TABLE[rows])
        np.testing.assert_array_equal(y, Y_TABLE[rows])
    np.testing.assert_array_equal(np.concatenate([dense(X) for X, _ in parts]), X_TABLE)
    np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), Y_TABLE)


def test_bad_rank_is_refused(table_file):
    with pytest.raises(ValueError, match="rank"):
        load(table_file, rank=2, size=2)


@pytest.mark.parametrize("dtype", ["int32", "float16", None, "nonsense"])
def test_only_float32_and_float64(table_file, dtype):
    with pytest.raises(ValueError, match="float32' or 'float64"):
        load(table_file, dtype=dtype)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load(tmp_path / "nope.csv")


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1\x15\x04\x15\x00\x00\xff\xfePAR1")        # not delimited text
    with pytest.raises(ValueError, match=r"'\.parquet'.*\.npy.*\.csv.*\.libsvm.*\.gz"):
        load(path)


# -- .npy / .npz ----------------------------------------------------------------------------

def test_npy_is_memory_mapped(tmp_path, monkeypatch):
    path = tmp_path / "t.npy"
    np.save(path, TABLE)
    modes = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: modes.append(k.get("mmap_mode"))
                        or real_load(*a, **k))
    load(path, rank=1, size=2)
    assert modes == ["r"]


@pytest.mark.parametrize("label", [0, -4, 2, -2])
def test_npy_label_column_by_index(tmp_path, label):
    path = tmp_path / "t.npy"
    table = np.arange(20).reshape(5, 4)
    np.save(path, table)                                # integers become floats
    X, y = load(path, label=label)
    assert X.dtype == y.dtype == np.float64
    np.testing.assert_array_equal(y, table[:, label])
    np.testing.assert_array_equal(X, np.delete(table, label % 4, axis=1))


@pytest.mark.parametrize("array,match", [(np.arange(4.0), "2-d"),
                                         (np.arange(4.0).reshape(4, 1), "at least 2 columns"),
                                         (np.array([["a", "b"]]), "real numbers")])
def test_npy_shape_and_dtype_errors_name_the_file(tmp_path, array, match):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=f"bad.npy.*{match}"):
        load(path)


def test_npy_label_out_of_range_and_name_without_header(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, TABLE)
    with pytest.raises(ValueError, match="out of range"):
        load(path, label=4)
    with pytest.raises(ValueError, match="no header"):
        load(path, label="target")


def test_corrupt_npy_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="junk.npy: cannot read"):
        load(write(tmp_path, "junk.npy", "not an array"))


def test_npz_missing_key_is_named(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, X=X_TABLE, labels=Y_TABLE)
    with pytest.raises(ValueError, match="no array 'y'.*'labels'"):
        load(path)


def test_npz_shapes_must_agree(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, X=X_TABLE, y=Y_TABLE[:4])
    with pytest.raises(ValueError, match=r"y must have shape \(5,\)"):
        load(path)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_load_xy_reads_the_rank_rows_of_two_files(tmp_path, size, dtype):
    np.save(tmp_path / "X.npy", X_TABLE)
    np.save(tmp_path / "y.npy", Y_TABLE.astype(np.int64))
    for rank in range(size):
        X, y = load_xy(tmp_path / "X.npy", tmp_path / "y.npy", dtype=dtype.name,
                       rank=rank, size=size)
        rows = shard_rows(5, rank, size)
        assert X.dtype == dtype and y.dtype == dtype
        np.testing.assert_array_equal(X, X_TABLE[rows])
        np.testing.assert_array_equal(y, Y_TABLE[rows])


# -- CSV -------------------------------------------------------------------------------------

def test_csv_label_by_name_and_negative_index(tmp_path):
    path = write(tmp_path, "t.csv", CSV_TEXT)
    X, y = load(path, label="a")
    np.testing.assert_array_equal(y, TABLE[:, 0])
    np.testing.assert_array_equal(X, TABLE[:, 1:])
    X, y = load(path, label=-3)
    np.testing.assert_array_equal(y, TABLE[:, 1])
    np.testing.assert_array_equal(X, TABLE[:, [0, 2, 3]])


def test_csv_unknown_column_name_lists_the_columns(tmp_path):
    with pytest.raises(ValueError, match="no column named 'label'; columns: a, b, c, target"):
        load(write(tmp_path, "t.csv", CSV_TEXT), label="label")


def test_csv_without_header_is_detected(tmp_path):
    path = write(tmp_path, "t.csv", CSV_TEXT.split("\n", 1)[1])
    X, y = load(path)
    np.testing.assert_array_equal(X, X_TABLE)
    with pytest.raises(ValueError, match="no header"):
        load(path, label="target")


def test_csv_header_forced(tmp_path):
    path = write(tmp_path, "t.csv", "1,2,3\n4,5,6\n7,8,9\n")     # numeric "names"
    X, y = load(path, header=True, label="2")
    np.testing.assert_array_equal(X, [[4, 6], [7, 9]])
    np.testing.assert_array_equal(y, [5, 8])
    X, _ = load(path, header=False)
    assert X.shape == (3, 2)
    with located(write(tmp_path, "h.csv", CSV_TEXT), 1, 1):
        load(tmp_path / "h.csv", header=False)


def test_csv_delimiters_crlf_and_bom(tmp_path):
    semicolon = write(tmp_path, "s.csv", "\ufeffx;y\r\n1;2\r\n3;4\r\n")
    X, y = load(semicolon, delimiter=";", label="y")
    np.testing.assert_array_equal(X, [[1], [3]])
    np.testing.assert_array_equal(y, [2, 4])
    spaces = write(tmp_path, "w.txt", "  1   2 \t 3\n4 5 6\n")
    X, y = load(spaces, delimiter=None)
    np.testing.assert_array_equal(X, [[1, 2], [4, 5]])
    np.testing.assert_array_equal(y, [3, 6])


@pytest.mark.parametrize("text,line,column,match", [
    ("a,b,c\n1,2,3\n4,x5,6\n", 3, 3, "field 2 is 'x5', not a number"),
    ("a,b,c\n1,2,3\n\n4, 5,  oops\n", 4, 8, "label 'oops' is not a number, but "),
    ("a,b,c\n1,x,3\n", 2, 3, "field 2 is 'x', not a number"),
    ("a,b,c\n1,2,3\n4,,6\n", 3, 3, "missing value (the first of 1 missing value in 1 row)"),
    ("a,b,c\n1,2,3\n4,5,6,7\n", 3, 7, "expected 3 fields, got 4"),
    ("a,b,c\n1,2,3\n4,5\n", 3, 4, "expected 3 fields, got 2"),
    ("1,2,3\n4,5,nan\n7,8,9,\n", 3, 7, "expected 3 fields, got 4"),
])
def test_csv_errors_are_located(tmp_path, text, line, column, match):
    path = write(tmp_path, "bad.csv", text)
    with located(path, line, column) as error:
        load(path)
    assert match in str(error.value)


def test_csv_errors_are_located_with_whitespace_delimiter(tmp_path):
    path = write(tmp_path, "bad.txt", "1 2 3\n  4   five 6\n")
    with located(path, 2, 7):
        load(path, delimiter=None)


def test_csv_error_is_the_same_on_every_rank(tmp_path):
    path = write(tmp_path, "bad.csv", "1,2\n3,4\n5,x\n")
    for rank in range(3):
        with located(path, 3, 3):
            load(path, rank=rank, size=3)


@pytest.mark.parametrize("text,match", [("", "empty"), ("\n\n", "empty"),
                                        ("a,b\n", "no data rows"), ("1\n2\n", "2 columns")])
def test_csv_without_data(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load(write(tmp_path, "e.csv", text))


# -- LIBSVM ----------------------------------------------------------------------------------

def test_libsvm_comments_missing_features_and_a_far_index(tmp_path):
    path = write(tmp_path, "t.libsvm", "# header comment\n+1 2:0.5 # note\n\n"
                                       "-1 1:2 7:-3\n0\n")
    X, y = load(path)
    expected = np.zeros((3, 7))
    expected[0, 1], expected[1, 0], expected[1, 6] = 0.5, 2, -3
    np.testing.assert_array_equal(X.toarray(), expected)
    np.testing.assert_array_equal(y, [1, -1, 0])


def test_libsvm_n_features(tmp_path):
    path = write(tmp_path, "t.svmlight", "1 1:1 2:2\n")
    assert load(path, n_features=5)[0].shape == (1, 5)
    with located(path, 1, 7) as error:
        load(path, n_features=1)
    assert "feature index 2 is out of range for n_features=1" in str(error.value)


def test_libsvm_densifying_beyond_max_bytes_is_refused(tmp_path):
    path = write(tmp_path, "big.svm", "1 1000000:1\n0 1:1\n")
    with pytest.raises(ValueError, match=r"big.svm: densifying 2 rows x 1,000,000 features as "
                       r"float64 needs 15.26 MiB \(16,000,000 bytes\), over the limit "
                       r"max_bytes=1.00 MiB"):
        load(path, dense=True, max_bytes=2**20)
    with pytest.raises(ValueError, match="1 rows .* float32 needs 3.81 MiB"):    # this rank's
        load(path, dtype="float32", dense=True, max_bytes=2**20, rank=0, size=2)
    assert load(path, dense=True, max_bytes=16_000_000)[0].shape == (2, 1_000_000)
    huge = write(tmp_path, "huge.svm", "1 300000000:1\n")
    with pytest.raises(ValueError, match="needs 2.24 GiB .* max_bytes=2.00 GiB"):
        load(huge, dense=True)
    X, _ = load(huge)                                   # CSR: no limit
    assert X.shape == (1, 300_000_000) and X.nnz == 1


@pytest.mark.parametrize("text,line,column,match", [
    ("1 1:1\nyes 1:2\n", 2, 1, "label 'yes' is not a finite number"),
    ("1 1:1\n1 1:2   3\n", 2, 9, "expected index:value, got '3'"),
    ("1 1:1\n1 -1:2\n", 2, 3, "must be an integer >= 0"),
    ("1 1:1\n\n1  x:2\n", 3, 4, "must be an integer >= 0"),
    ("1 1:1\n1 2:1 2:3\n", 2, 7, "feature index 2 follows 2"),
    ("1 3:1 1:1\n", 1, 7, "feature index 1 follows 3"),
    ("# c\n1 1:1 2:abc # x\n", 2, 7, "value in '2:abc' is not a finite number"),
    ("1 1:1 qid:3\n", 1, 7, "must be an integer >= 0"),
])
def test_libsvm_errors_are_located(tmp_path, text, line, column, match):
    path = write(tmp_path, "bad.svm", text)
    with located(path, line, column) as error:
        load(path)
    assert match in str(error.value)


@pytest.mark.parametrize("text", ["# only comments\n", "1\n0\n"])
def test_libsvm_without_rows_or_features(tmp_path, text):
    with pytest.raises(ValueError, match="no data rows|no feature values"):
        load(write(tmp_path, "e.svm", text))


def test_non_utf8_text_names_the_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"caf\xe9,1\n1,2\n")
    with pytest.raises(ValueError, match="latin.csv: not UTF-8"):
        load(path)


# -- clients ---------------------------------------------------------------------------------

def clients_of(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 3)), rng.integers(0, 3, n).astype(float)) for n in sizes]


@pytest.mark.parametrize("fmt", ["npz", "npy"])
def test_clients_round_trip_through_a_directory(tmp_path, fmt, dtype):
    clients = clients_of([4, 1, 6])
    paths = save_clients(clients, tmp_path / "out", fmt)
    assert [p.name for p in paths] == [f"client_00{k}.{fmt}" for k in range(3)]
    loaded = load_clients(tmp_path / "out", dtype=dtype.name)
    assert len(loaded) == 3
    for (X, y), (Xk, yk) in zip(clients, loaded):
        assert Xk.dtype == dtype and yk.dtype == dtype
        np.testing.assert_array_equal(Xk, X.astype(dtype))
        np.testing.assert_array_equal(yk, y.astype(dtype))


def test_client_names_sort_in_client_order(tmp_path):
    paths = save_clients(clients_of([1] * 1001), tmp_path)
    assert paths[-1].name == "client_1000.npz" and paths[0].name == "client_0000.npz"
    assert len(load_clients(tmp_path)) == 1001


def test_directory_of_mixed_formats_skips_other_files(tmp_path):
    write(tmp_path, "a.csv", "x,y,label\n1,2,0\n")
    write(tmp_path, "b.svm", "1 1:3 2:4\n")
    write(tmp_path, "README.md", "not data")
    (X0, y0), (X1, y1) = load_clients(tmp_path)
    np.testing.assert_array_equal(X0, [[1, 2]])
    np.testing.assert_array_equal(X1.toarray(), [[3, 4]])


def test_directory_clients_must_agree_on_features(tmp_path):
    write(tmp_path, "a.csv", "1,2,0\n")
    write(tmp_path, "b.csv", "1,2,3,0\n")
    with pytest.raises(ValueError, match="b.csv: 3 features, but a.csv has 2"):
        load_clients(tmp_path)


def test_libsvm_clients_share_the_widest_feature_count(tmp_path):
    """A LIBSVM client file need not use the last features: the directory's widest
    (and its zero-basedness) holds for all, unless n_features is given."""
    write(tmp_path, "a.svm", "1 1:3 2:4\n")
    write(tmp_path, "b.svm", "1 3:1\n")
    clients = load_clients(tmp_path)
    assert [X.shape for X, _ in clients] == [(1, 3), (1, 3)]
    np.testing.assert_array_equal(clients[1][0].toarray(), [[0, 0, 1]])
    assert [X.shape for X, _ in load_clients(tmp_path, n_features=5)] == [(1, 5), (1, 5)]
    write(tmp_path, "c.svm", "0 0:2\n")              # an index 0: every file is 0-based
    assert [X.shape for X, _ in load_clients(tmp_path)] == [(1, 4)] * 3


def test_save_clients_refuses_to_overwrite_unless_forced(tmp_path):
    save_clients(clients_of([2, 2, 2]), tmp_path)
    with pytest.raises(FileExistsError, match="force=True"):
        save_clients(clients_of([3, 3]), tmp_path)
    save_clients(clients_of([3, 3], seed=1), tmp_path, force=True)
    loaded = load_clients(tmp_path)          # no stale third client left behind
    assert [len(y) for _, y in loaded] == [3, 3]
    np.testing.assert_array_equal(loaded[1][0], clients_of([3, 3], seed=1)[1][0])


def test_save_clients_refuses_a_directory_with_other_data(tmp_path):
    write(tmp_path, "data.csv", CSV_TEXT)
    with pytest.raises(FileExistsError, match="data.csv"):
        save_clients(clients_of([2]), tmp_path, force=True)
    assert (tmp_path / "data.csv").exists()


@pytest.mark.parametrize("clients,fmt,match", [
    ([], "npz", "empty"), (clients_of([2]), "csv", "fmt"),
    ([(np.zeros(3), np.zeros(3))], "npz", "client 0: X must be 2-d"),
])
def test_save_clients_argument_errors(tmp_path, clients, fmt, match):
    with pytest.raises(ValueError, match=match):
        save_clients(clients, tmp_path, fmt)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "shards", "quantity"])
def test_partitioned_file_covers_every_row_once(tmp_path, partition):
    n = 200
    table = np.column_stack([np.arange(n, dtype=float), np.arange(n) % 4])
    np.save(tmp_path / "all.npy", table)
    clients = load_clients(tmp_path / "all.npy", partition=partition, n_clients=5, seed=3)
    assert len(clients) == 5
    ids = np.concatenate([X[:, 0] for X, _ in clients])
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    for X, y in clients:                                      # rows keep their labels
        np.testing.assert_array_equal(y, X[:, 0] % 4)
    again = load_clients(tmp_path / "all.npy", partition=partition, n_clients=5, seed=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(clients, again))


def test_partitioned_file_passes_load_arguments(tmp_path):
    path = write(tmp_path, "t.csv", CSV_TEXT)
    clients = load_clients(path, partition="iid", n_clients=2, label="a", dtype="float32")
    assert sum(len(y) for _, y in clients) == 5
    assert all(X.shape[1] == 3 and X.dtype == np.float32 for X, _ in clients)
    np.testing.assert_array_equal(np.sort(np.concatenate([y for _, y in clients])),
                                  np.sort(TABLE[:, 0]))


def test_load_clients_errors(tmp_path):
    path = write(tmp_path, "t.csv", CSV_TEXT)
    with pytest.raises(ValueError, match="needs n_clients"):
        load_clients(path, partition="iid")
    with pytest.raises(ValueError, match="unknown partition 'random'.*iid, dirichlet, shards"):
        load_clients(path, partition="random", n_clients=2)
    with pytest.raises(ValueError, match="partition= and n_clients="):
        load_clients(path)
    with pytest.raises(ValueError, match="directory of clients"):
        load_clients(tmp_path, partition="iid", n_clients=2)
    with pytest.raises(TypeError, match="rank"):
        load_clients(tmp_path, rank=0, size=2)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_clients(tmp_path / "missing.csv", partition="iid", n_clients=2)
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", "notes.md", "")
    with pytest.raises(ValueError, match="empty: no client files"):
        load_clients(tmp_path / "empty")


# -- built-in data sets ----------------------------------------------------------------------

def test_builtin_seed(dtype):
    X, y = builtin("seed", dtype=dtype.name)
    assert X.dtype == dtype and y.dtype == dtype
    np.testing.assert_array_equal(X, [[1, 2], [2, 3], [3, 4]])
    np.testing.assert_array_equal(y, [1, 2, 3])


def test_builtin_fedprox_synthetic_is_clients(dtype):
    clients = builtin("fedprox-synthetic", dtype=dtype.name, seed=4)
    reference = make_fedprox_synthetic(1.0, 1.0, 30, seed=4)
    assert len(clients) == 30
    for (X, y), (X_ref, y_ref) in zip(clients, reference):
        assert X.dtype == dtype and y.dtype == dtype and X.shape == (len(y), 60)
        np.testing.assert_array_equal(X, X_ref.astype(dtype))
        np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize("name,shape", [("iris", (150, 4)), ("digits", (1797, 64)),
                                        ("wine", (178, 13)), ("breast_cancer", (569, 30)),
                                        ("diabetes", (442, 10))])
def test_builtin_sklearn(name, shape):
    pytest.importorskip("sklearn")
    X, y = builtin(name, dtype="float32")
    assert X.shape == shape and y.shape == shape[:1]
    assert X.dtype == np.float32 and y.dtype == np.float32 and X.flags.c_contiguous


def test_builtin_sklearn_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)        # import sklearn now fails
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        builtin("iris")


def test_builtin_unknown_name_lists_them():
    with pytest.raises(ValueError, match="'mnist'.*" + ".*".join(BUILTINS)):
        builtin("mnist")


def test_import_needs_only_numpy():
    code = "import sys, cyfed.io; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_label_none_reads_every_column_as_a_feature(tmp_path):
    A = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "a.npy", A)
    np.savetxt(tmp_path / "a.csv", A, delimiter=",")
    np.savez(tmp_path / "a.npz", X=A)
    for name in ("a.npy", "a.csv", "a.npz"):
        X, y = load(tmp_path / name, label=None)
        np.testing.assert_array_equal(X, A)
        assert y is None
    X, y = load(tmp_path / "a.npy", label=None, rank=1, size=2)
    np.testing.assert_array_equal(X, A[2:])


# -- class-name labels -----------------------------------------------------------------------

YES_NO = "x1,x2,answer\n1,2,yes\n3,4,no\n5,6,yes\n7,8,maybe\n"


def test_text_labels_are_coded_with_sorted_classes(tmp_path):
    data = load(write(tmp_path, "t.csv", YES_NO), label="answer")
    X, y = data                                      # still unpacks as (X, y)
    assert isinstance(data, LabeledData) and data.X is X and data.y is y
    np.testing.assert_array_equal(data.classes, ["maybe", "no", "yes"])     # np.unique order
    np.testing.assert_array_equal(y, [2, 1, 2, 0])
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6], [7, 8]])
    np.testing.assert_array_equal(data.labels(), ["yes", "no", "yes", "maybe"])


def test_numeric_labels_have_no_classes(table_file):
    data = load(table_file)
    assert data.classes is None
    np.testing.assert_array_equal(data.labels(), Y_TABLE)


def test_text_labels_without_header_quoted_and_by_index(tmp_path):
    path = write(tmp_path, "t.csv", '1,2,"yes"\n3,4, no\n5,6,yes\n')
    data = load(path)                          # a text label alone is not a header
    assert data.X.shape == (3, 2)
    np.testing.assert_array_equal(data.classes, ["no", "yes"])
    np.testing.assert_array_equal(data.y, [1, 0, 1])
    first = load(write(tmp_path, "f.csv", "label,a\ncat,1\ndog,2\n"), label=0)
    np.testing.assert_array_equal(first.classes, ["cat", "dog"])
    np.testing.assert_array_equal(first.X, [[1], [2]])


def test_every_rank_codes_with_the_classes_of_every_row(tmp_path):
    path = write(tmp_path, "t.csv", YES_NO)
    parts = [load(path, label="answer", rank=r, size=3) for r in range(3)]
    for part in parts:
        np.testing.assert_array_equal(part.classes, ["maybe", "no", "yes"])
    np.testing.assert_array_equal(np.concatenate([p.y for p in parts]), [2, 1, 2, 0])


def test_labeled_data_pickles_and_copies(tmp_path):
    data = load(write(tmp_path, "t.csv", YES_NO), label="answer", dtype="float32")
    for again in (pickle.loads(pickle.dumps(data)), copy.deepcopy(data), copy.copy(data)):
        assert isinstance(again, LabeledData) and len(again) == 2
        np.testing.assert_array_equal(again.X, data.X)
        np.testing.assert_array_equal(again.classes, data.classes)


def test_label_column_mixing_numbers_and_text_is_located(tmp_path):
    path = write(tmp_path, "t.csv", "a,b\n1,0\n2,1\n3,yes\n")
    with located(path, 4, 3) as error:
        load(path)
    assert f"label 'yes' is not a number, but {path}:2:3 is '0'" in str(error.value)


def test_npz_string_labels(tmp_path):
    np.savez(tmp_path / "t.npz", X=X_TABLE, y=np.array(["b", "a", "b", "c", "a"]))
    data = load(tmp_path / "t.npz")
    np.testing.assert_array_equal(data.classes, ["a", "b", "c"])
    np.testing.assert_array_equal(data.y, [1, 0, 1, 2, 0])


def test_relabel_codes_by_given_classes_and_names_unknown_labels(tmp_path):
    data = load(write(tmp_path, "t.csv", "a,y\n1,yes\n2,yes\n"), label="y")
    assert data.y.tolist() == [0, 0]                        # its own classes: ["yes"]
    again = relabel(data, np.array(["no", "yes"]))
    np.testing.assert_array_equal(again.y, [1, 1])
    np.testing.assert_array_equal(again.classes, ["no", "yes"])
    assert again.y.dtype == data.y.dtype
    with pytest.raises(ValueError, match=r"^t.csv: label 'yes' is not a class of m.npz "
                                         r"\(classes: cat, dog\)"):
        relabel(data, ["cat", "dog"], "m.npz", source="t.csv")
    numeric = load(write(tmp_path, "n.csv", "a,y\n1,0\n2,1\n"))
    assert relabel(numeric, ["no", "yes"]) is numeric


def test_clients_keep_class_names(tmp_path):
    path = write(tmp_path, "t.csv", "a,y\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20)))
    clients = load_clients(path, partition="iid", n_clients=4, label="y")
    assert all(list(c.classes) == ["a", "b"] for c in clients)
    with pytest.raises(ValueError, match="npy client files hold numbers only"):
        save_clients(clients, tmp_path / "npy", "npy")
    save_clients(clients, tmp_path / "dir")
    assert np.load(tmp_path / "dir" / "client_000.npz")["y"].dtype.kind == "U"
    for before, after in zip(clients, load_clients(tmp_path / "dir")):
        np.testing.assert_array_equal(after.labels(), before.labels())


def test_directory_clients_share_the_union_of_classes(tmp_path):
    write(tmp_path, "a.csv", "x,y\n1,dog\n2,dog\n")
    write(tmp_path, "b.csv", "x,y\n3,cat\n4,emu\n")
    a, b = load_clients(tmp_path)
    np.testing.assert_array_equal(a.classes, ["cat", "dog", "emu"])
    np.testing.assert_array_equal(a.y, [1, 1])
    np.testing.assert_array_equal(b.y, [0, 2])
    write(tmp_path, "c.csv", "x,y\n5,1\n")
    with pytest.raises(ValueError, match="c.csv: numeric labels, but a.csv has class names"):
        load_clients(tmp_path)


# -- missing values --------------------------------------------------------------------------

MISSING_TEXT = "a,b,y\n1,2,0\n3,,1\n5,NA,0\n,8,1\n9,10,\n"


def test_missing_values_are_refused_with_the_count_and_the_first(tmp_path):
    path = write(tmp_path, "m.csv", MISSING_TEXT)
    with located(path, 3, 3) as error:
        load(path)
    message = str(error.value)
    assert "missing value (the first of 4 missing values in 4 rows)" in message
    assert 'missing="drop"' in message and 'missing="mean"' in message


def test_missing_drop_drops_every_row_with_one(tmp_path):
    X, y = load(write(tmp_path, "m.csv", MISSING_TEXT), missing="drop")
    np.testing.assert_array_equal(X, [[1, 2]])
    np.testing.assert_array_equal(y, [0])


def test_missing_mean_imputes_features_and_refuses_missing_labels(tmp_path):
    path = write(tmp_path, "m.csv", MISSING_TEXT)
    with located(path, 6, 6) as error:
        load(path, missing="mean")
    assert "missing label (1 row without one); labels are never imputed" in str(error.value)
    X, y = load(write(tmp_path, "f.csv", MISSING_TEXT.rsplit("9", 1)[0]), missing="mean")
    np.testing.assert_array_equal(X, [[1, 2], [3, 5], [5, 5], [3, 8]])
    np.testing.assert_array_equal(y, [0, 1, 0, 1])


@pytest.mark.parametrize("marker", ["", " ", "NA", "N/A", "nan", "NaN", "NULL", "None", "<NA>"])
def test_missing_markers(tmp_path, marker):
    path = write(tmp_path, "m.csv", f"a,b,y\n1,{marker},0\n3,4,1\n")
    with located(path, 2, 3 + len(marker) - len(marker.lstrip())):    # after blanks
        load(path)
    np.testing.assert_array_equal(load(path, missing="drop")[0], [[3, 4]])


def test_missing_text_labels_are_dropped(tmp_path):
    data = load(write(tmp_path, "m.csv", "a,y\n1,yes\n2,\n3,no\n4,maybe\n"), missing="drop")
    np.testing.assert_array_equal(data.classes, ["maybe", "no", "yes"])
    np.testing.assert_array_equal(data.y, [2, 1, 0])


def test_classes_only_in_dropped_rows_are_dropped(tmp_path):
    data = load(write(tmp_path, "m.csv", "a,y\n1,yes\n,maybe\n3,no\n"), missing="drop")
    np.testing.assert_array_equal(data.classes, ["no", "yes"])
    np.testing.assert_array_equal(data.y, [1, 0])


def test_missing_drop_then_ranks_split_the_rows_left(tmp_path):
    path = write(tmp_path, "m.csv", MISSING_TEXT + "11,12,1\n13,14,0\n")
    parts = [load(path, missing="drop", rank=r, size=2) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate([X for X, _ in parts]),
                                  [[1, 2], [11, 12], [13, 14]])


def test_missing_mean_is_over_every_rank_rows(tmp_path):
    path = write(tmp_path, "m.csv", "a,y\n,0\n2,1\n4,0\n6,1\n")
    X0, _ = load(path, missing="mean", rank=0, size=2)
    np.testing.assert_array_equal(X0, [[4], [2]])


@pytest.mark.parametrize("text,match", [
    ("a,b,y\n1,,0\n2,,1\n", "feature column 1 .* no values to average"),
    ("a,y\n,0\n2,\n", 'nothing is left after missing="drop"'),
])
def test_missing_options_with_nothing_left(tmp_path, text, match):
    path = write(tmp_path, "m.csv", text)
    option = "mean" if "average" in match else "drop"
    with pytest.raises(ValueError, match=match):
        load(path, missing=option)


def test_missing_option_is_checked(tmp_path):
    with pytest.raises(ValueError, match="missing must be one of None, 'drop', 'mean'"):
        load(write(tmp_path, "t.csv", CSV_TEXT), missing="zero")
    with pytest.raises(ValueError, match="zero_based must be one of"):
        load(write(tmp_path, "t.svm", SVM_TEXT), zero_based="yes")


def test_missing_in_npy_and_npz(tmp_path):
    table = TABLE.copy()
    table[3, 1] = np.nan
    np.save(tmp_path / "t.npy", table)
    with pytest.raises(ValueError, match=r"t.npy: row 3, column 1 \(0-based\): missing value"):
        load(tmp_path / "t.npy", rank=1, size=2)            # this rank's rows: 3 and 4
    load(tmp_path / "t.npy", rank=0, size=2)                # rows 0-2 have none
    X, y = load(tmp_path / "t.npy", missing="drop")
    np.testing.assert_array_equal(X, np.delete(X_TABLE, 3, axis=0))
    np.savez(tmp_path / "t.npz", X=table[:, :3], y=np.array([0, 1, np.nan, 1, 2]))
    with pytest.raises(ValueError, match=r"t.npz: row 2, y: missing value \(the first of 2"):
        load(tmp_path / "t.npz")
    assert load(tmp_path / "t.npz", missing="drop")[0].shape == (3, 3)


# -- delimiters and compression --------------------------------------------------------------

@pytest.mark.parametrize("name", ["t.tsv", "t.tab", "t.TSV"])
def test_tab_separated_files(tmp_path, name):
    path = write(tmp_path, name, CSV_TEXT.replace(",", "\t"))
    for kwargs in ({}, {"delimiter": "\t"}):
        X, y = load(path, **kwargs)
        np.testing.assert_array_equal(X, X_TABLE)
        np.testing.assert_array_equal(y, Y_TABLE)


@pytest.mark.parametrize("sep", [";", "\t", "|", " ", "   "])
def test_other_text_files_are_sniffed(tmp_path, sep):
    for name in ("t.txt", "t.dat", "table"):
        X, y = load(write(tmp_path, name, CSV_TEXT.replace(",", sep)))
        np.testing.assert_array_equal(X, X_TABLE)
        np.testing.assert_array_equal(y, Y_TABLE)


def test_aligned_columns_and_quoted_fields(tmp_path):
    aligned = load(write(tmp_path, "w.txt", "  a    b   label\n  1.5  2   x\n  3  4.25  y\n"),
                   label="label")
    np.testing.assert_array_equal(aligned.X, [[1.5, 2], [3, 4.25]])
    np.testing.assert_array_equal(aligned.classes, ["x", "y"])
    r_style = load(write(tmp_path, "r.csv", '"","x1","y"\n"1",0.5,"yes"\n"2",NA,"no"\n'),
                   label="y", missing="mean")                   # R's write.csv
    np.testing.assert_array_equal(r_style.X, [[1, 0.5], [2, 0.5]])
    np.testing.assert_array_equal(r_style.labels(), ["yes", "no"])


def test_text_that_is_not_data_keeps_the_unknown_extension_error(tmp_path):
    with pytest.raises(ValueError, match="README: no extension, and the content is neither"):
        load(write(tmp_path, "README", "This is a readme.\nIt has words, not data.\n"))


def test_unknown_extension_with_libsvm_content(tmp_path):
    X, y = load(write(tmp_path, "a9a.t", SVM_TEXT))
    np.testing.assert_array_equal(X.toarray(), X_TABLE)


def test_explicit_delimiter_reads_any_extension(tmp_path):
    X, _ = load(write(tmp_path, "t.data", "1:2:3\n4:5:6\n"), delimiter=":")
    np.testing.assert_array_equal(X, [[1, 2], [4, 5]])


@pytest.mark.parametrize("suffix,compress", [(".gz", gzip.compress), (".bz2", bz2.compress),
                                              (".xz", lzma.compress)])
@pytest.mark.parametrize("name,text", [("t.csv", CSV_TEXT),
                                       ("t.tsv", CSV_TEXT.replace(",", "\t")),
                                       ("t.txt", CSV_TEXT.replace(",", ";")),
                                       ("t.libsvm", SVM_TEXT)])
def test_compressed_text_files(tmp_path, suffix, compress, name, text):
    path = tmp_path / (name + suffix)
    path.write_bytes(compress(text.encode()))
    X, y = load(path)
    np.testing.assert_array_equal(dense(X), X_TABLE)
    np.testing.assert_array_equal(y, Y_TABLE)


def test_compressed_errors_are_located_and_corrupt_files_named(tmp_path):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(b"a,b\n1,2\n3,x\n"))
    with located(path, 3, 3):
        load(path)
    (tmp_path / "junk.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"junk.csv.gz: cannot decompress as .gz"):
        load(tmp_path / "junk.csv.gz")
    (tmp_path / "t.npy.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(ValueError, match=r"t.npy.gz: a .npy file cannot be read .gz-compressed"):
        load(tmp_path / "t.npy.gz")


def test_directory_of_compressed_clients(tmp_path):
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"x,y\n1,0\n"))
    write(tmp_path, "b.csv", "x,y\n2,1\n")
    (X0, _), (X1, _) = load_clients(tmp_path)
    np.testing.assert_array_equal(X0, [[1]])
    np.testing.assert_array_equal(X1, [[2]])


# -- LIBSVM indexing -------------------------------------------------------------------------

def test_libsvm_zero_based_auto_detection(tmp_path):
    zero = write(tmp_path, "z.svm", "1 0:5 2:1\n0 1:2\n")
    X, _ = load(zero)
    np.testing.assert_array_equal(X.toarray(), [[5, 0, 1], [0, 2, 0]])
    one = write(tmp_path, "o.svm", "1 1:5 3:1\n0 2:2\n")
    np.testing.assert_array_equal(load(one, dense=True)[0], [[5, 0, 1], [0, 2, 0]])
    np.testing.assert_array_equal(load(one, zero_based=True)[0].toarray(),
                                  [[0, 5, 0, 1], [0, 0, 2, 0]])
    with located(zero, 1, 3) as error:
        load(zero, zero_based=False)
    assert "zero_based=False: LIBSVM indices are 1-based" in str(error.value)
    assert load(zero, n_features=5)[0].shape == (2, 5)
    with located(zero, 1, 7):
        load(zero, n_features=2)


def test_libsvm_written_by_scikit_learn(tmp_path):
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_breast_cancer(return_X_y=True)
    datasets.dump_svmlight_file(X, y, str(tmp_path / "bc.libsvm"))             # 0-based
    datasets.dump_svmlight_file(X, y, str(tmp_path / "one.svm"), zero_based=False)
    for name in ("bc.libsvm", "one.svm"):
        got_X, got_y = load(tmp_path / name)
        np.testing.assert_allclose(got_X.toarray(), X, rtol=1e-15)
        np.testing.assert_array_equal(got_y, y)


def test_directory_of_libsvm_clients_decides_indexing_once(tmp_path):
    write(tmp_path, "a.svm", "1 0:1 1:2\n")                   # 0-based: index 0 used
    write(tmp_path, "b.svm", "0 1:3 2:4\n")                   # alone it would read 1-based
    (Xa, _), (Xb, _) = load_clients(tmp_path, n_features=3)
    np.testing.assert_array_equal(Xa.toarray(), [[1, 2, 0]])
    np.testing.assert_array_equal(Xb.toarray(), [[0, 3, 4]])
