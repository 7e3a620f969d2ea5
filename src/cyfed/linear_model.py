"""scikit-learn estimators on cyfed's solvers: `LinearRegression`, `LogisticRegression`.

Drop-in replacements for scikit-learn's classes of the same names (the same
parameter names where scikit-learn has them, the same fitted attributes and
shapes, the same optimum), trained by `cyfed.distributed.DistributedGD`.  In one
process they behave like any scikit-learn estimator (pipelines, grid searches,
`clone`, `check_estimator`).  Under ``mpiexec`` the same class trains
data-parallel: every rank calls ``fit`` with its own shard of rows (``comm=None``
picks MPI's world), and every rank ends with the same model; ``score`` is then
collective (accuracy or R^2 over every rank's rows), while ``predict`` and the
other methods act on the rows a rank passes.

Importing this module needs scikit-learn (>= 1.6); the rest of cyfed does not.
"""
import warnings

import numpy as np

try:
    from scipy.special import expit, log_expit, log_softmax, softmax
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:          # validate_data is scikit-learn >= 1.6
    raise ImportError("cyfed.linear_model needs scikit-learn >= 1.6 (and scipy): "
                      "pip install 'scikit-learn>=1.6'") from exc

from cyfed.comm import get_comm, on_every_rank
from cyfed.distributed import DistributedGD
from cyfed.models import r2_score

_DTYPES = [np.float64, np.float32]

# DistributedGD parameters the estimators set themselves (solver_options may not).
_OWN = ("loss", "solver", "max_iter", "tol", "gtol", "l2", "fit_intercept", "n_threads", "comm")


def _sample_weight(sample_weight, n):
    """sample_weight as a float64 (n,) array (ones when None); ValueError unless finite, >= 0."""
    if sample_weight is None:
        return np.ones(n)
    sw = np.asarray(sample_weight, dtype=np.float64)
    if sw.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got shape {sw.shape}")
    if not np.all(np.isfinite(sw)) or np.any(sw < 0):
        raise ValueError("sample_weight must hold finite values >= 0")
    return sw


def _global_sum(comm, values):
    """Collective: the elementwise sum of the float64 array `values` over every rank."""
    return comm.allreduce_sum(np.array(values, dtype=np.float64))


def _total_weight(comm, sw):
    """Collective: W = sum_i w_i over every rank's rows; ValueError when W = 0."""
    total = _global_sum(comm, [sw.sum()])[0]
    if total == 0:
        raise ValueError("sample_weight is zero for every row (of every rank): the weights "
                         "must have a positive sum")
    return total


class _CyfedLinear(BaseEstimator):
    """What both estimators share: the communicator, collective validation, the solve."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True           # CSR rows go to the sparse kernels as they are
        return tags

    def _comm(self):
        return get_comm() if self.comm is None else self.comm

    def _validate_fit(self, comm, X, y, sample_weight, y_numeric):
        """Collective: validated (X, y, sample weights) of this rank's shard (a rank of
        several may hold 0 rows); a bad shard raises the same error on every rank."""
        def local():
            Xv, yv = validate_data(self, X, y, dtype=_DTYPES, y_numeric=y_numeric,
                                   accept_sparse="csr",
                                   ensure_min_samples=1 if comm.size == 1 else 0)
            if not y_numeric and yv.size:
                check_classification_targets(yv)
            return Xv, yv, _sample_weight(sample_weight, Xv.shape[0])

        return on_every_rank(comm, local)

    def _solve(self, comm, loss, X, y, sw, l2, coef_init, intercept_init):
        """Collective: the DistributedGD fit of (loss, l2) on every rank's shard."""
        options = dict(self.solver_options or {})
        taken = sorted(set(options) & set(_OWN))
        if taken:
            raise ValueError(f"solver_options may not set {taken}: {type(self).__name__} "
                             "sets them from its own parameters")
        gd = DistributedGD(loss, solver=self.solver, max_iter=self.max_iter, gtol=self.tol,
                           l2=l2, fit_intercept=self.fit_intercept, n_threads=self.n_threads,
                           comm=comm, **options)
        gd.fit(X, y, sample_weight=sw, coef_init=coef_init, intercept_init=intercept_init)
        if gd.n_iter_ >= self.max_iter:
            warnings.warn(f"{type(self).__name__}: the solver stopped at max_iter="
                          f"{self.max_iter} before reaching tol={self.tol}; increase "
                          "max_iter or scale the data", ConvergenceWarning, stacklevel=3)
        self.n_iter_ = np.array([gd.n_iter_], dtype=np.int32)
        self.solver_ = getattr(gd, "solver_", self.solver)
        return gd

    def _decision(self, X):
        """X @ coef_.T + intercept_ for this rank's validated rows: (n, k)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=_DTYPES, accept_sparse="csr", reset=False)
        return np.asarray(X @ np.atleast_2d(self.coef_).T) + self.intercept_

    def _score_rows(self, comm, X, y, sample_weight):
        """Collective: this rank's validated (X, y, weights) to score; X may have 0 rows."""
        check_is_fitted(self)

        def local():
            Xv = validate_data(self, X, dtype=_DTYPES, accept_sparse="csr", reset=False,
                               ensure_min_samples=0)
            yv = np.asarray(y)
            if yv.shape != (Xv.shape[0],):
                raise ValueError(f"y must have shape ({Xv.shape[0]},), got shape {yv.shape}")
            return Xv, yv, _sample_weight(sample_weight, Xv.shape[0])

        return on_every_rank(comm, local)


