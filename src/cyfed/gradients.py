"""Loss values, gradients and predictions of linear models (validating front end).

Models, for X of shape (n, d), weights w_i >= 0 with W = sum_i w_i:

* ``"squared"``:  z_i = x_i.theta + b,  l_i = (z_i - y_i)^2  (the seed's
  convention: gradient 2/n X^T (X theta - y) with unit weights).
* ``"logistic"``: y_i in {0, 1},  l_i = log(1 + e^{z_i}) - y_i z_i.
* ``"softmax"``:  theta of shape (d, k), y_i in 0..k-1,
  l_i = logsumexp(z_i) - z_{i, y_i}  with z_i = x_i theta + b in R^k.

value = (1/W) sum_i w_i l_i + (l2/2) ||theta||^2 (the intercept is not
penalised).  All of it is computed in one fused pass over X by the compiled
kernels; this module checks and coerces the arguments first.

The working dtype is X's: float32 and float64 are kept, integer and bool X
become float64; y, coef, intercept and sample_weight are cast to it and the
gradients come back in it.  Sums are accumulated in float64 either way.

X may be a scipy.sparse matrix or array: CSR is used as it is (values float32 or
float64, indices int32 or int64; unsorted column indices are fine and duplicate
entries add up, as in scipy), other formats (CSC, COO, ...) are converted to CSR
first (a copy per call: pass CSR).  The CSR kernels (cyfed._sparse_losses) make
one pass over the nonzeros with the same results as the dense ones on X.toarray().
"""
import numbers

import numpy as np

from cyfed import _validation as check
from cyfed._simd import load

_kernels, SIMD_LEVEL = load("_losses")
_sparse, _ = load("_sparse_losses")
Kind, Status = _kernels.LossKind, _kernels.Status

LOSSES = {"squared": Kind.SQUARED, "logistic": Kind.LOGISTIC, "softmax": Kind.SOFTMAX}


def _loss_kind(loss):
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    return LOSSES[loss]


def coef_2d(coef, kind, d, dtype):
    """coef as a (d, k) array in dtype: (d,) for squared/logistic, (d, k>=2) for softmax."""
    arr = check.real_array(coef, "coef")
    if kind == Kind.SOFTMAX:
        if arr.ndim != 2 or arr.shape[0] != d or arr.shape[1] < 2:
            raise ValueError(f"coef must have shape ({d}, n_classes) with n_classes >= 2 "
                             f"for the softmax loss, got shape {arr.shape}")
    elif arr.shape != (d,):
        raise ValueError(f"coef must have shape ({d},) (one weight per column of X), "
                         f"got shape {arr.shape}")
    arr = check.finite(np.ascontiguousarray(arr, dtype=dtype), "coef")
    return arr.reshape(d, -1)


def intercept_1d(intercept, k, dtype):
    """intercept as a (k,) array (empty when None): a scalar, or (k,) for softmax."""
    if intercept is None:
        return np.empty(0, dtype=dtype)
    arr = check.real_array(intercept, "intercept")
    expected = (k,) if k > 1 else ()
    if arr.shape != expected and not (k == 1 and arr.shape == (1,)):
        raise ValueError(f"intercept must have shape {expected}, got shape {arr.shape}")
    return check.finite(np.ascontiguousarray(arr, dtype=dtype).reshape(k), "intercept")


def _raise_kernel_status(status, bad, kind, k, y, sample_weight, rows, n):
    if status == Status.BAD_LABEL:
        if kind == Kind.LOGISTIC:
            raise ValueError(f"y must hold labels 0 or 1 for the logistic loss; "
                             f"y[{bad}] = {y[bad]}")
        raise ValueError(f"y must hold integer class labels in [0, {k}) for the softmax "
                         f"loss (k = coef.shape[1]); y[{bad}] = {y[bad]}")
    if status == Status.NEGATIVE_WEIGHT:
        raise ValueError(f"sample_weight must be >= 0; sample_weight[{bad}] = "
                         f"{sample_weight[bad]}")
    if status == Status.BAD_ROW:
        raise ValueError(f"rows must index rows of X in [0, {n}); rows[{bad}] = {rows[bad]}")
    raise RuntimeError(f"unknown kernel status {status}")


def _raise_bad_column(x_args, row):
    """ValueError for a CSR X whose row `row` holds a column index outside [0, d)."""
    _, indices, indptr, d = x_args
    cols = indices[indptr[row]:indptr[row + 1]]
    col = cols[(cols < 0) | (cols >= d)][0]
    raise ValueError(f"X (CSR) has a column index outside [0, {d}) in row {row}: {col} "
                     "(X.indices must index X's columns)")


