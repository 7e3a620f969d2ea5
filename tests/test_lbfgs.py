"""DistributedGD(solver="lbfgs") against independent optima: scipy's L-BFGS-B on plain
numpy objectives, scikit-learn's LogisticRegression, least squares in closed form.

Tests marked `mpi` shard their rows over `cyfed.comm.get_comm()` and hold for any
number of ranks (run plainly, and under `mpiexec -n 2` / `-n 4`).
"""
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, logsumexp

from cyfed.comm import LocalComm, get_comm
from cyfed.compress import TopK
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD, DivergenceError
from cyfed.models import CallableModel
from cyfed.privacy import DPSGD

from reference import interrupted_and_resumed
from reference import solver_problem as problem

COMM = get_comm()
TIGHT = dict(solver="lbfgs", max_iter=500, gtol=1e-10)


def shard(*arrays):
    rows = shard_rows(len(arrays[0]), COMM.rank, COMM.size)
    return [a[rows] for a in arrays]



def objective(loss, X, y, l2, k, w=None, intercept=True):
    """cyfed's objective as plain numpy: weighted mean loss + (l2/2)||coef||^2."""
    n, d = X.shape
    w = np.ones(n) if w is None else w

    def f(theta):
        coef = theta[:d * k].reshape(d, k)
        b = theta[d * k:] if intercept else np.zeros(k)
        z = X @ coef + b
        if loss == "squared":
            losses, r = (z[:, 0] - y) ** 2, 2 * (z - y[:, None])
        elif loss == "logistic":
            losses, r = np.logaddexp(0, z[:, 0]) - y * z[:, 0], expit(z) - y[:, None]
        else:
            lse = logsumexp(z, axis=1)
            losses = lse - z[np.arange(n), y.astype(int)]
            r = np.exp(z - lse[:, None])
            r[np.arange(n), y.astype(int)] -= 1
        r = r * (w / w.sum())[:, None]
        value = losses @ w / w.sum() + 0.5 * l2 * np.sum(coef ** 2)
        grad = (X.T @ r + l2 * coef).ravel()
        return value, (np.r_[grad, r.sum(0)] if intercept else grad)
    return f


def scipy_minimum(f, p):
    res = minimize(f, np.zeros(p), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-13, "ftol": 1e-16, "maxiter": 20000, "maxcor": 20})
    return res.fun, res.x


def flat(model):
    return np.r_[np.ravel(model.coef_), np.ravel(model.intercept_)]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-8), (np.float32, 1e-5)])
@pytest.mark.parametrize("loss", ["logistic", "softmax", "squared"])
def test_reaches_the_optimum_of_scipy(loss, dtype, rtol):
    X, y, w = problem(loss)
    X32 = X.astype(dtype)
    Xr = X32.astype(np.float64)                  # the reference sees the same numbers
    k = 3 if loss == "softmax" else 1
    f = objective(loss, Xr, y.astype(dtype).astype(np.float64), 1e-2, k,
                  w.astype(dtype).astype(np.float64))
    fstar, xstar = scipy_minimum(f, X.shape[1] * k + k)
    model = DistributedGD(loss, l2=1e-2, comm=LocalComm(),
                          **{**TIGHT, "gtol": 1e-10 if dtype == np.float64 else 1e-5}
                          ).fit(X32, y.astype(dtype), w.astype(dtype))
    assert f(flat(model))[0] == pytest.approx(fstar, rel=rtol)
    np.testing.assert_allclose(flat(model), xstar, rtol=0,
                               atol=1e-5 if dtype == np.float64 else 1e-2)
    h = model.history_
    assert [r["iter"] for r in h] == list(range(len(h))) and model.n_iter_ <= len(h)
    assert all(h[i + 1]["loss"] <= h[i]["loss"] for i in range(len(h) - 1))
    assert all(set(r) >= {"loss", "grad_norm", "lr", "evaluations", "seconds",
                          "bytes_sent", "bytes_received"} for r in h)
    assert h[-1]["evaluations"] >= len(h) + 1