class LinearRegression(RegressorMixin, _CyfedLinear):
    """Ordinary least squares, data-parallel: scikit-learn's `LinearRegression`.

    Minimises (1/W) sum_i w_i (x_i . coef + intercept - y_i)^2 over every rank's rows
    (W = sum_i w_i): the least-squares solution of `numpy.linalg.lstsq` /
    scikit-learn, to the solver's tolerance.

    Parameters
    ----------
    fit_intercept : bool
    solver : a `DistributedGD` solver name ("auto": one exact Newton step up to 500
        features, L-BFGS above; any other it accepts is passed on)
    tol : float >= 0, stop when the gradient's 2-norm is <= tol (DistributedGD's gtol)
    max_iter : int >= 1, solver iterations
    n_threads : OpenMP threads per rank (None: cores / ranks on the node, as DistributedGD)
    comm : Communicator or None -- None: MPI's world under mpiexec, else one process
    solver_options : dict or None, further `DistributedGD` parameters (e.g.
        ``{"lbfgs_memory": 20}``, or ``{"lr": 0.1}`` with ``solver="gd"``)

    Attributes
    ----------
    coef_ : (n_features,) float64;  intercept_ : float (0.0 without fit_intercept)
    n_iter_ : (1,) int32, the solver's iterations;  solver_ : the solver that ran
    n_features_in_ : int;  feature_names_in_ : (n_features,) when X has string column names
    """

    def __init__(self, *, fit_intercept=True, solver="auto", tol=1e-8, max_iter=1000,
                 n_threads=None, comm=None, solver_options=None):
        self.fit_intercept, self.solver, self.tol = fit_intercept, solver, tol
        self.max_iter, self.n_threads, self.comm = max_iter, n_threads, comm
        self.solver_options = solver_options

    def fit(self, X, y, sample_weight=None, *, coef_init=None, intercept_init=None):
        """Fit on this rank's rows (collective under MPI); coef_init (n_features,) and
        intercept_init (a float) start the solver there.  Returns self."""
        comm = self._comm()
        X, y, sw = self._validate_fit(comm, X, y, sample_weight, y_numeric=True)
        _total_weight(comm, sw)
        gd = self._solve(comm, "squared", X, y, sw, 0.0, coef_init, intercept_init)
        self.coef_, self.intercept_ = gd.coef_, gd.intercept_
        return self

    def predict(self, X):
        """X @ coef_ + intercept_ for this rank's rows: (n,)."""
        return self._decision(X)[:, 0]

    def score(self, X, y, sample_weight=None):
        """Collective R^2 = 1 - SSE / SST over every rank's rows, weighted:
        SSE = sum w (y - pred)^2, SST = sum w (y - ybar)^2, ybar the weighted mean."""
        comm = self._comm()
        X, y, sw = self._score_rows(comm, X, y, sample_weight)
        y = y.astype(np.float64)
        pred = self.predict(X) if X.shape[0] else np.empty(0)
        first = _global_sum(comm, [sw.sum(), sw @ y])
        if first[0] == 0:
            raise ValueError("score needs rows of positive weight on some rank")
        mean = first[1] / first[0]
        second = _global_sum(comm, [sw @ (y - pred) ** 2, sw @ (y - mean) ** 2])
        return r2_score(second[0], second[1])


