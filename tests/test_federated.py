"""Federated rounds against readable numpy references, at any number of ranks."""
import json

import numpy as np
import pytest

import cyfed
from cyfed import _simd
from cyfed.comm import LocalComm, get_comm
from cyfed.data import dirichlet, iid, make_fedprox_synthetic
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg, FedProx, FedSGD, Scaffold

COMM = get_comm()


def regression_clients(n=1200, d=4, n_clients=8, seed=0, skew=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.3 + 0.1 * rng.standard_normal(n)
    parts = (dirichlet((X[:, 0] > 0).astype(int), n_clients, 0.3, min_size=20, seed=seed)
             if skew else iid(n, n_clients, seed=seed))
    return X, y, [(X[p], y[p]) for p in parts]


def full_batch_round(strategy, theta, clients, sampled, epochs, lr, scaffold_state=None):
    """One round with full-batch local GD, in plain numpy (squared loss, intercept)."""
    models, sizes, deltas_c = [], [], []
    mu = getattr(strategy, "mu", 0.0)
    for cid in sampled:
        X, y = clients[cid]
        A = np.column_stack([X, np.ones(len(y))])
        corr = 0.0
        if scaffold_state is not None:
            c, c_k = scaffold_state["c"], scaffold_state["clients"].get(cid, np.zeros_like(theta))
            corr = c - c_k
        w = theta.copy()
        for _ in range(epochs):
            w = w - lr * (2 * A.T @ (A @ w - y) / len(y) + mu * (w - theta) + corr)
        if scaffold_state is not None:
            c_new = c_k - c + (theta - w) / (epochs * lr)
            deltas_c.append(c_new - c_k)
            scaffold_state["clients"][cid] = c_new
        models.append(w)
        sizes.append(len(y))
    models, sizes = np.array(models), np.array(sizes, dtype=float)
    if scaffold_state is None:
        return (sizes[:, None] * models).sum(0) / sizes.sum()
    scaffold_state["c"] = scaffold_state["c"] + np.sum(deltas_c, axis=0) / len(clients)
    return theta + strategy.eta_g * (models - theta).mean(0)


@pytest.mark.mpi
@pytest.mark.parametrize("strategy", [FedAvg(), FedProx(mu=0.5), Scaffold(eta_g=0.8)],
                         ids=["fedavg", "fedprox", "scaffold"])
def test_rounds_match_the_numpy_reference(strategy):
    X, y, clients = regression_clients(skew=True)
    rounds, epochs, lr, m = 4, 3, 0.05, 5
    trainer = FederatedTrainer(strategy, rounds=rounds, clients_per_round=m, local_epochs=epochs,
                               batch_size=None, lr=lr, seed=3, comm=COMM).fit(clients)
    theta = np.zeros(X.shape[1] + 1)
    state = {"c": np.zeros_like(theta), "clients": {}} if isinstance(strategy, Scaffold) else None
    for rnd in range(rounds):
        sampled = np.sort(np.random.default_rng([3, rnd]).choice(len(clients), m, replace=False))
        theta = full_batch_round(type(strategy)(**vars_of(strategy)), theta, clients, sampled,
                                 epochs, lr, state)
    np.testing.assert_allclose(np.r_[trainer.coef_, trainer.intercept_], theta, rtol=1e-10,
                               atol=1e-12)


def vars_of(strategy):
    return {"mu": strategy.mu} if isinstance(strategy, FedProx) else (
        {"eta_g": strategy.eta_g} if isinstance(strategy, Scaffold) else {})


@pytest.mark.mpi
def test_fedsgd_with_all_clients_is_full_batch_gradient_descent():
    X, y, clients = regression_clients()
    fed = FederatedTrainer(FedSGD(), rounds=25, lr=0.1, comm=COMM).fit(clients)
    gd = DistributedGD(lr=0.1, max_iter=25, comm=LocalComm()).fit(
        np.concatenate([c[0] for c in clients]), np.concatenate([c[1] for c in clients]))
    np.testing.assert_allclose(fed.coef_, gd.coef_, rtol=1e-12, atol=1e-14)
    assert fed.intercept_ == pytest.approx(gd.intercept_, rel=1e-12, abs=1e-14)


def test_one_client_one_full_batch_epoch_is_one_gd_step():
    X, y, _ = regression_clients(n=50)
    fed = FederatedTrainer(FedAvg(), rounds=1, local_epochs=1, batch_size=None, lr=0.05)
    fed.fit([(X, y)])
    value, g, gb = cyfed.loss_grad("squared", X, y, np.zeros(X.shape[1]), 0.0)
    np.testing.assert_allclose(fed.coef_, -0.05 * g, rtol=1e-13)
    assert fed.intercept_ == pytest.approx(-0.05 * gb, rel=1e-13)


def test_fedavg_on_iid_clients_reaches_lstsq_with_a_bias_of_order_lr():
    X, y, clients = regression_clients(n=3000, d=5, n_clients=10, seed=1)
    solution = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)[0]
    errors = []
    for lr, rounds in [(0.05, 300), (0.01, 1500)]:
        fed = FederatedTrainer(FedAvg(), rounds=rounds, local_epochs=2, batch_size=None,
                               lr=lr).fit(clients)
        errors.append(np.max(np.abs(np.r_[fed.coef_, fed.intercept_] - solution))
                      / np.max(np.abs(solution)))
    assert errors[0] < 1e-4
    assert errors[1] < errors[0] / 3          # client drift shrinks with the local lr


