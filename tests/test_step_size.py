"""lr="auto" (cyfed.distributed.step_size), standardize=True (cyfed.standardize) and the
linear / reduce-on-plateau schedules, against independent references: the largest
eigenvalue of the weighted Gram matrix (numpy), L-BFGS optima, scikit-learn's
StandardScaler, hand-computed schedules.

Tests marked `mpi` shard their rows over `cyfed.comm.get_comm()` and hold for any
number of ranks (run plainly, and under `mpiexec -n 2` / `-n 4`).
"""
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from cyfed.comm import LocalComm, get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD
from cyfed.distributed.step_size import POWER_RTOL, Backtracking
from cyfed.models import CallableModel
from cyfed.privacy import DPSGD
from cyfed.schedules import Linear, ReduceOnPlateau, get_schedule

from reference import interrupted_and_resumed

COMM = get_comm()
CURVATURE = {"squared": 2.0, "logistic": 0.25, "softmax": 0.5}


def shard(*arrays):
    rows = shard_rows(len(arrays[0]), COMM.rank, COMM.size)
    return [a[rows] for a in arrays]


def problem(loss, n=600, d=5, seed=0, scales=None, offset=0.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if scales is not None:
        X = X * scales + offset
    Z = (X - X.mean(0)) / X.std(0)
    z = Z @ rng.standard_normal((d, 3)) + 0.5 * rng.standard_normal((n, 3))
    y = {"squared": z[:, 0] + 0.3, "logistic": (z[:, 0] > 0).astype(float),
         "softmax": z.argmax(1).astype(float)}[loss]
    return X, y, rng.uniform(0.5, 2.0, n)


def optimum(loss, X, y, w, **params):
    return DistributedGD(loss, solver="lbfgs", max_iter=1000, gtol=1e-11, comm=LocalComm(),
                         **params).fit(X, y, w)


# -- lr="auto" ----------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["squared", "logistic", "softmax"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_auto_lr_is_one_over_the_lipschitz_bound(loss, fit_intercept):
    X, y, w = problem(loss, scales=[1, 3, 10, 0.3, 1], offset=2.0)
    l2 = 1e-2
    gd = DistributedGD(loss, lr="auto", l2=l2, max_iter=1, fit_intercept=fit_intercept,
                       comm=LocalComm()).fit(X, y, w)
    A = np.hstack([X, np.ones((len(X), 1))]) if fit_intercept else X
    gram = A.T @ (w[:, None] * A) / w.sum()
    bound = CURVATURE[loss] * np.linalg.eigvalsh(gram)[-1] + l2
    lr = gd.history_[0]["lr"]
    # power iteration approaches lambda_max from below: lr is at or a little above 1/L
    assert 1.0 / bound <= lr * (1 + 1e-12) <= (1 + 2 * POWER_RTOL) / bound


@pytest.mark.parametrize("loss", ["squared", "logistic", "softmax"])
def test_auto_lr_never_diverges_and_converges_once_standardized(loss):
    """Raw features scaled 0.5..300 with an offset (condition number ~1e7): Nesterov with
    lr="auto" only ever lowers the best loss; standardized, it reaches the optimum."""
    X, y, w = problem(loss, scales=[1, 30, 300, 0.5, 3], offset=5.0)
    params = dict(lr="auto", l2=1e-2, max_iter=3000, momentum=0.9, nesterov=True,
                  comm=LocalComm())
    raw = DistributedGD(loss, **params).fit(X, y, w)
    losses = np.array([r["loss"] for r in raw.history_])
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]
    best = optimum(loss, X, y, w, l2=1e-2, standardize=True)
    scaled = DistributedGD(loss, standardize=True, **params).fit(X, y, w)
    assert scaled.history_[-1]["loss"] <= best.history_[-1]["loss"] * (1 + 1e-6)


def test_plain_auto_gd_decreases_the_loss_every_step():
    """lr = 1/L is the descent lemma's step: plain GD is monotone without any undo."""
    X, y, w = problem("logistic", scales=[1, 10, 100, 1, 1])
    gd = DistributedGD("logistic", lr="auto", max_iter=200, comm=LocalComm()).fit(X, y, w)
    losses = np.array([r["loss"] for r in gd.history_])
    assert np.all(np.diff(losses) <= 1e-15 * losses[1:])
    assert not any(r.get("rejected") for r in gd.history_)


