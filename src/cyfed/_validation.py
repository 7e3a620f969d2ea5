"""Argument checks shared by the public wrappers (run before any nogil code)."""
import numbers
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
    return np.require(arr, requirements=("C", "A"))


def vector(a, name, length, dtype):
    """A C-contiguous 1-d array of `length` in `dtype`."""
    arr = real_array(a, name)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got shape {arr.shape}")
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