def test_fedprox_beats_fedavg_on_synthetic_1_1():
    """FedProx paper (Li et al. 2020), Synthetic(1,1): E=20, B=10, lr=0.01, 10 clients
    per round; mu=1 ends with a lower training loss (over all devices) than mu=0."""
    devices = make_fedprox_synthetic(1.0, 1.0, n_devices=30, seed=0)
    X = np.concatenate([d[0] for d in devices])
    y = np.concatenate([d[1] for d in devices])
    final = {}
    for name, strategy in [("fedavg", FedAvg()), ("fedprox", FedProx(mu=1.0))]:
        fed = FederatedTrainer(strategy, "softmax", rounds=200, clients_per_round=10,
                               local_epochs=20, batch_size=10, lr=0.01, seed=0).fit(devices)
        final[name] = cyfed.loss_grad("softmax", X, y, fed.coef_, fed.intercept_)[0]
    assert final["fedprox"] < final["fedavg"]


@pytest.mark.mpi
@pytest.mark.parametrize("loss", ["squared", "softmax"])
def test_bit_identical_for_any_ranks_and_workers(loss):
    devices = make_fedprox_synthetic(1.0, 1.0, n_devices=12, seed=5)
    if loss == "squared":
        devices = [(X, y.astype(float)) for X, y in devices]
    params = dict(rounds=5, fraction=0.5, local_epochs=2, batch_size=10, lr=0.01, seed=7,
                  dropout=0.2, straggler_fraction=0.3, momentum=0.5)
    alone = FederatedTrainer(FedProx(mu=0.1), loss, n_workers=1, comm=LocalComm(),
                             **params).fit(devices)
    threads = FederatedTrainer(FedProx(mu=0.1), loss, n_workers=2, comm=LocalComm(),
                               **params).fit(devices)
    spread = FederatedTrainer(FedProx(mu=0.1), loss, comm=COMM, **params).fit(devices)
    for other in (threads, spread):
        np.testing.assert_array_equal(other.coef_, alone.coef_)
        np.testing.assert_array_equal(other.intercept_, alone.intercept_)


@pytest.mark.mpi
def test_clients_given_as_this_ranks_dict():
    X, y, clients = regression_clients()
    mine = {i: clients[i] for i in range(len(clients)) if i % COMM.size == COMM.rank}
    a = FederatedTrainer(FedAvg(), rounds=3, lr=0.05, seed=1, comm=COMM).fit(mine)
    b = FederatedTrainer(FedAvg(), rounds=3, lr=0.05, seed=1, comm=LocalComm()).fit(clients)
    np.testing.assert_array_equal(a.coef_, b.coef_)


def test_history_is_recorded_and_serialisable():
    X, y, clients = regression_clients()
    fed = FederatedTrainer(FedAvg(), rounds=3, fraction=0.5, lr=0.05).fit(clients, test=(X, y))
    assert [h["round"] for h in fed.history_] == [0, 1, 2]
    first = fed.history_[0]
    for key in ("clients", "train_loss", "test_loss", "test_r2", "bytes_down", "bytes_up",
                "seconds"):
        assert key in first
    assert first["clients"] == 4 and first["bytes_down"] == 8 * (X.shape[1] + 1)
    json.dumps(fed.history_)
    assert fed.history_[-1]["test_loss"] < fed.history_[0]["test_loss"]


def test_dropout_and_stragglers_change_who_reports():
    X, y, clients = regression_clients(n_clients=20)
    fed = FederatedTrainer(FedAvg(), rounds=10, fraction=0.5, local_epochs=3, lr=0.05,
                           dropout=0.3, straggler_fraction=0.3).fit(clients)
    reported = [h["clients"] for h in fed.history_]
    assert min(reported) < 10 and max(reported) <= 10


def test_non_finite_client_update_is_left_out_with_its_id():
    theta = np.zeros(3)
    updates = np.array([[1.0, 1.0, 1.0], [np.nan, 0.0, 0.0], [3.0, 3.0, 3.0]])
    with pytest.warns(RuntimeWarning, match=r"client id\(s\) \[12\]"):
        new = FedAvg().aggregate(theta, updates, np.array([1.0, 5.0, 3.0]),
                                 np.array([4, 12, 20]), 30)
    np.testing.assert_allclose(new, [2.5, 2.5, 2.5])


