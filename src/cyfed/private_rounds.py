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
import math

import numpy as np

from cyfed import accountant
from cyfed._simd import load
from cyfed import _validation as check

_kernels, _ = load("_aggregate")
_noise, _ = load("_noise")


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
    n_threads : threads of the clipping kernel
    """

    def __init__(self, privacy, secure, seed, sample_rate, denominator, rounds, n_threads=1):
        self.privacy, self.secure, self.seed = privacy, secure, seed
        self.n_threads = n_threads
        self.sample_rate, self.denominator = sample_rate, denominator
        self.noise_multiplier = update_noise = 0.0
        if privacy is not None:
            self.noise_multiplier = privacy.noise_for(sample_rate, rounds)
            update_noise = privacy.update_noise(self.noise_multiplier, denominator)
        self.update_noise = update_noise
        self.clip_norm = float(privacy.clip_norm) if privacy is not None else None
        self._epsilon = (accountant.EpsilonCurve(self.noise_multiplier, sample_rate,
                                                 privacy.delta)
                         if privacy is not None and privacy.delta is not None else None)
        self.max_weight = secure.max_weight if secure is not None else None

    @property
    def clients_prepare(self):
        """Whether the clients themselves clip and noise their rows (the server must
        not see their raw updates) rather than the server."""
        return self.secure is not None or (self.privacy is not None
                                           and self.privacy.noise == "distributed")

    def client_rows(self, messages, reference, n_samples, client_ids, rnd):
        """Rows [w u, w, b, client id] (width p + 3) of the clients with finite
        messages (m, p): clipped, weighted and, under distributed DP, noised."""
        m, p = messages.shape
        scales = self._scales(messages, reference)
        ok = self._finite(scales, client_ids)
        if not ok.all():
            messages, scales = messages[ok], scales[ok]
            client_ids, n_samples = np.asarray(client_ids)[ok], np.asarray(n_samples)[ok]
        rows = self._buffer(len(scales), p + 3)
        np.subtract(messages, reference, out=rows[:, :p])
        rows[:, p + 2] = client_ids
        if self.privacy is None:
            rows[:, p] = np.minimum(n_samples, self.max_weight) / self.max_weight
            rows[:, p + 1] = 0.0
        else:
            rows[:, p] = 1.0
            rows[:, p + 1] = scales == 1.0
        rows[:, :p] *= (scales if self.privacy is not None else rows[:, p])[:, None]
        if self.privacy is not None and self.privacy.noise == "distributed" \
                and self.noise_multiplier > 0:
            self._add_shares(rows[:, :p + 2], client_ids, rnd)
        return rows

    def _buffer(self, m, width):
        """(m, width) rows reused across rounds (no page faults from a fresh array per
        round); valid until the next call."""
        buf = getattr(self, "_rows", None)
        if buf is None or buf.shape[0] < m or buf.shape[1] != width:
            buf = self._rows = np.empty((m, width))
        return buf[:m]

    def sum_rows(self, rows):
        """(sum of the gathered rows [w u, w, b, id] in client-id order without the id,
        number of rows), summed by the compiled in-order kernel."""
        if np.any(np.diff(rows[:, -1]) < 0):
            rows = rows[np.argsort(rows[:, -1], kind="stable")]
        total = np.zeros(rows.shape[1])
        if len(rows):
            _kernels.weighted_sum(np.ascontiguousarray(rows), np.ones(len(rows)), 1.0, total,
                                  self.n_threads)
        return total[:-1], len(rows)

    def _scales(self, messages, reference):
        """min(1, S / ||message - reference||) per row (1 without DP), NaN if not finite."""
        scales = np.empty(len(messages))
        clip = self.clip_norm if self.privacy is not None else math.inf
        _kernels.clip_scales(messages, reference, clip, scales, self.n_threads)
        return scales

    def _add_shares(self, rows, client_ids, rnd):
        """Every client's share of the noise: N(0, (z S)^2 / m) on its update and
        N(0, sigma_b^2 / m) on its bit, drawn by the compiled Philox4x32-10 kernel
        (cyfed._noise) keyed by (seed, round) at the client's own counters, so a share
        depends on the client, not on the rank or the number of threads."""
        m, width = rows.shape
        p = width - 2
        if m == 0:                           # a rank that hosts none of this round's clients
            return
        assert rows.dtype == np.float64 and rows.strides[1] == rows.itemsize, \
            "rows: float64 with contiguous rows expected"
        ids = np.ascontiguousarray(client_ids, dtype=np.int64)
        assert ids.shape == (m,), f"client_ids: expected shape ({m},), got {ids.shape}"
        scale = np.full(p + 2, self.update_noise * self.clip_norm)
        scale[p] = 0.0
        scale[p + 1] = self.privacy.count_std(self.denominator)
        scale /= math.sqrt(self.denominator)
        key = np.random.SeedSequence([self.seed, rnd, 2]).generate_state(2, np.uint64)
        _noise.add_gaussian_rows(rows, ids, int(key[0]), int(key[1]), scale,
                                 max(1, int(self.n_threads or 1)))

    def server_sum(self, messages, reference, client_ids):
        """(sum of the rows [u, 1, b], number of clients) with the server clipping
        the clients' finite updates itself (central DP, no secure aggregation):
        sum_k s_k (x_k - r) = sum_k s_k x_k - (sum_k s_k) r, one compiled weighted sum."""
        m, p = messages.shape
        scales = self._scales(messages, reference)
        ok = self._finite(scales, client_ids)
        if not ok.all():
            messages, scales = messages[ok], scales[ok]
        total = np.zeros(p + 2)
        if len(scales):
            _kernels.weighted_sum(messages, scales, 1.0, total[:p], 1)
            total[:p] -= scales.sum() * reference
        total[p] = len(scales)
        total[p + 1] = np.sum(scales == 1.0)
        return total, len(scales)

    @staticmethod
    def _finite(scales, client_ids):
        """Mask of the finite updates; the others are named in a warning and left out."""
        ok = ~np.isnan(scales)
        if not ok.all():
            check.warn_non_finite(np.asarray(client_ids)[~ok])
        return ok

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
        if self._epsilon is not None:
            record["epsilon"] = self._epsilon(rnd + 1)
        return theta, record

    def state_dict(self):
        return {} if self.clip_norm is None else {"clip_norm": np.array(self.clip_norm)}

    def load_state_dict(self, state):
        if "clip_norm" in state:
            self.clip_norm = float(state["clip_norm"])
