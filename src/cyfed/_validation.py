"""Argument checks shared by the public wrappers (run before any nogil code)."""
import numbers
import sys
import warnings

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_THREADS = 1 << 16


def real_array(a, name):
    """`a` as an ndarray: float32/float64 kept, other real numbers (integer, bool,
    float16, long double) -> float64, else TypeError."""
    arr = np.asarray(a)
    if arr.dtype in FLOAT_DTYPES:
        return arr
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64)
    raise TypeError(f"{name} must be a float32, float64, integer or bool array, "
                    f"got dtype {arr.dtype}")


def matrix(a, name, *, allow_empty=False):
    """A C-contiguous, aligned 2-d float array (copied once if strided, Fortran-ordered
    or misaligned)."""
    arr = real_array(a, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array of shape (n_samples, n_features), "
                         f"got shape {arr.shape}")
    if arr.shape[1] == 0 or (arr.shape[0] == 0 and not allow_empty):
        raise ValueError(f"{name} must have at least one row and one column, "
                         f"got shape {arr.shape}")
    if arr.flags.c_contiguous and arr.flags.aligned:
        return arr
    return np.require(arr, requirements=("C", "A"))


def is_sparse(a):
    """Whether `a` is a scipy.sparse matrix or array (without importing scipy.sparse:
    when it is not loaded, nothing can be one)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(a)


def csr(a, name, *, allow_empty=False):
    """A scipy.sparse matrix/array as CSR with float32/float64 values and a valid indptr.

    Other sparse formats (CSC, COO, ...) are converted to CSR (a copy; pass CSR to
    avoid it), other real value dtypes to float64 (as `real_array`).  Unsorted column
    indices and duplicate entries are kept (the kernels sum duplicates, as scipy
    does).  indptr is checked here (O(n)); the column indices are checked by the
    kernels as they read them (O(nnz), no extra pass).
    """
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-d of shape (n_samples, n_features), "
                         f"got shape {a.shape}")
    X = a if a.format == "csr" else a.tocsr()
    n, d = X.shape
    if d == 0 or (n == 0 and not allow_empty):
        raise ValueError(f"{name} must have at least one row and one column, "
                         f"got shape {X.shape}")
    if X.dtype not in FLOAT_DTYPES:
        if X.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold float32, float64, integer or bool values, "
                            f"got dtype {X.dtype}")
        X = X.astype(np.float64)
    indptr = np.asarray(X.indptr)
    if indptr.dtype.kind not in "iu" or np.asarray(X.indices).dtype.kind not in "iu":
        raise TypeError(f"{name}.indptr and {name}.indices must be integer arrays, got "
                        f"{indptr.dtype} and {np.asarray(X.indices).dtype}")
    stored = min(len(X.data), len(X.indices))
    expected = (f"{name}.indptr must be {n + 1} non-decreasing offsets from 0 to at most "
                f"{stored} (the stored entries)")
    if indptr.shape != (n + 1,):
        raise ValueError(f"{expected}, got shape {indptr.shape}")
    if indptr[0] != 0 or indptr[-1] > stored:
        raise ValueError(f"{expected}, got {indptr[0]} .. {indptr[-1]}")
    down = np.flatnonzero(indptr[1:] < indptr[:-1])
    if down.size:
        i = int(down[0])
        raise ValueError(f"{expected}, got {name}.indptr[{i + 1}] = {indptr[i + 1]} < "
                         f"{name}.indptr[{i}] = {indptr[i]}")
    return X


def csr_arrays(X):
    """(data, indices, indptr, n_features) of a `csr`-checked matrix, as the sparse
    kernels take them: C-contiguous, the nnz stored entries only, indices and indptr
    both int32 (when both are) or both int64."""
    both32 = X.indices.dtype == np.int32 and X.indptr.dtype == np.int32
    index = np.int32 if both32 else np.int64
    nnz = int(X.indptr[-1])
    return (np.ascontiguousarray(X.data[:nnz]),
            np.ascontiguousarray(X.indices[:nnz], dtype=index),
            np.ascontiguousarray(X.indptr, dtype=index), X.shape[1])


def finite_csr(X, name, rows=None):
    """Raise ValueError if the stored values of X (X[rows] if given) hold NaN or
    infinity, naming the first bad entry's row (of X) and column."""
    part = X if rows is None else X[rows]
    nnz = int(part.indptr[-1])
    bad = np.flatnonzero(~np.isfinite(part.data[:nnz]))
    if bad.size:
        p = int(bad[0])
        i = int(np.searchsorted(part.indptr, p, side="right")) - 1
        row = i if rows is None else int(rows[i])
        raise ValueError(f"{name} contains NaN or infinity in row {row} "
                         f"({name}[{row}, {int(part.indices[p])}] = {part.data[p]})")