def test_local_shuffles_are_seeded_by_round_client_and_epoch():
    sgd, _ = _simd.load("_sgd")
    a = sgd.shuffled(50, 1, 2, 3, 0)
    assert sorted(a) == list(range(50))
    np.testing.assert_array_equal(a, sgd.shuffled(50, 1, 2, 3, 0))
    for other in [(50, 1, 2, 4, 0), (50, 1, 2, 3, 1), (50, 1, 3, 3, 0), (50, 2, 2, 3, 0)]:
        assert not np.array_equal(a, sgd.shuffled(*other))


@pytest.mark.parametrize("clients,params,match", [
    ([(np.ones((0, 2)), np.ones(0)), (np.ones((3, 2)), np.ones(3))], {}, "0 rows"),
    ([(np.ones((3, 2)), np.ones(3)), (np.ones((3, 3)), np.ones(3))], {}, "features"),
    ([(np.ones((3, 2)), np.array([0, 1, 2.0]))], {"loss": "logistic"}, "labels 0 or 1"),
    ([(np.ones((3, 2)), np.array([0, 1, -1.0]))], {"loss": "softmax"}, "class labels"),
    ([(np.ones((3, 2)), np.ones(3))], {"fraction": 1.5}, "fraction"),
    ([(np.ones((3, 2)), np.ones(3))], {"fraction": 0.0}, "fraction"),
    ([(np.ones((3, 2)), np.ones(3))], {"clients_per_round": 2}, "clients per round"),
    ([(np.array([[np.nan, 1.0]]), np.ones(1))], {}, "X of client 0 contains NaN"),
])
def test_bad_input_is_refused_before_the_first_round(clients, params, match):
    loss = params.pop("loss", "squared")
    with pytest.raises(ValueError, match=match):
        FederatedTrainer(FedAvg(), loss, rounds=2, **params).fit(clients)


def test_history_written_as_json_and_csv(tmp_path):
    import csv

    from cyfed.federated import write_history
    X, y, clients = regression_clients()
    fed = FederatedTrainer(FedAvg(), rounds=3, lr=0.05).fit(clients, test=(X, y))
    write_history(fed.history_, tmp_path / "h.json")
    write_history(fed.history_, tmp_path / "h.csv")
    assert json.loads((tmp_path / "h.json").read_text()) == fed.history_
    rows = list(csv.DictReader((tmp_path / "h.csv").open()))
    assert [float(r["test_loss"]) for r in rows] == [h["test_loss"] for h in fed.history_]
    with pytest.raises(ValueError, match=".json or .csv"):
        write_history(fed.history_, tmp_path / "h.txt")


def test_split_devices_holds_out_rows_per_device():
    from cyfed.data import split_devices
    devices = make_fedprox_synthetic(1.0, 1.0, n_devices=5, seed=2)
    train, (X_test, y_test) = split_devices(devices, 0.25, seed=0)
    for (X, _), (Xt, _) in zip(devices, train):
        assert len(Xt) == len(X) - round(0.25 * len(X))
    assert len(y_test) + sum(len(t[1]) for t in train) == sum(len(d[1]) for d in devices)
    every = np.vstack([X_test] + [t[0] for t in train])
    assert np.unique(every, axis=0).shape[0] == every.shape[0]     # nothing duplicated


def test_fitting_twice_gives_the_same_model_for_stateful_strategies():
    """Server state (SCAFFOLD's c, FedAdam's moments) lives in the fit's own copy of
    the strategy, so a second fit starts where the first did."""
    from cyfed.strategies import FedAdam, Scaffold
    rng = np.random.default_rng(4)
    X = rng.standard_normal((120, 4))
    y = X @ np.array([1.0, -1.0, 0.5, 2.0]) + 0.1 * rng.standard_normal(120)
    clients = [(X[i::6], y[i::6]) for i in range(6)]
    for strategy in (Scaffold(), FedAdam(eta=0.05)):
        initial = strategy.state_dict()
        trainer = FederatedTrainer(strategy, rounds=3, lr=0.05, comm=LocalComm())
        first = trainer.fit(clients).theta_.copy()
        assert np.array_equal(trainer.fit(clients).theta_, first)
        fitted = trainer.strategy_.state_dict()
        assert any(v is not None and np.any(np.asarray(v)) for v in fitted.values())
        assert strategy.state_dict().keys() == initial.keys()      # the user's object is as given
        for key, value in strategy.state_dict().items():
            assert (value is None and initial[key] is None) or np.array_equal(value, initial[key])
