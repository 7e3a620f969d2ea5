"""Client-level differential privacy (DP-FedAvg) in federated rounds: clipping, the
noise's standard deviation, adaptive clipping, accounting, and how it composes."""
import math

import numpy as np
import pytest

from cyfed import accountant
from cyfed.comm import LocalComm, get_comm
from cyfed.data import iid, make_fedprox_synthetic
from cyfed.federated import FederatedTrainer
from cyfed.privacy import ClientDP
from cyfed.private_rounds import PrivateRounds
from cyfed.strategies import FedAdam, FedAvg, FedMedian, FedProx, Scaffold

COMM = get_comm()


def regression_clients(n=1200, d=4, n_clients=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.3 + 0.1 * rng.standard_normal(n)
    return [(X[p], y[p]) for p in iid(n, n_clients, seed=seed)]


def sample_std_within(values, std, sigmas=6):
    """|sample std / std - 1| within `sigmas` standard errors (1 / sqrt(2 n))."""
    values = np.ravel(values)
    ratio = np.sqrt(np.mean(values ** 2)) / std
    assert abs(ratio - 1) < sigmas / math.sqrt(2 * values.size), ratio


def test_clipping_keeps_every_update_within_the_clip_norm():
    rng = np.random.default_rng(0)
    updates = rng.standard_normal((50, 30)) * rng.uniform(0.1, 3, size=(50, 1))
    rounds = PrivateRounds(ClientDP(clip_norm=2.0, noise_multiplier=0.0), None, 0, 0.1, 50.0, 5)
    rows = rounds.client_rows(updates, np.zeros(30), np.full(50, 10.0), np.arange(50), 0)
    norms = np.linalg.norm(updates, axis=1)
    clipped = np.linalg.norm(rows[:, :30], axis=1)
    assert np.all(clipped <= 2.0 * (1 + 1e-12))
    np.testing.assert_array_equal(rows[norms <= 2, :30], updates[norms <= 2])
    np.testing.assert_allclose(rows[norms > 2, :30],
                               updates[norms > 2] * (2 / norms[norms > 2])[:, None], rtol=1e-14)
    np.testing.assert_array_equal(rows[:, 30], 1.0)            # uniform weights
    np.testing.assert_array_equal(rows[:, 31], norms <= 2)     # adaptive clipping's bit


def test_central_noise_has_std_z_clip_over_m():
    z, S, m, p = 1.3, 0.7, 40.0, 20_000
    rounds = PrivateRounds(ClientDP(clip_norm=S, noise_multiplier=z), None, 3, 0.5, m, 5)
    theta = np.zeros(p)
    new, record = rounds.server_step(FedAvg(), theta, np.zeros(p + 2), 0, 80, rnd=0)
    sample_std_within(new, z * S / m)
    assert record["noise_multiplier"] == z and record["clip_norm"] == S
    again, _ = rounds.server_step(FedAvg(), theta, np.zeros(p + 2), 0, 80, rnd=0)
    np.testing.assert_array_equal(again, new)                   # seeded by (seed, round)
    other, _ = rounds.server_step(FedAvg(), theta, np.zeros(p + 2), 0, 80, rnd=1)
    assert not np.array_equal(other, new)


def test_distributed_shares_sum_to_the_central_noise():
    z, S, m, p = 0.9, 1.5, 25, 4000
    dp = ClientDP(clip_norm=S, noise_multiplier=z, noise="distributed")
    rounds = PrivateRounds(dp, None, 1, 0.25, float(m), 5)
    rows = rounds.client_rows(np.zeros((m, p)), np.zeros(p), np.ones(m), np.arange(m), rnd=2)
    np.testing.assert_array_equal(rows[:, -1], np.arange(m))     # the client ids ride along
    rows = rows[:, :-1]
    sample_std_within(rows[:, :p], z * S / math.sqrt(m))        # each client's share
    sample_std_within(rows[:, :p].sum(axis=0), z * S)           # the sum: full noise
    # a client's share depends on (seed, round, client id) only, not on its neighbours
    alone = rounds.client_rows(np.zeros((1, p)), np.zeros(p), np.ones(1), np.array([7]), rnd=2)
    np.testing.assert_array_equal(alone[0, :-1], rows[7])
    total = rows.sum(axis=0)
    new, _ = rounds.server_step(FedAvg(), np.zeros(p), total, m, 100, rnd=2)
    np.testing.assert_allclose(new, total[:p] / m)               # no second noise draw


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.9])
def test_adaptive_clipping_reaches_the_target_quantile(quantile):
    """Andrew et al. 2021: S tracks the quantile of the update norms (the noisy count
    of clients that were *not* clipped drives it)."""
    m, p = 200, 5
    dp = ClientDP(clip_norm=0.05, noise_multiplier=1.0, adaptive=True, target_quantile=quantile,
                  clip_lr=0.2)
    rounds = PrivateRounds(dp, None, 0, 0.1, float(m), 400)
    rng = np.random.default_rng(1)
    history = []
    for rnd in range(400):
        norms = rng.lognormal(0.0, 0.5, size=m)
        directions = rng.standard_normal((m, p))
        updates = directions / np.linalg.norm(directions, axis=1)[:, None] * norms[:, None]
        total, _ = rounds.server_sum(updates, np.zeros(p), np.arange(m))
        rounds.server_step(FedAvg(), np.zeros(p), total, m, 10 * m, rnd)
        history.append(rounds.clip_norm)
    target = math.exp(0.5 * _normal_quantile(quantile))         # lognormal(0, 0.5) quantile
    settled = np.array(history[200:])
    assert abs(np.median(settled) / target - 1) < 0.1, (np.median(settled), target)


