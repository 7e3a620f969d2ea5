r"""Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism (DP-SGD).

One step releases :math:`f(S) + N(0, \sigma^2)` where every record enters the
batch :math:`S` independently with probability :math:`q` and ``f`` has L2
sensitivity 1.  Its Rényi DP (RDP) at order :math:`\alpha > 1` is

.. math:: \varepsilon_\alpha = \frac{1}{\alpha-1} \log A_\alpha, \qquad
   A_\alpha = \mathbb{E}_{z \sim \mu_0}\Big[\big(1 - q + q\,
   e^{(2z-1)/(2\sigma^2)}\big)^\alpha\Big],

with :math:`\mu_0 = N(0, \sigma^2)` (Mironov, Talwar & Zhang 2019, Sec. 3).
RDP adds up under composition, and `rdp_to_epsilon` converts the total into an
:math:`(\varepsilon, \delta)` guarantee with Balle et al. (2020), Thm. 21.

References
----------
.. [1] I. Mironov, K. Talwar, L. Zhang, "Rényi Differential Privacy of the
   Sampled Gaussian Mechanism", 2019, arXiv:1908.10530.
.. [2] B. Balle, G. Barthe, M. Gaboardi, J. Hsu, T. Sato, "Hypothesis testing
   interpretations and Rényi differential privacy", AISTATS 2020.
.. [3] I. Mironov, "Rényi Differential Privacy", CSF 2017.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["DEFAULT_ORDERS", "rdp", "rdp_to_epsilon", "epsilon", "noise_multiplier_for", "RDPAccountant"]

#: Opacus' default orders, extended to 1024 so that small epsilons (large sigma) stay tight.
DEFAULT_ORDERS = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(12, 64)]
    + [64.0, 80.0, 96.0, 128.0, 160.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0]
)
_SQRT_PI_LOG = 0.5 * math.log(math.pi)


def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def _check(noise_multiplier=None, sample_rate=None, steps=None, delta=None):
    if noise_multiplier is not None:
        if not 0.0 <= _real("noise_multiplier", noise_multiplier) < math.inf:
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if sample_rate is not None and not 0.0 <= _real("sample_rate", sample_rate) <= 1.0:
        raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate!r}")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise TypeError(f"steps must be an int, got {type(steps).__name__}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps!r}")
    if delta is not None and not 0.0 < _real("delta", delta) < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _orders(orders):
    a = np.array(DEFAULT_ORDERS if orders is None else orders, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a) & (a > 1.0)):
        raise ValueError("orders must be a non-empty sequence of finite floats > 1")
    return a


def _log_erfc(x):
    """log(erfc(x)) elementwise, accurate in relative terms for all real x."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    big = x >= 10.0  # erfc(x) = e^{-x^2}/(x sqrt(pi)) sum_n (-1)^n (2n-1)!!/(2x^2)^n
    xb = x[big]
    if xb.size:
        u, s = 1.0 / (2.0 * xb * xb), np.ones_like(xb)
        for n in range(11, 0, -1):  # 12 terms: truncation error < 1e-16 for x >= 10
            s = 1.0 - (2 * n - 1) * u * s
        out[big] = -xb * xb - np.log(xb) - _SQRT_PI_LOG + np.log(s)
    small = ~big
    out[small] = np.log(np.fromiter(map(math.erfc, x[small].tolist()), np.float64, count=int(small.sum())))
    return out


