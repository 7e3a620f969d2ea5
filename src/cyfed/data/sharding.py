"""Data placement: which rows a rank holds, and loading only those rows.

Rows are split into contiguous blocks in rank order, the first n % size ranks
taking one row more (so every rank's block is known from (n, rank, size) alone).
"""
import numpy as np


def shard_rows(n, rank, size):
    """The slice of rows 0..n-1 that `rank` of `size` holds (contiguous, rank order)."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size, got rank={rank}, size={size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def load_shard(path_X, path_y, comm=None):
    """This rank's rows of X (n, d) and y (n,) stored as .npy files.

    Both files are memory-mapped, so a rank reads only its own block of rows
    from disk, never the whole file.  Returns C-contiguous in-memory arrays.
    """
    from cyfed.comm import LocalComm

    comm = LocalComm() if comm is None else comm
    X = np.load(path_X, mmap_mode="r")
    y = np.load(path_y, mmap_mode="r")
    if X.ndim != 2:
        raise ValueError(f"{path_X}: X must be 2-d (n_samples, n_features), got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{path_y}: y must have shape ({X.shape[0]},), got shape {y.shape}")
    rows = shard_rows(X.shape[0], comm.rank, comm.size)
    return np.ascontiguousarray(X[rows]), np.ascontiguousarray(y[rows])
