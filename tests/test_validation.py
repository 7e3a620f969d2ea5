"""Bad arguments to cyfed.loss_grad / margins / predict raise, naming the argument."""
import re

import numpy as np
import pytest

import cyfed
from reference import LOSSES, make_problem

N, D, K = 12, 3, 4


def args(loss, n=N, d=D, k=K, *, dtype=np.float64, seed=0):
    """Valid keyword arguments for loss_grad (with intercept and weights)."""
    X, y, coef, b, sw = make_problem(loss, n, d, k, dtype=dtype, seed=seed, intercept=True,
                                     weights=True)
    sw[:] = np.abs(sw) + 0.5
    return dict(loss=loss, X=X, y=y, coef=coef, intercept=b, sample_weight=sw)


def run(kw):
    kw = dict(kw)
    return cyfed.loss_grad(kw.pop("loss"), kw.pop("X"), kw.pop("y"), kw.pop("coef"),
                           kw.pop("intercept", None), **kw)


def names(name):
    """Regex: `name` as a whole word (not e.g. X inside X_train)."""
    return rf"(?<![\w]){re.escape(name)}(?![\w])"


@pytest.mark.parametrize("loss", LOSSES)
def test_valid_arguments_work(loss):
    value, g, gb = run(args(loss))
    assert np.isfinite(value)


# --------------------------------------------------------------------------- loss

@pytest.mark.parametrize("bad", ["hinge", "Squared", "", "log", None, 3])
def test_unknown_loss(bad):
    a = args("squared")
    a["loss"] = bad
    with pytest.raises(ValueError, match=names("loss")):
        run(a)
    with pytest.raises(ValueError, match=names("loss")):
        cyfed.predict(bad, a["X"], a["coef"])
    with pytest.raises(ValueError, match=names("loss")):
        cyfed.predict_proba(bad, a["X"], a["coef"])


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", [(N,), (N, D, 1), (), (0, D), (N, 0), (0, 0)],
                         ids=str)
def test_bad_X_shape(loss, shape):
    a = args(loss)
    a["X"] = np.ones(shape)
    with pytest.raises(ValueError, match=names("X")):
        run(a)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", [(N - 1,), (N + 1,), (N, 1), (1, N), ()], ids=str)
def test_bad_y_shape(loss, shape):
    a = args(loss)
    a["y"] = np.zeros(shape)
    with pytest.raises(ValueError, match=names("y")):
        run(a)


@pytest.mark.parametrize("shape", [(D + 1,), (D - 1,), (D, 1), (D, 2), (1, D), ()], ids=str)
@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_bad_coef_shape_binary(loss, shape):
    a = args(loss)
    a["coef"] = np.zeros(shape)
    with pytest.raises(ValueError, match=names("coef")):
        run(a)


@pytest.mark.parametrize("shape", [(D,), (D, 1), (D, 0), (D + 1, K), (D - 1, K), (D, K, 1),
                                   ()], ids=str)
def test_bad_coef_shape_softmax(shape):
    a = args("softmax")
    a["coef"] = np.zeros(shape)
    a["intercept"] = None
    with pytest.raises(ValueError, match=names("coef")):
        run(a)


@pytest.mark.parametrize("bad", [np.zeros(2), np.zeros((1, 1)), np.zeros(0)], ids=str)
@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_bad_intercept_shape_binary(loss, bad):
    a = args(loss)
    a["intercept"] = bad
    with pytest.raises(ValueError, match=names("intercept")):
        run(a)


@pytest.mark.parametrize("bad", [0.0, np.zeros(K - 1), np.zeros(K + 1), np.zeros((K, 1)),
                                 np.zeros((1, K))], ids=str)
def test_bad_intercept_shape_softmax(bad):
    a = args("softmax")
    a["intercept"] = bad
    with pytest.raises(ValueError, match=names("intercept")):
        run(a)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", [(N - 1,), (N + 1,), (N, 1), ()], ids=str)
def test_bad_sample_weight_shape(loss, shape):
    a = args(loss)
    a["sample_weight"] = np.ones(shape)
    with pytest.raises(ValueError, match=names("sample_weight")):
        run(a)


# --------------------------------------------------------------------------- weights

