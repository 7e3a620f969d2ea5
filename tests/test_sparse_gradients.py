"""CSR X in cyfed.loss_grad / clipped_grad_sum / margins / predict and cyfed.hessian.

Every sparse result is checked against the numpy reference (tests/reference.py,
on X.toarray() in float64) and against cyfed's dense kernels on X.toarray();
the Hessian-vector product also against finite differences of the gradient.
"""
import numpy as np
import pytest
import scipy.sparse as sp

import cyfed
import reference as ref
from cyfed import gradients, hessian
from reference import LOSSES, RTOL, assert_close, assert_matches_reference

INDEX_DTYPES = [pytest.param(np.int32, id="int32"), pytest.param(np.int64, id="int64")]


def with_index_dtype(X, index_dtype):
    """X with indices and indptr of index_dtype (scipy picks int32 when values fit)."""
    X = X.copy()
    X.indices = X.indices.astype(index_dtype)
    X.indptr = X.indptr.astype(index_dtype)
    return X


def make_sparse(loss, n, d, k=3, *, density=0.2, dtype=np.float64, index_dtype=np.int32,
                seed=0, intercept=False, weights=False):
    """A random (X CSR, y, coef, intercept, sample_weight) problem: X's nonzeros are
    N(0.3, 1), about one row in 10 is empty, the rest as reference.make_problem."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n, d)) < density
    mask[rng.random(n) < 0.1] = False
    dense = np.where(mask, rng.standard_normal((n, d)) + 0.3, 0.0).astype(dtype)
    X = with_index_dtype(sp.csr_matrix(dense), index_dtype)
    _, y, coef, b, sw = ref.make_problem(loss, n, d, k, dtype=dtype, seed=seed,
                                         intercept=intercept, weights=weights)
    return X, y, coef, b, sw


def split_duplicates_and_shuffle(X, seed=0):
    """The same matrix with every other entry split into two halves (duplicates) and
    the column indices of each row in random order."""
    rng = np.random.default_rng(seed)
    coo = X.tocoo()
    half = np.arange(coo.nnz) % 2 == 0
    rows = np.concatenate([coo.row, coo.row[half]])
    cols = np.concatenate([coo.col, coo.col[half]])
    vals = np.concatenate([np.where(half, coo.data / 2, coo.data), coo.data[half] / 2])
    order = np.lexsort((rng.random(rows.size), rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=X.shape[0]))])
    out = sp.csr_matrix((vals[order].astype(X.dtype), cols[order].astype(X.indices.dtype),
                         indptr.astype(X.indptr.dtype)), shape=X.shape)
    assert not out.has_canonical_format
    return out


def rtol_for(dtype):
    return RTOL[np.dtype(dtype)]


def same_result(got, want, rtol, dtype):
    """A loss_grad result of the sparse kernel close to the dense kernel's."""
    assert_close(got[0], want[0], rtol, err_msg="value")
    assert_close(got[1], want[1], rtol, err_msg="grad_coef")
    assert got[1].dtype == want[1].dtype == dtype
    if want[2] is None:
        assert got[2] is None
    else:
        assert_close(got[2], want[2], rtol, err_msg="grad_intercept")


# ----------------------------------------------------------------------- loss_grad grid

