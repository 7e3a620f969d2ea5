"""cyfed.linear_model against scikit-learn: its estimator checks, the same optimum, interop.

The tests marked `mpi` shard their rows over `cyfed.comm.get_comm()`: run plainly
they use one process; CI also runs them under `mpiexec -n 2` and `-n 4`, where
every rank must reach the single-process model.
"""
import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn import linear_model as sk
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from cyfed.comm import LocalComm, get_comm
from cyfed.linear_model import LinearRegression, LogisticRegression

COMM = get_comm()


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Small scikit-learn fits run much faster without BLAS threads."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield

# scikit-learn's checks that fail here, with the reason (docs/model_selection.md lists
# them too).  None does: the estimators pass every check; scikit-learn itself skips
# the pandas checks without pandas and the array-API check unless SCIPY_ARRAY_API=1.
EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks([LogisticRegression(), LinearRegression()],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def problem(n=240, d=5, n_classes=2, seed=0, labels=None):
    """Rows X (n, d), labels from a noisy linear rule, positive sample weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) + 0.3
    z = X @ rng.standard_normal(d) + 0.7 * rng.standard_normal(n)
    codes = np.digitize(z, np.quantile(z, np.linspace(0, 1, n_classes + 1)[1:-1]))
    y = codes if labels is None else np.asarray(labels)[codes]
    return X, y, rng.uniform(0.2, 3.0, n)


def assert_same_logistic(ours, theirs, X, rtol=1e-4):
    scale = np.max(np.abs(theirs.coef_))
    assert ours.coef_.shape == theirs.coef_.shape
    assert ours.intercept_.shape == theirs.intercept_.shape
    assert_allclose(ours.coef_, theirs.coef_, rtol=0, atol=rtol * scale)
    assert_allclose(ours.intercept_, theirs.intercept_, rtol=0, atol=rtol * max(scale, 1))
    assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-5)
    assert_allclose(ours.predict_log_proba(X), theirs.predict_log_proba(X), atol=1e-4)
    assert_allclose(ours.decision_function(X), theirs.decision_function(X),
                    atol=1e-4 * max(scale, 1))
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("kw", [dict(C=1.0), dict(C=0.01), dict(C=100.0),
                                dict(C=1.0, fit_intercept=False),
                                dict(C=0.5, class_weight="balanced"), dict(C=np.inf)],
                         ids=["C=1", "C=0.01", "C=100", "no-intercept", "balanced", "C=inf"])
def test_logistic_equals_sklearn(n_classes, kw):
    """l2 = 1 / (C W) gives scikit-learn's optimum: binary (logistic) and multinomial."""
    X, y, sw = problem(n_classes=n_classes)
    ours = LogisticRegression(tol=1e-10, max_iter=1000, **kw).fit(X, y, sample_weight=sw)
    theirs = sk.LogisticRegression(tol=1e-10, max_iter=10_000, **kw).fit(X, y, sample_weight=sw)
    assert_same_logistic(ours, theirs, X)
    assert ours.n_iter_.shape == (1,) and ours.n_iter_[0] >= 1
    assert ours.score(X, y, sample_weight=sw) == pytest.approx(
        theirs.score(X, y, sample_weight=sw))


@pytest.mark.parametrize("labels", [["no", "yes"], ["cat", "dog", "emu"], [-1.0, 2.0, 7.0],
                                    [False, True]], ids=["str2", "str3", "float", "bool"])
def test_any_label_type(labels):
    X, y, _ = problem(n_classes=len(labels), labels=labels)
    ours = LogisticRegression(tol=1e-10).fit(X, y)
    theirs = sk.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y)
    assert_same_logistic(ours, theirs, X)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.predict(X).dtype == theirs.predict(X).dtype


def test_penalty_none_and_class_weight_dict():
    X, y, sw = problem(n_classes=3, labels=["a", "b", "c"])
    for kw in (dict(penalty=None), dict(class_weight={"a": 3.0, "c": 0.5})):
        ours = LogisticRegression(tol=1e-10, max_iter=1000, **kw).fit(X, y, sample_weight=sw)
        ref = dict(C=np.inf) if "penalty" in kw else kw
        theirs = sk.LogisticRegression(tol=1e-10, max_iter=10_000, **ref).fit(
            X, y, sample_weight=sw)
        assert_same_logistic(ours, theirs, X)


