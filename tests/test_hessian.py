"""cyfed.hessian (Hessian-vector products, Hessians, curvature) against independent references:
an explicit numpy Hessian written from the formulas, central differences of
cyfed.loss_grad's gradient, and each other (hess_vec == hessian @ v)."""
import re

import numpy as np
import pytest
from scipy.special import expit, softmax

import cyfed
from cyfed import gradients, hessian
from cyfed.models import LinearModel, row_curvature
from reference import LOSSES, as_working64, assert_close, make_problem, working_dtype


# ------------------------------------------------------------------------------ references

def ref_curvature(loss, X, coef, b, sw, rows):
    """(x~ rows (intercept column of ones if b), weights, D or P), float64 from the
    working-dtype inputs."""
    dtype = working_dtype(X)
    X = as_working64(X, dtype)
    coef = as_working64(coef, dtype)
    w = np.ones(len(X)) if sw is None else as_working64(sw, dtype)
    if rows is not None:
        X, w = X[rows], w[rows]
    z = X @ coef + (0.0 if b is None else as_working64(b, dtype))
    Xt = X if b is None else np.column_stack([X, np.ones(len(X))])
    if loss == "squared":
        return Xt, w, 2.0 * w
    if loss == "logistic":
        return Xt, w, w * expit(z) * expit(-z)
    return Xt, w, softmax(z, axis=1)


def ref_hessian(loss, X, coef, b=None, *, l2=0.0, sw=None, rows=None):
    """The Hessian of (1/W) sum_i w_i l_i + (l2/2)||coef||^2, straight from the formulas."""
    Xt, w, curv = ref_curvature(loss, X, coef, b, sw, rows)
    if loss == "softmax":
        k = curv.shape[1]
        M = curv[:, :, None] * np.eye(k) - curv[:, :, None] * curv[:, None, :]   # (n, k, k)
        H4 = np.einsum("i,ij,il,icf->jclf", w, Xt, Xt, M)
        p = Xt.shape[1] * k
        H = H4.reshape(p, p)
    else:
        H = Xt.T @ (curv[:, None] * Xt)
    H /= w.sum()
    dk = np.size(coef)
    H[np.arange(dk), np.arange(dk)] += l2
    return H


def flat(coef_part, intercept_part):
    parts = [np.asarray(coef_part, dtype=np.float64).ravel()]
    if intercept_part is not None:
        parts.append(np.atleast_1d(np.asarray(intercept_part, dtype=np.float64)))
    return np.concatenate(parts)


def fd_hessian(loss, X, y, coef, b, *, l2, sw, rows, h=1e-5):
    """Central differences of loss_grad's gradient, column by column (float64)."""
    X = np.asarray(X, dtype=np.float64)
    theta = flat(coef, b)
    dk = np.size(coef)

    def grad(t):
        c = t[:dk].reshape(np.shape(coef))
        bb = None if b is None else (t[dk] if np.ndim(b) == 0 else t[dk:])
        _, gc, gb = cyfed.loss_grad(loss, X, y, c, bb, l2=l2, sample_weight=sw, rows=rows)
        return flat(gc, gb)

    cols = []
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        cols.append((grad(theta + e) - grad(theta - e)) / (2 * h))
    return np.array(cols).T


