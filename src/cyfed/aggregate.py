"""Aggregation rules: pure functions of client updates, one row per client.

`updates` is a (K, d) float32/float64 array (other numbers become float64);
results keep its dtype.  The round driver never does arithmetic on updates:
strategies call these.  Semantics follow Flower's aggregate functions where
Flower has one (weighted mean, median, trimmed mean, Krum/Multi-Krum, Bulyan).

Every sum runs in a fixed order (over client rows in the order given, per
coordinate block), never through a threaded BLAS, so results are bit-identical
for any `n_threads`; the one exception is Krum's distance step for K > 32
clients, which uses BLAS (see `krum_scores`).  A row holding NaN/Inf raises a
ValueError naming it (strategies drop such rows first, with a warning).

Order statistics (median, trimmed mean, Bulyan) run a comparator network
across client rows (Batcher's odd-even merge sort, pruned to the positions
needed), vectorised over coordinates: one comparator is a vector min and max.
"""
import functools

import numpy as np

from cyfed import _validation as check
from cyfed._simd import load

_kernels, _ = load("_aggregate")
_max_threads = load("_losses")[0].max_threads

#: Above this many clients Krum's pairwise distances use Gram matrices (BLAS) ...
EXACT_DISTANCES_MAX_K = 32
#: ... over blocks of this many coordinates.
GRAM_BLOCK = 8192


# -- validation ---------------------------------------------------------------------------

def _updates(updates):
    """A C-contiguous (K >= 1, d >= 1) float array."""
    U = check.real_array(updates, "updates")
    if U.ndim != 2 or U.shape[0] == 0 or U.shape[1] == 0:
        raise ValueError(f"updates must have shape (n_clients >= 1, n_params >= 1), "
                         f"got {U.shape}")
    return np.require(U, requirements=("C", "A"))


def _threads(n_threads):
    return check.n_threads(n_threads, _max_threads())


def _weights(weights, K, name="weights"):
    w = np.ascontiguousarray(check.real_array(weights, name), dtype=np.float64)
    if w.shape != (K,):
        raise ValueError(f"{name} must have shape ({K},) (one per client), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} must be finite and >= 0")
    if not w.sum() > 0:
        raise ValueError(f"{name} must have a positive sum")
    return w


def _raise_non_finite(U):
    bad = np.flatnonzero(~finite_rows(U))
    if len(bad):
        raise ValueError(f"updates hold NaN/Inf in row(s) {bad.tolist()} (client positions); "
                         "drop them first (strategies do, with a warning)")
    raise ValueError("the aggregate overflowed to Inf although every update is finite")


def _finite_or_raise(result, U):
    if not np.all(np.isfinite(result)):
        _raise_non_finite(U)
    return result


# -- means --------------------------------------------------------------------------------

def _weighted_sum(U, w, n_threads, divisor=1.0, out=None):
    """(sum_i w_i u_i) / divisor in float64, one pass; ValueError naming non-finite rows."""
    acc = np.empty(U.shape[1]) if out is None else out
    if not _kernels.weighted_sum(U, w, divisor, acc, n_threads):
        _raise_non_finite(U)
    return acc


def weighted_mean(updates, weights, n_threads=None):
    """sum_i w_i u_i / sum_i w_i  (FedAvg with w_i = n_i; McMahan et al. 2017).

    weights : (K,) finite, >= 0, with a positive sum.
    """
    U = _updates(updates)
    w = _weights(weights, U.shape[0])
    return _weighted_sum(U, w, _threads(n_threads), w.sum()).astype(U.dtype, copy=False)


# -- order statistics ---------------------------------------------------------------------