def test_a_callable_model_gets_its_local_curvature():
    """Finite-difference power iteration on a model without a Gram bound: the
    least-squares Hessian 2 X^T W X / W exactly (its gradient is linear)."""
    X, y, w = problem("squared", d=4, scales=[1, 5, 0.5, 2])

    def loss_grad(theta, Xb, yb, sample_weight):
        r = Xb @ theta - yb
        return (sample_weight @ (r * r) / sample_weight.sum(),
                2 * Xb.T @ (sample_weight * r) / sample_weight.sum())

    model = CallableModel(loss_grad, n_params=4)
    gd = DistributedGD(model, lr="auto", max_iter=2000, comm=LocalComm()).fit(X, y, w)
    hessian = 2 * X.T @ (w[:, None] * X) / w.sum()
    assert gd.history_[0]["lr"] == pytest.approx(1 / np.linalg.eigvalsh(hessian)[-1], rel=0.03)
    np.testing.assert_allclose(gd.params_, np.linalg.solve(hessian, 2 * X.T @ (w * y) / w.sum()),
                               rtol=1e-6)


def test_backtracking_undoes_uphill_steps_and_halves_after_a_reset():
    guard = Backtracking(np.float64)
    theta, velocity = np.array([1.0]), np.array([3.0])
    assert guard.accept(theta, velocity, np.array([2.0]), 4.0)[2] is False
    theta[:] = 5.0                                      # the momentum step went uphill
    grad, loss, rejected = guard.accept(theta, velocity, np.array([9.0]), 25.0)
    assert rejected and loss == 4.0 and grad[0] == 2.0 and theta[0] == 1.0
    assert velocity[0] == 0.0 and guard.scale == 1.0     # momentum reset, rate kept
    theta[:] = 4.0                                      # the plain step went uphill too
    assert guard.accept(theta, velocity, np.array([8.0]), 16.0)[2] is True
    assert guard.scale == 0.5 and theta[0] == 1.0
    assert guard.accept(theta, velocity, np.array([1.0]), float("nan"))[2] is True
    assert guard.scale == 0.25


def test_a_too_long_step_is_undone_and_training_still_converges(monkeypatch):
    """With the estimate forced 50x too large a step, the safeguard halves its way down."""
    from cyfed.distributed import loop

    monkeypatch.setattr(loop, "auto_lr", lambda *args: 50.0)
    X, y, w = problem("squared")
    gd = DistributedGD("squared", lr="auto", max_iter=400, tol=1e-12, comm=LocalComm()
                       ).fit(X, y, w)
    assert any(r.get("rejected") for r in gd.history_)
    best = optimum("squared", X, y, w)
    assert gd.history_[-1]["loss"] <= best.history_[-1]["loss"] * (1 + 1e-8)


@pytest.mark.parametrize("extra", [dict(momentum=0.9, nesterov=True), dict(batch_size=64)])
def test_auto_lr_resumes_bit_identical(extra, tmp_path):
    X, y, w = problem("logistic", n=300, scales=[1, 10, 1, 1, 50])

    def make(**kwargs):
        return DistributedGD("logistic", lr="auto", max_iter=40, comm=LocalComm(), **extra,
                             **kwargs)

    full, resumed = interrupted_and_resumed(make, (X, y, w), tmp_path / "a.npz", 7)
    np.testing.assert_array_equal(resumed.params_, full.params_)
    assert [r["lr"] for r in resumed.history_] == [r["lr"] for r in full.history_]


def test_lr_must_be_positive_or_auto():
    X, y, _ = problem("squared", n=20)
    for bad in ("fast", -1.0, 0):
        with pytest.raises(ValueError, match="'auto'"):
            DistributedGD(lr=bad, comm=LocalComm()).fit(X, y)