def random_direction(coef, b, dtype, seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(np.shape(coef)).astype(dtype)
    if b is None:
        return v, None
    vb = rng.standard_normal(np.shape(b)).astype(dtype) if np.ndim(b) else rng.standard_normal()
    return v, vb


def assert_hv_matches(hv, H, v, vb, rtol, dtype):
    """hess_vec's result against H @ (v, vb) with v rounded to dtype, relative to |H| |v|."""
    full = flat(np.asarray(v, dtype=dtype), None if vb is None else np.asarray(vb, dtype=dtype))
    ref = H @ full
    got = flat(*hv)
    assert_close(got, ref, rtol, float(np.max(np.abs(H) @ np.abs(full))))


# ------------------------------------------------------------------------ against the formulas

SIZES = [pytest.param((7, 3, 3), id="small"), pytest.param((1003, 17, 4), id="mid"),
         pytest.param((5003, 13, 5), id="large")]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("l2", [0.0, 0.3], ids=["l2=0", "l2=0.3"])
@pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("intercept", [False, True], ids=["no-b", "b"])
@pytest.mark.parametrize("loss", LOSSES)
def test_matches_reference(loss, intercept, weights, l2, size, dtype, rtol):
    n, d, k = size
    X, y, coef, b, sw = make_problem(loss, n, d, k, dtype=dtype, seed=n + d,
                                     intercept=intercept, weights=weights)
    H = hessian.hessian(loss, X, y, coef, b, l2=l2, sample_weight=sw)
    ref = ref_hessian(loss, X, coef, b, l2=l2, sw=sw)
    assert H.dtype == np.float64 and H.shape == ref.shape
    assert_close(H, ref, rtol)
    np.testing.assert_array_equal(H, H.T)

    v, vb = random_direction(coef, b, dtype, seed=n)
    hv = hessian.hess_vec(loss, X, y, coef, v, b, vb, l2=l2, sample_weight=sw)
    assert hv[0].shape == np.shape(coef) and hv[0].dtype == np.float64
    assert (hv[1] is None) == (b is None)
    assert_hv_matches(hv, ref, v, vb, rtol, dtype)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("intercept", [False, True], ids=["no-b", "b"])
def test_softmax_against_finite_differences(k, intercept):
    X, y, coef, b, sw = make_problem("softmax", 301, 4, k, seed=k, intercept=intercept,
                                     weights=True)
    rows = np.random.default_rng(k).integers(0, 301, size=200)
    H = hessian.hessian("softmax", X, y, coef, b, l2=0.2, sample_weight=sw, rows=rows)
    fd = fd_hessian("softmax", X, y, coef, b, l2=0.2, sw=sw, rows=rows)
    assert_close(H, fd, 1e-8)


@pytest.mark.parametrize("intercept", [False, True], ids=["no-b", "b"])
@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_binary_against_finite_differences(loss, intercept):
    X, y, coef, b, sw = make_problem(loss, 401, 6, seed=3, intercept=intercept, weights=True)
    H = hessian.hessian(loss, X, y, coef, b, l2=0.1, sample_weight=sw)
    assert_close(H, fd_hessian(loss, X, y, coef, b, l2=0.1, sw=sw, rows=None), 1e-8)


@pytest.mark.parametrize("loss", LOSSES)
def test_hess_vec_against_finite_differences(loss, dtype):
    """Directional derivative of the gradient: (g(theta + h v) - g(theta - h v)) / 2h,
    the float32 problem evaluated on its float32 numbers in float64."""
    X, y, coef, b, sw = make_problem(loss, 523, 9, 3, dtype=dtype, seed=5, intercept=True,
                                     weights=True)
    v, vb = random_direction(coef, b, dtype, seed=6)
    Hv = flat(*hessian.hess_vec(loss, X, y, coef, v, b, vb, l2=0.05, sample_weight=sw))
    X64, c64, v64 = (np.asarray(a, dtype=np.float64) for a in (X, coef, v))
    b64, vb64 = np.asarray(b, dtype=np.float64), np.asarray(vb, dtype=np.float64)
    h = 1e-5
    plus = cyfed.loss_grad(loss, X64, y, c64 + h * v64, b64 + h * vb64, l2=0.05,
                           sample_weight=sw)
    minus = cyfed.loss_grad(loss, X64, y, c64 - h * v64, b64 - h * vb64, l2=0.05,
                            sample_weight=sw)
    fd = (flat(*plus[1:]) - flat(*minus[1:])) / (2 * h)
    assert_close(Hv, fd, 1e-5 if dtype == np.float32 else 1e-8)


# Class counts around the softmax micro-kernels' register sizes (k <= 16 float64 /
# 32 float32 padded into vectors, larger k generic).
@pytest.mark.parametrize("k", [2, 7, 8, 9, 16, 17, 33])
def test_every_class_count(k, dtype, rtol):
    X, y, coef, b, sw = make_problem("softmax", 211, 3, k, dtype=dtype, seed=k,
                                     intercept=True, weights=True)
    H = hessian.hessian("softmax", X, y, coef, b, sample_weight=sw)
    ref = ref_hessian("softmax", X, coef, b, sw=sw)
    assert_close(H, ref, rtol)
    v, vb = random_direction(coef, b, dtype, seed=k)
    assert_hv_matches(hessian.hess_vec("softmax", X, y, coef, v, b, vb, sample_weight=sw),
                      ref, v, vb, rtol, dtype)


@pytest.mark.parametrize("d", [1, 2, 5, 8, 16, 17, 40])
@pytest.mark.parametrize("loss", LOSSES)
def test_every_width(loss, d, dtype, rtol):
    X, y, coef, b, sw = make_problem(loss, 613, d, 3, dtype=dtype, seed=d, intercept=True,
                                     weights=True)
    rows = np.random.default_rng(d).integers(0, 613, size=700)
    H = hessian.hessian(loss, X, y, coef, b, l2=0.1, sample_weight=sw, rows=rows)
    ref = ref_hessian(loss, X, coef, b, l2=0.1, sw=sw, rows=rows)
    assert_close(H, ref, rtol)
    v, vb = random_direction(coef, b, dtype, seed=d)
    hv = hessian.hess_vec(loss, X, y, coef, v, b, vb, l2=0.1, sample_weight=sw, rows=rows)
    assert_hv_matches(hv, ref, v, vb, rtol, dtype)


# Row counts around the kernels' groups of 8 rows and their blocks (at most 256 rows
# for Hv, 512 for the Hessian at these widths), on one and two threads.
@pytest.mark.parametrize("n", [1, 7, 8, 9, 255, 256, 257, 511, 513, 4099])
@pytest.mark.parametrize("loss", LOSSES)
def test_block_boundaries(loss, n, dtype, rtol):
    X, y, coef, b, sw = make_problem(loss, n, 5, 3, dtype=dtype, seed=n, intercept=True,
                                     weights=True)
    if sw is not None and sw.sum() == 0:
        sw[0] = 1
    ref = ref_hessian(loss, X, coef, b, sw=sw)
    v, vb = random_direction(coef, b, dtype, seed=n)
    for threads in (1, 2):
        H = hessian.hessian(loss, X, y, coef, b, sample_weight=sw, n_threads=threads)
        assert_close(H, ref, rtol)
        hv = hessian.hess_vec(loss, X, y, coef, v, b, vb, sample_weight=sw, n_threads=threads)
        assert_hv_matches(hv, ref, v, vb, rtol, dtype)


@pytest.mark.parametrize("use_rows", [False, True], ids=["all-rows", "rows"])
@pytest.mark.parametrize("loss", LOSSES)
def test_threads_agree(loss, use_rows, dtype):
    """n_threads changes only the summation order; a given count repeats bit for bit."""
    n, d = 20_011, 24
    X, y, coef, b, sw = make_problem(loss, n, d, 4, dtype=dtype, seed=11, intercept=True,
                                     weights=True)
    rows = np.random.default_rng(1).integers(0, n, size=n) if use_rows else None
    v, vb = random_direction(coef, b, dtype, seed=2)
    args = (loss, X, y, coef)
    kw = dict(sample_weight=sw, rows=rows, l2=0.1)
    H1 = hessian.hessian(*args, b, n_threads=1, **kw)
    H2 = hessian.hessian(*args, b, n_threads=2, **kw)
    assert_close(H2, H1, 1e-12)
    np.testing.assert_array_equal(H2, hessian.hessian(*args, b, n_threads=2, **kw))
    hv1 = flat(*hessian.hess_vec(*args, v, b, vb, n_threads=1, **kw))
    hv2 = flat(*hessian.hess_vec(*args, v, b, vb, n_threads=2, **kw))
    assert_close(hv2, hv1, 1e-12, float(np.max(np.abs(H1) @ np.abs(flat(v, vb)))))
    np.testing.assert_array_equal(hv2, flat(*hessian.hess_vec(*args, v, b, vb, n_threads=2,
                                                             **kw)))


def test_rows_equal_a_copy():
    """rows (with repeats, any order) give what the selected rows as their own data give."""
    X, y, coef, b, sw = make_problem("softmax", 500, 6, 3, seed=4, intercept=True,
                                     weights=True)
    rows = np.random.default_rng(0).integers(0, 500, size=333)
    v, vb = random_direction(coef, b, np.float64, seed=0)
    H = hessian.hessian("softmax", X, y, coef, b, sample_weight=sw, rows=rows)
    H_copy = hessian.hessian("softmax", X[rows], y[rows], coef, b, sample_weight=sw[rows])
    assert_close(H, H_copy, 1e-13)
    hv = hessian.hess_vec("softmax", X, y, coef, v, b, vb, sample_weight=sw, rows=rows)
    hv_copy = hessian.hess_vec("softmax", X[rows], y[rows], coef, v, b, vb,
                               sample_weight=sw[rows])
    assert_close(flat(*hv), flat(*hv_copy), 1e-13)


@pytest.mark.parametrize("loss", LOSSES)
def test_intercept_direction_defaults_to_zero(loss):
    X, y, coef, b, _ = make_problem(loss, 100, 4, 3, seed=1, intercept=True)
    v, _ = random_direction(coef, b, np.float64, seed=1)
    got = hessian.hess_vec(loss, X, y, coef, v, b)
    zero = np.zeros(np.shape(b)) if np.ndim(b) else 0.0
    want = hessian.hess_vec(loss, X, y, coef, v, b, zero)
    assert_close(flat(*got), flat(*want), 0.0)
    assert (isinstance(got[1], float)) == (loss != "softmax")


def test_squared_hessian_is_data_only():
    """Squared loss: H = 2 X~^T diag(w) X~ / W + l2, whatever coef and y."""
    X, y, coef, b, sw = make_problem("squared", 300, 5, seed=2, intercept=True, weights=True)
    H = hessian.hessian("squared", X, y, coef, b, l2=0.5, sample_weight=sw)
    Xt = np.column_stack([X, np.ones(len(X))])
    want = 2 * Xt.T @ (sw[:, None] * Xt) / sw.sum()
    want[np.arange(5), np.arange(5)] += 0.5
    assert_close(H, want, 1e-12)
    assert_close(H, hessian.hessian("squared", X, -3 * y, 7 * coef, -b, l2=0.5,
                                    sample_weight=sw), 1e-12)


def test_integer_X_is_float64():
    X = np.arange(40).reshape(10, 4) % 3
    y = np.arange(10) % 2
    H = hessian.hessian("logistic", X, y, np.zeros(4), 0.0)
    assert_close(H, ref_hessian("logistic", X.astype(float), np.zeros(4), 0.0), 1e-12)


def test_confident_logistic_rows_stay_finite():
    X = np.array([[1000.0], [-1000.0], [0.0]])
    H = hessian.hessian("logistic", X, [1, 0, 1], [1.0], 0.0)
    assert np.isfinite(H).all()
    assert_close(H, np.array([[0.0, 0.0], [0.0, 0.25]]) / 3, 1e-15)


# --------------------------------------------------------------------------- low-level API

@pytest.mark.parametrize("loss", LOSSES)
def test_low_level_api(loss, dtype, rtol):
    X, y, coef, b, sw = make_problem(loss, 1001, 7, 3, dtype=dtype, seed=9, intercept=True,
                                     weights=True)
    problem = gradients.prepare(loss, X, y, sw)
    coef2d = gradients.coef_2d(coef, problem.kind, problem.d, problem.dtype)
    k = coef2d.shape[1]
    b1 = gradients.intercept_1d(b, k, problem.dtype)
    rows = np.random.default_rng(0).integers(0, 1001, size=900).astype(np.intp)
    curv = hessian.curvature(problem, coef2d, b1, rows, 2)
    _, w, ref_curv = ref_curvature(loss, X, coef, b, sw, rows)
    assert curv.dtype == np.float64 and curv.shape == ref_curv.shape
    assert_close(curv, ref_curv, rtol)

    # sums (not means) at (coef, b); without intercept, its coef block
    ref = ref_hessian(loss, X, coef, b, sw=sw, rows=rows) * w.sum()
    p, dk = 7 * k + k, 7 * k
    H = np.full((p, p), np.nan)
    hessian.hessian_sums(problem, curv, rows, True, H, 2)
    assert_close(H, ref, rtol)
    hessian.hessian_sums(problem, curv, rows, False, H, 2)
    assert_close(H[:dk, :dk], ref[:dk, :dk], rtol)
    assert not H[dk:].any() and not H[:, dk:].any()

    v, vb = random_direction(coef2d, b1, dtype, seed=3)
    out = np.full(p, np.nan)
    hessian.hess_vec_sums(problem, curv, v, vb, rows, out, 2)
    assert_close(out, ref @ flat(v, vb), rtol, float(np.max(np.abs(ref) @ np.abs(flat(v, vb)))))
    hessian.hess_vec_sums(problem, curv, v, b1[:0], rows, out, 2)
    coef_block = ref[:dk, :dk]
    assert_close(out[:dk], coef_block @ flat(v, None), rtol,
                 float(np.max(np.abs(coef_block) @ np.abs(flat(v, None)))))
    assert not out[dk:].any()

    # all rows (rows=None), and an empty row subset
    assert hessian.curvature(problem, coef2d, b1, None, 1).shape[0] == 1001
    empty = np.empty(0, dtype=np.intp)
    assert hessian.curvature(problem, coef2d, b1, empty, 1).shape[0] == 0
    hessian.hess_vec_sums(problem, curv[:0], v, vb, empty, out, 1)
    hessian.hessian_sums(problem, curv[:0], empty, True, H, 1)
    assert not out.any() and not H.any()


def test_low_level_shape_checks():
    X, y, coef, b, _ = make_problem("softmax", 50, 4, 3, seed=0, intercept=True)
    problem = gradients.prepare("softmax", X, y)
    b1 = np.asarray(b)
    curv = hessian.curvature(problem, coef, b1, None, 1)
    with pytest.raises(ValueError, match="curv must hold 50 x 3"):
        hessian.hess_vec_sums(problem, curv[:10], coef, b1, None, np.empty(15), 1)
    with pytest.raises(ValueError, match="out must have 15 entries"):
        hessian.hess_vec_sums(problem, curv, coef, b1, None, np.empty(14), 1)
    with pytest.raises(ValueError, match=re.escape("out must have shape (15, 15)")):
        hessian.hessian_sums(problem, curv, None, True, np.empty((14, 14)), 1)
    with pytest.raises(ValueError, match="curv must hold 7 x 3"):
        hessian.hessian_sums(problem, curv, np.arange(7), True, np.empty((15, 15)), 1)
    with pytest.raises(ValueError, match="rows must index rows of X"):
        hessian.hess_vec_sums(problem, curv[:2], coef, b1, np.array([0, 50]), np.empty(15), 1)
    binary = gradients.prepare("logistic", X, (y > 0).astype(float))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        hessian.curvature(binary, coef, b1, None, 1)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        hessian.hess_vec_sums(binary, curv[:, 0].copy(), coef, b1, None, np.empty(15), 1)


# ------------------------------------------------------------------- the Hessian's diagonal

def low_level(loss, n, d, k, dtype, *, seed, weights, use_rows):
    """(problem, curv, rows or None, k) at a random point with an intercept."""
    X, y, coef, b, sw = make_problem(loss, n, d, k, dtype=dtype, seed=seed, intercept=True,
                                     weights=weights)
    problem = gradients.prepare(loss, X, y, sw)
    coef2d = gradients.coef_2d(coef, problem.kind, problem.d, problem.dtype)
    b1 = gradients.intercept_1d(b, coef2d.shape[1], problem.dtype)
    rows = (np.random.default_rng(seed).integers(0, n, size=n - n // 3).astype(np.intp)
            if use_rows else None)
    return problem, hessian.curvature(problem, coef2d, b1, rows, 2), rows, coef2d.shape[1]


def diag_sums(problem, curv, rows, fit_intercept, p, threads):
    out = np.full(p, np.nan)
    hessian.hessian_diag_sums(problem, curv, rows, fit_intercept, out, threads)
    return out


# 9001 x 13 (6001 rows of it with `rows`) is two threads' worth of work for every loss.
@pytest.mark.parametrize("use_rows", [False, True], ids=["all-rows", "rows"])
@pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss", LOSSES)
def test_diag_is_the_hessians_diagonal(loss, weights, use_rows, dtype, rtol):
    d = 13
    problem, curv, rows, k = low_level(loss, 9001, d, 4, dtype, seed=d, weights=weights,
                                       use_rows=use_rows)
    p, dk = d * k + k, d * k
    H = np.empty((p, p))
    hessian.hessian_sums(problem, curv, rows, True, H, 2)
    diag = {t: diag_sums(problem, curv, rows, True, p, t) for t in (1, 2)}
    for got in diag.values():
        assert got.dtype == np.float64
        assert_close(got, np.diag(H), rtol)
    # threads change only the order the float64 per-thread sums are added in
    assert_close(diag[2], diag[1], 1e-12)
    np.testing.assert_array_equal(diag[2], diag_sums(problem, curv, rows, True, p, 2))
    # without intercept: the coef part as before, the intercept entries 0
    no_b = diag_sums(problem, curv, rows, False, p, 2)
    np.testing.assert_array_equal(no_b[:dk], diag[2][:dk])
    assert not no_b[dk:].any()


@pytest.mark.parametrize("n", [1, 7, 9, 255, 257, 4099])
@pytest.mark.parametrize("d", [1, 5, 17, 40])
def test_diag_block_and_width_boundaries(n, d, dtype, rtol):
    for loss, k in (("logistic", 1), ("softmax", 3), ("softmax", 9)):
        problem, curv, _, k = low_level(loss, n, d, k, dtype, seed=n + d, weights=True,
                                        use_rows=False)
        p = d * k + k
        H = np.empty((p, p))
        hessian.hessian_sums(problem, curv, None, True, H, 2)
        assert_close(diag_sums(problem, curv, None, True, p, 2), np.diag(H), rtol,
                     float(np.max(np.abs(H))))


@pytest.mark.parametrize("fit_intercept", [False, True], ids=["no-b", "b"])
@pytest.mark.parametrize("loss", LOSSES)
def test_linear_model_diag_matches_numpy(loss, fit_intercept, dtype, rtol):
    """LinearModel.hessian_diag_sums (TRON's preconditioner) against the diagonal of its
    hessian_sums and the numpy formula sum_i R_ic x_ij^2 on row_curvature."""
    X, y, _, _, sw = make_problem(loss, 3001, 6, 3, dtype=dtype, seed=1, weights=True)
    k = 3 if loss == "softmax" else 1
    model = LinearModel(loss, fit_intercept).bind(6, k)
    data = model.prepare(X, y, sw)
    theta = np.random.default_rng(2).standard_normal(model.n_params) / 3
    curv = model.curvature(data, theta, 1)
    got = np.full(model.n_params, np.nan)
    model.hessian_diag_sums(data, curv, got)
    H = np.empty((model.n_params, model.n_params))
    model.hessian_sums(data, curv, H, 1)
    assert_close(got, np.diag(H), rtol)
    R = row_curvature(data, curv)
    ref = np.concatenate([(np.square(X.astype(np.float64)).T @ R).ravel(),
                          R.sum(axis=0) if fit_intercept else np.zeros(k)])
    assert_close(got, ref, rtol)
    for threads in (1, 2):
        out = np.full(model.n_params, np.nan)
        model.hessian_diag_sums(data, curv, out, threads)
        assert_close(out, ref, rtol)


def test_diag_low_level_edges_and_bad_input():
    problem, curv, _, k = low_level("softmax", 50, 4, 3, np.float64, seed=0, weights=True,
                                    use_rows=False)
    empty = np.empty(0, dtype=np.intp)
    out = diag_sums(problem, curv[:0], empty, True, 15, 1)
    assert not out.any()
    with pytest.raises(ValueError, match="out must have 15 entries"):
        hessian.hessian_diag_sums(problem, curv, None, True, np.empty(14), 1)
    with pytest.raises(ValueError, match="curv must hold 7 x 3"):
        hessian.hessian_diag_sums(problem, curv, np.arange(7), True, np.empty(15), 1)
    with pytest.raises(ValueError, match=re.escape("rows[1]")):
        hessian.hessian_diag_sums(problem, curv[:2], np.array([0, 50]), True, np.empty(15), 1)
    with pytest.raises(ValueError, match=re.escape("rows[0]")):
        hessian.hessian_diag_sums(problem, curv[:1], np.array([-1]), True, np.empty(15), 1)
    bad = problem.sample_weight.copy()
    bad[9] = -1
    negative = gradients.Problem("softmax", problem.X, problem.y, bad)
    with pytest.raises(ValueError, match=re.escape("sample_weight[9]")):
        hessian.hessian_diag_sums(negative, curv, None, True, np.empty(15), 1)
    kernel = hessian._kernels.hessian_diag_sums
    binary = gradients.prepare("logistic", problem.X, (problem.y > 0).astype(float))
    with pytest.raises(ValueError, match="inconsistent shapes"):      # binary with k = 3
        kernel(binary.kind, binary.X, binary.sample_weight, empty, curv.ravel(), 3, True,
               np.empty(15), 1)
    with pytest.raises(ValueError, match="inconsistent shapes"):      # weights of 49 rows
        kernel(problem.kind, problem.X, problem.sample_weight[:49], empty, curv.ravel(), 3,
               True, np.empty(15), 1)


# ----------------------------------------------------------------------------- bad input

def names(arg):
    return rf"\b{re.escape(arg)}\b"


@pytest.fixture
def logistic_problem():
    X, y, coef, b, sw = make_problem("logistic", 30, 3, seed=0, intercept=True, weights=True)
    return X, y, coef, b, sw


@pytest.mark.parametrize("fn", ["hessian", "hess_vec"])
def test_bad_arguments(fn, logistic_problem):
    X, y, coef, b, sw = logistic_problem

    def call(loss="logistic", X=X, y=y, coef=coef, b=b, **kw):
        if fn == "hessian":
            return hessian.hessian(loss, X, y, coef, b, **kw)
        return hessian.hess_vec(loss, X, y, coef, np.ones_like(coef), b, **kw)

    with pytest.raises(ValueError, match=names("loss")):
        call(loss="hinge")
    with pytest.raises(ValueError, match=names("X")):
        call(X=X[0])
    with pytest.raises(TypeError, match=names("X")):
        call(X=X.astype(str))
    with pytest.raises(ValueError, match=names("y")):
        call(y=y[:-1])
    with pytest.raises(ValueError, match=names("coef")):
        call(coef=coef[:-1])
    with pytest.raises(ValueError, match=names("coef")):
        call(coef=np.full_like(coef, np.nan))
    with pytest.raises(ValueError, match=names("intercept")):
        call(b=[1.0, 2.0])
    with pytest.raises(ValueError, match=re.escape("y[4]")):
        bad = y.copy()
        bad[4] = 0.5
        call(y=bad)
    with pytest.raises(ValueError, match=re.escape("sample_weight[9]")):
        bad = sw.copy()
        bad[9] = -1
        call(sample_weight=bad)
    with pytest.raises(ValueError, match="positive sum"):
        call(sample_weight=np.zeros(30))
    with pytest.raises(ValueError, match=names("sample_weight")):
        call(sample_weight=sw[:-1])
    with pytest.raises(ValueError, match=re.escape("rows[2]")):
        call(rows=[0, 1, 30])
    with pytest.raises(ValueError, match=re.escape("rows[0]")):
        call(rows=[-1])
    with pytest.raises(TypeError, match=names("rows")):
        call(rows=[0.5])
    with pytest.raises(ValueError, match=names("rows")):
        call(rows=np.array([], dtype=np.intp))
    with pytest.raises(ValueError, match=names("n_threads")):
        call(n_threads=0)
    with pytest.raises(TypeError, match=names("n_threads")):
        call(n_threads=1.5)
    with pytest.raises(ValueError, match=names("l2")):
        call(l2=-1.0)
    with pytest.raises(ValueError, match=names("X")):
        bad = X.copy()
        bad[3, 1] = np.inf
        call(X=bad)


def test_bad_labels_softmax_and_squared():
    X, y, coef, b, _ = make_problem("softmax", 20, 3, 4, seed=0, intercept=True)
    bad = y.copy()
    bad[5] = 4
    with pytest.raises(ValueError, match=re.escape("y[5]")):
        hessian.hessian("softmax", X, bad, coef, b)
    bad[5] = 1.5
    with pytest.raises(ValueError, match=re.escape("y[5]")):
        hessian.hess_vec("softmax", X, bad, coef, coef, b)
    with pytest.raises(ValueError, match=names("coef")):
        hessian.hessian("softmax", X, y, coef[:, :1])
    X, y, coef, b, _ = make_problem("squared", 20, 3, seed=0)
    y[2] = np.nan
    with pytest.raises(ValueError, match=names("y")):
        hessian.hessian("squared", X, y, coef)
    with pytest.raises(ValueError, match=re.escape("y[rows]")):
        hessian.hess_vec("squared", X, y, coef, coef, rows=[1, 2])


def test_bad_directions(logistic_problem):
    X, y, coef, b, _ = logistic_problem
    with pytest.raises(ValueError, match=names("vector")):
        hessian.hess_vec("logistic", X, y, coef, coef[:-1], b)
    with pytest.raises(ValueError, match=names("vector")):
        hessian.hess_vec("logistic", X, y, coef, np.full_like(coef, np.nan), b)
    with pytest.raises(TypeError, match=names("vector")):
        hessian.hess_vec("logistic", X, y, coef, ["a"] * 3, b)
    with pytest.raises(ValueError, match=names("vector_intercept")):
        hessian.hess_vec("logistic", X, y, coef, coef, b, [1.0, 2.0])
    with pytest.raises(ValueError, match=names("vector_intercept")):
        hessian.hess_vec("logistic", X, y, coef, coef, None, 1.0)
    X, y, coef, b, _ = make_problem("softmax", 20, 3, 4, seed=0, intercept=True)
    with pytest.raises(ValueError, match=names("vector_intercept")):
        hessian.hess_vec("softmax", X, y, coef, coef, b, 1.0)
    with pytest.raises(ValueError, match=names("vector")):
        hessian.hess_vec("softmax", X, y, coef, coef.T, b)