def _batcher(n):
    """Batcher's odd-even merge sort for n = 2^p values: comparators (a, b), a < b,
    min to a, as (phase size p, a, b)."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p):
                        pairs.append((p, a, b))
            k //= 2
        p *= 2
    return pairs


@functools.lru_cache(maxsize=64)
def _network(K, lo, hi):
    """(groups, group_size, comparators) leaving positions lo..hi-1 holding the sorted
    values' lo..hi-1 as a set.  Batcher's network for the next power of two,
    restricted to rows < K (absent rows act as +inf), pruned backwards to the
    comparators that can change that set; its first phases, which sort each aligned
    group of 16 (or 8) rows, run in registers for the whole groups (`groups`), the
    rest from the returned table.  (Running a pruned comparator changes nothing
    needed, so the register groups need no pruning.)"""
    size = 16 if K >= 16 else 8
    groups = K // size
    # backwards: 1 = only membership in [lo, hi) matters, 2 = the value matters
    state = [1 if lo <= r < hi else 0 for r in range(K)]
    kept = []
    for p, a, b in reversed(_batcher(1 << max(0, (K - 1).bit_length()))):
        if b >= K or (state[a] == state[b] and state[a] != 2):
            continue                      # absent row, both unused, or both only summed
        state[a] = state[b] = 2
        if p < size and b < groups * size:
            continue                      # inside a register-sorted group
        kept.append((a, b))
    net = np.array(kept[::-1], dtype=np.intc).reshape(-1, 2)
    net.setflags(write=False)
    return groups, size, net


def _network_mean(U, lo, hi, n_threads):
    out = np.empty(U.shape[1], dtype=U.dtype)
    groups, size, net = _network(U.shape[0], lo, hi)
    if not _kernels.network_mean(U, groups, size, net, lo, hi, out, n_threads):
        _raise_non_finite(U)
    return out


def median(updates, n_threads=None):
    """Coordinate-wise median (Yin et al. 2018; Flower's FedMedian): np.median(U, axis=0),
    the mean of the two middle values for even K.  Sample counts are ignored."""
    U = _updates(updates)
    K = U.shape[0]
    return _network_mean(U, (K - 1) // 2, K // 2 + 1, _threads(n_threads))


def trimmed_mean(updates, beta, n_threads=None):
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018; Flower's FedTrimmedAvg):
    cut int(beta K) values from each tail, average the rest -- scipy.stats.trim_mean(U,
    beta, axis=0).  beta in [0, 0.5)."""
    U = _updates(updates)
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.number)) \
            or not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta!r}")
    K = U.shape[0]
    cut = int(beta * K)
    return _network_mean(U, cut, K - cut, _threads(n_threads))


# -- distance-based rules -----------------------------------------------------------------

def _pair_sq_dists(U, n_threads):
    """(K, K) squared Euclidean distances.

    Up to EXACT_DISTANCES_MAX_K rows: exact differences (compiled).  Above: the Gram
    identity ||a||^2 + ||b||^2 - 2 a.b on one BLAS product U U^T, kept only when its
    rounding error, about sqrt(d) eps (||a||^2 + ||b||^2), is below 1e-12 of every
    distance (well-separated float64 updates); otherwise (updates close together relative to their norms, where the
    identity cancels) Gram blocks of the rows' differences to row 0, in float64."""
    K, d = U.shape
    if K <= EXACT_DISTANCES_MAX_K:
        D = np.empty((K, K))
        _kernels.pair_sq_dists(U, D, n_threads)
        return _finite_or_raise(D, U)
    G = (U @ U.T).astype(np.float64)
    sq = np.diag(G)
    D = sq[:, None] + sq[None, :] - 2 * G
    error = np.sqrt(d) * np.finfo(U.dtype).eps * (sq[:, None] + sq[None, :])
    np.fill_diagonal(D, np.inf)
    if not np.all(D >= 1e12 * error):
        G = np.zeros((K, K))
        for j in range(0, d, GRAM_BLOCK):
            C = np.subtract(U[:, j:j + GRAM_BLOCK], U[0, j:j + GRAM_BLOCK], dtype=np.float64)
            G += C @ C.T
        sq = np.diag(G)
        D = np.maximum(sq[:, None] + sq[None, :] - 2 * G, 0.0)
    np.fill_diagonal(D, 0.0)
    return _finite_or_raise(D, U)