def _rdp_int(q, sigma, alphas):
    r"""RDP at integer orders from the binomial expansion (Mironov et al. 2019, Sec. 3.3).

    With :math:`c_k = (k^2 - k) / (2\sigma^2)` and since the binomial weights sum to one,

    .. math:: A_\alpha - 1 = \sum_{k=2}^{\alpha} \binom{\alpha}{k} q^k (1-q)^{\alpha-k}
       \left(e^{c_k} - 1\right),

    a sum of positive terms (k = 0, 1 vanish), taken as a log-sum-exp per order;
    :math:`\log(1 + (A_\alpha - 1))` keeps full relative precision for tiny RDP.
    """
    a = alphas.astype(np.int64)
    logfact = np.array([math.lgamma(n + 1.0) for n in range(int(a.max()) + 1)])
    counts = a - 1
    starts = np.cumsum(counts) - counts
    ar = np.repeat(a, counts)
    k = np.arange(int(counts.sum())) - np.repeat(starts, counts) + 2
    x = (k * (k - 1.0)) / (2.0 * sigma * sigma)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_expm1 = np.where(x > 1.0, x + np.log1p(-np.exp(-x)), np.log(np.expm1(np.minimum(x, 1.0))))
        t = logfact[ar] - logfact[k] - logfact[ar - k] + k * math.log(q) + (ar - k) * math.log1p(-q) + log_expm1
        m = np.maximum.reduceat(t, starts)
        log_am1 = m + np.log(np.add.reduceat(np.exp(t - np.repeat(m, counts)), starts))
    return np.logaddexp(0.0, log_am1) / (alphas - 1.0)


def _cvz_weights(n):
    """Weights w with sum_k w[k] a[k] ~ sum_k (-1)^k a[k] for moment sequences a (CVZ 2000, Alg. 1)."""
    d = (3.0 + math.sqrt(8.0)) ** n
    d = 0.5 * (d + 1.0 / d)
    b, c, w = -1.0, -d, []
    for k in range(n):
        c = b - c
        w.append(c / d)
        b = (k + n) * (k - n) * b / ((k + 0.5) * (k + 1.0))
    return np.array(w)


def _rdp_frac(q, sigma, alphas, n_tail=24):
    r"""RDP at fractional orders from the two series of Mironov et al. 2019, Sec. 3.3.

    Split the integral at :math:`z_0 = \sigma^2 \log(1/q - 1) + 1/2`, where
    :math:`q e^{(2z-1)/(2\sigma^2)} = 1 - q`, and expand each side in the
    binomial series of the ratio that is at most one there (:math:`j = \alpha - i`):

    .. math:: A_\alpha = \sum_{i \ge 0} \binom{\alpha}{i} \Big[
       q^i (1-q)^{j} e^{(i^2-i)/(2\sigma^2)} \tfrac12
       \operatorname{erfc}\tfrac{i - z_0}{\sqrt2\,\sigma}
       + q^{j} (1-q)^{i} e^{(j^2-j)/(2\sigma^2)} \tfrac12
       \operatorname{erfc}\tfrac{z_0 - j}{\sqrt2\,\sigma} \Big].

    The terms for :math:`i > \alpha` alternate in sign and their magnitudes
    are a Hausdorff moment sequence (:math:`|\binom{\alpha}{i}|` is a Beta
    integral, and each bracket is :math:`E[r^i]` for a ratio :math:`r \le 1`),
    but they decay only like :math:`i^{-\alpha-2}`.  That tail is summed with
    the Cohen-Rodriguez Villegas-Zagier acceleration (Experimental Math. 9,
    2000, Algorithm 1), whose error is below :math:`2 \cdot 5.8^{-n}` times the
    first tail term: ``n_tail = 24`` terms reach double precision, so each order
    costs about :math:`\alpha + 25` terms.  Accuracy is ~1e-16 absolute in
    :math:`\log A_\alpha` (relative accuracy of the RDP degrades only when the
    RDP itself is below ~1e-8).
    """
    a = alphas[:, None]
    head = np.floor(a) + 1.0  # binom(a, i) > 0 for i < head, sign (-1)^(i - head) after
    i = np.arange(int(head.max()) + n_tail, dtype=np.float64)
    with np.errstate(divide="ignore"):
        steps = np.log(np.abs(a - i[:-1])) - np.log(i[1:])  # C(a, i+1) = C(a, i) (a - i) / (i + 1)
    log_c = np.concatenate([np.zeros((a.shape[0], 1)), np.cumsum(steps, axis=1)], axis=1)
    z0 = sigma * sigma * (math.log1p(-q) - math.log(q)) + 0.5
    c, s2, lq, l1q = 1.0 / (math.sqrt(2.0) * sigma), 2.0 * sigma * sigma, math.log(q), math.log1p(-q)
    j = a - i
    t0 = log_c + i * lq + j * l1q + (i * i - i) / s2 + _log_erfc((i - z0) * c) - math.log(2.0)
    t1 = log_c + j * lq + i * l1q + (j * j - j) / s2 + _log_erfc((z0 - j) * c) - math.log(2.0)
    k = (i - head).astype(np.int64)  # position in the alternating tail
    w = np.where(k < 0, 1.0, np.append(_cvz_weights(n_tail), 0.0)[np.clip(k, 0, n_tail)])
    m = np.maximum(t0.max(axis=1), t1.max(axis=1))[:, None]
    return (m[:, 0] + np.log(np.sum(w * (np.exp(t0 - m) + np.exp(t1 - m)), axis=1))) / (alphas - 1.0)


