"""Robust strategies, server optimizers and attacks in federated rounds."""
import math
import warnings

import numpy as np
import pytest

from cyfed import aggregate, attacks
from cyfed.data import make_fedprox_synthetic
from cyfed.federated import FederatedTrainer
from cyfed.strategies import (Bulyan, CenteredClipping, FedAdagrad, FedAdam, FedAvg, FedAvgM,
                              FedMedian, FedProx, FedTrimmedAvg, FedYogi, GeometricMedian, Krum,
                              MultiKrum, Scaffold)

RNG = np.random.default_rng(7)
THETA = RNG.standard_normal(6)
MODELS = THETA + 0.1 * RNG.standard_normal((7, 6))
SIZES = np.arange(1.0, 8.0)
IDS = np.arange(7)


def test_robust_strategies_apply_their_rule():
    assert np.array_equal(FedMedian().aggregate(THETA, MODELS, SIZES, IDS, 7),
                          np.median(MODELS, axis=0))
    assert np.allclose(FedTrimmedAvg(0.2).aggregate(THETA, MODELS, SIZES, IDS, 7),
                       np.sort(MODELS, axis=0)[1:6].mean(0), atol=1e-15)
    krum = Krum(num_malicious=2).aggregate(THETA, MODELS, SIZES, IDS, 7)
    assert any(np.array_equal(krum, row) for row in MODELS)
    best = np.sort(np.argsort(aggregate.krum_scores(MODELS, 2), kind="stable")[:5])
    assert np.allclose(MultiKrum(num_malicious=2).aggregate(THETA, MODELS, SIZES, IDS, 7),
                       np.average(MODELS[best], axis=0, weights=SIZES[best]), atol=1e-15)
    assert np.allclose(GeometricMedian().aggregate(THETA, MODELS, SIZES, IDS, 7),
                       aggregate.geometric_median(MODELS, SIZES), atol=0)


def test_centered_clipping_clips_updates_around_the_last_aggregate():
    strategy = CenteredClipping(tau=0.05)
    first = strategy.aggregate(THETA, MODELS, SIZES, IDS, 7)
    deltas = MODELS - THETA
    norms = np.linalg.norm(deltas, axis=1)
    expected = (deltas * np.minimum(1, 0.05 / norms)[:, None]).mean(0)
    assert np.allclose(first, THETA + expected, atol=1e-14)
    second = strategy.aggregate(THETA, MODELS, SIZES, IDS, 7)
    d2 = deltas - expected
    step = (d2 * np.minimum(1, 0.05 / np.linalg.norm(d2, axis=1))[:, None]).mean(0)
    assert np.allclose(second, THETA + expected + step, atol=1e-14)


def test_robust_strategies_drop_non_finite_models_naming_them():
    models = MODELS.copy()
    models[3, 2] = np.nan
    with pytest.warns(RuntimeWarning, match=r"\[3\]"):
        out = FedMedian().aggregate(THETA, models, SIZES, IDS, 7)
    assert np.array_equal(out, np.median(np.delete(models, 3, 0), axis=0))


def test_too_few_models_keep_theta_with_a_warning():
    with pytest.warns(RuntimeWarning, match="2\\*num_malicious \\+ 3"):
        out = Krum(num_malicious=3).aggregate(THETA, MODELS[:5], SIZES[:5], IDS[:5], 7)
    assert out is THETA


@pytest.mark.parametrize("strategy, message", [
    (Krum(num_malicious=4), "2\\*num_malicious \\+ 3 = 11"),
    (Bulyan(num_malicious=2), "4\\*num_malicious \\+ 3 = 11"),
    (FedAdam(aggregator=Bulyan(num_malicious=2)), "4\\*num_malicious \\+ 3 = 11"),
])
def test_trainer_refuses_too_few_clients_per_round_before_round_0(strategy, message):
    clients = [(RNG.standard_normal((5, 3)), RNG.standard_normal(5)) for _ in range(20)]
    trainer = FederatedTrainer(strategy, rounds=1, clients_per_round=10)
    with pytest.raises(ValueError, match=message):
        trainer.fit(clients)


@pytest.mark.parametrize("bad", [
    lambda: FedTrimmedAvg(beta=0.5), lambda: FedTrimmedAvg(beta=-0.1),
    lambda: Krum(num_malicious=-1), lambda: Krum(num_to_keep=0),
    lambda: Bulyan(num_malicious=1.5), lambda: CenteredClipping(tau=0),
    lambda: GeometricMedian(eps=0), lambda: FedMedian(mu=-1),
    lambda: FedAdam(beta_1=1.0), lambda: FedYogi(tau=-1), lambda: FedAvgM(server_momentum=1),
    lambda: FedAdam(eta=0), lambda: FedAdagrad(eta_l=-0.1),
])
def test_bad_hyper_parameters_raise(bad):
    with pytest.raises(ValueError):
        bad()


