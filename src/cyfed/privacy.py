"""Differential privacy for the trainers, and the accountant that reports its epsilon.

Two mechanisms, both the Gaussian mechanism on a clipped sum, accounted with
Renyi DP of the Poisson-subsampled Gaussian (`cyfed.accountant`):

* `DPSGD` -- example-level DP for `DistributedGD` (Abadi et al. 2016,
  arXiv:1607.00133): every step samples each row of the global data set with
  probability q, clips each example's gradient to L2 norm C inside the compiled
  kernel, sums over ranks, adds N(0, (z C)^2 I) once (the same draw on every
  rank) and divides by the expected batch q N.
* `ClientDP` -- client-level DP for `FederatedTrainer` (DP-FedAvg, McMahan et
  al. 2018, arXiv:1710.06963): every client's update is clipped to L2 norm S,
  the server adds N(0, (z S)^2 I) to the sum of the m updates (centrally, or as
  m shares added by the clients themselves) and divides by a fixed m.

Both report epsilon(delta) in the history after every step or round.
"""
import math
import numbers


from cyfed import _validation as check
from cyfed.accountant import RDPAccountant, epsilon, noise_multiplier_for

__all__ = ["DPSGD", "ClientDP", "RDPAccountant", "epsilon", "noise_multiplier_for"]


class _GaussianDP:
    """What DP-SGD and DP-FedAvg share: a clip norm, a noise multiplier given or
    calibrated from (target_epsilon, delta), and the accountant's epsilon."""

    def __init__(self, clip_norm, noise_multiplier, target_epsilon, delta):
        self.clip_norm = clip_norm
        self.noise_multiplier, self.target_epsilon, self.delta = (noise_multiplier,
                                                                  target_epsilon, delta)

    def check(self):
        """Validate the options (ValueError naming the argument)."""
        check.positive_float(self.clip_norm, "clip_norm")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and not (
                isinstance(self.noise_multiplier, numbers.Real)
                and math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got "
                             f"{self.noise_multiplier!r}")
        if self.target_epsilon is not None:
            check.positive_float(self.target_epsilon, "target_epsilon")
            if self.delta is None:
                raise ValueError("target_epsilon needs delta")
        if self.delta is not None and not (isinstance(self.delta, numbers.Real)
                                           and 0 < self.delta < 1):
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")

    def noise_for(self, sample_rate, steps):
        """The noise multiplier z: as given, or the smallest z whose epsilon after
        `steps` steps at `sample_rate` is <= target_epsilon (bisection)."""
        self.check()
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        return noise_multiplier_for(self.target_epsilon, self.delta, sample_rate, steps)

    def hyper_parameters(self):
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class DPSGD(_GaussianDP):
    """Example-level DP-SGD for `DistributedGD(privacy=DPSGD(...))`.

    Each step t draws every global row independently with probability
    `sample_rate` q (Poisson sampling; the draw depends only on (seed, t), not on
    the number of ranks), and takes the step

        g_t = ( sum_{i in B_t} clip_C(grad l_i) + N(0, (z C)^2 I) ) / (q N) + l2 theta,

    clip_C(g) = g min(1, C / ||g||), where ||g|| is the norm over coef and
    intercept together.  The denominator is the expected batch size q N, not |B_t|,
    so that one example changes the sum by at most C (the sensitivity).

    Parameters
    ----------
    clip_norm : C > 0
    noise_multiplier : z >= 0, or None with target_epsilon
    sample_rate : q in (0, 1]
    target_epsilon : calibrate z before training so that epsilon(delta) after
        max_iter steps is <= target_epsilon
    delta : the delta of the reported (epsilon, delta); None reports no epsilon
    """

    def __init__(self, clip_norm=1.0, noise_multiplier=None, sample_rate=0.01, *,
                 target_epsilon=None, delta=1e-5):
        super().__init__(clip_norm, noise_multiplier, target_epsilon, delta)
        self.sample_rate = sample_rate

    def check(self):
        super().check()
        if not (isinstance(self.sample_rate, numbers.Real) and 0 < self.sample_rate <= 1):
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")


