"""Reading training data from files, and the built-in data sets.

* `load(path, ...) -> (X, y)`: one data set, or one rank's rows of it, from
  .npy (memory-mapped), .npz, CSV (.csv, .txt) or LIBSVM/svmlight text
  (.svm, .libsvm, .svmlight; densified under a memory limit);
* `load_xy(x_path, y_path, ...)`: X and y kept as two .npy files;
* `load_clients(path, ...)`: federated clients from a directory of per-client
  files, or from one file split by a partitioner of `cyfed.data`;
* `save_clients(clients, directory)`: the directory `load_clients` reads;
* `builtin(name)`: the seed's toy data, FedProx Synthetic(1, 1) and
  scikit-learn's bundled data sets.

Every function returns X as a C-contiguous 2-d array and y as a 1-d array, both
in the requested float dtype ("float32" or "float64").  Malformed text input is
reported as ``ValueError("path:line:column: ...")``, the column being the
1-based character position where the bad field or token starts.
"""
import numbers
import re
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np

from cyfed._validation import FLOAT_DTYPES
from cyfed.data import (dirichlet, iid, load_shard, make_fedprox_synthetic, quantity_skew,
                        shard_rows, shards)

FORMATS = {".npy": "npy", ".npz": "npz", ".csv": "csv", ".txt": "csv",
           ".svm": "svmlight", ".libsvm": "svmlight", ".svmlight": "svmlight"}
PARTITIONS = {
    "iid": lambda y, n_clients, seed, alpha: iid(y.size, n_clients, seed=seed),
    "dirichlet": lambda y, n_clients, seed, alpha: dirichlet(y, n_clients, alpha, seed=seed),
    "shards": lambda y, n_clients, seed, alpha: shards(y, n_clients, seed=seed),
    "quantity": lambda y, n_clients, seed, alpha: quantity_skew(y.size, n_clients,
                                                                alpha=alpha, seed=seed),
}
SKLEARN_BUILTINS = ("iris", "digits", "wine", "breast_cancer", "diabetes")
FEDERATED_BUILTINS = ("fedprox-synthetic",)
BUILTINS = ("seed", *FEDERATED_BUILTINS, *SKLEARN_BUILTINS)

# The seed example's least-squares data (`cyfed demo`, mpi_examples/federated_seed.py).
_SEED_X = ((1.0, 2.0), (2.0, 3.0), (3.0, 4.0))
_SEED_Y = (1.0, 2.0, 3.0)

_TOKEN = re.compile(r"\S+")
_Ranks = namedtuple("_Ranks", "rank size")      # the part of a Communicator load_shard reads


def load(path, *, label=-1, dtype="float64", delimiter=",", header=None, rank=0, size=1,
         max_bytes=2**31, n_features=None):
    """This rank's rows (X, y) of a data file, chosen by the file's extension.

    Parameters
    ----------
    path : str or Path
        .npy: a 2-d array, memory-mapped so only this rank's rows are read;
        .npz: arrays "X" (n, d) and "y" (n,); .csv/.txt: delimited text;
        .svm/.libsvm/.svmlight: ``label index:value ...`` lines, 1-based
        indices in increasing order, ``#`` comments, densified.
    label : int, str or None
        Column of y in a .npy or CSV file (negative counts from the end); a
        name needs a CSV header.  The other columns are X.  None: the file has
        no label column (X is every column, y is None; an .npz file's "y" and
        LIBSVM labels are returned when present).
    dtype : "float32" or "float64"
        dtype of X and y.
    delimiter : str or None
        CSV field separator; None splits on runs of whitespace.
    header : bool or None
        Whether a CSV file's first non-blank line holds column names; None
        guesses (a header is a first line with a non-numeric field).
    rank, size : int
        Keep rows ``cyfed.data.shard_rows(n, rank, size)``.
    max_bytes : int
        Refuse to densify LIBSVM rows whose dense X (this rank's rows x
        n_features x itemsize) would exceed this many bytes.
    n_features : int or None
        Width of a LIBSVM X; None: the largest feature index in the file.

    Returns
    -------
    X : (n_rank, d) C-contiguous array of `dtype`
    y : (n_rank,) array of `dtype` (None: label=None and no labels in the file)
    """
    path, dt = _file(path), _dtype(dtype)
    fmt = _format(path)
    if fmt == "npy":
        X, y = _read_npy(path, label, rank, size)
    elif fmt == "npz":
        X, y = _read_npz(path, rank, size, need_y=label is not None)
    elif fmt == "csv":
        X, y = _read_csv(path, label, delimiter, header, rank, size)
    else:
        X, y = _read_svmlight(path, dt, rank, size, max_bytes, n_features)
    return _finish(path, X, y, dt)