@pytest.mark.parametrize("loss, k", [("logistic", 1), ("softmax", 3)])
def test_matches_scikit_learn_logistic_regression(loss, k):
    """C = 1 / (n l2) makes scikit-learn's objective n times cyfed's."""
    from sklearn.linear_model import LogisticRegression

    X, y, _ = problem(loss, n=600, d=4)
    n, l2 = len(X), 0.05
    ref = LogisticRegression(C=1 / (n * l2), tol=1e-12, max_iter=10000).fit(X, y)
    coef = ref.coef_.T if k > 1 else ref.coef_[0]
    b = ref.intercept_ if k > 1 else ref.intercept_[:1]
    f = objective(loss, X, y, l2, k)
    model = DistributedGD(loss, l2=l2, comm=LocalComm(), **TIGHT).fit(X, y)
    assert f(flat(model))[0] == pytest.approx(f(np.r_[np.ravel(coef), b])[0], rel=1e-8)
    if k == 1:     # softmax coefficients are identified up to a shift only without l2
        np.testing.assert_allclose(model.coef_, coef, rtol=0, atol=1e-5)
    assert model.history_[-1]["grad_norm"] <= 1e-10 or "line_search" in model.history_[-1]


def test_squared_reaches_the_ridge_closed_form():
    X, y, w = problem("squared", n=500, d=6)
    n, l2 = len(X), 0.1
    A = np.column_stack([X, np.ones(n)])
    W = w / w.sum()
    # d/dtheta [sum W (A theta - y)^2 + l2/2 |coef|^2] = 0
    H = 2 * A.T @ (W[:, None] * A) + l2 * np.diag([1.0] * 6 + [0.0])
    exact = np.linalg.solve(H, 2 * A.T @ (W * y))
    model = DistributedGD(l2=l2, comm=LocalComm(), **TIGHT).fit(X, y, w)
    np.testing.assert_allclose(flat(model), exact, rtol=1e-9, atol=1e-10)
    plain = DistributedGD(solver="lbfgs", comm=LocalComm()).fit(X, y)
    lstsq = np.linalg.lstsq(np.column_stack([X, np.ones(n)]), y, rcond=None)[0]
    np.testing.assert_allclose(flat(plain), lstsq, rtol=1e-5, atol=1e-5)   # default gtol


def test_without_intercept_the_intercept_stays_zero():
    X, y, _ = problem("logistic")
    f = objective("logistic", X, y, 1e-2, 1, intercept=False)
    fstar, xstar = scipy_minimum(f, X.shape[1])
    model = DistributedGD("logistic", l2=1e-2, fit_intercept=False, comm=LocalComm(),
                          **TIGHT).fit(X, y)
    assert model.intercept_ == 0.0
    assert model.params_[-1] == 0.0
    assert f(model.coef_)[0] == pytest.approx(fstar, rel=1e-10)
    np.testing.assert_allclose(model.coef_, xstar, atol=1e-6)


def test_a_callable_model_reaches_the_compiled_models_optimum():
    X, y, w = problem("logistic")
    d = X.shape[1]

    def loss_grad(theta, X, y, sample_weight=None):
        z = X @ theta[:d] + theta[d]
        sw = np.ones(len(y)) if sample_weight is None else sample_weight
        r = (expit(z) - y) * sw / sw.sum()
        return (np.logaddexp(0, z) - y * z) @ sw / sw.sum(), np.r_[X.T @ r, r.sum()]

    compiled = DistributedGD("logistic", l2=1e-2, comm=LocalComm(), **TIGHT).fit(X, y, w)
    mine = DistributedGD(CallableModel(loss_grad, d + 1, targets="binary"), l2=1e-2,
                         comm=LocalComm(), **TIGHT).fit(X, y, w)
    # the callable penalises the intercept too: compare with that optimum
    f = objective("logistic", X, y, 1e-2, 1, w)
    fstar, _ = scipy_minimum(lambda t: (f(t)[0] + 0.5e-2 * t[d] ** 2,
                                        f(t)[1] + np.r_[np.zeros(d), 1e-2 * t[d]]), d + 1)
    assert mine.history_[-1]["loss"] == pytest.approx(fstar, rel=1e-10)
    np.testing.assert_allclose(mine.params_[:d], compiled.coef_, atol=2e-2)
    unpenalised = DistributedGD(CallableModel(loss_grad, d + 1, targets="binary"),
                                comm=LocalComm(), **TIGHT).fit(X, y, w)
    plain = DistributedGD("logistic", comm=LocalComm(), **TIGHT).fit(X, y, w)
    np.testing.assert_allclose(unpenalised.params_, plain.params_, rtol=1e-6, atol=1e-7)


