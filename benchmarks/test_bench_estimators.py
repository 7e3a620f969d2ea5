"""A cross-validated L2 path: cyfed's GridSearchCV beside scikit-learn's (issue 14).

One problem: L2-logistic regression, 20,000 x 20 float64 (smoke: 257 rows),
features with scales spread over [0.3, 3], labels from a noisy linear rule; the
grid is C in logspace(-4, 2, 7), 5 folds (`cyfed.model_selection.fold_ids`, seed
0), tol 1e-6, 2 threads on every side (cyfed's n_threads=2, BLAS pools limited by
threadpoolctl; 1 in smoke mode).  Cases, each the wall time of one whole search (35 fits and
scores, the refit of the best C included):

* ``cyfed-warm``: `cyfed.model_selection.GridSearchCV(cyfed.linear_model.
  LogisticRegression())`, the path fitted from the strongest penalty, each fold's
  fit starting from the previous C's model;
* ``cyfed-cold``: the same with warm_start=False;
* ``sklearn``: scikit-learn's GridSearchCV(LogisticRegression()) on the same folds
  (a PredefinedSplit), n_jobs=None.

Every case must pick the same C, with mean scores within 1e-3 of scikit-learn's
(checked in smoke mode too); extra_info holds the best C, the mean test scores and,
for cyfed, the solver iterations summed over the grid.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m pytest \\
        benchmarks/test_bench_estimators.py -q -p no:cacheprovider
"""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression as SKLogisticRegression
from sklearn.model_selection import GridSearchCV as SKGridSearchCV
from sklearn.model_selection import PredefinedSplit
from threadpoolctl import threadpool_limits

from cyfed.linear_model import LogisticRegression
from cyfed.model_selection import GridSearchCV, fold_ids

THREADS = 2
GRID = {"C": np.logspace(-4, 2, 7).tolist()}
FOLDS = 5


@pytest.fixture(scope="module")
def problem(smoke):
    n, d = (257, 20) if smoke else (20_000, 20)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)) * np.linspace(0.3, 3.0, d)
    y = (X @ rng.standard_normal(d) / 3 + rng.standard_normal(n) > 0).astype(int)
    return X, y


def cyfed_search(X, y, *, warm, n_threads):
    est = LogisticRegression(tol=1e-6, n_threads=n_threads)
    return GridSearchCV(est, GRID, cv=FOLDS, warm_start=warm).fit(X, y)


def sklearn_search(X, y, *, n_threads):
    del n_threads                             # the BLAS limit of `timed` applies
    splits = PredefinedSplit(fold_ids(len(y), FOLDS, seed=0))
    return SKGridSearchCV(SKLogisticRegression(tol=1e-6), GRID, cv=splits).fit(X, y)


@pytest.fixture(scope="module")
def threads(smoke):
    """2, or 1 in smoke mode (small BLAS calls on a busy CI machine crawl with 2)."""
    return 1 if smoke else THREADS


@pytest.fixture(scope="module")
def reference(problem, threads):
    with threadpool_limits(limits=threads):
        return sklearn_search(*problem, n_threads=threads)


@pytest.mark.parametrize("case", ["cyfed-warm", "cyfed-cold", "sklearn"])
def test_l2_path(benchmark, timed, problem, reference, threads, case):
    X, y = problem
    if case == "sklearn":
        search = timed(sklearn_search, (X, y), threads=threads)
    else:
        search = timed(lambda X, y, n_threads: cyfed_search(
            X, y, warm=case == "cyfed-warm", n_threads=n_threads), (X, y), threads=threads)
    scores = search.cv_results_["mean_test_score"]
    benchmark.extra_info.update(case=case, best_C=search.best_params_["C"],
                                mean_test_score=scores.tolist())
    if "mean_n_iter" in search.cv_results_:
        benchmark.extra_info["iterations"] = float(search.cv_results_["mean_n_iter"].sum()
                                                   * FOLDS)
    assert search.best_params_ == reference.best_params_
    np.testing.assert_allclose(scores, reference.cv_results_["mean_test_score"], atol=1e-3)
