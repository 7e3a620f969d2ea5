"""Partitions of a data set's rows over federated clients.

Each partitioner returns a list of `n_clients` sorted int arrays of row indices,
disjoint and covering every row, and is deterministic for a seed (drawn from
`numpy.random.default_rng(seed)`, never from global state).
"""
import numpy as np


def _check_clients(n, n_clients, min_size=1):
    if not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise ValueError(f"n_clients must be an int >= 1, got {n_clients!r}")
    if n < n_clients * min_size:
        raise ValueError(f"{n} rows cannot give {n_clients} clients at least "
                         f"{min_size} row(s) each")


def _labels(labels):
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-d array, got shape {y.shape}")
    return y


def iid(n, n_clients, *, seed=0):
    """Shuffle rows 0..n-1 and deal them into n_clients nearly equal parts."""
    _check_clients(n, n_clients)
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, n_clients)]


def dirichlet(labels, n_clients, alpha, *, min_size=10, seed=0, max_tries=1000):
    """Label skew: each class's rows are split over clients in proportions ~ Dir(alpha).

    As in NIID-Bench and Flower Datasets: redrawn until every client holds at
    least `min_size` rows.  Small alpha (0.1) gives clients few classes; large
    alpha approaches IID.
    """
    y = _labels(labels)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    _check_clients(y.size, n_clients, min_size)
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(max_tries):
        parts = [[] for _ in range(n_clients)]
        for rows in classes:
            rows = rng.permutation(rows)
            cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, alpha))) * rows.size).astype(int)
            for client, piece in enumerate(np.split(rows, cuts[:-1])):
                parts[client].append(piece)
        sizes = [sum(p.size for p in part) for part in parts]
        if min(sizes) >= min_size:
            return [np.sort(np.concatenate(part)) for part in parts]
    raise ValueError(f"no Dirichlet({alpha}) split gave every one of {n_clients} clients "
                     f"{min_size} rows in {max_tries} draws; lower min_size or raise alpha")


def shards(labels, n_clients, *, shards_per_client=2, seed=0):
    """Pathological non-IID (McMahan et al. 2017): sort rows by label, cut them into
    n_clients * shards_per_client equal shards, give each client shards_per_client
    shards at random."""
    y = _labels(labels)
    n_shards = n_clients * shards_per_client
    _check_clients(y.size, n_shards)
    rng = np.random.default_rng(seed)
    by_label = np.argsort(y, kind="stable")
    pieces = np.array_split(by_label, n_shards)
    owner = rng.permutation(n_shards)
    return [np.sort(np.concatenate([pieces[s] for s in owner[c::n_clients]]))
            for c in range(n_clients)]


def quantity_skew(n, n_clients, *, alpha=0.5, power=None, min_size=1, seed=0):
    """Quantity skew: client sizes in proportions ~ Dir(alpha), or, with `power`, a
    power law (the r-th largest client gets a share proportional to r^-power, the
    ranks shuffled over the clients); at least min_size rows each, rows at random."""
    _check_clients(n, n_clients, min_size)
    rng = np.random.default_rng(seed)
    if power is not None:
        if not power >= 0:
            raise ValueError(f"power must be >= 0, got {power!r}")
        shares = rng.permutation(np.arange(1, n_clients + 1) ** -float(power))
        shares /= shares.sum()
    elif not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    else:
        shares = rng.dirichlet(np.full(n_clients, alpha))
    spare = n - n_clients * min_size
    sizes = min_size + np.floor(shares * spare).astype(int)
    sizes[: spare - (sizes.sum() - n_clients * min_size)] += 1     # hand out the remainder
    order = rng.permutation(n)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]
