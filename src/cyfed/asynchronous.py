"""Asynchronous federated training: FedAsync and FedBuff, and a synchronous FedAvg baseline.

Clients train from whatever model the server had when they started and report
when they finish; the server never waits for a round.  A client that started
from model version tau and reports when the server is at version t has
*staleness* t - tau (the number of server updates it missed).

Server rules (``rule=``): `FedAsync` (Xie et al. 2019, arXiv:1903.03934: mix each
arrival in at once, x <- (1 - alpha_t) x + alpha_t x_new), `FedBuff` (Nguyen et
al. 2022, arXiv:2106.06639: buffer K staleness-weighted deltas, then step) and
`SyncFedAvg` (the synchronous baseline on the same clock).  Modes (``mode=``):
``"simulated"`` -- a discrete-event simulation over a virtual clock, bit-identical
for a seed and for any number of ranks; ``"mpi"`` -- real asynchrony, rank 0 the
server and ranks 1..P-1 the clients, point-to-point messages in arrival order
(not reproducible).  Long-form documentation: docs/federated.md.

Local training is `FederatedTrainer.train_clients` (the compiled
`cyfed._sgd.train_clients`), with FedProx's proximal term when ``mu > 0``
(FedAsync's regularised local objective).
"""
import bisect
import heapq
import math
import numbers
import time
import warnings

import numpy as np

from cyfed import _validation as check
from cyfed.comm import get_comm
from cyfed.data import shard_rows
from cyfed.comm import on_every_rank
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg, FedProx

STALENESS = ("constant", "polynomial", "hinge", "sqrt")
DELAYS = ("lognormal", "constant")
MODES = ("simulated", "mpi")

# Generator streams: (seed, stream, ...) never collides with FederatedTrainer's (seed, rnd).
_SPEED, _DURATION, _PICK = 0x5EED0001, 0x5EED0002, 0x5EED0003
# Message tags of the real MPI mode.
_TAG_JOB, _TAG_STOP, _TAG_RESULT = 11, 12, 13


def staleness_weight(kind, staleness, a=0.5, b=4):
    """The staleness function s(t - tau) of FedAsync (Xie et al. 2019, section 5.2).

    Parameters
    ----------
    kind : {"constant", "polynomial", "hinge", "sqrt"}
        constant: s = 1;  polynomial: s = (t - tau + 1)^(-a);
        hinge: s = 1 if t - tau <= b else 1 / (a (t - tau - b) + 1);
        sqrt: s = 1 / sqrt(1 + t - tau) (FedBuff's weight; polynomial with a = 1/2).
    staleness : int >= 0 or array of them
    a, b : the function's parameters (a >= 0, b >= 0)

    Returns
    -------
    float (or float64 array shaped like `staleness`) in (0, 1]
    """
    s = np.asarray(staleness, dtype=np.float64)
    if kind == "constant":
        w = np.ones_like(s)
    elif kind == "polynomial":
        w = (s + 1.0) ** (-float(a))
    elif kind == "sqrt":
        w = 1.0 / np.sqrt(1.0 + s)
    elif kind == "hinge":
        w = np.where(s <= b, 1.0, 1.0 / (a * (s - b) + 1.0))
    else:
        raise ValueError(f"staleness must be one of {STALENESS}, got {kind!r}")
    return float(w) if w.ndim == 0 else w


def _check_staleness(kind, a, b):
    if kind not in STALENESS:
        raise ValueError(f"staleness must be one of {STALENESS}, got {kind!r}")
    if check.finite_real(a, "a") < 0:
        raise ValueError(f"a must be >= 0, got {a!r}")
    if check.finite_real(b, "b") < 0:
        raise ValueError(f"b must be >= 0, got {b!r}")


class AsyncRule:
    """Base of the server rules: how an arriving client result changes the model."""

    #: New jobs start only after a server update (the synchronous baseline).
    synchronous = False
    #: Clients send Delta_k = x_k - x_tau rather than their model x_k.
    sends_delta = False

    def check(self):
        """Raise ValueError naming a bad hyper-parameter."""

    def reset(self, concurrency):
        """Forget buffered results (start of a run of `concurrency` busy clients)."""

    def receive(self, theta, message, staleness, n_samples, client_id):
        """The next model after one arrival, or None while the server does not update."""
        raise NotImplementedError

    def hyper_parameters(self):
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper_parameters().items())
        return f"{type(self).__name__}({args})"

    @staticmethod
    def _finite(message, client_id):
        if np.all(np.isfinite(message)):
            return True
        warnings.warn(f"the update of client {client_id} is NaN/Inf and is left out",
                      RuntimeWarning, stacklevel=3)
        return False