def _raise_non_finite(what, X, y, sample_weight, rows):
    """A non-finite result: name the input that caused it, or call it an overflow
    (X None: already checked by the caller)."""
    if X is not None:
        check.finite(X if rows is None else X[rows], "X" if rows is None else "X[rows]")
    check.finite(y if rows is None else y[rows], "y" if rows is None else "y[rows]")
    if sample_weight is not None:
        check.finite(sample_weight, "sample_weight")
    raise FloatingPointError(f"the {what} overflowed to infinity although every input is "
                             f"finite; rescale X, y or coef")


class Problem:
    """Validated data of one loss: X (n, d) C-contiguous or a checked CSR matrix
    (`_validation.csr`), y (n,) and weights in X's dtype.

    Built once by `prepare`; trainers then call `sums` (or `clipped_sums`) every
    iteration with no further checks.  `sparse` tells which kernels run: a kernel
    module (`kernels`: cyfed._losses or cyfed._sparse_losses) is called with
    ``*x_args`` in X's place (dense: X; CSR: data, indices, indptr, n_features).
    """

    def __init__(self, kind_name, X, y, sample_weight):
        self.kind_name, self.kind = kind_name, LOSSES[kind_name]
        self.X, self.y = X, y
        self.sample_weight = sample_weight          # empty array: unit weights
        self.n, self.d = X.shape
        self.dtype = X.dtype
        self.sparse = check.is_sparse(X)
        self.kernels = _sparse if self.sparse else _kernels
        self.x_args = check.csr_arrays(X) if self.sparse else (X,)
        self._row_sq_norms = None
        self._canonical_args = None

    @property
    def canonical_x_args(self):
        """`x_args` with duplicate entries of a CSR X summed (a copy made on first use
        when X has any, or unsorted indices): for kernels that square single entries."""
        if not self.sparse or self.X.has_canonical_format:
            return self.x_args
        if self._canonical_args is None:
            X = self.X.copy()
            X.sum_duplicates()
            self._canonical_args = check.csr_arrays(X)
        return self._canonical_args

    @property
    def row_sq_norms(self):
        """||x_i||^2 of every row, float64 (also for float32 X, so the clipping
        threshold carries no float32 rounding); computed on first use and kept."""
        if self._row_sq_norms is None:
            if self.sparse:
                data, _, indptr, _ = self.canonical_x_args
                self._row_sq_norms = np.empty(self.n, dtype=np.float64)
                _sparse.row_sq_norms(data, indptr, self._row_sq_norms)
            else:
                self._row_sq_norms = np.einsum("ij,ij->i", self.X, self.X, dtype=np.float64)
        return self._row_sq_norms

    def sums(self, coef2d, intercept, rows, out, n_threads):
        """Kernel sums at (coef2d, intercept) into out[:d*k+k]: (loss_sum, weight_sum).

        coef2d (d, k) and intercept ((k,) or empty) in self.dtype; rows an intp
        array or None for all rows.  Raises ValueError for bad labels, negative
        weights or row indices out of range.
        """
        loss_sum, weight_sum, _ = self._sums(coef2d, intercept, rows, out, n_threads, 0.0,
                                             _NO_NORMS)
        return loss_sum, weight_sum

    def clipped_sums(self, coef2d, intercept, rows, out, n_threads, clip_norm):
        """As `sums`, with every example's weighted gradient w_i dl_i/d(coef, intercept)
        clipped to L2 norm clip_norm (> 0) before it is summed (the loss sum stays
        unclipped): (loss_sum, weight_sum, n_clipped)."""
        return self._sums(coef2d, intercept, rows, out, n_threads, clip_norm, self.row_sq_norms)

    def _sums(self, coef2d, intercept, rows, out, n_threads, clip_norm, row_sq_norms):
        idx = _ALL_ROWS if rows is None else rows
        if rows is not None and len(rows) == 0:
            out[:] = 0
            return 0.0, 0.0, 0
        loss_sum, weight_sum, n_clipped, status, bad = self.kernels.loss_grad_sums(
            self.kind, *self.x_args, self.y, coef2d, intercept, self.sample_weight, idx, out,
            n_threads, clip_norm, row_sq_norms)
        self.check_status(status, bad, coef2d.shape[1], rows)
        return loss_sum, weight_sum, n_clipped

    def check_status(self, status, bad, k, rows):
        """Raise the ValueError a kernel's status stands for (nothing for OK)."""
        if status == Status.OK:
            return
        if self.sparse and status == _sparse.SparseStatus.BAD_COLUMN:
            _raise_bad_column(self.x_args, bad)
        _raise_kernel_status(status, bad, self.kind, k, self.y, self.sample_weight,
                             _ALL_ROWS if rows is None else rows, self.n)

    def raise_non_finite(self, what, rows=None):
        """Name the non-finite input behind a non-finite result, or call it an overflow."""
        if self.sparse:
            check.finite_csr(self.X, "X", rows)
        _raise_non_finite(what, None if self.sparse else self.X, self.y,
                          self.sample_weight if len(self.sample_weight) else None, rows)