class LogisticRegression(ClassifierMixin, _CyfedLinear):
    """L2-regularised logistic regression, data-parallel: scikit-learn's `LogisticRegression`.

    Minimises

        (1/2) ||coef||^2 + C sum_i w_i l_i,   i.e.   (1/W) sum_i w_i l_i + l2/2 ||coef||^2

    with l2 = 1 / (C W), W = sum_i w_i over every rank's rows (w_i the sample weight
    times the class weight), l_i the logistic loss for two classes and the
    multinomial (softmax) loss for three or more; the intercept is not penalised.
    This is scikit-learn's objective, so the fitted model is scikit-learn's.

    Parameters
    ----------
    penalty : "l2" or None (no penalty; as C = inf)
    C : float > 0 (inf allowed), the inverse of the regularisation strength
    fit_intercept : bool
    class_weight : None, "balanced" (w_c = n / (k n_c), counts over every rank) or
        {label: weight}
    tol : float >= 0, stop when the gradient's 2-norm of the averaged objective is <= tol
        (scikit-learn's lbfgs tests the largest entry)
    solver : a `DistributedGD` solver name ("lbfgs"; any other it accepts is passed on)
    max_iter : int >= 1;  n_threads : OpenMP threads per rank
    comm : Communicator or None -- None: MPI's world under mpiexec, else one process
    solver_options : dict or None, further `DistributedGD` parameters

    Attributes
    ----------
    classes_ : (k,) the labels over every rank, sorted
    coef_ : (1, n_features) for two classes, (k, n_features) for more
    intercept_ : (1,) or (k,);  n_iter_ : (1,) int32;  solver_ : the solver that ran
    n_features_in_ : int;  feature_names_in_ : (n_features,) when X has string column names
    """

    def __init__(self, penalty="l2", *, C=1.0, fit_intercept=True, class_weight=None,
                 tol=1e-4, solver="lbfgs", max_iter=100, n_threads=None, comm=None,
                 solver_options=None):
        self.penalty, self.C, self.fit_intercept = penalty, C, fit_intercept
        self.class_weight, self.tol, self.solver = class_weight, tol, solver
        self.max_iter, self.n_threads, self.comm = max_iter, n_threads, comm
        self.solver_options = solver_options

    def _check_penalty(self):
        if self.penalty not in ("l2", None):
            raise ValueError(f"penalty must be 'l2' or None, got {self.penalty!r}")
        if isinstance(self.C, bool) or not isinstance(self.C, (int, float, np.number)) \
                or not self.C > 0:
            raise ValueError(f"C must be a positive number (inf: no penalty), got {self.C!r}")

    def _l2(self, total_weight):
        """l2 = 1 / (C W), 0 without a penalty."""
        if self.penalty is None or np.isinf(self.C):
            return 0.0
        return 1.0 / (float(self.C) * total_weight)

    def _class_weights(self, comm, codes, sw):
        """(k,) weight per class: ones, "balanced" or the dict's entries (1 for a class
        it leaves out).  "balanced" is scikit-learn's w_c = W / (k W_c), W_c the sample
        weight of class c and W = sum_c W_c, summed over every rank."""
        k = self.classes_.size
        if self.class_weight is None:
            return np.ones(k)
        if isinstance(self.class_weight, str) and self.class_weight == "balanced":
            per_class = _global_sum(comm, np.bincount(codes, weights=sw, minlength=k))
            return per_class.sum() / (k * per_class)
        if not isinstance(self.class_weight, dict):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict "
                             f"{{label: weight}}, got {self.class_weight!r}")
        missing = [c for c in self.classes_.tolist() if c not in self.class_weight]
        if missing and len(self.class_weight) != k - len(missing):
            raise ValueError(f"class_weight has labels that are not classes "
                             f"{self.classes_.tolist()} while leaving out {missing}")
        return np.array([float(self.class_weight.get(c, 1.0)) for c in self.classes_.tolist()])

    def _global_classes(self, comm, y):
        """Collective: the sorted union of every rank's labels."""
        parts = [u for u in comm.allgather_obj(np.unique(y)) if u.size]
        classes = np.unique(np.concatenate(parts))
        if classes.size < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in "
                             f"the data, but the data contains only one class: {classes[0]!r}")
        return classes

    def fit(self, X, y, sample_weight=None, *, coef_init=None, intercept_init=None):
        """Fit on this rank's rows (collective under MPI).  coef_init ((1, n_features) or
        (k, n_features)) and intercept_init ((1,) or (k,)) start the solver there, as
        scikit-learn's SGDClassifier.fit takes them.  Returns self."""
        self._check_penalty()
        comm = self._comm()
        X, y, sw = self._validate_fit(comm, X, y, sample_weight, y_numeric=False)
        self.classes_ = self._global_classes(comm, y)
        k = self.classes_.size
        codes = np.searchsorted(self.classes_, y) if y.size else np.empty(0, dtype=np.intp)
        sw = sw * self._class_weights(comm, codes, sw)[codes]
        l2 = self._l2(_total_weight(comm, sw))
        binary = k == 2
        target = (codes == 1) if binary else codes
        if coef_init is not None:
            coef_init = np.asarray(coef_init, dtype=np.float64)
            coef_init = coef_init.reshape(-1) if binary else coef_init.T
        if intercept_init is not None and binary:
            intercept_init = float(np.asarray(intercept_init).reshape(-1)[0])
        gd = self._solve(comm, "logistic" if binary else "softmax", X,
                         target.astype(X.dtype), sw, l2, coef_init, intercept_init)
        self.coef_ = gd.coef_[None, :] if binary else np.ascontiguousarray(gd.coef_.T)
        self.intercept_ = np.atleast_1d(np.asarray(gd.intercept_, dtype=np.float64))
        return self

    def decision_function(self, X):
        """Margins of this rank's rows: (n,) for two classes (> 0: classes_[1]), else (n, k)."""
        scores = self._decision(X)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X):
        """The most probable label of each of this rank's rows: (n,)."""
        scores = self._decision(X)
        best = (scores[:, 0] > 0).astype(np.intp) if scores.shape[1] == 1 else scores.argmax(1)
        return self.classes_[best]

    def predict_proba(self, X):
        """(n, k) class probabilities: [1 - sigmoid(z), sigmoid(z)] or softmax(z)."""
        scores = self._decision(X)
        if scores.shape[1] == 1:
            p = expit(scores[:, 0])
            return np.column_stack([1 - p, p])
        return softmax(scores, axis=1)

    def predict_log_proba(self, X):
        """(n, k) log-probabilities, computed stably (log-sigmoid, log-softmax)."""
        scores = self._decision(X)
        if scores.shape[1] == 1:
            return np.column_stack([log_expit(-scores[:, 0]), log_expit(scores[:, 0])])
        return log_softmax(scores, axis=1)

    def score(self, X, y, sample_weight=None):
        """Collective accuracy over every rank's rows: sum w [pred = y] / sum w."""
        comm = self._comm()
        X, y, sw = self._score_rows(comm, X, y, sample_weight)
        correct = sw @ (self.predict(X) == y) if X.shape[0] else 0.0
        stats = _global_sum(comm, [correct, sw.sum()])
        if stats[1] == 0:
            raise ValueError("score needs rows of positive weight on some rank")
        return float(stats[0] / stats[1])
