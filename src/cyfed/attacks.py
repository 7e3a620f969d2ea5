"""Byzantine clients for robustness studies: a fixed set of malicious client ids and what they do.

The server calls `perturb(theta, messages, client_ids, rng)` each round before aggregation.
Attacks act on the update delta_i = w_i - theta of a malicious client i (w_i = the first
theta.size columns of its message; further columns, e.g. SCAFFOLD's control variates, are
left as sent) and replace its model by theta + delta_i'.  mu and sigma are the per-coordinate
mean and standard deviation (ddof=0) of this round's honest deltas.

=====================  ===========================================================================
``SignFlip(s)``        delta' = -s delta
``GaussianNoise(std)`` delta' ~ N(0, std^2 I), a random update (Blanchard et al. 2017, NeurIPS)
``Scaling(factor)``    delta' = factor delta (boosting / model replacement, Bagdasaryan et al. 2020)
``LabelFlip()``        trains on flipped labels: k-1-y (softmax), 1-y (logistic), -y (squared)
``ALittleIsEnough(z)`` delta' = mu - z sigma (Baruch et al. 2019, arXiv:1902.06156)
``InnerProduct(eps)``  delta' = -eps mu (Xie, Koyejo & Gupta 2020, "Fall of Empires", UAI)
=====================  ===========================================================================
"""
import math
import numbers
from statistics import NormalDist

import numpy as np

from cyfed import _validation as check

LOSSES = ("squared", "logistic", "softmax")


class Attack:
    """Base: a fixed set of malicious client ids; by default changes nothing.

    Parameters
    ----------
    clients : iterable of int >= 0
        Ids of the malicious clients (they act only in rounds where they report).
    """

    #: Names of the hyper-parameters shown by repr.
    _params = ()

    def __init__(self, clients):
        try:
            ids = list(clients)
        except TypeError:
            raise ValueError(f"clients must be an iterable of int client ids, "
                             f"got {clients!r}") from None
        bad = [c for c in ids if isinstance(c, bool)
               or not isinstance(c, numbers.Integral) or c < 0]
        if bad:
            raise ValueError(f"clients must be int client ids >= 0, got {bad!r}")
        self.clients = frozenset(int(c) for c in ids)
        self._ids = np.array(sorted(self.clients), dtype=np.int64)

    def __repr__(self):
        args = [f"clients={self._ids.tolist()}"]
        args += [f"{name}={getattr(self, name)!r}" for name in self._params]
        return f"{type(self).__name__}({', '.join(args)})"

    def malicious(self, client_ids):
        """Boolean mask, True where client_ids[i] is malicious."""
        return np.isin(np.asarray(client_ids, dtype=np.int64), self._ids)

    def poison_labels(self, y, loss, n_classes):
        """Labels a malicious client trains on (called once at setup); default: y itself."""
        return y

    def perturb(self, theta, messages, client_ids, rng):
        """This round's messages as the server receives them (a new (K, width) float64 array).

        theta : (n,) the current global model; messages : (K, width >= n), one row per
        reporting client, whose first n columns are its local model; client_ids : (K,) ints;
        rng : numpy.random.Generator.  Rows of honest clients are copied bit for bit.
        """
        theta = np.asarray(theta, dtype=np.float64)
        out = np.array(messages, dtype=np.float64)
        client_ids = np.asarray(client_ids)
        if theta.ndim != 1 or out.ndim != 2 or out.shape[1] < theta.size:
            raise ValueError(f"messages must have shape (K, width >= {theta.size}) for theta "
                             f"of shape (n,), got messages {out.shape} and theta {theta.shape}")
        if client_ids.shape != (out.shape[0],):
            raise ValueError(f"client_ids must have shape ({out.shape[0]},), "
                             f"got shape {client_ids.shape}")
        bad = self.malicious(client_ids)
        if bad.any():
            n = theta.size
            new = self._forge(out[:, :n] - theta, bad, rng)
            if new is not None:
                out[bad, :n] = theta + new
        return out

    def _forge(self, deltas, bad, rng):
        """New deltas of the malicious rows ((f, n), or one (n,) row for all), None: unchanged."""
        return None


