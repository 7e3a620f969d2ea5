"""DistributedGD against independent oracles, written once for any communicator size.

Tests marked `mpi` shard their data over `cyfed.comm.get_comm()`: run plainly
they use one process; CI also runs them under `mpiexec -n 2` and `-n 4`, where
every rank must reach the single-process answer.
"""
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp

from cyfed import schedules
from cyfed.comm import LocalComm, get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD, DivergenceError

COMM = get_comm()


def shard(*arrays):
    """This rank's contiguous block of rows of each array."""
    rows = shard_rows(len(arrays[0]), COMM.rank, COMM.size)
    return [a[rows] for a in arrays]


def well_conditioned(n=3000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.3 + 0.1 * rng.standard_normal(n)
    return X, y


@pytest.mark.mpi
def test_seed_example():
    """The seed's 4.1: 1000 full-batch steps, lr 0.01, no intercept (some ranks hold 0 rows)."""
    X = np.array([[1, 2], [2, 3], [3, 4]])
    y = np.array([1, 2, 3])
    Xs, ys = shard(X, y)
    model = DistributedGD(lr=0.01, max_iter=1000, fit_intercept=False, comm=COMM).fit(Xs, ys)
    np.testing.assert_allclose(model.coef_, [0.73444079, 0.18403266], rtol=0, atol=1e-8)
    assert model.n_iter_ == 1000


@pytest.mark.mpi
def test_squared_converges_to_lstsq():
    X, y = well_conditioned()
    A = np.column_stack([X, np.ones(len(X))])
    solution = np.linalg.lstsq(A, y, rcond=None)[0]
    model = DistributedGD(lr=0.2, max_iter=2000, gtol=1e-13, comm=COMM).fit(*shard(X, y))
    got = np.r_[model.coef_, model.intercept_]
    assert np.max(np.abs(got - solution)) <= 1e-8 * np.max(np.abs(solution))


@pytest.mark.mpi
def test_diabetes_converges_to_lstsq():
    """scikit-learn's load_diabetes, standardized (condition number ~470): Nesterov GD."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    A = np.column_stack([X, np.ones(len(X))])
    solution = np.linalg.lstsq(A, y, rcond=None)[0]
    lipschitz = np.linalg.eigvalsh(2 * A.T @ A / len(X)).max()
    model = DistributedGD(lr=1 / lipschitz, max_iter=3000, momentum=0.9, nesterov=True,
                          comm=COMM).fit(*shard(X, y))
    got = np.r_[model.coef_, model.intercept_]
    assert np.max(np.abs(got - solution)) <= 1e-8 * np.max(np.abs(solution))
    assert model.score(*shard(X, y)) == pytest.approx(
        1 - np.sum((A @ solution - y) ** 2) / np.sum((y - y.mean()) ** 2), rel=1e-10)


def reference_minimum(loss, X, y, l2, k):
    """The regularised optimum by scipy's L-BFGS on a plain numpy objective."""
    n, d = X.shape

    def objective(w):
        coef, b = w[:d * k].reshape(d, k), w[d * k:]
        z = X @ coef + b
        if loss == "logistic":
            value = np.mean(np.logaddexp(0, z[:, 0]) - y * z[:, 0])
            r = (1 / (1 + np.exp(-z[:, 0])) - y)[:, None]
        else:
            lse = logsumexp(z, axis=1)
            value = np.mean(lse - z[np.arange(n), y.astype(int)])
            r = np.exp(z - lse[:, None])
            r[np.arange(n), y.astype(int)] -= 1
        value += 0.5 * l2 * np.sum(coef ** 2)
        grad = np.r_[(X.T @ r / n + l2 * coef).ravel(), r.mean(axis=0)]
        return value, grad

    res = minimize(objective, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-13, "ftol": 1e-16, "maxiter": 10000})
    return res.fun


@pytest.mark.mpi
@pytest.mark.parametrize("loss,k", [("logistic", 1), ("softmax", 3)])
def test_classifiers_reach_the_regularised_optimum(loss, k):
    rng = np.random.default_rng(3)
    n, d, l2 = 600, 4, 0.1
    X = rng.standard_normal((n, d))
    logits = X @ rng.standard_normal((d, max(k, 2)))
    y = (logits[:, 0] > 0).astype(float) if loss == "logistic" else logits.argmax(1).astype(float)
    model = DistributedGD(loss, lr=1.0, max_iter=3000, l2=l2, momentum=0.9, nesterov=True,
                          gtol=1e-9, comm=COMM).fit(*shard(X, y))
    final = model.history_[-1]
    assert final["grad_norm"] <= 1e-6
    assert final["loss"] == pytest.approx(reference_minimum(loss, X, y, l2, k), rel=0, abs=1e-8)