def load_xy(x_path, y_path, *, dtype="float64", rank=0, size=1):
    """This rank's rows of X (n, d) and y (n,) kept as two .npy files (memory-mapped)."""
    dt = _dtype(dtype)
    X, y = load_shard(_file(x_path), _file(y_path), comm=_Ranks(rank, size))
    return _finish(x_path, X, y, dt)


def load_clients(path, *, partition=None, n_clients=None, seed=0, alpha=0.5, **load_kwargs):
    """Federated clients as a list of (X_k, y_k).

    A directory gives one client per data file in it (sorted by name, any
    format `load` reads; other files are ignored).  A single file is split by
    `partition` ("iid", "dirichlet", "shards" or "quantity", the partitioners
    of `cyfed.data`, with `seed`; `alpha` is the Dirichlet concentration of
    "dirichlet" and "quantity") into `n_clients` clients.  `load_kwargs` go to
    `load`; clients are loaded whole, so `rank` and `size` are not accepted.
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
    return _load_partitioned(path, partition, n_clients, seed, alpha, load_kwargs)


def save_clients(clients, directory, fmt="npz", *, force=False):
    """Write client k as directory/client_<k>.<fmt>, which `load_clients` reads back.

    fmt "npz" stores arrays "X" and "y"; "npy" stores one array with y as its
    last column.  k is zero-padded (at least 3 digits) so that name order is
    client order.  A directory already holding earlier client files is refused
    unless `force=True`, which deletes them first (so no stale client is read
    back); one holding other data files is always refused.  Returns the paths.
    """
    if fmt not in ("npz", "npy"):
        raise ValueError(f"fmt must be 'npz' or 'npy', got {fmt!r}")
    arrays = [_check_xy(f"client {k}", np.asarray(X), np.asarray(y))
              for k, (X, y) in enumerate(clients)]
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


def builtin(name, *, dtype="float64", seed=0):
    """A built-in data set: (X, y), or a list of clients (X_k, y_k) for federated ones.

    Names in FEDERATED_BUILTINS return clients: "fedprox-synthetic" is
    FedProx's Synthetic(1, 1) over 30 devices drawn with `seed`.  The others
    return (X, y): "seed", the seed example's X = [[1, 2], [2, 3], [3, 4]], y = [1, 2, 3],
    and scikit-learn's bundled "iris", "digits", "wine", "breast_cancer" and
    "diabetes" (needs scikit-learn).  `seed` only affects generated data.
    """
    dt = _dtype(dtype)
    if name == "seed":
        return _finish(name, np.array(_SEED_X), np.array(_SEED_Y), dt)
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


def _file(path):
    """`path` as a Path to an existing regular file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    return path


def _format(path):
    """The format name for `path`'s extension."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown extension {path.suffix!r}; supported: "
                         f"{', '.join(FORMATS)}") from None


def _check_xy(path, X, y):
    """(X, y) if X is 2-d and y 1-d with X's number of rows."""
    if X.ndim != 2:
        raise ValueError(f"{path}: X must be 2-d (n_samples, n_features), got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{path}: y must have shape ({X.shape[0]},), got shape {y.shape}")
    return X, y