class SignFlip(Attack):
    """Reversed update: delta' = -scale * delta."""

    _params = ("scale",)

    def __init__(self, clients, scale=1.0):
        super().__init__(clients)
        self.scale = check.positive_float(scale, "scale")

    def _forge(self, deltas, bad, rng):
        return -self.scale * deltas[bad]


class GaussianNoise(Attack):
    """Random update: delta' ~ N(0, std^2) per coordinate, drawn from the round's rng.

    The "Gaussian" Byzantine worker of Blanchard et al. 2017 (Krum, NeurIPS).
    """

    _params = ("std",)

    def __init__(self, clients, std=1.0):
        super().__init__(clients)
        self.std = check.positive_float(std, "std")

    def _forge(self, deltas, bad, rng):
        return rng.normal(0.0, self.std, size=(int(bad.sum()), deltas.shape[1]))


class Scaling(Attack):
    """Boosted update: delta' = factor * delta (model replacement, Bagdasaryan et al. 2020)."""

    _params = ("factor",)

    def __init__(self, clients, factor=10.0):
        super().__init__(clients)
        self.factor = check.positive_float(factor, "factor")

    def _forge(self, deltas, bad, rng):
        return self.factor * deltas[bad]


class LabelFlip(Attack):
    """Data poisoning: malicious clients train honestly on flipped labels.

    softmax: y -> n_classes - 1 - y;  logistic: y -> 1 - y;  squared: y -> -y.
    """

    def poison_labels(self, y, loss, n_classes):
        y = np.asarray(y)
        if loss == "softmax":
            if (isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral)
                    or n_classes < 1):
                raise ValueError(f"n_classes must be an int >= 1, got {n_classes!r}")
            if y.size and (y.min() < 0 or y.max() > n_classes - 1):
                raise ValueError(f"softmax labels must lie in 0..{n_classes - 1}, "
                                 f"got range [{y.min()}, {y.max()}]")
            flipped = n_classes - 1 - y
        elif loss == "logistic":
            flipped = 1 - y
        elif loss == "squared":
            flipped = -y
        else:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        return flipped.astype(y.dtype, copy=False)


class ALittleIsEnough(Attack):
    """A little is enough (Baruch et al. 2019, arXiv:1902.06156): delta' = mu - z * sigma.

    mu, sigma: per-coordinate mean and standard deviation (ddof=0) of the honest deltas of
    the round.  z=None uses the paper's z_max for the round's n reporting and f malicious
    clients (see `z_max`).  A round without honest clients is left unchanged.
    """

    _params = ("z",)

    def __init__(self, clients, z=None):
        super().__init__(clients)
        if z is not None and (isinstance(z, bool) or not isinstance(z, numbers.Real)
                              or not math.isfinite(z)):
            raise ValueError(f"z must be a finite number or None, got {z!r}")
        self.z = None if z is None else float(z)

    @staticmethod
    def z_max(n, f):
        """z_max = Phi^-1((n - s) / n), s = floor(n/2 + 1) - f, for 1 <= f < n.

        s is the number of honest clients the attackers need on their side; when they are
        the majority (s <= 0) s is taken as 1, which keeps z finite and non-decreasing in f.
        """
        if not (isinstance(n, numbers.Integral) and isinstance(f, numbers.Integral)
                and 1 <= f < n):
            raise ValueError(f"z_max needs ints 1 <= f < n, got n={n!r}, f={f!r}")
        s = max(n // 2 + 1 - f, 1)
        return NormalDist().inv_cdf((n - s) / n)

    def _forge(self, deltas, bad, rng):
        honest = deltas[~bad]
        if len(honest) == 0:
            return None
        z = self.z if self.z is not None else self.z_max(len(bad), int(bad.sum()))
        return honest.mean(axis=0) - z * honest.std(axis=0)


class InnerProduct(Attack):
    """Inner-product manipulation (Xie, Koyejo & Gupta 2020, "Fall of Empires", UAI):
    delta' = -epsilon * mu, mu the mean of the round's honest deltas.

    A round without honest clients is left unchanged.
    """

    _params = ("epsilon",)

    def __init__(self, clients, epsilon=0.1):
        super().__init__(clients)
        self.epsilon = check.positive_float(epsilon, "epsilon")

    def _forge(self, deltas, bad, rng):
        honest = deltas[~bad]
        if len(honest) == 0:
            return None
        return -self.epsilon * honest.mean(axis=0)