def test_server_optimizer_needs_a_strategy():
    with pytest.raises(TypeError):
        FedAdam(aggregator=FedAdam())
    with pytest.raises(TypeError):
        FedAdam(aggregator="fedavg")


# -- server optimizers: steps computed by hand ----------------------------------------------

THETA0 = np.array([1.0, -2.0])
AGG1 = np.array([1.5, -2.5])            # FedAvg of the round-1 messages
ROUND1 = np.array([[1.5, -2.5], [1.5, -2.5]])


def one_step(strategy, theta=THETA0, messages=ROUND1):
    return strategy.aggregate(theta, messages, np.array([1.0, 1.0]), np.arange(2), 2)


def test_fedadam_first_step_by_hand():
    delta = AGG1 - THETA0                       # [0.5, -0.5]
    m = 0.1 * delta
    v = 0.01 * delta ** 2
    eta_t = 0.1 * math.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2)
    assert np.allclose(one_step(FedAdam()), THETA0 + eta_t * m / (np.sqrt(v) + 1e-9),
                       rtol=1e-15)
    plain = one_step(FedAdam(bias_correction=False))
    assert np.allclose(plain, THETA0 + 0.1 * m / (np.sqrt(v) + 1e-9), rtol=1e-15)
    assert np.allclose(plain, [1.1, -2.1])      # sign-like first step of size eta


def test_fedadam_second_step_by_hand():
    s = FedAdam(eta=0.2, beta_1=0.5, beta_2=0.75, tau=0.01)
    theta1 = one_step(s)
    d1 = AGG1 - THETA0
    m1, v1 = 0.5 * d1, 0.25 * d1 ** 2
    assert np.allclose(theta1, THETA0 + 0.2 * math.sqrt(1 - 0.75 ** 2) / (1 - 0.5 ** 2)
                       * m1 / (np.sqrt(v1) + 0.01))
    messages = np.array([[2.0, 0.0], [0.0, 0.0]])
    theta2 = one_step(s, theta1, messages)
    d2 = messages.mean(0) - theta1
    m2, v2 = 0.5 * m1 + 0.5 * d2, 0.75 * v1 + 0.25 * d2 ** 2
    assert np.allclose(theta2, theta1 + 0.2 * math.sqrt(1 - 0.75 ** 3) / (1 - 0.5 ** 3)
                       * m2 / (np.sqrt(v2) + 0.01), rtol=1e-14)


def test_fedadagrad_and_fedyogi_by_hand():
    delta = AGG1 - THETA0
    adagrad = FedAdagrad(eta=0.3, tau=0.1)
    assert np.allclose(one_step(adagrad), THETA0 + 0.3 * delta / (np.abs(delta) + 0.1))
    second = one_step(adagrad, THETA0, ROUND1)      # v accumulates: v = 2 delta^2
    assert np.allclose(second, THETA0 + 0.3 * delta / (np.sqrt(2) * np.abs(delta) + 0.1))
    yogi = FedYogi()
    m = 0.1 * delta
    v = 0 - 0.01 * delta ** 2 * np.sign(0 - delta ** 2)      # = 0.01 delta^2
    assert np.allclose(one_step(yogi), THETA0 + 0.01 * m / (np.sqrt(v) + 1e-3))


def test_fedavgm_by_hand():
    s = FedAvgM(server_learning_rate=0.5, server_momentum=0.9)
    g1 = THETA0 - AGG1
    theta1 = one_step(s)
    assert np.allclose(theta1, THETA0 - 0.5 * g1)
    theta2 = one_step(s, theta1, ROUND1)
    g2 = theta1 - AGG1
    assert np.allclose(theta2, theta1 - 0.5 * (0.9 * g1 + g2))
    assert np.allclose(one_step(FedAvgM()), AGG1)            # lr 1, no momentum: FedAvg


def test_server_optimizer_over_a_robust_aggregate():
    s = FedAdam(aggregator=FedTrimmedAvg(0.2), bias_correction=False)
    target = aggregate.trimmed_mean(MODELS, 0.2)
    delta = target - THETA
    expected = THETA + 0.1 * (0.1 * delta) / (np.sqrt(0.01 * delta ** 2) + 1e-9)
    assert np.allclose(s.aggregate(THETA, MODELS, SIZES, IDS, 7), expected, rtol=1e-14)


def test_server_optimizer_uses_the_inner_client_side():
    s = FedYogi(aggregator=FedProx(mu=0.5), eta_l=0.03)
    assert s.mu == 0.5 and s.keeps_stragglers
    assert s.local_settings(None) == {"lr": 0.03}
    scaffold = FedAdam(aggregator=Scaffold())
    assert scaffold.message_width(4) == 8