def _finish(path, X, y, dt):
    """X (C-contiguous) and y (or None) as real arrays of dtype `dt`."""
    for name, arr in (("X", X), ("y", y)):
        if arr is not None and arr.dtype.kind not in "biuf":
            raise ValueError(f"{path}: {name} must hold real numbers, got dtype {arr.dtype}")
    return (np.ascontiguousarray(X, dtype=dt),
            None if y is None else np.ascontiguousarray(y, dtype=dt))


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


# -- binary formats ------------------------------------------------------------------------

def _np_load(path, **kwargs):
    """np.load, with errors naming `path`."""
    try:
        return np.load(path, **kwargs)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read as {path.suffix}: {exc}") from None


def _read_npy(path, label, rank, size):
    """This rank's rows of a 2-d .npy array, memory-mapped, split at column `label`."""
    A = _np_load(path, mmap_mode="r")
    if A.ndim != 2:
        raise ValueError(f"{path}: need a 2-d array (rows, features and label), "
                         f"got shape {A.shape}")
    j = None if label is None else _label_index(path, label, A.shape[1])
    return _split_label(np.asarray(A[shard_rows(A.shape[0], rank, size)]), j)


def _read_npz(path, rank, size, need_y=True):
    """This rank's rows of arrays "X" and "y" of an .npz file ("y" optional unless need_y)."""
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
    rows = shard_rows(X.shape[0], rank, size)
    return X[rows], None if y is None else y[rows]


# -- CSV -----------------------------------------------------------------------------------

def _text_lines(path):
    """(line number, text) of each non-blank line of a UTF-8 text file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [(n, line.rstrip("\n")) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None


def _read_csv(path, label, delimiter, header, rank, size):
    """This rank's rows of a delimited text file, split at column `label`."""
    if delimiter == "":
        raise ValueError("delimiter must be a non-empty string or None (whitespace)")
    lines = _text_lines(path)
    if not lines:
        raise ValueError(f"{path}: no data (the file is empty)")
    first = lines[0][1].split(delimiter)
    if header is None:
        header = not all(_is_number(field) for field in first)
    names = [field.strip() for field in first] if header else None
    rows = lines[1:] if header else lines
    if not rows:
        raise ValueError(f"{path}: no data rows after the header")
    j = None if label is None else _label_index(path, label, len(first), names)
    keep = shard_rows(len(rows), rank, size)
    return _split_label(_parse_csv_rows(path, rows, len(first), delimiter, keep), j)


def _parse_csv_rows(path, rows, width, delimiter, keep):
    """Parse every row (so every rank sees the same errors); return the rows in `keep`."""
    out = np.empty((keep.stop - keep.start, width))
    for i, (line, text) in enumerate(rows):
        values = _csv_values(path, line, text, width, delimiter)
        if keep.start <= i < keep.stop:
            out[i - keep.start] = values
    return out


def _csv_values(path, line, text, width, delimiter):
    """The `width` numbers of one CSV line."""
    fields = text.split(delimiter)
    if len(fields) == width:
        try:
            return list(map(float, fields))
        except ValueError:
            pass
    raise _csv_error(path, line, text, fields, width, delimiter)


