"""cyfed.attacks against hand-written numpy expectations."""
import numpy as np
import pytest
from scipy.stats import norm

from cyfed.attacks import (ALittleIsEnough, Attack, GaussianNoise, InnerProduct, LabelFlip,
                           Scaling, SignFlip)

# Reporting clients 0, 2, 5, 7; malicious 2, 7 and 9 (9 does not report): rows 1 and 3.
THETA = np.array([1.0, -2.0, 0.5])
IDS = np.array([0, 2, 5, 7], dtype=np.int64)
BAD = [2, 7, 9]
DELTAS = np.array([[1.0, 0.0, 2.0],      # honest: mu = [2, 0, 0], sigma = [1, 0, 2]
                   [5.0, 5.0, 5.0],
                   [3.0, 0.0, -2.0],
                   [-1.0, 0.0, 1.0]])
MODELS = THETA + DELTAS
EXTRA = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]])  # SCAFFOLD's dc_k columns

ALL_ATTACKS = [Attack(BAD), SignFlip(BAD, scale=2.0), GaussianNoise(BAD, std=0.5),
               Scaling(BAD, factor=3.0), LabelFlip(BAD), ALittleIsEnough(BAD),
               ALittleIsEnough(BAD, z=1.5), InnerProduct(BAD, epsilon=0.5)]


def messages(width):
    return np.hstack([MODELS, EXTRA])[:, :width]


@pytest.mark.parametrize("width", [3, 5], ids=["plain", "scaffold"])
@pytest.mark.parametrize("attack,malicious_models", [
    (SignFlip(BAD, scale=2.0), [[-9.0, -12.0, -9.5], [3.0, -2.0, -1.5]]),
    (Scaling(BAD, factor=3.0), [[16.0, 13.0, 15.5], [-2.0, -2.0, 3.5]]),
    (InnerProduct(BAD, epsilon=0.5), [[0.0, -2.0, 0.5]] * 2),
    (ALittleIsEnough(BAD, z=1.5), [[1.5, -2.0, -2.5]] * 2),
    # n = 4 reporting, f = 2: s = floor(4/2 + 1) - 2 = 1, z = Phi^-1(3/4)
    (ALittleIsEnough(BAD), [THETA + [2.0 - norm.ppf(0.75), 0.0, -2 * norm.ppf(0.75)]] * 2),
], ids=["signflip", "scaling", "innerproduct", "alie-z", "alie-zmax"])
def test_attack_matches_hand_computed_models(attack, malicious_models, width):
    msg = messages(width)
    out = attack.perturb(THETA, msg, IDS, np.random.default_rng(0))
    expected = msg.copy()
    expected[[1, 3], :3] = malicious_models
    np.testing.assert_allclose(out, expected, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(out[:, 3:], msg[:, 3:])


def random_round(seed=0, k=6, width=7):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(3), rng.standard_normal((k, width)), np.arange(0, 2 * k, 2)


@pytest.mark.parametrize("attack", ALL_ATTACKS, ids=repr)
def test_honest_rows_and_extra_columns_are_bit_identical_and_input_is_kept(attack):
    theta, msg, ids = random_round()
    before = msg.copy()
    out = attack.perturb(theta, msg, ids, np.random.default_rng(1))
    assert out.dtype == np.float64 and out.shape == msg.shape
    assert not np.shares_memory(out, msg)
    np.testing.assert_array_equal(msg, before)
    honest = ~np.isin(ids, BAD)
    np.testing.assert_array_equal(out[honest], msg[honest])
    np.testing.assert_array_equal(out[:, 3:], msg[:, 3:])


@pytest.mark.parametrize("attack", ALL_ATTACKS, ids=repr)
def test_round_without_malicious_clients_is_unchanged(attack):
    theta, msg, _ = random_round()
    out = attack.perturb(theta, msg, np.array([0, 1, 3, 4, 5, 6]), np.random.default_rng(1))
    np.testing.assert_array_equal(out, msg)
    assert out is not msg


@pytest.mark.parametrize("attack", [ALittleIsEnough([0, 2]), ALittleIsEnough([0, 2], z=1.0),
                                    InnerProduct([0, 2])], ids=repr)
def test_round_without_honest_clients_is_unchanged(attack):
    theta, msg, _ = random_round(k=2)
    out = attack.perturb(theta, msg, np.array([0, 2]), np.random.default_rng(1))
    np.testing.assert_array_equal(out, msg)


def test_gaussian_noise_draws_the_malicious_deltas_from_rng():
    theta, msg, ids = random_round()
    attack = GaussianNoise([2, 6, 7], std=0.5)
    first = attack.perturb(theta, msg, ids, np.random.default_rng(42))
    again = attack.perturb(theta, msg, ids, np.random.default_rng(42))
    other = attack.perturb(theta, msg, ids, np.random.default_rng(43))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[[1, 3], :3], other[[1, 3], :3])
    expected = msg.copy()
    expected[[1, 3], :3] = theta + np.random.default_rng(42).normal(0.0, 0.5, (2, 3))
    np.testing.assert_array_equal(first, expected)


