"""Federated strategies: how a round is configured and how client results are combined.

A strategy sees flat float64 parameter vectors theta (a linear model's
[coef (row-major), intercept]).  `Strategy` is the contract between a strategy
and `cyfed.federated.FederatedTrainer`: which hook runs when in a round, on
which rank, with which shapes -- docs/strategies.md has it in prose, with a
table of the strategies, their hyper-parameters and references.  The arithmetic
lives in `cyfed.aggregate`.
"""
import math
import warnings

import numpy as np

from cyfed import _validation as check
from cyfed import aggregate


class Strategy:
    """Base class of the federated strategies: the local rule and the server step.

    `cyfed.federated.FederatedTrainer` calls the hooks below, each on the
    ranks its docstring names (p = n_params, w = message_width(p), m the
    reporting sampled clients a rank hosts, K all reporting clients);
    docs/strategies.md walks through a round in order.

    Invariants (they make a run bit-identical for any number of ranks and worker
    threads):

    * Every hook is a deterministic function of its arguments and the server
      state; nothing may depend on the rank, on the number of ranks, or on
      which other clients a rank hosts: row i of a client hook's result depends
      only on client_ids[i], its state and the payload.
    * The client hooks read server state from the payload only: the server
      state is updated by `aggregate` / `aggregate_mean` on rank 0 and is
      stale on the other ranks.
    * Client ids arrive in increasing order, on the client side and in
      `aggregate`; aggregation adds in that order.
    * Randomness, if any, is drawn from generators seeded by (seed, round,
      client id), never from global state.

    Attributes
    ----------
    mu : float >= 0
        FedProx's proximal coefficient: local training minimises
        F_k(w) + mu/2 ||w - w_t||^2 (read every round by every rank's local
        training).
    keeps_stragglers : bool
        True: a straggler (``straggler_fraction``) reports after 1..E-1 of its
        E epochs; False: it does not report this round (read by the sampling
        stage, on every rank).
    aggregates_means : bool
        Whether the server step needs only the mean of the clients' updates
        (`aggregate_mean`), so that the strategy composes with client-level DP
        and secure aggregation, which show the server nothing else (checked at
        set-up).
    _state_attrs : tuple of str
        Attributes that hold server state, not hyper-parameters (left out of
        `hyper_parameters`).
    """

    mu = 0.0
    keeps_stragglers = False
    aggregates_means = False
    _state_attrs = ()

    def local_settings(self, trainer):
        """Overrides of the trainer's local training (set-up, every rank).

        Parameters
        ----------
        trainer : cyfed.federated.FederatedTrainer
            Its hyper-parameters as given (read-only).

        Returns
        -------
        dict
            A subset of {"local_epochs", "batch_size", "max_local_steps", "lr"}
            replacing the trainer's values; validated afterwards like them.
        """
        return {}

    def check_clients(self, m):
        """Refuse rounds the strategy cannot aggregate (set-up, every rank).

        Parameters
        ----------
        m : int >= 1
            Clients sampled per round (the expected count under Poisson sampling).

        Raises
        ------
        ValueError
            Naming the bound m violates (robust rules need m >= 2f + 3, ...).
        """

    def server_payload(self, theta):
        """What rank 0 broadcasts at the start of a round.

        Called on every rank: rank 0's result is broadcast, the other ranks'
        only sizes the receive buffer (its length must not depend on the rank).

        Parameters
        ----------
        theta : (p,) float64
            The global model.

        Returns
        -------
        payload : (q,) float64, q >= p
            The model first (clients train from payload[:p]), then any server
            state the clients need (SCAFFOLD's c: q = 2p).  With downlink
            compression the clients receive an approximation of it.
        """
        return theta

    def message_width(self, n_params):
        """Length w of one client's message (any rank, any time).

        Parameters
        ----------
        n_params : int
            p, the model's parameter count.

        Returns
        -------
        int
            w (p when clients send their local model; 2p for SCAFFOLD).
        """
        return n_params

    def client_corrections(self, payload, client_ids, client_state):
        """Terms added to every local gradient of these clients.

        Runs once a round on each rank, for the reporting sampled clients it hosts.

        Parameters
        ----------
        payload : (q,) float64
            The round's payload, as the clients received it.
        client_ids : (m,) int64
            Increasing client ids.
        client_state : dict {int: ndarray}
            This rank's per-client state (kept across rounds, checkpointed);
            read-only here.

        Returns
        -------
        (m, p) array or None
            Row i is added to each local gradient of client_ids[i] (cast to the
            data's dtype); None adds nothing.
        """
        return None

    def client_messages(self, payload, local_thetas, steps, lr, client_ids, client_state):
        """What the clients send back after local training.

        Runs once a round on each rank, for the reporting sampled clients it hosts.

        Parameters
        ----------
        payload : (q,) float64
            The round's payload, as the clients received it.
        local_thetas : (m, p) float64
            The clients' local models (a buffer reused next round: copy what
            must outlive the call).
        steps : (m,) intp
            Local SGD steps each client took (0 for none).
        lr : float
            The local learning rate (after `local_settings`).
        client_ids : (m,) int64
            Increasing client ids.
        client_state : dict {int: ndarray}
            This rank's per-client state; a strategy may set the entries of
            these clients (SCAFFOLD's c_k).

        Returns
        -------
        (m, w) float64 array
            Row i is client_ids[i]'s message.
        """
        return local_thetas

    def message_reference(self, payload):
        """The message of a client that did not move.

        A client's update is u_k = message_k - reference: what uplink
        compression encodes and what DP clips, noises and secure aggregation
        masks.  Called on every rank.

        Parameters
        ----------
        payload : (q,) float64

        Returns
        -------
        (w,) float64
        """
        return payload

    def aggregate(self, theta, messages, n_samples, client_ids, n_clients):
        """The server step: the next global model from the clients' messages.

        Runs on rank 0 once a round in which at least one client reported
        (rounds without privacy or secure aggregation).

        Parameters
        ----------
        theta : (p,) float64
            The global model of the round.
        messages : (K, w) float64
            The reporting clients' messages in increasing client-id order (as
            the server receives them: decoded, or perturbed by a simulated
            attack); rows may hold NaN or Inf -- leave them out, naming them.
        n_samples : (K,) float64
            Each client's number of rows.
        client_ids : (K,) int64
            Increasing client ids.
        n_clients : int
            N, the number of clients in the federation.

        Returns
        -------
        (p,) float64
            The next global model; returning `theta` itself (the same object)
            means the round changed nothing.
        """
        raise NotImplementedError

    def aggregate_mean(self, theta, mean_update, count, n_clients):
        """The server step from the mean of the clients' updates only.

        Runs on rank 0 instead of `aggregate` when the trainer has client-level
        DP or secure aggregation (only for strategies with aggregates_means).

        Parameters
        ----------
        theta : (p,) float64
        mean_update : (w,) float64
            sum_k a_k u_k / sum_k a_k, u_k = message_k - reference (a_k = 1
            under DP, with the fixed denominator m and the noise added).
        count : int or float
            The number of clients in the mean (under DP the fixed denominator m).
        n_clients : int
            N, the number of clients in the federation.

        Returns
        -------
        (p,) float64
        """
        raise NotImplementedError(f"{type(self).__name__} needs every client's update")

    def hyper_parameters(self):
        """What configures the strategy, for the run's config fingerprint.

        Called at set-up on every rank of a checkpointed run: a checkpoint
        resumes only under the same fingerprint.

        Returns
        -------
        dict {str: value}
            The instance's attributes but its server state (`_state_attrs`).
        """
        return {k: v for k, v in vars(self).items() if k not in self._state_attrs}

    def state_dict(self):
        """The server state, for checkpoints (rank 0, at every checkpoint).

        Returns
        -------
        dict {str: ndarray, number or such a dict}
            Copies, not views of live state.
        """
        return {}

    def load_state_dict(self, state):
        """Restore the server state (every rank, on resume).

        Parameters
        ----------
        state : dict
            What `state_dict` returned, as read back from the checkpoint.
        """

    @staticmethod
    def _drop_non_finite(messages, n_samples, client_ids):
        ok = aggregate.finite_rows(messages)
        if ok.all():
            return messages, n_samples, client_ids
        check.warn_non_finite(np.asarray(client_ids)[~ok])
        return messages[ok], n_samples[ok], np.asarray(client_ids)[ok]


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017, arXiv:1602.05629): theta = sum n_k theta_k / sum n_k.

    Non-finite client models are reported by client id and left out (the weights
    are renormalised over the rest); a round with no usable client keeps theta.
    """

    aggregates_means = True

    def aggregate(self, theta, messages, n_samples, client_ids, n_clients):
        messages, n_samples, _ = self._drop_non_finite(messages, n_samples, client_ids)
        if len(messages) == 0:
            return theta
        return aggregate.weighted_mean(messages, n_samples)

    def aggregate_mean(self, theta, mean_update, count, n_clients):
        return theta + mean_update


class FedSGD(FedAvg):
    """FedSGD (seed 3.2): each client takes one full-batch gradient step; FedAvg combines.

    With every client sampled this equals one step of full-batch gradient descent.
    """

    def local_settings(self, trainer):
        return {"local_epochs": 1, "batch_size": None, "max_local_steps": 1}


class FedProx(FedAvg):
    """FedProx (Li et al. 2020, arXiv:1812.06127): local objective F_k(w) + mu/2 ||w - w_t||^2.

    Stragglers' partial work is kept (the paper's systems-heterogeneity rule).
    """

    keeps_stragglers = True

    def __init__(self, mu=0.01):
        self.mu = check.finite_real(mu, "mu", 0)


class Scaffold(Strategy):
    """SCAFFOLD, option II (Karimireddy et al. 2020, arXiv:1910.06378).

    Local step y <- y - lr (g(y) - c_k + c); after K steps
    c_k+ = c_k - c + (x - y)/(K lr); server x <- x + eta_g/|S| sum (y_k - x),
    c <- c + (1/N) sum (c_k+ - c_k).  The payload is [x, c]; a message [y_k, dc_k].
    """

    _state_attrs = ("c",)
    aggregates_means = True

    def __init__(self, eta_g=1.0):
        if not eta_g > 0:
            raise ValueError(f"eta_g must be > 0, got {eta_g!r}")
        self.eta_g = float(eta_g)
        self.c = None

    def server_payload(self, theta):
        if self.c is None:
            self.c = np.zeros_like(theta)
        return np.concatenate([theta, self.c])

    def message_width(self, n_params):
        return 2 * n_params

    def client_corrections(self, payload, client_ids, client_state):
        c = payload[payload.size // 2:]
        return np.stack([c - client_state.get(int(cid), 0.0) for cid in client_ids])

    def client_messages(self, payload, local_thetas, steps, lr, client_ids, client_state):
        half = payload.size // 2
        x, c = payload[:half], payload[half:]
        out = np.zeros((len(client_ids), 2 * half))
        out[:, :half] = local_thetas
        for row, (cid, k_steps) in enumerate(zip(client_ids, steps)):
            if k_steps == 0:
                continue
            c_k = client_state.get(int(cid), np.zeros_like(c))
            c_new = c_k - c + (x - local_thetas[row]) / (k_steps * lr)
            client_state[int(cid)] = c_new
            out[row, half:] = c_new - c_k
        return out

    def state_dict(self):
        return {} if self.c is None else {"c": self.c.copy()}

    def load_state_dict(self, state):
        self.c = np.array(state["c"], dtype=np.float64) if "c" in state else None

    def message_reference(self, payload):
        half = payload.size // 2
        return np.concatenate([payload[:half], np.zeros(half)])

    def aggregate(self, theta, messages, n_samples, client_ids, n_clients):
        messages, n_samples, _ = self._drop_non_finite(messages, n_samples, client_ids)
        if len(messages) == 0:
            return theta
        updates = messages - self.message_reference(self.server_payload(theta))
        mean = aggregate.weighted_mean(updates, np.ones(len(messages)))
        return self.aggregate_mean(theta, mean, len(messages), n_clients)

    def aggregate_mean(self, theta, mean_update, count, n_clients):
        half = mean_update.size // 2
        self.c = self.c + mean_update[half:] * (count / n_clients)
        return theta + self.eta_g * mean_update[:half]


# -- robust aggregation ---------------------------------------------------------------------

class RobustStrategy(Strategy):
    """Clients send their local models; the server combines them with a robust rule
    (`rule(theta, models, n_samples)`), after leaving out non-finite models (named in a
    warning).  A round left with fewer than `min_clients` models keeps theta, with
    a warning.  mu > 0 trains the clients with FedProx's proximal term (and keeps
    stragglers' partial work, as FedProx does)."""

    def __init__(self, mu=0.0):
        self.mu = check.finite_real(mu, "mu", 0)
        self.keeps_stragglers = self.mu > 0

    #: Fewest client models the rule accepts.
    min_clients = 1
    #: The bound min_clients expresses, for error messages.
    bound = "1"

    def check_clients(self, m):
        if m < self.min_clients:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_clients} "
                             f"clients per round ({self.bound}), got {m}")

    def rule(self, theta, models, n_samples):
        """The next global model from the finite client models.

        Parameters
        ----------
        theta : (p,) float64
        models : (K, p) float64, K >= min_clients, in increasing client-id order
        n_samples : (K,) float64

        Returns
        -------
        (p,) float64
        """
        raise NotImplementedError

    def aggregate(self, theta, messages, n_samples, client_ids, n_clients):
        messages, n_samples, _ = self._drop_non_finite(messages, n_samples, client_ids)
        if len(messages) < self.min_clients:
            warnings.warn(f"{type(self).__name__}: {len(messages)} usable client model(s) "
                          f"this round, fewer than the {self.min_clients} it needs "
                          f"({self.bound}); the model is left unchanged", RuntimeWarning,
                          stacklevel=2)
            return theta
        return self.rule(theta, messages, n_samples)


