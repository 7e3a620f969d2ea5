"""Federated strategies: how a round is configured and how client results are combined.

A strategy sees flat parameter vectors theta = [coef (row-major), intercept].
Server side: `server_payload(theta)` is what the round broadcasts and
`aggregate(...)` turns the clients' messages into the next theta.  Client side
(on the rank that hosts the clients, for all of a round's clients at once):
`client_corrections` (added to every local gradient) and `client_messages`
(what the clients send back).  The arithmetic
lives in `cyfed.aggregate`.
"""
import warnings

import numpy as np

from cyfed import aggregate


class Strategy:
    """Base: clients send their local model; subclasses set the local rule and aggregation."""

    #: FedProx proximal coefficient used in local training.
    mu = 0.0
    #: Whether clients that finish only part of their epochs still contribute.
    keeps_stragglers = False

    def local_settings(self, trainer):
        """Overrides of the trainer's local training for this strategy (dict)."""
        return {}

    def server_payload(self, theta):
        return theta

    def message_width(self, n_params):
        """Length of one client's message for a model of n_params parameters."""
        return n_params

    def client_corrections(self, payload, client_ids, client_state):
        """(m, n_params) terms added to every local gradient of these clients, or None."""
        return None

    def client_messages(self, payload, local_thetas, steps, lr, client_ids, client_state):
        """(m, message_width) rows sent to the server by the clients client_ids."""
        return local_thetas

    def aggregate(self, theta, messages, n_samples, client_ids, n_clients):
        raise NotImplementedError

    @staticmethod
    def _drop_non_finite(messages, n_samples, client_ids):
        ok = aggregate.finite_rows(messages)
        if ok.all():
            return messages, n_samples, client_ids
        bad = [int(c) for c in np.asarray(client_ids)[~ok]]
        warnings.warn(f"client update(s) from client id(s) {bad} are NaN/Inf and are left "
                      "out of this round's aggregate", RuntimeWarning, stacklevel=3)
        return messages[ok], n_samples[ok], np.asarray(client_ids)[ok]


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017, arXiv:1602.05629): theta = sum n_k theta_k / sum n_k.

    Non-finite client models are reported by client id and left out (the weights
    are renormalised over the rest); a round with no usable client keeps theta.
    """

    def aggregate(self, theta, messages, n_samples, client_ids, n_clients):
        messages, n_samples, _ = self._drop_non_finite(messages, n_samples, client_ids)
        if len(messages) == 0:
            return theta
        return aggregate.weighted_mean(messages, n_samples)


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
        if not mu >= 0:
            raise ValueError(f"mu must be >= 0, got {mu!r}")
        self.mu = float(mu)


class Scaffold(Strategy):
    """SCAFFOLD, option II (Karimireddy et al. 2020, arXiv:1910.06378).

    Local step y <- y - lr (g(y) - c_k + c); after K steps
    c_k+ = c_k - c + (x - y)/(K lr); server x <- x + eta_g/|S| sum (y_k - x),
    c <- c + (1/N) sum (c_k+ - c_k).  The payload is [x, c]; a message [y_k, dc_k].
    """

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

    def aggregate(self, theta, messages, n_samples, client_ids, n_clients):
        messages, n_samples, _ = self._drop_non_finite(messages, n_samples, client_ids)
        if len(messages) == 0:
            return theta
        half = messages.shape[1] // 2
        ones = np.ones(len(messages))
        dy = aggregate.weighted_mean(messages[:, :half] - theta, ones)
        dc = aggregate.weighted_mean(messages[:, half:], ones)
        self.c = self.c + dc * (len(messages) / n_clients)
        return theta + self.eta_g * dy
