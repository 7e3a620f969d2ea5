"""The clients a rank hosts: which ones, and their rows validated and concatenated."""
import numpy as np
from scipy import sparse

from cyfed import _validation as check
from cyfed.data import shard_rows


def hosted_clients(clients, comm):
    """({client id: (X, y)} of the clients this rank hosts, N the number of clients).

    `clients` is a sequence of (X_k, y_k) for every id (split over the ranks in
    contiguous blocks) or this rank's {id: (X_k, y_k)} (collective: the ranks'
    dicts must together hold ids 0..N-1 exactly once).
    """
    if isinstance(clients, dict):
        hosted = dict(clients)
        ids = comm.allgather_obj(sorted(hosted))
        every = sorted(i for part in ids for i in part)
        n = len(every)
        if every != list(range(n)):
            raise ValueError("the ranks' client dicts must together hold ids 0..N-1 "
                             "exactly once")
    else:
        n = len(clients)
        part = shard_rows(n, comm.rank, comm.size)
        hosted = {i: clients[i] for i in range(part.start, part.stop)}
    return hosted, n


def _client_rows(model, cid, X_k, y_k):
    """(X_k, y_k) validated: a dense C-contiguous float matrix or CSR, finite, >= 1 row."""
    name = f"X of client {cid}"
    sparse_X = check.is_sparse(X_k)
    X_k = (check.csr if sparse_X else check.matrix)(X_k, name, allow_empty=True)
    if X_k.shape[0] == 0:
        raise ValueError(f"client {cid} has 0 rows")
    y_k = check.vector(y_k, f"y of client {cid}", X_k.shape[0], X_k.dtype)
    (check.finite_csr if sparse_X else check.finite)(X_k, name)
    check.finite(y_k, f"y of client {cid}")
    model.check_targets(y_k, f"y of client {cid}")
    return X_k, y_k


def _stack(parts, ids):
    """The clients' X (all dense or all CSR) and y stacked in id order, in one dtype."""
    kind = {c: "sparse" if check.is_sparse(p[0]) else "dense" for c, p in zip(ids, parts)}
    if len(set(kind.values())) > 1:
        first = {k: next(c for c in ids if kind[c] == k) for k in ("sparse", "dense")}
        raise ValueError(f"clients mix sparse and dense X (client {first['sparse']} is "
                         f"sparse, client {first['dense']} dense); give every client the "
                         "same kind (scipy.sparse.csr_matrix(X) or X.toarray())")
    dtype = np.result_type(*[p[0].dtype for p in parts])
    if kind[ids[0]] == "sparse":
        X = sparse.vstack([p[0] for p in parts], format="csr", dtype=dtype)
    else:
        X = np.concatenate([p[0] for p in parts]).astype(dtype, copy=False)
    return X, np.concatenate([p[1] for p in parts]).astype(dtype, copy=False)


def concatenate(model, hosted):
    """(data, offsets, ids, top label): the hosted clients' rows validated and
    concatenated in id order, client ids[i] owning rows offsets[i]:offsets[i + 1].

    The clients' X are all dense arrays or all scipy.sparse matrices (stacked into
    one CSR matrix); a mix is refused rather than silently densified or sparsified.
    """
    ids = sorted(hosted)
    parts = [_client_rows(model, cid, *hosted[cid]) for cid in ids]
    if len({p[0].shape[1] for p in parts}) > 1:
        raise ValueError("clients disagree on the number of features: "
                         + ", ".join(f"client {c}: {p[0].shape[1]}" for c, p in zip(ids, parts)))
    X, y = _stack(parts, ids) if parts else (np.empty((0, 1)), np.empty(0))
    offsets = np.zeros(len(ids) + 1, dtype=np.intp)
    offsets[1:] = np.cumsum([p[0].shape[0] for p in parts])
    data = model.prepare(X, y)
    return data, offsets, np.array(ids, dtype=np.int64), model.top_label(data)


def poison_labels(attack, model, data, offsets, ids, n_classes):
    """The attack's label poisoning, in place, on this rank's malicious clients."""
    if attack is None:
        return
    loss = {"real": "squared", "binary": "logistic", "classes": "softmax"}[model.targets]
    for pos in np.flatnonzero(attack.malicious(ids)):
        rows = slice(offsets[pos], offsets[pos + 1])
        data.y[rows] = attack.poison_labels(data.y[rows], loss, n_classes)