def _check_byzantine(K, num_malicious, factor, name):
    f = check.int_at_least(num_malicious, "num_malicious", 0)
    if K < factor * f + 3:
        raise ValueError(f"{name} needs n_clients >= {factor}*num_malicious + 3 = "
                         f"{factor * f + 3}, got {K} clients for num_malicious={f}")
    return f


def _scores(D, f):
    """Krum scores from a distance matrix: per row, the sum of its max(1, K - f - 2)
    smallest distances to the other rows (in increasing order)."""
    K = D.shape[0]
    if K == 1:
        return np.zeros(1)
    off = D + np.diag(np.full(K, np.inf))
    nearest = np.sort(off, axis=1)[:, :max(1, K - f - 2)]
    return nearest.sum(axis=1)


def krum_scores(updates, num_malicious, n_threads=None):
    """Krum scores (Blanchard et al. 2017): score_i = sum of the squared distances
    from u_i to its max(1, K - f - 2) nearest other updates.  Needs K >= 2f + 3.

    Distances are exact differences for K <= EXACT_DISTANCES_MAX_K; above, they come
    from a Gram matrix on BLAS (of the updates, or, where that would cancel, of
    their differences to the first update)."""
    U = _updates(updates)
    f = _check_byzantine(U.shape[0], num_malicious, 2, "Krum")
    return _scores(_pair_sq_dists(U, _threads(n_threads)), f)


def krum(updates, num_malicious, num_to_keep=1, weights=None, n_threads=None):
    """Krum / Multi-Krum (Blanchard et al. 2017; Flower's aggregate_krum).

    num_to_keep = 1: the update with the lowest score (the first on ties), as is.
    num_to_keep = m > 1: the weighted mean (weights: sample counts; default equal)
    of the m lowest-scoring updates, added in client order.  Needs K >= 2f + 3.
    """
    U = _updates(updates)
    K = U.shape[0]
    m = check.int_at_least(num_to_keep, "num_to_keep", 1)
    if m > K:
        raise ValueError(f"num_to_keep must be <= the number of clients {K}, got {m}")
    w = np.ones(K) if weights is None else _weights(weights, K)
    scores = krum_scores(U, num_malicious, n_threads)
    if m == 1:
        return U[int(np.argmin(scores))].copy()
    best = np.sort(np.argsort(scores, kind="stable")[:m])
    if not w[best].sum() > 0:
        raise ValueError("weights of the selected updates sum to 0")
    return weighted_mean(U[best], w[best], n_threads)


def bulyan(updates, num_malicious, n_threads=None):
    """Bulyan (El Mhamdi et al. 2018; Flower's aggregate_bulyan over Krum).  Needs K >= 4f + 3.

    Select theta = K - 2f updates by repeated Krum (each time on the updates not yet
    selected, with the same f); then per coordinate average the beta = theta - 2f
    selected values closest to the selected updates' coordinate median.  Ties in
    distance go to the earlier-selected update (Flower's argpartition leaves them
    unspecified).
    """
    U = _updates(updates)
    K = U.shape[0]
    f = _check_byzantine(K, num_malicious, 4, "Bulyan")
    nt = _threads(n_threads)
    D = _pair_sq_dists(U, nt)
    remaining = list(range(K))
    selected = []
    for _ in range(K - 2 * f):
        sub = np.array(remaining)
        best = int(np.argmin(_scores(D[np.ix_(sub, sub)], f)))
        selected.append(remaining.pop(best))
    S = U[selected]
    beta = len(selected) - 2 * f
    ref = median(S, nt)
    closest = np.argsort(np.abs(S - ref), axis=0, kind="stable")[:beta]
    return np.take_along_axis(S, closest, axis=0).mean(axis=0).astype(U.dtype, copy=False)


def _sq_dists_to(U, center, n_threads):
    out = np.empty(U.shape[0])
    _kernels.sq_dists_to(U, np.ascontiguousarray(center, dtype=np.float64), out, n_threads)
    return _finite_or_raise(out, U)


