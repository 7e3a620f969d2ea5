"""Reading training data from files, and the built-in data sets.

* `load(path, ...) -> LabeledData (X, y)`: one data set, or one rank's rows of
  it, from .npy (memory-mapped), .npz, delimited text (.csv, .tsv, .tab, .txt,
  or any text file whose content is delimited) or LIBSVM/svmlight text (.svm,
  .libsvm, .svmlight; X as a CSR matrix, each rank parsing only its byte
  share); text formats may be compressed (.gz, .bz2, .xz: ``data.csv.gz``);
* `load_svmlight(path, ...)`: a LIBSVM file, or a byte range of it, as (X CSR, y)
  like scikit-learn's ``load_svmlight_file``, parsed by compiled threads;
  `save_svmlight(path, X, y)` writes one;
* `load_xy(x_path, y_path, ...)`: X and y kept as two .npy files;
* `load_clients(path, ...)`: federated clients from a directory of per-client
  files, or from one file split by a partitioner of `cyfed.data`;
* `save_clients(clients, directory)`: the directory `load_clients` reads;
* `relabel(data, classes)`: data with class-name labels coded by given classes;
* `builtin(name)`: the seed's toy data, FedProx Synthetic(1, 1) and
  scikit-learn's bundled data sets.

Every function returns X as a C-contiguous 2-d array (a scipy.sparse CSR matrix
for LIBSVM files, unless ``dense=True``) and y as a 1-d array, both
in the requested float dtype ("float32" or "float64"), as a `LabeledData`: a
tuple ``(X, y)`` whose `classes` attribute holds the class names when the labels
were text (y then holds their codes 0..k-1).  Malformed text input is reported
as ``ValueError("path:line:column: ...")``, the column being the 1-based
character position where the bad field or token starts.  See docs/data.md.
"""
import bz2
import contextlib
import csv
import functools
import gzip
import lzma
import math
import mmap
import numbers
import os
import re
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
from scipy import sparse

from cyfed import _svmlight
from cyfed import _validation as check
from cyfed._validation import FLOAT_DTYPES
from cyfed.data import (dirichlet, iid, load_shard, make_fedprox_synthetic, quantity_skew,
                        shard_rows, shards)

FORMATS = {".npy": "npy", ".npz": "npz", ".csv": "csv", ".tsv": "csv", ".tab": "csv",
           ".txt": "csv", ".svm": "svmlight", ".libsvm": "svmlight", ".svmlight": "svmlight"}
DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}      # other text files: sniffed
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# Cells read as missing values (pandas' default markers); any NaN is missing too.
MISSING_MARKERS = frozenset({"", "NA", "N/A", "n/a", "#N/A", "#NA", "<NA>", "NULL", "null",
                             "NaN", "-NaN", "nan", "-nan", "None"})
MISSING = (None, "drop", "mean")
# name -> f(y, n_clients, seed, alpha, sizes): the partitioners of cyfed.data, `sizes`
# the min_size keyword where the partitioner has one ({} keeps its default).
PARTITIONS = {
    "iid": lambda y, n_clients, seed, alpha, sizes: iid(y.size, n_clients, seed=seed),
    "dirichlet": lambda y, n_clients, seed, alpha, sizes: dirichlet(y, n_clients, alpha,
                                                                    seed=seed, **sizes),
    "shards": lambda y, n_clients, seed, alpha, sizes: shards(y, n_clients, seed=seed),
    "quantity": lambda y, n_clients, seed, alpha, sizes: quantity_skew(
        y.size, n_clients, alpha=alpha, seed=seed, **sizes),
}
SKLEARN_BUILTINS = ("iris", "digits", "wine", "breast_cancer", "diabetes")
FEDERATED_BUILTINS = ("seed-clients", "fedprox-synthetic")
BUILTINS = ("seed", *FEDERATED_BUILTINS, *SKLEARN_BUILTINS)

# The source article's least-squares data: example 4.1's rows (`cyfed demo`) and example
# 4.2's two clients (mpi_examples/federated_seed.py).
_SEED_X = ((1.0, 2.0), (2.0, 3.0), (3.0, 4.0))
_SEED_Y = (1.0, 2.0, 3.0)
_SEED_CLIENTS = ((((1.0, 2.0), (2.0, 3.0)), (1.0, 2.0)),
                 (((2.0, 3.0), (3.0, 4.0)), (2.0, 3.0)))

_TOKEN = re.compile(r"\S+")
_SVMLIGHT_LINE = re.compile(r"\s*\S+(\s+qid:\S+)?(\s+\d+:\S+)+\s*(#.*)?")
_SNIFF_CHARS = 8192                 # the head of a text file that delimiters are sniffed from
_Ranks = namedtuple("_Ranks", "rank size")      # the part of a Communicator load_shard reads
# A whole table read from a file: X and y (NaN where missing), the class names (None:
# numeric labels), the label's column j in the file (None: no label) and locate(i, c),
# the text naming row i, file column c.
_Table = namedtuple("_Table", "X y classes j locate")


class LabeledData(tuple):
    """``(X, y)`` as the loaders return it -- ``X, y = load(...)`` unpacks it -- with
    the class names in `classes`: when the file's labels are text (``yes``/``no``),
    y holds their codes 0..k-1 and ``classes[code]`` is the name (sorted as
    ``np.unique`` sorts them, like scikit-learn's ``classes_``); None for numeric
    labels (or no labels)."""

    def __new__(cls, X, y, classes=None):
        data = super().__new__(cls, (X, y))
        data.classes = classes
        return data

    def __getnewargs__(self):                   # pickle and copy rebuild all three
        return (*self, self.classes)

    X = property(lambda self: self[0], doc="the features, (n, d)")
    y = property(lambda self: self[1], doc="the labels (class codes when classes is set)")

    def labels(self):
        """y in the original labels: the class names of the codes, or y itself."""
        return self.y if self.classes is None else self.classes[self.y.astype(np.intp)]


