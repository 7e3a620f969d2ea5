"""The client update pipeline of federated rounds with client-level DP and/or
secure aggregation, between local training and the strategy's server step.

Client side, for client k with message x_k (its local model, or SCAFFOLD's
[y_k, dc_k]) and the strategy's reference r (the message of a client that did
not move):

    u_k = x_k - r  ->  clip to norm S (DP)  ->  + its noise share (distributed DP)
      ->  row [w_k u_k, w_k, b_k]  ->  masked by secure aggregation

with w_k = 1 under DP (uniform weights bound the sensitivity), else
min(n_k, max_weight) / max_weight (FedAvg's sample weighting, kept in [0, 1] so
that the fixed-point range of secure aggregation covers w_k u_k), and b_k = 1
when u_k was not clipped (adaptive clipping's count).  The server only needs the
sum of the rows: secure aggregation gives it exactly that; without it the server
sums the rows it received, in client-id order (and with central DP it clips
them itself: the trusted server of DP-FedAvg).

Server side: sum + central noise N(0, (z S)^2) -> mean = sum / m (DP: the fixed
denominator m) or sum / sum_k w_k -> `strategy.aggregate_mean` -> the next S
(adaptive clipping).
"""
import numpy as np

from cyfed import accountant
from cyfed.strategies import Strategy


class PrivateRounds:
    """State and arithmetic of the pipeline for one training run.

    Parameters
    ----------
    privacy : cyfed.privacy.ClientDP or None
    secure : cyfed.secagg.SecureAggregation or None
    seed : the run's seed (noise draws are seeded by (seed, round, ...))
    sample_rate : q, the probability that a client is sampled in a round
    denominator : m, the fixed denominator (sample size, or q N with Poisson sampling)
    rounds : rounds of the run (to calibrate z from a target epsilon)
    """

    def __init__(self, privacy, secure, seed, sample_rate, denominator, rounds):
        self.privacy, self.secure, self.seed = privacy, secure, seed
        self.sample_rate, self.denominator = sample_rate, denominator
        self.noise_multiplier = update_noise = 0.0
        if privacy is not None:
            self.noise_multiplier = privacy.noise_for(sample_rate, rounds)
            update_noise = privacy.update_noise(self.noise_multiplier, denominator)
        self.update_noise = update_noise
        self.clip_norm = float(privacy.clip_norm) if privacy is not None else None
        self.max_weight = float(getattr(secure, "max_weight", 1.0))

    @property
    def clients_prepare(self):
        """Whether the clients themselves clip and noise their rows (the server must
        not see their raw updates) rather than the server."""
        return self.secure is not None or (self.privacy is not None
                                           and self.privacy.noise == "distributed")

    def rows(self, updates, client_ids, n_samples, rnd):
        """The (m, p + 2) rows [w u, w, b] of clients `client_ids` (sorted) from
        their finite updates (m, p); their noise shares are added when the clients
        prepare the rows under distributed DP."""
        m, p = updates.shape
        out = np.empty((m, p + 2))
        out[:, :p] = updates
        if self.privacy is None:
            out[:, p] = np.minimum(n_samples, self.max_weight) / self.max_weight
            out[:, :p] *= out[:, p:p + 1]
            out[:, p + 1] = 0.0
            return out
        norms = np.sqrt(np.einsum("ij,ij->i", updates, updates))
        fits = norms <= self.clip_norm
        out[:, :p] *= np.where(fits, 1.0, self.clip_norm / np.maximum(norms, 1e-300))[:, None]
        out[:, p] = 1.0
        out[:, p + 1] = fits
        if self.privacy.noise == "distributed" and self.noise_multiplier > 0:
            share = np.sqrt(self.denominator)
            scale = np.full(p + 2, self.update_noise * self.clip_norm / share)
            scale[p] = 0.0
            scale[p + 1] = self.privacy.count_std(self.denominator) / share
            for row, cid in zip(out, client_ids):
                row += np.random.default_rng([self.seed, rnd, 2, int(cid)]).standard_normal(
                    p + 2) * scale
        return out

    def finite_updates(self, messages, reference, n_samples, client_ids):
        """(updates, n_samples, ids) of the clients whose messages are finite (the
        others are named in a warning and left out, as the strategies do)."""
        messages, n_samples, client_ids = Strategy._drop_non_finite(messages, n_samples,
                                                                    client_ids)
        return messages - reference, n_samples, np.asarray(client_ids)

    def server_step(self, strategy, theta, total, count, n_clients, rnd):
        """The next theta from the sum `total` of `count` clients' rows, and the
        round's record entries (clip norm, noise multiplier, epsilon, ...)."""
        p = total.size - 2
        if self.privacy is None:
            if not total[p] > 0:
                return theta, {}
            return strategy.aggregate_mean(theta, total[:p] / total[p], count, n_clients), {}
        total = total.copy()
        if self.privacy.noise == "central" and self.noise_multiplier > 0:
            rng = np.random.default_rng([self.seed, rnd, 3])
            total[:p] += rng.standard_normal(p) * (self.update_noise * self.clip_norm)
            total[p + 1] += rng.standard_normal() * self.privacy.count_std(self.denominator)
        record = {"clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier}
        theta = strategy.aggregate_mean(theta, total[:p] / self.denominator,
                                        self.denominator, n_clients)
        if self.privacy.adaptive:
            record["unclipped_fraction"] = float(total[p + 1] / self.denominator)
            self.clip_norm = self.privacy.next_clip_norm(self.clip_norm,
                                                         record["unclipped_fraction"])
        if self.privacy.delta is not None:
            record["epsilon"] = accountant.epsilon(self.noise_multiplier, self.sample_rate,
                                                   rnd + 1, self.privacy.delta)
        return theta, record

    def state_dict(self):
        return {} if self.clip_norm is None else {"clip_norm": np.array(self.clip_norm)}

    def load_state_dict(self, state):
        if "clip_norm" in state:
            self.clip_norm = float(state["clip_norm"])
