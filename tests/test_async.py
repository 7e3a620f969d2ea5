"""Asynchronous federated training (FedAsync, FedBuff, SyncFedAvg), at any number of ranks."""
import faulthandler

import numpy as np
import pytest

import cyfed
from cyfed.asynchronous import (AsyncTrainer, FedAsync, FedBuff, SyncFedAvg,
                                staleness_weight)
from cyfed.comm import LocalComm, get_comm
from cyfed.data import iid, make_fedprox_synthetic
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg

COMM = get_comm()


def regression_clients(n=1200, d=4, n_clients=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.3 + 0.1 * rng.standard_normal(n)
    return X, y, [(X[p], y[p]) for p in iid(n, n_clients, seed=seed)]


def full_loss(trainer, X, y):
    return cyfed.loss_grad("squared", X, y, trainer.coef_, trainer.intercept_)[0]


# -- staleness functions and server rules ----------------------------------------------

@pytest.mark.parametrize("s", [0, 1, 3, 4, 5, 10, 100])
def test_staleness_functions_follow_their_formulas(s):
    a, b = 0.7, 4
    assert staleness_weight("constant", s, a, b) == 1.0
    assert staleness_weight("polynomial", s, a, b) == pytest.approx((s + 1) ** -a, rel=1e-15)
    assert staleness_weight("sqrt", s) == pytest.approx(1 / np.sqrt(1 + s), rel=1e-15)
    hinge = 1.0 if s <= b else 1.0 / (a * (s - b) + 1.0)
    assert staleness_weight("hinge", s, a, b) == pytest.approx(hinge, rel=1e-15)


def test_staleness_functions_on_arrays_and_their_shape():
    s = np.arange(8)
    np.testing.assert_allclose(staleness_weight("polynomial", s, 0.5), (s + 1.0) ** -0.5)
    hinge = staleness_weight("hinge", s, 10, 4)
    np.testing.assert_array_equal(hinge[:5], 1.0)
    np.testing.assert_allclose(hinge[5:], [1 / 11, 1 / 21, 1 / 31])
    assert np.all(np.diff(staleness_weight("polynomial", s, 0.5)) < 0)


def test_fedasync_fresh_update_with_alpha_one_takes_the_client_model():
    rng = np.random.default_rng(0)
    theta, new = rng.standard_normal(7), rng.standard_normal(7)
    for staleness in ("constant", "polynomial", "hinge", "sqrt"):
        out = FedAsync(alpha=1.0, staleness=staleness).receive(theta, new, 0, 10.0, 0)
        np.testing.assert_array_equal(out, new)


def test_fedasync_mixes_with_the_staleness_weighted_alpha():
    rng = np.random.default_rng(1)
    theta, new = rng.standard_normal(5), rng.standard_normal(5)
    rule = FedAsync(alpha=0.6, staleness="polynomial", a=0.5)
    alpha_t = 0.6 * (3 + 1) ** -0.5
    np.testing.assert_allclose(rule.receive(theta, new, 3, 1.0, 0),
                               (1 - alpha_t) * theta + alpha_t * new, rtol=1e-15)


def test_fedbuff_fresh_buffer_is_the_mean_of_k_deltas():
    rng = np.random.default_rng(2)
    theta = rng.standard_normal(6)
    deltas = rng.standard_normal((4, 6))
    rule = FedBuff(buffer_size=4, server_lr=1.0)
    for delta in deltas[:3]:
        assert rule.receive(theta, delta, 0, 5.0, 0) is None
    out = rule.receive(theta, deltas[3], 0, 5.0, 0)
    np.testing.assert_allclose(out, theta + deltas.mean(axis=0), rtol=1e-14, atol=1e-15)
    # the buffer is empty again; stale deltas are scaled by 1/sqrt(1 + s), eta_g applies
    rule = FedBuff(buffer_size=2, server_lr=0.5)
    assert rule.receive(theta, deltas[0], 3, 1.0, 0) is None
    out = rule.receive(theta, deltas[1], 0, 1.0, 0)
    np.testing.assert_allclose(out, theta + 0.5 * (deltas[0] / 2 + deltas[1]) / 2, rtol=1e-14)


def test_sync_fedavg_rule_is_the_sample_weighted_mean():
    rng = np.random.default_rng(3)
    theta, models = rng.standard_normal(3), rng.standard_normal((3, 3))
    rule = SyncFedAvg()
    rule.reset(3)
    n = [10.0, 30.0, 60.0]
    assert rule.receive(theta, models[0], 0, n[0], 0) is None
    assert rule.receive(theta, models[1], 0, n[1], 1) is None
    out = rule.receive(theta, models[2], 0, n[2], 2)
    np.testing.assert_allclose(out, np.average(models, axis=0, weights=n), rtol=1e-14)


def test_non_finite_updates_are_left_out_with_a_warning():
    theta = np.ones(3)
    with pytest.warns(RuntimeWarning, match="client 4"):
        assert FedAsync().receive(theta, np.array([1.0, np.nan, 0.0]), 0, 1.0, 4) is None
    rule = FedBuff(buffer_size=2)
    with pytest.warns(RuntimeWarning, match="client 5"):
        assert rule.receive(theta, np.full(3, np.inf), 0, 1.0, 5) is None
    np.testing.assert_array_equal(rule.receive(theta, np.full(3, 2.0), 0, 1.0, 6), 2.0)


# -- validation -----------------------------------------------------------------------

@pytest.mark.parametrize("make, name", [
    (lambda: FedAsync(alpha=0.0), "alpha"),
    (lambda: FedAsync(alpha=1.5), "alpha"),
    (lambda: FedAsync(alpha=float("nan")), "alpha"),
    (lambda: FedAsync(staleness="exponential"), "staleness"),
    (lambda: FedAsync(staleness="hinge", a=-1), "a"),
    (lambda: FedAsync(staleness="hinge", b=-2), "b"),
    (lambda: FedBuff(buffer_size=0), "buffer_size"),
    (lambda: FedBuff(buffer_size=2.5), "buffer_size"),
    (lambda: FedBuff(server_lr=0), "server_lr"),
    (lambda: FedBuff(staleness="linear"), "staleness"),
])
def test_bad_rule_parameters_name_the_argument(make, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        make()


@pytest.mark.mpi
@pytest.mark.parametrize("kwargs, name", [
    ({"concurrency": 0}, "concurrency"),
    ({"concurrency": 9}, "concurrency"),             # more than the 8 clients
    ({"updates": 0}, "updates"),
    ({"max_time": -1.0}, "max_time"),
    ({"delay": "pareto"}, "delay"),
    ({"delay_params": (0.0, -1.0)}, "delay_params"),
    ({"delay": "constant", "delay_params": [1.0, 2.0]}, "delay_params"),
    ({"mode": "threads"}, "mode"),
    ({"mode": "mpi", "comm": LocalComm()}, "mode='mpi'"),
    ({"mu": -0.1}, "mu"),
    ({"eval_every": 0}, "eval_every"),
    ({"lr": -1.0}, "lr"),
    ({"local_epochs": 0}, "local_epochs"),
])
def test_bad_trainer_parameters_fail_on_every_rank_before_training(kwargs, name):
    _, _, clients = regression_clients()
    rule = FedBuff(buffer_size=2)
    kwargs = {"comm": COMM, "concurrency": 4, **kwargs}
    trainer = AsyncTrainer(rule, updates=kwargs.pop("updates", 5), **kwargs)
    with pytest.raises(ValueError, match=name):
        trainer.fit(clients)
    assert not hasattr(trainer, "history_") or trainer.history_ == []


def test_a_rule_changed_after_construction_is_checked_again():
    _, _, clients = regression_clients()
    rule = FedAsync()
    rule.alpha = 2.0
    with pytest.raises(ValueError, match="alpha"):
        AsyncTrainer(rule, updates=3).fit(clients)
    with pytest.raises(TypeError, match="rule"):
        AsyncTrainer(FedAvg(), updates=3).fit(clients)


# -- local training shared with FederatedTrainer ------------------------------------

def test_train_clients_is_a_fedavg_round():
    _, _, clients = regression_clients()
    fed = FederatedTrainer(FedAvg(), rounds=1, lr=0.05, batch_size=16, local_epochs=2,
                           seed=4).fit(clients)
    other = FederatedTrainer(FedAvg(), rounds=1, lr=0.05, batch_size=16, local_epochs=2,
                             seed=4)
    other.setup(clients)
    models, n, losses, steps = other.train_clients(np.zeros(5), range(8), 0)
    assert models.shape == (8, 5) and np.all(steps == 2 * np.ceil(n / 16))
    mean = cyfed.aggregate.weighted_mean(models, n)
    np.testing.assert_array_equal(mean, np.r_[fed.coef_, fed.intercept_])
    again = other.train_clients(np.zeros(5), [3], 0)[0]
    np.testing.assert_array_equal(again[0], models[3])        # a fresh array, same result
    with pytest.raises(ValueError, match="client_ids"):
        other.train_clients(np.zeros(5), [8], 0)


# -- simulated mode -----------------------------------------------------------------

def sim(rule, clients, **kwargs):
    params = dict(updates=30, concurrency=4, lr=0.05, batch_size=10, seed=0)
    params.update(kwargs)
    return AsyncTrainer(rule, **params).fit(clients)


@pytest.mark.parametrize("make", [lambda: FedAsync(0.5), lambda: FedBuff(3), SyncFedAvg],
                         ids=["fedasync", "fedbuff", "syncfedavg"])
def test_simulated_mode_is_bit_reproducible_for_a_seed(make):
    _, _, clients = regression_clients()
    a, b = sim(make(), clients, seed=3), sim(make(), clients, seed=3)
    c = sim(make(), clients, seed=4)
    np.testing.assert_array_equal(a.theta_, b.theta_)
    assert a.history_ == b.history_
    assert not np.array_equal(a.theta_, c.theta_)
    assert [r["time"] for r in a.history_] != [r["time"] for r in c.history_]


def test_events_follow_the_virtual_clock():
    """Durations 1 and 3: client 0 reports at 1, 2, 3; client 1 (started at version 0)
    at 3 too, before client 0's third job (tie broken by the earlier job), with
    staleness 2; client 0's third job started at version 2 and reports at 3 (staleness 1)."""
    _, _, clients = regression_clients(n_clients=2)
    t = sim(FedAsync(0.5), clients, updates=4, concurrency=2, delay="constant",
            delay_params=[1.0, 3.0])
    assert [r["time"] for r in t.history_] == [1.0, 2.0, 3.0, 3.0]
    assert [r["staleness_max"] for r in t.history_] == [0, 0, 2, 1]
    np.testing.assert_array_equal(t.client_updates_, [3, 1])


def test_a_fast_client_contributes_more_updates():
    _, _, clients = regression_clients(n_clients=6)
    durations = [0.1, 5.0, 5.0, 5.0, 5.0, 5.0]
    t = sim(FedAsync(0.5), clients, updates=300, concurrency=3, delay="constant",
            delay_params=durations)
    assert t.client_updates_[0] > 1.5 * t.client_updates_[1:].max()
    # every client busy: the fast one reports 50 times for each report of the others
    t = sim(FedAsync(0.5), clients, updates=60, concurrency=6, delay="constant",
            delay_params=durations)
    assert t.client_updates_[0] > 5 * t.client_updates_[1:].sum()
    times = [r["time"] for r in t.history_]
    assert times == sorted(times)
    # lognormal delays: the client drawn fastest reports most often
    t = sim(FedBuff(2), clients, updates=200, concurrency=2, delay_params=(0.0, 1.5, 0.1))
    assert np.argmax(t.client_updates_) == np.argmin(t._log_speed)


def test_sync_fedavg_with_every_client_is_fedavg():
    """Full-batch local steps (no shuffles): the baseline equals FederatedTrainer's
    FedAvg, and each round lasts as long as its slowest client."""
    _, _, clients = regression_clients()
    rounds = 5
    fed = FederatedTrainer(FedAvg(), rounds=rounds, lr=0.05, batch_size=None,
                           local_epochs=2).fit(clients)
    t = sim(SyncFedAvg(), clients, updates=rounds, concurrency=8, batch_size=None,
            local_epochs=2, delay="constant", delay_params=np.arange(1.0, 9.0))
    np.testing.assert_allclose(t.theta_, np.r_[fed.coef_, fed.intercept_], rtol=1e-12)
    assert [r["time"] for r in t.history_] == [8.0 * (i + 1) for i in range(rounds)]


@pytest.mark.parametrize("make", [lambda: FedAsync(0.6), lambda: FedBuff(4), SyncFedAvg],
                         ids=["fedasync", "fedbuff", "syncfedavg"])
def test_simulated_mode_converges_on_an_easy_problem(make):
    X, y, clients = regression_clients()
    start = cyfed.loss_grad("squared", X, y, np.zeros(4), 0.0)[0]
    t = sim(make(), clients, updates=60)
    assert full_loss(t, X, y) < 0.05 * start
    assert t.history_[-1]["update"] == 60


def test_test_metrics_and_max_time():
    X, y, clients = regression_clients()
    t = AsyncTrainer(FedBuff(2), updates=1000, max_time=20.0, concurrency=4, lr=0.05,
                     eval_every=3).fit(clients, test=(X, y))
    h = t.history_
    assert 0 < len(h) < 1000 and h[-1]["time"] <= 20.0
    assert "test_r2" in h[-1] and all(("test_r2" in r) == (r["update"] % 3 == 0)
                                      for r in h[:-1])
    assert h[-1]["test_r2"] > 0.9


# -- point-to-point on a LocalComm ----------------------------------------------------

def test_local_comm_point_to_point_messages_to_itself():
    comm = LocalComm()
    comm.isend(np.arange(3.0), 0, tag=7)
    comm.send(np.full(3, 5.0), 0, tag=8)
    assert comm.iprobe(tag=8) and not comm.iprobe(tag=9)
    a, b = np.empty(3), np.empty(3)
    reqs = [comm.irecv(a, 0, 9), comm.irecv(b, 0, 8)]
    assert comm.waitany(reqs) == (1, 0, 8)
    np.testing.assert_array_equal(b, 5.0)
    assert comm.recv(a, None, None) == (0, 7)
    np.testing.assert_array_equal(a, [0.0, 1.0, 2.0])
    with pytest.raises(RuntimeError, match="forever"):
        comm.recv(a, 0, 1)


# -- MPI ------------------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("make", [lambda: FedAsync(0.6, "hinge", a=10, b=4),
                                  lambda: FedBuff(3), SyncFedAvg],
                         ids=["fedasync", "fedbuff", "syncfedavg"])