class FedAsync(AsyncRule):
    """FedAsync (Xie, Koyejo & Gupta 2019, arXiv:1903.03934).

    On every arrival of a local model x_new trained from version tau, at server
    version t:  x <- (1 - alpha_t) x + alpha_t x_new,  alpha_t = alpha s(t - tau).

    Parameters
    ----------
    alpha : float in (0, 1], the mixing weight of a fresh update
    staleness : {"polynomial", "constant", "hinge", "sqrt"}, see `staleness_weight`
    a, b : the staleness function's parameters (the paper's Poly a = 0.5;
        Hinge a = 10, b = 4)
    """

    def __init__(self, alpha=0.6, staleness="polynomial", a=0.5, b=4):
        self.alpha, self.staleness, self.a, self.b = alpha, staleness, a, b
        self.check()

    def check(self):
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        _check_staleness(self.staleness, self.a, self.b)

    def weight(self, staleness):
        """alpha_t = alpha s(staleness)."""
        return self.alpha * staleness_weight(self.staleness, staleness, self.a, self.b)

    def receive(self, theta, message, staleness, n_samples, client_id):
        if not self._finite(message, client_id):
            return None
        alpha_t = self.weight(staleness)
        return (1.0 - alpha_t) * theta + alpha_t * message


class FedBuff(AsyncRule):
    """FedBuff (Nguyen et al. 2022, arXiv:2106.06639, Algorithm 1).

    Clients send Delta_k = x_k - x_tau.  The server accumulates
    s(t - tau) Delta_k and, after `buffer_size` = K arrivals,
    x <- x + server_lr * (sum of the K weighted deltas) / K, and empties the buffer.
    The paper scales a delta by 1/sqrt(1 + staleness) (``staleness="sqrt"``).

    Parameters
    ----------
    buffer_size : int >= 1 (K)
    server_lr : float > 0 (eta_g)
    staleness : {"sqrt", "constant", "polynomial", "hinge"};  a, b : its parameters
    """

    sends_delta = True

    def __init__(self, buffer_size=10, server_lr=1.0, staleness="sqrt", a=0.5, b=4):
        self.buffer_size, self.server_lr = buffer_size, server_lr
        self.staleness, self.a, self.b = staleness, a, b
        self.check()
        self.reset(1)

    def check(self):
        check.int_at_least(self.buffer_size, "buffer_size", 1)
        if check.finite_real(self.server_lr, "server_lr") <= 0:
            raise ValueError(f"server_lr must be > 0, got {self.server_lr!r}")
        _check_staleness(self.staleness, self.a, self.b)

    def reset(self, concurrency):
        self._sum, self._count = None, 0

    def receive(self, theta, message, staleness, n_samples, client_id):
        if self._sum is None:
            self._sum = np.zeros_like(theta)
        if self._finite(message, client_id):       # a bad delta still counts towards K
            self._sum += staleness_weight(self.staleness, staleness, self.a, self.b) * message
        self._count += 1
        if self._count < self.buffer_size:
            return None
        new = theta + self.server_lr * (self._sum / self.buffer_size)
        self.reset(None)
        return new


class SyncFedAvg(AsyncRule):
    """Synchronous FedAvg (McMahan et al. 2017, arXiv:1602.05629) on the async clock.

    `concurrency` clients start together from x; when the last reports,
    x <- sum n_k x_k / sum n_k and the next `concurrency` start: a round lasts as
    long as its slowest client.  Staleness is always 0.
    """

    synchronous = True

    def reset(self, concurrency):
        self._round = concurrency
        self._sum, self._n, self._count = None, 0.0, 0

    def receive(self, theta, message, staleness, n_samples, client_id):
        if self._sum is None:
            self._sum = np.zeros_like(theta)
        if self._finite(message, client_id):
            self._sum += n_samples * message
            self._n += n_samples
        self._count += 1
        if self._count < self._round:
            return None
        new = self._sum / self._n if self._n > 0 else theta.copy()
        self.reset(self._round)
        return new