def well_conditioned(n=300, d=6, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X @ rng.standard_normal(d) + 3.0 + 0.1 * rng.standard_normal(n), rng.uniform(
        0.5, 2.0, n)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_linear_regression_equals_lstsq(fit_intercept):
    X, y, sw = well_conditioned()
    ours = LinearRegression(fit_intercept=fit_intercept).fit(X, y, sample_weight=sw)
    A = np.column_stack([X, np.ones(len(X))]) if fit_intercept else X
    root = np.sqrt(sw)
    exact = np.linalg.lstsq(A * root[:, None], y * root, rcond=None)[0]
    assert_allclose(np.r_[ours.coef_, ours.intercept_][:A.shape[1]], exact, rtol=0, atol=1e-6)
    theirs = sk.LinearRegression(fit_intercept=fit_intercept).fit(X, y, sample_weight=sw)
    assert_allclose(ours.coef_, theirs.coef_, atol=1e-6)
    assert ours.intercept_ == pytest.approx(theirs.intercept_, abs=1e-6)
    assert_allclose(ours.predict(X), theirs.predict(X), atol=1e-5)
    assert ours.score(X, y, sample_weight=sw) == pytest.approx(
        theirs.score(X, y, sample_weight=sw), abs=1e-10)


def test_inside_sklearn_grid_search_and_pipeline():
    """The estimator in scikit-learn's own GridSearchCV and a StandardScaler pipeline
    picks what scikit-learn's LogisticRegression picks, with the same scores."""
    X, y, _ = problem(n=200, n_classes=3, labels=["a", "b", "c"], seed=3)
    X = X * [1, 10, 100, 0.1, 1]
    grid = {"logisticregression__C": [0.01, 0.3, 10.0]}
    runs = [GridSearchCV(make_pipeline(StandardScaler(), model(tol=1e-8, max_iter=1000)),
                         grid, cv=KFold(3)).fit(X, y)
            for model in (LogisticRegression, sk.LogisticRegression)]
    assert runs[0].best_params_ == runs[1].best_params_
    assert_allclose(runs[0].cv_results_["mean_test_score"],
                    runs[1].cv_results_["mean_test_score"], atol=1e-6)
    np.testing.assert_array_equal(runs[0].predict(X), runs[1].predict(X))


def test_clone_and_repr():
    est = LogisticRegression(C=0.3, class_weight="balanced", solver_options={"lbfgs_memory": 5})
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    assert " ".join(repr(est).split()) == ("LogisticRegression(C=0.3, class_weight='balanced', "
                                           "solver_options={'lbfgs_memory': 5})")
    X, y, _ = problem()
    assert_allclose(copy.fit(X, y).coef_, est.fit(X, y).coef_)


def test_warm_start_hook():
    """fit(coef_init=, intercept_init=) starts from a model in scikit-learn's shapes: from
    the optimum, the solver stops at once, at the same model."""
    for n_classes in (2, 3):
        X, y, _ = problem(n_classes=n_classes)
        cold = LogisticRegression(C=0.5, tol=1e-8).fit(X, y)
        warm = LogisticRegression(C=0.5, tol=1e-8).fit(X, y, coef_init=cold.coef_,
                                                       intercept_init=cold.intercept_)
        assert warm.n_iter_[0] < cold.n_iter_[0]
        assert_allclose(warm.coef_, cold.coef_, atol=1e-7)


def test_solver_pass_through():
    """solver and solver_options go to DistributedGD unchanged (it validates them)."""
    X, y, _ = problem()
    ref = LogisticRegression(tol=1e-10).fit(X, y)
    gd = LogisticRegression(solver="gd", tol=1e-6, max_iter=5000,
                            solver_options={"lr": 1.0}).fit(X, y)
    assert_allclose(gd.coef_, ref.coef_, atol=1e-4)
    with pytest.raises(ValueError, match="solver"):
        LogisticRegression(solver="no-such-solver").fit(X, y)


def test_convergence_warning():
    X, y, _ = problem()
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        LogisticRegression(max_iter=2).fit(X, y)


def test_feature_names():
    pd = pytest.importorskip("pandas")
    X, y, _ = problem(d=3)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    est = LogisticRegression().fit(frame, y)
    np.testing.assert_array_equal(est.feature_names_in_, ["a", "b", "c"])
    assert est.n_features_in_ == 3


@pytest.mark.parametrize("kw, fit_args, match", [
    (dict(penalty="l1"), {}, "penalty must be 'l2' or None"),
    (dict(C=0.0), {}, "C must be a positive number"),
    (dict(C="big"), {}, "C must be a positive number"),
    (dict(class_weight="even"), {}, "class_weight must be None, 'balanced' or a dict"),
    (dict(class_weight={"z": 2.0, 0: 1.0}), {}, "class_weight has labels that are not"),
    (dict(solver_options={"l2": 1.0}), {}, r"solver_options may not set \['l2'\]"),
    ({}, dict(sample_weight=np.zeros(240)), "sample_weight is zero for every row"),
    ({}, dict(sample_weight=-np.ones(240)), "sample_weight must hold finite values >= 0"),
    ({}, dict(sample_weight=np.ones(3)), r"sample_weight must have shape \(240,\)"),
])
def test_bad_input(kw, fit_args, match):
    X, y, _ = problem()
    with pytest.raises(ValueError, match=match):
        LogisticRegression(**kw).fit(X, y, **fit_args)


def test_bad_data():
    X, y, _ = problem()
    with pytest.raises(ValueError, match="at least 2 classes"):
        LogisticRegression().fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="Unknown label type"):
        LogisticRegression().fit(X, X[:, 0])
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LinearRegression().fit(bad, X[:, 0])
    with pytest.raises(NotFittedError):
        LogisticRegression().predict(X)
    est = LogisticRegression().fit(X, y)
    with pytest.raises(ValueError, match="X has 2 features, but LogisticRegression is "
                                         "expecting 5 features"):
        est.predict(X[:, :2])


