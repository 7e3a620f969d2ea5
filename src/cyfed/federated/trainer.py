"""`FederatedTrainer`: options, set-up, the round loop over `stages`, checkpoints.

Clients 0..N-1 each hold their rows on exactly one rank.  Every random draw is
seeded by (seed, round[, client id]) and rank 0 aggregates in client-id order,
so the model is bit-identical for any number of ranks and worker threads.
Long-form documentation: docs/federated.md.
"""
import copy
import math
from dataclasses import dataclass, field

import numpy as np

from cyfed import _validation as check
from cyfed._params import ParamsMixin
from cyfed import checkpoint, compress, training
from cyfed.attacks import Attack
from cyfed.comm import on_every_rank, thread_choice
from cyfed.compress.rounds import Downlink, Uplink
from cyfed.federated import clients as client_data
from cyfed.federated import stages
from cyfed.models import LinearModel, as_model
from cyfed.privacy import ClientDP
from cyfed.private_rounds import PrivateRounds
from cyfed.secagg import SecureAggregation
from cyfed.strategies import Strategy


@dataclass
class FedRun(training.Run):
    """A federated fit: the shared run state, the options every round reads, this
    rank's clients, and the per-round helpers (privacy, compression)."""
    strategy: object = None
    attack: object = None
    seed: int = 0
    sampling: str = "fixed"
    n_clients: int = 0
    m: int = 0                  # clients per round (expected count under Poisson sampling)
    dropout: float = 0.0
    straggler_fraction: float = 0.0
    epochs: int = 1
    batch: object = None
    max_steps: int = 0
    lr: float = 0.01
    l2: float = 0.0
    momentum: float = 0.0
    offsets: np.ndarray = None
    hosted_ids: np.ndarray = None
    client_state: dict = field(default_factory=dict)
    private: object = None
    uplink: object = None
    downlink: object = None

    @property
    def sample_rate(self):
        return self.m / self.n_clients

    def evaluate(self, theta, test):
        """{"test_loss", "test_accuracy" | "test_r2"} of theta on test = (X, y), with the
        run's threads (one worker per rank must not oversubscribe the cores)."""
        X, y = test
        return {f"test_{key}": value
                for key, value in self.model.evaluate(X, y, theta, self.threads).items()}


