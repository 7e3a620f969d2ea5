"""cyfed.loss_grad / margins / predict / predict_proba against numpy references."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cyfed
import reference as ref
from reference import LOSSES, RTOL, assert_close, assert_matches_reference, make_problem

F64 = np.dtype(np.float64)


def call(loss, X, y, coef, b=None, sw=None, **kw):
    return cyfed.loss_grad(loss, X, y, coef, b, sample_weight=sw, **kw)


# --------------------------------------------------------------------------- reference grid

# (n, d, k): tiny (one partial block, one thread), and two that span many
# blocks and are large enough (n * d >= 2 * 32768) to run on two threads, one
# with d > 16 and one with d <= 16 (squared/logistic take a "narrow" path).
SIZES = [pytest.param((7, 3, 3), id="small"), pytest.param((5003, 17, 5), id="large"),
         pytest.param((6007, 13, 5), id="large-narrow")]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("l2", [0.0, 0.3], ids=["l2=0", "l2=0.3"])
@pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("intercept", [False, True], ids=["no-b", "b"])
@pytest.mark.parametrize("loss", LOSSES)
def test_matches_reference(loss, intercept, weights, l2, size, dtype, rtol):
    n, d, k = size
    X, y, coef, b, sw = make_problem(loss, n, d, k, dtype=dtype, seed=n + d,
                                     intercept=intercept, weights=weights)
    got = call(loss, X, y, coef, b, sw, l2=l2)
    want = ref.loss_grad(loss, X, y, coef, b, l2=l2, sample_weight=sw)
    assert_matches_reference(got, want, rtol, dtype)


# Kernel paths picked by shape: every narrow width (squared/logistic specialise
# d <= 16 at compile time) and softmax class counts around the vector-register
# sizes (k <= 16 float64 / 32 float32 padded into registers, larger k generic).
@pytest.mark.parametrize("use_rows", [False, True], ids=["all-rows", "rows"])
@pytest.mark.parametrize("d", range(1, 19))
@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_every_width(loss, d, use_rows, dtype, rtol):
    n = max(1001, 70_000 // d + 3)          # n * d >= 2 * 32768: two threads
    X, y, coef, b, sw = make_problem(loss, n, d, dtype=dtype, seed=d, intercept=True,
                                     weights=True)
    rows = np.random.default_rng(d).integers(0, n, size=n + 5) if use_rows else None
    got = call(loss, X, y, coef, b, sw, l2=0.1, rows=rows)
    want = ref.loss_grad(loss, X, y, coef, b, l2=0.1, sample_weight=sw, rows=rows)
    assert_matches_reference(got, want, rtol, dtype)


@pytest.mark.parametrize("use_rows", [False, True], ids=["all-rows", "rows"])
@pytest.mark.parametrize("k", [2, 3, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 40])
def test_every_class_count(k, use_rows, dtype, rtol):
    n, d = 3001, 5
    X, y, coef, b, sw = make_problem("softmax", n, d, k, dtype=dtype, seed=k,
                                     intercept=True, weights=True)
    rows = np.random.default_rng(k).integers(0, n, size=2000) if use_rows else None
    got = call("softmax", X, y, coef, b, sw, l2=0.1, rows=rows)
    want = ref.loss_grad("softmax", X, y, coef, b, l2=0.1, sample_weight=sw, rows=rows)
    assert_matches_reference(got, want, rtol, dtype)
    assert got[1].shape == (d, k) and got[2].shape == (k,)


@pytest.mark.parametrize("intercept", [False, True], ids=["no-b", "b"])
@pytest.mark.parametrize("loss", LOSSES)
def test_output_types_and_shapes(loss, intercept, dtype):
    k = 4
    X, y, coef, b, sw = make_problem(loss, 30, 5, k, dtype=dtype, intercept=intercept,
                                     weights=True)
    value, g, gb = call(loss, X, y, coef, b, sw, l2=0.1)
    assert type(value) is float
    assert g.dtype == dtype
    assert g.shape == coef.shape
    assert isinstance(g, np.ndarray)
    if not intercept:
        assert gb is None
    elif loss == "softmax":
        assert isinstance(gb, np.ndarray)
        assert gb.shape == (k,)
        assert gb.dtype == dtype
    else:
        assert isinstance(gb, np.generic) and not isinstance(gb, np.ndarray)
        assert np.ndim(gb) == 0
        assert gb.dtype == dtype


def test_inputs_are_not_modified():
    X, y, coef, b, sw = make_problem("softmax", 300, 6, 3, intercept=True, weights=True)
    copies = [a.copy() for a in (X, y, coef, b, sw)]
    call("softmax", X, y, coef, b, sw, l2=0.5)
    for before, after in zip(copies, (X, y, coef, b, sw)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("loss", LOSSES)
def test_reference_agrees_with_sklearn(loss):
    """The reference itself, cross-checked with scikit-learn's metrics (moderate margins)."""
    from sklearn.metrics import log_loss, mean_squared_error

    X, y, coef, b, sw = make_problem(loss, 400, 5, 3, seed=17, intercept=True, weights=True)
    want = ref.loss_grad(loss, X, y, coef, b, sample_weight=sw)
    z = ref.margins(X, coef, b)
    if loss == "squared":
        other = mean_squared_error(y, z, sample_weight=sw)
    else:
        proba = ref.predict_proba(loss, X, coef, b)
        other = log_loss(y, proba, sample_weight=sw, labels=np.arange(proba.shape[1]))
    assert want.value == pytest.approx(other, rel=1e-12, abs=0)
    assert cyfed.loss_grad(loss, X, y, coef, b, sample_weight=sw)[0] == pytest.approx(
        other, rel=1e-12, abs=0)