class FedMedian(RobustStrategy):
    """Coordinate-wise median of the client models (Yin et al. 2018; Flower's FedMedian)."""

    def rule(self, theta, models, n_samples):
        return aggregate.median(models)


class FedTrimmedAvg(RobustStrategy):
    """Coordinate-wise trimmed mean cutting int(beta K) from each tail (Yin et al. 2018;
    Flower's FedTrimmedAvg, beta = 0.2)."""

    def __init__(self, beta=0.2, mu=0.0):
        super().__init__(mu)
        aggregate.trimmed_mean(np.zeros((1, 1)), beta)     # validates beta
        self.beta = float(beta)

    def rule(self, theta, models, n_samples):
        return aggregate.trimmed_mean(models, self.beta)


class Krum(RobustStrategy):
    """Krum (Blanchard et al. 2017): the client model with the lowest score (sum of
    squared distances to its K - f - 2 nearest others); num_to_keep > 1 is
    Multi-Krum, the sample-weighted mean of the best num_to_keep.  K >= 2f + 3."""

    def __init__(self, num_malicious=0, num_to_keep=1, mu=0.0):
        super().__init__(mu)
        self.num_malicious = check.int_at_least(num_malicious, "num_malicious", 0)
        self.num_to_keep = check.optional_int_at_least(num_to_keep, "num_to_keep", 1)
        self.min_clients = max(2 * self.num_malicious + 3, num_to_keep or 1)
        self.bound = f"2*num_malicious + 3 = {2 * self.num_malicious + 3}" + (
            f", and num_to_keep = {num_to_keep}" if (num_to_keep or 1) > 1 else "")

    def rule(self, theta, models, n_samples):
        keep = self.num_to_keep or len(models) - self.num_malicious
        return aggregate.krum(models, self.num_malicious, keep, n_samples)


