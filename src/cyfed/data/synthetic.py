"""Synthetic federated data: FedProx's Synthetic(alpha, beta) and a bag-of-words workload.

FedProx's Synthetic(alpha, beta) (Li et al. 2020, arXiv:1812.06127).  For device k:
n_k = int(lognormal(4, 2)) + 50 samples; u_k ~ N(0, alpha) (alpha a standard deviation,
as in the FedProx code),
W_k ~ N(u_k, 1) of shape (60, 10), b_k ~ N(u_k, 1); B_k ~ N(0, beta) (std),
v_k ~ N(B_k, 1) (60 entries); x ~ N(v_k, Sigma) with Sigma = diag(j^-1.2),
j = 1..60; y = argmax(x W_k + b_k).  alpha controls how much the devices'
models differ, beta how much their inputs do.  `iid=True` gives Synthetic-IID:
one W, b ~ N(0, 1) and x ~ N(0, Sigma) for every device.

`make_bag_of_words`: sparse text-like clients in the spirit of LEAF's Sent140
(Caldas et al. 2018, arXiv:1812.01097): Zipf token frequencies, power-law client
sizes, labels from a hidden linear model with a per-client shift.
"""
import numpy as np
from scipy import sparse

from cyfed.data.partition import quantity_skew

N_FEATURES = 60
N_CLASSES = 10


def make_fedprox_synthetic(alpha=1.0, beta=1.0, n_devices=30, *, iid=False, seed=0,
                           dtype=np.float64):
    """List of (X_k, y_k) per device: X_k (n_k, 60) in dtype, y_k (n_k,) int labels 0..9."""
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, n_devices).astype(int) + 50
    std = np.arange(1, N_FEATURES + 1) ** -0.6            # sqrt of Sigma's diagonal
    if iid:
        W_shared = rng.normal(0, 1, (N_FEATURES, N_CLASSES))
        b_shared = rng.normal(0, 1, N_CLASSES)
    devices = []
    for k in range(n_devices):
        if iid:
            W, b, v = W_shared, b_shared, np.zeros(N_FEATURES)
        else:
            u = rng.normal(0, alpha)         # alpha and beta are standard deviations,
            W = rng.normal(u, 1, (N_FEATURES, N_CLASSES))   # as in the FedProx code
            b = rng.normal(u, 1, N_CLASSES)
            v = rng.normal(rng.normal(0, beta), 1, N_FEATURES)
        X = v + std * rng.standard_normal((sizes[k], N_FEATURES))
        y = np.argmax(X @ W + b, axis=1)
        devices.append((X.astype(dtype), y))
    return devices


def make_bag_of_words(n_clients=1000, vocabulary=10_000, tokens_per_row=20, *, mean_rows=50,
                      power=0.5, zipf=1.1, n_classes=2, shift=0.5, seed=0, dtype=np.float64):
    """Sent140-like federated bag-of-words data: a list of (X_k CSR, y_k) per client.

    * Client sizes: `quantity_skew(n_clients * mean_rows, n_clients, power=power,
      min_size=1)`: the r-th largest client holds a share proportional to r^-power.
    * Rows: `tokens_per_row` tokens drawn independently with Zipf frequencies
      P(token t) proportional to (t + 1)^-zipf over the vocabulary; x = the row's
      token counts scaled to unit L2 norm (repeated tokens summed).
    * Labels: a hidden model Theta ~ N(0, 1) of shape (vocabulary, k) and, for
      heterogeneity, a client shift s_k ~ N(0, shift^2) per class; the label is
      argmax_c (x Theta_c - m_c + s_kc), m_c the mean of x Theta_c over all rows (so
      the classes are about balanced): a linear model separates each client, the
      shifts make the clients disagree.

    Parameters
    ----------
    n_clients, vocabulary, tokens_per_row, mean_rows : int >= 1
    power : float >= 0 -- size skew (0: equal sizes)
    zipf : float >= 0 -- token frequency exponent (0: uniform tokens)
    n_classes : int >= 2;  shift : float >= 0;  seed : int;  dtype : float32 or float64

    Returns
    -------
    list of (X_k, y_k): X_k a (n_k, vocabulary) scipy.sparse CSR matrix in dtype,
    y_k (n_k,) int labels 0..n_classes-1.  `split_devices` makes a test set of it.
    """
    for name, value, low in (("n_clients", n_clients, 1), ("vocabulary", vocabulary, 1),
                             ("tokens_per_row", tokens_per_row, 1),
                             ("mean_rows", mean_rows, 1), ("n_classes", n_classes, 2)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    for name, value in (("power", power), ("zipf", zipf), ("shift", shift)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    rng = np.random.default_rng(seed)
    sizes = [len(part) for part in quantity_skew(n_clients * mean_rows, n_clients,
                                                 power=power, seed=rng.integers(2**32))]
    n = sum(sizes)
    cdf = np.cumsum(np.arange(1, vocabulary + 1, dtype=np.float64) ** -float(zipf))
    tokens = np.minimum(np.searchsorted(cdf, rng.random((n, tokens_per_row)) * cdf[-1],
                                        side="right"), vocabulary - 1)
    counts = sparse.csr_matrix((np.ones(tokens.size), tokens.ravel(),
                                np.arange(0, tokens.size + 1, tokens_per_row)),
                               shape=(n, vocabulary))
    counts.sum_duplicates()
    row_norms = np.sqrt(np.add.reduceat(counts.data ** 2, counts.indptr[:-1]))
    X = counts.multiply(1.0 / row_norms[:, None]).tocsr()
    theta = rng.standard_normal((vocabulary, n_classes))
    shifts = np.repeat(shift * rng.standard_normal((n_clients, n_classes)), sizes, axis=0)
    scores = X @ theta
    y = np.argmax(scores - scores.mean(axis=0) + shifts, axis=1)
    X = sparse.csr_matrix(X, dtype=dtype)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [(X[lo:hi], y[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]


def split_devices(devices, test_fraction=0.2, *, seed=0):
    """Per-device train/test split: (train devices, (X_test, y_test) of all devices).

    Each device keeps a random (1 - test_fraction) of its rows for training (at
    least one row); the held-out rows of all devices form one test set, as in
    the FedProx evaluation.  Sparse devices (`make_bag_of_words`) give a CSR test X.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    train, X_test, y_test = [], [], []
    for X, y in devices:
        order = rng.permutation(len(y))
        n_test = min(int(round(test_fraction * len(y))), len(y) - 1)
        train.append((X[order[n_test:]], y[order[n_test:]]))
        X_test.append(X[order[:n_test]])
        y_test.append(y[order[:n_test]])
    X_test = (sparse.vstack(X_test, format="csr") if sparse.issparse(X_test[0])
              else np.concatenate(X_test))
    return train, (X_test, np.concatenate(y_test))