# --------------------------------------------------------------------------- finite differences

def numeric_gradient(f, x, h=1e-6):
    """Central differences of scalar f at the float64 array x (any shape)."""
    x = np.array(x, dtype=np.float64)
    g = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        step = h * max(1.0, abs(x[idx]))
        xp, xm = x.copy(), x.copy()
        xp[idx] += step
        xm[idx] -= step
        g[idx] = (f(xp) - f(xm)) / (2 * step)
    return g


@pytest.mark.parametrize("loss", LOSSES)
def test_finite_differences(loss):
    X, y, coef, b, sw = make_problem(loss, 60, 4, 3, seed=7, intercept=True, weights=True)
    b = np.asarray(b, dtype=np.float64)
    l2 = 0.25

    def value(c, bb):
        return call(loss, X, y, c, bb if bb.ndim else float(bb), sw, l2=l2)[0]

    _, g, gb = call(loss, X, y, coef, b if b.ndim else float(b), sw, l2=l2)
    g_num = numeric_gradient(lambda c: value(c, b), coef)
    gb_num = numeric_gradient(lambda bb: value(coef, bb), b)
    np.testing.assert_allclose(g, g_num, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.reshape(gb, b.shape), gb_num, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- the seed's convention

def test_seed_convention_squared():
    X = np.array([[1, 2], [2, 3], [3, 4]])
    y = np.array([1, 2, 3])
    coef = np.zeros(2, dtype=np.int64)
    value, g, gb = cyfed.loss_grad("squared", X, y, coef)
    assert value == pytest.approx(np.mean(y.astype(float) ** 2), rel=1e-15, abs=0)
    assert value == pytest.approx(14 / 3, rel=1e-15, abs=0)
    np.testing.assert_allclose(g, 2 / 3 * X.T @ (-y), rtol=1e-15)
    assert g.dtype == F64
    assert gb is None


def test_seed_convention_gradient_descent_step():
    """One step theta <- theta - lr * grad equals the seed's 2/n X^T (X theta - y) update."""
    rng = np.random.default_rng(3)
    X, y, theta = rng.standard_normal((50, 3)), rng.standard_normal(50), rng.standard_normal(3)
    _, g, _ = cyfed.loss_grad("squared", X, y, theta)
    np.testing.assert_allclose(g, 2 / 50 * X.T @ (X @ theta - y), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- property tests

@st.composite
def problems(draw, loss, dtype, max_margin):
    n = draw(st.integers(1, 50))
    d = draw(st.integers(1, 8))
    k = draw(st.integers(2, 4)) if loss == "softmax" else 1
    seed = draw(st.integers(0, 2**32 - 1))
    # target size of the largest margin: from tiny to max_margin
    zmax = draw(st.sampled_from([1e-3, 0.5, 3.0, 30.0, max_margin]))
    intercept = draw(st.booleans())
    weighted = draw(st.booleans())
    l2 = draw(st.sampled_from([0.0, 1e-3, 0.7]))
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, (n, d))
    X[0, rng.integers(d)] = draw(st.sampled_from([-1.0, 1.0]))   # margins reach zmax
    shape = (d, k) if loss == "softmax" else (d,)
    coef = rng.uniform(-1.0, 1.0, shape)
    z = X @ coef
    coef *= zmax / max(np.max(np.abs(z)), 1e-300)
    b = None
    if intercept:
        b = rng.uniform(-zmax, zmax, k) if loss == "softmax" else float(rng.uniform(-1, 1))
    if loss == "squared":
        y = rng.uniform(-zmax, zmax, n)
    elif loss == "logistic":
        y = rng.integers(0, 2, n)
    else:
        y = rng.integers(0, k, n)
    sw = None
    if weighted:
        sw = rng.uniform(0.0, 3.0, n)
        sw[rng.integers(n)] = 1.0    # keep the sum positive
    cast = (lambda a: None if a is None else np.asarray(a).astype(dtype))
    return loss, cast(X), cast(y), cast(coef), b, cast(sw), l2


@pytest.mark.parametrize("loss", LOSSES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_property_float64_large_margins(loss, data):
    """Any shape, margins up to |z| = 1e3: finite and equal to the stable reference."""
    loss, X, y, coef, b, sw, l2 = data.draw(problems(loss, np.float64, 1e3))
    got = call(loss, X, y, coef, b, sw, l2=l2)
    assert np.isfinite(got[0]) and np.isfinite(got[1]).all()
    want = ref.loss_grad(loss, X, y, coef, b, l2=l2, sample_weight=sw)
    # conditioned: with |z| ~ 1e3 a gradient is a sum of terms that may cancel
    assert_matches_reference(got, want, RTOL[F64], F64, conditioned=True)


@pytest.mark.parametrize("loss", LOSSES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_property_float32(loss, data):
    """float32 over shapes with moderate margins (|z| <= 30)."""
    loss, X, y, coef, b, sw, l2 = data.draw(problems(loss, np.float32, 30.0))
    got = call(loss, X, y, coef, b, sw, l2=l2)
    want = ref.loss_grad(loss, X, y, coef, b, l2=l2, sample_weight=sw)
    assert_matches_reference(got, want, RTOL[np.dtype(np.float32)], np.dtype(np.float32),
                             conditioned=True)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("n,d,k", [(1, 1, 2), (1, 5, 2), (4, 1, 3), (5, 1, 2), (3, 2, 4)])
def test_tiny_shapes(loss, n, d, k, dtype, rtol):
    X, y, coef, b, sw = make_problem(loss, n, d, k, dtype=dtype, seed=n * 10 + d,
                                     intercept=True, weights=True)
    if sw is not None and sw.sum() == 0:
        sw[:] = 1
    got = call(loss, X, y, coef, b, sw, l2=0.1)
    want = ref.loss_grad(loss, X, y, coef, b, l2=0.1, sample_weight=sw)
    assert_matches_reference(got, want, rtol, dtype)


# --------------------------------------------------------------------------- mini-batches

ROW_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
              np.uint64, np.intp, np.uintp]


@pytest.mark.parametrize("row_dtype", ROW_DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("loss", LOSSES)
def test_rows_any_integer_dtype(loss, row_dtype, dtype, rtol):
    X, y, coef, b, sw = make_problem(loss, 100, 4, 3, dtype=dtype, seed=11,
                                     intercept=True, weights=True)
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 100, size=37)
    rows[:3] = [99, 0, 99]                         # repeats and both ends
    rows = rows.astype(row_dtype)
    got = call(loss, X, y, coef, b, sw, l2=0.2, rows=rows)
    want = ref.loss_grad(loss, X, y, coef, b, l2=0.2, sample_weight=sw, rows=rows)
    assert_matches_reference(got, want, rtol, dtype)


@pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss", LOSSES)
def test_rows_large_batch_with_repeats(loss, weights, dtype, rtol):
    """A batch longer than X (many repeats), over many blocks and two threads."""
    X, y, coef, b, sw = make_problem(loss, 3001, 17, 4, dtype=dtype, seed=12,
                                     intercept=True, weights=weights)
    rows = np.random.default_rng(6).integers(0, 3001, size=7000)
    got = call(loss, X, y, coef, b, sw, rows=rows)
    want = ref.loss_grad(loss, X, y, coef, b, sample_weight=sw, rows=rows)
    assert_matches_reference(got, want, rtol, dtype)
    # the same as materialising the batch
    batch = call(loss, X[rows], y[rows], coef, b, None if sw is None else sw[rows])
    assert_matches_reference(batch, want, rtol, dtype)


def test_rows_list_and_single_row():
    X, y, coef, b, sw = make_problem("logistic", 20, 3, intercept=True)
    got = call("logistic", X, y, coef, b, rows=[4])
    want = ref.loss_grad("logistic", X, y, coef, b, rows=[4])
    assert_matches_reference(got, want, 1e-12)


# --------------------------------------------------------------------------- layouts and dtypes

def assert_same_result(a, b):
    """Same data after coercion -> the same bits (the kernel is deterministic)."""
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].dtype == b[1].dtype
    if b[2] is None:
        assert a[2] is None
    else:
        np.testing.assert_array_equal(a[2], b[2])


@pytest.mark.parametrize("loss", LOSSES)
def test_non_contiguous_and_fortran_inputs(loss, dtype):
    Xbig, y, coef, b, sw = make_problem(loss, 2000, 16, 3, dtype=dtype, seed=21,
                                        intercept=True, weights=True)
    # columns ::2 of a wider matrix
    X = Xbig[:, ::2]
    c = coef[::2]
    assert not X.flags.c_contiguous
    assert_same_result(call(loss, X, y, c, b, sw), call(loss, X.copy(), y, c.copy(), b, sw))
    # rows ::2, and strided y / weights to match
    X = Xbig[::2]
    assert not X.flags.c_contiguous or X.shape[0] == 1
    assert_same_result(call(loss, X, y[::2], coef, b, sw[::2]),
                       call(loss, X.copy(), y[::2].copy(), coef, b, sw[::2].copy()))
    # Fortran order (X, and coef for softmax)
    Xf, cf = np.asfortranarray(Xbig), np.asfortranarray(coef)
    assert not Xf.flags.c_contiguous
    assert_same_result(call(loss, Xf, y, cf, b, sw), call(loss, Xbig, y, coef, b, sw))
    # reversed views
    assert_same_result(call(loss, Xbig[::-1], y[::-1], coef, b, sw[::-1]),
                       call(loss, Xbig[::-1].copy(), y[::-1].copy(), coef, b,
                            sw[::-1].copy()))


@pytest.mark.parametrize("int_dtype", [np.int8, np.int32, np.int64, np.uint16, np.bool_],
                         ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("loss", LOSSES)
def test_integer_and_bool_inputs(loss, int_dtype):
    rng = np.random.default_rng(8)
    n, d, k = 500, 6, 3
    if int_dtype is np.bool_:
        X = rng.random((n, d)) < 0.5
    else:
        X = rng.integers(0, 5, size=(n, d)).astype(int_dtype)
    y = (rng.integers(0, k, n) if loss == "softmax"
         else rng.integers(0, 2, n) if loss == "logistic" else rng.integers(-3, 4, n))
    coef = rng.integers(-2, 3, size=(d, k) if loss == "softmax" else d)
    sw = rng.integers(0, 3, n)
    sw[0] = 1
    b = np.arange(k) if loss == "softmax" else 1
    got = call(loss, X, y, coef, b, sw, l2=0.5)
    same = call(loss, X.astype(np.float64), y.astype(np.float64), coef.astype(np.float64),
                np.asarray(b, dtype=np.float64), sw.astype(np.float64), l2=0.5)
    assert_same_result(got, same)
    assert got[1].dtype == F64
    assert_matches_reference(got, ref.loss_grad(loss, X, y, coef, b, l2=0.5,
                                                 sample_weight=sw), 1e-12, F64)


def test_bool_labels_for_logistic():
    X, y, coef, b, _ = make_problem("logistic", 40, 3, intercept=True)
    assert_same_result(call("logistic", X, y.astype(bool), coef, b),
                       call("logistic", X, y, coef, b))


def test_python_lists_and_scalars():
    X, y, coef, b, sw = make_problem("squared", 9, 2, intercept=True, weights=True)
    assert_same_result(call("squared", X.tolist(), y.tolist(), coef.tolist(), b, sw.tolist()),
                       call("squared", X, y, coef, b, sw))
    # a float32 X keeps float32 even if the other arguments are float64
    X32 = X.astype(np.float32)
    got = call("squared", X32, y, coef, np.float64(b), sw)
    assert got[1].dtype == np.float32 and got[2].dtype == np.float32
    assert_same_result(got, call("squared", X32, y.astype(np.float32),
                                 coef.astype(np.float32), np.float32(b),
                                 sw.astype(np.float32)))


def test_scalar_intercept_shapes_for_binary_losses():
    X, y, coef, b, _ = make_problem("logistic", 30, 3, intercept=True)
    base = call("logistic", X, y, coef, b)
    for alt in (np.float64(b), np.array(b), np.array([b])):
        assert_same_result(call("logistic", X, y, coef, alt), base)


# --------------------------------------------------------------------------- threads

@pytest.fixture(scope="module")
def big_problems():
    return {loss: make_problem(loss, 200_000, 10, 3, seed=99, intercept=True, weights=True)
            for loss in LOSSES}


@pytest.mark.parametrize("loss", LOSSES)
def test_one_vs_two_threads(loss, big_problems, dtype, rtol):
    X, y, coef, b, sw = (None if a is None else np.asarray(a).astype(dtype)
                         for a in big_problems[loss])
    one = call(loss, X, y, coef, b, sw, l2=0.1, n_threads=1)
    two = call(loss, X, y, coef, b, sw, l2=0.1, n_threads=2)
    # to rounding: the two runs only add the same terms in a different order
    assert_close(two[0], one[0], rtol)
    assert_close(two[1], one[1], rtol)
    assert_close(two[2], one[2], rtol)
    assert two[1].dtype == dtype
    # and both are right
    if dtype == F64:
        want = ref.loss_grad(loss, X, y, coef, b, l2=0.1, sample_weight=sw)
        assert_matches_reference(two, want, rtol, dtype)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 64, None])