# -- state survives: resume equals uninterrupted --------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: FedAdam(aggregator=FedTrimmedAvg(0.2)), lambda: FedYogi(),
    lambda: FedAdagrad(), lambda: FedAvgM(server_momentum=0.9),
    lambda: CenteredClipping(0.05), lambda: FedAdam(aggregator=Scaffold()),
], ids=["adam-trimmed", "yogi", "adagrad", "avgm", "cclip", "adam-scaffold"])
def test_state_dict_round_trip_resumes_exactly(make):
    messages = [THETA + 0.1 * RNG.standard_normal((7, 6)) for _ in range(4)]
    if isinstance(make(), FedAdam) and isinstance(make().aggregator, Scaffold):
        messages = [np.hstack([m, 0.01 * m]) for m in messages]

    def run(strategy, theta, batches):
        for m in batches:
            strategy.server_payload(theta)
            theta = strategy.aggregate(theta, m, SIZES, IDS, 7)
        return theta

    whole = run(make(), THETA, messages)
    first = make()
    half = run(first, THETA, messages[:2])
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert np.array_equal(run(resumed, half, messages[2:]), whole)


# -- end to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic():
    """20 equal IID clients of a 10-class softmax problem (robust rules ignore sample
    counts, so unequal clients would measure that instead of robustness)."""
    devices = make_fedprox_synthetic(0.0, 0.0, n_devices=1, iid=True, seed=3)
    X, y = devices[0][0][:2500], devices[0][1][:2500]
    return [(X[i::25], y[i::25]) for i in range(20)], (X[20::25], y[20::25])


def fit(strategy, data, attack=None, rounds=15, **kw):
    train, test = data
    trainer = FederatedTrainer(strategy, "softmax", rounds=rounds, local_epochs=1, batch_size=10,
                               lr=0.05, seed=0, attack=attack, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return trainer.fit(train, test=test)


def test_every_strategy_trains(synthetic):
    for strategy in [FedMedian(), FedTrimmedAvg(), MultiKrum(2), Bulyan(2), GeometricMedian(),
                     CenteredClipping(1.0), FedAvgM(server_momentum=0.5),
                     FedAdam(eta=0.01), FedYogi(), FedAdagrad(eta=0.01),
                     FedAdam(eta=0.01, aggregator=FedProx(0.1))]:
        history = fit(strategy, synthetic).history_
        assert np.all(np.isfinite(fit(strategy, synthetic, rounds=1).theta_))
        assert history[-1]["test_accuracy"] > 0.3, type(strategy).__name__


def test_robust_aggregation_survives_what_breaks_fedavg(synthetic):
    attack = attacks.SignFlip(range(4), 10.0)
    fedavg = fit(FedAvg(), synthetic, attack).history_[-1]["test_accuracy"]
    clean = fit(FedAvg(), synthetic).history_[-1]["test_accuracy"]
    robust = fit(MultiKrum(4), synthetic, attack).history_[-1]["test_accuracy"]
    assert fedavg < 0.5 * clean
    assert robust > 0.8 * clean


def test_label_flip_poisons_only_malicious_clients(synthetic):
    train, _ = synthetic
    trainer = FederatedTrainer(FedAvg(), "softmax", rounds=1,
                               attack=attacks.LabelFlip([0, 2])).setup(train)
    problem, offsets = trainer._run.data, trainer._run.offsets
    k = trainer._run.model.k
    for cid, (_, y) in enumerate(train):
        got = problem.y[offsets[cid]:offsets[cid + 1]]
        assert np.array_equal(got, (k - 1 - y) if cid in (0, 2) else y)


def test_attacked_rounds_are_deterministic_and_counted(synthetic):
    attack = attacks.GaussianNoise([1, 5], 0.5)
    a = fit(FedMedian(), synthetic, attack, rounds=3, n_workers=1)
    b = fit(FedMedian(), synthetic, attack, rounds=3, n_workers=2)
    assert np.array_equal(a.theta_, b.theta_)
    assert all(record["malicious"] == 2 for record in a.history_)


def test_trainer_rejects_a_non_attack(synthetic):
    with pytest.raises(TypeError, match="attack"):
        FederatedTrainer(FedAvg(), "softmax", attack="sign flip").fit(synthetic[0])


@pytest.mark.mpi
@pytest.mark.parametrize("make", [
    lambda: FedAdam(eta=0.01, aggregator=FedTrimmedAvg(0.2)), lambda: Bulyan(1),
    lambda: CenteredClipping(0.5), lambda: FedYogi(aggregator=Scaffold()),
], ids=["adam-trimmed", "bulyan", "cclip", "yogi-scaffold"])
def test_bit_identical_for_any_ranks_under_attack(make):
    from cyfed.comm import LocalComm, get_comm
    devices = make_fedprox_synthetic(1.0, 1.0, n_devices=12, seed=5)
    for attack in (attacks.LabelFlip([0, 7]), attacks.ALittleIsEnough([3, 8])):
        params = dict(rounds=4, clients_per_round=8, local_epochs=1, batch_size=10, lr=0.01,
                      seed=2, attack=attack)
        alone = FederatedTrainer(make(), "softmax", comm=LocalComm(), **params).fit(devices)
        spread = FederatedTrainer(make(), "softmax", comm=get_comm(), **params).fit(devices)
        np.testing.assert_array_equal(spread.theta_, alone.theta_)
