"""Federated training rounds over many virtual clients, in one process or over MPI ranks.

Clients 0..N-1 each hold their own (X_k, y_k) on exactly one rank.  A round:

1. every rank draws the same sample of m = max(ceil(C N), min_clients) clients
   (and their dropouts and stragglers) from a generator seeded by (seed, round);
2. rank 0 broadcasts the strategy's payload (the model, plus server state);
3. each rank trains the sampled clients it hosts in one compiled call
   (`cyfed._sgd.train_clients`, threads over clients);
4. messages, sample counts and losses are gathered on rank 0 (Gatherv), sorted
   by client id, and the strategy aggregates them; the new model is broadcast.

A client's update depends only on (seed, round, client id, its data, the
model), and rank 0 aggregates in client-id order, so the final model is
bit-identical for any number of ranks and worker threads.
"""
import csv
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from cyfed import _validation as check
from cyfed import aggregate, checkpoint, compress, gradients
from cyfed._simd import load
from cyfed.attacks import Attack
from cyfed.comm import CountingComm, LocalComm
from cyfed.compressed_rounds import Downlink, Uplink
from cyfed.data import shard_rows
from cyfed.distributed import agree_on_data, local_labels_max, on_every_rank
from cyfed.privacy import ClientDP
from cyfed.private_rounds import PrivateRounds
from cyfed.secagg import SecAggError, SecureAggregation
from cyfed.strategies import Strategy, warn_non_finite

_sgd, _ = load("_sgd")