def test_thread_counts_give_the_reference(n_threads):
    X, y, coef, b, sw = make_problem("softmax", 4000, 9, 4, seed=4, intercept=True,
                                     weights=True)
    got = call("softmax", X, y, coef, b, sw, n_threads=n_threads)
    assert_matches_reference(got, ref.loss_grad("softmax", X, y, coef, b, sample_weight=sw),
                             1e-12, F64)


def test_repeated_calls_are_deterministic():
    X, y, coef, b, sw = make_problem("logistic", 20000, 8, seed=2, intercept=True,
                                     weights=True)
    first = call("logistic", X, y, coef, b, sw, n_threads=2)
    for _ in range(3):
        assert_same_result(call("logistic", X, y, coef, b, sw, n_threads=2), first)


# --------------------------------------------------------------------------- large margins

@pytest.mark.parametrize("z", [800.0, -800.0, 710.0, -745.0, 40.0, -40.0])
@pytest.mark.parametrize("label", [0, 1])
def test_logistic_huge_margins(z, label, dtype):
    """Every row has margin z: l = log(1 + e^z) - y z without overflow."""
    X = np.array([[1.0, 2.0], [-3.0, 1.0], [0.5, 0.25]], dtype=dtype)
    coef = np.zeros(2, dtype=dtype)
    y = np.full(3, label, dtype=dtype)
    value, g, gb = cyfed.loss_grad("logistic", X, y, coef, z)
    assert np.isfinite(value) and np.isfinite(g).all() and np.isfinite(gb)
    want = ref.loss_grad("logistic", X, y, coef, z)
    # the reference against the exact maths: (1 - y) z + log1p(e^-z) for z > 0
    expected = ((1 - label) * z + np.log1p(np.exp(-z)) if z > 0
                else -label * z + np.log1p(np.exp(z)))
    assert want.value == pytest.approx(expected, rel=1e-15, abs=0)
    assert_matches_reference((value, g, gb), want, RTOL[dtype], dtype, conditioned=True)


