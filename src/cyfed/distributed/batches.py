"""The random draws of data-parallel GD, from the *global* row index space.

Every draw comes from a generator seeded by (seed, t), so each rank draws the
same global rows and keeps the ones it holds: the trajectory does not depend
on the number of ranks.
"""
import numpy as np


def minibatch(seed, t, batch_size, n_global, offset, n_local):
    """This rank's rows of iteration t's global mini-batch of batch_size rows drawn
    without replacement (None: batch_size is None, every row)."""
    if batch_size is None:
        return None
    rng = np.random.default_rng([seed, t])
    batch = rng.choice(n_global, size=batch_size, replace=False)
    mine = batch[(batch >= offset) & (batch < offset + n_local)] - offset
    return np.sort(mine).astype(np.intp)


def poisson_batch(seed, t, q, n_global, offset, n_local):
    """(this rank's rows of iteration t's Poisson batch, the global batch size).

    Every global row is in the batch independently with probability q: the gaps
    between consecutive drawn rows are Geometric(q), so drawing them costs O(qN)
    and every rank draws the same positions from (seed, t); the chunk size
    depends only on (q, N), so the draw is independent of the rank count too.
    """
    rng = np.random.default_rng([seed, t])
    mean = q * n_global
    chunk = int(mean + 4 * np.sqrt(mean) + 16)   # a second chunk is rarely needed
    parts, last = [], -1
    while last < n_global:
        positions = last + np.cumsum(rng.geometric(q, size=chunk))
        parts.append(positions)
        last = positions[-1]
    batch = np.concatenate(parts)
    size = int(np.searchsorted(batch, n_global))
    lo, hi = np.searchsorted(batch[:size], [offset, offset + n_local])
    return (batch[lo:hi] - offset).astype(np.intp), size


def dp_noise(seed, t, std, n_params, frozen):
    """DP-SGD's N(0, std^2) noise of iteration t: the same draw on every rank (zero on
    the frozen parameters, which have no gradient to privatise)."""
    noise = np.random.default_rng([seed, t, 1]).normal(0.0, std, size=n_params)
    noise[frozen] = 0
    return noise