def test_far_fewer_iterations_than_gradient_descent_when_ill_conditioned():
    """Condition number ~1e4: GD at its best constant step 1/L crawls (scipy's L-BFGS-B
    takes ~120 passes here too)."""
    X, y, _ = problem("squared", n=1000, d=8, scales=np.logspace(0, 2, 8))
    A = np.column_stack([X, np.ones(len(X))])
    lipschitz = np.linalg.eigvalsh(2 * A.T @ A / len(X)).max()
    fstar = np.mean((A @ np.linalg.lstsq(A, y, rcond=None)[0] - y) ** 2)
    lbfgs = DistributedGD(solver="lbfgs", max_iter=200, comm=LocalComm()).fit(X, y)
    gd = DistributedGD(lr=1 / lipschitz, max_iter=1500, comm=LocalComm()).fit(X, y)
    assert lbfgs.history_[-1]["loss"] <= fstar * (1 + 1e-8)
    assert gd.history_[-1]["loss"] > fstar * (1 + 1e-3)          # GD: not even close
    assert 10 * lbfgs.history_[-1]["evaluations"] <= gd.n_iter_


@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_resumed_run_ends_bit_identical(loss, tmp_path):
    X, y, w = problem(loss, n=400)

    def make(**kwargs):
        return DistributedGD(loss, solver="lbfgs", l2=1e-3, max_iter=30, lbfgs_memory=4,
                             comm=LocalComm(), **kwargs)

    full, resumed = interrupted_and_resumed(make, (X, y, w), tmp_path / "l.npz", 4)
    assert full.n_iter_ >= 12
    np.testing.assert_array_equal(resumed.params_, full.params_)
    assert resumed.n_iter_ == full.n_iter_
    keys = ("iter", "loss", "grad_norm", "lr", "evaluations")
    assert ([[r[key] for key in keys] for r in resumed.history_]
            == [[r[key] for key in keys] for r in full.history_])
    with pytest.raises(ValueError, match="another configuration"):
        DistributedGD(loss, solver="lbfgs", l2=1e-3, max_iter=30, lbfgs_memory=5,
                      comm=LocalComm(), checkpoint=tmp_path / "l.npz", resume=True).fit(X, y, w)


@pytest.mark.mpi
@pytest.mark.parametrize("loss", ["squared", "logistic", "softmax"])
def test_same_model_for_any_number_of_ranks(loss):
    X, y, w = problem(loss, n=1001, d=7)
    params = dict(solver="lbfgs", max_iter=40, l2=1e-3, lbfgs_memory=5)
    alone = DistributedGD(loss, comm=LocalComm(), **params).fit(X, y, w)
    spread = DistributedGD(loss, comm=COMM, **params).fit(*shard(X, y, w))
    np.testing.assert_allclose(spread.params_, alone.params_, rtol=1e-10, atol=1e-12)
    assert ([r["evaluations"] for r in spread.history_]
            == [r["evaluations"] for r in alone.history_])
    if COMM.size > 1:
        assert spread.history_[0]["bytes_sent"] > 0


@pytest.mark.parametrize("change, name", [
    (dict(batch_size=10), "batch_size"), (dict(momentum=0.5), "momentum"),
    (dict(privacy=DPSGD(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.1)), "privacy"),
    (dict(local_steps=2), "local_steps"), (dict(overlap=True, local_steps=2), "local_steps"),
    (dict(compression=TopK(2)), "compression"), (dict(solver="newton"), "solver"),
    (dict(lbfgs_memory=0), "lbfgs_memory"),
])
def test_bad_combinations_are_refused(change, name):
    X, y, _ = problem("squared", n=50)
    with pytest.raises(ValueError, match=name):
        DistributedGD(**{"solver": "lbfgs", "comm": LocalComm(), **change}).fit(X, y)


def test_a_non_finite_objective_is_divergence():
    X, y, _ = problem("squared", n=50)
    X[3, 1] = np.inf
    with pytest.raises((DivergenceError, ValueError)):
        DistributedGD(solver="lbfgs", comm=LocalComm()).fit(X, y)


def test_lr_is_ignored_and_an_optimum_start_takes_no_step():
    X, y, _ = problem("logistic", n=300)
    a = DistributedGD("logistic", solver="lbfgs", lr=0.5, comm=LocalComm()).fit(X, y)
    b = DistributedGD("logistic", solver="lbfgs", lr=3.0, comm=LocalComm()).fit(X, y)
    np.testing.assert_array_equal(a.params_, b.params_)
    again = DistributedGD("logistic", solver="lbfgs", comm=LocalComm()).fit(
        X, y, coef_init=a.coef_, intercept_init=a.intercept_)
    assert again.n_iter_ == 0 and again.history_ == []
    np.testing.assert_array_equal(again.params_, a.params_)