class MultiKrum(Krum):
    """Multi-Krum: Krum keeping the num_to_keep best models, averaged by sample count;
    num_to_keep=None keeps K - f (El Mhamdi et al. 2018's usual choice)."""

    def __init__(self, num_malicious=0, num_to_keep=None, mu=0.0):
        super().__init__(num_malicious, num_to_keep, mu)


class Bulyan(RobustStrategy):
    """Bulyan over Krum (El Mhamdi et al. 2018; Flower's Bulyan): K - 2f models picked
    by repeated Krum, then per coordinate the mean of the K - 4f values nearest the
    median.  K >= 4f + 3."""

    def __init__(self, num_malicious=0, mu=0.0):
        super().__init__(mu)
        self.num_malicious = check.int_at_least(num_malicious, "num_malicious", 0)
        self.min_clients = 4 * self.num_malicious + 3
        self.bound = f"4*num_malicious + 3 = {self.min_clients}"

    def rule(self, theta, models, n_samples):
        return aggregate.bulyan(models, self.num_malicious)


class GeometricMedian(RobustStrategy):
    """Robust federated aggregation, RFA (Pillutla et al. 2022): the sample-weighted
    geometric median of the client models by smoothed Weiszfeld iterations."""

    def __init__(self, eps=1e-6, maxiter=100, tol=1e-7, mu=0.0):
        super().__init__(mu)
        aggregate.geometric_median(np.zeros((1, 1)), None, eps, maxiter, tol)   # validates
        self.eps, self.maxiter, self.tol = eps, maxiter, tol

    def rule(self, theta, models, n_samples):
        return aggregate.geometric_median(models, n_samples, self.eps, self.maxiter, self.tol)


