"""Hessian-vector products and Hessians of the linear-model losses (for Newton solvers).

The objective is cyfed.gradients' f = (1/W) sum_i w_i l_i + (l2/2) ||coef||^2 over
the rows used (W = sum of their weights).  With z_i = x_i coef + b and
x~_i = (x_i, 1) (x_i without intercept), the Hessian of f with respect to
(coef, intercept) is (1/W) sum_i H_i + l2 I (on the coef part only), where

* squared  (l = (z - y)^2):   H_i = D_i x~_i x~_i^T,  D_i = 2 w_i;
* logistic:                   H_i = D_i x~_i x~_i^T,  D_i = w_i s_i (1 - s_i),
                              s_i = sigmoid(z_i);
* softmax  (coef (d, k)):     H_i = w_i (x~_i x~_i^T) (x) (diag(p_i) - p_i p_i^T),
                              p_i = softmax(z_i),

in the flat layout of cyfed.gradients' sums: coef row-major (d, k), then the k
intercept entries.  A Newton solver computes the curvature (D or P) once per
iterate (`curvature`, one pass over X) and then any number of products
(`hess_vec_sums`, one fused pass each), the whole Hessian (`hessian_sums`) or its
diagonal (`hessian_diag_sums`, one pass).
Sums are accumulated in float64 whatever X's dtype, and results are float64.

X may be a CSR matrix (cyfed.gradients' Problem with ``sparse`` set): every function
here then runs the CSR kernels of cyfed._sparse_losses (row by row over the
nonzeros; `hessian_sums` accumulates the outer products of each row's nonzeros
into a dense p x p matrix per thread, so it is for small d only).
"""
import numpy as np

from cyfed import _validation as check
from cyfed._simd import load
from cyfed.gradients import Kind, coef_2d, intercept_1d, prepare
from cyfed.gradients import _kernels as _loss_kernels      # have_openmp, max_threads

_kernels, SIMD_LEVEL = load("_hessian")

_ALL_ROWS = np.empty(0, dtype=np.intp)


def _second_order(problem):
    """The module of the problem's second-order kernels (dense or CSR)."""
    return problem.kernels if problem.sparse else _kernels


def _n_rows(problem, rows):
    return problem.n if rows is None else len(rows)


def curvature(problem, coef2d, intercept, rows, n_threads):
    """Per-row second-derivative factors at (coef2d, intercept), float64, in row order.

    Squared: D_i = 2 w_i, logistic: D_i = w_i s_i (1 - s_i), both shape (n_rows,);
    softmax: P_i = softmax(z_i) (unweighted), shape (n_rows, k).  coef2d (d, k) and
    intercept ((k,), or empty for none) in problem.dtype; rows an intp array or None
    for all rows.  Raises ValueError for bad labels, negative weights or rows out of
    range (as cyfed.gradients.Problem.sums).
    """
    k = coef2d.shape[1]
    n_rows = _n_rows(problem, rows)
    width = k if problem.kind == Kind.SOFTMAX else 1
    out = np.empty(n_rows * width, dtype=np.float64)
    if n_rows > 0:
        status, bad = _second_order(problem).curvature(
            problem.kind, *problem.x_args, problem.y, coef2d, intercept,
            problem.sample_weight, _ALL_ROWS if rows is None else rows, out, n_threads)
        problem.check_status(status, bad, k, rows)
    return out.reshape(n_rows, k) if problem.kind == Kind.SOFTMAX else out


def hess_vec_sums(problem, curv, v2d, v_intercept, rows, out, n_threads):
    """out (d*k + k,) float64 = sum_i H_i (v2d, v_intercept) over the rows used.

    curv is `curvature`'s result for the same rows; v2d (d, k) in problem.dtype;
    v_intercept (k,) in problem.dtype, or empty for a model without intercept (the
    last k entries of out are then 0).  Binary: u_i = x_i . v + v_b, h_i = D_i u_i;
    softmax: u_i = x_i V + v_b, h_i = w_i (p_i * u_i - p_i (p_i . u_i)); out gains
    x_i (x) h_i and h_i.  One pass over X.
    """
    if _n_rows(problem, rows) == 0:
        out[:] = 0
        return
    status, bad = _second_order(problem).hess_vec_sums(
        problem.kind, *problem.x_args, problem.sample_weight,
        _ALL_ROWS if rows is None else rows, curv.reshape(-1), v2d, v_intercept, out, n_threads)
    problem.check_status(status, bad, v2d.shape[1], rows)