# (n, d, bad index): small; large with d > 16 (general path); large with d <= 16
# (the squared/logistic "narrow" path checks labels and weights separately).
SHAPES_AND_INDEX = [(N, 3, 7), (5003, 17, 4500), (6007, 13, 4500)]


@pytest.mark.parametrize("n,d,bad", SHAPES_AND_INDEX)
@pytest.mark.parametrize("loss", LOSSES)
def test_negative_sample_weight(loss, n, d, bad):
    a = args(loss, n=n, d=d)
    a["sample_weight"][bad] = -0.25
    with pytest.raises(ValueError, match=names("sample_weight")) as info:
        run(a)
    assert f"sample_weight[{bad}]" in str(info.value)


@pytest.mark.parametrize("loss", LOSSES)
def test_zero_weight_sum(loss):
    a = args(loss)
    a["sample_weight"] = np.zeros(N)
    with pytest.raises(ValueError, match=names("sample_weight")):
        run(a)


def test_zero_weight_sum_over_the_rows_used():
    a = args("squared")
    a["sample_weight"][[2, 7]] = 0.0
    with pytest.raises(ValueError, match=names("sample_weight")):
        run({**a, "rows": [2, 7, 2]})


# --------------------------------------------------------------------------- NaN / Inf

NON_FINITE = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("bad", NON_FINITE, ids=str)
@pytest.mark.parametrize("arg", ["X", "y", "coef", "intercept", "sample_weight"])
@pytest.mark.parametrize("loss", LOSSES)
def test_non_finite_inputs(loss, arg, bad, dtype):
    a = args(loss, dtype=dtype)
    for key in ("coef", "intercept"):
        a[key] = np.array(a[key], dtype=dtype)
    target = a[arg]
    flat = target.reshape(-1)
    flat[min(5, flat.size - 1)] = bad
    with pytest.raises(ValueError, match=names(arg)):
        run(a)


@pytest.mark.parametrize("case", ["zero-coef-column", "zero-weight-row", "large",
                                  "large-narrow", "rows", "rows-large"])
@pytest.mark.parametrize("bad", NON_FINITE, ids=str)
@pytest.mark.parametrize("loss", LOSSES)
def test_non_finite_X_is_always_found(loss, bad, case):
    """X is checked after the kernel: NaN/Inf must still surface as ValueError naming X."""
    if case.startswith("large") or case == "rows-large":
        a = args(loss, n=6007, d=13 if case == "large-narrow" else 17)
        i = 4000
    else:
        a = args(loss)
        i = 6
    a["X"][i, 1] = bad
    if case == "zero-coef-column":
        a["coef"][1] = 0.0                   # NaN * 0 and Inf * 0 are NaN
    if case == "zero-weight-row":
        a["sample_weight"][i] = 0.0
    if case == "rows":
        a["rows"] = np.array([0, i, 3])
    if case == "rows-large":
        a["rows"] = np.r_[np.arange(6007), i, 0]
    with pytest.raises(ValueError, match=names("X")):
        run(a)


@pytest.mark.parametrize("bad", NON_FINITE, ids=str)
def test_margins_non_finite(bad):
    X = np.ones((9, 2))
    X[4, 0] = bad
    with pytest.raises(ValueError, match=names("X")):
        cyfed.margins(X, np.ones(2))
    with pytest.raises(ValueError, match=names("coef")):
        cyfed.margins(np.ones((9, 2)), np.array([1.0, bad]))
    with pytest.raises(ValueError, match=names("intercept")):
        cyfed.margins(np.ones((9, 2)), np.ones((2, 3)), np.array([0.0, bad, 0.0]))


# --------------------------------------------------------------------------- overflow

def test_squared_overflow_float64():
    X = np.full((4, 2), 1e200)
    with pytest.raises(FloatingPointError):
        cyfed.loss_grad("squared", X, np.zeros(4), np.ones(2))


def test_squared_overflow_float32():
    X = np.full((4, 2), 1e30, dtype=np.float32)
    with pytest.raises(FloatingPointError):
        cyfed.loss_grad("squared", X, np.zeros(4), np.ones(2))