# n * nnz per row large enough (> 2 x 32768 multiply-adds) that two threads run.
N, D = 5003, 80


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("use_rows", [False, True], ids=["all-rows", "rows"])
@pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("intercept", [False, True], ids=["no-b", "b"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_loss_grad_matches_dense_and_reference(index_dtype, loss, intercept, weights,
                                               use_rows, threads, dtype, rtol):
    X, y, coef, b, sw = make_sparse(loss, N, D, 4, dtype=dtype, index_dtype=index_dtype,
                                    seed=7, intercept=intercept, weights=weights)
    rows = np.random.default_rng(1).integers(0, N, size=3001) if use_rows else None
    got = cyfed.loss_grad(loss, X, y, coef, b, l2=0.1, sample_weight=sw, rows=rows,
                          n_threads=threads)
    want = ref.loss_grad(loss, X.toarray(), y, coef, b, l2=0.1, sample_weight=sw, rows=rows)
    assert_matches_reference(got, want, rtol, dtype)
    dense = cyfed.loss_grad(loss, X.toarray(), y, coef, b, l2=0.1, sample_weight=sw,
                            rows=rows, n_threads=threads)
    same_result(got, dense, rtol, dtype)


@pytest.mark.parametrize("loss", LOSSES)
def test_result_depends_on_thread_count_only(loss, dtype):
    X, y, coef, b, sw = make_sparse(loss, N, D, 3, dtype=dtype, seed=3, intercept=True,
                                    weights=True)
    for threads in (1, 2):
        first = cyfed.loss_grad(loss, X, y, coef, b, sample_weight=sw, n_threads=threads)
        again = cyfed.loss_grad(loss, X, y, coef, b, sample_weight=sw, n_threads=threads)
        assert first[0] == again[0]
        np.testing.assert_array_equal(first[1], again[1])


@pytest.mark.parametrize("k", [2, 5, 17, 40])
def test_softmax_class_counts(k, dtype, rtol):
    X, y, coef, b, sw = make_sparse("softmax", 700, 30, k, dtype=dtype, seed=k,
                                    intercept=True, weights=True)
    got = cyfed.loss_grad("softmax", X, y, coef, b, sample_weight=sw)
    want = ref.loss_grad("softmax", X.toarray(), y, coef, b, sample_weight=sw)
    assert_matches_reference(got, want, rtol, dtype)


# ------------------------------------------------------------------------- CSR layouts

@pytest.mark.parametrize("loss", LOSSES)
def test_unsorted_indices_and_duplicates_sum(loss, dtype, rtol):
    X, y, coef, b, sw = make_sparse(loss, 900, 25, dtype=dtype, seed=11, intercept=True,
                                    weights=True)
    messy = split_duplicates_and_shuffle(X)
    got = cyfed.loss_grad(loss, messy, y, coef, b, sample_weight=sw)
    want = ref.loss_grad(loss, X.toarray(), y, coef, b, sample_weight=sw)
    assert_matches_reference(got, want, rtol, dtype)
    clipped = gradients.clipped_grad_sum(loss, messy, y, coef, b, clip_norm=0.3,
                                         sample_weight=sw)
    want_clipped = gradients.clipped_grad_sum(loss, X.toarray(), y, coef, b, clip_norm=0.3,
                                              sample_weight=sw)
    assert clipped[3] == want_clipped[3] > 0
    assert_close(clipped[1], want_clipped[1], rtol)


def test_empty_rows_zero_rows_and_stored_zeros(dtype, rtol):
    X, y, coef, b, _ = make_sparse("logistic", 200, 10, dtype=dtype, seed=2, intercept=True)
    X = X.tolil()
    X[5, :] = 0                          # an all-zero row
    X = X.tocsr()
    X.data[:7] = 0                       # explicitly stored zeros
    assert np.diff(X.indptr).min() == 0
    got = cyfed.loss_grad("logistic", X, y, coef, b)
    want = ref.loss_grad("logistic", X.toarray(), y, coef, b)
    assert_matches_reference(got, want, rtol, dtype)


def test_matrix_without_nonzeros(dtype):
    X = sp.csr_matrix((6, 4), dtype=dtype)
    y = np.array([0, 1, 1, 0, 1, 0], dtype=dtype)
    value, g, gb = cyfed.loss_grad("logistic", X, y, np.zeros(4), 0.0)
    assert value == pytest.approx(np.log(2))
    np.testing.assert_array_equal(g, 0)
    assert gb == pytest.approx(0.0, abs=1e-7)


def test_wide_and_very_sparse(rtol, dtype):
    rng = np.random.default_rng(5)
    n, d = 3000, 20_000
    X = sp.random(n, d, density=5 / d, format="csr", random_state=5, dtype=dtype)
    y = rng.integers(0, 2, n).astype(dtype)
    coef = (rng.standard_normal(d) / 3).astype(dtype)
    for threads in (1, 2):
        got = cyfed.loss_grad("logistic", X, y, coef, 0.1, n_threads=threads)
        want = ref.loss_grad("logistic", X.toarray(), y, coef, 0.1)
        assert_matches_reference(got, want, rtol, dtype)


@pytest.mark.parametrize("fmt", ["csc", "coo", "csr_array"])
def test_other_sparse_formats_are_converted(fmt):
    X, y, coef, b, _ = make_sparse("squared", 300, 12, seed=4, intercept=True)
    other = sp.csr_array(X) if fmt == "csr_array" else X.asformat(fmt)
    got = cyfed.loss_grad("squared", other, y, coef, b)
    assert_matches_reference(got, ref.loss_grad("squared", X.toarray(), y, coef, b), 1e-12)


def test_integer_values_become_float64():
    X = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], dtype=np.int64))
    problem = gradients.prepare("squared", X, [1.0, 2.0])
    assert problem.sparse and problem.dtype == np.float64
    assert problem.x_args[0].dtype == np.float64 and problem.x_args[3] == 3
    got = cyfed.loss_grad("squared", X, [1.0, 2.0], [0.1, 0.2, 0.3])
    want = cyfed.loss_grad("squared", X.toarray(), [1.0, 2.0], [0.1, 0.2, 0.3])
    same_result(got, want, 1e-12, np.dtype(np.float64))