class FederatedTrainer(ParamsMixin):
    """Run federated rounds of `strategy` (FedAvg, FedSGD, FedProx, Scaffold, ...).

    Parameters
    ----------
    strategy : cyfed.strategies.Strategy
    loss : {"squared", "logistic", "softmax"} or cyfed.models.Model
    rounds : int >= 1
    clients_per_round : int, or fraction : float in (0, 1]
        m = clients_per_round, or max(ceil(fraction * N), min_clients) (default: all).
    local_epochs : int >= 1;  batch_size : int >= 1 or None (whole client);
    lr : local learning rate;  l2 : L2 penalty;  momentum : local momentum;
    max_local_steps : cap on a client's local steps per round (None: no cap)
    fit_intercept : bool (linear models)
    dropout : probability in [0, 1) that a sampled client does not report
    straggler_fraction : share of sampled clients that run only 1..E-1 epochs
        (kept by FedProx, dropped by FedAvg)
    seed : seeds sampling, dropouts, stragglers and every client's shuffles
    n_workers : threads training clients concurrently in each process (None: the cores
        this process may use divided by the ranks on its node, or OMP_NUM_THREADS when
        set -- `cyfed.comm.thread_choice`; the choice is `n_workers_`)
    comm : Communicator or None -- None is `cyfed.comm.get_comm()` (MPI's world
        under mpiexec with more than one rank, else one process)
    attack : cyfed.attacks.Attack or None (simulated malicious clients)
    checkpoint : path or None;  checkpoint_every : int >= 1;  resume : bool --
        atomic checkpoints by rank 0; a resumed run ends bit-identical
    sampling : "fixed" (m clients without replacement) or "poisson" (each with q = m/N)
    privacy : cyfed.privacy.ClientDP or None (DP-FedAvg; epsilon in the history)
    secure_aggregation : cyfed.secagg.SecureAggregation or None (rank 0 learns sums only)
    compression, downlink_compression : cyfed.compress compressors or None;
    error_feedback : bool (uplink)

    With privacy or secure aggregation the strategy must aggregate means only
    (FedAvg, FedSGD, FedProx, Scaffold, server optimizers over them).

    Attributes after fit: theta_ (flat parameters), coef_ / intercept_ (linear
    models), model_ (the bound model), strategy_ (a copy of `strategy` holding the
    server state: every fit starts from the strategy as given), history_ (one dict per round: round, clients, train_loss, test
    metrics, bytes_up / bytes_down, bytes_sent / bytes_received, seconds, ...).
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

    # -- checks -----------------------------------------------------------------

    def _settings(self):
        """Validated hyper-parameters: local training with the strategy's overrides."""
        if not isinstance(self.strategy, Strategy):
            raise TypeError(f"strategy must be a cyfed.strategies.Strategy, got "
                            f"{type(self.strategy).__name__}")
        if self.attack is not None and not isinstance(self.attack, Attack):
            raise TypeError(f"attack must be a cyfed.attacks.Attack or None, got "
                            f"{type(self.attack).__name__}")
        s = {"local_epochs": self.local_epochs, "batch_size": self.batch_size,
             "max_local_steps": self.max_local_steps, "lr": self.lr}
        s.update(self.strategy.local_settings(self))
        check.int_at_least(self.rounds, "rounds", 1)
        check.int_at_least(s["local_epochs"], "local_epochs", 1)
        check.optional_int_at_least(s["batch_size"], "batch_size", 1)
        check.optional_int_at_least(s["max_local_steps"], "max_local_steps", 1)
        check.positive_float(s["lr"], "lr")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction (C) must be in (0, 1], got {self.fraction!r}")
        check.int_at_least(self.min_clients, "min_clients", 1)
        check.in_unit_interval(self.dropout, "dropout")
        check.in_unit_interval(self.straggler_fraction, "straggler_fraction")
        check.nonnegative_float(self.l2, "l2")
        check.in_unit_interval(self.momentum, "momentum")
        check.boolean(self.fit_intercept, "fit_intercept")
        check.int_at_least(self.checkpoint_every, "checkpoint_every", 1)
        self._check_private()
        self._check_compression()
        return s

    def _check_compression(self):
        check.compressor(self.compression, "compression")
        check.compressor(self.downlink_compression, "downlink_compression")
        check.boolean(self.error_feedback, "error_feedback")
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

    def _sample_size(self, n):
        if self.clients_per_round is not None:
            m = self.clients_per_round
        elif self.fraction is not None:
            m = max(math.ceil(self.fraction * n), self.min_clients)
        else:
            m = n
        return check.int_at_least(m, f"clients per round (clients_per_round, or fraction "
                                     f"of N = {n})", 1, n)

    # -- set-up -----------------------------------------------------------------

    def setup(self, clients):
        """Validate everything (on every rank, before any round) and start from the
        model's initial parameters (zeros for linear models)."""
        comm = training.communicator(self.comm)
        settings, (hosted, n_clients) = on_every_rank(
            comm, lambda: (self._settings(), client_data.hosted_clients(clients, comm)))
        m = on_every_rank(comm, lambda: self._sample_size(n_clients))
        on_every_rank(comm, lambda: self.strategy.check_clients(m))
        threads = self.n_workers_ = thread_choice(comm, self.n_workers)["threads"]
        private = on_every_rank(comm, lambda: self._private_rounds(m, n_clients, threads))
        self.strategy_ = copy.deepcopy(self.strategy)     # server state starts fresh each fit
        model = as_model(self.loss, self.fit_intercept)
        data, offsets, ids, top = on_every_rank(comm, lambda: client_data.concatenate(model,
                                                                                      hosted))
        data, _, model, top = training.bind_data(comm, model, data, top)
        n_classes = max(top + 1, 2) if model.targets == "classes" else 1
        client_data.poison_labels(self.attack, model, data, offsets, ids, n_classes)
        self._run = FedRun(
            comm=comm, model=model, data=data, threads=threads, strategy=self.strategy_,
            attack=self.attack, seed=self.seed, sampling=self.sampling, n_clients=n_clients,
            m=m, dropout=self.dropout, straggler_fraction=self.straggler_fraction,
            epochs=settings["local_epochs"], batch=settings["batch_size"],
            max_steps=settings["max_local_steps"] or 0, lr=settings["lr"], l2=self.l2,
            momentum=self.momentum, offsets=offsets, hosted_ids=ids, private=private,
            uplink=(None if self.compression is None else
                    Uplink(self.compression, self.error_feedback, self.seed, model.k)),
            downlink=(None if self.downlink_compression is None else
                      Downlink(self.downlink_compression, self.seed, model.k)))
        self._stages = self._pipeline(self._run)
        if self.checkpoint is not None:
            self._run.checkpoints = training.Checkpoints(
                self.checkpoint, self.config(), self._data_digest(), "other client data")
        self.history_ = []
        theta = on_every_rank(comm, model.init_params)
        self._store(comm.bcast_obj(theta if comm.rank == 0 else None))    # one start everywhere
        return self

    def _private_rounds(self, m, n_clients, threads):
        """The DP / secure-aggregation helper (None without either): sampling rate
        q = m / N and the fixed denominator m (q N under Poisson sampling)."""
        if self.privacy is None and self.secure_aggregation is None:
            return None
        if self.secure_aggregation is not None:
            self.secure_aggregation.check_clients(m)
        return PrivateRounds(self.privacy, self.secure_aggregation, self.seed, m / n_clients,
                             float(m), self.rounds, threads)

    @staticmethod
    def _pipeline(run):
        """The round's stages for this run's options (see `cyfed.federated.stages`)."""
        private = run.private
        secure = private is not None and private.secure is not None
        client, server = [], []
        if run.uplink is not None:
            client.append(stages.CompressUplink(run.uplink))
            server.append(stages.DecodeUplink(run.uplink))
        if private is None:
            server.append(stages.Aggregate())
        else:
            if private.clients_prepare:
                client.append(stages.PrivateRows(private))
            if secure:
                client.append(stages.SecureSum(private.secure))
            elif private.clients_prepare:
                server.append(stages.PreparedRows(private))
            else:
                server.append(stages.CentralClipping(private))
            server.append(stages.PrivateStep(private))
        broadcast = (stages.Broadcast() if run.downlink is None
                     else stages.CompressedBroadcast(run.downlink))
        return [stages.Sample(), broadcast, stages.LocalTraining(), *client,
                stages.Gather(lengths=run.uplink is not None), *server, stages.Evaluate(),
                stages.Publish(run.downlink)]

    # -- training ---------------------------------------------------------------

    def fit(self, clients, test=None, callback=None):
        """Train on `clients`: a sequence of (X_k, y_k) for all ids, or this rank's
        {id: (X_k, y_k)}; `test` = (X, y) evaluated on rank 0 after every round;
        `callback(record)` runs on every rank after each round (and its checkpoint)."""
        with training.single_threaded_blas():
            return self._fit(clients, test, callback)

    def _fit(self, clients, test, callback):
        self.setup(clients)
        run = self._run
        start = self._restore() if self.resume and run.checkpoints is not None else 0
        for rnd in range(start, self.rounds):
            record = self.run_round(rnd, test)
            if run.checkpoints is not None and ((rnd + 1) % self.checkpoint_every == 0
                                                or rnd + 1 == self.rounds):
                self._save(rnd + 1)
            if callback is not None:
                callback(record)
        if run.downlink is not None:        # every rank ends with the server's exact model
            self._store(run.comm.bcast(np.ascontiguousarray(self.theta_), root=0))
        return self

    def run_round(self, rnd, test=None):
        """One round (index rnd seeds its draws) through the stages; updates theta_,
        coef_, history_ and returns the round's record."""
        r = stages.Round(self._run, rnd, self.theta_, test)
        for stage in self._stages:
            stage(r)
        self.history_.append(r.record)
        self._store(r.theta)
        return r.record

    def train_clients(self, theta, client_ids, rnd):
        """Train the clients `client_ids` (hosted on this rank) from `theta`, after `setup`.

        Each runs the trainer's local training from the same theta, shuffles seeded
        by (seed, rnd, client id); no server state is read or written.  Returns
        (models (m, p) float64, n_samples (m,), mean local losses (m,), steps (m,) intp).
        """
        run = self._run
        ids = np.asarray(client_ids, dtype=np.int64).ravel()
        if not np.all(np.isin(ids, run.hosted_ids)):
            missing = [int(c) for c in ids[~np.isin(ids, run.hosted_ids)]]
            raise ValueError(f"client_ids {missing} are not hosted on rank {run.comm.rank}")
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        if self.strategy.message_width(theta.size) != theta.size:
            raise ValueError(f"train_clients needs a strategy whose clients send their model "
                             f"(FedAvg, FedProx, ...), not {type(self.strategy).__name__}")
        epochs = np.full(len(ids), run.epochs, dtype=np.intp)
        models, info = stages.LocalTraining().train(run, ids, epochs, theta, rnd, {})
        return (np.array(models[:, :theta.size]), info[:, 1].copy(), info[:, 2].copy(),
                info[:, 3].astype(np.intp))

    @property
    def hosted_ids(self):
        """The ids of the clients this rank hosts (after `setup`)."""
        return self._run.hosted_ids.copy()

    @property
    def n_clients(self):
        return self._run.n_clients

    def evaluate(self, theta, test):
        """{"test_loss", "test_accuracy" | "test_r2"} of the flat model theta on test."""
        return self._run.evaluate(theta, test)

    # -- checkpoints ------------------------------------------------------------

    def config(self):
        """What determines the run's result (rounds, threads, ranks, paths do not)."""
        names = ("clients_per_round", "fraction", "min_clients", "local_epochs",
                 "batch_size", "lr", "l2", "momentum", "max_local_steps", "fit_intercept",
                 "dropout", "straggler_fraction", "seed", "sampling", "error_feedback")
        return {"model": training.describe(as_model(self.loss, self.fit_intercept)),
                **{n: getattr(self, n) for n in names},
                **{n: training.describe(getattr(self, n))
                   for n in ("strategy", "attack", "privacy", "secure_aggregation",
                             "compression", "downlink_compression")}}

    def _data_digest(self):
        """One digest of every client's (X, y), in client-id order, for any rank count."""
        run = self._run
        X, y, offsets = run.data.X, run.data.y, run.offsets
        return training.data_digest(run.comm, {
            int(cid): checkpoint.digest(X[offsets[i]:offsets[i + 1]], y[offsets[i]:offsets[i + 1]])
            for i, cid in enumerate(run.hosted_ids)})

    def _save(self, next_round):
        run = self._run
        states = run.comm.allgather_obj(({str(c): v for c, v in run.client_state.items()},
                                         run.uplink.state_dict() if run.uplink else None))
        if run.comm.rank != 0:
            return
        arrays = {"theta": self.theta_, "strategy": self.strategy_.state_dict(),
                  "client_state": {c: v for part, _ in states for c, v in part.items()},
                  "private": run.private.state_dict() if run.private else {},
                  "downlink": run.downlink.state_dict() if run.downlink else {}}
        if run.uplink is not None:
            arrays["uplink"] = {part: {k: v for _, state in states for k, v in state[part].items()}
                                for part in ("residuals", "compressor")}
        run.checkpoints.save(run.comm, arrays, {"round": next_round, "history": self.history_})

    def _restore(self):
        """Continue from the checkpoint (checked on every rank): the next round."""
        run = self._run
        loaded = run.checkpoints.restore(run.comm)
        if loaded is None:
            return 0
        arrays, meta = loaded
        self.strategy_.load_state_dict(arrays["strategy"])
        for helper, key in ((run.private, "private"), (run.downlink, "downlink")):
            if helper is not None:
                helper.load_state_dict(arrays[key])
        if run.uplink is not None:
            run.uplink.load_state_dict(arrays["uplink"], run.hosted_ids)
        hosted = set(int(c) for c in run.hosted_ids)
        run.client_state = {int(c): np.array(v) for c, v in arrays["client_state"].items()
                            if int(c) in hosted}
        self.history_ = list(meta["history"])
        self._store(np.array(arrays["theta"], dtype=np.float64))
        return int(meta["round"])

    def _store(self, theta):
        """theta_, model_ and, for linear models, coef_ / intercept_ (copies)."""
        self.theta_, self.model_ = theta, self._run.model
        if isinstance(self.model_, LinearModel):
            self.coef_, self.intercept_ = self.model_.split(theta)

    def predict(self, X):
        """Predictions of the current model for rows X."""
        return self.model_.predict(X, self.theta_)