def vector(a, name, length, dtype):
    """A C-contiguous 1-d array of `length` in `dtype`."""
    arr = real_array(a, name)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got shape {arr.shape}")
    if arr.dtype == dtype and arr.flags.c_contiguous and arr.flags.aligned:
        return arr                      # as it is (np.require costs microseconds per call)
    return np.require(arr, dtype=dtype, requirements=("C", "A"))


def finite(arr, name):
    """Raise ValueError if `arr` holds NaN or infinity, naming the first bad entry."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = idx[0] if len(idx) == 1 else idx
        raise ValueError(f"{name} contains NaN or infinity ({name}[{where}] = {arr[idx]})")
    return arr


def is_int(value):
    """Whether `value` is an integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def finite_real(value, name, low=None):
    """`value` as a float, or ValueError unless it is a finite real number (not a bool),
    and >= low when low is given."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not np.isfinite(value) or (low is not None and value < low)):
        bound = "" if low is None else f" >= {low}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def real_in(value, name, low, high):
    """`value` as a float, or ValueError unless it is a real number in [low, high)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not np.isfinite(value) or not low <= value < high):
        raise ValueError(f"{name} must be in [{low}, {high}), got {value!r}")
    return float(value)


def nonnegative_float(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def positive_float(value, name):
    """`value` as a float, or ValueError unless it is a finite real number > 0."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not np.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def int_at_least(value, name, low, high=None):
    """`value` as an int, or ValueError unless it is an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low \
            or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return int(value)


def optional_int_at_least(value, name, low):
    """None, or `value` as an int >= low (ValueError otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low} or None, got {value!r}")
    return int(value)


def in_unit_interval(value, name):
    """`value` as a float in [0, 1) (ValueError otherwise)."""
    return real_in(value, name, 0, 1)


class InvalidParameterError(ValueError, TypeError):
    """A hyper-parameter of the wrong type or value (both a ValueError and a TypeError,
    as scikit-learn's of the same name)."""


def boolean(value, name):
    """`value` as a bool: Python or numpy bools only (InvalidParameterError otherwise)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def compressor(value, name):
    """`value` unless it is neither None nor a cyfed.compress compressor (TypeError)."""
    from cyfed import compress

    if value is not None and not isinstance(value, compress.Compressor):
        raise TypeError(f"{name} must be a cyfed.compress compressor (FP16(), TopK(k), ...) "
                        f"or None, got {type(value).__name__}")
    return value


def n_threads(value, default):
    """None -> `default`; otherwise an int >= 1."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"n_threads must be an int >= 1 or None, got {type(value).__name__}")
    if not 1 <= value <= MAX_THREADS:
        raise ValueError(f"n_threads must be in [1, {MAX_THREADS}] or None, got {value}")
    return int(value)


def row_indices(rows, n):
    """Row indices as a C-contiguous intp array (range is checked in the kernel)."""
    arr = np.asarray(rows)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"rows must be an integer array of row indices, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"rows must be a non-empty 1-d array of indices into X's {n} rows, "
                         f"got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.intp)


def warn_non_finite(client_ids):
    """Name the clients whose NaN/Inf updates are left out of the round's aggregate."""
    bad = [int(c) for c in client_ids]
    warnings.warn(f"client update(s) from client id(s) {bad} are NaN/Inf and are left out "
                  "of this round's aggregate", RuntimeWarning, stacklevel=4)