def test_logistic_mixed_huge_margins():
    rng = np.random.default_rng(0)
    X = rng.choice([-1.0, 1.0], size=(64, 3))
    y = rng.integers(0, 2, 64)
    coef = np.array([800.0, 0.0, 0.0])
    got = cyfed.loss_grad("logistic", X, y, coef, -3.0)
    want = ref.loss_grad("logistic", X, y, coef, -3.0)
    assert np.isfinite(got[0])
    assert_matches_reference(got, want, 1e-12, F64, conditioned=True)


@pytest.mark.parametrize("scale", [1e3, -1e3, 3e3])
def test_softmax_huge_margins(scale, dtype):
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (50, 4)).astype(dtype)
    coef = (rng.uniform(-1, 1, (4, 3)) * scale).astype(dtype)
    y = rng.integers(0, 3, 50)
    b = np.array([scale, 0.0, -scale])
    got = cyfed.loss_grad("softmax", X, y, coef, b)
    want = ref.loss_grad("softmax", X, y, coef, b)
    assert np.isfinite(got[0]) and np.isfinite(got[1]).all() and np.isfinite(got[2]).all()
    assert want.value > 100          # really in the overflow-prone regime
    if dtype == F64:
        assert_matches_reference(got, want, 1e-12, F64, conditioned=True)
    else:
        # float32 margins of size 1e3 carry absolute errors ~1e3 * 2^-24; the value
        # is still right to 1e-5 relative, a gradient entry to that error in z.
        assert_close(got[0], want.value, 1e-5)
        assert_close(got[1], want.grad_coef, 1e-5, want.scale_coef * abs(scale) * 1e-2)


