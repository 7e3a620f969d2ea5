"""The federated round as a pipeline of stages, each a small object with one job.

    sample -> broadcast -> local training -> client stages (compress | DP rows ->
    secure sum) -> gather -> server stages (decode) -> aggregate -> evaluate -> publish

A stage reads and writes the round's `Round` (and the run's `FedRun` through it)
and runs on every rank; stages marked "rank 0" act on the server's rank only.
`FederatedTrainer` picks the stages once at set-up from its options, so a new
option adds a stage without editing the others.
"""
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from cyfed import _validation as check
from cyfed import aggregate
from cyfed.models import SGDSettings
from cyfed.secagg import SecAggError


@dataclass
class Round:
    """What the stages of round `rnd` hand to each other."""
    run: object                 # the trainer's FedRun
    rnd: int
    theta: np.ndarray           # the global model (rank 0: the new one after aggregation)
    test: object = None
    record: dict = field(default_factory=dict)
    sampled: np.ndarray = None  # sorted client ids of the round
    reports: np.ndarray = None  # per sampled client: whether it reports
    local_epochs: np.ndarray = None
    payload: np.ndarray = None  # the strategy's broadcast (the model first)
    bytes_down: int = 0
    messages: np.ndarray = None  # this rank's clients' rows (then the gathered ones, rank 0)
    info: np.ndarray = None     # [id, n_samples, mean loss, steps] per row
    lengths: np.ndarray = None  # compressed payload lengths (uplink compression)
    uploaded: int = 0           # bytes of this rank's messages
    secure: object = None       # the SecureSum (rank 0) of a secure round
    total: object = None        # private rounds: the sum of the clients' rows, and their count
    count: int = 0

    @property
    def root(self):
        return self.run.comm.rank == 0

    @property
    def reference(self):
        """The message of a client that did not move (its update is message - reference)."""
        return self.run.strategy.message_reference(self.payload)


class Sample:
    """Every rank draws the same clients, dropouts and stragglers from (seed, round)."""

    def __call__(self, r):
        run = r.run
        rng = np.random.default_rng([run.seed, r.rnd])
        if run.sampling == "poisson":
            sampled = np.flatnonzero(rng.random(run.n_clients) < run.sample_rate)
        else:
            sampled = np.sort(rng.choice(run.n_clients, size=run.m, replace=False))
        m = len(sampled)
        reports = rng.random(m) >= run.dropout
        local_epochs = np.full(m, run.epochs, dtype=np.intp)
        if run.straggler_fraction > 0 and run.epochs > 1:
            slow = rng.random(m) < run.straggler_fraction
            partial = rng.integers(1, run.epochs, size=m)
            if run.strategy.keeps_stragglers:
                local_epochs = np.where(slow, partial, local_epochs)
            else:
                reports &= ~slow
        r.sampled, r.reports, r.local_epochs = sampled, reports, local_epochs
        r.record.update(round=r.rnd, clients=int(reports.sum()))


class Broadcast:
    """Rank 0's strategy payload to every rank (plain Bcast)."""

    def __call__(self, r):
        payload = r.run.strategy.server_payload(r.theta).copy()
        r.payload = r.run.comm.bcast(payload, root=0)
        r.bytes_down = r.payload.nbytes


class CompressedBroadcast:
    """The payload through the downlink compressor (`cyfed.compress.rounds.Downlink`)."""

    def __init__(self, downlink):
        self.downlink = downlink

    def __call__(self, r):
        payload = r.run.strategy.server_payload(r.theta).copy()
        r.payload, r.bytes_down = self.downlink.broadcast(r.run.comm, payload, r.rnd)