def geometric_median(updates, weights=None, eps=1e-6, maxiter=100, tol=1e-7, n_threads=None):
    """Geometric median by smoothed Weiszfeld iterations (RFA, Pillutla et al. 2022):
    argmin_v sum_i w_i ||u_i - v||.  From v = the weighted mean, repeat

        b_i = w_i / max(eps, ||u_i - v||),   v <- sum_i b_i u_i / sum_i b_i

    until ||v_new - v|| <= tol * max(1, ||v||) or maxiter iterations.  Two passes
    over the updates per iteration, no temporaries of their size.
    """
    U = _updates(updates)
    w = np.ones(U.shape[0]) if weights is None else _weights(weights, U.shape[0])
    eps = check.positive_float(eps, "eps")
    maxiter = check.int_at_least(maxiter, "maxiter", 1)
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    nt = _threads(n_threads)
    v = _weighted_sum(U, w, nt, w.sum())
    v_new = np.empty_like(v)                 # two buffers, swapped: no fresh pages per step
    for _ in range(maxiter):
        b = w / np.maximum(eps, np.sqrt(_sq_dists_to(U, v, nt)))
        _weighted_sum(U, b, nt, b.sum(), out=v_new)
        step_sq = _sq_dists_to(v_new[None, :], v, nt)[0]
        v, v_new = v_new, v
        if step_sq <= tol ** 2 * max(1.0, float(np.einsum("i,i", v, v))):
            break
    return v.astype(U.dtype, copy=False)


def centered_clipping(updates, tau, center=None, iterations=1, n_threads=None):
    """Centered clipping (Karimireddy, He & Jaggi 2021): from v = center (default 0),
    `iterations` times

        v <- v + (1/K) sum_i (u_i - v) min(1, tau / ||u_i - v||)

    (a row at distance 0 adds nothing).  tau > 0.
    """
    U = _updates(updates)
    K, d = U.shape
    tau = check.positive_float(tau, "tau")
    iterations = check.int_at_least(iterations, "iterations", 1)
    v = np.zeros(d) if center is None else np.array(check.vector(center, "center", d,
                                                                  np.float64))
    if not np.all(np.isfinite(v)):
        raise ValueError("center must be finite")
    nt = _threads(n_threads)
    for _ in range(iterations):
        dist = np.sqrt(_sq_dists_to(U, v, nt))
        c = np.minimum(1.0, tau / np.where(dist > 0, dist, np.inf)) / K
        # v + sum_i c_i (u_i - v) = sum_i c_i u_i + (1 - sum_i c_i) v
        v = _weighted_sum(U, c, nt) + (1.0 - c.sum()) * v
    return v.astype(U.dtype, copy=False)


def row_norms(updates, n_threads=None):
    """||u_i|| for every row, in float64 (rows whose squared norm under- or overflows
    are measured again with scaling)."""
    U = _updates(updates)
    out = np.empty(U.shape[0])
    _kernels.sq_dists_to(U, np.zeros(U.shape[1]), out, _threads(n_threads))
    norms = np.sqrt(out)
    redo = (out == 0) | ~np.isfinite(out)
    for i in np.flatnonzero(redo):
        row = U[i].astype(np.float64)
        if not np.all(np.isfinite(row)):
            _raise_non_finite(U)
        top = np.max(np.abs(row))
        norms[i] = top * np.sqrt(np.sum((row / top) ** 2)) if top > 0 else 0.0
    return norms


def clip_by_norm(updates, max_norm, n_threads=None):
    """Each row scaled by min(1, max_norm / ||row||): a (K, d) copy."""
    U = _updates(updates)
    max_norm = check.positive_float(max_norm, "max_norm")
    norms = row_norms(U, n_threads)
    scale = np.ones_like(norms)
    big = norms > max_norm
    scale[big] = max_norm / norms[big]
    return U * scale[:, None].astype(U.dtype)


def finite_rows(updates):
    """Boolean mask of the rows (clients) whose update is entirely finite."""
    U = _updates(updates)
    out = np.empty(U.shape[0], dtype=np.uint8)
    _kernels.finite_rows(U, out)
    return out.view(bool)