def test_softmax_equal_huge_margins():
    """All k margins equal to 1e3: loss log(k), probabilities 1/k."""
    X = np.ones((6, 1))
    coef = np.full((1, 4), 1e3)
    y = np.array([0, 1, 2, 3, 0, 1])
    value, g, gb = cyfed.loss_grad("softmax", X, y, coef, np.zeros(4))
    assert value == pytest.approx(np.log(4), rel=1e-14, abs=0)
    onehot_mean = np.eye(4)[y].mean(axis=0)
    np.testing.assert_allclose(gb, 0.25 - onehot_mean, rtol=0, atol=1e-15)
    np.testing.assert_allclose(g[0], 0.25 - onehot_mean, rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- margins / predict

@pytest.mark.parametrize("k", [None, 1, 3], ids=["coef1d", "k=1", "k=3"])
@pytest.mark.parametrize("intercept", [False, True], ids=["no-b", "b"])
def test_margins(k, intercept, dtype, rtol):
    rng = np.random.default_rng(31)
    X = rng.standard_normal((1003, 7)).astype(dtype)
    coef = rng.standard_normal(7 if k is None else (7, k)).astype(dtype)
    b = None
    if intercept:
        b = rng.standard_normal() if k is None else rng.standard_normal(k)
    z = cyfed.margins(X, coef, b)
    want = ref.margins(X, coef, b)
    assert z.dtype == dtype
    assert z.shape == want.shape == ((1003,) if k is None else (1003, k))
    # each margin is one dot product: compare with its own |x| . |coef| scale
    scale = np.abs(ref.as_working64(X, dtype)) @ np.abs(ref.as_working64(coef, dtype))
    if b is not None:
        scale = scale + np.abs(b)
    assert np.all(np.abs(z - want) <= 4 * rtol * scale)
    for nt in (1, 2):
        np.testing.assert_array_equal(cyfed.margins(X, coef, b, n_threads=nt), z)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9])
def test_margins_row_counts_not_multiple_of_four(n):
    rng = np.random.default_rng(n)
    X, coef = rng.standard_normal((n, 3)), rng.standard_normal((3, 2))
    np.testing.assert_allclose(cyfed.margins(X, coef, [1.0, -1.0]),
                               X @ coef + [1.0, -1.0], rtol=1e-13, atol=1e-14)


def test_predict_squared():
    rng = np.random.default_rng(2)
    X, coef = rng.standard_normal((100, 4)), rng.standard_normal(4)
    np.testing.assert_allclose(cyfed.predict("squared", X, coef, 0.5), X @ coef + 0.5,
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_predict_and_predict_proba(loss, dtype, rtol):
    rng = np.random.default_rng(40)
    n, d, k = 2000, 5, 4
    X = rng.standard_normal((n, d)).astype(dtype)
    coef = rng.standard_normal((d, k) if loss == "softmax" else d).astype(dtype)
    b = rng.standard_normal(k) if loss == "softmax" else 0.25
    z = ref.margins(X, coef, b)
    proba = cyfed.predict_proba(loss, X, coef, b)
    want = ref.predict_proba(loss, X, coef, b)
    assert proba.shape == want.shape == (n, 2 if loss == "logistic" else k)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=10 * rtol)
    # a probability moves by at most |dz| / 4: compare at the margins' rounding
    scale = float(np.max(np.abs(z)))
    np.testing.assert_allclose(proba, want, rtol=0, atol=4 * rtol * scale)

    labels = cyfed.predict(loss, X, coef, b)
    assert labels.shape == (n,)
    assert np.issubdtype(labels.dtype, np.integer)
    if loss == "logistic":
        expected = (z > 0).astype(int)
        clear = np.abs(z) > 1e-3                 # skip margins within rounding of 0
    else:
        expected = np.argmax(z, axis=1)
        top2 = np.sort(z, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(labels[clear], expected[clear])


def test_predict_proba_huge_margins_finite():
    X = np.array([[1.0], [-1.0]])
    p = cyfed.predict_proba("logistic", X, np.array([900.0]))
    np.testing.assert_allclose(p, [[0.0, 1.0], [1.0, 0.0]], atol=1e-300)
    p = cyfed.predict_proba("softmax", X, np.array([[1e3, -1e3, 0.0]]))
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-300)