def rdp(noise_multiplier, sample_rate, orders=None):
    r"""RDP of one step of the Poisson-subsampled Gaussian mechanism.

    Parameters
    ----------
    noise_multiplier : float
        :math:`\sigma`, the noise standard deviation over the L2 sensitivity (>= 0).
    sample_rate : float
        :math:`q`, the Poisson sampling probability of each record, in [0, 1].
    orders : sequence of float, optional
        Rényi orders :math:`\alpha > 1`; `DEFAULT_ORDERS` when omitted.

    Returns
    -------
    numpy.ndarray
        :math:`\varepsilon_\alpha = \log(A_\alpha)/(\alpha - 1)` at each order.

    Notes
    -----
    Integer orders use the exact binomial expansion of :math:`A_\alpha` (Mironov et al. 2019,
    Sec. 3.3), in log space and written as :math:`\log(1 + (A_\alpha - 1))` so
    that tiny values keep full relative precision.  Fractional orders use the
    two convergent series with log-erfc terms of Mironov et al. 2019, Sec. 3.3.  Special
    cases: :math:`q = 0` gives 0, :math:`\sigma = 0` (with q > 0) gives inf,
    and :math:`q = 1` the Gaussian mechanism's :math:`\alpha / (2\sigma^2)`
    (Mironov 2017, Prop. 7).  Otherwise every value is > 0 (at least the
    smallest normal float), so only a mechanism that never sees the record
    reports zero.  Fractional orders are accurate to ~1e-16 absolute in
    :math:`\log A_\alpha`, integer orders to a few ulps relative.
    """
    _check(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    alphas = _orders(orders)
    q, sigma = float(sample_rate), float(noise_multiplier)
    if q == 0.0:
        return np.zeros_like(alphas)
    if sigma == 0.0:
        return np.full_like(alphas, np.inf)
    if q == 1.0:
        return alphas / (2.0 * sigma * sigma)
    out = np.empty_like(alphas)
    is_int = alphas == np.floor(alphas)
    if is_int.any():
        out[is_int] = _rdp_int(q, sigma, alphas[is_int])
    if not is_int.all():
        out[~is_int] = _rdp_frac(q, sigma, alphas[~is_int])
    # The RDP is > 0 here: never let rounding or underflow report "no privacy loss".
    return np.maximum(out, np.finfo(np.float64).tiny)


def rdp_to_epsilon(rdp_values, orders, delta):
    r"""Convert RDP values at several orders into an :math:`(\varepsilon, \delta)` guarantee.

    Parameters
    ----------
    rdp_values : array_like
        RDP :math:`\varepsilon_\alpha` (total, after composition) at each order;
        ``inf`` or ``nan`` entries are treated as "no guarantee at this order".
    orders : array_like
        The matching orders :math:`\alpha > 1`.
    delta : float
        Target :math:`\delta` in (0, 1).

    Returns
    -------
    (float, float)
        The smallest :math:`\varepsilon \ge 0` over the orders, and the order
        attaining it (``(inf, nan)`` when every order is infinite).

    Notes
    -----
    Uses Balle et al. (2020), Theorem 21 (Balle et al. 2020), as Opacus and TF Privacy do:

    .. math:: \varepsilon = \min_\alpha\; \varepsilon_\alpha
       - \frac{\log\delta + \log\alpha}{\alpha - 1} + \log\frac{\alpha - 1}{\alpha},

    which is never larger than Mironov's classic
    :math:`\varepsilon_\alpha + \log(1/\delta)/(\alpha - 1)` (Mironov 2017, Prop. 3).
    RDP that is exactly zero at every order (no step, or only ``q = 0`` steps)
    means identical output distributions and gives :math:`\varepsilon = 0`.
    """
    _check(delta=delta)
    alphas = _orders(orders)
    r = np.array(rdp_values, dtype=np.float64).reshape(-1)
    if r.shape != alphas.shape:
        raise ValueError(f"rdp_values and orders must have the same length, got {r.size} and {alphas.size}")
    if np.any(r < 0):
        raise ValueError("rdp_values must be >= 0")
    with np.errstate(invalid="ignore", over="ignore"):
        eps = r - (math.log(delta) + np.log(alphas)) / (alphas - 1.0) + np.log1p(-1.0 / alphas)
    if np.all(r == 0.0):
        return 0.0, float(alphas[0])
    eps[np.isnan(eps)] = np.inf
    idx = int(np.argmin(eps))
    if eps[idx] == np.inf:
        return math.inf, math.nan
    return max(float(eps[idx]), 0.0), float(alphas[idx])


def epsilon(noise_multiplier, sample_rate, steps, delta, orders=None):
    r"""Epsilon of `steps` compositions of the subsampled Gaussian at the given delta.

    RDP composes additively (Mironov 2017, Prop. 1), so this is
    ``rdp_to_epsilon(steps * rdp(noise_multiplier, sample_rate, orders), orders, delta)[0]``.
    """
    _check(steps=steps, delta=delta)
    alphas = _orders(orders)
    one = rdp(noise_multiplier, sample_rate, alphas)
    return rdp_to_epsilon(steps * one if steps else np.zeros_like(one), alphas, delta)[0]


class EpsilonCurve:
    r"""Epsilon after t steps of one fixed mechanism, cheap enough to report every step.

    The RDP of one step and the order-dependent terms of the Balle et al.
    conversion are computed once; ``curve(t)`` is then
    :math:`\max(0, \min_\alpha t\,\varepsilon_\alpha - (\log\delta + \log\alpha)/(\alpha - 1)
    + \log((\alpha - 1)/\alpha))`, the value of ``epsilon(..., steps=t, ...)``
    (to rounding).
    """

    def __init__(self, noise_multiplier, sample_rate, delta, orders=None):
        _check(delta=delta)
        alphas = _orders(orders)
        self._rdp = rdp(noise_multiplier, sample_rate, alphas)
        self._offset = -(math.log(delta) + np.log(alphas)) / (alphas - 1.0) + np.log1p(-1.0 / alphas)

    def __call__(self, steps):
        _check(steps=steps)
        if steps == 0 or not np.any(self._rdp):
            return 0.0
        return max(float(np.min(steps * self._rdp + self._offset)), 0.0)


def noise_multiplier_for(target_epsilon, delta, sample_rate, steps, orders=None, *, tol=0.01):
    r"""Smallest noise multiplier whose epsilon after `steps` steps is at most `target_epsilon`.

    Epsilon decreases monotonically in :math:`\sigma` (each :math:`\varepsilon_\alpha`
    does), so the answer is bracketed by doubling an upper bound from 1, then
    bisected (as Opacus' ``get_noise_multiplier``) until
    ``target_epsilon - tol < epsilon(sigma) <= target_epsilon``.

    Returns
    -------
    float
        :math:`\sigma` with ``epsilon(sigma) <= target_epsilon``; 0.0 when no
        record can be sampled (``sample_rate == 0`` or ``steps == 0``).

    Raises
    ------
    ValueError
        On invalid arguments, or when the target is unreachable: at or below
        the epsilon the orders certify as :math:`\sigma \to \infty` (RDP -> 0),
        or not reached by :math:`\sigma = 2^{40}`.
    """
    if not 0.0 < _real("target_epsilon", target_epsilon) < math.inf:
        raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if not 0.0 < _real("tol", tol) < math.inf:
        raise ValueError(f"tol must be finite and > 0, got {tol!r}")
    _check(sample_rate=sample_rate, steps=steps, delta=delta)
    alphas = _orders(orders)
    if sample_rate == 0 or steps == 0:
        return 0.0

    floor = rdp_to_epsilon(np.full_like(alphas, 1e-300), alphas, delta)[0]  # sigma -> inf
    if target_epsilon <= floor:
        raise ValueError(
            f"target_epsilon={target_epsilon!r} is unreachable: at delta={delta!r} these orders cannot "
            f"certify less than {floor:.4g} (add larger orders)"
        )

    def eps(sigma):
        return epsilon(sigma, sample_rate, steps, delta, alphas)

    lo, hi = 0.0, 1.0
    eps_hi = eps(hi)
    while eps_hi > target_epsilon:
        lo, hi = hi, 2.0 * hi
        if hi > 2.0**40:
            raise ValueError(f"target_epsilon={target_epsilon!r} is unreachable at delta={delta!r}")
        eps_hi = eps(hi)
    while target_epsilon - eps_hi > tol and hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        eps_mid = eps(mid)
        if eps_mid <= target_epsilon:
            hi, eps_hi = mid, eps_mid
        else:
            lo = mid
    return hi


class RDPAccountant:
    r"""Running RDP accountant for DP-SGD with Poisson sampling.

    Accumulates the RDP of each step at fixed orders (noise multiplier and
    sample rate may change between steps) and converts with `rdp_to_epsilon`.

    Parameters
    ----------
    orders : sequence of float, optional
        Rényi orders; `DEFAULT_ORDERS` when omitted.
    """

    def __init__(self, orders=None):
        self._orders = _orders(orders)
        self._rdp = np.zeros_like(self._orders)
        self._steps = 0

    @property
    def steps(self):
        """Total number of steps accounted so far."""
        return self._steps

    @property
    def orders(self):
        """The Rényi orders (a tuple of floats)."""
        return tuple(self._orders.tolist())

    def step(self, noise_multiplier, sample_rate, steps=1):
        """Account `steps` steps with noise multiplier `noise_multiplier` and sampling rate `sample_rate`."""
        _check(steps=steps)
        one = rdp(noise_multiplier, sample_rate, self._orders)
        if steps:
            self._rdp = self._rdp + steps * one
            self._steps += int(steps)

    def get_privacy_spent(self, delta):
        """``(epsilon, best_order)`` of everything accounted so far, at `delta`."""
        return rdp_to_epsilon(self._rdp, self._orders, delta)

    def epsilon(self, delta):
        """Epsilon of everything accounted so far, at `delta`."""
        return self.get_privacy_spent(delta)[0]

    def state_dict(self):
        """A JSON-able dict (infinite RDP stored as None) that `load_state_dict` restores exactly."""
        return {
            "orders": self._orders.tolist(),
            "rdp": [None if math.isinf(v) else v for v in self._rdp.tolist()],
            "steps": self._steps,
        }

    def load_state_dict(self, state):
        """Restore the orders, RDP totals and step count saved by `state_dict`."""
        try:
            orders, values, steps = state["orders"], state["rdp"], state["steps"]
        except (KeyError, TypeError) as exc:
            raise ValueError("state must be a dict with keys 'orders', 'rdp' and 'steps'") from exc
        _check(steps=steps)
        orders = _orders(orders)
        values = np.array([math.inf if v is None else float(v) for v in values], dtype=np.float64)
        if values.shape != orders.shape or np.any(np.isnan(values) | (values < 0)):
            raise ValueError("state['rdp'] must hold one value >= 0 per order")
        self._orders, self._rdp, self._steps = orders, values, int(steps)