@pytest.mark.parametrize("n,f,p", [(4, 1, 2 / 4), (10, 2, 6 / 10), (50, 12, 36 / 50),
                                   (2, 1, 1 / 2), (5, 3, 4 / 5), (10, 9, 9 / 10)])
def test_z_max_is_the_papers_bound(n, f, p):
    # p = (n - s)/n, s = floor(n/2 + 1) - f; for s <= 0 (malicious majority) s = 1
    assert ALittleIsEnough.z_max(n, f) == pytest.approx(norm.ppf(p), rel=1e-12, abs=1e-15)


def test_alie_default_z_uses_the_reporting_clients_of_the_round():
    theta, msg, ids = random_round(k=10, width=3)          # ids 0, 2, ..., 18
    out = ALittleIsEnough([4, 8, 100]).perturb(theta, msg, ids, np.random.default_rng(0))
    honest = msg[np.r_[0, 1, 3, 5:10]] - theta
    z = norm.ppf(6 / 10)                                   # n = 10, f = 2 -> s = 4
    row = theta + honest.mean(axis=0) - z * np.sqrt(np.mean((honest - honest.mean(0)) ** 2, 0))
    np.testing.assert_allclose(out[[2, 4]], [row, row], rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.float64])
@pytest.mark.parametrize("loss,y,flipped", [
    ("softmax", [0, 1, 2, 3, 1], [3, 2, 1, 0, 2]),
    ("logistic", [0, 1, 1, 0], [1, 0, 0, 1]),
    ("squared", [1.0, -2.0, 0.0], [-1.0, 2.0, 0.0]),
])
def test_label_flip(loss, y, flipped, dtype):
    got = LabelFlip([0]).poison_labels(np.array(y, dtype=dtype), loss, 4)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, flipped)


def test_base_attack_keeps_labels_and_builds_masks():
    y = np.array([0.0, 1.0])
    assert Attack([1]).poison_labels(y, "logistic", 2) is y
    attack = Attack(np.array([3, 1]))
    assert attack.clients == frozenset({1, 3})
    np.testing.assert_array_equal(attack.malicious(np.array([0, 1, 2, 3])),
                                  [False, True, False, True])
    assert Attack([]).malicious(np.arange(3)).tolist() == [False] * 3


def test_repr():
    assert repr(SignFlip({9, 2}, scale=2)) == "SignFlip(clients=[2, 9], scale=2.0)"
    assert repr(LabelFlip([1])) == "LabelFlip(clients=[1])"
    assert repr(ALittleIsEnough([0])) == "ALittleIsEnough(clients=[0], z=None)"
    assert repr(InnerProduct([0], 1)) == "InnerProduct(clients=[0], epsilon=1.0)"


@pytest.mark.parametrize("clients", [[-1], [1.5], ["a"], [True], 3, None])
def test_bad_clients_raise(clients):
    with pytest.raises(ValueError, match="clients must be"):
        Attack(clients)


@pytest.mark.parametrize("cls,name", [(SignFlip, "scale"), (GaussianNoise, "std"),
                                      (Scaling, "factor"), (InnerProduct, "epsilon")])
@pytest.mark.parametrize("value", [0, -1.0, np.nan, np.inf, "1", True, None])
def test_bad_magnitudes_raise(cls, name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
        cls([0], **{name: value})


@pytest.mark.parametrize("z", [np.nan, -np.inf, "1", True])
def test_bad_z_raises(z):
    with pytest.raises(ValueError, match="z must be"):
        ALittleIsEnough([0], z=z)


@pytest.mark.parametrize("n,f", [(1, 1), (4, 0), (4, 4), (4.0, 1)])
def test_bad_z_max_arguments_raise(n, f):
    with pytest.raises(ValueError, match="1 <= f < n"):
        ALittleIsEnough.z_max(n, f)


@pytest.mark.parametrize("y,loss,n_classes,match", [
    ([0, 1], "hinge", 2, "loss must be one of"),
    ([0, 1], "softmax", 0, "n_classes must be"),
    ([0, 1], "softmax", None, "n_classes must be"),
    ([0, 3], "softmax", 3, r"labels must lie in 0\.\.2"),
    ([-1, 0], "softmax", 3, r"labels must lie in 0\.\.2"),
])
def test_label_flip_rejects_bad_arguments(y, loss, n_classes, match):
    with pytest.raises(ValueError, match=match):
        LabelFlip([0]).poison_labels(np.array(y), loss, n_classes)


def test_perturb_rejects_mismatched_shapes():
    attack = SignFlip([0])
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="messages must have shape"):
        attack.perturb(np.zeros(4), np.zeros((2, 3)), np.array([0, 1]), rng)
    with pytest.raises(ValueError, match="messages must have shape"):
        attack.perturb(np.zeros(3), np.zeros(3), np.array([0]), rng)
    with pytest.raises(ValueError, match="client_ids must have shape"):
        attack.perturb(np.zeros(3), np.zeros((2, 3)), np.array([0, 1, 2]), rng)
