"""cyfed.model_selection (GridSearchCV, folds) and cyfed._params (the parameter contract).

Tests marked `mpi` run under `cyfed.comm.get_comm()`: plainly in one process, in CI
also under `mpiexec -n 2` and `-n 4`, where every rank must get the one-process
cv_results_.
"""
import csv
import io
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import linear_model as sk
from sklearn.base import clone as sk_clone
from sklearn.model_selection import GridSearchCV as SKGridSearchCV
from sklearn.model_selection import KFold, ParameterGrid, PredefinedSplit
from threadpoolctl import threadpool_limits

from cyfed import _params
from cyfed.comm import LocalComm, get_comm
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer
from cyfed.linear_model import LogisticRegression
from cyfed.model_selection import (FitFailedWarning, GridSearchCV, fold_ids, param_grid,
                                   shard_folds, write_cv_results)
from cyfed.strategies import FedAvg, FedProx

COMM = get_comm()


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Small scikit-learn fits run much faster without BLAS threads."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def classification(n=240, d=4, n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    z = X @ rng.standard_normal(d) + 0.8 * rng.standard_normal(n)
    return X, np.digitize(z, np.quantile(z, np.linspace(0, 1, n_classes + 1)[1:-1]))


def regression(n=150, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X @ rng.standard_normal(d) + 1.0 + 0.3 * rng.standard_normal(n)


# -- the parameter contract (cyfed._params) --------------------------------------------

class Toy(_params.ParamsMixin):
    def __init__(self, inner=None, *, rate=0.1, comm=None, tags=("a",)):
        self.inner, self.rate, self.comm, self.tags = inner, rate, comm, tags


def test_params_mixin():
    toy = Toy(Toy(rate=2.0), rate=0.5)
    assert toy.get_params(deep=False) == {"inner": toy.inner, "rate": 0.5, "comm": None,
                                          "tags": ("a",)}
    assert toy.get_params()["inner__rate"] == 2.0
    assert toy.set_params(inner__rate=3.0, tags=("b",)) is toy
    assert toy.inner.rate == 3.0 and toy.tags == ("b",)
    assert repr(toy) == "Toy(inner=Toy(rate=3.0), rate=0.5, tags=('b',))"
    with pytest.raises(ValueError, match=r"invalid parameter 'rat' for Toy \(did you mean "
                                         r"'rate'\?\); valid parameters: comm, inner"):
        toy.set_params(rat=1.0)
    with pytest.raises(ValueError, match="parameter 'rate' of Toy is a float, which has no"):
        toy.set_params(rate__x=1)


def test_clone_copies_parameters_and_shares_the_communicator():
    comm = LocalComm()
    toy = Toy(Toy(), rate=0.5, comm=comm, tags=["x"])
    for copy in (_params.clone(toy, rate=0.7), sk_clone(toy).set_params(rate=0.7)):
        assert type(copy) is Toy and copy.rate == 0.7 and copy.tags == ["x"]
        assert copy.tags is not toy.tags and copy.inner is not toy.inner
    assert _params.clone(toy).comm is comm


def test_clone_any_object_keeping_the_contract():
    """_params works on the trainers even before they inherit ParamsMixin."""
    gd = DistributedGD("logistic", lr=0.3, l2=1e-3)
    copy = _params.clone(gd, lr=0.5)
    assert copy.loss == "logistic" and copy.lr == 0.5 and copy.l2 == 1e-3
    assert "strategy" in _params.get_params(FederatedTrainer(FedAvg()))


def test_trainers_are_sklearn_cloneable():
    gd = DistributedGD("logistic", lr=0.3, solver="lbfgs")
    copy = sk_clone(gd)
    assert copy.get_params() == gd.get_params() and copy is not gd
    assert repr(gd) == "DistributedGD(loss='logistic', lr=0.3, solver='lbfgs')"
    trainer = FederatedTrainer(FedProx(mu=0.1), "logistic", rounds=3)
    assert sk_clone(trainer).get_params(deep=False).keys() == trainer.get_params(
        deep=False).keys()
    assert repr(trainer).startswith("FederatedTrainer(loss='logistic', rounds=3, strategy=")


def test_sklearn_grid_search_and_pipeline_drive_distributed_gd():
    """scikit-learn's own GridSearchCV over a Pipeline(StandardScaler, DistributedGD) picks
    the same l2 as cyfed's search on pre-scaled rows, with the same fold scores."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(4)
    X = rng.standard_normal((240, 4)) * [1, 10, 100, 0.1]
    y = (X @ [1.0, 0.1, 0.01, 10.0] + rng.logistic(size=240) > 0).astype(float)
    grid = {"l2": [1e-3, 1e-1, 1.0]}
    pipe = make_pipeline(StandardScaler(), DistributedGD("logistic", solver="newton-cholesky",
                                                        comm=LocalComm()))
    theirs = SKGridSearchCV(pipe, {f"distributedgd__{k}": v for k, v in grid.items()},
                            cv=KFold(3), error_score="raise").fit(X, y)
    scores = []
    for train, test in KFold(3).split(X):
        scaler = StandardScaler().fit(X[train])
        scores.append([DistributedGD("logistic", solver="newton-cholesky", l2=l2,
                                     comm=LocalComm()).fit(scaler.transform(X[train]), y[train])
                       .score(scaler.transform(X[test]), y[test]) for l2 in grid["l2"]])
    np.testing.assert_allclose(theirs.cv_results_["mean_test_score"], np.mean(scores, axis=0))
    assert isinstance(theirs.best_estimator_[-1], DistributedGD)


# -- the grid and the folds -------------------------------------------------------------

@pytest.mark.parametrize("grid", [{"b": [1, 2], "a": ["x", "y", "z"]},
                                  [{"l2": [0.1, 1.0]}, {"lr": np.array([0.5]), "l2": (3,)}]])
def test_param_grid_is_sklearns(grid):
    assert param_grid(grid) == list(ParameterGrid(grid))


def test_fold_ids_are_kfold():
    n = 23
    folds = fold_ids(n, 5, shuffle=False)
    for f, (_, test) in enumerate(KFold(5).split(np.zeros(n))):
        assert_array_equal(np.flatnonzero(folds == f), test)
    with pytest.raises(ValueError, match="cv=24 folds need at least 24 units to split"):
        fold_ids(n, 24)
    shuffled = fold_ids(n, 5, seed=7)
    assert np.bincount(shuffled).tolist() == [5, 5, 5, 4, 4]
    assert_array_equal(shuffled, fold_ids(n, 5, seed=7))
    assert not np.array_equal(shuffled, fold_ids(n, 5, seed=8))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("counts", [[31], [12, 19], [10, 0, 21], [1, 15, 15]])
def test_folds_do_not_depend_on_the_ranks(counts, shuffle):
    """The ranks' fold ids, concatenated in rank order, are the one-process ones."""
    pieces = [shard_folds(counts, r, 4, shuffle=shuffle, seed=3) for r in range(len(counts))]
    assert [len(p) for p in pieces] == counts
    assert_array_equal(np.concatenate(pieces), fold_ids(31, 4, shuffle=shuffle, seed=3))


# -- row folds: against scikit-learn ----------------------------------------------------

GRID_C = {"C": [0.001, 0.03, 1.0, 30.0]}


@pytest.mark.parametrize("shuffle", [False, True])
def test_logistic_grid_equals_sklearn(shuffle):
    """The same folds (KFold, or fold_ids as a PredefinedSplit) give scikit-learn's scores."""
    X, y = classification(n_classes=3)
    ours = GridSearchCV(LogisticRegression(tol=1e-10), GRID_C, cv=4, shuffle=shuffle,
                        seed=5).fit(X, y)
    splits = PredefinedSplit(fold_ids(len(X), 4, seed=5)) if shuffle else KFold(4)
    theirs = SKGridSearchCV(sk.LogisticRegression(tol=1e-8, max_iter=1000), GRID_C,
                            cv=splits).fit(X, y)
    assert ours.best_params_ == theirs.best_params_
    assert ours.n_splits_ == 4
    for key in ["mean_test_score", "std_test_score"] + [f"split{i}_test_score"
                                                       for i in range(4)]:
        assert_allclose(ours.cv_results_[key], theirs.cv_results_[key], atol=1e-6)
    assert_array_equal(ours.cv_results_["rank_test_score"], theirs.cv_results_["rank_test_score"])
    assert_array_equal(ours.cv_results_["param_C"], theirs.cv_results_["param_C"])
    assert ours.best_estimator_.C == theirs.best_params_["C"]
    assert_allclose(ours.best_estimator_.coef_, theirs.best_estimator_.coef_, atol=1e-5)
    assert ours.score(X, y) == pytest.approx(theirs.score(X, y))


class Recorder(LogisticRegression):
    """Records (C, started warm) of each fit."""
    log = []

    def fit(self, X, y, sample_weight=None, *, coef_init=None, intercept_init=None):
        Recorder.log.append((self.C, coef_init is not None))
        return super().fit(X, y, sample_weight, coef_init=coef_init,
                           intercept_init=intercept_init)


def test_warm_start_walks_the_path_from_the_strongest_penalty():
    X, y = classification()
    Recorder.log = []
    GridSearchCV(Recorder(), {"C": [1.0, 0.01, 100.0], "fit_intercept": [True, False]},
                 cv=2, refit=False).fit(X, y)
    path = [(0.01, False), (1.0, True), (100.0, True)]
    assert Recorder.log == path * 4          # two folds of each fit_intercept's path


def test_warm_start_gives_the_cold_scores_in_fewer_iterations():
    X, y = classification(n=300, n_classes=3, seed=2)
    grid = {"C": np.logspace(-3, 2, 6).tolist()}
    runs = [GridSearchCV(LogisticRegression(tol=1e-8), grid, cv=3, warm_start=warm).fit(X, y)
            for warm in (True, False)]
    warm, cold = (r.cv_results_ for r in runs)
    assert_allclose(warm["mean_test_score"], cold["mean_test_score"], atol=1e-12)
    assert warm["mean_n_iter"].sum() < cold["mean_n_iter"].sum()
    assert runs[0].best_params_ == runs[1].best_params_


def test_plain_gd_is_never_warm_started():
    """A fixed number of gd steps depends on the start: the l2 path runs cold."""
    X, y = regression()
    runs = [GridSearchCV(DistributedGD(lr=0.05, max_iter=20), {"l2": [1e-3, 1e-1]},
                         cv=2, warm_start=warm).fit(X, y) for warm in (True, False)]
    assert_array_equal(runs[0].cv_results_["mean_test_score"],
                       runs[1].cv_results_["mean_test_score"])
    assert_array_equal(runs[0].cv_results_["mean_n_iter"], [20, 20])


def test_distributed_gd_l2_path_and_lr_grid():
    X, y = classification()
    path = GridSearchCV(DistributedGD("logistic", solver="lbfgs", gtol=1e-10),
                        {"l2": [1.0, 1e-1, 1e-2, 1e-3]}, cv=3).fit(X, y)
    assert path.best_params_["l2"] <= 1e-1            # l2 = 1 underfits
    assert path.cv_results_["mean_n_iter"].min() > 0
    Xr, yr = regression()
    with pytest.warns(FitFailedWarning, match=r"fit of \{'lr': 100000000.0\} on fold \d "
                                              r"failed \(DivergenceError"):
        search = GridSearchCV(DistributedGD(max_iter=40),
                              {"lr": [1e-3, 1e-2, 0.1, 1e8]}, cv=3).fit(Xr, yr)
    scores = search.cv_results_["mean_test_score"]
    best = GridSearchCV(DistributedGD(solver="lbfgs"), {"l2": [0.0]}, cv=3).fit(Xr, yr)
    assert search.best_params_ == {"lr": 0.1} and scores[1] < scores[2]
    assert scores[2] == pytest.approx(best.best_score_, abs=1e-3)    # converged: least squares
    assert np.isnan(scores[3]) and search.cv_results_["rank_test_score"].tolist() == [3, 2, 1, 4]
    assert search.best_estimator_.lr == 0.1 and search.best_estimator_.n_iter_ == 40
    with pytest.raises(Exception, match="diverged"):
        GridSearchCV(DistributedGD(max_iter=40), {"lr": [1e8]}, cv=2,
                     error_score="raise").fit(Xr, yr)


def test_scoring_callable_and_table(tmp_path):
    X, y = regression()

    def neg_mse(est, X_val, y_val):           # one process: no sums over ranks needed
        return -float(np.mean((est.predict(X_val) - y_val) ** 2))

    search = GridSearchCV(DistributedGD(max_iter=50), {"lr": [0.01, 0.1]}, cv=3,
                          scoring=neg_mse).fit(X, y)
    assert search.best_params_ == {"lr": 0.1} and search.best_score_ < 0
    rows = search.to_table()
    assert [r["param_lr"] for r in rows] == [0.01, 0.1] and rows[1]["rank_test_score"] == 1
    write_cv_results(search.cv_results_, tmp_path / "grid.csv")
    with open(tmp_path / "grid.csv", newline="") as fh:
        read = list(csv.DictReader(fh))
    assert float(read[1]["mean_test_score"]) == pytest.approx(search.best_score_)
    assert list(read[0])[:4] == ["rank_test_score", "mean_test_score", "std_test_score",
                                 "param_lr"]
    buf = io.StringIO()
    write_cv_results(search.cv_results_, buf)
    assert buf.getvalue().startswith("rank_test_score,")


# -- client folds -----------------------------------------------------------------------

def federated_clients(n_clients=8, seed=0):
    """Clients of 30 rows each whose first feature is the client id (a marker)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(3)
    clients = []
    for k in range(n_clients):
        X = rng.standard_normal((30, 3))
        y = (X @ w + 0.3 * rng.standard_normal(30) > 0).astype(float)
        clients.append((np.column_stack([np.full(30, float(k)), X]), y))
    return clients


class SpyTrainer(FederatedTrainer):
    """Records which clients (by their marker) each fit trained on, under which ids."""
    fits = []

    def fit(self, clients, test=None, callback=None):
        items = clients.items() if isinstance(clients, dict) else enumerate(clients)
        SpyTrainer.fits.append({i: int(X[0, 0]) for i, (X, _) in items})
        return super().fit(clients, test, callback)


def test_client_folds_hold_out_whole_clients():
    clients = federated_clients()
    SpyTrainer.fits = []
    trainer = SpyTrainer(FedAvg(), "logistic", rounds=3, batch_size=10, comm=LocalComm())
    search = GridSearchCV(trainer, {"lr": [0.05, 0.5]}, cv=4, seed=1).fit(clients)
    folds = fold_ids(len(clients), 4, seed=1)
    for i, lr in enumerate([0.05, 0.5]):
        for f in range(4):
            trained = SpyTrainer.fits[i * 4 + f]
            kept = np.flatnonzero(folds != f).tolist()
            assert trained == dict(enumerate(kept))          # renumbered 0..N'-1, in id order
            # the split score: a trainer on the kept clients, scored on the held-out rows
            model = FederatedTrainer(FedAvg(), "logistic", rounds=3, batch_size=10, lr=lr,
                                     comm=LocalComm()).fit([clients[c] for c in kept])
            held = np.flatnonzero(folds == f)
            X_val = np.concatenate([clients[c][0] for c in held])
            y_val = np.concatenate([clients[c][1] for c in held])
            assert search.cv_results_[f"split{f}_test_score"][i] == pytest.approx(
                np.mean(model.predict(X_val) == y_val), abs=1e-15)
    assert SpyTrainer.fits[-1] == {c: c for c in range(8)}     # the refit: every client
    assert search.best_estimator_.lr == search.best_params_["lr"]


def test_federated_grid_of_strategies_and_its_table():
    clients = federated_clients(6)
    search = GridSearchCV(FederatedTrainer(FedAvg(), "logistic", rounds=2, batch_size=10),
                          {"strategy": [FedAvg(), FedProx(mu=0.1)], "l2": [0.0, 0.01]},
                          cv=3).fit(clients)
    assert [r["param_strategy"] for r in search.to_table()] == ["FedAvg()", "FedProx(mu=0.1)"] * 2
    assert "mean_n_iter" not in search.cv_results_
    assert np.all(search.cv_results_["mean_test_score"] > 0.6)


# -- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("grid, kw, error, match", [
    ({}, {}, ValueError, "param_grid must be a non-empty dict"),
    ([], {}, ValueError, "param_grid must be a dict or a non-empty list of dicts"),
    ({"l2": []}, {}, ValueError, r"param_grid\['l2'\] is empty"),
    ([{"l2": [1.0]}, {}], {}, ValueError, r"param_grid\[1\] must be a non-empty dict"),
    ({"l2": 0.1}, {}, TypeError, r"param_grid\['l2'\] must be a list"),
    ({"max_iters": [9]}, {}, ValueError, r"invalid parameter 'max_iters' for DistributedGD "
                                         r"\(did you mean 'max_iter'\?\); valid parameters: "),
    ({"l2": [0.1]}, dict(cv=1), ValueError, "cv must be an integer >= 2"),
    ({"l2": [0.1]}, dict(cv=3.0), ValueError, "cv must be an integer >= 2"),
    ({"l2": [0.1]}, dict(cv=50), ValueError, "cv=50 folds need at least 50 rows; all ranks "
                                             "together hold 40"),
    ({"l2": [0.1]}, dict(seed=None), ValueError, "seed must be an integer >= 0"),
    ({1: [0.1]}, {}, TypeError, "parameter names must be strings, got 1"),
    ({"l2": [0.1]}, dict(scoring="r2"), TypeError, "scoring must be None"),
    ({"l2": [0.1]}, dict(error_score="ignore"), ValueError, "error_score must be 'raise'"),
])
def test_bad_input(grid, kw, error, match):
    X, y = regression(n=40)
    with pytest.raises(error, match=match):
        GridSearchCV(DistributedGD(), grid, **kw).fit(X, y)


def test_bad_federated_input():
    clients = federated_clients(3)
    trainer = FederatedTrainer(FedAvg(), "logistic", rounds=1)
    with pytest.raises(ValueError, match="cv=4 folds need at least 4 clients; there are 3"):
        GridSearchCV(trainer, {"lr": [0.1]}, cv=4).fit(clients)
    with pytest.raises(TypeError, match="y and sample_weight must be None"):
        GridSearchCV(trainer, {"lr": [0.1]}, cv=3).fit(clients, np.zeros(3))


def test_all_fits_failing():
    X, y = regression(n=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitFailedWarning)
        with pytest.raises(ValueError, match=r"all 4 fits failed \(2 candidates x 2 folds\)"):
            GridSearchCV(DistributedGD(), {"lr": [-1.0, 0.0]}, cv=2).fit(X, y)


# -- MPI: the same cv_results_ on every rank count --------------------------------------

def my_rows(n):
    return np.array_split(np.arange(n), COMM.size)[COMM.rank]


def assert_same_search(dist, one):
    for key in ("mean_test_score", "std_test_score"):
        assert_allclose(dist.cv_results_[key], one.cv_results_[key], rtol=0, atol=1e-10)
    assert dist.best_params_ == one.best_params_


@pytest.mark.mpi
def test_mpi_row_folds_match_one_process():
    X, y = regression(n=90)
    rows = my_rows(len(X))
    grid = {"l2": [1.0, 0.1, 0.0], "fit_intercept": [True, False]}
    make = lambda comm: DistributedGD(solver="lbfgs", gtol=1e-6, comm=comm)  # noqa: E731
    dist = GridSearchCV(make(None), grid, cv=4).fit(X[rows], y[rows])
    one = GridSearchCV(make(LocalComm()), grid, cv=4).fit(X, y)
    assert_same_search(dist, one)
    assert_allclose(dist.best_estimator_.coef_, one.best_estimator_.coef_, rtol=1e-9)
    Xc, yc = classification(n=90, n_classes=3)
    dist = GridSearchCV(LogisticRegression(tol=1e-8), GRID_C, cv=3).fit(Xc[rows], yc[rows])
    one = GridSearchCV(LogisticRegression(tol=1e-8, comm=LocalComm()), GRID_C, cv=3).fit(Xc, yc)
    assert_same_search(dist, one)


@pytest.mark.mpi
def test_mpi_client_folds_match_one_process():
    clients = federated_clients(7)
    grid = {"lr": [0.05, 0.5]}
    make = lambda comm: FederatedTrainer(FedAvg(), "logistic", rounds=2,  # noqa: E731
                                         batch_size=10, comm=comm)
    dist = GridSearchCV(make(None), grid, cv=3).fit(clients)
    hosted = {c: clients[c] for c in range(7) if c % COMM.size == COMM.rank}  # dict form
    by_dict = GridSearchCV(make(None), grid, cv=3).fit(hosted)
    one = GridSearchCV(make(LocalComm()), grid, cv=3).fit(clients)
    assert_same_search(dist, one)
    assert_same_search(by_dict, one)