@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_margin_overflow(loss, dtype):
    big = np.finfo(dtype).max / 4
    X = np.full((5, 3), big, dtype=dtype)
    coef = np.full((3, 2) if loss == "softmax" else 3, 10.0)
    with pytest.raises(FloatingPointError):
        cyfed.loss_grad(loss, X, np.ones(5), coef)


def test_gradient_overflow_with_finite_loss():
    """loss 1e20 is finite, but the gradient 2 r x = 2e10 * 1e300 is not."""
    X = np.array([[1e300, 1.0], [0.0, 1.0]])
    with pytest.raises(FloatingPointError):
        cyfed.loss_grad("squared", X, np.array([1e10, 0.0]), np.array([0.0, 0.0]))


def test_huge_weights_overflow():
    a = args("squared")
    a["sample_weight"][:] = 1e308
    with pytest.raises(FloatingPointError):
        run(a)


def test_margins_overflow():
    with pytest.raises(FloatingPointError):
        cyfed.margins(np.full((3, 2), 1e200), np.full(2, 1e200))


def test_l2_value_overflow_raises():
    """||coef||^2 = 2e400 overflows float64; the data part is finite (z = 2)."""
    X = np.array([[1e-200, 1e-200]])
    with pytest.raises(FloatingPointError):
        cyfed.loss_grad("squared", X, np.array([0.0]), np.array([1e200, 1e200]), l2=1.0)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_l2_gradient_overflow_float32_raises():
    """grad = data part + l2 * coef = 6e38 does not fit float32 (max 3.4e38)."""
    X = np.array([[1e-30]], dtype=np.float32)
    coef = np.array([3e38], dtype=np.float32)
    with pytest.raises(FloatingPointError):
        cyfed.loss_grad("squared", X, np.array([0.0]), coef, l2=2.0)


# --------------------------------------------------------------------------- labels

@pytest.mark.parametrize("bad", [2.0, 0.5, -1.0, np.nan, np.inf, 1e-300],
                         ids=str)
@pytest.mark.parametrize("n,d,i", SHAPES_AND_INDEX)
def test_logistic_bad_labels(bad, n, d, i):
    a = args("logistic", n=n, d=d)
    a["y"][i] = bad
    with pytest.raises(ValueError, match=names("y")) as info:
        run(a)
    assert f"y[{i}]" in str(info.value)


@pytest.mark.parametrize("bad", [K, K + 0.5, -1.0, 1.5, -0.5, np.nan, np.inf, -np.inf, 1e30],
                         ids=str)
@pytest.mark.parametrize("n,d,i", SHAPES_AND_INDEX)
def test_softmax_bad_labels(bad, n, d, i):
    a = args("softmax", n=n, d=d)
    a["y"][i] = bad
    with pytest.raises(ValueError, match=names("y")) as info:
        run(a)
    assert f"y[{i}]" in str(info.value)


@pytest.mark.parametrize("d", [3, 17])
@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_bad_label_reported_among_several(loss, d):
    a = args(loss, n=5003, d=d)
    a["y"][[100, 4900]] = 7.5
    with pytest.raises(ValueError, match=names("y")) as info:
        run(a)
    assert "y[100]" in str(info.value) or "y[4900]" in str(info.value)


@pytest.mark.parametrize("d", [3, 17])
@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_bad_label_index_with_rows_names_the_row(loss, d):
    a = args(loss, d=d)
    a["y"][5] = 3.5
    with pytest.raises(ValueError, match=re.escape("y[5]")):
        run({**a, "rows": [0, 1, 5, 2]})
    # an unused bad label is not looked at
    value, _, _ = run({**a, "rows": [0, 1, 2]})
    assert np.isfinite(value)


@pytest.mark.parametrize("d", [3, 17])
def test_negative_weight_index_with_rows_names_the_row(d):
    a = args("squared", d=d)
    a["sample_weight"][9] = -1.0
    with pytest.raises(ValueError, match=re.escape("sample_weight[9]")):
        run({**a, "rows": [3, 9]})


def test_integer_labels_beyond_k_for_softmax():
    a = args("softmax")
    a["y"] = np.arange(N, dtype=np.int64) % (K + 1)        # K appears at index K
    with pytest.raises(ValueError, match=re.escape(f"y[{K}]")):
        run(a)


# --------------------------------------------------------------------------- rows