# --------------------------------------------------------- clipping, margins, predictions

@pytest.mark.parametrize("use_rows", [False, True], ids=["all-rows", "rows"])
@pytest.mark.parametrize("loss", LOSSES)
def test_clipped_grad_sum_matches_dense(loss, use_rows, dtype, rtol):
    X, y, coef, b, sw = make_sparse(loss, 2000, 30, dtype=dtype, seed=9, intercept=True,
                                    weights=True)
    rows = np.arange(0, 2000, 3) if use_rows else None
    got = gradients.clipped_grad_sum(loss, X, y, coef, b, clip_norm=0.5, sample_weight=sw,
                                     rows=rows, n_threads=2)
    want = gradients.clipped_grad_sum(loss, X.toarray(), y, coef, b, clip_norm=0.5,
                                      sample_weight=sw, rows=rows, n_threads=2)
    assert got[3] == want[3] > 0
    assert_close(got[0], want[0], rtol)
    assert_close(got[1], want[1], rtol)
    assert_close(got[2], want[2], rtol)


@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_margins_and_predictions(loss, dtype, rtol):
    X, y, coef, b, _ = make_sparse(loss, 400, 15, 4, dtype=dtype, seed=6, intercept=True)
    z = gradients.margins(X, coef, b, n_threads=2)
    assert z.dtype == dtype and z.shape == (400,) + coef.shape[1:]
    assert_close(z, ref.margins(X.toarray(), coef, b), rtol)
    assert_close(gradients.predict_proba(loss, X, coef, b),
                 ref.predict_proba(loss, X.toarray(), coef, b), 10 * rtol)
    np.testing.assert_array_equal(gradients.predict(loss, X, coef, b),
                                  gradients.predict(loss, X.toarray(), coef, b))


# -------------------------------------------------------------------------- second order