class AsyncTrainer:
    """Asynchronous federated training with a server rule (FedAsync, FedBuff, SyncFedAvg).

    Parameters
    ----------
    rule : FedAsync, FedBuff or SyncFedAvg
    loss : {"squared", "logistic", "softmax"}
    updates : int >= 1
        Server updates (model versions) to run; FedBuff's takes K arrivals each.
    max_time : float > 0 or None
        Also stop before the first arrival later than this: virtual time in
        simulated mode, wall seconds since the start in mpi mode.
    concurrency : int >= 1
        Clients training at the same time (clients per round for SyncFedAvg);
        at most the number of clients.
    local_epochs, batch_size, lr, l2, momentum, max_local_steps, fit_intercept
        Local training, as in `cyfed.federated.FederatedTrainer`.
    mu : float >= 0
        FedProx's proximal coefficient in the local objective (0: plain SGD).
    delay : {"lognormal", "constant"}
        Job durations.  lognormal: ``delay_params = (mu, sigma[, jitter])``, client
        c's log-speed m_c = mu + sigma z_c (z_c ~ N(0, 1) seeded by (seed, c)),
        job j's duration exp(m_c + jitter e_j) (e_j ~ N(0, 1) seeded by
        (seed, j, c)); jitter defaults to 0.5.  constant: ``delay_params`` is one
        duration > 0 or one per client (a sequence of N).
    mode : {"simulated", "mpi"}
        Bit-reproducible virtual clock, or real asynchronous point-to-point
        messages (rank 0 server, >= 2 ranks); see docs/federated.md.
    seed : int
    n_workers : threads per process for local training
    comm : Communicator or None (LocalComm)
    eval_every : int >= 1, evaluate `test` every this many server updates (and after the last)
    wall_delay : float >= 0, mpi mode only: a worker sleeps this times the job's
        simulated duration after training it

    Attributes after fit
    --------------------
    coef_, intercept_ : the final model;  theta_ : it flat
    history_ : list of dict, one per server update: update (version), time
        (virtual, or wall seconds in mpi mode), arrivals (results received so
        far), staleness_mean / staleness_max of the arrivals in this update,
        train_loss (their mean local loss, weighted by samples), and test_loss,
        test_accuracy / test_r2 when `test` is given and evaluated
    client_updates_ : (N,) int, results received (applied) from each client
    """

    def __init__(self, rule, loss="squared", *, updates=100, max_time=None, concurrency=10,
                 local_epochs=1, batch_size=10, lr=0.01, l2=0.0, momentum=0.0, mu=0.0,
                 max_local_steps=None, fit_intercept=True, delay="lognormal",
                 delay_params=(0.0, 1.0), mode="simulated", seed=0, n_workers=None,
                 comm=None, eval_every=1, wall_delay=0.0):
        self.rule, self.loss, self.updates, self.max_time = rule, loss, updates, max_time
        self.concurrency, self.local_epochs, self.batch_size = concurrency, local_epochs, batch_size
        self.lr, self.l2, self.momentum, self.mu = lr, l2, momentum, mu
        self.max_local_steps, self.fit_intercept = max_local_steps, fit_intercept
        self.delay, self.delay_params, self.mode, self.seed = delay, delay_params, mode, seed
        self.n_workers, self.comm, self.eval_every = n_workers, comm, eval_every
        self.wall_delay = wall_delay

    # -- set-up -----------------------------------------------------------------

    def _settings(self, comm):
        if not isinstance(self.rule, AsyncRule):
            raise TypeError(f"rule must be FedAsync, FedBuff or SyncFedAvg, got "
                            f"{type(self.rule).__name__}")
        self.rule.check()
        check.int_at_least(self.updates, "updates", 1)
        check.int_at_least(self.concurrency, "concurrency", 1)
        check.int_at_least(self.eval_every, "eval_every", 1)
        if self.max_time is not None and not check.finite_real(self.max_time, "max_time") > 0:
            raise ValueError(f"max_time must be > 0 or None, got {self.max_time!r}")
        if check.finite_real(self.mu, "mu") < 0:
            raise ValueError(f"mu must be >= 0, got {self.mu!r}")
        if check.finite_real(self.wall_delay, "wall_delay") < 0:
            raise ValueError(f"wall_delay must be >= 0, got {self.wall_delay!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "mpi":
            if comm.size < 2:
                raise ValueError("mode='mpi' needs at least 2 ranks (rank 0 is the server); "
                                 f"this communicator has {comm.size}: use mode='simulated'")
            if not all(hasattr(comm, name) for name in ("isend", "irecv", "waitany", "recv")):
                raise ValueError("mode='mpi' needs a communicator with point-to-point "
                                 "messages (cyfed.comm.MPIComm)")
        if self.delay not in DELAYS:
            raise ValueError(f"delay must be one of {DELAYS}, got {self.delay!r}")
        params = np.atleast_1d(np.asarray(self.delay_params, dtype=np.float64))
        if params.ndim != 1 or params.size == 0 or not np.all(np.isfinite(params)):
            raise ValueError(f"delay_params must be finite numbers, got {self.delay_params!r}")
        if self.delay == "lognormal":
            if params.size not in (2, 3) or np.any(params[1:] < 0):
                raise ValueError("delay_params must be (mu, sigma) or (mu, sigma, jitter) "
                                 f"with sigma, jitter >= 0 for delay='lognormal', got "
                                 f"{self.delay_params!r}")
        elif np.any(params <= 0):
            raise ValueError(f"delay_params must be durations > 0 for delay='constant', got "
                             f"{self.delay_params!r}")
        return params

    def _check_clients(self, n):
        if self.concurrency > n:
            raise ValueError(f"concurrency must be at most the number of clients ({n}), "
                             f"got {self.concurrency}")
        params = self._params
        if self.delay == "constant" and params.size not in (1, n):
            raise ValueError(f"delay_params must hold 1 or {n} (one per client) durations for "
                             f"delay='constant', got {params.size}")

    def _client_split(self, clients, comm):
        """In mpi mode: the clients each rank hosts (none on the server, rank 0)."""
        if self.mode != "mpi":
            return clients
        if isinstance(clients, dict):
            if comm.rank == 0 and clients:
                raise ValueError("in mode='mpi' rank 0 is the server and hosts no clients; "
                                 f"its client dict holds {sorted(clients)[:5]}")
            return clients
        if comm.rank == 0:
            return {}
        part = shard_rows(len(clients), comm.rank - 1, comm.size - 1)
        return {i: clients[i] for i in range(part.start, part.stop)}

    def _durations_setup(self, n):
        params = self._params
        if self.delay == "constant":
            self._fixed = np.broadcast_to(params, (n,)).astype(np.float64)
            return
        mu, sigma = params[0], params[1]
        self._jitter = params[2] if params.size == 3 else 0.5
        self._log_speed = np.array([mu + sigma * np.random.default_rng(
            [self.seed, _SPEED, c]).standard_normal() for c in range(n)])

    def _duration(self, cid, job):
        """Simulated duration of job `job` of client `cid` (> 0)."""
        if self.delay == "constant":
            return float(self._fixed[cid])
        e = np.random.default_rng([self.seed, _DURATION, job, cid]).standard_normal()
        return float(math.exp(self._log_speed[cid] + self._jitter * e))

    def _pick(self, idle, job):
        """A client drawn uniformly from the sorted idle list (removed from it)."""
        i = int(np.random.default_rng([self.seed, _PICK, job]).integers(len(idle)))
        return idle.pop(i)

    # -- training ---------------------------------------------------------------

    def fit(self, clients, test=None):
        """Train on `clients` (a sequence of (X_k, y_k) for every id, or this rank's
        {id: (X_k, y_k)}); `test` = (X, y) is evaluated on rank 0."""
        comm = self.comm if self.comm is not None else get_comm()
        self._params = on_every_rank(comm, lambda: self._settings(comm))
        hosted = on_every_rank(comm, lambda: self._client_split(clients, comm))
        local = FedProx(self.mu) if self.mu > 0 else FedAvg()
        fed = FederatedTrainer(local, self.loss, rounds=1, local_epochs=self.local_epochs,
                               batch_size=self.batch_size, lr=self.lr, l2=self.l2,
                               momentum=self.momentum, max_local_steps=self.max_local_steps,
                               fit_intercept=self.fit_intercept, seed=self.seed,
                               n_workers=self.n_workers, comm=comm)
        fed.setup(hosted)
        n = fed.n_clients
        on_every_rank(comm, lambda: self._check_clients(n))
        owners = comm.allgather_obj([int(c) for c in fed.hosted_ids])
        self._host = np.empty(n, dtype=np.int64)
        for rank, ids in enumerate(owners):
            self._host[ids] = rank
        self._durations_setup(n)
        self._fed, self._comm, self._test = fed, comm, test
        self.rule.reset(self.concurrency)
        self.history_ = []
        self.client_updates_ = np.zeros(n, dtype=np.int64)
        if self.mode == "simulated":
            theta = self._simulate(fed.theta_.copy(), n)
        elif comm.rank == 0:
            theta = self._serve(fed.theta_.copy(), n)
        else:
            theta = self._work(fed.theta_.copy())
        if comm.size > 1:       # rank 0's history (its test metrics), counts and clock
            self.history_, counts, self.time_ = comm.bcast_obj(
                (self.history_, self.client_updates_, self.time_) if comm.rank == 0 else None)
            self.client_updates_ = np.asarray(counts)
        if self.mode == "mpi":  # (simulated: every rank computed the same model)
            theta = comm.bcast(np.ascontiguousarray(theta, dtype=np.float64), root=0)
        self.theta_, self.model_ = theta, fed.model_
        if hasattr(fed, "coef_"):
            self.coef_, self.intercept_ = fed.model_.split(theta)
        del self._fed, self._comm, self._test
        return self

    def _train(self, theta, cid, job, head=()):
        """[*head, n_samples, loss, steps, message] of job `job` of hosted client `cid`."""
        models, n_samples, losses, steps = self._fed.train_clients(theta, [cid], job)
        row = np.empty(len(head) + 3 + theta.size)
        row[:len(head)] = head
        row[len(head):len(head) + 3] = n_samples[0], losses[0], steps[0]
        message = row[len(head) + 3:]
        if self.rule.sends_delta:
            np.subtract(models[0], theta, out=message)
        else:
            message[:] = models[0]
        return row

    def _arrive(self, theta, state, t, cid, staleness, n_samples, loss, message):
        """Apply one arrival: (theta, whether the server updated)."""
        state["arrivals"] += 1
        state["staleness"].append(staleness)
        state["losses"].append((loss, n_samples))
        self.client_updates_[cid] += 1
        new = self.rule.receive(theta, message, staleness, n_samples, cid)
        if new is None:
            return theta, False
        state["version"] += 1
        losses = np.array(state["losses"])
        record = {"update": state["version"], "time": float(t),
                  "arrivals": state["arrivals"],
                  "staleness_mean": float(np.mean(state["staleness"])),
                  "staleness_max": int(max(state["staleness"])),
                  "train_loss": float(np.average(losses[:, 0], weights=losses[:, 1]))}
        state["staleness"], state["losses"] = [], []
        if state["version"] % self.eval_every == 0:
            record.update(self._evaluate(new))
        self.history_.append(record)
        return new, True

    def _evaluate(self, theta):
        if self._test is None or self._comm.rank != 0:
            return {}
        return self._fed.evaluate(theta, self._test)

    def _finish_history(self, theta):
        if self.history_ and "test_loss" not in self.history_[-1]:
            self.history_[-1].update(self._evaluate(theta))

    @staticmethod
    def _new_state():
        return {"version": 0, "arrivals": 0, "staleness": [], "losses": []}

    def _simulate(self, theta, n):
        """The virtual-clock event loop (every rank alike)."""
        comm, host, me = self._comm, self._host, self._comm.rank
        state, idle, busy, pending = self._new_state(), list(range(n)), [], {}
        job = 0

        def start(now):
            nonlocal job
            cid = self._pick(idle, job)
            heapq.heappush(busy, (now + self._duration(cid, job), job, cid, state["version"]))
            if host[cid] == me:
                pending[job] = self._train(theta, cid, job)
            job += 1

        for _ in range(self.concurrency):
            start(0.0)
        width = 3 + theta.size
        while state["version"] < self.updates:
            t, j, cid, started = busy[0]
            if self.max_time is not None and t > self.max_time:
                break
            heapq.heappop(busy)
            row = pending.pop(j) if host[cid] == me else np.empty(width)
            row = comm.bcast(row, root=int(host[cid]))
            theta, updated = self._arrive(theta, state, t, cid, state["version"] - started,
                                          float(row[0]), float(row[1]), row[3:])
            bisect.insort(idle, cid)
            if not self.rule.synchronous:
                start(t)
            elif updated:
                for _ in range(self.concurrency):
                    start(t)
        self.time_ = float(self.history_[-1]["time"]) if self.history_ else 0.0
        self._finish_history(theta)
        return theta

    # -- real MPI mode ----------------------------------------------------------

    def _serve(self, theta, n):
        """Rank 0: dispatch jobs, apply results in arrival order, then stop every worker."""
        box = _ServerMailbox(self._comm, self._host, theta.size)
        state, idle, job = self._new_state(), list(range(n)), 0
        start_time = time.perf_counter()

        def dispatch():
            nonlocal job
            box.dispatch(job, self._pick(idle, job), state["version"], theta)
            job += 1

        for _ in range(self.concurrency):
            dispatch()
        while state["version"] < self.updates:
            if self.max_time is not None and time.perf_counter() - start_time > self.max_time:
                break
            row = box.take()
            cid, started = int(row[1]), int(row[2])
            theta, updated = self._arrive(theta, state, time.perf_counter() - start_time, cid,
                                          state["version"] - started, float(row[3]),
                                          float(row[4]), row[6:])
            bisect.insort(idle, cid)
            if not self.rule.synchronous:
                dispatch()
            elif updated:
                for _ in range(self.concurrency):
                    dispatch()
        box.stop()
        self.time_ = time.perf_counter() - start_time
        self._finish_history(theta)
        return theta

    def _work(self, theta):
        """Ranks 1..P-1: train the jobs the server sends until it says stop."""
        comm, p = self._comm, theta.size
        buf = np.empty(3 + p)
        last = None
        while True:
            _, tag = comm.recv(buf, 0, None)
            if tag == _TAG_STOP:
                break
            job, cid, version = int(buf[0]), int(buf[1]), buf[2]
            row = self._train(buf[3:].copy(), cid, job, head=(job, cid, version))
            if self.wall_delay > 0:
                time.sleep(self.wall_delay * self._duration(cid, job))
            if last is not None:
                comm.wait(last[0])
            last = (comm.isend(row, 0, _TAG_RESULT), row)
        if last is not None:
            comm.wait(last[0])
        self.time_ = None
        return theta

    def predict(self, X):
        return self.model_.predict(X, self.theta_)


class _ServerMailbox:
    """Rank 0's messages in mpi mode: jobs [job, client, version, x] out to the client's
    rank, results in, one receive posted per worker with jobs outstanding, and every
    send kept until its result is back."""

    def __init__(self, comm, host, p):
        self.comm, self.host = comm, host
        self.recv_bufs = [np.empty(6 + p) for _ in range(comm.size)]
        self.recv_reqs = [None] * comm.size
        self.outstanding = [0] * comm.size
        self.sends = {}                     # job -> (request, buffer)

    def dispatch(self, job, cid, version, theta):
        w = int(self.host[cid])
        buf = np.concatenate([[job, cid, version], theta])
        self.sends[job] = (self.comm.isend(buf, w, _TAG_JOB), buf)
        self.outstanding[w] += 1
        if self.recv_reqs[w] is None:
            self.recv_reqs[w] = self.comm.irecv(self.recv_bufs[w], w, _TAG_RESULT)

    def take(self):
        """The next result to arrive: [job, client, version, n, loss, steps, message]."""
        w, _, _ = self.comm.waitany(self.recv_reqs)
        row = self.recv_bufs[w].copy()
        self.recv_reqs[w] = None
        self.outstanding[w] -= 1
        if self.outstanding[w] > 0:
            self.recv_reqs[w] = self.comm.irecv(self.recv_bufs[w], w, _TAG_RESULT)
        self.comm.wait(self.sends.pop(int(row[0]))[0])
        return row

    def stop(self):
        """A stop message queues behind each worker's pending jobs; their results are
        received and dropped, so no message is left unmatched."""
        stop = np.zeros(1)
        stops = [self.comm.isend(stop, w, _TAG_STOP) for w in range(1, self.comm.size)]
        while any(self.outstanding):
            self.take()
        for req in stops:
            self.comm.wait(req)
