"""Grid search with K-fold cross-validation for cyfed's trainers, in one process or over MPI.

`GridSearchCV(estimator, param_grid, cv=K)` scores every candidate of the grid by
K-fold cross-validation and refits the best one on all the data, like
scikit-learn's class of the same name, for

* row-sharded estimators -- `cyfed.distributed.DistributedGD` and
  `cyfed.linear_model.LinearRegression` / `LogisticRegression` (any estimator whose
  ``fit`` and ``score`` are collective): every rank passes its shard of rows, and
  a fold is a set of rows chosen by *global* row index (`fold_ids`), so the folds,
  and the scores, do not depend on the number of ranks;
* `cyfed.federated.FederatedTrainer`: a fold is a set of held-out *clients*
  (chosen by client id); the candidate trains on the other clients and is scored
  where the held-out clients live (each rank sums the metric over the held-out
  clients it hosts; one Allreduce adds the sums), so no validation row moves.

Consecutive candidates on an L2 path (differing only in ``l2`` or ``C``) are fitted
from the strongest penalty to the weakest, each fold's fit starting from the
previous candidate's model on the same fold (as scikit-learn's
LogisticRegressionCV does); this saves iterations and, since those solvers stop on a
tolerance, changes the scores only within it.  Long-form documentation:
docs/model_selection.md.  Nothing here imports scikit-learn.
"""
import csv
import inspect
import itertools
import numbers
import time
import warnings
from collections.abc import Mapping

import numpy as np

from cyfed import _params
from cyfed.comm import get_comm, on_every_rank
from cyfed.federated import FederatedTrainer
from cyfed.federated.clients import hosted_clients
from cyfed.models import r2_score

# The penalty parameters an L2 path runs along, and each one's strength (larger: stronger).
_STRENGTH = {"l2": lambda value: float(value), "C": lambda value: 1.0 / float(value)}


class FitFailedWarning(RuntimeWarning):
    """A candidate's fit raised on a fold; its score there is `error_score`."""


# -- the grid -------------------------------------------------------------------------

def _grid_dict(grid, where):
    """Validated (name, values) pairs of one dict of the grid, names sorted."""
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"{where} must be a non-empty dict {{parameter name: list of values}}, "
                         f"got {grid!r}")
    bad = [name for name in grid if not isinstance(name, str)]
    if bad:
        raise TypeError(f"{where}: parameter names must be strings, got {bad[0]!r}")
    items = []
    for name in sorted(grid):
        values = grid[name]
        if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
            raise TypeError(f"{where}[{name!r}] must be a list (or array) of values, "
                            f"got {values!r}")
        if len(values) == 0:
            raise ValueError(f"{where}[{name!r}] is empty: give at least one value")
        items.append((name, list(values)))
    return items


def param_grid(grid):
    """The candidates of a grid: a dict {name: values} or a list of such dicts.

    Each dict gives the product of its values (names sorted, the last varying
    fastest), dicts in order -- scikit-learn's ParameterGrid.  Returns a list of
    dicts; ValueError for an empty grid or an empty list of values.
    """
    grids = [grid] if isinstance(grid, Mapping) else grid
    if not isinstance(grids, (list, tuple)) or not grids:
        raise ValueError(f"param_grid must be a dict or a non-empty list of dicts, got {grid!r}")
    candidates = []
    for i, one in enumerate(grids):
        items = _grid_dict(one, "param_grid" if grids is not grid else f"param_grid[{i}]")
        names = [name for name, _ in items]
        candidates += [dict(zip(names, values))
                       for values in itertools.product(*(v for _, v in items))]
    return candidates


# -- folds ----------------------------------------------------------------------------