class LocalTraining:
    """This rank's reporting sampled clients, trained in one model call from the payload:
    messages (m, width) and info (m, 4) = [id, n_samples, mean loss, steps]."""

    def __init__(self):
        self.out = None         # local models, reused across rounds (no page faults)

    def __call__(self, r):
        run = r.run
        mine = np.flatnonzero(r.reports & np.isin(r.sampled, run.hosted_ids))
        r.messages, r.info = self.train(run, r.sampled[mine], r.local_epochs[mine], r.payload,
                                        r.rnd, run.client_state)

    def train(self, run, client_ids, epochs, payload, rnd, client_state):
        p = run.model.n_params
        strategy = run.strategy
        if len(client_ids) == 0:
            return np.empty((0, strategy.message_width(p))), np.empty((0, 4))
        which = np.searchsorted(run.hosted_ids, client_ids).astype(np.intp)
        cids = np.ascontiguousarray(client_ids, dtype=np.int64)
        corr = strategy.client_corrections(payload, cids, client_state)
        corrections = (np.empty((0, 0), dtype=run.data.dtype) if corr is None
                       else np.ascontiguousarray(corr, dtype=run.data.dtype))
        out = self.buffer(len(cids), p)
        losses, steps = np.empty(len(cids)), np.empty(len(cids), dtype=np.intp)
        sizes = run.offsets[which + 1] - run.offsets[which]
        sgd = SGDSettings(int(sizes.max()) if run.batch is None else run.batch, run.max_steps,
                          run.lr, run.l2, strategy.mu, run.momentum, run.seed, rnd, run.threads)
        run.model.train_clients(run.data, run.offsets, which, cids,
                                np.ascontiguousarray(epochs, dtype=np.intp), payload[:p],
                                corrections, out, losses, steps, sgd)
        messages = strategy.client_messages(payload, out, steps, run.lr, cids, client_state)
        info = np.column_stack([cids, sizes, losses, steps]).astype(np.float64)
        return np.ascontiguousarray(messages, dtype=np.float64), info

    def buffer(self, m, p):
        if self.out is None or self.out.shape[0] < m or self.out.shape[1] != p:
            self.out = np.empty((m, p))
        return self.out[:m]


class CompressUplink:
    """Client side: finite updates -> payload bytes (NaN/Inf updates are named and left out)."""

    def __init__(self, uplink):
        self.uplink = uplink

    def __call__(self, r):
        messages, info = r.messages, r.info
        ok = aggregate.finite_rows(messages) if len(messages) else np.ones(0, dtype=bool)
        if not ok.all():
            check.warn_non_finite(info[~ok, 0])
            messages, info = messages[ok], info[ok]
        r.messages, r.lengths = self.uplink.encode(messages - r.reference,
                                                   info[:, 0].astype(np.int64), r.rnd)
        r.info = np.ascontiguousarray(info)


class PrivateRows:
    """Client side of DP / secure aggregation: the rows [w u, w, b, id] (clipped,
    noised under distributed DP)."""

    def __init__(self, private):
        self.private = private

    def __call__(self, r):
        r.messages = self.private.client_rows(r.messages, r.reference, r.info[:, 1],
                                              r.info[:, 0].astype(np.int64), r.rnd)


class SecureSum:
    """Secure aggregation of the rows: rank 0 learns only their sum.  A round the
    protocol abandons (too few clients left to unmask) keeps theta: its record says
    why, and every rank warns."""

    def __init__(self, secure):
        self.secure = secure

    def __call__(self, r):
        run, rows = r.run, r.messages
        r.messages = rows[:0]
        try:
            result = self.secure.secure_sum(
                run.comm, (run.seed, r.rnd), r.sampled, run.hosted_ids,
                {int(row[-1]): row[:-1] for row in rows}, rows.shape[1] - 1)
        except SecAggError as exc:
            warnings.warn(f"round {r.rnd}: {exc}; the model is left as it was", RuntimeWarning,
                          stacklevel=3)
            r.record["secagg_abandoned"] = str(exc)
            return
        if r.root:
            r.record.update(secagg_clients=len(result.clients),
                            secagg_clipped=int(result.clipped),
                            secagg_bytes_up=sum(result.bytes_up.values()),
                            secagg_bytes_down=sum(result.bytes_down.values()))
            r.total, r.count = result.total, len(result.clients)


class Gather:
    """Every rank's messages and info (and payload lengths) to rank 0 (Gatherv)."""

    def __init__(self, lengths):
        self.lengths = lengths

    def __call__(self, r):
        comm = r.run.comm
        r.uploaded = r.messages.nbytes + r.info.nbytes
        messages, _ = comm.gatherv(r.messages.ravel(), root=0)
        info, _ = comm.gatherv(r.info.ravel(), root=0)
        if self.lengths:
            r.uploaded += r.lengths.nbytes
            r.lengths, _ = comm.gatherv(r.lengths, root=0)
        if r.root:
            r.messages, r.info = messages, info.reshape(-1, 4)
            if len(r.info):
                r.record["train_loss"] = float(np.average(r.info[:, 2], weights=r.info[:, 1]))