@pytest.mark.parametrize("use_rows", [False, True], ids=["all-rows", "rows"])
@pytest.mark.parametrize("intercept", [False, True], ids=["no-b", "b"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_hessian_side_matches_dense(index_dtype, loss, intercept, use_rows, dtype, rtol):
    n, d, k = 3001, 12, 3
    X, y, coef, b, sw = make_sparse(loss, n, d, k, dtype=dtype, index_dtype=index_dtype,
                                    seed=13, intercept=intercept, weights=True)
    rows = np.random.default_rng(2).integers(0, n, size=2000) if use_rows else None
    v = np.random.default_rng(3).standard_normal(coef.shape)
    vb = None if b is None else np.random.default_rng(4).standard_normal(np.shape(b))
    kw = dict(sample_weight=sw, rows=rows, l2=0.2, n_threads=2)
    dense = X.toarray()
    for got, want in zip(hessian.hess_vec(loss, X, y, coef, v, b, vb, **kw),
                         hessian.hess_vec(loss, dense, y, coef, v, b, vb, **kw)):
        if want is None:
            assert got is None
        else:
            assert_close(got, want, 10 * rtol)
    H = hessian.hessian(loss, X, y, coef, b, **kw)
    assert_close(H, hessian.hessian(loss, dense, y, coef, b, **kw), 10 * rtol)

    problem = gradients.prepare(loss, X, y, sw)
    coef2d = gradients.coef_2d(coef, problem.kind, d, problem.dtype)
    b1 = gradients.intercept_1d(b, coef2d.shape[1], problem.dtype)
    idx = None if rows is None else rows.astype(np.intp)
    curv = hessian.curvature(problem, coef2d, b1, idx, 2)
    dense_problem = gradients.prepare(loss, dense, y, sw)
    assert_close(curv, hessian.curvature(dense_problem, coef2d, b1, idx, 2), rtol)
    diag = np.empty(coef2d.size + coef2d.shape[1])
    hessian.hessian_diag_sums(problem, curv, idx, intercept, diag, 2)
    full = np.empty((diag.size, diag.size))
    hessian.hessian_sums(problem, curv, idx, intercept, full, 2)
    assert_close(diag, np.diag(full), 10 * rtol)


@pytest.mark.parametrize("loss", LOSSES)
def test_hess_vec_is_the_gradient_derivative(loss):
    X, y, coef, b, sw = make_sparse(loss, 500, 9, 3, seed=17, intercept=True, weights=True)
    rng = np.random.default_rng(0)
    v, vb = rng.standard_normal(coef.shape), rng.standard_normal(np.shape(b))
    eps = 1e-6

    def grad(t):
        g, gb = cyfed.loss_grad(loss, X, y, coef + t * v, b + t * vb, l2=0.1,
                                sample_weight=sw)[1:]
        return g, np.asarray(gb)

    (gp, gbp), (gm, gbm) = grad(eps), grad(-eps)
    hv, hvb = hessian.hess_vec(loss, X, y, coef, v, b, vb, l2=0.1, sample_weight=sw)
    assert_close(hv, (gp - gm) / (2 * eps), 1e-6)
    assert_close(np.asarray(hvb), (gbp - gbm) / (2 * eps), 1e-6)


@pytest.mark.parametrize("loss", LOSSES)
def test_hessian_diagonal_with_duplicates(loss):
    X, y, coef, b, sw = make_sparse(loss, 400, 10, 3, seed=19, intercept=True, weights=True)
    messy = split_duplicates_and_shuffle(X)
    diag = {}
    for name, M in (("messy", messy), ("clean", X)):
        problem = gradients.prepare(loss, M, y, sw)
        coef2d = gradients.coef_2d(coef, problem.kind, 10, problem.dtype)
        b1 = gradients.intercept_1d(b, coef2d.shape[1], problem.dtype)
        curv = hessian.curvature(problem, coef2d, b1, None, 2)
        diag[name] = np.empty(coef2d.size + coef2d.shape[1])
        hessian.hessian_diag_sums(problem, curv, None, True, diag[name], 2)
    assert_close(diag["messy"], diag["clean"], 1e-12)
    assert_close(hessian.hessian(loss, messy, y, coef, b, sample_weight=sw),
                 hessian.hessian(loss, X, y, coef, b, sample_weight=sw), 1e-12)


# ------------------------------------------------------------------------------- errors

def test_bad_label_names_the_row():
    X, y, coef, _, _ = make_sparse("logistic", 50, 6, seed=1)
    y[17] = 2
    with pytest.raises(ValueError, match=r"y\[17\] = 2"):
        cyfed.loss_grad("logistic", X, y, coef)


def test_negative_weight_and_bad_rows():
    X, y, coef, _, sw = make_sparse("squared", 50, 6, seed=1, weights=True)
    sw[3] = -1
    with pytest.raises(ValueError, match=r"sample_weight\[3\]"):
        cyfed.loss_grad("squared", X, y, coef, sample_weight=sw)
    with pytest.raises(ValueError, match=r"rows\[1\] = 50"):
        cyfed.loss_grad("squared", X, y, coef, rows=[0, 50])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_value_names_the_row(bad):
    X, y, coef, _, _ = make_sparse("logistic", 60, 6, seed=1)
    row = 41 + int(np.flatnonzero(np.diff(X.indptr)[41:] >= 2)[0])   # two entries or more
    X.data[X.indptr[row] + 1] = bad
    col = X.indices[X.indptr[row] + 1]
    with pytest.raises(ValueError, match=rf"X contains NaN or infinity in row {row} "
                                         rf"\(X\[{row}, {col}\]"):
        cyfed.loss_grad("logistic", X, y, coef)
    with pytest.raises(ValueError, match=rf"in row {row} "):
        cyfed.loss_grad("logistic", X, y, coef, rows=[3, row, 5])
    with pytest.raises(ValueError, match=rf"in row {row} "):
        hessian.hess_vec("logistic", X, y, coef, coef)
    with pytest.raises(ValueError, match=rf"in row {row} "):
        gradients.margins(X, coef)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("bad_col", [-1, 6, 10**6])
def test_column_index_out_of_range_names_the_row(bad_col, index_dtype):
    X, y, coef, _, _ = make_sparse("softmax", 40, 6, 3, index_dtype=index_dtype, seed=1)
    row = 22 + int(np.flatnonzero(np.diff(X.indptr)[22:])[0])       # a non-empty row
    X.indices[X.indptr[row]] = bad_col
    match = rf"column index outside \[0, 6\) in row {row}: {bad_col}"
    with pytest.raises(ValueError, match=match):
        cyfed.loss_grad("softmax", X, y, coef)
    with pytest.raises(ValueError, match=match):
        gradients.margins(X, coef)
    with pytest.raises(ValueError, match=match):
        hessian.hessian("softmax", X, y, coef)
    with pytest.raises(ValueError, match=match):
        hessian.hess_vec("softmax", X, y, coef, coef)


def test_bad_indptr_is_refused():
    X, y, coef, _, _ = make_sparse("squared", 10, 4, seed=1)
    X.indptr[5] = X.indptr[6] + 1
    with pytest.raises(ValueError, match=r"X.indptr must be 11 non-decreasing offsets"):
        cyfed.loss_grad("squared", X, y, coef)


def test_wrong_shapes_and_dtypes():
    X, y, coef, _, _ = make_sparse("softmax", 30, 5, 3, seed=1)
    with pytest.raises(ValueError, match=r"coef must have shape \(5, n_classes\)"):
        cyfed.loss_grad("softmax", X, y, coef[:4])
    with pytest.raises(ValueError, match=r"coef must have shape \(5,\)"):
        cyfed.loss_grad("logistic", X, np.zeros(30), coef)
    with pytest.raises(ValueError, match=r"y must have shape \(30,\)"):
        cyfed.loss_grad("softmax", X, y[:29], coef)
    with pytest.raises(TypeError, match="X must hold float32, float64, integer or bool"):
        cyfed.loss_grad("squared", X.astype(np.complex128), y, coef[:, 0])
    with pytest.raises(ValueError, match="at least one row and one column"):
        cyfed.loss_grad("squared", sp.csr_matrix((0, 5)), [], coef[:, 0])