def _normal_quantile(q):
    from statistics import NormalDist
    return NormalDist().inv_cdf(q)


def test_adaptive_noise_split_keeps_the_total_privacy():
    dp = ClientDP(clip_norm=1.0, noise_multiplier=1.0, adaptive=True, count_noise=5.0)
    z_delta = dp.update_noise(1.0, 100)
    # Theorem 1 of Andrew et al.: z^-2 = z_delta^-2 + (2 sigma_b)^-2
    assert math.isclose(z_delta ** -2 + (2 * 5.0) ** -2, 1.0, rel_tol=1e-12)
    with pytest.raises(ValueError, match="count_noise"):
        ClientDP(clip_norm=1.0, noise_multiplier=1.0, adaptive=True,
                 count_noise=0.4).update_noise(1.0, 100)


def fit(strategy=None, clients=None, **kwargs):
    params = dict(rounds=6, clients_per_round=6, local_epochs=2, batch_size=20, lr=0.05,
                  seed=3, comm=LocalComm())
    params.update(kwargs)
    return FederatedTrainer(strategy or FedAvg(), **params).fit(clients or regression_clients())


def test_without_noise_and_with_a_loose_clip_it_is_uniform_fedavg():
    """z = 0, S huge: theta + mean of (theta_k - theta) = unweighted FedAvg."""
    clients = [(X[:n], y[:n]) for (X, y), n in zip(regression_clients(), [40, 60, 100] * 4)]
    dp = fit(clients=clients, privacy=ClientDP(clip_norm=1e9, noise_multiplier=0.0))
    equal = [(X[:40], y[:40]) for X, y in clients]              # equal sizes: weights agree
    plain = fit(clients=equal)
    dp_equal = fit(clients=equal, privacy=ClientDP(clip_norm=1e9, noise_multiplier=0.0))
    np.testing.assert_allclose(dp_equal.coef_, plain.coef_, rtol=1e-10)
    assert not np.allclose(dp.coef_, fit(clients=clients).coef_, rtol=1e-6)   # weights differ


def test_epsilon_in_the_history_is_the_accountants():
    dp = ClientDP(clip_norm=1.0, noise_multiplier=1.1, delta=1e-5)
    trainer = fit(privacy=dp, rounds=5)
    eps = [r["epsilon"] for r in trainer.history_]
    expected = [accountant.epsilon(1.1, 6 / 12, t + 1, 1e-5) for t in range(5)]
    np.testing.assert_allclose(eps, expected, rtol=1e-12)
    assert all(a < b for a, b in zip(eps, eps[1:]))


def test_target_epsilon_calibrates_the_noise_before_training():
    dp = ClientDP(clip_norm=1.0, target_epsilon=8.0, delta=1e-5)
    trainer = fit(privacy=dp, rounds=10, sampling="poisson")
    z = trainer.history_[-1]["noise_multiplier"]
    assert trainer.history_[-1]["epsilon"] <= 8.0
    assert accountant.epsilon(z * 0.97, 0.5, 10, 1e-5) > 8.0    # not more noise than needed


def test_poisson_sampling_draws_each_client_with_probability_q():
    clients = regression_clients(n=2000, n_clients=100)
    trainer = fit(clients=clients, clients_per_round=20, sampling="poisson", rounds=40,
                  privacy=ClientDP(clip_norm=1.0, noise_multiplier=0.0), local_epochs=1)
    sizes = np.array([r["clients"] for r in trainer.history_])
    # Binomial(100, 0.2): mean 20, std 4; the mean of 40 rounds within 5 standard errors
    assert abs(sizes.mean() - 20) < 5 * 4 / math.sqrt(40)
    assert sizes.std() > 1