_ALL_ROWS = np.empty(0, dtype=np.intp)
_NO_NORMS = np.empty(0, dtype=np.float64)


def _matrix(X, allow_empty=False):
    """X checked and coerced: a CSR matrix (`_validation.csr`) or a dense C-contiguous one."""
    if check.is_sparse(X):
        return check.csr(X, "X", allow_empty=allow_empty)
    return check.matrix(X, "X", allow_empty=allow_empty)


def prepare(loss, X, y, sample_weight=None, *, allow_empty=False):
    """Validate and coerce (loss, X, y, sample_weight) into a `Problem` (X dense or
    scipy.sparse, see the module docstring)."""
    _loss_kind(loss)
    X = _matrix(X, allow_empty)
    n = X.shape[0]
    y = check.vector(y, "y", n, X.dtype)
    sw = (np.empty(0, dtype=X.dtype) if sample_weight is None
          else check.vector(sample_weight, "sample_weight", n, X.dtype))
    return Problem(loss, X, y, sw)


def _checked_sums(loss, X, y, coef, intercept, sample_weight, rows, n_threads, clip_norm):
    """Validate the arguments of `loss_grad` / `clipped_grad_sum` and run the kernel:
    (problem, coef2d, grad sums (d*k + k,) float64, loss_sum, weight_sum, n_clipped)."""
    problem = prepare(loss, X, y, sample_weight)
    coef2d = coef_2d(coef, problem.kind, problem.d, problem.dtype)
    b = intercept_1d(intercept, coef2d.shape[1], problem.dtype)
    idx = None if rows is None else check.row_indices(rows, problem.n)
    threads = check.n_threads(n_threads, _kernels.max_threads())

    grad = np.empty(coef2d.size + coef2d.shape[1], dtype=np.float64)
    if clip_norm is None:
        loss_sum, weight_sum = problem.sums(coef2d, b, idx, grad, threads)
        n_clipped = 0
    else:
        loss_sum, weight_sum, n_clipped = problem.clipped_sums(coef2d, b, idx, grad, threads,
                                                               clip_norm)
    if not np.isfinite(loss_sum) or not np.isfinite(grad).all():
        problem.raise_non_finite("loss" if not np.isfinite(loss_sum) else "gradient", idx)
    return problem, coef2d, grad, loss_sum, weight_sum, n_clipped