def _curvature_sums(name, x_args, problem, curv, rows, fit_intercept, out, n_threads):
    """Run the kernel `name` (hessian_sums or hessian_diag_sums, same arguments) of the
    problem's kernel module on x_args into out."""
    k = curv.shape[1] if problem.kind == Kind.SOFTMAX else 1
    if _n_rows(problem, rows) == 0:
        out[...] = 0
        return
    status, bad = getattr(_second_order(problem), name)(
        problem.kind, *x_args, problem.sample_weight, _ALL_ROWS if rows is None else rows,
        curv.reshape(-1), k, bool(fit_intercept), out, n_threads)
    problem.check_status(status, bad, k, rows)


def hessian_sums(problem, curv, rows, fit_intercept, out, n_threads):
    """out (p, p) float64, p = d*k + k, = sum_i H_i over the rows used (intercept rows
    and columns 0 unless fit_intercept).

    curv is `curvature`'s result for the same rows.  Binary: [X 1]^T diag(D) [X 1];
    softmax: entry ((j, c), (j', c')) = sum_i w_i x~_ij x~_ij' (p_ic [c = c'] - p_ic p_ic').
    """
    _curvature_sums("hessian_sums", problem.x_args, problem, curv, rows, fit_intercept, out,
                    n_threads)


def hessian_diag_sums(problem, curv, rows, fit_intercept, out, n_threads):
    """out (d*k + k,) float64 = the diagonal of `hessian_sums`' result, in one pass over X
    (TRON's preconditioner).

    curv is `curvature`'s result for the same rows.  Entry j*k + c is
    sum_i R_ic x_ij^2, entry d*k + c the intercept's sum_i R_ic (0 unless
    fit_intercept), with R_ic = D_i (binary) or w_i p_ic (1 - p_ic) (softmax).  A CSR
    X with duplicate entries is summed into a canonical copy first (kept by problem).
    """
    _curvature_sums("hessian_diag_sums", problem.canonical_x_args, problem, curv, rows,
                    fit_intercept, out, n_threads)


# ------------------------------------------------------------------- validating front end

def _direction(value, name, shape, dtype):
    """A direction argument as a C-contiguous array of `shape` in dtype (finite)."""
    arr = check.real_array(value, name)
    if arr.shape != shape and not (shape == () and arr.shape == (1,)):
        raise ValueError(f"{name} must have shape {shape} (that of "
                         f"{'coef' if name == 'vector' else 'intercept'}), got shape {arr.shape}")
    return check.finite(np.ascontiguousarray(arr, dtype=dtype), name)


def _validated(loss, X, y, coef, intercept, sample_weight, rows, n_threads):
    """Validate loss_grad's arguments: (problem, coef2d, intercept (k,) or empty,
    rows or None, threads)."""
    problem = prepare(loss, X, y, sample_weight)
    coef2d = coef_2d(coef, problem.kind, problem.d, problem.dtype)
    b = intercept_1d(intercept, coef2d.shape[1], problem.dtype)
    idx = None if rows is None else check.row_indices(rows, problem.n)
    return problem, coef2d, b, idx, check.n_threads(n_threads, _loss_kernels.max_threads())


def _curvature_and_weight(problem, coef2d, b, idx, threads):
    """`curvature` (validating labels, weights and rows on the way) and W, the sum of
    the weights of the rows used."""
    curv = curvature(problem, coef2d, b, idx, threads)
    if problem.kind == Kind.SQUARED:
        # the Hessian does not see the targets; reject what loss_grad rejects
        check.finite(problem.y if idx is None else problem.y[idx],
                     "y" if idx is None else "y[rows]")
    if len(problem.sample_weight) == 0:
        return curv, float(_n_rows(problem, idx))
    used = problem.sample_weight if idx is None else problem.sample_weight[idx]
    return curv, float(np.sum(used, dtype=np.float64))


