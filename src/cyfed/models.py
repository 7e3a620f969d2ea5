"""The model protocol: what the trainers call instead of loss names.

A model's parameters are one flat float64 vector theta of `n_params` entries.
The trainers (`DistributedGD`, `FederatedTrainer`, `AsyncTrainer`) only ever

* `prepare` a rank's rows (validated once, before any round),
* ask for loss and gradient *sums* over rows (`sums`: one fused pass; the
  Allreduce adds the sums over ranks),
* `train_clients`: local SGD of a batch of federated clients from one model,
* `predict` / `evaluate` on held-out rows,

so sampling, every strategy, DP, secure aggregation, compression, checkpoints
and MPI work for any model.  Two implementations:

`LinearModel(loss, fit_intercept)`
    The compiled squared / logistic / softmax models.  theta = [coef (d, k)
    row-major, intercept (k,)], k = 1 except for softmax.  Sums come from
    `cyfed._losses`, local training from `cyfed._sgd.train_clients` (dense rows) or
    `cyfed._sparse_sgd.train_clients` (CSR rows).
`CallableModel(loss_grad, n_params, ...)`
    Any model whose parameters are a flat vector, from plain Python callables
    (a numpy MLP; a PyTorch module through `parameters_to_vector`).  Local
    training runs the same SGD rule as the compiled kernel in Python, with the
    kernel's seeded shuffles.

A model object is a specification; the trainers `bind` a copy to the agreed
shape (n_features d, n_outputs k) of the data.
"""
import copy
import inspect
from dataclasses import dataclass

import numpy as np

from cyfed import _validation as check
from cyfed import gradients, hessian
from cyfed._simd import load

_sgd, _ = load("_sgd")
_sparse_sgd, _ = load("_sparse_sgd")

# Labels above this are refused before any (d, k) array is allocated.
MAX_CLASSES = 1 << 20

TARGETS = ("real", "binary", "classes")