@pytest.mark.mpi
@pytest.mark.parametrize("batch_size", [None, 64])
@pytest.mark.parametrize("loss", ["squared", "logistic", "softmax"])
def test_same_model_for_any_number_of_ranks(loss, batch_size):
    """Every rank count gives the single-process model (to rounding of the rank sums)."""
    rng = np.random.default_rng(5)
    n, d = 1001, 7
    X = rng.standard_normal((n, d))
    z = X @ rng.standard_normal((d, 3))
    y = {"squared": z[:, 0], "logistic": (z[:, 0] > 0).astype(float),
         "softmax": z.argmax(1).astype(float)}[loss]
    weights = rng.uniform(0.5, 2.0, n)
    params = dict(lr=0.1, max_iter=60, batch_size=batch_size, momentum=0.5, seed=11,
                  lr_schedule="cosine", l2=1e-3)
    alone = DistributedGD(loss, comm=LocalComm(), **params).fit(X, y, weights)
    Xs, ys, ws = shard(X, y, weights)
    spread = DistributedGD(loss, comm=COMM, **params).fit(Xs, ys, ws)
    np.testing.assert_allclose(spread.coef_, alone.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(spread.intercept_, alone.intercept_, rtol=1e-10, atol=1e-12)
    assert [h["iter"] for h in spread.history_] == [h["iter"] for h in alone.history_]


@pytest.mark.mpi
def test_labels_checked_on_every_rank():
    """A bad label on the last rank stops training on every rank with a clear error."""
    X, _ = well_conditioned(n=40)
    y = (X[:, 0] > 0).astype(float)
    y[-1] = 3.0
    with pytest.raises(ValueError, match="y must hold labels 0 or 1"):
        DistributedGD("logistic", max_iter=5, comm=COMM).fit(*shard(X, y))


@pytest.mark.mpi
def test_feature_count_mismatch_is_an_error_on_every_rank():
    X, y = well_conditioned(n=40)
    Xs, ys = shard(X, y)
    if COMM.size > 1 and COMM.rank == COMM.size - 1:
        Xs = np.column_stack([Xs, Xs[:, :1]])
    if COMM.size == 1:
        pytest.skip("needs several ranks")
    with pytest.raises(ValueError, match="ranks disagree"):
        DistributedGD(max_iter=3, comm=COMM).fit(Xs, ys)


@pytest.mark.mpi
def test_divergence_names_the_iteration_and_keeps_a_finite_model():
    X, y = well_conditioned(n=200)
    model = DistributedGD(lr=1e3, max_iter=500, comm=COMM)
    with pytest.raises(DivergenceError, match=r"iteration \d+.*smaller learning rate"):
        model.fit(*shard(X, y))
    assert np.all(np.isfinite(model.coef_)) and np.isfinite(model.intercept_)


def test_momentum_matches_the_update_rule():
    """Heavy-ball and Nesterov against a plain numpy loop of PyTorch's SGD rule."""
    X, y = well_conditioned(n=200, d=3)
    n = len(y)
    for nesterov in (False, True):
        theta, v = np.zeros(4), np.zeros(4)
        A = np.column_stack([X, np.ones(n)])
        for _ in range(25):
            g = 2 * A.T @ (A @ theta - y) / n
            v = 0.8 * v + g
            theta = theta - 0.05 * (g + 0.8 * v if nesterov else v)
        model = DistributedGD(lr=0.05, max_iter=25, momentum=0.8, nesterov=nesterov).fit(X, y)
        np.testing.assert_allclose(np.r_[model.coef_, model.intercept_], theta, rtol=1e-12)


def test_minibatch_uses_the_drawn_rows():
    """One mini-batch step equals one GD step on exactly the rows drawn for (seed, 0)."""
    X, y = well_conditioned(n=500, d=3)
    model = DistributedGD(lr=0.1, max_iter=1, batch_size=50, seed=9).fit(X, y)
    rows = np.random.default_rng([9, 0]).choice(500, size=50, replace=False)
    A = np.column_stack([X[rows], np.ones(50)])
    step = -0.1 * 2 * A.T @ (A @ np.zeros(4) - y[rows]) / 50
    np.testing.assert_allclose(np.r_[model.coef_, model.intercept_], step, rtol=1e-12)


def test_tolerances_stop_early():
    X, y = well_conditioned(n=300, d=3)
    by_grad = DistributedGD(lr=0.2, max_iter=5000, gtol=1e-6).fit(X, y)
    assert by_grad.n_iter_ < 5000 and by_grad.history_[-1]["grad_norm"] <= 1e-6
    by_loss = DistributedGD(lr=0.2, max_iter=5000, tol=1e-12).fit(X, y)
    assert by_loss.n_iter_ < 5000
    last, before = by_loss.history_[-1]["loss"], by_loss.history_[-2]["loss"]
    assert abs(before - last) <= 1e-12 * abs(before)


def test_history_records_loss_gradient_and_time():
    X, y = well_conditioned(n=100, d=3)
    model = DistributedGD(lr=0.1, max_iter=10).fit(X, y)
    assert len(model.history_) == 10
    losses = [h["loss"] for h in model.history_]
    assert losses == sorted(losses, reverse=True)
    seconds = [h["seconds"] for h in model.history_]
    assert seconds == sorted(seconds)
    A = np.column_stack([X, np.ones(100)])
    first = model.history_[0]
    assert first["loss"] == pytest.approx(np.mean(y ** 2), rel=1e-12)
    assert first["grad_norm"] == pytest.approx(np.linalg.norm(2 * A.T @ y / 100), rel=1e-12)


@pytest.mark.parametrize("name,expected", [
    ("constant", [0.5, 0.5, 0.5]),
    ("invscaling", [0.5, 0.5 / 2 ** 0.25, 0.5 / 3 ** 0.25]),
    ("exponential", [0.5, 0.5 * 0.99, 0.5 * 0.99 ** 2]),
    ("cosine", [0.5, 0.25 * (1 + np.cos(np.pi / 4)), 0.25 * (1 + np.cos(np.pi / 2))]),
])
def test_schedules(name, expected):
    schedule = schedules.get_schedule(name)
    np.testing.assert_allclose([schedule(0.5, t, 4) for t in range(3)], expected, rtol=1e-15)


def test_step_schedule_and_history_lr():
    X, y = well_conditioned(n=50, d=2)
    model = DistributedGD(lr=0.1, max_iter=5, lr_schedule=schedules.Step(step_size=2, gamma=0.5))
    model.fit(X, y)
    np.testing.assert_allclose([h["lr"] for h in model.history_],
                               [0.1, 0.1, 0.05, 0.05, 0.025], rtol=1e-15)


@pytest.mark.parametrize("params,match", [
    (dict(lr=0), "lr"), (dict(lr=float("nan")), "lr"), (dict(max_iter=0), "max_iter"),
    (dict(batch_size=0), "batch_size"), (dict(batch_size=10 ** 6), "batch_size"),
    (dict(momentum=1.0), "momentum"), (dict(nesterov=True), "nesterov"),
    (dict(tol=-1.0), "tol"), (dict(l2=-1.0), "l2"), (dict(lr_schedule="nope"), "lr_schedule"),
    (dict(loss="hinge"), "loss"),
])
def test_bad_parameters(params, match):
    X, y = well_conditioned(n=30, d=2)
    with pytest.raises(ValueError, match=match):
        DistributedGD(**params).fit(X, y)


def test_predict_matches_numpy():
    X, y = well_conditioned(n=200, d=3)
    model = DistributedGD(lr=0.2, max_iter=200).fit(X, y)
    np.testing.assert_allclose(model.predict(X), X @ model.coef_ + model.intercept_, rtol=1e-12)


# -- regressions from review: no rank may fail alone, inputs are named ----------

@pytest.mark.mpi
def test_a_rank_with_bad_input_fails_every_rank_without_hanging():
    """The last rank's y is one short: prepare fails there, the others must not wait."""
    X, y = well_conditioned(n=40)
    Xs, ys = shard(X, y)
    if COMM.rank == COMM.size - 1:
        ys = ys[:-1]
    with pytest.raises(ValueError, match=r"y must have shape|rejected its input"):
        DistributedGD(max_iter=3, comm=COMM).fit(Xs, ys)


@pytest.mark.mpi
def test_nan_input_is_named_not_blamed_on_the_learning_rate():
    X, y = well_conditioned(n=40)
    X[-1, 0] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN|rejected its input"):
        DistributedGD(lr=0.1, max_iter=3, comm=COMM).fit(*shard(X, y))


@pytest.mark.mpi
def test_score_r2_with_a_large_offset_matches_two_pass_numpy():
    X, y0 = well_conditioned(n=400, d=3)
    y = 1e8 + 0.01 * y0
    model = DistributedGD(lr=0.1, max_iter=50, comm=COMM).fit(*shard(X, y0))
    model.coef_, model.intercept_ = 0.01 * model.coef_, 1e8 + 0.01 * model.intercept_
    pred = X @ model.coef_ + model.intercept_
    expected = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    assert model.score(*shard(X, y)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.mpi
def test_score_checks_y():
    X, y = well_conditioned(n=40)
    model = DistributedGD(max_iter=2, comm=COMM).fit(*shard(X, y))
    Xs, ys = shard(X, y)
    with pytest.raises(ValueError, match=r"y must have shape"):
        model.score(Xs, ys.reshape(-1, 1))


def test_softmax_label_far_too_large_is_refused_before_allocating():
    X, _ = well_conditioned(n=10, d=2)
    y = np.zeros(10)
    y[3] = 1e9
    with pytest.raises(ValueError, match="labels must be below"):
        DistributedGD("softmax", max_iter=2).fit(X, y)


def test_numpy_scalar_hyperparameters_are_accepted():
    X, y = well_conditioned(n=50, d=2)
    model = DistributedGD(lr=np.float32(0.1), max_iter=np.int64(3)).fit(X, y)
    assert model.n_iter_ == 3