# -- standardize=True ------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["squared", "logistic", "softmax"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_standardize_equals_a_standard_scaler_pipeline(loss, fit_intercept):
    X, y, w = problem(loss, scales=[1, 10, 100, 0.1, 1], offset=[5, -3, 100, 0, 0])
    X[:, 4] = 2.0                                        # a constant feature: scale 1
    params = dict(l2=1e-2, fit_intercept=fit_intercept)
    mine = optimum(loss, X, y, w, standardize=True, **params)
    scaler = StandardScaler(with_mean=fit_intercept).fit(X)
    ref = optimum(loss, scaler.transform(X), y, w, **params)
    coef = ref.coef_ / (scaler.scale_ if ref.coef_.ndim == 1 else scaler.scale_[:, None])
    intercept = ref.intercept_ - (scaler.mean_ @ coef if fit_intercept else 0.0)
    np.testing.assert_allclose(mine.coef_, coef, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(mine.intercept_, intercept, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(mine.predict(X), ref.predict(scaler.transform(X)))


def test_standardize_takes_far_fewer_steps_on_badly_scaled_data():
    X, y, w = problem("logistic", scales=[1, 10, 100, 1000, 1])
    raw = optimum("logistic", X, y, w, l2=1e-3)
    scaled = optimum("logistic", X, y, w, l2=1e-3, standardize=True)
    assert 3 * scaled.n_iter_ <= raw.n_iter_


def test_standardize_start_is_in_raw_units():
    X, y, w = problem("logistic", scales=[1, 10, 100, 1, 1], offset=3.0)
    fitted = optimum("logistic", X, y, w, standardize=True, l2=1e-2)
    again = DistributedGD("logistic", solver="lbfgs", standardize=True, l2=1e-2,
                          comm=LocalComm()).fit(X, y, w, coef_init=fitted.coef_,
                                                intercept_init=fitted.intercept_)
    assert again.n_iter_ <= 1
    np.testing.assert_allclose(again.coef_, fitted.coef_, rtol=1e-6)


@pytest.mark.parametrize("change, match", [
    (dict(privacy=DPSGD(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.1)), "privacy"),
    (dict(standardize="yes"), "standardize"),
])
def test_standardize_refusals(change, match):
    X, y, _ = problem("squared", n=20)
    with pytest.raises((ValueError, TypeError), match=match):
        DistributedGD(standardize=True, comm=LocalComm(), **change).fit(X, y)


def test_standardize_needs_a_linear_model():
    model = CallableModel(lambda t, X, y, w: (w, X), n_params=5)
    X, y, _ = problem("squared", n=20)
    with pytest.raises(ValueError, match="linear model"):
        DistributedGD(model, standardize=True, comm=LocalComm()).fit(X, y)


@pytest.mark.mpi
@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_auto_lr_and_standardize_give_the_same_model_on_any_number_of_ranks(loss):
    X, y, w = problem(loss, n=1001, scales=[1, 10, 100, 0.1, 1], offset=4.0)
    params = dict(lr="auto", standardize=True, max_iter=60, momentum=0.9, nesterov=True,
                  l2=1e-3)
    alone = DistributedGD(loss, comm=LocalComm(), **params).fit(X, y, w)
    spread = DistributedGD(loss, comm=COMM, **params).fit(*shard(X, y, w))
    np.testing.assert_allclose(spread.params_, alone.params_, rtol=1e-8, atol=1e-10)


# -- schedules ----------------------------------------------------------------------------------

def test_linear_decay():
    schedule = get_schedule("linear")
    assert [schedule(1.0, t, 4) for t in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert Linear(end=0.5)(2.0, 2, 4) == pytest.approx(1.5)


def test_reduce_on_plateau_cuts_after_patience_records_without_improvement():
    schedule = ReduceOnPlateau(factor=0.1, patience=2, threshold=0.01)
    losses = [10, 9, 8.95, 8.94, 8.93, 5, 5, 5, 5, 5]
    history, rates = [], []
    for t, loss in enumerate(losses):
        rates.append(schedule(1.0, t, 10, history))
        history.append({"loss": loss})
    # 8.95 and 8.94 are within 1% of 9: the second no-improvement cuts (lr 0.1 at t=4);
    # 8.93 counts one; 5 improves; 5, 5 cut again (t=8); 5 one more
    assert rates == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert schedule(1.0, 0, 10, []) == 1.0                # a new history starts over


def test_reduce_on_plateau_resumes_bit_identical(tmp_path):
    X, y, w = problem("logistic", n=300)

    def make(**kwargs):
        return DistributedGD("logistic", lr=40.0, lr_schedule="plateau", max_iter=60,
                             comm=LocalComm(), **kwargs)

    full, resumed = interrupted_and_resumed(make, (X, y, w), tmp_path / "p.npz", 9)
    assert len({r["lr"] for r in full.history_}) > 1          # the rate was cut
    np.testing.assert_array_equal(resumed.params_, full.params_)
    assert [r["lr"] for r in resumed.history_] == [r["lr"] for r in full.history_]