def loss_grad(loss, X, y, coef, intercept=None, *, l2=0.0, sample_weight=None, rows=None,
              n_threads=None):
    """Loss value and gradient of a linear model, in one fused pass over X.

    Parameters
    ----------
    loss : {"squared", "logistic", "softmax"}
    X : array of shape (n, d), or a scipy.sparse matrix/array (CSR used directly)
    y : array of shape (n,)
        Targets (squared), labels 0/1 (logistic) or class ids 0..k-1 (softmax).
    coef : array of shape (d,), or (d, k) with k >= 2 for softmax
    intercept : float, array of shape (k,) for softmax, or None for no intercept
    l2 : float >= 0
        Adds (l2/2) ||coef||^2 to the value and l2 * coef to the gradient.
    sample_weight : array of shape (n,) with entries >= 0 and a positive sum, or None
    rows : integer array of row indices, or None for all rows
        Evaluate on X[rows] (a mini-batch, repeats allowed) without copying X.
    n_threads : int >= 1, or None for OpenMP's default (OMP_NUM_THREADS or all cores)

    Returns
    -------
    value : float
    grad_coef : array shaped like coef, in the working dtype
    grad_intercept : scalar (k = 1) or array of shape (k,), or None without intercept

    Raises
    ------
    TypeError for non-numeric arrays; ValueError for wrong shapes, labels out of
    range, negative weights, NaN/Inf inputs (naming the argument);
    FloatingPointError when finite inputs overflow.
    """
    if sample_weight is None and rows is None and type(l2) is float and l2 == 0.0:
        result = _plain_call(loss, X, y, coef, intercept, n_threads)
        if result is not None:
            return result
    l2 = check.nonnegative_float(l2, "l2")
    problem, coef2d, grad, loss_sum, weight_sum, _ = _checked_sums(
        loss, X, y, coef, intercept, sample_weight, rows, n_threads, None)
    d, dtype, k = problem.d, problem.dtype, coef2d.shape[1]
    coef_in_shape = np.shape(coef)
    if not weight_sum > 0:
        raise ValueError("sample_weight must have a positive sum over the rows used, "
                         f"got {weight_sum}")

    value = loss_sum / weight_sum
    grad /= weight_sum
    grad_coef = grad[:d * k].reshape(d, k)
    if l2 > 0:
        coef64 = coef2d.astype(np.float64, copy=False)
        with np.errstate(over="ignore", invalid="ignore"):
            value += 0.5 * l2 * float(np.dot(coef64.ravel(), coef64.ravel()))
            grad_coef = grad_coef + l2 * coef64
            grad_coef = grad_coef.astype(dtype)
        if not (np.isfinite(value) and np.isfinite(grad_coef).all()):
            raise FloatingPointError(f"the L2 term (l2={l2}) overflowed in {dtype}: "
                                     "coef is too large for this penalty")
    else:         # the kernel's sums are finite (checked); their mean may not fit float32
        grad_coef = grad_coef.astype(dtype)
        if dtype != np.float64 and not np.isfinite(grad_coef).all():
            raise FloatingPointError(f"the gradient overflowed {dtype}: scale X or use float64")
    grad_coef = grad_coef.reshape(coef_in_shape)
    if intercept is None:
        grad_intercept = None
    elif k == 1:
        grad_intercept = dtype.type(grad[d])
    else:
        grad_intercept = grad[d * k:].astype(dtype)
    return float(value), grad_coef, grad_intercept


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _plain_call(loss, X, y, coef, intercept, n_threads):
    """`loss_grad` of the common call without its general validation, or None when the
    call is not that one: X, y and coef already C-contiguous arrays of one float dtype
    with matching shapes, a non-softmax loss, no intercept or a finite real scalar one,
    l2 = 0, no weights or rows.  The general path costs ~30 us a call, a fifth of the
    whole computation at 10,000 x 100.  A kernel status or a non-finite result also
    gives None, so the general path re-runs the call and names the cause."""
    dt = getattr(X, "dtype", None)
    if (loss not in ("squared", "logistic") or type(X) is not np.ndarray
            or type(y) is not np.ndarray or type(coef) is not np.ndarray
            or dt not in _FLOAT_DTYPES or X.ndim != 2 or 0 in X.shape
            or y.dtype != dt or coef.dtype != dt or y.shape != X.shape[:1]
            or coef.shape != X.shape[1:] or not (X.flags.c_contiguous and X.flags.aligned
                                                 and y.flags.c_contiguous and y.flags.aligned
                                                 and coef.flags.c_contiguous
                                                 and coef.flags.aligned)):
        return None
    if intercept is None:
        b = _NO_INTERCEPT[dt]
    elif isinstance(intercept, (float, np.floating)) and np.isfinite(intercept):
        b = np.array([intercept], dtype=dt)
    else:
        return None
    if n_threads is None:
        threads = _kernels.max_threads()
    elif type(n_threads) is int and 1 <= n_threads <= check.MAX_THREADS:
        threads = n_threads
    else:
        return None
    d = X.shape[1]
    grad = np.empty(d + 1)
    loss_sum, weight_sum, _, status, _ = _kernels.loss_grad_sums(
        LOSSES[loss], X, y, coef.reshape(d, 1), b, _NO_WEIGHTS[dt], _ALL_ROWS, grad, threads,
        0.0, _NO_NORMS)
    if status != Status.OK or not (weight_sum > 0 and np.isfinite(loss_sum)):
        return None
    grad /= weight_sum
    grad_coef = grad[:d].astype(dt)
    if not np.isfinite(grad_coef).all():
        return None
    return (float(loss_sum / weight_sum), grad_coef,
            None if intercept is None else dt.type(grad[d]))


_NO_INTERCEPT = {dt: np.empty(0, dtype=dt) for dt in _FLOAT_DTYPES}
_NO_WEIGHTS = _NO_INTERCEPT