class Model:
    """The protocol (base class).  Subclasses implement every method below.

    After `bind(d, k)`: d (features), k (outputs), n_params, n_penalized (the
    leading entries of theta under the L2 penalty) and frozen (a slice of theta
    that training never changes).
    """

    #: What y holds: "real" targets, "binary" 0/1 labels or "classes" 0..k-1.
    targets = "real"
    d = k = None

    def bind(self, d, k):
        """A copy of this model for data of d features and k outputs."""
        bound = copy.copy(self)
        bound.d, bound.k = int(d), int(k)
        return bound

    # -- data ------------------------------------------------------------------

    def prepare(self, X, y, sample_weight=None):
        """Validated rows (an object with n, d, dtype, X, y, sample_weight); may be empty."""
        raise NotImplementedError

    #: How binary labels are described in error messages.
    binary_task = "a binary model"

    def check_targets(self, y, name):
        """Raise ValueError unless `y` holds what the model's targets allow (0/1 labels)."""
        if self.targets == "binary" and not np.all((y == 0) | (y == 1)):
            raise ValueError(f"{name} must hold labels 0 or 1 for {self.binary_task}")

    def empty(self, d, dtype):
        """Data of 0 rows, for a rank that holds none."""
        raise NotImplementedError

    def top_label(self, data):
        """This shard's largest class label (-1 without classes or rows), after checking them."""
        if self.targets != "classes" or data.n == 0:
            return -1
        return _top_label(data.y)

    def n_outputs(self, top_label):
        """k from the largest label over every rank."""
        return 1

    # -- parameters ------------------------------------------------------------

    @property
    def n_params(self):
        raise NotImplementedError

    @property
    def n_penalized(self):
        return self.n_params

    @property
    def frozen(self):
        return slice(0, 0)

    def init_params(self):
        """The starting theta (float64, a fresh array)."""
        return np.zeros(self.n_params)

    def start(self, coef_init=None, intercept_init=None):
        """The starting theta: `init_params()`, or coef_init as the flat parameters."""
        if intercept_init is not None:
            raise ValueError(f"intercept_init is for linear models; {type(self).__name__} "
                             "takes its whole start as coef_init")
        if coef_init is None:
            return self.init_params()
        theta = np.array(check.real_array(coef_init, "coef_init"), dtype=np.float64).ravel()
        if theta.shape != (self.n_params,):
            raise ValueError(f"coef_init must have {self.n_params} entries, got "
                             f"shape {np.shape(coef_init)}")
        return check.finite(theta, "coef_init")

    # -- computation -----------------------------------------------------------

    def sums(self, data, theta, rows, out, n_threads, clip_norm=None):
        """Sums over `rows` (None: all) into out[:n_params] (float64):
        sum_i w_i grad l_i, each term clipped to L2 norm clip_norm unless None.
        Returns (sum_i w_i l_i, sum_i w_i, number of clipped terms)."""
        raise NotImplementedError

    def train_clients(self, data, offsets, which, client_ids, epochs, theta, corrections,
                      out, losses, steps, sgd):
        """Local SGD of the clients `which` (positions into offsets) from theta.

        Client i owns rows offsets[which[i]]:offsets[which[i] + 1] of data; it runs
        epochs[i] epochs of mini-batches of sgd.batch_size rows, each epoch
        shuffled from (sgd.seed, sgd.rnd, client_ids[i], epoch), each step

            g = mean batch gradient + l2 w[:n_penalized] + mu (w - theta) + corrections[i]
            v = momentum v + g;   w = w - lr v

        (at most sgd.max_steps steps when > 0), writing the local model to out[i],
        the mean batch loss to losses[i] and the steps to steps[i]."""
        raise NotImplementedError

    #: Whether curvature / hess_vec_sums / hessian_sums exist (the Newton solvers).
    second_order = False

    def curvature(self, data, theta, n_threads):
        """Per-row second-derivative factors of the loss at theta (local, no collective)."""
        raise NotImplementedError

    def hess_vec_sums(self, data, curv, v, out, n_threads):
        """out[:n_params] = sum_i w_i (Hessian of l_i) v, from `curvature`'s factors."""
        raise NotImplementedError

    def hessian_diag_sums(self, data, curv, out):
        """out[:n_params] = the diagonal of `hessian_sums` (TRON's preconditioner)."""
        raise NotImplementedError

    def hessian_sums(self, data, curv, out, n_threads):
        """out (n_params, n_params) = sum_i w_i (Hessian of l_i), from `curvature`'s factors."""
        raise NotImplementedError

    def gauge(self, penalised):
        """Index arrays of theta along whose all-ones direction the loss is constant
        (softmax: the same shift of every class), the coefficients' only when not
        `penalised`; Newton solves add them to the Hessian to pick the minimum-norm step."""
        return []

    def gram(self, data):
        """(a squared-loss linear model, `data` with targets 0, c) when the Hessian of the
        mean loss is at most c G, G = [X 1]^T diag(w) [X 1] / W, in the Loewner order --
        its gradient sums at v are then 2 W G v (`distributed.step_size`); None when no
        such bound is known."""
        return None

    def predict(self, X, theta, n_threads=None):
        raise NotImplementedError

    def evaluate(self, X, y, theta, n_threads=None):
        """{"loss": mean loss, "accuracy" | "r2": ...} on (X, y)."""
        raise NotImplementedError

    def describe(self):
        """A JSON-able description (checkpoint fingerprints)."""
        raise NotImplementedError

    def non_finite_input(self, data):
        """A ValueError naming this shard's NaN/Inf input, or None if it is all finite."""
        if data.n == 0:
            return None
        for arr, name in ((data.X, "X"), (data.y, "y"), (data.sample_weight, "sample_weight")):
            try:
                check.finite(arr, name)
            except ValueError as exc:
                return exc
        return None


@dataclass(frozen=True)
class SGDSettings:
    """Local training of one round: batch size, step cap (0: none), rates and seeds."""
    batch_size: int
    max_steps: int
    lr: float
    l2: float
    mu: float
    momentum: float
    seed: int
    rnd: int
    n_threads: int