@pytest.mark.parametrize("strategy", [FedProx(mu=0.1), Scaffold(), FedAdam(eta=0.05)],
                         ids=["fedprox", "scaffold", "fedadam"])
@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_dp_composes_with_mean_based_strategies(strategy, noise):
    clients = regression_clients()
    X = np.concatenate([c[0] for c in clients])
    y = np.concatenate([c[1] for c in clients])
    dp = ClientDP(clip_norm=0.5, noise_multiplier=0.3, noise=noise, adaptive=True)
    trainer = fit(strategy, clients, privacy=dp, rounds=15, clients_per_round=12)
    mse = np.mean((trainer.predict(X) - y) ** 2)
    assert np.isfinite(mse) and mse < 0.5 * np.mean((y - y.mean()) ** 2)
    assert all("epsilon" in r and "unclipped_fraction" in r for r in trainer.history_)


def test_robust_aggregators_and_attacks_are_refused_where_they_cannot_work():
    from cyfed.attacks import SignFlip
    with pytest.raises(ValueError, match="FedMedian needs every client's update"):
        fit(FedMedian(), privacy=ClientDP(noise_multiplier=1.0))
    with pytest.raises(ValueError, match="attack simulation"):
        fit(privacy=ClientDP(noise_multiplier=1.0, noise="distributed"),
            attack=SignFlip(clients=[0]))
    fit(privacy=ClientDP(noise_multiplier=1.0), attack=SignFlip(clients=[0]), rounds=2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(clip_norm=0.0, noise_multiplier=1.0), "clip_norm"),
    (dict(noise_multiplier=-1.0), "noise_multiplier"),
    (dict(), "exactly one of noise_multiplier and target_epsilon"),
    (dict(noise_multiplier=1.0, target_epsilon=1.0), "exactly one"),
    (dict(target_epsilon=1.0, delta=None), "needs delta"),
    (dict(noise_multiplier=1.0, delta=2.0), "delta"),
    (dict(noise_multiplier=1.0, noise="local"), "noise"),
    (dict(noise_multiplier=1.0, target_quantile=1.0), "target_quantile"),
    (dict(noise_multiplier=1.0, clip_lr=0.0), "clip_lr"),
])
def test_bad_privacy_options_are_refused_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(privacy=ClientDP(**kwargs))


def test_bad_sampling_and_types_are_refused():
    with pytest.raises(ValueError, match="sampling"):
        fit(sampling="stratified")
    with pytest.raises(TypeError, match="privacy must be a cyfed.privacy.ClientDP"):
        fit(privacy={"clip_norm": 1.0})


def test_resume_with_adaptive_clipping_ends_bit_identical(tmp_path):
    dp = dict(clip_norm=0.2, noise_multiplier=0.5, adaptive=True)
    whole = fit(privacy=ClientDP(**dp), rounds=6)
    path = tmp_path / "run.npz"
    first = FederatedTrainer(FedAvg(), rounds=6, clients_per_round=6, local_epochs=2,
                             batch_size=20, lr=0.05, seed=3, privacy=ClientDP(**dp),
                             checkpoint=path)
    first.setup(regression_clients())
    for rnd in range(3):                 # stop after round 3, as a killed run would
        first.run_round(rnd)
    first._save(3)
    resumed = fit(privacy=ClientDP(**dp), rounds=6, checkpoint=path, resume=True)
    np.testing.assert_array_equal(resumed.coef_, whole.coef_)
    assert [r["clip_norm"] for r in resumed.history_] == [r["clip_norm"] for r in whole.history_]


@pytest.mark.mpi
@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_dp_rounds_are_bit_identical_for_any_ranks(noise):
    devices = make_fedprox_synthetic(1.0, 1.0, n_devices=12, seed=5)
    params = dict(rounds=4, fraction=0.5, local_epochs=2, batch_size=10, lr=0.01, seed=7,
                  dropout=0.2, sampling="poisson")

    def dp():
        return ClientDP(clip_norm=0.5, noise_multiplier=0.8, noise=noise, adaptive=True,
                        count_noise=2.0)

    alone = FederatedTrainer(FedAvg(), "softmax", comm=LocalComm(), privacy=dp(),
                             **params).fit(devices)
    spread = FederatedTrainer(FedAvg(), "softmax", comm=COMM, privacy=dp(),
                              **params).fit(devices)
    np.testing.assert_array_equal(spread.coef_, alone.coef_)
    assert spread.history_[-1]["epsilon"] == alone.history_[-1]["epsilon"]