class ClientDP(_GaussianDP):
    """Client-level DP for `FederatedTrainer(privacy=ClientDP(...))` (DP-FedAvg).

    Every reporting client k sends Delta_k = clip_S(theta_k - theta) (the whole
    flattened update, coef and intercept together).  The server takes

        theta' = theta + ( sum_k Delta_k + N(0, (z S)^2 I) ) / m,

    where m is fixed: the sample size with fixed-size sampling, or q N with
    Poisson sampling.  Weighting every client by 1/m, not by its sample count, is
    what bounds the sensitivity: with weights n_k / sum_j n_j one client with many
    rows moves the average by up to S, not S / m, and changes every other client's
    weight too, so no noise scale calibrated to S / m covers it.

    Parameters
    ----------
    clip_norm : S > 0 (the initial S with adaptive clipping)
    noise_multiplier : z >= 0, or None with target_epsilon
    noise : "central" -- the server adds N(0, (z S)^2 I) to the sum; or
        "distributed" -- every reporting client adds its share N(0, (z S)^2 / m I)
        to its own clipped update, so the sum carries the full noise and the
        server never needs to be trusted with the noise (combine with
        `cyfed.secagg.SecureAggregation` so that it only sees the sum).  A
        dropped client's share is missing from the sum: with dropout p the sum
        carries (1 - p) of the noise variance, and the reported epsilon assumes
        the full noise -- set dropout to 0 or raise z by 1 / sqrt(1 - p).
    adaptive : geometric adaptive clipping (Andrew et al. 2021, arXiv:1905.03871):
        every client also reports b_k = 1 if ||theta_k - theta|| <= S (its update
        was *not* clipped); the server forms the noisy fraction
        b = (sum_k b_k + N(0, sigma_b^2)) / m and sets
        S <- S exp(-clip_lr (b - target_quantile)), so S tracks the
        target_quantile of the update norms.  The update noise multiplier becomes
        z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2 so that the pair of mechanisms
        costs exactly z's privacy (their Theorem 1).
    target_quantile : gamma in (0, 1);  clip_lr : eta_C > 0
    count_noise : sigma_b (default m / 20, the paper's choice)
    target_epsilon, delta : as in `DPSGD`; the rounds play the role of steps and
        the client sampling rate that of q.

    Accounting: with Poisson client sampling (`FederatedTrainer(sampling="poisson")`)
    the Poisson-subsampled Gaussian analysis holds exactly.  With fixed-size
    sampling of m of N clients the accountant uses q = m / N with the same
    analysis, the usual practice (TensorFlow Federated's DP-FedAvg) and a close
    approximation, not a proof: sampling without replacement has its own,
    slightly different, RDP bound.
    """

    NOISE = ("central", "distributed")

    def __init__(self, clip_norm=1.0, noise_multiplier=None, *, noise="central",
                 adaptive=False, target_quantile=0.5, clip_lr=0.2, count_noise=None,
                 target_epsilon=None, delta=1e-5):
        super().__init__(clip_norm, noise_multiplier, target_epsilon, delta)
        self.noise, self.adaptive = noise, adaptive
        self.target_quantile, self.clip_lr, self.count_noise = (target_quantile, clip_lr,
                                                                count_noise)

    def check(self):
        super().check()
        if self.noise not in self.NOISE:
            raise ValueError(f"noise must be one of {self.NOISE}, got {self.noise!r}")
        if not isinstance(self.adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(self.adaptive).__name__}")
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"target_quantile must be in (0, 1), got "
                             f"{self.target_quantile!r}")
        check.positive_float(self.clip_lr, "clip_lr")
        if self.count_noise is not None and not (isinstance(self.count_noise, numbers.Real)
                                                 and self.count_noise >= 0):
            raise ValueError(f"count_noise must be a number >= 0 or None, got "
                             f"{self.count_noise!r}")

    def count_std(self, m):
        """sigma_b, the std of the noise on the count of unclipped clients."""
        return m / 20 if self.count_noise is None else float(self.count_noise)

    def update_noise(self, z, m):
        """z_delta: the update's noise multiplier once the count takes its share
        (Andrew et al. 2021, Theorem 1); z itself without adaptive clipping."""
        if not self.adaptive or z == 0:
            return z
        sigma_b = self.count_std(m)
        if sigma_b == 0:
            raise ValueError("adaptive clipping with noise needs count_noise > 0")
        rest = z ** -2 - (2 * sigma_b) ** -2
        if rest <= 0:
            raise ValueError(f"count_noise={sigma_b} is too small for noise_multiplier "
                             f"{z}: adaptive clipping needs 2 sigma_b > z")
        return rest ** -0.5

    def next_clip_norm(self, clip_norm, unclipped_fraction):
        """S exp(-clip_lr (b - gamma)): shrink S while more than gamma of the
        clients fit under it, grow it while fewer do."""
        return clip_norm * math.exp(-self.clip_lr * (unclipped_fraction - self.target_quantile))