def _top_label(y):
    if not (np.all(np.isfinite(y)) and np.all(y >= 0) and np.all(y == np.floor(y))):
        raise ValueError("y must hold integer class labels 0..k-1 for the softmax loss")
    top = int(y.max())
    if top >= MAX_CLASSES:
        raise ValueError(f"y has a class label {top}; labels must be below {MAX_CLASSES}")
    return top


def r2_score(sse, sst):
    """R^2 = 1 - SSE / SST; for constant targets (SST = 0) 1.0 if SSE = 0 else 0.0
    (scikit-learn's `r2_score` convention)."""
    if sst > 0:
        return float(1 - sse / sst)
    return 1.0 if sse == 0 else 0.0


def _score(pred, y, targets):
    y = np.asarray(y, dtype=np.float64)
    if targets == "real":
        pred = np.asarray(pred, dtype=np.float64)
        return {"r2": r2_score(float(np.sum((y - pred) ** 2)),
                               float(np.sum((y - y.mean()) ** 2)))}
    return {"accuracy": float(np.mean(pred == y))}


# -- the compiled linear models ----------------------------------------------------------

def row_curvature(data, curv):
    """(n, k) diagonal second derivatives of each row's weighted loss in its margins:
    D_i (squared, logistic) or w_i p_ic (1 - p_ic) (softmax, curv = the probabilities)."""
    if curv.ndim == 1:
        return curv[:, None]
    weights = data.sample_weight if len(data.sample_weight) else np.ones(data.n)
    return weights[:, None] * curv * (1.0 - curv)