def test_predict_proba_rejects_squared():
    with pytest.raises(ValueError, match="predict_proba"):
        cyfed.predict_proba("squared", np.ones((2, 2)), np.ones(2))


# --------------------------------------------------------------------------- relative accuracy

# A confidently right row (y = 1, z >> 0 for logistic; the label's margin far
# above the others for softmax) has a tiny loss log1p(e^-z) and a tiny gradient
# multiplier -e^-z/(1 + e^-z).  Both are well conditioned in z (relative error
# ~ |dz|), so a stable implementation gets them to full relative precision, as
# scikit-learn's _loss does; the margins below are exact (X = 1, coef = z).
CONFIDENT = [pytest.param(np.float64, 30.0, id="float64-z30"),
             pytest.param(np.float64, 40.0, id="float64-z40"),
             pytest.param(np.float32, 12.0, id="float32-z12")]

@pytest.mark.parametrize("dtype_,z", CONFIDENT)
def test_logistic_confident_row_relative_accuracy(dtype_, z):
    X = np.ones((1, 1), dtype=dtype_)
    value, g, gb = cyfed.loss_grad("logistic", X, np.ones(1), np.array([z]), 0.0)
    rtol = RTOL[np.dtype(dtype_)]
    assert value == pytest.approx(np.log1p(np.exp(-z)), rel=rtol, abs=0)
    assert float(g[0]) == pytest.approx(-np.exp(-z) / (1 + np.exp(-z)), rel=rtol, abs=0)


@pytest.mark.parametrize("dtype_,z", CONFIDENT)
def test_softmax_confident_row_relative_accuracy(dtype_, z):
    X = np.ones((1, 1), dtype=dtype_)
    coef = np.array([[z, 0.0]])
    value, g, gb = cyfed.loss_grad("softmax", X, np.zeros(1), coef, np.zeros(2))
    rtol = RTOL[np.dtype(dtype_)]
    p_other = np.exp(-z) / (1 + np.exp(-z))
    assert value == pytest.approx(np.log1p(np.exp(-z)), rel=rtol, abs=0)
    np.testing.assert_allclose(g[0], [-p_other, p_other], rtol=rtol)


def test_float32_block_loss_does_not_overflow():
    """256 float32 rows whose losses are each finite in float32 sum fine in float64."""
    X = np.zeros((256, 1), dtype=np.float32)
    y = np.full(256, 1.5e18, dtype=np.float32)
    value, _, _ = cyfed.loss_grad("squared", X, y, np.zeros(1, dtype=np.float32))
    assert value == pytest.approx(float(np.float32(1.5e18)) ** 2, rel=1e-6)


@pytest.mark.parametrize("loss", ["squared", "logistic", "softmax"])
def test_misaligned_input_is_handled(loss):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((33, 5))
    raw = np.frombuffer(b"\0" + X.tobytes(), dtype=np.float64, offset=1).reshape(33, 5)
    assert not raw.flags.aligned
    k = 3 if loss == "softmax" else 1
    coef = rng.standard_normal((5, k)) if loss == "softmax" else rng.standard_normal(5)
    y = rng.integers(0, max(k, 2), 33).astype(float)
    got = cyfed.loss_grad(loss, raw, y, coef)
    want = cyfed.loss_grad(loss, X, y, coef)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


# --------------------------------------------------------------------------- BLAS path

