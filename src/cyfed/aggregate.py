"""Aggregation rules: pure functions of client updates (one row per client).

The round driver never does arithmetic on updates; strategies call these.
Sums run in a fixed order (row by row, in the order given), never through a
threaded BLAS, so the result is bit-identical wherever it is computed.
"""
import numpy as np

from cyfed._simd import load

_kernels, _ = load("_aggregate")


def _updates(updates):
    U = np.asarray(updates)
    if U.ndim != 2 or U.shape[0] == 0:
        raise ValueError(f"updates must have shape (n_clients >= 1, n_params), got {U.shape}")
    if U.dtype not in (np.float32, np.float64):
        U = U.astype(np.float64)
    return U


def weighted_mean(updates, weights):
    """sum_i w_i u_i / sum_i w_i  (FedAvg with w_i = n_i; McMahan et al. 2017).

    updates : (K, d);  weights : (K,) with entries >= 0 and a positive sum.
    """
    U = _updates(updates)
    w = np.ascontiguousarray(weights, dtype=np.float64)
    if w.shape != (U.shape[0],):
        raise ValueError(f"weights must have shape ({U.shape[0]},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    total = w.sum()
    if not total > 0:
        raise ValueError("weights must have a positive sum")
    acc = np.empty(U.shape[1])
    _kernels.weighted_sum(np.ascontiguousarray(U), w, acc)
    return (acc / total).astype(U.dtype, copy=False)


def finite_rows(updates):
    """Boolean mask of the rows (clients) whose update is entirely finite."""
    U = np.ascontiguousarray(_updates(updates))
    out = np.empty(U.shape[0], dtype=np.uint8)
    _kernels.finite_rows(U, out)
    return out.view(bool)