class LinearModel(Model):
    """Squared, logistic or softmax linear model on the compiled kernels.

    theta = [coef (d, k) row-major, intercept (k,)]; the intercept is not
    penalised, and is frozen at 0 when fit_intercept is False.
    """

    def __init__(self, loss="squared", fit_intercept=True):
        gradients._loss_kind(loss)
        self.loss, self.fit_intercept = loss, fit_intercept
        self.targets = {"squared": "real", "logistic": "binary", "softmax": "classes"}[loss]

    binary_task = "the logistic loss"
    second_order = True

    def prepare(self, X, y, sample_weight=None):
        return gradients.prepare(self.loss, X, y, sample_weight, allow_empty=True)

    def empty(self, d, dtype):
        return gradients.prepare(self.loss, np.empty((0, d), dtype=dtype),
                                 np.empty(0, dtype=dtype), allow_empty=True)

    def n_outputs(self, top_label):
        return max(top_label + 1, 2) if self.loss == "softmax" else 1

    @property
    def n_params(self):
        return self.d * self.k + self.k

    @property
    def n_penalized(self):
        return self.d * self.k

    @property
    def frozen(self):
        dk = self.d * self.k
        return slice(dk, dk) if self.fit_intercept else slice(dk, dk + self.k)

    def start(self, coef_init=None, intercept_init=None):
        """theta from coef (d,) or (d, k) and intercept (a float or (k,)), zeros by default."""
        d, k = self.d, self.k
        theta = np.zeros(self.n_params)
        if coef_init is not None:
            if np.shape(coef_init) != ((d, k) if k > 1 else (d,)):
                raise ValueError(f"coef_init must have shape {(d, k) if k > 1 else (d,)}, "
                                 f"got {np.shape(coef_init)}")
            theta[:d * k] = gradients.coef_2d(coef_init, gradients.LOSSES[self.loss], d,
                                              np.float64).ravel()
        if intercept_init is not None:
            theta[d * k:] = gradients.intercept_1d(intercept_init, k, np.float64)
        return theta

    def split(self, theta):
        """(coef, intercept) of theta in the shapes users see: (d,) and a float for
        k = 1, (d, k) and (k,) for softmax; intercept 0 without fit_intercept."""
        d, k = self.d, self.k
        coef = np.array(theta[:d * k].reshape(d, k))
        b = np.array(theta[d * k:]) if self.fit_intercept else np.zeros(k)
        return (coef[:, 0], float(b[0])) if k == 1 else (coef, b)

    def kernel_params(self, theta, dtype):
        """(coef (d, k), intercept (k,) or empty without one) of theta in the kernels' dtype."""
        dk = self.d * self.k
        coef = theta[:dk].reshape(self.d, self.k).astype(dtype, copy=False)
        b = theta[dk:].astype(dtype) if self.fit_intercept else np.empty(0, dtype=dtype)
        return coef, b

    def sums(self, data, theta, rows, out, n_threads, clip_norm=None):
        coef, b = self.kernel_params(theta, data.dtype)
        if clip_norm is None:
            return (*data.sums(coef, b, rows, out, n_threads), 0)
        return data.clipped_sums(coef, b, rows, out, n_threads, clip_norm)

    def train_clients(self, data, offsets, which, client_ids, epochs, theta, corrections,
                      out, losses, steps, sgd):
        """`cyfed._sgd.train_clients`, or `cyfed._sparse_sgd.train_clients` (the same
        steps, touching only the coefficients a batch holds) when data.X is CSR."""
        kernel = _sparse_sgd if data.sparse else _sgd
        kernel.train_clients(int(data.kind), *data.x_args, data.y, offsets, which, client_ids,
                             epochs, theta.astype(data.dtype), corrections, out, losses, steps,
                             self.k, self.fit_intercept, sgd.batch_size, sgd.max_steps, sgd.lr,
                             sgd.l2, sgd.mu, sgd.momentum, sgd.seed, sgd.rnd, sgd.n_threads)

    def gauge(self, penalised):
        if self.k == 1:
            return []
        rows = range(self.d + 1) if not penalised else range(self.d, self.d + 1)
        return [np.arange(r * self.k, (r + 1) * self.k) for r in rows
                if r < self.d or self.fit_intercept]

    def curvature(self, data, theta, n_threads):
        coef, b = self.kernel_params(theta, data.dtype)
        return hessian.curvature(data, coef, b, None, n_threads)

    def hess_vec_sums(self, data, curv, v, out, n_threads):
        coef, b = self.kernel_params(v, data.dtype)
        hessian.hess_vec_sums(data, curv, coef, b, None, out, n_threads)

    def hessian_sums(self, data, curv, out, n_threads):
        hessian.hessian_sums(data, curv, None, self.fit_intercept, out, n_threads)

    def hessian_diag_sums(self, data, curv, out, n_threads=None):
        """sum_i D_i x_ij^2 (softmax: w_i p_ic (1 - p_ic) x_ij^2), then the intercept's
        sum_i D_i: one fused pass over X (`hessian.hessian_diag_sums`); n_threads None:
        the kernels' default."""
        threads = gradients._kernels.max_threads() if n_threads is None else n_threads
        hessian.hessian_diag_sums(data, curv, None, self.fit_intercept, out, threads)

    def gram(self, data):
        lipschitz = {"squared": 2.0, "logistic": 0.25, "softmax": 0.5}[self.loss]
        zeros = np.zeros(data.n, dtype=data.dtype)
        return (LinearModel("squared", self.fit_intercept).bind(self.d, 1),
                gradients.Problem("squared", data.X, zeros, data.sample_weight), lipschitz)

    def predict(self, X, theta, n_threads=None):
        coef, b = self.split(theta)
        return gradients.predict(self.loss, X, coef, b if self.fit_intercept else None,
                                 n_threads=n_threads)

    def evaluate(self, X, y, theta, n_threads=None):
        coef, b = self.split(theta)
        b = b if self.fit_intercept else None
        value = gradients.loss_grad(self.loss, X, y, coef, b, n_threads=n_threads)[0]
        pred = gradients.predict(self.loss, X, coef, b, n_threads=n_threads)
        return {"loss": float(value), **_score(pred, y, self.targets)}

    def describe(self):
        return self.loss

    def non_finite_input(self, data):
        if data.n == 0:
            return None
        try:
            data.raise_non_finite("loss")
        except ValueError as exc:
            return exc
        except FloatingPointError:
            return None
        return None


# -- models from Python callables ----------------------------------------------------------

