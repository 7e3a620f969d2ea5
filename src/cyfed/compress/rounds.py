"""Compressed federated rounds: what crosses the wire between the server and the clients.

Uplink: client k sends C(u_k + e_k) of its update u_k = message - reference
(the message minus the message of a client that did not move), as float32
values; with error feedback (Stich et al. 2018; Karimireddy et al. 2019) its
residual e_k <- u_k + e_k - decode(C(u_k + e_k)) stays on the rank that hosts
it and travels in checkpoints.  Payloads of different sizes go up in one
`Gatherv` of bytes; the server decodes them back to messages, so every strategy
(robust ones included) aggregates as usual.

Downlink: the server broadcasts C(payload_t - known_{t-1}) and every rank
(the server too) sets known_t = known_{t-1} + decode(...): the clients train
from known_t, and what the compressor dropped stays in the next difference
(error feedback for free).  A compressor's payload size depends only on d, so
one `Bcast` of a fixed-size buffer carries it.

Random compressors (QSGD, RandK) draw from generators seeded by (seed, round,
client id), so a client's payload does not depend on the rank that hosts it.
See docs/federated.md (compression) and docs/distributed.md (compressed gradients).
"""
import numpy as np

from cyfed import compress

_UPLINK_STREAM, _DOWNLINK_STREAM = 5, 6
#: The wire format of update values.
WIRE_DTYPE = np.dtype(np.float32)


def _as_wire(compressor, x, n_classes):
    """x as float32, shaped (rows, n_classes) for PowerSGD (a model's coef and
    intercept are d + 1 rows of k classes; SCAFFOLD's message twice that)."""
    x = x.astype(WIRE_DTYPE)
    if isinstance(compressor, compress.PowerSGD):
        return x.reshape(-1, n_classes)
    return x


class Uplink:
    """Client -> server compression, with optional error feedback per client."""

    def __init__(self, compressor, error_feedback, seed, n_classes):
        self.compressor, self.seed, self.n_classes = compressor, seed, n_classes
        self.error_feedback = bool(error_feedback)
        # ErrorFeedback is used like the compressor it wraps (same encode, payloads)
        self.codec = compress.ErrorFeedback(compressor) if error_feedback else compressor

    def encode(self, updates, client_ids, rnd):
        """(concatenated uint8 payloads, their lengths) of the rows of `updates`."""
        payloads = []
        for row, cid in zip(updates, client_ids):
            rng = np.random.default_rng([self.seed, rnd, _UPLINK_STREAM, int(cid)])
            x = _as_wire(self.compressor, row, self.n_classes)
            payloads.append(self.codec.encode(x, rng=rng, key=int(cid)))
        lengths = np.array([p.size for p in payloads], dtype=np.int64)
        flat = np.concatenate(payloads) if payloads else np.empty(0, dtype=np.uint8)
        return flat, lengths

    @staticmethod
    def decode(flat, lengths, width):
        """(k, width) float64 updates from the gathered payloads."""
        out = np.empty((len(lengths), width))
        ends = np.cumsum(lengths)
        for i, (start, end) in enumerate(zip(ends - lengths, ends)):
            out[i] = compress.decode(flat[start:end]).ravel()
        return out

    def state_dict(self):
        """This rank's clients' residuals and compressor state (PowerSGD's Q), keyed
        by str(client id)."""
        return {"residuals": self.codec.state_dict() if self.error_feedback else {},
                "compressor": self.compressor.state_dict()}

    def load_state_dict(self, state, hosted):
        """Restore the entries of the clients in `hosted` (ids this rank hosts)."""
        keep = {str(int(c)) for c in hosted}
        mine = {part: {k: v for k, v in entries.items() if k in keep}
                for part, entries in state.items()}
        if self.error_feedback:
            self.codec.load_state_dict(mine["residuals"])
        self.compressor.load_state_dict(mine["compressor"])


class Downlink:
    """Server -> clients compression of the broadcast payload (model and server
    state), against the payload the clients already know."""

    def __init__(self, compressor, seed, n_classes):
        self.compressor, self.seed, self.n_classes = compressor, seed, n_classes
        self.known = None

    def broadcast(self, comm, payload, rnd):
        """(the payload the clients now know, bytes broadcast); collective."""
        if self.known is None:
            self.known = np.zeros(payload.size)
        wire = _as_wire(self.compressor, self.known, self.n_classes)
        if comm.rank == 0:
            wire = _as_wire(self.compressor, payload - self.known, self.n_classes)
            buf = self.compressor.encode(
                wire, rng=np.random.default_rng([self.seed, rnd, _DOWNLINK_STREAM]), key=-1)
        else:
            shape = wire.shape if wire.ndim == 2 else wire.size
            buf = np.empty(self.compressor.max_payload_nbytes(shape, WIRE_DTYPE),
                           dtype=np.uint8)
        buf = comm.bcast(buf, root=0)
        self.known = self.known + compress.decode(buf).ravel()
        return self.known.copy(), int(buf.nbytes)

    def state_dict(self):
        return {} if self.known is None else {"known": self.known.copy()}

    def load_state_dict(self, state):
        self.known = np.array(state["known"]) if "known" in state else None