class CenteredClipping(RobustStrategy):
    """Centered clipping (Karimireddy, He & Jaggi 2021) of the client updates
    Delta_k = theta_k - theta, centred on the previous round's aggregate update
    (the paper's momentum centre; 0 at first): theta <- theta + v."""

    _state_attrs = ("center",)

    def __init__(self, tau=1.0, iterations=1, mu=0.0):
        super().__init__(mu)
        aggregate.centered_clipping(np.zeros((1, 1)), tau, None, iterations)     # validates
        self.tau, self.iterations = tau, iterations
        self.center = None

    def rule(self, theta, models, n_samples):
        v = aggregate.centered_clipping(models - theta, self.tau, self.center, self.iterations)
        self.center = np.asarray(v, dtype=np.float64)
        return theta + v

    def state_dict(self):
        return {} if self.center is None else {"center": self.center.copy()}

    def load_state_dict(self, state):
        self.center = np.array(state["center"]) if "center" in state else None


# -- server optimizers ------------------------------------------------------------------------

class ServerOptimizer(Strategy):
    """A server step on Delta = aggregate - theta, the aggregate coming from another
    strategy (`aggregator`, default FedAvg), whose client side (FedProx's mu,
    Scaffold's corrections, stragglers) is used unchanged.  eta_l, when given,
    is the clients' learning rate (else the trainer's lr)."""

    def __init__(self, aggregator=None, eta_l=None):
        if aggregator is None:
            aggregator = FedAvg()
        if not isinstance(aggregator, Strategy) or isinstance(aggregator, ServerOptimizer):
            raise TypeError("aggregator must be a cyfed.strategies.Strategy other than a "
                            f"server optimizer, got {type(aggregator).__name__}")
        if eta_l is not None and not (isinstance(eta_l, (int, float)) and eta_l > 0
                                      and math.isfinite(eta_l)):
            raise ValueError(f"eta_l must be a finite number > 0 or None, got {eta_l!r}")
        self.aggregator, self.eta_l = aggregator, eta_l
        self.t = 0                    # server steps taken

    mu = property(lambda self: self.aggregator.mu)
    keeps_stragglers = property(lambda self: self.aggregator.keeps_stragglers)
    aggregates_means = property(lambda self: self.aggregator.aggregates_means)

    def local_settings(self, trainer):
        s = dict(self.aggregator.local_settings(trainer))
        if self.eta_l is not None:
            s["lr"] = float(self.eta_l)
        return s

    def check_clients(self, m):
        self.aggregator.check_clients(m)

    def server_payload(self, theta):
        return self.aggregator.server_payload(theta)

    def message_width(self, n_params):
        return self.aggregator.message_width(n_params)

    def client_corrections(self, payload, client_ids, client_state):
        return self.aggregator.client_corrections(payload, client_ids, client_state)

    def client_messages(self, payload, local_thetas, steps, lr, client_ids, client_state):
        return self.aggregator.client_messages(payload, local_thetas, steps, lr, client_ids,
                                               client_state)

    def message_reference(self, payload):
        return self.aggregator.message_reference(payload)

    def aggregate(self, theta, messages, n_samples, client_ids, n_clients):
        target = self.aggregator.aggregate(theta, messages, n_samples, client_ids, n_clients)
        if target is theta:                   # nothing usable this round
            return theta
        return self._server_step(theta, target)

    def aggregate_mean(self, theta, mean_update, count, n_clients):
        return self._server_step(theta, self.aggregator.aggregate_mean(theta, mean_update,
                                                                       count, n_clients))

    def _server_step(self, theta, target):
        self.t += 1
        return theta + self.step(np.asarray(target, dtype=np.float64) - theta)

    def step(self, delta):
        """The server optimizer's step (updates its state; self.t counts the steps).

        Parameters
        ----------
        delta : (p,) float64
            Delta = aggregate - theta, the aggregator's update.

        Returns
        -------
        (p,) float64
            The change of theta: theta <- theta + step(Delta).
        """
        raise NotImplementedError

    _state_names = ()

    @property
    def _state_attrs(self):
        return ("t",) + self._state_names

    def state_dict(self):
        state = {"t": self.t, "aggregator": self.aggregator.state_dict()}
        for name in self._state_names:
            value = getattr(self, name)
            if value is not None:
                state[name] = value.copy()
        return state

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.aggregator.load_state_dict(state["aggregator"])
        for name in self._state_names:
            setattr(self, name, np.array(state[name]) if name in state else None)