def load(path, *, label=-1, dtype="float64", delimiter="auto", header=None, missing=None,
         zero_based="auto", rank=0, size=1, n_features=None, dense=False, max_bytes=2**31):
    """This rank's rows (X, y) of a data file, chosen by the file's extension.

    Parameters
    ----------
    path : str or Path
        .npy: a 2-d array, memory-mapped so only this rank's rows are read;
        .npz: arrays "X" (n, d) and "y" (n,) (y may hold strings: class names);
        .csv, .tsv, .tab, .txt: delimited text; .svm/.libsvm/.svmlight:
        ``label [qid:n] index:value ...`` lines, ``#`` comments, read by
        `load_svmlight` into a CSR matrix.  A text
        file may be compressed (``.csv.gz``, ``.libsvm.bz2``, ``.tsv.xz``); a
        file with another extension is read when its content is delimited text
        or LIBSVM.
    label : int, str or None
        Column of y in a .npy or CSV file (negative counts from the end); a
        name needs a CSV header.  The other columns are X.  None: the file has
        no label column (X is every column, y is None; an .npz file's "y" and
        LIBSVM labels are returned when present).  A CSV label column holding
        text (``yes``/``no``) gives class codes and `classes`.
    dtype : "float32" or "float64"
        dtype of X and y.
    delimiter : "auto", str or None
        CSV field separator.  "auto": "," for .csv, a tab for .tsv/.tab,
        sniffed from the first 8 KB (`csv.Sniffer`) for other text files;
        None splits on runs of whitespace.
    header : bool or None
        Whether a CSV file's first non-blank line holds column names; None
        guesses (a header has a non-numeric field above a number).
    missing : None, "drop" or "mean"
        Missing values (empty cells, NA, NaN, ...: `MISSING_MARKERS`) in a CSV,
        .npz or .npy file.  None refuses them (ValueError naming the count and
        the first one's position); "drop" drops every row with one; "mean"
        replaces each by its column's mean (over all rows of the file).  A
        missing label is dropped by "drop" and refused otherwise.
    zero_based : "auto", bool
        LIBSVM feature indices: True 0-based, False 1-based, "auto" 0-based
        when any index is 0, else 1-based (scikit-learn's ``zero_based="auto"``).
    rank, size : int
        Keep rows ``cyfed.data.shard_rows(n, rank, size)`` (of the rows left
        after dropping missing values).  A LIBSVM file is split by bytes
        instead: rank r parses the lines of bytes [r*N/size, (r+1)*N/size)
        of the N-byte file (see `load_svmlight`), so the ranks' rows follow
        one another in file order.  When n_features is None or zero_based is
        "auto", every rank first scans the whole file's indices (no values
        parsed) so that all ranks agree; `cyfed.data.load_shard` agrees over
        a communicator instead and reads only the rank's bytes.
    n_features : int or None
        Width of a LIBSVM X; None: the largest feature index in the file.
    dense : bool
        Return a LIBSVM X as a dense array instead of CSR (refused beyond
        `max_bytes`).
    max_bytes : int
        With dense=True, refuse to densify LIBSVM rows whose dense X (this
        rank's rows x n_features x itemsize) would exceed this many bytes.

    Returns
    -------
    LabeledData
        X : (n_rank, d) C-contiguous array of `dtype` (LIBSVM: a
        scipy.sparse.csr_matrix unless dense=True); y : (n_rank,) array of
        `dtype` (None: label=None and no labels in the file); `.classes`.
    """
    path, dt = _file(path), _dtype(dtype)
    _choice(missing, MISSING, "missing")
    _choice(zero_based, (True, False, "auto"), "zero_based")
    fmt = _format(path, delimiter)
    if fmt == "npy":
        X, y, classes = _read_npy(path, label, missing, rank, size)
    elif fmt == "svmlight":
        _svmlight_options(n_features, zero_based)
        shard_rows(0, rank, size)                   # refuses a bad rank or size
        X, y, classes = _read_svmlight(path, dt, rank, size, n_features, zero_based)
        if dense:
            _check_dense_size(path, *X.shape, dt, max_bytes)
            X = X.toarray()
    else:
        table = (_read_csv(path, label, delimiter, header) if fmt == "csv"
                 else _read_npz(path, need_y=label is not None))
        X, y, classes = _rows(path, table, missing, rank, size)
    return _finish(path, X, y, dt, classes)


def load_xy(x_path, y_path, *, dtype="float64", rank=0, size=1):
    """This rank's rows of X (n, d) and y (n,) kept as two .npy files (memory-mapped)."""
    dt = _dtype(dtype)
    X, y = load_shard(_file(x_path), _file(y_path), comm=_Ranks(rank, size))
    return _finish(x_path, X, y, dt)


def load_clients(path, *, partition=None, n_clients=None, seed=0, alpha=0.5, min_size=None,
                 **load_kwargs):
    """Federated clients as a list of LabeledData (X_k, y_k).

    A directory gives one client per data file in it (sorted by name, any
    format `load` reads; other files are ignored); class-name labels are coded
    by the union of every client's classes, and LIBSVM files with
    zero_based="auto" are all 0-based when any one of them uses index 0.  A
    single file is split by `partition` ("iid", "dirichlet", "shards" or
    "quantity", the partitioners of `cyfed.data`, with `seed`; `alpha` is the
    Dirichlet concentration of "dirichlet" and "quantity", `min_size` their
    smallest client (None: the partitioner's default)) into `n_clients`
    clients (`split_clients`).  `load_kwargs` go to `load`; clients are loaded whole, so `rank`
    and `size` are not accepted.
    """
    if {"rank", "size"} & load_kwargs.keys():
        raise TypeError("load_clients loads whole clients (no rank/size); "
                        "FederatedTrainer assigns clients to ranks")
    path = Path(path)
    if path.is_dir():
        if partition is not None:
            raise ValueError(f"{path} is a directory of clients; partition= splits one file")
        return _load_directory(path, load_kwargs)
    _file(path)
    if partition is None:
        raise ValueError(f"{path} is one file: pass partition= and n_clients= to split it "
                         "into clients, or give a directory of per-client files")
    return split_clients(load(path, **load_kwargs), partition, n_clients, seed=seed,
                         alpha=alpha, min_size=min_size)