class _Rows:
    """Validated rows of a CallableModel: X (n, d) float, y (n,), weights (empty: unit)."""

    def __init__(self, X, y, sample_weight):
        self.X, self.y, self.sample_weight = X, y, sample_weight
        self.n, self.d = X.shape
        self.dtype = X.dtype


class CallableModel(Model):
    """A model given by Python callables over a flat parameter vector.

    Parameters
    ----------
    loss_grad : callable (theta, X, y) -> (value, grad)
        The mean loss over the rows of X (n, d) with targets y (n,) at theta
        (n_params,) float64, and its gradient (n_params,).  If it accepts a
        `sample_weight` keyword it receives the rows' weights (n,) and returns
        the weighted mean; then sample weights may be given to the trainers.
    n_params : int >= 1
    predict : callable (theta, X) -> (n,) predictions (labels for classifiers),
        needed by `predict`, `score` and test-set evaluation
    init : callable (n_params,) -> theta, or an array: the starting parameters
        (default zeros; a neural network needs a random start)
    targets : "real", "binary" or "classes"
        What y holds (label poisoning attacks and metrics: R^2 for real targets,
        accuracy otherwise).

    The L2 penalty of the trainers applies to every parameter.  DP-SGD's
    per-example clipping calls loss_grad once per example of the batch.
    """

    def __init__(self, loss_grad, n_params, *, predict=None, init=None, targets="real"):
        if not callable(loss_grad):
            raise TypeError(f"loss_grad must be callable, got {type(loss_grad).__name__}")
        if predict is not None and not callable(predict):
            raise TypeError(f"predict must be callable or None, got {type(predict).__name__}")
        if targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
        self.loss_grad, self.predict_fn, self.init = loss_grad, predict, init
        self._n_params = check.int_at_least(n_params, "n_params", 1)
        self.targets = targets
        try:
            params = inspect.signature(loss_grad).parameters
        except (TypeError, ValueError):
            params = {}
        self.weighted = "sample_weight" in params or any(
            p.kind == p.VAR_KEYWORD for p in params.values())

    binary_task = "targets='binary'"

    def prepare(self, X, y, sample_weight=None):
        X = check.matrix(X, "X", allow_empty=True)
        y = check.vector(y, "y", X.shape[0], X.dtype)
        if sample_weight is None:
            sw = np.empty(0, dtype=X.dtype)
        elif not self.weighted:
            raise ValueError("sample_weight needs a loss_grad that accepts sample_weight=")
        else:
            sw = check.vector(sample_weight, "sample_weight", X.shape[0], X.dtype)
        self.check_targets(y, "y")
        return _Rows(X, y, sw)

    def empty(self, d, dtype):
        return _Rows(np.empty((0, d), dtype=dtype), np.empty(0, dtype=dtype),
                     np.empty(0, dtype=dtype))

    @property
    def n_params(self):
        return self._n_params

    def init_params(self):
        if self.init is None:
            return np.zeros(self.n_params)
        theta = self.init(self.n_params) if callable(self.init) else self.init
        theta = np.array(theta, dtype=np.float64).ravel()
        if theta.shape != (self.n_params,):
            raise ValueError(f"init must give {self.n_params} parameters, got {theta.shape}")
        return check.finite(theta, "init")

    def _value_grad(self, theta, X, y, w):
        """(mean loss, a fresh float64 copy of the gradient): training updates it in place."""
        out = self.loss_grad(theta, X, y) if w is None else self.loss_grad(theta, X, y,
                                                                            sample_weight=w)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(f"loss_grad must return a pair (mean loss, gradient), got "
                             f"{type(out).__name__}")
        value, grad = out
        if np.ndim(value) != 0:
            raise ValueError(f"loss_grad must return the mean loss as a scalar, got shape "
                             f"{np.shape(value)}")
        if np.size(grad) != self.n_params:
            raise ValueError(f"loss_grad returned a gradient of shape {np.shape(grad)}, "
                             f"expected ({self.n_params},)")
        return float(value), np.array(grad, dtype=np.float64).reshape(self.n_params)

    def sums(self, data, theta, rows, out, n_threads, clip_norm=None):
        out = out[:self.n_params]
        idx = np.arange(data.n) if rows is None else rows
        if len(idx) == 0 or data.n == 0:
            out[:] = 0
            return 0.0, 0.0, 0
        if len(data.sample_weight):
            w = data.sample_weight[idx].astype(np.float64)
        else:
            w = None
        if clip_norm is None:
            value, grad = self._value_grad(theta, data.X[idx], data.y[idx], w)
            total = float(w.sum()) if w is not None else float(len(idx))
            np.multiply(grad, total, out=out)
            return value * total, total, 0
        out[:] = 0
        loss_sum = weight_sum = 0.0
        clipped = 0
        for j, i in enumerate(idx):     # per example: g_i = w_i grad l_i, clipped to C
            wi = 1.0 if w is None else float(w[j])
            value, grad = self._value_grad(theta, data.X[i:i + 1], data.y[i:i + 1], None)
            grad *= wi
            norm = float(np.linalg.norm(grad))
            if norm > clip_norm:
                grad *= clip_norm / norm
                clipped += 1
            out += grad
            loss_sum += wi * value
            weight_sum += wi
        return loss_sum, weight_sum, clipped

    def train_clients(self, data, offsets, which, client_ids, epochs, theta, corrections,
                      out, losses, steps, sgd):
        for i, pos in enumerate(which):
            lo, hi = offsets[pos], offsets[pos + 1]
            corr = corrections[i].astype(np.float64) if corrections.shape[0] else None
            out[i], losses[i], steps[i] = self._train_one(
                data.X[lo:hi], data.y[lo:hi], int(client_ids[i]), int(epochs[i]), theta,
                corr, sgd)

    def _train_one(self, X, y, client, epochs, theta, corr, sgd):
        w = np.array(theta, dtype=np.float64)
        v = np.zeros_like(w)
        n, pen = X.shape[0], self.n_penalized
        taken, rows_seen, loss = 0, 0, 0.0
        for e in range(epochs):
            perm = _sgd.shuffled(n, sgd.seed, sgd.rnd, client, e)
            for start in range(0, n, sgd.batch_size):
                if sgd.max_steps > 0 and taken >= sgd.max_steps:
                    break
                batch = perm[start:start + sgd.batch_size]
                value, g = self._value_grad(w, X[batch], y[batch], None)
                g[:pen] += sgd.l2 * w[:pen]
                if sgd.mu:
                    g += sgd.mu * (w - theta)
                if corr is not None:
                    g += corr
                if sgd.momentum:
                    v = sgd.momentum * v + g
                    g = v
                w -= sgd.lr * g
                loss += value * len(batch)
                rows_seen += len(batch)
                taken += 1
        return w, (loss / rows_seen if rows_seen else 0.0), taken

    def predict(self, X, theta, n_threads=None):
        if self.predict_fn is None:
            raise ValueError("this CallableModel has no predict callable")
        X = check.matrix(X, "X")
        return np.asarray(self.predict_fn(theta, X))

    def evaluate(self, X, y, theta, n_threads=None):
        data = self.prepare(X, y)
        value, _ = self._value_grad(theta, data.X, data.y, None)
        result = {"loss": value}
        if self.predict_fn is not None:
            result.update(_score(self.predict(data.X, theta), data.y, self.targets))
        return result

    def describe(self):
        name = getattr(self.loss_grad, "__qualname__", type(self.loss_grad).__name__)
        return {"class": "CallableModel", "loss_grad": name, "n_params": self.n_params,
                "targets": self.targets}


def as_model(loss, fit_intercept=True):
    """The trainers' `loss` argument as a Model: a loss name gives a LinearModel."""
    if isinstance(loss, Model):
        return loss
    if isinstance(loss, str):
        return LinearModel(loss, fit_intercept)
    raise TypeError(f"loss must be 'squared', 'logistic', 'softmax' or a cyfed.models.Model, "
                    f"got {type(loss).__name__}")
