"""DistributedGD(solver="newton-cg" | "newton-cholesky" | "auto") against independent
optima: scikit-learn's LogisticRegression, least squares in closed form, scipy's
L-BFGS-B on a numpy objective; resume, ranks, refusals.

Tests marked `mpi` shard their rows over `cyfed.comm.get_comm()` and hold for any
number of ranks (run plainly, and under `mpiexec -n 2` / `-n 4`).
"""
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression

from cyfed.comm import LocalComm, get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD, DivergenceError
from cyfed.distributed.gd import NEWTON_CHOLESKY_MAX_PARAMS
from cyfed.models import CallableModel

from reference import interrupted_and_resumed
from reference import solver_problem as problem

COMM = get_comm()
NEWTON = ("newton-cg", "newton-cholesky")
TIGHT = dict(max_iter=200, gtol=1e-10)


def shard(*arrays):
    rows = shard_rows(len(arrays[0]), COMM.rank, COMM.size)
    return [a[rows] for a in arrays]



@pytest.mark.parametrize("solver", NEWTON)
@pytest.mark.parametrize("loss, k", [("logistic", 2), ("softmax", 3), ("softmax", 4)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_scikit_learn_logistic_regression(solver, loss, k, dtype):
    X, y, w = problem(loss, k=k, scales=[1, 4, 0.3, 2, 1])
    l2 = 1e-2
    ref = LogisticRegression(C=1 / (l2 * w.sum()), tol=1e-12, max_iter=10_000).fit(X, y, w)
    mine = DistributedGD(loss, solver=solver, l2=l2, comm=LocalComm(), **TIGHT).fit(
        X.astype(dtype), y, w)
    coef = mine.coef_ if loss == "logistic" else mine.coef_ - mine.coef_.mean(1, keepdims=True)
    intercept = (mine.intercept_ if loss == "logistic"
                 else mine.intercept_ - mine.intercept_.mean())
    ref_coef = ref.coef_[0] if loss == "logistic" else ref.coef_.T
    tol = 1e-6 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(coef, ref_coef, rtol=tol, atol=tol)
    np.testing.assert_allclose(intercept, ref.intercept_[0] if loss == "logistic"
                               else ref.intercept_, rtol=tol, atol=tol)


@pytest.mark.parametrize("solver", NEWTON)
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_squared_reaches_the_ridge_closed_form(solver, fit_intercept):
    X, y, w = problem("squared", scales=[1, 10, 0.1, 3, 1])
    l2 = 1e-3
    A = np.hstack([X, np.ones((len(X), 1))]) if fit_intercept else X
    W = w.sum()
    penalty = np.diag([l2] * X.shape[1] + [0.0] * (A.shape[1] - X.shape[1]))
    # mean of w (a'theta - y)^2 + (l2/2)|coef|^2: (2/W) A'WA theta + l2 theta = (2/W) A'Wy
    exact = np.linalg.solve(2 * A.T @ (w[:, None] * A) / W + penalty, 2 * A.T @ (w * y) / W)
    mine = DistributedGD(solver=solver, l2=l2, fit_intercept=fit_intercept, comm=LocalComm(),
                         **TIGHT).fit(X, y, w)
    np.testing.assert_allclose(mine.coef_, exact[:X.shape[1]], rtol=1e-7)
    if solver == "newton-cholesky":
        assert mine.n_iter_ == 1                   # one exact Newton step on a quadratic


def test_softmax_without_l2_takes_the_minimum_norm_class_shift():
    """f is invariant to shifting every class alike; both solvers keep the classes'
    coefficients and intercepts summing to 0 (the minimum-norm optimum), as L-BFGS from 0."""
    X, y, w = problem("softmax", n=400, k=3)
    X[:, 0] += 0.4 * np.random.default_rng(1).standard_normal(400)     # not separable
    y[::7] = (y[::7] + 1) % 3
    lbfgs = DistributedGD("softmax", solver="lbfgs", comm=LocalComm(), **TIGHT).fit(X, y, w)
    for solver in NEWTON:
        mine = DistributedGD("softmax", solver=solver, comm=LocalComm(), **TIGHT).fit(X, y, w)
        np.testing.assert_allclose(mine.coef_.sum(1), 0, atol=1e-8)
        np.testing.assert_allclose(mine.intercept_.sum(), 0, atol=1e-8)
        np.testing.assert_allclose(mine.coef_, lbfgs.coef_, rtol=1e-4, atol=1e-5)


def test_newton_cholesky_converges_quadratically():
    """As many iterations as scikit-learn's newton-cholesky, squaring the gradient norm
    at the end."""
    X, y, w = problem("logistic", n=2000, scales=[1, 10, 100, 0.1, 1])
    mine = DistributedGD("logistic", solver="newton-cholesky", l2=1e-4, comm=LocalComm(),
                         **TIGHT).fit(X, y, w)
    ref = LogisticRegression(solver="newton-cholesky", C=1 / (1e-4 * w.sum()), tol=1e-10,
                             max_iter=100).fit(X, y, w)
    norms = [r["grad_norm"] for r in mine.history_]
    assert mine.n_iter_ <= ref.n_iter_[0] + 1 and norms[-1] <= 1e-10
    # the last steps square the gradient norm (up to a constant)
    assert norms[-1] <= 1e3 * norms[-2] ** 2 or norms[-2] <= 1e-9


@pytest.mark.parametrize("solver", NEWTON)
def test_fewer_passes_than_lbfgs_when_ill_conditioned(solver):
    X, y, w = problem("logistic", n=3000, scales=[1, 30, 300, 0.03, 3])
    flip = np.random.default_rng(5).random(len(y)) < 0.15          # not separable
    y[flip] = 1 - y[flip]
    X[:, 2] += 0.05 * X[:, 1]
    lbfgs = DistributedGD("logistic", solver="lbfgs", l2=1e-6, comm=LocalComm(),
                          max_iter=2000, gtol=1e-8).fit(X, y, w)
    mine = DistributedGD("logistic", solver=solver, l2=1e-6, comm=LocalComm(),
                         max_iter=200, gtol=1e-8).fit(X, y, w)
    assert mine.history_[-1]["loss"] <= lbfgs.history_[-1]["loss"] * (1 + 1e-12)
    assert mine.history_[-1]["grad_norm"] <= 1e-6
    assert mine.history_[-1]["evaluations"] <= 0.6 * lbfgs.history_[-1]["evaluations"]


def test_trust_region_history_records_its_radius_and_passes():
    X, y, w = problem("logistic")
    mine = DistributedGD("logistic", solver="newton-cg", l2=1e-3, comm=LocalComm(),
                         **TIGHT).fit(X, y, w)
    evaluations = [r["evaluations"] for r in mine.history_]
    assert all(b > a for a, b in zip(evaluations, evaluations[1:]))
    assert all(r["radius"] > 0 for r in mine.history_)
    losses = [r["loss"] for r in mine.history_]
    assert all(b <= a for a, b in zip(losses, losses[1:]))      # only decreases accepted


@pytest.mark.parametrize("extra, expected", [
    ({}, "newton-cholesky"), (dict(batch_size=32), "gd"), (dict(momentum=0.9), "gd"),
    (dict(local_steps=3), "gd"),
])
def test_auto_picks_by_the_options_and_the_shape(extra, expected):
    X, y, w = problem("logistic", n=300)
    gd = DistributedGD("logistic", solver="auto", max_iter=3, comm=LocalComm(), **extra
                       ).fit(X, y, w)
    assert gd.solver_ == expected


def test_auto_takes_lbfgs_for_many_parameters_or_a_callable_model():
    d = NEWTON_CHOLESKY_MAX_PARAMS
    X, y, w = problem("logistic", n=50, d=d)
    assert DistributedGD("logistic", solver="auto", max_iter=2, comm=LocalComm()).fit(
        X, y).solver_ == "lbfgs"

    def loss_grad(theta, Xb, yb):
        r = Xb @ theta - yb
        return float(r @ r) / len(r), 2 * Xb.T @ r / len(r)

    model = CallableModel(loss_grad, n_params=5)
    X, y, _ = problem("squared", n=50)
    assert DistributedGD(model, solver="auto", max_iter=2, comm=LocalComm()).fit(
        X, y).solver_ == "lbfgs"


@pytest.mark.parametrize("solver", NEWTON)
def test_a_callable_model_is_refused(solver):
    model = CallableModel(lambda t, X, y: (0.0, t), n_params=5)
    X, y, _ = problem("squared", n=20)
    with pytest.raises(ValueError, match="linear model"):
        DistributedGD(model, solver=solver, comm=LocalComm()).fit(X, y)


@pytest.mark.parametrize("solver", NEWTON)
@pytest.mark.parametrize("change, name", [
    (dict(batch_size=10), "batch_size"), (dict(momentum=0.5), "momentum"),
    (dict(local_steps=2), "local_steps"),
])
def test_first_order_options_are_refused(solver, change, name):
    X, y, _ = problem("squared", n=50)
    with pytest.raises(ValueError, match=name):
        DistributedGD(solver=solver, comm=LocalComm(), **change).fit(X, y)


@pytest.mark.parametrize("solver", NEWTON)
def test_non_finite_data_is_named(solver):
    X, y, _ = problem("squared", n=50)
    X[3, 1] = np.inf
    with pytest.raises((DivergenceError, ValueError)):
        DistributedGD(solver=solver, comm=LocalComm()).fit(X, y)


@pytest.mark.parametrize("solver", NEWTON)
@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_resumed_run_ends_bit_identical(solver, loss, tmp_path):
    X, y, w = problem(loss, n=400, scales=[1, 30, 300, 0.03, 3])

    def make(**kwargs):
        return DistributedGD(loss, solver=solver, l2=1e-6, max_iter=30, gtol=1e-12,
                             comm=LocalComm(), **kwargs)

    full, resumed = interrupted_and_resumed(make, (X, y, w), tmp_path / "n.npz", 2)
    assert full.n_iter_ >= 4
    np.testing.assert_array_equal(resumed.params_, full.params_)
    keys = ("iter", "loss", "grad_norm", "lr", "evaluations")
    assert ([[r[key] for key in keys] for r in resumed.history_]
            == [[r[key] for key in keys] for r in full.history_])


def test_a_float32_problem_matches_the_float64_optimum_of_scipy():
    X, y, w = problem("softmax", n=600, k=3)
    d, k = X.shape[1], 3

    def f(theta):
        W, b = theta[:d * k].reshape(d, k), theta[d * k:]
        z = X @ W + b
        p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
        g = p.copy()
        g[np.arange(len(y)), y.astype(int)] -= 1
        g *= w[:, None] / w.sum()
        value = w @ (logsumexp(z, axis=1) - z[np.arange(len(y)), y.astype(int)]) / w.sum()
        return (value + 0.5e-2 * np.sum(W * W),
                np.concatenate([(X.T @ g + 1e-2 * W).ravel(), g.sum(0)]))

    ref = minimize(f, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                   options=dict(gtol=1e-12, ftol=1e-15, maxiter=10_000))
    for solver in NEWTON:
        mine = DistributedGD("softmax", solver=solver, l2=1e-2, comm=LocalComm(),
                             **TIGHT).fit(X.astype(np.float32), y, w)
        assert mine.history_[-1]["loss"] == pytest.approx(ref.fun, rel=1e-6)


@pytest.mark.mpi
@pytest.mark.parametrize("solver", NEWTON)
@pytest.mark.parametrize("loss", ["squared", "logistic", "softmax"])
def test_same_model_for_any_number_of_ranks(solver, loss):
    X, y, w = problem(loss, n=1001, d=7)
    params = dict(solver=solver, max_iter=40, l2=1e-3, standardize=True)
    alone = DistributedGD(loss, comm=LocalComm(), **params).fit(X, y, w)
    spread = DistributedGD(loss, comm=COMM, **params).fit(*shard(X, y, w))
    np.testing.assert_allclose(spread.params_, alone.params_, rtol=1e-9, atol=1e-11)
    assert ([r["evaluations"] for r in spread.history_]
            == [r["evaluations"] for r in alone.history_])


@pytest.mark.mpi
@pytest.mark.parametrize("solver", NEWTON + ("lbfgs",))
@pytest.mark.parametrize("weighted", [True, False])
def test_a_rank_without_rows_changes_nothing(solver, weighted):
    """Only rank 0 holds rows: the others' empty shards must not disturb the sums (a
    rank without rows once sent an integer buffer into the weight Allreduce)."""
    X, y, w = problem("logistic", n=300)
    w = w if weighted else None
    mine = slice(None) if COMM.rank == 0 else slice(0, 0)
    alone = DistributedGD("logistic", solver=solver, max_iter=30, comm=LocalComm()).fit(X, y, w)
    spread = DistributedGD("logistic", solver=solver, max_iter=30, comm=COMM).fit(
        X[mine], y[mine], None if w is None else w[mine])
    np.testing.assert_allclose(spread.params_, alone.params_, rtol=1e-10, atol=1e-12)