@pytest.mark.parametrize("bad,pos", [([0, N], 1), ([N + 100, 0], 0), ([0, 1, -1], 2),
                                      ([-N - 1], 0), ([2, 10**12], 1)], ids=str)
@pytest.mark.parametrize("loss", LOSSES)
def test_rows_out_of_range(loss, bad, pos):
    with pytest.raises(ValueError, match=names("rows")) as info:
        run({**args(loss), "rows": np.array(bad)})
    assert f"rows[{pos}]" in str(info.value)


@pytest.mark.parametrize("d", [13, 17])
def test_rows_out_of_range_in_large_batch(d):
    a = args("logistic", n=5003, d=d)
    rows = np.arange(8000) % 5003
    rows[7000] = 5003
    with pytest.raises(ValueError, match=re.escape("rows[7000]")):
        run({**a, "rows": rows})


def test_rows_uint64_beyond_intp():
    with pytest.raises((ValueError, OverflowError), match=names("rows")):
        run({**args("squared"), "rows": np.array([1, 2**63 + 5], dtype=np.uint64)})


@pytest.mark.parametrize("bad", [np.array([0.0, 1.0]), np.array([1.5]),
                                 np.array([True, False] * (N // 2)), np.array(["0", "1"]),
                                 np.array([0j])], ids=lambda a: a.dtype.name)
def test_rows_non_integer_dtype(bad):
    with pytest.raises(TypeError, match=names("rows")):
        run({**args("squared"), "rows": bad})


@pytest.mark.parametrize("bad", [np.array([], dtype=np.intp), [], np.zeros((2, 2), np.intp),
                                 np.intp(3)], ids=["empty", "empty-list", "2d", "0d"])
def test_rows_empty_or_not_1d(bad):
    with pytest.raises((ValueError, TypeError), match=names("rows")):
        run({**args("squared"), "rows": bad})


def test_rows_empty_is_value_error():
    with pytest.raises(ValueError, match=names("rows")):
        run({**args("squared"), "rows": np.array([], dtype=np.int64)})


# --------------------------------------------------------------------------- dtypes

BAD_ARRAYS = {
    "complex": lambda shape: np.ones(shape, dtype=complex),
    "object": lambda shape: np.ones(shape, dtype=object),
    "string": lambda shape: np.full(shape, "1.0"),
    "datetime": lambda shape: np.zeros(shape, dtype="datetime64[s]"),
}


@pytest.mark.parametrize("kind", BAD_ARRAYS)
@pytest.mark.parametrize("arg", ["X", "y", "coef", "intercept", "sample_weight"])
@pytest.mark.parametrize("loss", LOSSES)
def test_non_numeric_arrays(loss, arg, kind):
    a = args(loss)
    a[arg] = BAD_ARRAYS[kind](np.shape(a[arg]))
    with pytest.raises(TypeError, match=names(arg)):
        run(a)


@pytest.mark.parametrize("arg", ["X", "coef", "intercept"])
def test_margins_non_numeric(arg):
    a = {"X": np.ones((4, 2)), "coef": np.ones((2, 3)), "intercept": np.zeros(3)}
    a[arg] = a[arg].astype(complex)
    with pytest.raises(TypeError, match=names(arg)):
        cyfed.margins(a["X"], a["coef"], a["intercept"])


def test_margins_bad_shapes():
    with pytest.raises(ValueError, match=names("X")):
        cyfed.margins(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=names("coef")):
        cyfed.margins(np.ones((4, 3)), np.ones(2))
    with pytest.raises(ValueError, match=names("coef")):
        cyfed.margins(np.ones((4, 3)), np.ones((3, 2, 1)))
    with pytest.raises(ValueError, match=names("intercept")):
        cyfed.margins(np.ones((4, 3)), np.ones((3, 2)), np.zeros(3))


# --------------------------------------------------------------------------- scalars

@pytest.mark.parametrize("bad", [0, -1, -(2**40)])
def test_n_threads_below_one(bad):
    with pytest.raises(ValueError, match=names("n_threads")):
        run({**args("squared"), "n_threads": bad})
    with pytest.raises(ValueError, match=names("n_threads")):
        cyfed.margins(np.ones((3, 2)), np.ones(2), n_threads=bad)


@pytest.mark.parametrize("bad", [1.5, 2.0, "2", True, [2]], ids=repr)
def test_n_threads_not_an_int(bad):
    with pytest.raises(TypeError, match=names("n_threads")):
        run({**args("squared"), "n_threads": bad})


def test_n_threads_numpy_int_accepted():
    a = args("squared")
    base = run({**a, "n_threads": 1})
    got = run({**a, "n_threads": np.int64(1)})
    assert got[0] == base[0]


def test_n_threads_huge():
    a = args("squared")
    try:
        value = run({**a, "n_threads": 2**31})[0]
    except ValueError as exc:      # refusing it, by name, is fine too
        assert re.search(names("n_threads"), str(exc))
    else:
        assert value == run(a)[0]


@pytest.mark.parametrize("bad", [-0.1, -1e-300, np.nan, np.inf, -np.inf], ids=str)
def test_l2_bad_value(bad):
    with pytest.raises(ValueError, match=names("l2")):
        run({**args("squared"), "l2": bad})


@pytest.mark.parametrize("bad", ["0.1", None, True, [0.1], 1j], ids=repr)
def test_l2_bad_type(bad):
    with pytest.raises(TypeError, match=names("l2")):
        run({**args("squared"), "l2": bad})


# -- one definition of R^2 (issue 13): constant targets never divide by zero ----------

def test_r2_score_is_the_one_definition_for_constant_targets():
    from cyfed.models import r2_score
    assert r2_score(0.0, 0.0) == 1.0          # perfect prediction of a constant
    assert r2_score(2.0, 0.0) == 0.0          # scikit-learn's convention, not -inf / nan
    assert r2_score(1.0, 4.0) == 0.75


def test_every_r2_agrees_on_constant_targets():
    from cyfed.comm import LocalComm
    from cyfed.distributed import DistributedGD
    from cyfed.federated import FederatedTrainer
    from cyfed.strategies import FedAvg
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = np.full(40, 2.0)
    gd = DistributedGD(lr=0.1, max_iter=5, comm=LocalComm()).fit(X, y)
    fed = FederatedTrainer(FedAvg(), rounds=1, comm=LocalComm()).fit(
        [(X[:20], y[:20]), (X[20:], y[20:])], test=(X, y))
    expected = 1.0 if np.allclose(gd.predict(X), 2.0, rtol=0, atol=0) else 0.0
    assert gd.score(X, y) == expected
    assert fed.history_[-1]["test_r2"] in (0.0, 1.0)
    assert np.isfinite(fed.history_[-1]["test_r2"])


# -- one set of argument checks (issue 13): numpy integers in, bools out -------------

def test_trainers_accept_numpy_integers_and_refuse_bools():
    from cyfed.asynchronous import AsyncTrainer, FedAsync
    from cyfed.comm import LocalComm
    from cyfed.distributed import DistributedGD
    from cyfed.federated import FederatedTrainer
    from cyfed.strategies import FedAvg
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((60, 3)), rng.standard_normal(60)
    clients = [(X[i::6], y[i::6]) for i in range(6)]
    fed = FederatedTrainer(FedAvg(), rounds=np.int64(2), clients_per_round=np.int32(3),
                           local_epochs=np.int64(2), batch_size=np.int16(5),
                           comm=LocalComm()).fit(clients)
    assert len(fed.history_) == 2 and all(r["clients"] == 3 for r in fed.history_)
    gd = DistributedGD(max_iter=np.int64(4), batch_size=np.int64(10), comm=LocalComm()).fit(X, y)
    assert gd.n_iter_ == 4
    asy = AsyncTrainer(FedAsync(), updates=np.int64(3), concurrency=np.int64(2),
                       comm=LocalComm()).fit(clients)
    assert len(asy.history_) == 3
    for kwargs in (dict(rounds=True), dict(local_epochs=True), dict(batch_size=True),
                   dict(clients_per_round=True)):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            FederatedTrainer(FedAvg(), comm=LocalComm(), **kwargs).fit(clients)
    for kwargs in (dict(max_iter=True), dict(batch_size=True), dict(local_steps=True)):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            DistributedGD(comm=LocalComm(), **kwargs).fit(X, y)