def save_clients(clients, directory, fmt=None, *, force=False):
    """Write client k as directory/client_<k>.<fmt>, which `load_clients` reads back.

    fmt "npz" stores arrays "X" and "y" (y as the class names for clients with
    `classes`); "npy" stores one array with y as its last column (numbers
    only); "svm" a LIBSVM file (numbers only; `save_svmlight`), the format of
    scipy.sparse clients, which it keeps sparse.  None: "svm" when the clients'
    X are sparse, else "npz".  k is zero-padded (at least 3 digits) so that name order is client
    order.  A directory already holding earlier client files is refused
    unless `force=True`, which deletes them first (so no stale client is read
    back); one holding other data files is always refused.  Returns the paths.
    """
    clients = list(clients)
    held = [client[0] if sparse.issparse(client[0]) else np.asarray(client[0])
            for client in clients]
    if fmt is None:
        fmt = "svm" if any(sparse.issparse(X) for X in held) else "npz"
    if fmt not in ("npz", "npy", "svm"):
        raise ValueError(f"fmt must be 'npz', 'npy' or 'svm', got {fmt!r}")
    if fmt != "svm" and any(sparse.issparse(X) for X in held):
        raise ValueError(f"the clients' X are sparse, and {fmt} client files hold dense "
                         "arrays: save as svm (LIBSVM), which keeps them sparse")
    arrays = [_check_xy(f"client {k}", X, _client_labels(client, fmt))
              for k, (X, client) in enumerate(zip(held, clients))]
    if not arrays:
        raise ValueError("clients is empty: nothing to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _clear_clients(directory, force)
    width = max(3, len(str(len(arrays) - 1)))
    paths = [directory / f"client_{k:0{width}d}.{fmt}" for k in range(len(arrays))]
    for target, (X, y) in zip(paths, arrays):
        _write_client(target, X, y)
    return paths


def relabel(data, classes, of="the model", *, source=None):
    """`data` (a LabeledData) with its class-name labels coded as indices into
    `classes` (a model's classes, or a training set's); data with numeric
    labels (classes None) is returned as it is.  A label that is not in
    `classes` is a ValueError naming it, `of` (whose classes they are) and
    `source` (where the data came from, e.g. its path)."""
    if data.classes is None:
        return data
    index = {name: k for k, name in enumerate(np.asarray(classes).tolist())}
    unknown = [name for name in data.classes.tolist() if name not in index]
    if unknown:
        where = "" if source is None else f"{source}: "
        raise ValueError(f"{where}label {unknown[0]!r} is not a class of {of} "
                         f"(classes: {', '.join(map(str, index))})")
    codes = np.array([index[name] for name in data.classes.tolist()], dtype=data.y.dtype)
    return LabeledData(data.X, codes[data.y.astype(np.intp)], np.asarray(classes))


def builtin(name, *, dtype="float64", seed=0):
    """A built-in data set: (X, y), or a list of clients (X_k, y_k) for federated ones.

    Names in FEDERATED_BUILTINS return clients: "seed-clients" the source
    article's example 4.2 (X1 = [[1, 2], [2, 3]], y1 = [1, 2]; X2 = [[2, 3], [3, 4]],
    y2 = [2, 3]), "fedprox-synthetic" FedProx's Synthetic(1, 1) over 30 devices
    drawn with `seed`.  The others
    return (X, y): "seed", the seed example's X = [[1, 2], [2, 3], [3, 4]], y = [1, 2, 3],
    and scikit-learn's bundled "iris", "digits", "wine", "breast_cancer" and
    "diabetes" (needs scikit-learn).  `seed` only affects generated data.
    """
    dt = _dtype(dtype)
    if name == "seed":
        return _finish(name, np.array(_SEED_X), np.array(_SEED_Y), dt)
    if name == "seed-clients":
        return [_finish(name, np.array(X), np.array(y), dt) for X, y in _SEED_CLIENTS]
    if name == "fedprox-synthetic":
        devices = make_fedprox_synthetic(1.0, 1.0, 30, seed=seed)
        return [_finish(name, X, y, dt) for X, y in devices]
    if name in SKLEARN_BUILTINS:
        return _finish(name, *_sklearn_dataset(name), dt)
    raise ValueError(f"unknown built-in data set {name!r}; choose from {', '.join(BUILTINS)}")


# -- arguments and results ---------------------------------------------------------------

def _dtype(dtype):
    """The numpy dtype for "float32" / "float64" (or their numpy spellings)."""
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in FLOAT_DTYPES:      # np.dtype("float64") == None holds
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


def _choice(value, choices, name):
    """Refuse a `value` that is not one of `choices` (compared by identity for bools)."""
    if not any(value is c or (isinstance(c, str) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")


def _file(path):
    """`path` as a Path to an existing regular file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    return path


def _extension(path):
    """(extension, compression suffix or None) of `path`: data.csv.gz -> (".csv", ".gz")."""
    suffix = Path(path).suffix.lower()
    if suffix in COMPRESSIONS:
        return Path(Path(path).stem).suffix.lower(), suffix
    return suffix, None


def _format(path, delimiter="auto"):
    """The format of `path`: by its extension, else delimited text when a delimiter
    is given, else sniffed from its content."""
    ext, compression = _extension(path)
    fmt = FORMATS.get(ext) or (None if delimiter == "auto" else "csv") or _sniff_format(path)
    if fmt in ("npy", "npz") and compression:
        raise ValueError(f"{path}: a {ext} file cannot be read {compression}-compressed; "
                         f"decompress it (or save X and y with np.savez_compressed as .npz)")
    if fmt is None:
        what = f"unknown extension {ext!r}" if ext else "no extension"
        raise ValueError(f"{path}: {what}, and the content is neither delimited text nor "
                         f"LIBSVM; supported: "
                         f"{', '.join(FORMATS)} (text ones also as .gz, .bz2, .xz)")
    return fmt


def _check_xy(path, X, y):
    """(X, y) if X is 2-d and y 1-d with X's number of rows."""
    if X.ndim != 2:
        raise ValueError(f"{path}: X must be 2-d (n_samples, n_features), got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{path}: y must have shape ({X.shape[0]},), got shape {y.shape}")
    return X, y


def _finish(path, X, y, dt, classes=None):
    """LabeledData of X (C-contiguous, or CSR as it is) and y (or None) as real arrays of
    dtype `dt`."""
    for name, arr in (("X", X), ("y", y)):
        if arr is not None and arr.dtype.kind not in "biuf":
            raise ValueError(f"{path}: {name} must hold real numbers, got dtype {arr.dtype}")
    X = X.astype(dt, copy=False) if sparse.issparse(X) else np.ascontiguousarray(X, dtype=dt)
    return LabeledData(X,
                       None if y is None else np.ascontiguousarray(y, dtype=dt), classes)


def _label_index(path, label, width, names=None):
    """Column index (>= 0) of `label` among `width` columns named `names`."""
    if width < 2:
        raise ValueError(f"{path}: need at least 2 columns (features and a label), got {width}")
    if isinstance(label, str):
        if names is None:
            raise ValueError(f"{path}: label {label!r} is a column name, but the file "
                             "has no header; give the label column's index")
        if label not in names:
            raise ValueError(f"{path}: no column named {label!r}; columns: {', '.join(names)}")
        return names.index(label)
    if isinstance(label, bool) or not isinstance(label, numbers.Integral):
        raise TypeError(f"label must be a column index or name, got {type(label).__name__}")
    if not -width <= label < width:
        raise ValueError(f"{path}: label column {label} is out of range for {width} columns")
    return int(label) % width


def _split_label(A, j):
    """(A without column j, column j of A); j None: (A, None)."""
    return (A, None) if j is None else (np.delete(A, j, axis=1), A[:, j])


def _where(path, line, column, message):
    """A ValueError located at path:line:column."""
    return ValueError(f"{path}:{line}:{column}: {message}")


# -- labels and missing values -------------------------------------------------------------

def _encode(names):
    """(codes with NaN where missing, classes) of an array of class names."""
    names = np.char.strip(np.asarray(names, dtype=str))
    known = ~np.isin(names, list(MISSING_MARKERS))
    classes = np.unique(names[known])
    y = np.full(names.shape, np.nan)
    y[known] = np.searchsorted(classes, names[known])
    return y, classes


def _nan(a):
    """Where `a` is NaN (nowhere for non-float arrays)."""
    return np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, dtype=bool)


def _rows(path, table, missing, rank, size):
    """This rank's rows (X, y, classes) of a whole table, its missing values handled."""
    X, y, classes = _missing(path, table, missing)
    if classes is not None and y.size:               # drop classes left without rows
        used = np.unique(y)
        y, classes = np.searchsorted(used, y).astype(y.dtype), classes[used.astype(np.intp)]
    rows = shard_rows(X.shape[0], rank, size)
    return _take(X, rows, size), None if y is None else _take(y, rows, size), classes


def _take(a, rows, size):
    """a[rows], copied when it is a part (not a view keeping all of `a` alive)."""
    return a[rows].copy() if size > 1 else a[rows]


def _missing(path, table, missing):
    """(X, y, classes) of `table` with missing values (NaN) refused (None), their rows
    dropped ("drop") or X's replaced by column means ("mean"; labels never)."""
    X, y, classes, j, locate = table
    bad_x = _nan(X)
    bad_y = np.zeros(X.shape[0], dtype=bool) if y is None else _nan(y)
    if not (bad_x.any() or bad_y.any()):
        return X, y, classes
    if missing == "drop":
        keep = ~(bad_x.any(axis=1) | bad_y)
        if not keep.any():
            raise ValueError(f"{path}: every row has a missing value; nothing is left "
                             "after missing=\"drop\"")
        return X[keep], None if y is None else y[keep], classes
    if missing == "mean" and not bad_y.any():
        return _impute_means(path, X, bad_x), y, classes
    raise _missing_error(path, bad_x, bad_y, j, locate, missing)


def _missing_error(path, bad_x, bad_y, j, locate, missing):
    """The ValueError for refused missing values, located at the first one."""
    if missing == "mean":                   # only missing labels are refused
        i = int(np.argmax(bad_y))
        return ValueError(f"{locate(i, j)}: missing label ({_count(bad_y.sum(), 'row')} "
                          "without one); labels are never imputed: missing=\"drop\" drops "
                          "those rows")
    bad = bad_x if j is None else np.insert(bad_x, j, bad_y, axis=1)   # file columns
    i, c = np.argwhere(bad)[0]
    return ValueError(f"{locate(int(i), int(c))}: missing value (the first of "
                      f"{_count(bad.sum(), 'missing value')} in "
                      f"{_count(bad.any(axis=1).sum(), 'row')}); choose missing=\"drop\" to "
                      "drop those rows or missing=\"mean\" to fill in each feature column's "
                      "mean (missing labels: drop only)")


def _count(n, noun):
    """'1 row', '2 rows'."""
    return f"{int(n)} {noun}{'s' * (int(n) != 1)}"


def _impute_means(path, X, bad_x):
    """X with its missing values replaced by the mean of their column's other values."""
    counts = (~bad_x).sum(axis=0)
    if not counts.all():
        raise ValueError(f"{path}: feature column {int(np.argmin(counts))} (0-based, the "
                         "label column not counted) has no values to average for "
                         "missing=\"mean\"")
    means = np.where(bad_x, 0.0, X).sum(axis=0) / counts
    return np.where(bad_x, means, X)


def _array_position(path, first_row=0):
    """locate(i, c) for a .npy table whose row i is row first_row + i of the file."""
    return lambda i, c: f"{path}: row {first_row + i}, column {c} (0-based)"


# -- binary formats ------------------------------------------------------------------------

def _np_load(path, **kwargs):
    """np.load, with errors naming `path`."""
    try:
        return np.load(path, **kwargs)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read as {path.suffix}: {exc}") from None


def _read_npy(path, label, missing, rank, size):
    """This rank's rows (X, y, None) of a 2-d .npy array split at column `label`:
    memory-mapped (only these rows are read) unless `missing` needs every row."""
    A = _np_load(path, mmap_mode="r")
    if A.ndim != 2:
        raise ValueError(f"{path}: need a 2-d array (rows, features and label), "
                         f"got shape {A.shape}")
    j = None if label is None else _label_index(path, label, A.shape[1])
    if missing is not None:
        table = _Table(*_split_label(np.asarray(A), j), None, j, _array_position(path))
        return _rows(path, table, missing, rank, size)
    rows = shard_rows(A.shape[0], rank, size)
    X, y = _split_label(np.asarray(A[rows]), j)
    return _missing(path, _Table(X, y, None, j, _array_position(path, rows.start)), None)


def _read_npz(path, need_y=True):
    """The table of arrays "X" and "y" of an .npz file ("y" optional unless need_y;
    strings in "y" are class names)."""
    with _np_load(path) as archive:
        for key in ("X", "y") if need_y else ("X",):
            if key not in archive.files:
                raise ValueError(f"{path}: no array {key!r} (it holds {sorted(archive.files)}); "
                                 "an .npz data file needs arrays 'X' and 'y'")
        if "y" in archive.files:
            X, y = _check_xy(path, archive["X"], archive["y"])
        else:
            X, y = archive["X"], None
            if X.ndim != 2:
                raise ValueError(f"{path}: X must be 2-d (n_samples, n_features), "
                                 f"got shape {X.shape}")
    y, classes = _encode(y) if y is not None and y.dtype.kind in "US" else (y, None)
    d = X.shape[1]

    def locate(i, c):
        return f"{path}: row {i}, " + ("y" if c == d else f"X column {c}")
    return _Table(X, y, classes, None if y is None else d, locate)


# -- text files ----------------------------------------------------------------------------

def _read_text(path, limit=-1):
    """The (decompressed) text of a UTF-8 file, or its first `limit` characters."""
    opener = COMPRESSIONS.get(path.suffix.lower(), open)
    try:
        with _decompressing(path), opener(path, "rt", encoding="utf-8-sig") as f:
            return f.read(limit)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None


@contextlib.contextmanager
def _decompressing(path):
    """Report a compressed file's decompression errors as ValueError naming it."""
    if path.suffix.lower() not in COMPRESSIONS:
        yield
        return
    try:
        yield
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise ValueError(f"{path}: cannot decompress as {path.suffix}: {exc}") from None


def _text_lines(path):
    """(line number, text) of each non-blank line of a UTF-8 text file."""
    return [(n, line) for n, line in enumerate(_read_text(path).split("\n"), 1)
            if line.strip()]


def _head(path):
    """The first few KB of a text file, whole lines only ("" for a binary file)."""
    try:
        head = _read_text(path, _SNIFF_CHARS)
    except (ValueError, OSError):
        return ""
    if "\x00" in head:
        return ""
    return head if len(head) < _SNIFF_CHARS else head[:head.rfind("\n") + 1]


def _sniff(sample):
    """The delimiter `csv.Sniffer` finds in `sample`, else " " when its first lines
    split on runs of whitespace into the same number (>= 2) of fields, else ""."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t| ").delimiter
    except csv.Error:
        widths = {len(line.split()) for line in sample.split("\n")[:5] if line.strip()}
        return " " if len(widths) == 1 and widths.pop() >= 2 else ""


def _sniff_format(path):
    """"svmlight" or "csv" for a text file whose head looks like one, else None."""
    head = _head(path)
    first = next((line for line in head.split("\n")
                  if line.strip() and not line.lstrip().startswith("#")), None)
    if first is None:
        return None
    if _SVMLIGHT_LINE.fullmatch(first):
        return "svmlight"
    return "csv" if _sniff(head) else None


# -- CSV -----------------------------------------------------------------------------------

def _read_csv(path, label, delimiter, header):
    """The whole table of a delimited text file, split at column `label`."""
    lines = _text_lines(path)
    if not lines:
        raise ValueError(f"{path}: no data (the file is empty)")
    delimiter = _csv_delimiter(path, delimiter, lines)
    first = lines[0][1].split(delimiter)
    if header is None:
        header = _looks_like_header(first, lines[1][1].split(delimiter) if lines[1:] else None)
    names = [_unquote(field) for field in first] if header else None
    rows = lines[1:] if header else lines
    if not rows:
        raise ValueError(f"{path}: no data rows after the header")
    j = None if label is None else _label_index(path, label, len(first), names)

    def locate(i, c):
        line, text = rows[i]
        return f"{path}:{line}:{_field_starts(text, delimiter)[c]}"
    X, texts = _parse_csv_rows(path, rows, len(first), delimiter, j)
    y, classes = (None, None) if j is None else _csv_labels(texts, lambda i: locate(i, j))
    return _Table(X, y, classes, j, locate)


def _csv_delimiter(path, delimiter, lines):
    """The delimiter to split with: `delimiter`, or for "auto" the extension's or the
    sniffed one (a space: runs of whitespace, None)."""
    if delimiter == "" or not (delimiter is None or isinstance(delimiter, str)):
        raise ValueError(f"delimiter must be 'auto', a non-empty string or None "
                         f"(whitespace), got {delimiter!r}")
    if delimiter != "auto":
        return delimiter
    ext = _extension(path)[0]
    if ext in DELIMITERS:
        return DELIMITERS[ext]
    sniffed = _sniff("\n".join(text for _, text in lines[:100])[:_SNIFF_CHARS]) or ","
    return None if sniffed == " " else sniffed


def _looks_like_header(first, second):
    """Whether the first line's fields name columns: one is text (not a number, not a
    missing-value marker) above a number or missing value of the second line (one
    line only: any text field)."""
    def text(field):
        return _number(field) is None
    if second is None:
        return any(map(text, first))
    return any(text(a) and not text(b) for a, b in zip(first, second))


def _unquote(field):
    """A field without surrounding blanks and one pair of double quotes."""
    field = field.strip()
    return field[1:-1] if len(field) > 1 and field[0] == field[-1] == '"' else field


def _parse_csv_rows(path, rows, width, delimiter, j):
    """(X with NaN where missing, the label texts or None) of every row."""
    X = np.empty((len(rows), width - (j is not None)))
    texts = []
    for i, (line, text) in enumerate(rows):
        X[i], label = _csv_values(path, line, text, width, delimiter, j)
        texts.append(label)
    return X, None if j is None else texts


def _csv_values(path, line, text, width, delimiter, j):
    """(the feature numbers of one CSV line, NaN where missing; its label text)."""
    fields = text.split(delimiter)
    if len(fields) == width:
        label = None if j is None else fields.pop(j)
        try:
            return list(map(float, fields)), label
        except ValueError:
            values = list(map(_number, fields))
            if None not in values:
                return values, label
    raise _csv_error(path, line, text, width, delimiter, j)


def _number(field):
    """float(field) (quoted or not); NaN for a missing-value marker; None for other text."""
    try:
        return float(field)
    except ValueError:
        field = _unquote(field)
    if field in MISSING_MARKERS:
        return math.nan
    try:
        return float(field)
    except ValueError:
        return None


def _csv_labels(texts, locate):
    """(y, classes) of a label column: numbers (classes None) when every label is a
    number or missing, the codes of the sorted class names when none is a number;
    NaN where missing.  A column mixing both is refused at its first text label."""
    values = list(map(_number, texts))
    if None not in values:
        return np.array(values, dtype=float), None
    numeric = [i for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if numeric:
        i, k = values.index(None), numeric[0]
        raise ValueError(f"{locate(i)}: label {_unquote(texts[i])!r} is not a number, but "
                         f"{locate(k)} is {_unquote(texts[k])!r}; a label "
                         "column holds numbers or class names, not both")
    return _encode(list(map(_unquote, texts)))


def _csv_error(path, line, text, width, delimiter, j):
    """The located error for a CSV line with a wrong field count or a non-number."""
    fields = text.split(delimiter)
    starts = _field_starts(text, delimiter)
    count = f"expected {width} fields, got {len(fields)}"
    if len(fields) > width:
        return _where(path, line, starts[width], count)
    if len(fields) < width:
        return _where(path, line, len(text) + 1, count)
    c = next(c for c, field in enumerate(fields) if c != j and _number(field) is None)
    return _where(path, line, starts[c], f"field {c + 1} is {fields[c].strip()!r}, "
                                         "not a number")


def _field_starts(text, delimiter):
    """The 1-based column where each field of `text` starts (after leading blanks)."""
    if delimiter is None:
        return [m.start() + 1 for m in _TOKEN.finditer(text)]
    starts, pos = [], 0
    for field in text.split(delimiter):
        starts.append(pos + len(field) - len(field.lstrip()) + 1)
        pos += len(field) + len(delimiter)
    return starts


# -- LIBSVM / svmlight -------------------------------------------------------------------

def load_svmlight(path, n_features=None, *, offset=0, length=-1, dtype=np.float64,
                  zero_based="auto", query_id=False, n_threads=None):
    """A LIBSVM / svmlight file (or a byte range of it) as a CSR matrix and labels.

    Lines are ``label [qid:int] index:value index:value ...`` with increasing
    indices; ``#`` starts a comment; blank lines are skipped; CRLF line ends
    are read.  The arguments mean what they mean in scikit-learn's
    ``sklearn.datasets.load_svmlight_file``, and the results are equal to its.
    The text is memory-mapped and parsed by `n_threads` threads into arrays
    allocated at their final sizes (no intermediate copies).

    Parameters
    ----------
    path : str or Path
        The file; ``.gz``, ``.bz2`` and ``.xz`` files are decompressed into
        memory first (offset and length then count decompressed bytes).
    n_features : int or None
        Number of columns of X.  None: the largest index + 1 (of this byte
        range).  A larger index is refused, located.
    offset, length : int
        Read the lines of the byte range [offset, offset + length) (length
        <= 0: to the end): a line belongs to the range holding the byte just
        before it, the first line to the range at offset 0.  So ranges that
        tile the file read every line exactly once, each rank or process
        reading only its own bytes.
    dtype : float32 or float64
        dtype of X (values are parsed as float64 and rounded, as scikit-learn
        does); y is float64.
    zero_based : "auto" or bool
        Whether indices count from 0.  "auto": 0-based when an index 0
        appears, else 1-based -- decided over what is read; with a byte range
        (offset or length given) "auto" means True, as in scikit-learn, since
        one range alone cannot decide for the file (`cyfed.data.load_shard`
        decides "auto" over all ranks' ranges with a communicator).
    query_id : bool
        Also return each row's ``qid:`` value (0 for a row without one).
    n_threads : int or None
        Parser threads; None: OpenMP's default (OMP_NUM_THREADS).

    Returns
    -------
    X : scipy.sparse.csr_matrix, (n_rows, n_features)
        indptr and indices int32 when they fit, else int64; explicit zeros
        in the file are kept, as scikit-learn keeps them.
    y : (n_rows,) float64 array
    qid : (n_rows,) int64 array
        Only when query_id is True.

    Raises ValueError ``"path:line:column: what"`` for malformed text (line
    numbers are the file's, column the 1-based character position of the
    token): a label or value that is not a finite decimal number (inf, nan
    and hexadecimal are refused), a token without ``:``, an index that is
    not an integer >= 0 (>= 1 with zero_based=False), not increasing along
    its line, or >= n_features.

    Notes
    -----
    Memory: the returned arrays plus a table of a few chunks per thread; the
    file is memory-mapped, so only the range's pages are read (the OS may
    cache them).  A compressed file's decompressed text is held in memory
    while it is parsed.  A file without feature values gives X with 0
    columns (scikit-learn's gives 1).
    """
    path, dt = _file(path), _dtype(dtype)
    _svmlight_options(n_features, zero_based)
    for name, value in (("offset", offset), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if zero_based == "auto" and (offset or length > 0):
        zero_based = True                  # scikit-learn's rule for a byte range

    def where(n):
        return offset, (offset + length if length > 0 else n)
    part = _svmlight_range(path, where, dt, zero_based, n_features, bool(query_id), n_threads)
    X = part.matrix(zero_based, n_features, part.stats)
    return (X, part.y, part.qid) if query_id else (X, part.y)


def save_svmlight(path, X, y, *, zero_based=False, query_id=None):
    """Write X (n, d) and y (n,) as a LIBSVM file that `load_svmlight` reads back.

    X may be dense or scipy.sparse; a CSR row's stored values are written (so
    explicit zeros too), a dense row's non-zeros.  Values and labels are written
    in the shortest text that reads back to the same float64 (so float32 data
    round-trips exactly too).  `zero_based` False (the default) writes LIBSVM's
    1-based indices, which "auto" reads back correctly whatever the data;
    `query_id` (n,) integers are written as ``qid:``.  A path ending in .gz,
    .bz2 or .xz is compressed.  Non-finite values are refused (the reader
    refuses them).
    """
    X = sparse.csr_matrix(X)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
    if not (np.isfinite(X.data).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite: LIBSVM readers refuse inf and nan")
    heads = y.astype(str).astype(object)
    if query_id is not None:
        qid = np.asarray(query_id)
        if qid.shape != y.shape or qid.dtype.kind not in "iu":
            raise ValueError(f"query_id must be {y.size} integers, got {qid.dtype} {qid.shape}")
        heads = heads + " qid:" + qid.astype(str).astype(object)
    X.sort_indices()
    tokens = np.char.add(np.char.add((X.indices + (not zero_based)).astype(str), ":"),
                            X.data.astype(np.float64).astype(str)).tolist()
    opener = COMPRESSIONS.get(Path(path).suffix.lower(), open)
    with opener(path, "wt", encoding="ascii") as f:
        for i, head in enumerate(heads.tolist()):
            row = tokens[X.indptr[i]:X.indptr[i + 1]]
            f.write(f"{head} {' '.join(row)}\n" if row else f"{head}\n")
    return Path(path)


# (rows, smallest index, largest index) of LIBSVM text, indices as written (-1, -1: none).
SvmlightStats = namedtuple("SvmlightStats", "rows low high")

_SVMLIGHT_ERRORS = {
    "label": "label {token!r} is not a finite number",
    "qid": "qid in {token!r} is not an integer",
    "colon": "expected index:value, got {token!r}",
    "index": "feature index in {token!r} must be an integer >= {least}{rule}",
    "order": "feature index {index} follows {detail}; indices must increase along a line",
    "value": "value in {token!r} is not a finite number{range}",
    "range": "feature index {detail} is out of range for n_features={n_features} ({basis})",
}


def _svmlight_options(n_features, zero_based):
    """Refuse a bad n_features (None or an int >= 0) or zero_based."""
    if n_features is not None and (isinstance(n_features, bool)
                                   or not isinstance(n_features, numbers.Integral)):
        raise TypeError(f"n_features must be an int or None, got {type(n_features).__name__}")
    if n_features is not None and n_features < 0:
        raise ValueError(f"n_features must be >= 0, got {n_features}")
    _choice(zero_based, (True, False, "auto"), "zero_based")


def _svmlight_range(path, where, dt, zero_based, n_features, query_id=False, n_threads=None):
    """The parsed lines of byte range where(len(text)) -> (start, stop) of a LIBSVM file."""
    threads = check.n_threads(n_threads, _svmlight.max_threads())
    with _svmlight_text(path) as text:
        return _SvmlightRange(path, text, *where(len(text)), dt, zero_based, n_features,
                              query_id, threads)


def _svmlight_file_stats(path, zero_based, n_threads=None):
    """SvmlightStats of a whole LIBSVM file (indices checked, labels and values not read)."""
    threads = check.n_threads(n_threads, _svmlight.max_threads())
    least = int(zero_based is False)
    with _svmlight_text(path) as text:
        begin, end = _svmlight.line_range(text, 0, len(text))
        try:
            return SvmlightStats(*_svmlight.scan(text, begin, end, least, -1, threads))
        except _svmlight.ParseError as error:
            raise _svmlight_error(path, text, error, least=least) from None


class _SvmlightRange:
    """The lines of one byte range of a LIBSVM file, parsed into CSR arrays with the
    indices as written (`matrix` makes X once zero-basedness and width are known)."""

    def __init__(self, path, text, start, stop, dt, zero_based, n_features, query_id,
                 n_threads):
        self.path, self.n_threads = path, n_threads
        self.least = int(zero_based is False)
        self.begin, self.end = _svmlight.line_range(text, start, stop)
        # Indices as written: at most n_features - 1 when 0-based, n_features when
        # 1-based or not known yet ("auto", checked again by `matrix`).
        limit = -1 if n_features is None else n_features - (zero_based is True)
        try:
            (self.indptr, self.indices, self.data, self.y, self.qid, low,
             high) = _svmlight.parse(text, self.begin, self.end, dt, self.least, limit,
                                     query_id, n_threads)
        except _svmlight.ParseError as error:
            raise _svmlight_error(path, text, error, least=self.least, n_features=n_features,
                                  one_based=None if zero_based == "auto" else not zero_based,
                                  dtype=dt) from None
        self.stats = SvmlightStats(self.y.size, low, high)

    def matrix(self, zero_based, n_features, stats):
        """X as a csr_matrix, 0-based, given the file's (or the agreed) `stats`: 1-based
        unless an index 0 appears there ("auto"); n_features None: the largest index
        there + 1.  An index of this range beyond n_features is refused, located."""
        one_based = zero_based is False or (zero_based == "auto" and stats.low > 0)
        width = max(stats.high + 1 - one_based, 0) if n_features is None else n_features
        if self.stats.high - one_based >= width:
            self._refuse_beyond(width, one_based)
        if one_based:
            np.subtract(self.indices, 1, out=self.indices)
        X = sparse.csr_matrix((self.data, self.indices, self.indptr),
                              shape=(self.stats.rows, width))
        X.has_sorted_indices = True                    # indices increase along each line
        return X

    def _refuse_beyond(self, n_features, one_based):
        """Raise the located error of this range's first index beyond n_features."""
        with _svmlight_text(self.path) as text:
            try:
                _svmlight.scan(text, self.begin, self.end, self.least,
                               n_features - 1 + one_based, self.n_threads)
            except _svmlight.ParseError as error:
                raise _svmlight_error(self.path, text, error, n_features=n_features,
                                      one_based=one_based) from None


def _svmlight_error(path, text, error, *, least=0, n_features=None, one_based=None,
                    dtype=np.dtype(np.float64)):
    """The ValueError "path:line:column: what" for a ParseError of `text`."""
    pos = error.pos
    line_start = text.rfind(b"\n", 0, pos) + 1
    column = len(text[line_start:pos].decode("utf-8-sig", "replace")) + 1
    token = (text[pos:pos + 256].split(None, 1) or [b""])[0].split(b"#", 1)[0]
    token = token.decode("utf-8", "replace")
    basis = {True: f"1-based indices 1..{n_features}",
             False: f"0-based indices 0..{n_features - 1 if n_features else -1}",
             None: f"indices up to {n_features} if 1-based, "
                   f"{n_features - 1 if n_features else -1} if 0-based"}[one_based]
    message = _SVMLIGHT_ERRORS[error.code].format(
        token=token, least=least, index=token.partition(":")[0], detail=error.detail,
        rule=" (zero_based=False: LIBSVM indices are 1-based)" if least else "",
        range=" (or beyond float32's range)" if dtype == np.float32 else "",
        n_features=n_features, basis=basis)
    return _where(path, _svmlight.count_newlines(text, pos) + 1, column, message)


@contextlib.contextmanager
def _svmlight_text(path):
    """The bytes of a LIBSVM file: a read-only memory map, or the decompressed bytes
    of a compressed file (b"" for an empty file, which cannot be mapped)."""
    if path.suffix.lower() in COMPRESSIONS:
        with _decompressing(path):
            with COMPRESSIONS[path.suffix.lower()](path, "rb") as f:
                text = f.read()
        yield text
        return
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as text:
            yield text


def _byte_share(n, rank, size):
    """(start, stop): rank's contiguous share of n bytes."""
    return rank * n // size, (rank + 1) * n // size


def _read_svmlight(path, dt, rank, size, n_features, zero_based):
    """This rank's rows (X as CSR, y, None) of a LIBSVM file: the lines of its byte
    share (`_byte_share`).  With several ranks, n_features=None or
    zero_based="auto" are decided over the whole file by a scan of its indices
    (each rank reads all of it once, without parsing values); with both given each
    rank reads only its share."""
    part = _svmlight_range(path, functools.partial(_byte_share, rank=rank, size=size), dt,
                           zero_based, n_features)
    if size == 1:
        stats = part.stats
    elif n_features is None or zero_based == "auto":
        stats = _svmlight_file_stats(path, zero_based)
    else:                                       # nothing to agree on
        return part.matrix(zero_based, n_features, part.stats), part.y, None
    if stats.rows == 0:
        raise ValueError(f"{path}: no data rows")
    if n_features is None and stats.high < 0:
        raise ValueError(f"{path}: no feature values in any row")
    return part.matrix(zero_based, n_features, stats), part.y, None


def _check_dense_size(path, n, d, dt, max_bytes):
    """Refuse a dense (n, d) array of dtype `dt` larger than max_bytes."""
    nbytes = n * d * dt.itemsize
    if nbytes > max_bytes:
        raise ValueError(f"{path}: densifying {n:,} rows x {d:,} features as {dt.name} needs "
                         f"{_human_bytes(nbytes)} ({nbytes:,} bytes), over the limit "
                         f"max_bytes={_human_bytes(max_bytes)}; raise max_bytes or spread "
                         "the rows over more ranks")


def _human_bytes(nbytes):
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.2f} MiB"


