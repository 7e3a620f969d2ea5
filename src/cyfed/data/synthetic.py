"""FedProx's Synthetic(alpha, beta) federated data (Li et al. 2020, arXiv:1812.06127).

For device k: n_k = int(lognormal(4, 2)) + 50 samples; u_k ~ N(0, alpha) (alpha a
standard deviation, as in the FedProx code),
W_k ~ N(u_k, 1) of shape (60, 10), b_k ~ N(u_k, 1); B_k ~ N(0, beta) (std),
v_k ~ N(B_k, 1) (60 entries); x ~ N(v_k, Sigma) with Sigma = diag(j^-1.2),
j = 1..60; y = argmax(x W_k + b_k).  alpha controls how much the devices'
models differ, beta how much their inputs do.  `iid=True` gives Synthetic-IID:
one W, b ~ N(0, 1) and x ~ N(0, Sigma) for every device.
"""
import numpy as np

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


def split_devices(devices, test_fraction=0.2, *, seed=0):
    """Per-device train/test split: (train devices, (X_test, y_test) of all devices).

    Each device keeps a random (1 - test_fraction) of its rows for training (at
    least one row); the held-out rows of all devices form one test set, as in
    the FedProx evaluation.
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
    return train, (np.concatenate(X_test), np.concatenate(y_test))