class TestBlasPath:
    """X that fits in cache runs through two BLAS passes per row block (z = X_b theta,
    then X_b^T r) instead of the fused pass; the results must be the same loss and
    gradients, statuses and determinism.  `uses_blas` says which path a call takes;
    BLAS_MAX_X_BYTES (a module attribute, read on every call) is its size threshold."""

    kernels = cyfed.gradients._kernels

    @staticmethod
    def kind(loss):
        return cyfed.gradients.LOSSES[loss]

    def uses_blas(self, loss, X, k, **kw):
        return self.kernels.uses_blas(self.kind(loss), X.shape[0], X.shape[1],
                                      k if loss == "softmax" else 1, X.itemsize, **kw)

    @pytest.fixture(autouse=True)
    def softmax_both_dtypes(self, monkeypatch):
        """Softmax takes the BLAS path in both dtypes here (by default only float32 off
        AVX-512 builds does), so that both instantiations are checked."""
        monkeypatch.setattr(self.kernels, "BLAS_SOFTMAX_ITEMSIZES", (4, 8))

    @pytest.mark.parametrize("side", ["under", "over"])
    @pytest.mark.parametrize("loss", LOSSES)
    def test_threshold(self, loss, side, monkeypatch, dtype, rtol):
        """Just under the size threshold BLAS runs, just over it the fused pass does;
        both give the reference."""
        monkeypatch.setattr(self.kernels, "BLAS_MAX_X_BYTES", 2 << 20)
        d, k = 100, 10
        n = self.kernels.BLAS_MAX_X_BYTES // (d * dtype.itemsize) + (side == "over")
        X, y, coef, b, sw = make_problem(loss, n, d, k, dtype=dtype, seed=31,
                                         intercept=True, weights=True)
        assert self.uses_blas(loss, X, k) == (side == "under")
        want = ref.loss_grad(loss, X, y, coef, b, l2=0.1, sample_weight=sw)
        for n_threads in (1, 2):
            got = call(loss, X, y, coef, b, sw, l2=0.1, n_threads=n_threads)
            assert_matches_reference(got, want, rtol, dtype)

    @pytest.mark.parametrize("size", [(1, 17, 2), (7, 40, 3), (5003, 37, 5), (801, 1000, 2)],
                             ids=["one-row", "tiny", "blocks", "d=1000"])
    @pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "weighted"])
    @pytest.mark.parametrize("intercept", [False, True], ids=["no-b", "b"])
    @pytest.mark.parametrize("loss", LOSSES)
    def test_matches_reference(self, loss, intercept, weights, size, dtype, rtol):
        n, d, k = size
        X, y, coef, b, sw = make_problem(loss, n, d, k, dtype=dtype, seed=n + d,
                                         intercept=intercept, weights=weights)
        assert self.uses_blas(loss, X, k)
        want = ref.loss_grad(loss, X, y, coef, b, l2=0.3, sample_weight=sw)
        for n_threads in (1, 2, 3):
            got = call(loss, X, y, coef, b, sw, l2=0.3, n_threads=n_threads)
            assert_matches_reference(got, want, rtol, dtype)

    @pytest.mark.parametrize("loss", LOSSES)
    def test_agrees_with_fused_pass(self, loss, monkeypatch, dtype, rtol):
        X, y, coef, b, sw = make_problem(loss, 3001, 33, 4, dtype=dtype, seed=5,
                                         intercept=True, weights=True)
        assert self.uses_blas(loss, X, 4)
        blas = call(loss, X, y, coef, b, sw, n_threads=2)
        monkeypatch.setattr(self.kernels, "BLAS_MAX_X_BYTES", 0)
        assert not self.uses_blas(loss, X, 4)
        fused = call(loss, X, y, coef, b, sw, n_threads=2)
        for got, want in zip(blas, fused):
            assert_close(got, want, rtol)

    @pytest.mark.parametrize("loss", LOSSES)
    def test_rows_and_clipping_take_the_fused_pass(self, loss, dtype, rtol):
        X, y, coef, b, sw = make_problem(loss, 2000, 40, 3, dtype=dtype, seed=6,
                                         intercept=True, weights=True)
        assert self.uses_blas(loss, X, 3)
        assert not self.uses_blas(loss, X, 3, all_rows=False)
        assert not self.uses_blas(loss, X, 3, clipping=True)
        rows = np.random.default_rng(6).integers(0, 2000, size=1500)
        got = call(loss, X, y, coef, b, sw, rows=rows, n_threads=2)
        want = ref.loss_grad(loss, X, y, coef, b, sample_weight=sw, rows=rows)
        assert_matches_reference(got, want, rtol, dtype)
        # a clip norm no example reaches: the plain sums (BLAS) again
        loss_sum, g, gb, n_clipped = cyfed.gradients.clipped_grad_sum(
            loss, X, y, coef, b, clip_norm=1e30, sample_weight=sw)
        value, g_mean, gb_mean = call(loss, X, y, coef, b, sw)
        total = float(np.sum(sw, dtype=np.float64))
        assert n_clipped == 0
        assert_close(loss_sum / total, value, rtol)
        assert_close(g / total, g_mean, rtol)
        assert_close(np.asarray(gb) / total, gb_mean, rtol)

    def test_narrow_and_very_wide_x_keep_the_fused_pass(self):
        X = np.zeros((1000, 16))
        assert not self.uses_blas("squared", X, 1)
        assert not self.uses_blas("logistic", X, 1)
        assert self.uses_blas("softmax", X, 3)
        X = np.zeros((10, 1025))         # fewer than 8 rows per single-threaded gemv
        assert not self.uses_blas("squared", X, 1)


    @pytest.mark.parametrize("n_threads", [1, 2])
    @pytest.mark.parametrize("loss", ["logistic", "softmax"])
    def test_bad_label_is_reported(self, loss, n_threads):
        X, y, coef, b, sw = make_problem(loss, 5000, 50, 3, seed=7, intercept=True)
        assert self.uses_blas(loss, X, 3)
        for bad_row in (0, 2999, 4999):
            y_bad = y.copy()
            y_bad[bad_row] = 0.5 if loss == "logistic" else 3
            with pytest.raises(ValueError, match=rf"y\[{bad_row}\] = "):
                call(loss, X, y_bad, coef, b, n_threads=n_threads)

    @pytest.mark.parametrize("n_threads", [1, 2])
    @pytest.mark.parametrize("loss", LOSSES)
    def test_negative_weight_is_reported(self, loss, n_threads):
        X, y, coef, b, sw = make_problem(loss, 5000, 50, 3, seed=8, intercept=True,
                                         weights=True)
        assert self.uses_blas(loss, X, 3)
        for bad_row in (0, 3333, 4999):
            sw_bad = sw.copy()
            sw_bad[bad_row] = -1.0
            with pytest.raises(ValueError, match=rf"sample_weight\[{bad_row}\] = -1"):
                call(loss, X, y, coef, b, sw_bad, n_threads=n_threads)

    @pytest.mark.parametrize("loss", LOSSES)
    def test_non_finite_input_is_named(self, loss):
        X, y, coef, b, sw = make_problem(loss, 3000, 30, 3, seed=9, intercept=True)
        assert self.uses_blas(loss, X, 3)
        X[1234, 5] = np.nan
        with pytest.raises(ValueError, match=r"X contains NaN or infinity \(X\[\(1234, 5\)\]"):
            call(loss, X, y, coef, b)

    @pytest.mark.parametrize("n_threads", [1, 2, 3])
    @pytest.mark.parametrize("loss", LOSSES)
    def test_deterministic(self, loss, n_threads, dtype):
        """Same input and n_threads: the same bits, whatever OpenBLAS's own thread count
        (every BLAS call runs on the calling thread) and wherever X lies in memory."""
        threadpoolctl = pytest.importorskip("threadpoolctl")
        X, y, coef, b, sw = make_problem(loss, 20000, 60, 5, dtype=dtype, seed=10,
                                         intercept=True, weights=True)
        assert self.uses_blas(loss, X, 5)
        first = call(loss, X, y, coef, b, sw, n_threads=n_threads)
        assert_same_result(call(loss, X, y, coef, b, sw, n_threads=n_threads), first)
        for blas_threads in (1, 2):
            with threadpoolctl.threadpool_limits(blas_threads):
                assert_same_result(call(loss, X, y, coef, b, sw, n_threads=n_threads), first)
        buf = np.empty(X.nbytes + 64, dtype=np.uint8)
        offset = (-buf.ctypes.data) % 64 + 2 * X.itemsize      # 16 or 8 bytes off a line
        moved = buf[offset:offset + X.nbytes].view(X.dtype).reshape(X.shape)
        moved[...] = X
        assert_same_result(call(loss, moved, y, coef, b, sw, n_threads=n_threads), first)