# -- clients -------------------------------------------------------------------------------

def _data_files(directory):
    """The files of `directory` that `load` reads by extension, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and _extension(p)[0] in FORMATS)


def _load_directory(directory, load_kwargs):
    """One client per data file of `directory`, all with the same number of features
    and their class names coded alike."""
    files = _data_files(directory)
    if not files:
        raise ValueError(f"{directory}: no client files (extensions {', '.join(FORMATS)})")
    clients = [load(f, **_shared_svmlight_layout(files, load_kwargs)) for f in files]
    for f, (X, _) in zip(files, clients):
        if X.shape[1] != clients[0][0].shape[1]:
            raise ValueError(f"{f}: {X.shape[1]} features, but {files[0].name} has "
                             f"{clients[0][0].shape[1]} (LIBSVM files: pass n_features=)")
    return _common_classes(files, clients)


def _shared_svmlight_layout(files, load_kwargs):
    """load_kwargs with zero_based="auto" and n_features=None decided once for all
    LIBSVM `files` (a client file need not use the last features)."""
    svmlight = [f for f in files if FORMATS[_extension(f)[0]] == "svmlight"]
    zero_based = load_kwargs.get("zero_based", "auto")
    if not svmlight or (zero_based != "auto" and load_kwargs.get("n_features") is not None):
        return load_kwargs
    stats = [_svmlight_file_stats(f, zero_based) for f in svmlight]
    if zero_based == "auto":
        zero_based = any(st.low == 0 for st in stats)
    width = max(st.high for st in stats) + (zero_based is True)
    return {**load_kwargs, "zero_based": zero_based,
            "n_features": load_kwargs.get("n_features") or max(width, 0)}


def _common_classes(files, clients):
    """Clients with class-name labels coded by the union of their classes."""
    named = [client.classes is not None for client in clients]
    if not any(named):
        return clients
    if not all(named):
        raise ValueError(f"{files[named.index(False)]}: numeric labels, but "
                         f"{files[named.index(True)].name} has class names; the clients "
                         "must label alike")
    classes = np.unique(np.concatenate([client.classes for client in clients]))
    return [relabel(client, classes) for client in clients]


def split_clients(data, partition, n_clients, *, seed=0, alpha=0.5, min_size=None):
    """The rows of `data` (LabeledData or (X, y)) as n_clients clients (LabeledData) by
    the partitioner `partition` of PARTITIONS."""
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; choose from {', '.join(PARTITIONS)}")
    if n_clients is None:
        raise ValueError(f"partition={partition!r} needs n_clients")
    X, y = data
    classes = getattr(data, "classes", None)
    sizes = {} if min_size is None else {"min_size": min_size}
    return [LabeledData(X[rows], y[rows], classes)
            for rows in PARTITIONS[partition](y, n_clients, seed, alpha, sizes)]


def _client_labels(client, fmt):
    """A client's y to save: its class names when it has classes (npz only)."""
    X, y = client
    classes = getattr(client, "classes", None)
    if classes is None:
        return np.asarray(y)
    if fmt in ("npy", "svm"):
        raise ValueError(f"the labels are class names ({', '.join(map(str, classes))}), and "
                         f"{fmt} client files hold numbers only: save as npz")
    return np.asarray(classes)[np.asarray(y).astype(np.intp)]


def _clear_clients(directory, force):
    """Make `directory` hold no data file, deleting earlier client files if `force`."""
    old = _data_files(directory)
    others = [p.name for p in old if not p.name.startswith("client_")]
    if others:
        raise FileExistsError(f"{directory} holds {others[0]}, which load_clients would read "
                              "as a client too; save into another directory")
    if old and not force:
        raise FileExistsError(f"{directory} already holds {len(old)} client file(s) "
                              f"({old[0].name}, ...); pass force=True to replace them")
    for p in old:
        p.unlink()


def _write_client(path, X, y):
    if path.suffix == ".svm":
        save_svmlight(path, X, y)
    elif path.suffix == ".npz":
        np.savez(path, X=X, y=y)
    else:
        np.save(path, np.column_stack([X, y]))


def _sklearn_dataset(name):
    """(X, y) of scikit-learn's bundled data set `name`."""
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError(f"the built-in data set {name!r} comes from scikit-learn, which is "
                          "not installed: pip install scikit-learn") from None
    return getattr(datasets, f"load_{name}")(return_X_y=True)
