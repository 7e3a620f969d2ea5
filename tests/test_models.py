"""The model protocol with models from Python callables (`cyfed.models.CallableModel`).

Checked against independent references: a numpy MLP's gradient against central
finite differences; a logistic regression written here in numpy against the
compiled `LinearModel("logistic")` (the same objective and, for every trainer,
the same steps: full batch, mini-batches, DP-SGD's clipped Poisson batches,
federated local SGD with the kernel's seeded shuffles); checkpoints; MPI; bad
input.  Tests marked `mpi` hold for any communicator size.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from cyfed.comm import LocalComm, get_comm
from cyfed.data import dirichlet, iid, shard_rows
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer
from cyfed.models import CallableModel, LinearModel
from cyfed.privacy import DPSGD, ClientDP
from cyfed.secagg import SecureAggregation
from cyfed.strategies import FedAvg, FedProx, Scaffold
from reference import interrupted_and_resumed

COMM = get_comm()
EXAMPLE = Path(__file__).resolve().parents[1] / "mpi_examples" / "federated_custom_model.py"


# -- models written in numpy, independently of cyfed ------------------------------------

def mlp_callables(d, hidden, k, seed=0):
    """(loss_grad, predict, init, n_params) of d -> tanh(hidden) -> softmax(k) with the
    mean cross-entropy; theta = [W1 (d, h), b1 (h,), W2 (h, k), b2 (k,)] row-major."""
    shapes = [(d, hidden), (hidden,), (hidden, k), (k,)]
    ends = np.cumsum([int(np.prod(s)) for s in shapes])

    def unpack(theta):
        return [p.reshape(s) for p, s in zip(np.split(theta, ends[:-1]), shapes)]

    def logits(theta, X):
        W1, b1, W2, b2 = unpack(theta)
        H = np.tanh(X @ W1 + b1)
        return H, H @ W2 + b2

    def loss_grad(theta, X, y):
        X = np.asarray(X, dtype=np.float64)
        _, _, W2, _ = unpack(theta)
        H, Z = logits(theta, X)
        Z = Z - Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        P /= P.sum(axis=1, keepdims=True)
        onehot = np.eye(k)[np.asarray(y).astype(int)]
        loss = -np.mean(np.sum(onehot * np.log(P), axis=1))
        dZ = (P - onehot) / len(y)
        dH = dZ @ W2.T * (1 - H ** 2)
        return loss, np.concatenate([(X.T @ dH).ravel(), dH.sum(0), (H.T @ dZ).ravel(),
                                     dZ.sum(0)])

    def predict(theta, X):
        return np.argmax(logits(theta, X)[1], axis=1)

    def init(n):
        return np.random.default_rng(seed).normal(0, 0.5, n)      # a seeded random start

    return loss_grad, predict, init, int(ends[-1])


def mlp(d=5, hidden=8, k=3, seed=0):
    loss_grad, predict, init, n = mlp_callables(d, hidden, k, seed)
    return CallableModel(loss_grad, n, predict=predict, init=init, targets="classes")


def logistic_loss_grad(theta, X, y, sample_weight=None):
    """Weighted mean of log(1 + e^z) - y z, z = X theta[:-1] + theta[-1]; its gradient."""
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    z = X @ theta[:-1] + theta[-1]
    r = w * (expit(z) - y) / w.sum()
    return float(w @ (np.logaddexp(0, z) - y * z) / w.sum()), np.append(X.T @ r, r.sum())


def logistic_no_intercept(theta, X, y):
    z = X @ theta
    return float(np.mean(np.logaddexp(0, z) - y * z)), X.T @ (expit(z) - y) / len(y)


def logistic_model(d, intercept=True):
    if intercept:
        return CallableModel(logistic_loss_grad, d + 1, targets="binary",
                             predict=lambda t, X: (X @ t[:-1] + t[-1] > 0).astype(float))
    return CallableModel(logistic_no_intercept, d, targets="binary",
                         predict=lambda t, X: (X @ t > 0).astype(float))


def binary_problem(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, size=d)
    y = (rng.random(n) < expit(X @ rng.standard_normal(d) - 0.3)).astype(np.float64)
    return X, y


def teacher_problem(n, d=5, k=3, seed=0):
    """Gaussian rows labelled by a random tanh network: non-linear classes."""
    rng = np.random.default_rng(seed)
    U1, U2 = rng.standard_normal((d, 6)), rng.standard_normal((6, k))
    X = rng.standard_normal((n, d))
    return X, np.argmax(np.tanh(X @ U1) @ U2, axis=1).astype(np.float64)


def noniid_clients(X, y, n_clients=12, seed=0):
    parts = dirichlet(y.astype(int), n_clients, 0.5, min_size=15, seed=seed)
    return [(X[p], y[p]) for p in parts]


def load_example():
    spec = importlib.util.spec_from_file_location("federated_custom_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the MLP's gradient --------------------------------------------------------------------

def central_differences(f, theta, h=1e-6):
    grad = np.empty_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        grad[j] = (f(theta + e) - f(theta - e)) / (2 * h)
    return grad


@pytest.mark.parametrize("source", ["test", "example"])
def test_mlp_gradient_matches_central_finite_differences(source):
    d, hidden, k = 4, 5, 3
    if source == "example":
        if not EXAMPLE.exists():
            pytest.skip("mpi_examples/ is not shipped with the installed package")
        model = load_example().mlp(d, hidden, k, seed=1)
    else:
        model = mlp(d, hidden, k, seed=1)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((30, d))
    y = rng.integers(0, k, 30).astype(np.float64)
    theta = rng.normal(0, 0.7, model.n_params)
    value, grad = model.loss_grad(theta, X, y)
    assert grad.shape == (model.n_params,) == (d * hidden + hidden + hidden * k + k,)
    fd = central_differences(lambda t: model.loss_grad(t, X, y)[0], theta)
    # central differences: O(h^2) truncation plus eps * |loss| / h rounding, ~1e-9 here
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # and the value itself against the textbook formula
    W1, b1 = theta[:d * hidden].reshape(d, hidden), theta[d * hidden:d * hidden + hidden]
    rest = theta[d * hidden + hidden:]
    W2, b2 = rest[:hidden * k].reshape(hidden, k), rest[hidden * k:]
    Z = np.tanh(X @ W1 + b1) @ W2 + b2
    expected = np.mean(np.log(np.exp(Z).sum(1)) - Z[np.arange(30), y.astype(int)])
    assert value == pytest.approx(expected, rel=1e-12)


def test_logistic_callable_gradient_matches_finite_differences():
    X, y = binary_problem(50, 4)
    w = np.random.default_rng(1).random(50)
    theta = np.random.default_rng(2).normal(0, 0.5, 5)
    _, grad = logistic_loss_grad(theta, X, y, sample_weight=w)
    fd = central_differences(lambda t: logistic_loss_grad(t, X, y, sample_weight=w)[0], theta)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


# -- federated training of the MLP ---------------------------------------------------------

def test_federated_mlp_learns_a_nonlinear_task():
    X, y = teacher_problem(1700, seed=0)
    clients, test = noniid_clients(X[:1200], y[:1200]), (X[1200:], y[1200:])
    model = mlp(seed=0)
    theta0 = model.init_params()
    trainer = FederatedTrainer(FedAvg(), loss=model, rounds=8, clients_per_round=6,
                               local_epochs=2, batch_size=16, lr=0.3, seed=1,
                               comm=LocalComm()).fit(clients, test=test)
    h = trainer.history_
    start = model.loss_grad(theta0, *test)[0]
    test_loss = [start] + [r["test_loss"] for r in h]
    # the reported test loss is the loss of theta_ on the test rows
    assert h[-1]["test_loss"] == pytest.approx(model.loss_grad(trainer.theta_, *test)[0],
                                               rel=1e-12)
    # decreasing: every round improves on the start, and the last third on the first
    assert max(test_loss[1:]) < start
    assert np.mean(test_loss[-3:]) < np.mean(test_loss[1:4]) < start
    train_loss = [r["train_loss"] for r in h]
    assert np.mean(train_loss[-3:]) < np.mean(train_loss[:3])
    # beats chance and the majority class by a wide margin
    majority = np.bincount(test[1].astype(int)).max() / len(test[1])
    accuracy = np.mean(trainer.predict(test[0]) == test[1])
    assert accuracy == pytest.approx(h[-1]["test_accuracy"])
    assert accuracy > max(1 / 3, majority) + 0.2
    assert trainer.theta_.shape == (model.n_params,)
    assert trainer.model_.n_params == model.n_params


def test_federated_mlp_with_client_dp_and_secure_aggregation_learns():
    X, y = teacher_problem(2000, seed=2)
    clients, test = noniid_clients(X[:1600], y[:1600], n_clients=20), (X[1600:], y[1600:])
    trainer = FederatedTrainer(
        FedAvg(), loss=mlp(seed=2), rounds=6, clients_per_round=10, local_epochs=2,
        batch_size=16, lr=0.3, seed=0, comm=LocalComm(),
        privacy=ClientDP(clip_norm=1.0, noise_multiplier=0.3, noise="distributed"),
        secure_aggregation=SecureAggregation(clip_range=4.0, neighbours="log")).fit(
            clients, test=test)
    h = trainer.history_
    assert all(r["secagg_clients"] == 10 for r in h)
    assert 0 < h[0]["epsilon"] < h[-1]["epsilon"]
    assert h[-1]["test_accuracy"] > 0.6
    assert h[-1]["test_loss"] < h[0]["test_loss"]


# -- the callable logistic model against the compiled one -----------------------------------

@pytest.mark.parametrize("params", [
    dict(lr=0.5, max_iter=60),
    dict(lr=0.2, max_iter=40, batch_size=32, momentum=0.9, nesterov=True),
    dict(lr=0.3, max_iter=40, lr_schedule="cosine", tol=1e-9),
], ids=["full-batch", "minibatch-nesterov", "cosine-tol"])
def test_distributed_callable_logistic_matches_the_compiled_model(params):
    X, y = binary_problem()
    ours = DistributedGD(loss=logistic_model(X.shape[1]), comm=LocalComm(), **params).fit(X, y)
    compiled = DistributedGD(loss="logistic", comm=LocalComm(), **params).fit(X, y)
    assert isinstance(compiled.model_, LinearModel) and isinstance(ours.model_, CallableModel)
    np.testing.assert_allclose(ours.params_, compiled.params_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.params_[:-1], compiled.coef_, rtol=1e-10, atol=1e-12)
    assert ours.n_iter_ == compiled.n_iter_
    np.testing.assert_allclose([r["loss"] for r in ours.history_],
                               [r["loss"] for r in compiled.history_], rtol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), compiled.predict(X))
    assert ours.score(X, y) == compiled.score(X, y) > 0.6


def test_distributed_callable_matches_compiled_with_l2_and_no_intercept():
    # the callable penalises every parameter; without an intercept that is the
    # compiled model's penalty on coef
    X, y = binary_problem(seed=1)
    params = dict(lr=0.4, max_iter=50, l2=0.05, comm=LocalComm())
    ours = DistributedGD(loss=logistic_model(X.shape[1], intercept=False), **params).fit(X, y)
    compiled = DistributedGD(loss="logistic", fit_intercept=False, **params).fit(X, y)
    np.testing.assert_allclose(ours.params_, compiled.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.history_[-1]["loss"], compiled.history_[-1]["loss"],
                               rtol=1e-12)


def test_distributed_callable_with_sample_weights_matches_compiled():
    X, y = binary_problem(seed=2)
    w = np.random.default_rng(5).uniform(0, 3, len(y))
    params = dict(lr=0.5, max_iter=40, comm=LocalComm())
    ours = DistributedGD(loss=logistic_model(X.shape[1]), **params).fit(X, y, sample_weight=w)
    compiled = DistributedGD(loss="logistic", **params).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.params_, compiled.params_, rtol=1e-10, atol=1e-12)
    unweighted = DistributedGD(loss="logistic", **params).fit(X, y)
    assert not np.allclose(ours.params_, unweighted.params_, rtol=1e-3)


def test_distributed_coef_init_starts_a_callable_model():
    X, y = binary_problem(seed=3)
    start = np.random.default_rng(0).normal(0, 0.3, X.shape[1] + 1)
    params = dict(lr=0.3, max_iter=20, comm=LocalComm())
    ours = DistributedGD(loss=logistic_model(X.shape[1]), **params).fit(X, y, coef_init=start)
    compiled = DistributedGD(loss="logistic", **params).fit(X, y, coef_init=start[:-1],
                                                             intercept_init=start[-1])
    np.testing.assert_allclose(ours.params_, compiled.params_, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strategy, extra", [
    (FedAvg, {}),
    (FedAvg, dict(momentum=0.5, max_local_steps=5)),
    (lambda: FedProx(mu=0.3), dict(l2=0.0)),
    (lambda: Scaffold(eta_g=0.8), {}),
], ids=["fedavg", "momentum-capped", "fedprox", "scaffold"])
def test_federated_callable_logistic_matches_the_compiled_model(strategy, extra):
    X, y = binary_problem(600, seed=4)
    clients = [(X[p], y[p]) for p in iid(len(y), 10, seed=0)]
    test = binary_problem(200, seed=5)
    params = dict(rounds=5, clients_per_round=4, local_epochs=2, batch_size=12, lr=0.2,
                  seed=3, comm=LocalComm(), **extra)
    ours = FederatedTrainer(strategy(), loss=logistic_model(X.shape[1]), **params).fit(
        clients, test=test)
    compiled = FederatedTrainer(strategy(), loss="logistic", **params).fit(clients, test=test)
    # the same shuffles and the same steps: equal up to float rounding
    np.testing.assert_allclose(ours.theta_, compiled.theta_, rtol=1e-10, atol=1e-13)
    assert np.abs(compiled.theta_).max() > 0.1
    for a, b in zip(ours.history_, compiled.history_):
        assert a["clients"] == b["clients"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-9)
        assert a["test_accuracy"] == b["test_accuracy"]


def test_federated_callable_with_client_dp_and_secagg_matches_compiled():
    X, y = binary_problem(600, seed=6)
    clients = [(X[p], y[p]) for p in iid(len(y), 10, seed=1)]
    params = dict(rounds=4, clients_per_round=5, local_epochs=1, batch_size=10, lr=0.2,
                  seed=2, comm=LocalComm())

    def fit(loss):
        return FederatedTrainer(
            FedAvg(), loss=loss,
            privacy=ClientDP(clip_norm=0.5, noise_multiplier=0.5, noise="distributed"),
            secure_aggregation=SecureAggregation(clip_range=2.0), **params).fit(clients)

    ours, compiled = fit(logistic_model(X.shape[1])), fit("logistic")
    # secure aggregation quantises: rounding differences below the grid may move a
    # coordinate by one quantisation step (2 clip_range / floor((2^32 - 1) / m))
    step = 2 * 2.0 / ((2 ** 32 - 1) // 5)
    np.testing.assert_allclose(ours.theta_, compiled.theta_, rtol=0, atol=5 * 4 * step + 1e-12)


def test_dpsgd_callable_logistic_matches_the_compiled_model():
    X, y = binary_problem(500, seed=7)
    X = X * 3                  # large gradients: most per-example gradients get clipped
    params = dict(lr=0.3, max_iter=25, seed=4, comm=LocalComm())
    dp = dict(clip_norm=0.5, noise_multiplier=0.8, sample_rate=0.1)
    ours = DistributedGD(loss=logistic_model(X.shape[1]), privacy=DPSGD(**dp), **params).fit(X, y)
    compiled = DistributedGD(loss="logistic", privacy=DPSGD(**dp), **params).fit(X, y)
    np.testing.assert_allclose(ours.params_, compiled.params_, rtol=1e-9, atol=1e-12)
    for a, b in zip(ours.history_, compiled.history_):
        assert a["batch_size"] == b["batch_size"]
        assert a["clipped_fraction"] == b["clipped_fraction"]
        assert a["epsilon"] == b["epsilon"]
    assert 0.3 < np.mean([r["clipped_fraction"] for r in ours.history_]) <= 1
    assert ours.noise_multiplier_ == compiled.noise_multiplier_


@pytest.mark.parametrize("clip_norm", [None, 0.5], ids=["sums", "clipped-sums"])
def test_model_sums_match_numpy_and_the_compiled_kernel(clip_norm):
    """The protocol's sums over a subset of rows: sum_i w_i grad l_i (each term clipped
    to C per example for DP-SGD), against per-example numpy gradients."""
    X, y = binary_problem(200, 5, seed=8)
    X[3] *= 1e4                                  # one huge row: clipped to C, not more
    w = np.random.default_rng(0).uniform(0.2, 2.0, 200)
    theta = np.random.default_rng(1).normal(0, 0.3, 6)
    rows = np.sort(np.random.default_rng(2).choice(200, 60, replace=False))
    rows[0] = 3
    ours = logistic_model(5).bind(5, 1)
    compiled = LinearModel("logistic").bind(5, 1)
    # numpy: per-example gradients [x_i (s_i - y_i), s_i - y_i], weighted, clipped
    z = X[rows] @ theta[:-1] + theta[-1]
    G = np.column_stack([X[rows], np.ones(len(rows))]) * (w[rows] * (expit(z) - y[rows]))[:, None]
    norms = np.linalg.norm(G, axis=1)
    if clip_norm is not None:
        G = G * np.minimum(1, clip_norm / norms)[:, None]
    losses = w[rows] * (np.logaddexp(0, z) - y[rows] * z)
    for model in (ours, compiled):
        data = model.prepare(X, y, sample_weight=w)
        out = np.full(model.n_params + 4, np.nan)
        loss_sum, weight_sum, n_clipped = model.sums(data, theta, rows.astype(np.intp), out, 1,
                                                     clip_norm=clip_norm)
        np.testing.assert_allclose(out[:model.n_params], G.sum(0), rtol=1e-10, atol=1e-12)
        assert loss_sum == pytest.approx(losses.sum(), rel=1e-10)
        assert weight_sum == pytest.approx(w[rows].sum(), rel=1e-12)
        assert n_clipped == (0 if clip_norm is None else int(np.sum(norms > clip_norm)))
    assert clip_norm is None or 0 < n_clipped < len(rows)


def test_training_leaves_the_gradient_loss_grad_returned_alone():
    c = np.array([1.0, -2.0, 0.5])
    c0 = c.copy()

    def linear(theta, X, y):                   # loss theta . c: a constant gradient c
        return float(theta @ c), c

    X, y = np.zeros((20, 2)), np.zeros(20)
    lr, l2 = 0.1, 0.5
    trainer = FederatedTrainer(FedAvg(), loss=CallableModel(linear, 3), rounds=1,
                               local_epochs=1, batch_size=5, lr=lr, l2=l2,
                               comm=LocalComm()).fit([(X, y)])
    expected = np.zeros(3)
    for _ in range(4):                          # 4 batches of 5 rows: w <- w - lr (c + l2 w)
        expected = expected - lr * (c0 + l2 * expected)
    dp = DistributedGD(loss=CallableModel(linear, 3), lr=lr, max_iter=3, comm=LocalComm(),
                       privacy=DPSGD(clip_norm=1.0, noise_multiplier=0.0, sample_rate=0.5,
                                     delta=None)).fit(X, y)
    np.testing.assert_array_equal(c, c0)
    np.testing.assert_allclose(trainer.theta_, expected, rtol=1e-14)
    # DP-SGD: every example's gradient c is clipped to c / ||c||
    np.testing.assert_allclose(dp.history_[0]["grad_norm"],
                               dp.history_[0]["batch_size"] / 10, rtol=1e-12)


# -- checkpoints ----------------------------------------------------------------------------

def test_distributed_callable_resumes_bit_identical(tmp_path):
    X, y = teacher_problem(300, seed=8)
    model = mlp(seed=8)

    def make(**kwargs):
        return DistributedGD(loss=model, lr=0.3, max_iter=30, batch_size=40, momentum=0.5,
                             comm=LocalComm(), **kwargs)

    full, resumed = interrupted_and_resumed(make, (X, y), tmp_path / "gd.npz", every=4)
    np.testing.assert_array_equal(resumed.params_, full.params_)
    assert resumed.n_iter_ == full.n_iter_ == 30
    assert [r["loss"] for r in resumed.history_] == [r["loss"] for r in full.history_]


class Interrupted(Exception):
    pass


def test_federated_callable_resumes_bit_identical(tmp_path):
    X, y = teacher_problem(900, seed=9)
    clients = noniid_clients(X, y, n_clients=10, seed=9)
    path = tmp_path / "fed.npz"

    def make(**kwargs):
        return FederatedTrainer(FedAvg(), loss=mlp(seed=9), rounds=6, clients_per_round=4,
                                local_epochs=2, batch_size=16, lr=0.2, seed=5,
                                comm=LocalComm(),
                                privacy=ClientDP(clip_norm=1.0, noise_multiplier=0.5),
                                **kwargs)

    full = make().fit(clients)

    def stop(record):
        if record["round"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        make(checkpoint=path, checkpoint_every=2).fit(clients, callback=stop)
    resumed = make(checkpoint=path, resume=True).fit(clients)
    np.testing.assert_array_equal(resumed.theta_, full.theta_)
    assert [r["round"] for r in resumed.history_] == list(range(6))
    assert [r["epsilon"] for r in resumed.history_] == [r["epsilon"] for r in full.history_]
    # another model (another width) is another configuration
    other = FederatedTrainer(FedAvg(), loss=mlp(hidden=9, seed=9), rounds=6,
                             clients_per_round=4, local_epochs=2, batch_size=16, lr=0.2,
                             seed=5, comm=LocalComm(),
                             privacy=ClientDP(clip_norm=1.0, noise_multiplier=0.5),
                             checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="another configuration"):
        other.fit(clients)


# -- MPI ------------------------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("private", [False, True], ids=["fedavg-scaffold", "dp-secagg"])
def test_federated_callable_is_bit_identical_for_any_number_of_ranks(private):
    X, y = teacher_problem(1000, seed=10)
    clients = noniid_clients(X, y, n_clients=11, seed=10)
    test = teacher_problem(200, seed=11)
    if private:
        extra = dict(strategy=FedAvg, dropout=0.1,
                     privacy=ClientDP(clip_norm=1.0, noise_multiplier=0.5, noise="distributed",
                                      adaptive=True, count_noise=2.0),
                     secure_aggregation=SecureAggregation(clip_range=4.0, neighbours="log"))
    else:
        extra = dict(strategy=lambda: Scaffold(eta_g=0.9), momentum=0.3)

    def run(comm):
        params = dict(extra)
        strategy = params.pop("strategy")()         # a fresh one: Scaffold's c is state
        return FederatedTrainer(strategy, loss=mlp(seed=10), rounds=4, fraction=0.6,
                                local_epochs=2, batch_size=16, lr=0.2, seed=7, comm=comm,
                                **params).fit(clients, test=test)

    alone, spread = run(LocalComm()), run(COMM)
    np.testing.assert_array_equal(spread.theta_, alone.theta_)
    np.testing.assert_array_equal(spread.predict(test[0]), alone.predict(test[0]))
    if COMM.rank == 0:
        assert [r["clients"] for r in spread.history_] == [r["clients"] for r in alone.history_]
        assert [r["test_loss"] for r in spread.history_] == \
            [r["test_loss"] for r in alone.history_]


@pytest.mark.mpi
def test_distributed_callable_over_ranks_agrees_with_one_process():
    X, y = binary_problem(403, seed=12)
    mine = shard_rows(len(y), COMM.rank, COMM.size)
    params = dict(lr=0.4, max_iter=30, batch_size=50, momentum=0.5)
    spread = DistributedGD(loss=logistic_model(X.shape[1]), comm=COMM, **params).fit(
        X[mine], y[mine])
    alone = DistributedGD(loss=logistic_model(X.shape[1]), comm=LocalComm(), **params).fit(X, y)
    compiled = DistributedGD(loss="logistic", comm=COMM, **params).fit(X[mine], y[mine])
    # sums in rank order: equal to rounding
    np.testing.assert_allclose(spread.params_, alone.params_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(spread.params_, compiled.params_, rtol=1e-10, atol=1e-12)
    assert spread.score(X[mine], y[mine]) == pytest.approx(alone.score(X, y), abs=1e-12)


# -- bad input ------------------------------------------------------------------------------

def test_a_gradient_of_the_wrong_shape_is_named():
    def short(theta, X, y):
        return 0.0, np.zeros(4)

    X, y = binary_problem(60, 5)
    with pytest.raises(ValueError, match=r"gradient of shape \(4,\), expected \(6,\)"):
        DistributedGD(loss=CallableModel(short, 6), comm=LocalComm(), max_iter=2).fit(X, y)
    clients = [(X[:30], y[:30]), (X[30:], y[30:])]
    with pytest.raises(ValueError, match=r"gradient of shape \(4,\), expected \(6,\)"):
        FederatedTrainer(FedAvg(), loss=CallableModel(short, 6), rounds=1,
                         comm=LocalComm()).fit(clients)

    def column(theta, X, y):                   # (6, 1): the right entries, flattened
        return logistic_loss_grad(theta, X, y)[0], logistic_loss_grad(theta, X, y)[1][:, None]

    flat = DistributedGD(loss=logistic_model(5), comm=LocalComm(), max_iter=3).fit(X, y)
    col = DistributedGD(loss=CallableModel(column, 6), comm=LocalComm(), max_iter=3).fit(X, y)
    np.testing.assert_array_equal(col.params_, flat.params_)


def test_a_gradient_of_the_wrong_shape_is_named_as_returned():
    def matrix(theta, X, y):
        return 0.0, np.zeros((2, 4))

    X, y = binary_problem(60, 5)
    with pytest.raises(ValueError, match=r"gradient of shape \(2, 4\), expected \(6,\)"):
        DistributedGD(loss=CallableModel(matrix, 6), comm=LocalComm(), max_iter=2).fit(X, y)


@pytest.mark.parametrize("args, kwargs, match", [
    (("not a function", 3), {}, "loss_grad must be callable, got str"),
    ((None, 3), {}, "loss_grad must be callable, got NoneType"),
    ((logistic_loss_grad, 3), dict(predict=np.zeros(3)), "predict must be callable"),
])
def test_non_callables_are_refused(args, kwargs, match):
    with pytest.raises(TypeError, match=match):
        CallableModel(*args, **kwargs)


def test_a_non_model_loss_is_refused():
    X, y = binary_problem(40, 3)
    with pytest.raises(TypeError, match="loss must be"):
        DistributedGD(loss=logistic_loss_grad, comm=LocalComm()).fit(X, y)


def test_sample_weight_needs_a_loss_grad_that_accepts_it():
    X, y = binary_problem(40, 3)
    model = logistic_model(3, intercept=False)          # loss_grad(theta, X, y) only
    with pytest.raises(ValueError, match="sample_weight needs a loss_grad that accepts"):
        DistributedGD(loss=model, comm=LocalComm()).fit(X, y, sample_weight=np.ones(40))
    # a loss_grad taking **kwargs accepts it
    kw = CallableModel(lambda theta, X, y, **kw: logistic_loss_grad(theta, X, y, **kw), 4)
    DistributedGD(loss=kw, comm=LocalComm(), max_iter=2).fit(X, y, sample_weight=np.ones(40))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_params=0), ValueError, "n_params"),
    (dict(targets="labels"), ValueError, "targets must be one of"),
    (dict(init=np.zeros(3)), ValueError, r"init must give 4 parameters, got \(3,\)"),
    (dict(init=lambda n: np.full(n, np.nan)), ValueError, "init"),
])
def test_bad_model_options(kwargs, error, match):
    X, y = binary_problem(40, 3)
    options = {"n_params": 4, **kwargs}
    with pytest.raises(error, match=match):
        model = CallableModel(logistic_loss_grad, options.pop("n_params"), **options)
        DistributedGD(loss=model, comm=LocalComm(), max_iter=1).fit(X, y)


def test_binary_targets_are_checked_and_predict_is_needed():
    X, y = binary_problem(40, 3)
    with pytest.raises(ValueError, match="labels 0 or 1"):
        DistributedGD(loss=logistic_model(3), comm=LocalComm()).fit(X, y + 1)
    bare = DistributedGD(loss=CallableModel(logistic_loss_grad, 4), comm=LocalComm(),
                         max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="no predict callable"):
        bare.predict(X)
    with pytest.raises(ValueError, match="coef_init must have 4 entries"):
        DistributedGD(loss=logistic_model(3), comm=LocalComm()).fit(X, y, coef_init=np.zeros(3))