def test_blas_dispatch_defaults():
    """The measured rule (cyfed._losses): squared/logistic with d > 16 on the BLAS path
    (any size, or X within BLAS_MAX_X_BYTES on AVX-512 builds); softmax float32 only
    off AVX-512 builds, softmax float64 never."""
    kernels = cyfed.gradients._kernels
    sq, lg, sm = (cyfed.gradients.LOSSES[name] for name in LOSSES)
    avx512 = kernels.BLAS_MAX_X_BYTES < 1 << 62
    for itemsize in (4, 8):
        assert kernels.uses_blas(sq, 10_000, 100, 1, itemsize)
        assert kernels.uses_blas(lg, 10_000, 100, 1, itemsize)
        assert kernels.uses_blas(sq, 1_000_000, 100, 1, itemsize) == (not avx512)
        assert not kernels.uses_blas(sq, 10_000, 16, 1, itemsize)
        assert not kernels.uses_blas(lg, 10_000, 100, 1, itemsize, all_rows=False)
        assert not kernels.uses_blas(lg, 10_000, 100, 1, itemsize, clipping=True)
    assert kernels.uses_blas(sm, 10_000, 100, 10, 4) == (not avx512)
    assert not kernels.uses_blas(sm, 10_000, 100, 10, 8)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("intercept", [None, 0.3, np.float32(0.3)])
def test_the_plain_call_agrees_with_the_general_path(loss, intercept, dtype, rtol):
    """The common call (ready arrays, l2 = 0, no weights or rows) skips the general
    validation; the general path (an integer l2 = 0 takes it) gives the same result,
    and bad labels or NaN are still named."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 7)).astype(dtype)
    y = (rng.random(300) < 0.5).astype(dtype)
    coef = rng.standard_normal(7).astype(dtype)
    plain = cyfed.loss_grad(loss, X, y, coef, intercept)
    general = cyfed.loss_grad(loss, X, y, coef, intercept, l2=0)
    assert plain[0] == pytest.approx(general[0], rel=rtol)
    np.testing.assert_allclose(plain[1], general[1], rtol=rtol, atol=rtol)
    assert plain[1].dtype == dtype and plain[1].shape == (7,)
    assert (plain[2] is None) == (intercept is None)
    if intercept is not None:
        assert plain[2].dtype == dtype
        assert plain[2] == pytest.approx(general[2], rel=rtol, abs=rtol)
    if loss == "logistic":
        y[5] = 2
        with pytest.raises(ValueError, match=r"y\[5\] = 2"):
            cyfed.loss_grad(loss, X, y, coef, intercept)
    X[4, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        cyfed.loss_grad(loss, X, y if loss == "squared" else (y > 1).astype(dtype), coef,
                        intercept)