def fold_ids(n, n_splits, *, shuffle=True, seed=0):
    """(n,) fold of each global index 0..n-1, as scikit-learn's KFold.

    The folds are contiguous blocks of ``order`` of sizes n // K + 1 (the first
    n % K folds) and n // K, where ``order`` is a permutation of 0..n-1 drawn from
    ``numpy.random.default_rng(seed)`` (shuffle=True) or 0..n-1 itself: index
    order[j] is in the block that holds position j.
    """
    if not _is_int(n_splits) or n_splits < 2:
        raise ValueError(f"cv must be an integer >= 2 (the number of folds), got {n_splits!r}")
    if n_splits > n:
        raise ValueError(f"cv={n_splits} folds need at least {n_splits} units to split; "
                         f"there are {n}")
    sizes = np.full(n_splits, n // n_splits)
    sizes[:n % n_splits] += 1
    blocks = np.repeat(np.arange(n_splits), sizes)
    if not shuffle:
        return blocks
    folds = np.empty(n, dtype=blocks.dtype)
    folds[np.random.default_rng(seed).permutation(n)] = blocks
    return folds


def shard_folds(counts, rank, n_splits, *, shuffle=True, seed=0):
    """The folds of rank `rank`'s rows, given every rank's row count (`counts`, in rank
    order): rank r holds the global rows offset_r .. offset_r + counts[r] - 1, so
    these are fold_ids(sum(counts), ...)[offset_r : offset_r + counts[r]] whatever
    the number of ranks."""
    offset = int(sum(counts[:rank]))
    return fold_ids(int(sum(counts)), n_splits, shuffle=shuffle, seed=seed)[
        offset:offset + counts[rank]]


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _n_rows(X):
    return X.shape[0] if hasattr(X, "shape") else len(X)


def _take(a, mask):
    """The rows of `a` (array, sparse matrix, DataFrame, list) where mask holds."""
    if a is None:
        return None
    if hasattr(a, "iloc"):
        return a.iloc[mask]
    if not hasattr(a, "shape"):
        a = np.asarray(a)
    return a[mask]


def _pooled_score(comm, targets, y, pred):
    """Collective: accuracy sum [pred = y] / n, or R^2 = 1 - SSE / SST (two passes:
    the global mean first), over every rank's (y, pred)."""
    y = np.asarray(y, dtype=np.float64)
    if targets != "real":
        stats = comm.allreduce_sum(np.array([np.sum(pred == y), y.size], dtype=np.float64))
        return float(stats[0] / stats[1])
    first = comm.allreduce_sum(np.array([y.size, y.sum()], dtype=np.float64))
    mean = first[1] / first[0]
    second = comm.allreduce_sum(np.array([np.sum((y - pred) ** 2), np.sum((y - mean) ** 2)]))
    return r2_score(second[0], second[1])


class _RowSplits:
    """K folds of the rows by global row index; each rank holds its shard (X, y, w)."""

    def __init__(self, comm, X, y, sample_weight, n_splits, shuffle, seed):
        self.X, self.y, self.sample_weight = X, y, sample_weight
        counts = comm.allgather_obj(on_every_rank(comm, lambda: _n_rows(X)))
        if n_splits > sum(counts):
            raise ValueError(f"cv={n_splits} folds need at least {n_splits} rows; all ranks "
                             f"together hold {sum(counts)}")
        self.folds = shard_folds(counts, comm.rank, n_splits, shuffle=shuffle, seed=seed)

    def fit(self, estimator, fold, init):
        """Fit on every rank's rows outside `fold` (all rows for fold None); collective."""
        rows = self.folds != fold
        weight = {} if self.sample_weight is None else {
            "sample_weight": _take(self.sample_weight, rows)}
        estimator.fit(_take(self.X, rows), _take(self.y, rows), **weight, **init)

    def score(self, estimator, fold, scoring):
        """The estimator's collective score on every rank's rows of `fold`."""
        rows = self.folds == fold
        X, y = _take(self.X, rows), _take(self.y, rows)
        return estimator.score(X, y) if scoring is None else scoring(estimator, X, y)


class _ClientSplits:
    """K folds of the clients by client id; each rank holds the clients it hosts."""

    def __init__(self, comm, clients, n_splits, shuffle, seed):
        self.comm, self.clients = comm, clients
        self.hosted, n = on_every_rank(comm, lambda: hosted_clients(clients, comm))
        if n_splits > n:
            raise ValueError(f"cv={n_splits} folds need at least {n_splits} clients; "
                             f"there are {n}")
        self.folds = fold_ids(n, n_splits, shuffle=shuffle, seed=seed)

    def fit(self, trainer, fold, init):
        """Train on the clients outside `fold`, renumbered 0..N'-1 in id order (each rank
        passes those it hosts); all clients for fold None.  Collective."""
        if fold is None:
            trainer.fit(self.clients)
            return
        new_id = {int(c): j for j, c in enumerate(np.flatnonzero(self.folds != fold))}
        trainer.fit({new_id[c]: data for c, data in self.hosted.items() if c in new_id})

    def _held_out_rows(self, trainer, fold):
        """This rank's held-out clients' rows, concatenated in id order ((0, d) if none)."""
        held = [c for c in sorted(self.hosted) if self.folds[c] == fold]
        if not held:
            return np.empty((0, trainer.model_.d)), np.empty(0)
        return (np.concatenate([np.asarray(self.hosted[c][0]) for c in held]),
                np.concatenate([np.asarray(self.hosted[c][1]) for c in held]))

    def score(self, trainer, fold, scoring):
        """Federated evaluation on the held-out clients, where they live: accuracy or R^2
        pooled over their rows (the default), or scoring(trainer, X, y) on this rank's."""
        X, y = self._held_out_rows(trainer, fold)
        if scoring is not None:
            return scoring(trainer, X, y)
        pred = trainer.predict(X) if len(y) else np.empty(0)
        return _pooled_score(self.comm, trainer.model_.targets, y, pred)


# -- the search -----------------------------------------------------------------------

def _warm_init(previous):
    """fit() keywords starting from `previous`'s model; {} without one, or when it was
    trained by plain gradient descent (whose result depends on its start: a fixed
    number of steps, not a tolerance)."""
    if previous is None or getattr(previous, "solver_", getattr(previous, "solver", "gd")) == "gd":
        return {}
    if hasattr(previous, "coef_"):
        return {"coef_init": previous.coef_, "intercept_init": previous.intercept_}
    return {"coef_init": previous.params_}


def _n_iter(estimator):
    """The fit's iterations (summed over an n_iter_ array), NaN when not reported."""
    n_iter = getattr(estimator, "n_iter_", None)
    return np.nan if n_iter is None else float(np.sum(n_iter))


def _cell(value):
    """A table cell: numbers, strings and None as they are; a strategy (an object with
    hyper_parameters()) as Name(key=value, ...); other objects by repr."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "hyper_parameters"):
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(value.hyper_parameters().items()))
        return f"{type(value).__name__}({args})"
    return repr(value)


def cv_results_rows(cv_results):
    """One dict per candidate, in candidate order: its rank, mean and std test score,
    parameters (objects by repr), split scores and times -- the rows of the grid table."""
    names = [k for k in cv_results if k.startswith("param_")]
    splits = sorted((k for k in cv_results if k.startswith("split")),
                    key=lambda k: int(k[5:k.index("_")]))
    rest = [k for k in ("mean_n_iter", "mean_fit_time", "std_fit_time", "mean_score_time",
                        "std_score_time") if k in cv_results]
    rows = []
    for i in range(len(cv_results["params"])):
        row = {k: _cell(cv_results[k][i]) for k in
               ("rank_test_score", "mean_test_score", "std_test_score")}
        row.update((k, None if np.ma.is_masked(cv_results[k][i]) else _cell(cv_results[k][i]))
                   for k in names)
        row.update((k, float(cv_results[k][i])) for k in splits + rest)
        rows.append(row)
    return rows


def write_cv_results(cv_results, file):
    """Write `cv_results_rows(cv_results)` as CSV (a header, one row a candidate) to a
    path or an open text file."""
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "w", newline="") as fh:
            write_cv_results(cv_results, fh)
        return
    rows = cv_results_rows(cv_results)
    writer = csv.DictWriter(file, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


class GridSearchCV(_params.ParamsMixin):
    """Exhaustive search over a parameter grid by K-fold cross-validation (SPMD).

    Every rank calls ``fit`` alike: ``fit(X_local, y_local, sample_weight=None)``
    with its shard of rows for DistributedGD and the linear_model estimators,
    ``fit(clients)`` for a FederatedTrainer (its accepted forms: every client's
    (X_k, y_k), or this rank's {id: (X_k, y_k)}).  For every candidate and fold the
    estimator is cloned with the candidate's parameters, fitted on the other folds
    (collectively) and scored on the fold; results and the best estimator are the
    same on every rank and for any number of ranks.

    Parameters
    ----------
    estimator : a cyfed trainer or estimator following scikit-learn's parameter
        contract (every ``__init__`` argument stored under its name), with collective
        ``fit`` and ``score``
    param_grid : dict {name: list of values} or a list of such dicts; nested
        parameters as ``name__key``
    cv : int >= 2, the number of folds K (of rows, or of clients)
    scoring : None -- the estimator's ``score`` (accuracy or R^2 over every rank's
        rows; for a FederatedTrainer the pooled accuracy / R^2 over the held-out
        clients' rows) -- or a collective callable ``scoring(estimator, X_val, y_val)
        -> float`` (higher is better), X_val / y_val this rank's validation rows
    refit : bool, refit the best candidate on all the data (`best_estimator_`)
    shuffle : bool, folds from a permutation seeded by `seed` (else contiguous blocks)
    seed : int, seeds the permutation (the candidates' own seeds are untouched)
    warm_start : bool, fit an L2 path (candidates differing only in ``l2`` or ``C``)
        from the strongest penalty to the weakest, each fit starting from the previous
        one's model on the same fold -- for estimators whose fit takes ``coef_init``,
        after a fit whose solver stops on a tolerance (any but plain "gd", which runs
        a number of steps from its start); every other fit starts cold
    error_score : "raise" or a float: the score of a fit that raised (NaN by
        default, with a FitFailedWarning)
    comm : Communicator or None -- None: the estimator's ``comm``, else
        `cyfed.comm.get_comm()`; given, it is also the clones' ``comm``

    Attributes
    ----------
    cv_results_ : dict of arrays, one entry a candidate: params, param_<name>
        (masked where a candidate lacks it), split<i>_test_score, mean_test_score,
        std_test_score, rank_test_score (1 best; failed fits last), mean/std_fit_time,
        mean/std_score_time (seconds, rank 0's), mean_n_iter (when the estimator
        reports n_iter_)
    best_index_, best_params_, best_score_ : the candidate of rank 1 (the first such)
    best_estimator_ : that candidate refitted on all the data (refit=True)
    refit_time_ : seconds of that refit;  n_splits_ : K
    """

    def __init__(self, estimator, param_grid, *, cv=5, scoring=None, refit=True, shuffle=True,
                 seed=0, warm_start=True, error_score=np.nan, comm=None):
        self.estimator, self.param_grid, self.cv, self.scoring = estimator, param_grid, cv, scoring
        self.refit, self.shuffle, self.seed = refit, shuffle, seed
        self.warm_start, self.error_score, self.comm = warm_start, error_score, comm

    # -- checks ---------------------------------------------------------------------

    def _candidates(self):
        """The validated candidates: names the estimator takes, a valid search set-up."""
        candidates = param_grid(self.param_grid)
        valid = set(_params.param_names(type(self.estimator)))
        for name in {key.partition("__")[0] for c in candidates for key in c}:
            if name not in valid:
                raise _params.unknown_param_error(self.estimator, name)
        if not _is_int(self.cv) or self.cv < 2:
            raise ValueError(f"cv must be an integer >= 2 (the number of folds), got {self.cv!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0 (every rank draws the same folds "
                             f"from it), got {self.seed!r}")
        if self.scoring is not None and not callable(self.scoring):
            raise TypeError("scoring must be None (the estimator's score) or a callable "
                            f"scoring(estimator, X_val, y_val) -> float, got {self.scoring!r}")
        if not (isinstance(self.error_score, str) and self.error_score == "raise"
                or isinstance(self.error_score, numbers.Real)):
            raise ValueError(f"error_score must be 'raise' or a number, got {self.error_score!r}")
        return candidates

    def _communicator(self):
        if self.comm is not None:
            return self.comm
        comm = getattr(self.estimator, "comm", None)
        return get_comm() if comm is None else comm

    def _clone(self, params):
        """A fresh estimator with `params` (and the search's comm, when one is given)."""
        if self.comm is not None and "comm" in _params.param_names(type(self.estimator)):
            params = {"comm": self.comm, **params}
        return _params.clone(self.estimator, **params)

    # -- warm starts ----------------------------------------------------------------

    def _chains(self, candidates):
        """Lists of candidate indices, each fitted in order with warm starts along it:
        an L2 path (the same other parameters) from strongest to weakest penalty; every
        other candidate alone."""
        chains, paths = [], {}
        warm = self.warm_start and "coef_init" in inspect.signature(self.estimator.fit).parameters
        for i, c in enumerate(candidates):
            name = next((n for n in _STRENGTH if n in c), None)
            if not warm or name is None or _strength(name, c[name]) is None:
                chains.append([i])
                continue
            key = (name, tuple((k, _key(v)) for k, v in sorted(c.items()) if k != name))
            if key not in paths:
                paths[key] = []
                chains.append(paths[key])
            paths[key].append(i)
        for chain in chains:
            if len(chain) > 1:
                name = next(n for n in _STRENGTH if n in candidates[chain[0]])
                chain.sort(key=lambda i: -_strength(name, candidates[i][name]))
        return chains

    # -- fitting --------------------------------------------------------------------

    def fit(self, X, y=None, sample_weight=None):
        """Search the grid on every rank's data (collective); returns self.

        X, y, sample_weight : this rank's rows (DistributedGD, linear_model estimators);
        for a FederatedTrainer X is the clients and y, sample_weight are None.
        """
        candidates = self._candidates()
        comm = self._communicator()
        if isinstance(self.estimator, FederatedTrainer):
            if y is not None or sample_weight is not None:
                raise TypeError("for a FederatedTrainer, fit(clients) takes the clients as X; "
                                "y and sample_weight must be None")
            splits = _ClientSplits(comm, X, self.cv, self.shuffle, self.seed)
        else:
            splits = _RowSplits(comm, X, y, sample_weight, self.cv, self.shuffle, self.seed)
        scores, times, n_iter = self._search(splits, candidates)
        self._store(comm, candidates, scores, times, n_iter)
        if self.refit:
            start = time.perf_counter()
            self.best_estimator_ = self._clone(self.best_params_)
            splits.fit(self.best_estimator_, None, {})
            self.refit_time_ = time.perf_counter() - start
        return self

    def _search(self, splits, candidates):
        """Every candidate on every fold: scores, (fit, score) seconds and iterations,
        each (n_candidates, K)."""
        shape = (len(candidates), self.cv)
        scores, n_iter = np.full(shape, np.nan), np.full(shape, np.nan)
        times, failures = np.zeros((2, *shape)), 0
        for chain in self._chains(candidates):
            for fold in range(self.cv):
                previous = None
                for i in chain:
                    estimator = self._clone(candidates[i])
                    start = time.perf_counter()
                    failed = self._fit(splits, estimator, fold, previous, candidates[i])
                    times[0, i, fold] = time.perf_counter() - start
                    if failed:
                        scores[i, fold], previous, failures = self.error_score, None, failures + 1
                        continue
                    scores[i, fold] = splits.score(estimator, fold, self.scoring)
                    times[1, i, fold] = time.perf_counter() - start - times[0, i, fold]
                    n_iter[i, fold], previous = _n_iter(estimator), estimator
        if failures == scores.size:
            raise ValueError(f"all {scores.size} fits failed ({len(candidates)} candidates x "
                             f"{self.cv} folds); see the FitFailedWarnings for why")
        return scores, times, n_iter

    def _fit(self, splits, estimator, fold, previous, candidate):
        """Fit on the fold's training data, from `previous`'s model when warm.  Whether
        the fit failed (collective: cyfed's trainers raise on every rank alike); with
        error_score="raise" the error propagates."""
        try:
            splits.fit(estimator, fold, _warm_init(previous))
        except Exception as exc:
            if isinstance(self.error_score, str):
                raise
            warnings.warn(f"fit of {candidate} on fold {fold} failed ({type(exc).__name__}: "
                          f"{exc}); its score is error_score={self.error_score}",
                          FitFailedWarning, stacklevel=4)
            return True
        return False

    def _store(self, comm, candidates, scores, times, n_iter):
        """cv_results_ and the best candidate (rank 0's timings on every rank)."""
        times = comm.bcast_obj(times if comm.rank == 0 else None)
        mean = scores.mean(axis=1)
        results = {"params": candidates}
        for name in sorted({k for c in candidates for k in c}):
            column = np.ma.MaskedArray(np.empty(len(candidates), dtype=object), mask=True)
            for i, c in enumerate(candidates):
                if name in c:
                    column[i] = c[name]
            results[f"param_{name}"] = column
        for fold in range(self.cv):
            results[f"split{fold}_test_score"] = scores[:, fold]
        results.update(mean_test_score=mean, std_test_score=scores.std(axis=1),
                       rank_test_score=_rank(mean))
        if not np.all(np.isnan(n_iter)):
            results["mean_n_iter"] = n_iter.mean(axis=1)
        for what, t in zip(("fit", "score"), times):
            results[f"mean_{what}_time"], results[f"std_{what}_time"] = t.mean(1), t.std(1)
        self.cv_results_, self.n_splits_ = results, self.cv
        self.best_index_ = int(np.argmin(results["rank_test_score"]))
        self.best_params_ = candidates[self.best_index_]
        self.best_score_ = float(mean[self.best_index_])

    # -- results --------------------------------------------------------------------

    def to_table(self):
        """cv_results_ as rows (`cv_results_rows`): one dict per candidate."""
        return cv_results_rows(self.cv_results_)

    def predict(self, X):
        """best_estimator_.predict(X) for this rank's rows."""
        return self.best_estimator_.predict(X)

    def score(self, X, y):
        """best_estimator_'s collective score on every rank's rows."""
        return self.best_estimator_.score(X, y)


def _strength(name, value):
    """The strength of penalty `name` at `value` (larger: stronger), or None when value
    is not a number the path can sort (l2 >= 0, C > 0)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0 \
            or (name == "C" and value == 0):
        return None
    return _STRENGTH[name](value)


def _key(value):
    """A hashable stand-in for a parameter value (the object's id when unhashable)."""
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return (type(value).__name__, value)


def _rank(mean):
    """1 + the number of candidates with a strictly higher mean (NaN ranks last)."""
    key = np.where(np.isnan(mean), -np.inf, mean)
    return 1 + (key[None, :] > key[:, None]).sum(axis=1).astype(np.int32)
