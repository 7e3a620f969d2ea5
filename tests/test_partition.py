"""Federated partitioners and the FedProx synthetic data set."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyfed.data import dirichlet, iid, make_fedprox_synthetic, quantity_skew, shards


def assert_partition(parts, n, n_clients):
    assert len(parts) == n_clients
    allrows = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(allrows), np.arange(n))     # disjoint and complete
    assert all(np.all(np.diff(p) > 0) for p in parts)                   # sorted, no repeats


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 2000), n_clients=st.integers(1, 50), seed=st.integers(0, 10))
def test_iid_is_a_balanced_partition(n, n_clients, seed):
    if n < n_clients:
        with pytest.raises(ValueError, match="n_clients|rows"):
            iid(n, n_clients, seed=seed)
        return
    parts = iid(n, n_clients, seed=seed)
    assert_partition(parts, n, n_clients)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 500)
    def mean_classes(alpha):
        parts = dirichlet(labels, 20, alpha, min_size=10, seed=1)
        assert_partition(parts, labels.size, 20)
        assert min(p.size for p in parts) >= 10
        return np.mean([np.unique(labels[p]).size for p in parts])
    assert mean_classes(0.1) < mean_classes(1.0) < mean_classes(100.0)
    assert mean_classes(100.0) == pytest.approx(10, abs=0.5)


def test_dirichlet_is_reproducible_and_validates():
    labels = np.arange(300) % 3
    np.testing.assert_array_equal(dirichlet(labels, 5, 0.5, seed=3)[2],
                                  dirichlet(labels, 5, 0.5, seed=3)[2])
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(labels, 5, 0.0)
    with pytest.raises(ValueError, match="rows"):
        dirichlet(labels, 50, 0.5, min_size=10)


def test_shards_give_each_client_few_labels():
    labels = np.repeat(np.arange(10), 600)        # McMahan's 200 shards of 300 -> here 100 x 60
    parts = shards(labels, 50, shards_per_client=2, seed=0)
    assert_partition(parts, labels.size, 50)
    assert all(np.unique(labels[p]).size <= 2 for p in parts)
    assert {p.size for p in parts} == {120}


def test_quantity_skew_sizes():
    parts = quantity_skew(10_000, 40, alpha=0.3, min_size=5, seed=2)
    assert_partition(parts, 10_000, 40)
    sizes = np.array([p.size for p in parts])
    assert sizes.min() >= 5 and sizes.max() > 5 * np.median(sizes)


def test_fedprox_synthetic_matches_the_paper_recipe():
    devices = make_fedprox_synthetic(1.0, 1.0, n_devices=30, seed=0)
    assert len(devices) == 30
    for X, y in devices:
        assert X.shape[1] == 60 and X.shape[0] >= 50 and y.shape == (X.shape[0],)
        assert y.min() >= 0 and y.max() <= 9
    # the sizes follow int(lognormal(4, 2)) + 50 for the same generator
    sizes = np.random.default_rng(0).lognormal(4, 2, 30).astype(int) + 50
    assert [X.shape[0] for X, _ in devices] == list(sizes)
    # feature j has variance ~ j^-1.2 around the device mean
    X = max(devices, key=lambda d: d[0].shape[0])[0]
    var = X.var(axis=0)
    expected = np.arange(1, 61) ** -1.2
    assert np.median(np.abs(var / expected - 1)) < 0.2


def test_fedprox_synthetic_heterogeneity():
    """Synthetic(0,0) and IID devices share one labelling rule; Synthetic(1,1) devices don't."""
    def label_disagreement(devices):
        # fit one least-squares multinomial proxy per device and compare class frequencies
        freqs = np.array([np.bincount(y, minlength=10) / y.size for _, y in devices])
        return np.mean(np.abs(freqs - freqs.mean(axis=0)))
    hetero = label_disagreement(make_fedprox_synthetic(1.0, 1.0, 30, seed=4))
    homo = label_disagreement(make_fedprox_synthetic(0.0, 0.0, 30, iid=True, seed=4))
    assert hetero > homo
    assert make_fedprox_synthetic(0.5, 0.5, 3, seed=9, dtype=np.float32)[0][0].dtype == np.float32


def test_quantity_skew_power_law():
    parts = quantity_skew(100_000, 50, power=1.0, min_size=1, seed=3)
    assert_partition(parts, 100_000, 50)
    sizes = np.sort([p.size for p in parts])[::-1]
    # share of the r-th largest client ~ 1/r: size_1 / size_r ~ r
    ratios = sizes[0] / sizes[[1, 4, 9, 49]]
    np.testing.assert_allclose(ratios, [2, 5, 10, 50], rtol=0.05)
    with pytest.raises(ValueError, match="power"):
        quantity_skew(100, 5, power=-1.0)