def test_simulated_mode_is_bit_identical_for_any_number_of_ranks(make):
    devices = make_fedprox_synthetic(1.0, 1.0, n_devices=10, seed=5)
    params = dict(updates=25, concurrency=4, lr=0.05, seed=7, local_epochs=2, mu=0.1)
    alone = AsyncTrainer(make(), "softmax", comm=LocalComm(), **params).fit(devices)
    spread = AsyncTrainer(make(), "softmax", comm=COMM, **params).fit(devices)
    np.testing.assert_array_equal(spread.theta_, alone.theta_)
    np.testing.assert_array_equal(spread.client_updates_, alone.client_updates_)
    assert spread.history_ == alone.history_
    # every rank ends with the same model
    gathered = COMM.allgather_obj(spread.theta_.tobytes())
    assert all(g == gathered[0] for g in gathered)


@pytest.mark.mpi
@pytest.mark.parametrize("make", [lambda: FedAsync(0.6), lambda: FedBuff(3), SyncFedAvg],
                         ids=["fedasync", "fedbuff", "syncfedavg"])
def test_real_mpi_mode_terminates_and_converges(make):
    if COMM.size < 2:
        pytest.skip("mode='mpi' needs at least 2 ranks")
    faulthandler.dump_traceback_later(60, exit=True)       # a hang fails, not blocks
    try:
        X, y, clients = regression_clients(n_clients=10)
        start = cyfed.loss_grad("squared", X, y, np.zeros(4), 0.0)[0]
        t = AsyncTrainer(make(), updates=40, concurrency=5, lr=0.05, mode="mpi",
                         comm=COMM, wall_delay=1e-3).fit(clients, test=(X, y))
        COMM.barrier()                                      # every rank got here
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert len(t.history_) == 40 and t.history_[-1]["update"] == 40
    assert full_loss(t, X, y) < 0.05 * start
    assert t.history_[-1]["test_r2"] > 0.9
    assert t.client_updates_.sum() == t.history_[-1]["arrivals"]
    stalest = max(r["staleness_max"] for r in t.history_)
    assert stalest == 0 if isinstance(t.rule, SyncFedAvg) else stalest >= 1
    gathered = COMM.allgather_obj(t.theta_.tobytes())
    assert all(g == gathered[0] for g in gathered)


@pytest.mark.mpi
def test_real_mpi_mode_refuses_clients_on_the_server():
    if COMM.size < 2:
        pytest.skip("mode='mpi' needs at least 2 ranks")
    _, _, clients = regression_clients(n_clients=2 * COMM.size)
    mine = {i: clients[i] for i in range(len(clients)) if i % COMM.size == COMM.rank}
    with pytest.raises(ValueError, match="rank 0"):
        AsyncTrainer(FedAsync(), updates=3, concurrency=1, mode="mpi", comm=COMM).fit(mine)