def clipped_grad_sum(loss, X, y, coef, intercept=None, *, clip_norm, sample_weight=None,
                     rows=None, n_threads=None):
    """Sums of per-example gradients, each clipped to L2 norm clip_norm (DP-SGD).

    Example i's gradient g_i = w_i dl_i/d(coef, intercept) (the intercept part
    included when intercept is not None) is scaled to g_i min(1, C / ||g_i||)
    inside the compiled kernel: for these linear models g_i = x_i (x) r_i (and r_i
    for the intercept), so ||g_i||^2 = ||r_i||^2 (||x_i||^2 + 1) and no per-example
    gradient is ever formed.

    Parameters
    ----------
    loss, X, y, coef, intercept, sample_weight, rows, n_threads
        As in `loss_grad`.  Sample weights scale the example's gradient before it
        is clipped; the weights may sum to 0 (an empty batch gives zero sums).
    clip_norm : float > 0
        C, the largest L2 norm an example's gradient keeps.

    Returns
    -------
    loss_sum : float
        sum_i w_i l_i, unclipped.
    grad_sum_coef : float64 array shaped like coef
        sum_i of the clipped coef parts (float64 whatever X's dtype: sums, meant
        to be added further, e.g. over ranks).
    grad_sum_intercept : float, float64 array of shape (k,) for softmax, or None
        without intercept
    n_clipped : int
        Number of examples whose gradient norm exceeded C.

    Raises
    ------
    As `loss_grad`; ValueError when clip_norm is not a finite number > 0.
    """
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, numbers.Real):
        raise TypeError(f"clip_norm must be a real number, got {type(clip_norm).__name__}")
    if not (np.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
    problem, coef2d, grad, loss_sum, _, n_clipped = _checked_sums(
        loss, X, y, coef, intercept, sample_weight, rows, n_threads, float(clip_norm))
    dk, k = coef2d.size, coef2d.shape[1]
    grad_coef = grad[:dk].reshape(np.shape(coef))
    if intercept is None:
        grad_intercept = None
    else:
        grad_intercept = float(grad[dk]) if k == 1 else grad[dk:]
    return float(loss_sum), grad_coef, grad_intercept, int(n_clipped)


def margins(X, coef, intercept=None, *, n_threads=None):
    """z = X @ coef + intercept, shape (n,) for coef of shape (d,), (n, k) for (d, k).

    X is dense or scipy.sparse (as in `loss_grad`); z is in X's working dtype.
    """
    X = _matrix(X)
    n, d = X.shape
    coef_arr = check.real_array(coef, "coef")
    if coef_arr.ndim not in (1, 2) or coef_arr.shape[0] != d:
        raise ValueError(f"coef must have shape ({d},) or ({d}, n_classes), "
                         f"got shape {coef_arr.shape}")
    coef2d = check.finite(np.ascontiguousarray(coef_arr, dtype=X.dtype), "coef").reshape(d, -1)
    k = coef2d.shape[1]
    b = intercept_1d(intercept, k, X.dtype)
    out = np.empty((n, k), dtype=X.dtype)
    threads = check.n_threads(n_threads, _kernels.max_threads())
    sparse = check.is_sparse(X)
    if sparse:
        x_args = check.csr_arrays(X)
        status, bad = _sparse.margins(*x_args, coef2d, b, out, threads)
        if status != Status.OK:
            _raise_bad_column(x_args, bad)
    else:
        _kernels.margins(X, coef2d, b, out, threads)
    if not np.isfinite(out).all():
        (check.finite_csr if sparse else check.finite)(X, "X")
        raise FloatingPointError("margins overflowed although X and coef are finite")
    return out.reshape(n) if coef_arr.ndim == 1 else out


def predict_proba(loss, X, coef, intercept=None, *, n_threads=None):
    """Class probabilities, shape (n, 2) for logistic, (n, k) for softmax."""
    kind = _loss_kind(loss)
    if kind == Kind.SQUARED:
        raise ValueError("predict_proba needs a classification loss ('logistic' or 'softmax')")
    z = margins(X, coef, intercept, n_threads=n_threads)
    if kind == Kind.LOGISTIC:
        p1 = np.exp(-np.logaddexp(0.0, -z))
        return np.column_stack([1 - p1, p1])
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(loss, X, coef, intercept=None, *, n_threads=None):
    """Predicted targets (squared) or class labels (logistic: 0/1, softmax: 0..k-1)."""
    kind = _loss_kind(loss)
    z = margins(X, coef, intercept, n_threads=n_threads)
    if kind == Kind.SQUARED:
        return z
    if kind == Kind.LOGISTIC:
        return (z > 0).astype(np.intp)
    return np.argmax(z, axis=1)