class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum (Hsu et al. 2019; Flower's FedAvgM): g = theta -
    aggregate, v = momentum v + g (v = g at the first step), theta <- theta - lr v."""

    _state_names = ("v",)

    def __init__(self, server_learning_rate=1.0, server_momentum=0.0, aggregator=None,
                 eta_l=None):
        super().__init__(aggregator, eta_l)
        self.server_learning_rate = check.positive_float(server_learning_rate,
                                                         "server_learning_rate")
        self.server_momentum = check.real_in(server_momentum, "server_momentum", 0.0, 1.0)
        self.v = None

    def step(self, delta):
        g = -delta
        if self.server_momentum > 0:
            self.v = g if self.v is None else self.server_momentum * self.v + g
            g = self.v
        return -self.server_learning_rate * g


class FedOpt(ServerOptimizer):
    """Adaptive server optimizers (Reddi et al. 2021):

        m <- beta_1 m + (1 - beta_1) Delta,   v <- (the method's rule),
        theta <- theta + eta m / (sqrt(v) + tau)

    with m and v starting at 0."""

    _state_names = ("m", "v")

    def __init__(self, eta, eta_l, beta_1, beta_2, tau, aggregator):
        super().__init__(aggregator, eta_l)
        self.eta = check.positive_float(eta, "eta")
        self.beta_1 = check.real_in(beta_1, "beta_1", 0.0, 1.0)
        self.beta_2 = check.real_in(beta_2, "beta_2", 0.0, 1.0)
        self.tau = check.real_in(tau, "tau", 0.0, math.inf)
        self.m = self.v = None

    def second_moment(self, v, delta_sq):
        """The method's rule for v, from v and Delta^2 (both (p,) float64)."""
        raise NotImplementedError

    def learning_rate(self):
        """eta at the current step (FedAdam's bias correction scales it)."""
        return self.eta

    def step(self, delta):
        if self.m is None:
            self.m, self.v = np.zeros_like(delta), np.zeros_like(delta)
        self.m = self.beta_1 * self.m + (1 - self.beta_1) * delta
        self.v = self.second_moment(self.v, delta * delta)
        return self.learning_rate() * self.m / (np.sqrt(self.v) + self.tau)


class FedAdagrad(FedOpt):
    """FedAdagrad: v <- v + Delta^2 (Flower: eta 0.1, beta_1 0, tau 1e-9)."""

    def __init__(self, eta=0.1, eta_l=None, beta_1=0.0, tau=1e-9, aggregator=None):
        super().__init__(eta, eta_l, beta_1, 0.0, tau, aggregator)

    def second_moment(self, v, delta_sq):
        return v + delta_sq


class FedAdam(FedOpt):
    """FedAdam: v <- beta_2 v + (1 - beta_2) Delta^2 (Flower: eta 0.1, beta_1 0.9,
    beta_2 0.99, tau 1e-9).  bias_correction (Flower's, on by default) scales eta by
    sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1)) at server step t = 1, 2, ..."""

    def __init__(self, eta=0.1, eta_l=None, beta_1=0.9, beta_2=0.99, tau=1e-9,
                 bias_correction=True, aggregator=None):
        super().__init__(eta, eta_l, beta_1, beta_2, tau, aggregator)
        self.bias_correction = bool(bias_correction)

    def second_moment(self, v, delta_sq):
        return self.beta_2 * v + (1 - self.beta_2) * delta_sq

    def learning_rate(self):
        if not self.bias_correction:
            return self.eta
        t = self.t
        return self.eta * math.sqrt(1 - self.beta_2 ** (t + 1)) / (1 - self.beta_1 ** (t + 1))


class FedYogi(FedOpt):
    """FedYogi: v <- v - (1 - beta_2) Delta^2 sign(v - Delta^2) (Flower: eta 0.01,
    beta_1 0.9, beta_2 0.99, tau 1e-3; Flower's eta_l 0.0316 applies when given)."""

    def __init__(self, eta=0.01, eta_l=None, beta_1=0.9, beta_2=0.99, tau=1e-3,
                 aggregator=None):
        super().__init__(eta, eta_l, beta_1, beta_2, tau, aggregator)

    def second_moment(self, v, delta_sq):
        return v - (1 - self.beta_2) * delta_sq * np.sign(v - delta_sq)