class DecodeUplink:
    """Rank 0: the gathered payloads back to messages."""

    def __init__(self, uplink):
        self.uplink = uplink

    def __call__(self, r):
        if r.root:
            width = r.run.strategy.message_width(r.theta.size)
            r.messages = r.reference + self.uplink.decode(r.messages, r.lengths, width)


def _in_id_order(info, messages):
    """(info, messages) of the gathered clients sorted by client id (info[:, 0])."""
    messages = messages.reshape(len(info), -1)
    if np.any(np.diff(info[:, 0]) < 0):
        order = np.argsort(info[:, 0], kind="stable")
        info, messages = info[order], messages[order]
    return info, messages


def _attacked(r, messages, ids):
    """The messages as the server receives them under the run's attack (if any)."""
    run = r.run
    if run.attack is None:
        return messages
    r.record["malicious"] = int(run.attack.malicious(ids).sum())
    return run.attack.perturb(r.theta, messages, ids, np.random.default_rng([run.seed, r.rnd, 1]))


class Aggregate:
    """Rank 0: the strategy's step from every reporting client's message, in id order."""

    def __call__(self, r):
        if not r.root or len(r.info) == 0:
            return
        run = r.run
        info, messages = _in_id_order(r.info, r.messages)
        ids = info[:, 0].astype(np.int64)
        messages = _attacked(r, messages, ids)
        r.theta = run.strategy.aggregate(r.theta, messages, info[:, 1], ids, run.n_clients)


class CentralClipping:
    """Rank 0, central DP: the server clips the gathered messages itself and sums them."""

    def __init__(self, private):
        self.private = private

    def __call__(self, r):
        if not r.root:
            return
        info, messages = _in_id_order(r.info, r.messages)
        ids = info[:, 0].astype(np.int64)
        messages = np.ascontiguousarray(_attacked(r, messages, ids))
        r.total, r.count = self.private.server_sum(messages, r.reference, ids)


class PreparedRows:
    """Rank 0, distributed DP without secure aggregation: the sum of the clients' rows."""

    def __init__(self, private):
        self.private = private

    def __call__(self, r):
        if r.root:
            width = r.run.strategy.message_width(r.theta.size) + 3
            r.total, r.count = self.private.sum_rows(r.messages.reshape(-1, width))


class PrivateStep:
    """Rank 0: the strategy's step on the (noised) mean of the private rows; then every
    rank takes the server's next clipping state (adaptive clipping)."""

    def __init__(self, private):
        self.private = private

    def __call__(self, r):
        run = r.run
        if r.root and r.total is not None:
            r.theta, extra = self.private.server_step(run.strategy, r.theta, r.total, r.count,
                                                      run.n_clients, r.rnd)
            r.record.update(extra)


class Evaluate:
    """Rank 0: the new model's loss and accuracy / R^2 on the test set."""

    def __call__(self, r):
        if r.root and r.test is not None:
            r.record.update(r.run.evaluate(r.theta, r.test))


class Publish:
    """The new model on every rank, the record completed and shared (rank 0's)."""

    def __init__(self, downlink):
        self.downlink = downlink

    def __call__(self, r):
        run, comm = r.run, r.run.comm
        if self.downlink is None:
            r.theta = comm.bcast(np.ascontiguousarray(r.theta, dtype=np.float64), root=0)
        elif not r.root:     # the clients learn the model from the next (compressed) payload
            r.theta = r.payload[:r.theta.size]
        r.record["bytes_down"] = int(r.bytes_down)
        r.record["seconds"] = time.perf_counter() - run.start
        r.record = comm.bcast_obj(r.record if r.root else None, root=0)
        if run.private is not None:     # the clients clip with the server's next (adaptive) S
            run.private.load_state_dict(comm.bcast_obj(run.private.state_dict() if r.root
                                                       else None))
        r.record["bytes_up"] = int(r.uploaded)
        run.stamp_bytes(r.record)