# -- MPI: every rank passes its shard -------------------------------------------------

def my_rows(n):
    """This rank's block of np.array_split over the ranks."""
    return np.array_split(np.arange(n), COMM.size)[COMM.rank]


@pytest.mark.mpi
@pytest.mark.parametrize("n_classes", [2, 3])
def test_mpi_logistic_matches_one_process(n_classes):
    """Rows sorted by label, so most ranks see only some classes: classes_ is their
    union, class weights count over every rank, and the model is the one-process one."""
    X, y, sw = problem(n=160, n_classes=n_classes, labels=["ant", "bee", "cow"][:n_classes])
    order = np.argsort(y, kind="stable")
    X, y, sw = X[order], y[order], sw[order]
    rows = my_rows(len(X))
    kw = dict(C=0.7, tol=1e-8, max_iter=1000, class_weight="balanced")
    dist = LogisticRegression(**kw).fit(X[rows], y[rows], sample_weight=sw[rows])
    one = LogisticRegression(comm=LocalComm(), **kw).fit(X, y, sample_weight=sw)
    np.testing.assert_array_equal(dist.classes_, one.classes_)
    assert_allclose(dist.coef_, one.coef_, rtol=1e-8, atol=1e-10)
    assert_allclose(dist.intercept_, one.intercept_, rtol=1e-8, atol=1e-10)
    assert dist.score(X[rows], y[rows], sample_weight=sw[rows]) == pytest.approx(
        one.score(X, y, sample_weight=sw), abs=1e-12)


@pytest.mark.mpi
def test_mpi_linear_regression_with_an_empty_rank():
    """The last rank (of several) holds no rows; the others hold all of them."""
    X, y, sw = well_conditioned(n=120)
    rows = np.array_split(np.arange(len(X)), max(COMM.size - 1, 1))[COMM.rank] \
        if COMM.rank < max(COMM.size - 1, 1) else np.arange(0)
    dist = LinearRegression().fit(X[rows], y[rows], sample_weight=sw[rows])
    one = LinearRegression(comm=LocalComm()).fit(X, y, sample_weight=sw)
    assert_allclose(dist.coef_, one.coef_, rtol=1e-8, atol=1e-10)
    assert dist.intercept_ == pytest.approx(one.intercept_, rel=1e-8)
    assert dist.score(X[rows], y[rows]) == pytest.approx(one.score(X, y), abs=1e-12)