def _finish(problem, result, idx, weight_sum, what):
    """Check a sum for overflow and a positive weight sum (as loss_grad), then divide."""
    if not np.isfinite(result).all():
        problem.raise_non_finite(what, idx)
    if not weight_sum > 0:
        raise ValueError("sample_weight must have a positive sum over the rows used, "
                         f"got {weight_sum}")
    result /= weight_sum


def hess_vec(loss, X, y, coef, vector, intercept=None, vector_intercept=None, *, l2=0.0,
             sample_weight=None, rows=None, n_threads=None):
    """Hessian-vector product of the loss_grad objective, in one fused pass over X.

    Parameters
    ----------
    loss, X, y, coef, intercept, l2, sample_weight, rows, n_threads
        As in cyfed.loss_grad: the point (coef, intercept) and objective
        (1/W) sum_i w_i l_i + (l2/2) ||coef||^2.  y is validated as there, although
        the Hessian does not depend on it.
    vector : array shaped like coef
        The coef part of the direction v.
    vector_intercept : float, array of shape (k,) for softmax, or None
        The intercept part of v (None: 0).  Only with an intercept.

    Returns
    -------
    Hv_coef : float64 array shaped like coef
    Hv_intercept : float (k = 1) or float64 array of shape (k,); None without intercept

    Raises
    ------
    As cyfed.loss_grad; ValueError for a vector of the wrong shape, or a
    vector_intercept without intercept.
    """
    l2 = check.nonnegative_float(l2, "l2")
    if intercept is None and vector_intercept is not None:
        raise ValueError("vector_intercept needs an intercept (the model has none: "
                         "intercept is None)")
    problem, coef2d, b, idx, threads = _validated(loss, X, y, coef, intercept, sample_weight,
                                                  rows, n_threads)
    d, k = coef2d.shape
    v2d = _direction(vector, "vector", np.shape(coef), problem.dtype).reshape(d, k)
    if intercept is None:
        vb = b
    elif vector_intercept is None:
        vb = np.zeros(k, dtype=problem.dtype)
    else:
        vb = _direction(vector_intercept, "vector_intercept", (k,) if k > 1 else (),
                        problem.dtype).reshape(k)
    curv, weight_sum = _curvature_and_weight(problem, coef2d, b, idx, threads)
    out = np.empty(d * k + k, dtype=np.float64)
    hess_vec_sums(problem, curv, v2d, vb, idx, out, threads)
    _finish(problem, out, idx, weight_sum, "Hessian-vector product")
    hv_coef = out[:d * k].reshape(d, k) + l2 * v2d
    hv_coef = hv_coef.reshape(np.shape(coef))
    if intercept is None:
        return hv_coef, None
    return hv_coef, (float(out[d]) if k == 1 else out[d * k:].copy())


def hessian(loss, X, y, coef, intercept=None, *, l2=0.0, sample_weight=None, rows=None,
            n_threads=None):
    """Hessian of the loss_grad objective with respect to (coef, intercept).

    Parameters as cyfed.loss_grad.  Returns the (p, p) float64 matrix,
    p = coef.size + (k if intercept is not None else 0), in the order of
    coef.ravel() (row-major (d, k)) then the intercept's k entries.  Costs
    O(n p^2) multiply-adds (a register-blocked syrk on scaled blocks of X).

    Raises as cyfed.loss_grad.
    """
    l2 = check.nonnegative_float(l2, "l2")
    problem, coef2d, b, idx, threads = _validated(loss, X, y, coef, intercept, sample_weight,
                                                  rows, n_threads)
    curv, weight_sum = _curvature_and_weight(problem, coef2d, b, idx, threads)
    dk, k = coef2d.size, coef2d.shape[1]
    out = np.empty((dk + k, dk + k), dtype=np.float64)
    hessian_sums(problem, curv, idx, intercept is not None, out, threads)
    _finish(problem, out, idx, weight_sum, "Hessian")
    out[np.arange(dk), np.arange(dk)] += l2
    return out if intercept is not None else np.ascontiguousarray(out[:dk, :dk])
