"""How the secure-aggregation protocol moves between ranks: every step is a
gather to the server (rank 0) and a scatter back, and an error anywhere reaches
every rank as the same exception, so no rank is left waiting in a collective."""
import numpy as np

from cyfed.comm import on_rank


class SecAggError(RuntimeError):
    """A secure-aggregation round was abandoned (too many dropouts, a protocol violation)."""


class _Abort:
    """Sent instead of a message when a rank or the server abandons the round."""

    def __init__(self, exc, rank):
        self.kind = next((k for k in (ValueError, TypeError) if isinstance(exc, k)), SecAggError)
        text = str(exc)
        if self.kind is SecAggError and not text.startswith("round abandoned"):
            text = f"round abandoned: {type(exc).__name__}: {text}"
        self.message = on_rank(rank, text)

    def error(self):
        return self.kind(self.message)


def _exchange(comm, compute, serve):
    """Collective: one client -> server -> client step of the protocol.

    Every rank runs compute() (its clients' messages), root gathers them and runs
    serve(list per rank) -> list of per-rank replies, scattered back.  An exception
    anywhere becomes an `_Abort` that every rank receives and raises (a rank that
    failed raises its own exception), so no rank is left waiting in a collective.
    """
    try:
        payload, error = compute(), None
    except Exception as exc:                 # noqa: BLE001 -- forwarded to every rank
        payload, error = _Abort(exc, comm.rank), exc
    gathered = comm.gather_obj(payload, root=0)
    return _reply(comm, gathered, serve, error)


def _exchange_masked(comm, compute, server, d, dtype):
    """Phase 2: (ids, clipped) gathered as objects, masked vectors by the buffer gatherv."""
    try:
        (meta, buf), error = compute(), None
    except Exception as exc:                 # noqa: BLE001 -- forwarded to every rank
        meta, buf, error = _Abort(exc, comm.rank), np.empty(0, dtype=dtype), exc
    gathered = comm.gather_obj(meta, root=0)
    flat, _ = comm.gatherv(buf, root=0)

    def collect(got):
        ids = [u for rank_ids, _ in got for u in rank_ids]
        server.clipped = sum(c for _, c in got)
        return [server.collect(ids, flat.reshape(len(ids), d))] * comm.size

    return _reply(comm, gathered, collect, error)


def _reply(comm, gathered, serve, error):
    """Root serves the gathered messages (or forwards the first abort); all receive."""
    replies = None
    if comm.rank == 0:
        aborts = [p for p in gathered if isinstance(p, _Abort)]
        if aborts:
            replies = [aborts[0]] * comm.size
        else:
            try:
                replies = serve(gathered)
            except Exception as exc:         # noqa: BLE001 -- forwarded to every rank
                replies, error = [_Abort(exc, 0)] * comm.size, exc
    reply = comm.scatter_obj(replies, root=0)
    if isinstance(reply, _Abort):
        raise error if error is not None else reply.error()
    return reply


def _merge(gathered):
    merged = {}
    for part in gathered:
        merged.update(part)
    return merged


def _per_rank(messages, hosts, size):
    """{recipient: message} -> list over ranks of {recipient: message} for its clients."""
    out = [{} for _ in range(size)]
    for u, message in messages.items():
        out[hosts[u]][u] = message
    return out
