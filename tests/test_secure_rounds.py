"""Federated rounds under secure aggregation, alone and composed with client-level DP:
the server's sum equals what the plain pipeline computes, up to the quantisation bound."""
import warnings

import numpy as np
import pytest

from cyfed.attacks import SignFlip
from cyfed.comm import LocalComm, get_comm
from cyfed.data import make_fedprox_synthetic
from cyfed.federated import FederatedTrainer
from cyfed.privacy import ClientDP
from cyfed.secagg import SecureAggregation
from cyfed.strategies import FedAdam, FedAvg, FedMedian, Krum, Scaffold

COMM = get_comm()


def clients_of_sizes(sizes, d=4, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.3 + 0.1 * rng.standard_normal(n)
    bounds = np.cumsum([0] + list(sizes))
    return [(X[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


PARAMS = dict(rounds=4, clients_per_round=8, local_epochs=2, batch_size=20, lr=0.05, seed=3,
              comm=LocalComm())


def fit(strategy=None, clients=None, **kwargs):
    params = dict(PARAMS, **kwargs)
    return FederatedTrainer(strategy or FedAvg(), **params).fit(
        clients or clients_of_sizes([100] * 12))


def test_secure_fedavg_is_weighted_fedavg_within_the_quantisation_error():
    clients = clients_of_sizes([60, 80, 100, 120] * 3)
    plain = fit(clients=clients)
    secure = fit(clients=clients, secure_aggregation=SecureAggregation(clip_range=2.0))
    # 8 clients, 32 bits: step = 4 / floor((2^32 - 1) / 8) ~ 7.5e-9 per coordinate,
    # and the weights (n_k / 1000) carry the same relative error
    np.testing.assert_allclose(secure.coef_, plain.coef_, atol=1e-6)
    assert not np.array_equal(secure.coef_, plain.coef_)         # it did go through the ring
    assert all(r["secagg_clients"] == 8 for r in secure.history_)


def test_clients_above_max_weight_weigh_as_max_weight():
    clients = clients_of_sizes([50, 400] * 6)
    capped = fit(clients=clients, secure_aggregation=SecureAggregation(clip_range=2.0,
                                                                        max_weight=50))
    uniform = fit(clients=clients, privacy=ClientDP(clip_norm=1e9, noise_multiplier=0.0))
    np.testing.assert_allclose(capped.coef_, uniform.coef_, atol=1e-6)


@pytest.mark.parametrize("strategy", [FedAvg(), Scaffold(), FedAdam(eta=0.05)],
                         ids=["fedavg", "scaffold", "fedadam"])
def test_dp_with_secure_aggregation_equals_dp_alone_up_to_quantisation(strategy):
    """clip -> noise share -> quantise -> mask: unmasking and dequantising give the
    same sum the plain distributed-DP pipeline adds up (the same seeded shares)."""
    def dp():
        return ClientDP(clip_norm=0.5, noise_multiplier=0.4, noise="distributed",
                        adaptive=True, count_noise=2.0)
    alone = fit(type(strategy)(**_init_args(strategy)), privacy=dp())
    secure = fit(type(strategy)(**_init_args(strategy)), privacy=dp(),
                 secure_aggregation=SecureAggregation(clip_range=4.0, neighbours=4))
    np.testing.assert_allclose(secure.coef_, alone.coef_, atol=1e-5)
    for a, b in zip(alone.history_, secure.history_):
        assert b["clip_norm"] == pytest.approx(a["clip_norm"], rel=1e-6)
        assert b["epsilon"] == a["epsilon"]


def _init_args(strategy):
    return {k: v for k, v in strategy.hyper_parameters().items() if k not in ("aggregator",)}


def test_an_abandoned_round_keeps_the_model_and_says_why():
    secure = SecureAggregation(clip_range=2.0, neighbours=2, threshold=3,
                               drop_after_masking=0.6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(secure_aggregation=secure, rounds=3)
    abandoned = [r for r in trainer.history_ if "secagg_abandoned" in r]
    assert abandoned, "no round lost enough clients; pick another seed"
    assert all("round abandoned" in r["secagg_abandoned"] for r in abandoned)
    assert any("the model is left as it was" in str(w.message) for w in caught)
    # the model after an abandoned round is the one before it
    rounds = FederatedTrainer(FedAvg(), secure_aggregation=secure, **dict(PARAMS, rounds=3))
    rounds.setup(clients_of_sizes([100] * 12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rnd in range(3):
            before = rounds.theta_.copy()
            record = rounds.run_round(rnd)
            if "secagg_abandoned" in record:
                np.testing.assert_array_equal(rounds.theta_, before)


@pytest.mark.parametrize("strategy", [FedMedian(), Krum(num_malicious=1)],
                         ids=["median", "krum"])
def test_robust_aggregators_are_refused_under_secure_aggregation(strategy):
    with pytest.raises(ValueError, match="needs every client's update, which secure "
                                         "aggregation does not give"):
        fit(strategy, secure_aggregation=SecureAggregation())


def test_attacks_and_bad_types_are_refused_under_secure_aggregation():
    with pytest.raises(ValueError, match="attack simulation"):
        fit(secure_aggregation=SecureAggregation(), attack=SignFlip(clients=[0]))
    with pytest.raises(TypeError, match="secure_aggregation must be"):
        fit(secure_aggregation={"bits": 32})
    with pytest.raises(ValueError, match="at least 2 sampled clients"):
        fit(secure_aggregation=SecureAggregation(), clients_per_round=1)


@pytest.mark.mpi
def test_secure_dp_rounds_are_bit_identical_for_any_ranks():
    devices = make_fedprox_synthetic(1.0, 1.0, n_devices=12, seed=5)
    params = dict(rounds=3, fraction=0.5, local_epochs=2, batch_size=10, lr=0.01, seed=7,
                  dropout=0.1)

    def run(comm):
        return FederatedTrainer(
            FedAvg(), "softmax", comm=comm,
            privacy=ClientDP(clip_norm=0.5, noise_multiplier=0.8, noise="distributed",
                             count_noise=2.0, adaptive=True),
            secure_aggregation=SecureAggregation(clip_range=3.0, neighbours="log"),
            **params).fit(devices)

    alone, spread = run(LocalComm()), run(COMM)
    np.testing.assert_array_equal(spread.coef_, alone.coef_)
    if COMM.rank == 0:
        assert [r["secagg_clients"] for r in spread.history_] == \
            [r["secagg_clients"] for r in alone.history_]