class FederatedTrainer:
    """Run federated rounds of `strategy` (FedAvg, FedSGD, FedProx, Scaffold, ...).

    Parameters
    ----------
    strategy : cyfed.strategies.Strategy
    loss : {"squared", "logistic", "softmax"}
    rounds : int >= 1
    clients_per_round : int, or fraction : float in (0, 1]
        m = clients_per_round, or max(ceil(fraction * N), min_clients)
        (default: every client).
    local_epochs : int >= 1;  batch_size : int >= 1 or None (whole client);
    lr : local learning rate;  l2 : L2 penalty;  momentum : local momentum;
    max_local_steps : cap on a client's local steps per round (None: no cap)
    dropout : probability that a sampled client does not report this round
    straggler_fraction : share of sampled clients that run only a random
        1..E-1 of their epochs (kept by FedProx, dropped by FedAvg)
    seed : seeds sampling, dropouts, stragglers and every client's shuffles
    n_workers : threads training clients concurrently in each process
    comm : Communicator (default LocalComm: one process)
    attack : cyfed.attacks.Attack or None -- simulated malicious clients: their
        labels are poisoned at set-up and their messages perturbed on the server
        before aggregation (robustness studies)
    checkpoint : path or None -- rank 0 writes the run's state there atomically
        every `checkpoint_every` rounds and after the last: the model, the
        strategy's server state, SCAFFOLD's client control variates, the round,
        the history, and hashes of the config and the data.
    resume : if True and `checkpoint` exists, fit() continues from it (refusing a
        checkpoint of another config or other data) and ends bit-identical to the
        uninterrupted run (every random draw is seeded by (seed, round)).
    sampling : "fixed" -- m of the N clients without replacement each round; or
        "poisson" -- every client independently with probability q = m / N (the
        case the DP accountant covers exactly)
    privacy : cyfed.privacy.ClientDP or None -- client-level differential privacy
        (DP-FedAvg: clipping, central or distributed Gaussian noise, adaptive
        clipping); epsilon is recorded in the history every round
    secure_aggregation : cyfed.secagg.SecureAggregation or None -- the clients'
        updates are quantised and masked so that rank 0 only learns their sum
        (with DP: clip -> noise -> quantise -> mask on the client side)

    With privacy or secure aggregation the strategy must combine the clients'
    updates through their mean only (FedAvg, FedSGD, FedProx, Scaffold, and the
    server optimizers over them); robust aggregators, which need every update,
    are refused.

    Attributes after fit: coef_, intercept_, history_ (one dict per round): the
    round, its clients, losses and metrics; bytes_up / bytes_down -- this rank's
    clients' messages and the broadcast payload (what goes on the wire whether or
    not there is one); bytes_sent / bytes_received -- what this rank handed to MPI
    in the round (`cyfed.comm.CountingComm`: 0 in one process).
    """

    def __init__(self, strategy, loss="squared", *, rounds=10, clients_per_round=None,
                 fraction=None, min_clients=1, local_epochs=1, batch_size=10, lr=0.01,
                 l2=0.0, momentum=0.0, max_local_steps=None, fit_intercept=True,
                 dropout=0.0, straggler_fraction=0.0, seed=0, n_workers=None, comm=None,
                 attack=None, checkpoint=None, checkpoint_every=1, resume=False,
                 sampling="fixed", privacy=None, secure_aggregation=None, compression=None,
                 error_feedback=False, downlink_compression=None):
        self.strategy, self.loss, self.rounds = strategy, loss, rounds
        self.clients_per_round, self.fraction, self.min_clients = (clients_per_round, fraction,
                                                                   min_clients)
        self.local_epochs, self.batch_size, self.lr = local_epochs, batch_size, lr
        self.l2, self.momentum, self.max_local_steps = l2, momentum, max_local_steps
        self.fit_intercept, self.dropout = fit_intercept, dropout
        self.straggler_fraction, self.seed = straggler_fraction, seed
        self.n_workers, self.comm, self.attack = n_workers, comm, attack
        self.checkpoint, self.checkpoint_every, self.resume = checkpoint, checkpoint_every, resume
        self.sampling, self.privacy = sampling, privacy
        self.secure_aggregation = secure_aggregation
        self.compression, self.error_feedback = compression, error_feedback
        self.downlink_compression = downlink_compression

    # -- set-up -----------------------------------------------------------------

    def _settings(self):
        """Validated hyper-parameters, with the strategy's local overrides applied."""
        if not isinstance(self.strategy, Strategy):
            raise TypeError(f"strategy must be a cyfed.strategies.Strategy, got "
                            f"{type(self.strategy).__name__}")
        if self.attack is not None and not isinstance(self.attack, Attack):
            raise TypeError(f"attack must be a cyfed.attacks.Attack or None, got "
                            f"{type(self.attack).__name__}")
        s = {"local_epochs": self.local_epochs, "batch_size": self.batch_size,
             "max_local_steps": self.max_local_steps, "lr": self.lr}
        s.update(self.strategy.local_settings(self))
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an int >= 1, got {self.rounds!r}")
        if not isinstance(s["local_epochs"], int) or s["local_epochs"] < 1:
            raise ValueError(f"local_epochs must be an int >= 1, got {s['local_epochs']!r}")
        if s["batch_size"] is not None and (not isinstance(s["batch_size"], int)
                                            or s["batch_size"] < 1):
            raise ValueError(f"batch_size must be an int >= 1 or None, got {s['batch_size']!r}")
        if not (np.isfinite(s["lr"]) and s["lr"] > 0):
            raise ValueError(f"lr must be a finite number > 0, got {s['lr']!r}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction (C) must be in (0, 1], got {self.fraction!r}")
        for name in ("dropout", "straggler_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        check.nonnegative_float(self.l2, "l2")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be an int >= 1, got "
                             f"{self.checkpoint_every!r}")
        self._check_private()
        self._check_compression()
        return s

    def _check_compression(self):
        for name in ("compression", "downlink_compression"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, compress.Compressor):
                raise TypeError(f"{name} must be a cyfed.compress compressor (FP16(), TopK(k), "
                                f"...) or None, got {type(value).__name__}")
        if not isinstance(self.error_feedback, bool):
            raise TypeError(f"error_feedback must be a bool, got "
                            f"{type(self.error_feedback).__name__}")
        if self.error_feedback and self.compression is None:
            raise ValueError("error_feedback needs compression (the uplink compressor)")
        if self.error_feedback:
            compress.ErrorFeedback(self.compression)        # refuses non-contractive ones
        if self.compression is not None and (self.privacy is not None
                                             or self.secure_aggregation is not None):
            raise ValueError("compression does not combine with privacy or secure aggregation "
                             "here: their rows are clipped, noised and quantised instead")

    def _check_private(self):
        """Validate sampling, privacy and secure aggregation, and how they combine."""
        if self.sampling not in ("fixed", "poisson"):
            raise ValueError(f"sampling must be 'fixed' or 'poisson', got {self.sampling!r}")
        if self.privacy is not None:
            if not isinstance(self.privacy, ClientDP):
                raise TypeError(f"privacy must be a cyfed.privacy.ClientDP or None, got "
                                f"{type(self.privacy).__name__}")
            self.privacy.check()
        secure = self.secure_aggregation
        if secure is not None and not isinstance(secure, SecureAggregation):
            raise TypeError(f"secure_aggregation must be a cyfed.secagg.SecureAggregation "
                            f"or None, got {type(secure).__name__}")
        if self.privacy is None and secure is None:
            return
        what = "secure aggregation" if secure is not None else "client-level DP"
        if not self.strategy.aggregates_means:
            raise ValueError(
                f"{type(self.strategy).__name__} needs every client's update, which {what} "
                "does not give the server (DP's noise is calibrated to the sum of clipped "
                "updates); use FedAvg, FedProx, FedSGD, Scaffold or a server optimizer "
                "over one of them")
        if self.attack is not None and (secure is not None or self.privacy.noise
                                        == "distributed"):
            raise ValueError("attack simulation perturbs the clients' updates on the server, "
                             f"which sees only their sum under {what}; use central DP "
                             "without secure aggregation for robustness studies")

    def _hosted(self, clients, comm):
        """{client id: (X, y)} for the clients this rank hosts, and N."""
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

    def _sample_size(self, n):
        if self.clients_per_round is not None:
            m = self.clients_per_round
        elif self.fraction is not None:
            m = max(math.ceil(self.fraction * n), self.min_clients)
        else:
            m = n
        if not isinstance(m, int) or not 1 <= m <= n:
            raise ValueError(f"clients per round must be in [1, {n}] (the number of clients), "
                             f"got {m!r}")
        return m

    def _private_rounds(self, m, n_clients, threads):
        """The DP / secure-aggregation pipeline (None without either): the sampling
        rate q = m / N and the fixed denominator m (q N under Poisson sampling)."""
        if self.privacy is None and self.secure_aggregation is None:
            return None
        if self.secure_aggregation is not None:
            self.secure_aggregation.check_clients(m)
        return PrivateRounds(self.privacy, self.secure_aggregation, self.seed, m / n_clients,
                             float(m), self.rounds, threads)

    def _prepare(self, hosted):
        """Validate the hosted clients and concatenate their rows: (problem, offsets, ids)."""
        ids = sorted(hosted)
        parts = []
        for cid in ids:
            X_k, y_k = hosted[cid]
            X_k = check.matrix(X_k, f"X of client {cid}", allow_empty=True)
            if X_k.shape[0] == 0:
                raise ValueError(f"client {cid} has 0 rows")
            y_k = check.vector(y_k, f"y of client {cid}", X_k.shape[0], X_k.dtype)
            check.finite(X_k, f"X of client {cid}")
            check.finite(y_k, f"y of client {cid}")
            if self.loss == "logistic" and not np.all((y_k == 0) | (y_k == 1)):
                raise ValueError(f"y of client {cid} must hold labels 0 or 1 for the "
                                 "logistic loss")
            parts.append((X_k, y_k))
        if len({p[0].shape[1] for p in parts}) > 1:
            raise ValueError("clients disagree on the number of features: "
                             + ", ".join(f"client {c}: {p[0].shape[1]}" for c, p in zip(ids, parts)))
        if parts:
            dtype = np.result_type(*[p[0].dtype for p in parts])
            X = np.concatenate([p[0] for p in parts]).astype(dtype, copy=False)
            y = np.concatenate([p[1] for p in parts]).astype(dtype, copy=False)
        else:
            X, y = np.empty((0, 1)), np.empty(0)
        offsets = np.zeros(len(ids) + 1, dtype=np.intp)
        offsets[1:] = np.cumsum([p[0].shape[0] for p in parts])
        problem = gradients.prepare(self.loss, X, y, allow_empty=True)
        top = -1
        if problem.kind == gradients.Kind.SOFTMAX and problem.n:
            top = local_labels_max(problem)
        return problem, offsets, ids, top

    def _poison_labels(self, problem, offsets, ids, k):
        """The attack's label poisoning, in place, on this rank's malicious clients."""
        if self.attack is None:
            return
        for pos in np.flatnonzero(self.attack.malicious(np.asarray(ids, dtype=np.int64))):
            rows = slice(offsets[pos], offsets[pos + 1])
            problem.y[rows] = self.attack.poison_labels(problem.y[rows], self.loss, k)

    # -- training ---------------------------------------------------------------

    def fit(self, clients, test=None, callback=None):
        """Train on `clients`: a sequence of (X_k, y_k) for all ids, or this rank's
        {id: (X_k, y_k)}; `test` = (X, y) evaluated on rank 0 after every round;
        `callback(record)` runs on every rank after each round (and its checkpoint)."""
        self.setup(clients)
        start = self._restore() if self.resume and self.checkpoint is not None else 0
        for rnd in range(start, self.rounds):
            record = self.run_round(rnd, test)
            if self.checkpoint is not None and ((rnd + 1) % self.checkpoint_every == 0
                                                or rnd + 1 == self.rounds):
                self._save(rnd + 1)
            if callback is not None:
                callback(record)
        r = self._run
        if r["downlink"] is not None:       # every rank ends with the server's exact model
            self.theta_ = r["comm"].bcast(np.ascontiguousarray(self.theta_), root=0)
            self._store(self.theta_, r["d"], r["k"])
        return self

    # -- checkpoints ------------------------------------------------------------

    def _config(self):
        """What determines the run's result (rounds, threads, ranks and paths do not)."""
        names = ("loss", "clients_per_round", "fraction", "min_clients", "local_epochs",
                 "batch_size", "lr", "l2", "momentum", "max_local_steps", "fit_intercept",
                 "dropout", "straggler_fraction", "seed", "sampling")
        return {"trainer": {n: getattr(self, n) for n in names},
                "strategy": _describe(self.strategy), "attack": _describe(self.attack),
                "privacy": _describe(self.privacy),
                "secure_aggregation": _describe(self.secure_aggregation),
                "compression": _describe(self.compression),
                "error_feedback": self.error_feedback,
                "downlink_compression": _describe(self.downlink_compression)}

    def _data_digest(self):
        """One digest of every client's (X, y), in client-id order, for any rank count."""
        r = self._run
        X, y, offsets = r["problem"].X, r["problem"].y, r["offsets"]
        mine = {int(cid): checkpoint.digest(X[offsets[i]:offsets[i + 1]],
                                            y[offsets[i]:offsets[i + 1]])
                for i, cid in enumerate(r["hosted_ids"])}
        every = {}
        for part in r["comm"].allgather_obj(mine):
            every.update(part)
        return checkpoint.digest([every[c] for c in sorted(every)])

    def _save(self, next_round):
        r = self._run
        uplink = r["uplink"]
        states = r["comm"].allgather_obj(({str(c): v for c, v in r["client_state"].items()},
                                          uplink.state_dict() if uplink else None))
        if r["comm"].rank != 0:
            return
        client_state = {c: v for part, _ in states for c, v in part.items()}
        arrays = {"theta": self.theta_, "strategy": self.strategy.state_dict(),
                  "client_state": client_state,
                  "private": r["private"].state_dict() if r["private"] else {},
                  "downlink": r["downlink"].state_dict() if r["downlink"] else {}}
        if uplink is not None:
            arrays["uplink"] = {part: {k: v for _, state in states for k, v in state[part].items()}
                                for part in ("residuals", "compressor")}
        checkpoint.save(self.checkpoint, arrays,
                        {"round": next_round, "history": self.history_,
                         "config": checkpoint.digest(self._config()),
                         "data": self._data_digest_value})

    def _restore(self):
        """Load the checkpoint on rank 0, check it on every rank, continue from it."""
        r = self._run
        comm = r["comm"]
        found = comm.bcast_obj(Path(self.checkpoint).exists() if comm.rank == 0 else None)
        if not found:
            return 0
        loaded = comm.bcast_obj(checkpoint.load(self.checkpoint) if comm.rank == 0 else None)
        arrays, meta = loaded
        if meta["config"] != checkpoint.digest(self._config()):
            raise ValueError(f"checkpoint {self.checkpoint} was written with another "
                             "configuration (loss, strategy, hyper-parameters or seed); "
                             "refusing to resume from it")
        if meta["data"] != self._data_digest_value:
            raise ValueError(f"checkpoint {self.checkpoint} was written for other client "
                             "data; refusing to resume from it")
        self.theta_ = np.array(arrays["theta"], dtype=np.float64)
        self.strategy.load_state_dict(arrays["strategy"])
        if r["private"] is not None:
            r["private"].load_state_dict(arrays["private"])
        if r["uplink"] is not None:
            r["uplink"].load_state_dict(arrays["uplink"], r["hosted_ids"])
        if r["downlink"] is not None:
            r["downlink"].load_state_dict(arrays["downlink"])
        hosted = set(int(c) for c in r["hosted_ids"])
        r["client_state"] = {int(c): np.array(v) for c, v in arrays["client_state"].items()
                             if int(c) in hosted}
        self.history_ = list(meta["history"])
        self._store(self.theta_, r["d"], r["k"])
        return int(meta["round"])

    def setup(self, clients):
        """Validate everything (on every rank, before any round) and start from theta = 0."""
        comm = CountingComm(self.comm if self.comm is not None else LocalComm())
        settings, (hosted, n_clients) = on_every_rank(
            comm, lambda: (self._settings(), self._hosted(clients, comm)))
        m = on_every_rank(comm, lambda: self._sample_size(n_clients))
        on_every_rank(comm, lambda: self.strategy.check_clients(m))
        threads = check.n_threads(self.n_workers, gradients._kernels.max_threads())
        private = on_every_rank(comm, lambda: self._private_rounds(m, n_clients, threads))
        problem, offsets, ids, top = on_every_rank(comm, lambda: self._prepare(hosted))
        problem, _, k = agree_on_data(comm, problem, top)
        self._poison_labels(problem, offsets, ids, k)
        d = problem.d
        self._run = {
            "comm": comm, "n_clients": n_clients, "m": m, "problem": problem,
            "offsets": offsets,
            "hosted_ids": np.array(ids, dtype=np.int64),
            "d": d, "k": k, "client_state": {}, "start": time.perf_counter(),
            "threads": threads,
            "epochs": settings["local_epochs"], "batch": settings["batch_size"],
            "max_steps": settings["max_local_steps"] or 0, "lr": settings["lr"],
            "sample_rate": m / n_clients, "private": private,
            "uplink": (None if self.compression is None else
                       Uplink(self.compression, self.error_feedback, self.seed, k)),
            "downlink": (None if self.downlink_compression is None else
                         Downlink(self.downlink_compression, self.seed, k)),
        }
        self.theta_ = np.zeros(d * k + k)
        self.history_ = []
        self._store(self.theta_, d, k)
        if self.checkpoint is not None:
            self._data_digest_value = self._data_digest()
        return self

    def run_round(self, rnd, test=None):
        """One round (index rnd seeds its sampling); updates theta_, coef_, history_."""
        r = self._run
        comm, m, n_clients, epochs = r["comm"], r["m"], r["n_clients"], r["epochs"]
        counted = comm.bytes_sent, comm.bytes_received
        theta = self.theta_
        rng = np.random.default_rng([self.seed, rnd])
        if self.sampling == "poisson":
            sampled = np.flatnonzero(rng.random(n_clients) < r["sample_rate"])
        else:
            sampled = np.sort(rng.choice(n_clients, size=m, replace=False))
        m = len(sampled)
        reports = rng.random(m) >= self.dropout
        local_epochs = np.full(m, epochs, dtype=np.intp)
        if self.straggler_fraction > 0 and epochs > 1:
            slow = rng.random(m) < self.straggler_fraction
            partial = rng.integers(1, epochs, size=m)
            if self.strategy.keeps_stragglers:
                local_epochs = np.where(slow, partial, local_epochs)
            else:
                reports &= ~slow
        payload = self.strategy.server_payload(theta).copy()
        if r["downlink"] is None:
            payload = comm.bcast(payload, root=0)
            bytes_down = payload.nbytes
        else:
            payload, bytes_down = r["downlink"].broadcast(comm, payload, rnd)

        mine = np.flatnonzero(reports & np.isin(sampled, r["hosted_ids"]))
        messages, info = self._train_local(r["problem"], r["offsets"], r["hosted_ids"], sampled,
                                           mine, local_epochs, payload, payload[:theta.size],
                                           r["k"], r["batch"], r["max_steps"], r["lr"],
                                           r["threads"], rnd, r["client_state"])
        record = {"round": rnd, "clients": int(reports.sum())}
        private, uplink = r["private"], r["uplink"]
        if uplink is not None:
            messages, info, lengths = self._compress(uplink, payload, messages, info, rnd)
        if private is not None and private.clients_prepare:
            messages = private.client_rows(messages,
                                           self.strategy.message_reference(payload),
                                           info[:, 1], info[:, 0].astype(np.int64), rnd)
            if self.secure_aggregation is not None:
                secure = self._secure_sum(comm, rnd, sampled, messages, record)
                messages = messages[:0]
        all_messages, _ = comm.gatherv(messages.ravel(), root=0)
        all_info, _ = comm.gatherv(info.ravel(), root=0)
        if uplink is not None:
            all_lengths, _ = comm.gatherv(lengths, root=0)
        if comm.rank == 0:
            all_info = all_info.reshape(-1, 4)
            if uplink is not None:
                all_messages = self.strategy.message_reference(payload) + uplink.decode(
                    all_messages, all_lengths, self.strategy.message_width(theta.size))
            if len(all_info):
                record["train_loss"] = float(np.average(all_info[:, 2],
                                                        weights=all_info[:, 1]))
            if private is None:
                theta = self._aggregate(theta, all_messages, all_info, rnd, record)
            else:
                if self.secure_aggregation is not None:
                    total, count = ((None, 0) if secure is None
                                    else (secure.total, len(secure.clients)))
                else:
                    total, count = self._server_rows(private, payload, theta, all_messages,
                                                     all_info, rnd, record)
                if total is not None:
                    theta, extra = private.server_step(self.strategy, theta, total, count,
                                                       n_clients, rnd)
                    record.update(extra)
            record.update(self._evaluate(theta, r["d"], r["k"], test))
        if r["downlink"] is None:
            self.theta_ = comm.bcast(np.ascontiguousarray(theta, dtype=np.float64), root=0)
        else:           # the clients learn the model from the next (compressed) payload
            self.theta_ = theta if comm.rank == 0 else payload[:theta.size]
        record["bytes_down"] = int(bytes_down)
        record["seconds"] = time.perf_counter() - r["start"]
        record = comm.bcast_obj(record if comm.rank == 0 else None, root=0)
        if private is not None:     # the clients clip with the server's next (adaptive) S
            private.load_state_dict(comm.bcast_obj(private.state_dict() if comm.rank == 0
                                                   else None))
        record["bytes_up"] = int(messages.nbytes + info.nbytes      # this rank's
                                 + (lengths.nbytes if uplink is not None else 0))
        record["bytes_sent"] = comm.bytes_sent - counted[0]
        record["bytes_received"] = comm.bytes_received - counted[1]
        self.history_.append(record)
        self._store(self.theta_, r["d"], r["k"])
        return record

    def train_clients(self, theta, client_ids, rnd):
        """Train the clients `client_ids` (hosted on this rank) from `theta`, after `setup`.

        Each client runs the trainer's local training (epochs, batch size, lr,
        momentum, the strategy's proximal term) from the same `theta`, its
        shuffles seeded by (seed, rnd, client id), all of them in one compiled
        call.  No server state is read or written (client corrections and
        messages of stateful strategies such as SCAFFOLD are not applied).

        Parameters
        ----------
        theta : (p,) float array, p = d k + k
        client_ids : sequence of ints, each hosted on this rank
        rnd : int >= 0, seeds the clients' shuffles

        Returns
        -------
        models : (m, p) float64, the local models (a fresh array)
        n_samples : (m,) float64;  losses : (m,) float64 mean local loss;
        steps : (m,) intp local steps taken
        """
        r = self._run
        ids = np.asarray(client_ids, dtype=np.int64).ravel()
        if not np.all(np.isin(ids, r["hosted_ids"])):
            missing = [int(c) for c in ids[~np.isin(ids, r["hosted_ids"])]]
            raise ValueError(f"client_ids {missing} are not hosted on rank {r['comm'].rank}")
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        if self.strategy.message_width(theta.size) != theta.size:
            raise ValueError(f"train_clients needs a strategy whose clients send their model "
                             f"(FedAvg, FedProx, ...), not {type(self.strategy).__name__}")
        local_epochs = np.full(len(ids), r["epochs"], dtype=np.intp)
        models, info = self._train_local(r["problem"], r["offsets"], r["hosted_ids"], ids,
                                         np.arange(len(ids)), local_epochs, theta, theta,
                                         r["k"], r["batch"], r["max_steps"], r["lr"],
                                         r["threads"], rnd, {})
        return (np.array(models[:, :theta.size]), info[:, 1].copy(), info[:, 2].copy(),
                info[:, 3].astype(np.intp))

    def _compress(self, uplink, payload, messages, info, rnd):
        """(payload bytes, info, payload lengths) of this rank's clients' finite
        updates; a client whose update is NaN/Inf is named and left out here."""
        ok = aggregate.finite_rows(messages) if len(messages) else np.ones(0, dtype=bool)
        if not ok.all():
            warn_non_finite(info[~ok, 0])
            messages, info = messages[ok], info[ok]
        flat, lengths = uplink.encode(messages - self.strategy.message_reference(payload),
                                      info[:, 0].astype(np.int64), rnd)
        return flat, np.ascontiguousarray(info), lengths

    def _aggregate(self, theta, messages, info, rnd, record):
        """The strategy's step from every reporting client's message (rank 0)."""
        if len(info) == 0:
            return theta
        info, messages = _in_id_order(info, messages)
        ids = info[:, 0].astype(np.int64)
        if self.attack is not None:
            record["malicious"] = int(self.attack.malicious(ids).sum())
            messages = self.attack.perturb(theta, messages, ids,
                                           np.random.default_rng([self.seed, rnd, 1]))
        return self.strategy.aggregate(theta, messages, info[:, 1], ids,
                                       self._run["n_clients"])

    def _secure_sum(self, comm, rnd, sampled, rows, record):
        """The secure sum of this round's rows [w u, w, b, id] (a SecureSum on rank 0).
        A round the protocol abandons (too few clients left to unmask) keeps theta
        (None here): its record says why, and every rank warns."""
        try:
            result = self.secure_aggregation.secure_sum(
                comm, (self.seed, rnd), sampled, self._run["hosted_ids"],
                {int(row[-1]): row[:-1] for row in rows}, rows.shape[1] - 1)
        except SecAggError as exc:
            warnings.warn(f"round {rnd}: {exc}; the model is left as it was", RuntimeWarning,
                          stacklevel=3)
            record["secagg_abandoned"] = str(exc)
            return None
        if comm.rank == 0:
            record.update(secagg_clients=len(result.clients), secagg_clipped=int(result.clipped),
                          secagg_bytes_up=sum(result.bytes_up.values()),
                          secagg_bytes_down=sum(result.bytes_down.values()))
        return result

    def _server_rows(self, private, payload, theta, messages, info, rnd, record):
        """(sum of the rows, clients in it) from the gathered messages (rank 0): the
        clients' prepared rows [w u, w, b, id], or their messages, which the server
        clips itself (central DP)."""
        if private.clients_prepare:
            return private.sum_rows(
                messages.reshape(-1, self.strategy.message_width(theta.size) + 3))
        info, messages = _in_id_order(info, messages)
        ids = info[:, 0].astype(np.int64)
        if self.attack is not None:
            record["malicious"] = int(self.attack.malicious(ids).sum())
            messages = np.ascontiguousarray(self.attack.perturb(
                theta, messages, ids, np.random.default_rng([self.seed, rnd, 1])))
        return private.server_sum(messages, self.strategy.message_reference(payload), ids)

    def _train_local(self, problem, offsets, hosted_ids, sampled, mine, local_epochs, payload,
                     theta, k, batch, max_steps, lr, threads, rnd, client_state):
        """Train this rank's reporting sampled clients in one compiled call:
        (messages (m, width), info (m, 4) = [id, n_samples, mean loss, steps])."""
        n_params = theta.size
        if len(mine) == 0:
            return np.empty((0, self.strategy.message_width(n_params))), np.empty((0, 4))
        which = np.searchsorted(hosted_ids, sampled[mine]).astype(np.intp)
        cids = np.ascontiguousarray(sampled[mine], dtype=np.int64)
        dtype = problem.dtype
        corr = self.strategy.client_corrections(payload, cids, client_state)
        corrections = (np.empty((0, 0), dtype=dtype) if corr is None
                       else np.ascontiguousarray(corr, dtype=dtype))
        out = self._out_buffer(len(mine), n_params)
        losses = np.empty(len(mine))
        steps = np.empty(len(mine), dtype=np.intp)
        sizes = offsets[which + 1] - offsets[which]
        batch_size = int(sizes.max()) if batch is None else batch
        _sgd.train_clients(int(problem.kind), problem.X, problem.y, offsets, which, cids,
                           np.ascontiguousarray(local_epochs[mine], dtype=np.intp),
                           theta.astype(dtype), corrections, out, losses, steps, k,
                           self.fit_intercept, batch_size, max_steps, lr, self.l2,
                           self.strategy.mu, self.momentum, self.seed, rnd, threads)
        messages = self.strategy.client_messages(payload, out, steps, lr, cids,
                                                 client_state)
        info = np.column_stack([cids, sizes, losses, steps]).astype(np.float64)
        return np.ascontiguousarray(messages, dtype=np.float64), info

    def _out_buffer(self, m, n_params):
        """(m, n_params) float64 rows for local models, reused across rounds (no page
        faults from a fresh multi-MB array every round)."""
        buf = self._run.get("out")
        if buf is None or buf.shape[0] < m or buf.shape[1] != n_params:
            buf = self._run["out"] = np.empty((m, n_params))
        return buf[:m]

    def _evaluate(self, theta, d, k, test):
        if test is None:
            return {}
        X, y = test
        coef, b = self._split(theta, d, k)
        b = b if self.fit_intercept else None
        # the trainer's threads: with one worker per rank, more would oversubscribe the cores
        threads = self._run["threads"]
        value = gradients.loss_grad(self.loss, X, y, coef, b, n_threads=threads)[0]
        pred = gradients.predict(self.loss, X, coef, b, n_threads=threads)
        y = np.asarray(y, dtype=np.float64)
        if self.loss == "squared":
            score = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
            return {"test_loss": float(value), "test_r2": float(score)}
        return {"test_loss": float(value), "test_accuracy": float(np.mean(pred == y))}

    @staticmethod
    def _split(theta, d, k):
        coef = theta[:d * k].reshape(d, k)
        b = theta[d * k:]
        return (coef[:, 0], float(b[0])) if k == 1 else (coef, b)

    def _store(self, theta, d, k):
        self.coef_, self.intercept_ = self._split(theta.copy(), d, k)
        if not self.fit_intercept:
            self.intercept_ = 0.0 if k == 1 else np.zeros(k)

    def predict(self, X):
        return gradients.predict(self.loss, X, self.coef_, self.intercept_)


def _in_id_order(info, messages):
    """(info, messages) of the gathered clients sorted by client id (info[:, 0])."""
    messages = messages.reshape(len(info), -1)
    if np.any(np.diff(info[:, 0]) < 0):
        order = np.argsort(info[:, 0], kind="stable")
        info, messages = info[order], messages[order]
    return info, messages


def _describe(obj):
    """A JSON-able description of a strategy or an attack: class and hyper-parameters
    (not a strategy's server state, which checkpoints carry separately)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (set, frozenset)):
        return sorted(_describe(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [_describe(v) for v in obj]
    params = obj.hyper_parameters() if hasattr(obj, "hyper_parameters") else vars(obj)
    return {"class": type(obj).__name__,
            **{k: _describe(v) for k, v in sorted(params.items()) if not k.startswith("_")}}


def write_history(history, path):
    """Write a trainer's history_ (a list of dicts) as JSON (.json) or CSV (.csv)."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(history, indent=1))
    elif path.suffix == ".csv":
        columns = list(dict.fromkeys(key for record in history for key in record))
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
    else:
        raise ValueError(f"history path must end in .json or .csv, got {path.name!r}")
