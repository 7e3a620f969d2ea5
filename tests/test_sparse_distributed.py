"""DistributedGD and the scikit-learn estimators on CSR shards (issue 15, part 2).

The oracle is the same trainer on the dense copy of the rows (X.toarray()): every
solver must take the same steps on CSR data, so the models agree to rounding;
and scikit-learn's LogisticRegression on the same CSR matrix for the optimum.
Tests marked `mpi` shard the rows over `cyfed.comm.get_comm()` (CSR row slices)
and must reach the single-process model for any number of ranks.
"""
import numpy as np
import pytest
import scipy.sparse as sp

from cyfed.comm import LocalComm, get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD

COMM = get_comm()


def sparse_problem(loss, n=600, d=40, density=0.1, seed=0, dtype=np.float64):
    """(X CSR, y) with a few empty rows and columns, labels from a hidden model."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=seed, dtype=dtype,
                  data_rvs=lambda m: rng.standard_normal(m) + 1.0)
    empty = np.ones(n)
    empty[5] = 0                                     # row 5 holds no entries
    X = sp.csr_matrix(sp.diags(empty.astype(dtype)) @ X)
    X.eliminate_zeros()
    z = X @ rng.standard_normal((d, 3))
    y = {"squared": z[:, 0] + 0.1 * rng.standard_normal(n),
         "logistic": (z[:, 0] + rng.logistic(size=n) > 0).astype(float),
         "softmax": np.argmax(z + rng.gumbel(size=z.shape), axis=1).astype(float)}[loss]
    return X, y


def shard(X, *arrays):
    rows = shard_rows(X.shape[0], COMM.rank, COMM.size)
    return [X[rows]] + [a[rows] for a in arrays]


SOLVER_PARAMS = {
    "gd": dict(solver="gd", lr=0.05, max_iter=40, momentum=0.5),
    "gd-minibatch": dict(solver="gd", lr=0.05, max_iter=40, batch_size=64, seed=3),
    "gd-auto-lr": dict(solver="gd", lr="auto", max_iter=40),
    "lbfgs": dict(solver="lbfgs", max_iter=30),
    "newton-cg": dict(solver="newton-cg", max_iter=15),
    "newton-cholesky": dict(solver="newton-cholesky", max_iter=8),
    "auto": dict(max_iter=30),
}


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("loss", ["squared", "logistic", "softmax"])
@pytest.mark.parametrize("name", list(SOLVER_PARAMS))
def test_csr_takes_the_dense_steps(name, loss, standardize):
    X, y = sparse_problem(loss)
    w = np.random.default_rng(1).uniform(0.5, 2.0, X.shape[0])
    params = dict(SOLVER_PARAMS[name], l2=1e-3, standardize=standardize, comm=LocalComm())
    dense = DistributedGD(loss, **params).fit(X.toarray(), y, w)
    csr = DistributedGD(loss, **params).fit(X, y, w)
    assert csr.n_iter_ == dense.n_iter_
    np.testing.assert_allclose(csr.coef_, dense.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(csr.intercept_, dense.intercept_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(csr.predict(X), dense.predict(X.toarray()), rtol=1e-8,
                               atol=1e-10)
    assert csr.score(X, y) == pytest.approx(dense.score(X.toarray(), y), rel=1e-9)


def test_float32_and_int64_indices():
    X, y = sparse_problem("logistic", dtype=np.float32)
    X64 = sp.csr_matrix((X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)),
                        shape=X.shape)
    a = DistributedGD("logistic", solver="lbfgs", l2=1e-3, comm=LocalComm()).fit(X, y)
    b = DistributedGD("logistic", solver="lbfgs", l2=1e-3, comm=LocalComm()).fit(X64, y)
    dense = DistributedGD("logistic", solver="lbfgs", l2=1e-3, comm=LocalComm()).fit(
        X.toarray(), y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_allclose(a.coef_, dense.coef_, rtol=1e-4, atol=1e-5)


def test_reaches_scikit_learns_optimum_on_the_same_csr_matrix():
    sklearn = pytest.importorskip("sklearn.linear_model")
    X, y = sparse_problem("logistic", n=2000, d=300, density=0.03, seed=4)
    l2 = 1e-3
    ours = DistributedGD("logistic", solver="newton-cg", l2=l2, gtol=1e-10, max_iter=100,
                         comm=LocalComm()).fit(X, y)
    theirs = sklearn.LogisticRegression(C=1 / (X.shape[0] * l2), solver="newton-cg",
                                        tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_[0], rtol=1e-5, atol=1e-7)
    assert ours.intercept_ == pytest.approx(theirs.intercept_[0], rel=1e-5, abs=1e-7)


def test_estimators_take_csr():
    from cyfed.linear_model import LinearRegression, LogisticRegression

    X, y = sparse_problem("logistic", seed=6)
    dense = LogisticRegression(comm=LocalComm()).fit(X.toarray(), y)
    csr = LogisticRegression(comm=LocalComm()).fit(X, y)
    np.testing.assert_allclose(csr.coef_, dense.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(csr.predict_proba(X), dense.predict_proba(X.toarray()),
                               rtol=1e-7, atol=1e-9)
    X, y = sparse_problem("squared", seed=7)
    reg = LinearRegression(comm=LocalComm()).fit(X, y)
    lstsq = np.linalg.lstsq(np.column_stack([X.toarray(), np.ones(X.shape[0])]), y,
                            rcond=None)[0]
    np.testing.assert_allclose(reg.coef_, lstsq[:-1], rtol=1e-6, atol=1e-8)


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["gd-minibatch", "lbfgs", "newton-cg", "auto"])
@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_csr_shards_give_the_single_process_model(name, loss):
    X, y = sparse_problem(loss, n=1001)
    params = dict(SOLVER_PARAMS[name], l2=1e-3, standardize=True)
    alone = DistributedGD(loss, comm=LocalComm(), **params).fit(X, y)
    spread = DistributedGD(loss, comm=COMM, **params).fit(*shard(X, y))
    np.testing.assert_allclose(spread.coef_, alone.coef_, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(spread.intercept_, alone.intercept_, rtol=1e-9, atol=1e-11)


@pytest.mark.mpi
def test_a_rank_without_rows_holds_an_empty_csr_shard():
    """Rank 0 holds no rows (its block goes to rank 1): the same model as one process."""
    if COMM.size == 1:
        pytest.skip("needs several ranks")
    X, y = sparse_problem("logistic", n=COMM.size * 40)
    mine = shard_rows(X.shape[0], COMM.rank, COMM.size)
    rows = {0: slice(0, 0), 1: slice(0, mine.stop)}.get(COMM.rank, mine)
    alone = DistributedGD("logistic", solver="lbfgs", l2=1e-3, comm=LocalComm()).fit(X, y)
    spread = DistributedGD("logistic", solver="lbfgs", l2=1e-3, comm=COMM).fit(X[rows],
                                                                              y[rows])
    np.testing.assert_allclose(spread.coef_, alone.coef_, rtol=1e-8, atol=1e-10)