def _csv_error(path, line, text, fields, width, delimiter):
    """The located error for a CSV line with a wrong field count or a non-number."""
    starts = _field_starts(text, delimiter)
    count = f"expected {width} fields, got {len(fields)}"
    if len(fields) > width:
        return _where(path, line, starts[width], count)
    if len(fields) < width:
        return _where(path, line, len(text) + 1, count)
    j = next(j for j, field in enumerate(fields) if not _is_number(field))
    return _where(path, line, starts[j], f"field {j + 1} is {fields[j].strip()!r}, "
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


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- LIBSVM / svmlight -------------------------------------------------------------------

def _read_svmlight(path, dt, rank, size, max_bytes, n_features):
    """This rank's rows of a LIBSVM file as dense X (n_rank, n_features) and y."""
    labels, counts, indices, values = _parse_svmlight(path)
    d = _svmlight_width(path, indices, n_features)
    rows = shard_rows(labels.size, rank, size)
    n = rows.stop - rows.start
    _check_dense_size(path, n, d, dt, max_bytes)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    lo, hi = offsets[rows.start], offsets[rows.stop]
    X = np.zeros((n, d), dtype=dt)
    X[np.repeat(np.arange(n), counts[rows]), indices[lo:hi] - 1] = values[lo:hi]
    return X, labels[rows]


def _parse_svmlight(path):
    """Labels, feature counts per row, and the rows' flat 1-based indices and values."""
    labels, counts, indices, values = [], [], [], []
    for line, text in _text_lines(path):
        tokens = [(m.start() + 1, m.group()) for m in _TOKEN.finditer(text.split("#", 1)[0])]
        if not tokens:
            continue                                    # a comment line
        labels.append(_svmlight_label(path, line, *tokens[0]))
        row = _svmlight_features(path, line, tokens[1:])
        counts.append(len(row))
        indices.extend(index for index, _ in row)
        values.extend(value for _, value in row)
    if not labels:
        raise ValueError(f"{path}: no data rows")
    return (np.array(labels), np.array(counts, dtype=np.intp),
            np.array(indices, dtype=np.intp), np.array(values))


def _svmlight_label(path, line, column, token):
    try:
        return float(token)
    except ValueError:
        raise _where(path, line, column, f"label {token!r} is not a number") from None


def _svmlight_features(path, line, tokens):
    """[(index, value)] of one line's ``index:value`` tokens (indices 1-based, increasing)."""
    row, previous = [], 0
    for column, token in tokens:
        index, colon, value = token.partition(":")
        if not colon:
            raise _where(path, line, column, f"expected index:value, got {token!r}")
        try:
            index = int(index)
        except ValueError:
            index = 0
        if index < 1:
            raise _where(path, line, column, f"feature index in {token!r} must be an integer "
                                             ">= 1 (LIBSVM indices are 1-based)")
        if index <= previous:
            raise _where(path, line, column, f"feature index {index} follows {previous}; "
                                             "indices must increase along a line")
        try:
            row.append((index, float(value)))
        except ValueError:
            raise _where(path, line, column, f"value in {token!r} is not a number") from None
        previous = index
    return row


def _svmlight_width(path, indices, n_features):
    """n_features, or the largest index when None; at least every index used."""
    largest = int(indices.max(initial=0))
    if n_features is None:
        if largest == 0:
            raise ValueError(f"{path}: no feature values in any row")
        return largest
    least = max(largest, 1)
    if not isinstance(n_features, numbers.Integral) or n_features < least:
        raise ValueError(f"{path}: n_features must be an int >= {least} (the largest feature "
                         f"index used), got {n_features!r}")
    return int(n_features)


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
    """The files of `directory` that `load` reads, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)


def _load_directory(directory, load_kwargs):
    """One client per data file of `directory`, all with the same number of features."""
    files = _data_files(directory)
    if not files:
        raise ValueError(f"{directory}: no client files (extensions {', '.join(FORMATS)})")
    clients = [load(f, **load_kwargs) for f in files]
    for f, (X, _) in zip(files, clients):
        if X.shape[1] != clients[0][0].shape[1]:
            raise ValueError(f"{f}: {X.shape[1]} features, but {files[0].name} has "
                             f"{clients[0][0].shape[1]} (LIBSVM files: pass n_features=)")
    return clients


def _load_partitioned(path, partition, n_clients, seed, alpha, load_kwargs):
    """One file's rows split into n_clients clients by a partitioner."""
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; choose from {', '.join(PARTITIONS)}")
    if n_clients is None:
        raise ValueError(f"partition={partition!r} needs n_clients")
    X, y = load(path, **load_kwargs)
    return [(X[rows], y[rows]) for rows in PARTITIONS[partition](y, n_clients, seed, alpha)]


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
    if path.suffix == ".npz":
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
