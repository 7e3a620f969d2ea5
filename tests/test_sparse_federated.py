"""Federated training on CSR clients (issue 15, part 3).

Oracles: the dense local-SGD kernel (`cyfed._sgd`) on X.toarray() -- the same
seeded batches, so the same local models to rounding -- and, for the lazy
L2 / proximal / correction / momentum updates, an explicit numpy loop that
steps every coordinate every step.  End to end: FederatedTrainer on
bag-of-words clients beside the same trainer on the dense copies.
"""
import numpy as np
import pytest
import scipy.sparse as sp

from cyfed import _sgd, _sparse_sgd, gradients
from cyfed.data import dirichlet, iid, make_bag_of_words, quantity_skew, shards, split_devices
from cyfed.federated import FederatedTrainer
from cyfed.federated import clients as client_data
from cyfed.models import LinearModel, SGDSettings
from cyfed.strategies import FedAvg, FedProx, Scaffold

RTOL = {np.float64: 1e-10, np.float32: 2e-3}
KINDS = {"squared": 0, "logistic": 1, "softmax": 2}
SEED, RND = 3, 7


def csr_clients(loss, n=180, d=25, density=0.15, dtype=np.float64, seed=0):
    """(X CSR, y, offsets): 5 clients of unequal sizes (one of a single row), a few
    empty rows and never-used columns; labels fit `loss`."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=seed, dtype=dtype,
                  data_rvs=lambda m: rng.standard_normal(m))
    rows, cols = np.ones(n), np.ones(d)
    rows[7] = cols[3] = 0
    X = sp.csr_matrix(sp.diags(rows) @ X @ sp.diags(cols), dtype=dtype)
    X.eliminate_zeros()
    y = {"squared": rng.standard_normal(n), "logistic": rng.integers(0, 2, n),
         "softmax": rng.integers(0, 3, n)}[loss].astype(dtype)
    return X, y, np.array([0, 13, 60, 61, 140, n], dtype=np.intp)


def train(loss, X, y, offsets, *, which=(4, 0, 1, 3), epochs=(3, 2, 0, 1), corrections=None,
          fit_intercept=True, batch=7, max_steps=0, lr=0.05, l2=0.0, mu=0.0, momentum=0.0,
          threads=1, global_params=None):
    """(local models, mean losses, steps) of `which` from the CSR kernel when X is
    sparse, else from the dense one."""
    k = 3 if loss == "softmax" else 1
    which = np.asarray(which, dtype=np.intp)
    m, P, dtype = len(which), X.shape[1] * k + k, y.dtype
    ids = (10 * which).astype(np.int64)
    gp = (np.zeros(P) if global_params is None else global_params).astype(dtype)
    corr = np.empty((0, 0), dtype) if corrections is None else corrections.astype(dtype)
    out, losses, steps = np.full((m, P), np.nan), np.empty(m), np.empty(m, dtype=np.intp)
    common = (offsets, which, ids, np.asarray(epochs, dtype=np.intp), gp, corr, out, losses,
              steps, k, fit_intercept, batch, max_steps, lr, l2, mu, momentum, SEED, RND,
              threads)
    if sp.issparse(X):
        _sparse_sgd.train_clients(KINDS[loss], X.data, X.indices, X.indptr, X.shape[1], y,
                                  *common)
    else:
        _sgd.train_clients(KINDS[loss], X, y, *common)
    return out, losses, steps


def gradients_take_csr():
    """Whether gradients.prepare accepts CSR X (the sparse-aware Problem)."""
    try:
        problem = gradients.prepare("logistic", sp.csr_matrix(np.eye(2)), np.array([0.0, 1.0]))
    except (TypeError, ValueError):
        return False
    return bool(getattr(problem, "sparse", False))


needs_csr_problem = pytest.mark.skipif(not gradients_take_csr(),
                                       reason="gradients.prepare does not take CSR X yet")


def assert_same_training(a, b, rtol):
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_allclose(a[0], b[0], rtol=rtol, atol=rtol * np.abs(b[0]).max())
    np.testing.assert_allclose(a[1], b[1], rtol=rtol)


STEP_OPTIONS = {                       # name: (l2, mu, momentum, with corrections)
    "plain": (0.0, 0.0, 0.0, False),
    "l2": (0.1, 0.0, 0.0, False),
    "prox": (0.0, 0.5, 0.0, False),
    "scaffold": (0.0, 0.0, 0.0, True),
    "momentum": (0.0, 0.0, 0.9, False),
    "all": (0.05, 0.3, 0.5, True),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss", list(KINDS))
@pytest.mark.parametrize("options", list(STEP_OPTIONS))
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_csr_kernel_matches_the_dense_kernel(dtype, loss, options, fit_intercept):
    l2, mu, momentum, with_corr = STEP_OPTIONS[options]
    X, y, offsets = csr_clients(loss, dtype=dtype)
    k = 3 if loss == "softmax" else 1
    rng = np.random.default_rng(1)
    corr = 0.05 * rng.standard_normal((4, X.shape[1] * k + k)) if with_corr else None
    gp = 0.1 * rng.standard_normal(X.shape[1] * k + k)
    kw = dict(corrections=corr, fit_intercept=fit_intercept, l2=l2, mu=mu, momentum=momentum,
              global_params=gp, lr=0.02 if dtype == np.float32 else 0.05)
    assert_same_training(train(loss, X, y, offsets, **kw),
                         train(loss, X.toarray(), y, offsets, **kw), RTOL[dtype])


@pytest.mark.parametrize("batch,max_steps,epochs", [(1, 0, (2, 1, 1, 3)), (7, 5, (3, 2, 0, 1)),
                                                    (1000, 0, (4, 4, 4, 4)),
                                                    (10, 3, (5, 5, 5, 5))])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("options", ["plain", "all"])
def test_batches_epochs_step_caps_and_threads(batch, max_steps, epochs, threads, options):
    l2, mu, momentum, with_corr = STEP_OPTIONS[options]
    X, y, offsets = csr_clients("logistic")
    corr = 0.05 * np.random.default_rng(2).standard_normal((4, 26)) if with_corr else None
    kw = dict(batch=batch, max_steps=max_steps, epochs=epochs, threads=threads, l2=l2, mu=mu,
              momentum=momentum, corrections=corr)
    assert_same_training(train("logistic", X, y, offsets, **kw),
                         train("logistic", X.toarray(), y, offsets, **kw), RTOL[np.float64])


def explicit_local_sgd(X, y, epochs, batch, w0, corr, lr, l2, mu, momentum, client):
    """Squared loss, intercept last: every coordinate of (w, v) stepped every step."""
    Xd = X.toarray()
    w, v, d = w0.copy(), np.zeros_like(w0), X.shape[1]
    for e in range(epochs):
        perm = _sgd.shuffled(len(y), SEED, RND, client, e)
        for start in range(0, len(y), batch):
            rows = perm[start:start + batch]
            r = 2 * (Xd[rows] @ w[:d] + w[d] - y[rows])
            g = np.append(Xd[rows].T @ r, r.sum()) / len(rows)
            g[:d] += l2 * w[:d]
            g += mu * (w - w0) + corr
            v = momentum * v + g
            w = w - lr * v
    return w


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lazy_updates_equal_stepping_every_coordinate(momentum):
    """A tiny client whose columns go untouched for many steps: the closed form over
    the skipped steps equals the explicit per-step recurrence."""
    rng = np.random.default_rng(5)
    X = sp.csr_matrix(rng.standard_normal((12, 6)) * (rng.random((12, 6)) < 0.2))
    y = rng.standard_normal(12)
    w0, corr = rng.standard_normal(7), 0.1 * rng.standard_normal(7)
    out = train("squared", X, y, np.array([0, 12], dtype=np.intp), which=(0,), epochs=(4,),
                corrections=corr[None, :], batch=2, lr=0.1, l2=0.3, mu=0.2, momentum=momentum,
                global_params=w0)[0][0]
    ref = explicit_local_sgd(X, y, 4, 2, w0, corr, 0.1, 0.3, 0.2, momentum, client=0)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("lr,l2,mu", [(0.1, 0.3, 0.2), (0.5, 1e-9, 0.0), (1.5, 1.0, 0.0)])
def test_recurrence_table_is_the_closed_form(lr, l2, mu):
    """Without momentum: w_s = a^s w + b (1 - a^s) / (1 - a), a = 1 - lr (l2 + mu),
    i.e. M^s[0, 0] = a^s and R_s[0] = -lr (1 - a^s) / (1 - a); with momentum the
    table is the matrix power."""
    s = np.arange(41)
    a = 1 - lr * (l2 + mu)
    T = _sparse_sgd.recurrence_table(40, lr, l2, mu, 0.0)
    np.testing.assert_allclose(T[:, 0], a ** s, rtol=1e-13)
    np.testing.assert_allclose(T[:, 4], -lr * (1 - a ** s) / (1 - a), rtol=1e-6 if
                               abs(1 - a) < 1e-6 else 1e-13)
    M = np.array([[1 - lr * (l2 + mu), -lr * 0.9], [l2 + mu, 0.9]])
    T = _sparse_sgd.recurrence_table(40, lr, l2, mu, 0.9)
    powers = [np.linalg.matrix_power(M, i) for i in s]
    np.testing.assert_allclose(T[:, :4], np.array(powers).reshape(-1, 4), rtol=1e-12,
                               atol=1e-12 * max(1.0, np.abs(powers).max()))
    R = np.cumsum([P @ [-lr, 1.0] for P in powers[:-1]], axis=0)
    np.testing.assert_allclose(T[1:, 4:], R, rtol=1e-11, atol=1e-11 * np.abs(R).max())


def test_duplicate_entries_are_summed_as_by_toarray():
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 8, 120)                # 30 rows of 4 entries, with repeats
    X = sp.csr_matrix((rng.standard_normal(120), indices, np.arange(0, 121, 4)), shape=(30, 8))
    assert not X.has_canonical_format
    y = rng.standard_normal(30)
    offsets = np.array([0, 30], dtype=np.intp)
    kw = dict(which=(0,), epochs=(2,), l2=0.1, batch=4)
    assert_same_training(train("squared", X, y, offsets, **kw),
                         train("squared", X.toarray(), y, offsets, **kw), 1e-12)


def test_a_clients_model_does_not_depend_on_threads_or_company():
    X, y, offsets = csr_clients("softmax")
    kw = dict(l2=0.05, mu=0.1, momentum=0.5)
    alone = train("softmax", X, y, offsets, which=(3,), epochs=(2,), **kw)
    crowd = [train("softmax", X, y, offsets, which=(0, 3, 1, 4), epochs=(1, 2, 3, 1),
                   threads=t, **kw) for t in (1, 4)]
    np.testing.assert_array_equal(crowd[0][0], crowd[1][0])
    np.testing.assert_array_equal(alone[0][0], crowd[0][0][1])


@pytest.mark.parametrize("layout", ["csr", "dense"])
def test_a_diverging_client_leaves_the_next_one_on_its_thread_alone(layout):
    """Scratch reused by a thread's next client carries nothing over (no NaN from an
    overflowed velocity or model), in both kernels."""
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.standard_normal((40, 5)))
    X.data[:X.indptr[20]] *= 1e150                              # client 0 overflows
    if layout == "dense":
        X = X.toarray()
    y, offsets = rng.standard_normal(40), np.array([0, 20, 40], dtype=np.intp)
    kw = dict(epochs=(2, 2), l2=0.1, threads=1)
    with np.errstate(all="ignore"):
        both = train("squared", X, y, offsets, which=(0, 1), **kw)
    alone = train("squared", X, y, offsets, which=(1,), epochs=(2,), l2=0.1)
    assert not np.all(np.isfinite(both[0][0]))
    np.testing.assert_array_equal(both[0][1], alone[0][0])


def raw_args(X, labels, **over):
    """train_clients' arguments for one client, logistic, as a dict to override."""
    P = X.shape[1] + 1
    args = dict(kind=1, data=X.data, indices=X.indices, indptr=X.indptr, n_features=X.shape[1],
                y=labels, offsets=np.array([0, len(labels)], dtype=np.intp),
                which=np.array([0], dtype=np.intp),
                client_ids=np.zeros(1, dtype=np.int64), epochs=np.ones(1, dtype=np.intp),
                global_params=np.zeros(P), corrections=np.empty((0, 0)), out=np.empty((1, P)),
                losses=np.empty(1), steps=np.empty(1, dtype=np.intp), n_classes=1,
                fit_intercept=True, batch_size=5, max_steps=0, lr=0.1, l2=0.0, mu=0.0,
                momentum=0.0, seed=0, rnd=0, n_threads=1)
    args.update(over)
    return list(args.values())


def bad_indices(X):
    ind = X.indices.copy()
    ind[3] = X.shape[1]
    return ind


def bad_indptr(X):
    ptr = X.indptr.copy()
    ptr[2] = X.nnz + 10
    return ptr


@pytest.mark.parametrize("change,match", [
    (lambda X, y: dict(indices=bad_indices(X)), "column index"),
    (lambda X, y: dict(indptr=bad_indptr(X)), "indptr"),
    (lambda X, y: dict(y=np.where(np.arange(len(y)) == 4, 2.0, y)), r"y\[4\]"),
    (lambda X, y: dict(global_params=np.zeros(3)), "global_params"),
    (lambda X, y: dict(which=np.array([1], dtype=np.intp)), "which"),
    (lambda X, y: dict(corrections=np.zeros((2, X.shape[1] + 1))), "corrections"),
    (lambda X, y: dict(batch_size=0), "batch_size"),
    (lambda X, y: dict(offsets=np.array([0, len(y) + 1], dtype=np.intp)), "offsets"),
    (lambda X, y: dict(n_classes=3), "n_classes"),
])
def test_bad_arguments_raise_before_training(change, match):
    X, y, _ = csr_clients("logistic", n=40)
    with pytest.raises(ValueError, match=match):
        _sparse_sgd.train_clients(*raw_args(X, y, **change(X, y)))


@needs_csr_problem
@pytest.mark.parametrize("loss", list(KINDS))
def test_linear_model_dispatches_csr_rows_to_the_sparse_kernel(loss):
    """LinearModel.train_clients on a CSR Problem equals its run on the dense copy."""
    X, y, offsets = csr_clients(loss)
    model = LinearModel(loss).bind(X.shape[1], 3 if loss == "softmax" else 1)
    sgd = SGDSettings(7, 0, 0.05, 0.01, 0.1, 0.5, SEED, RND, 2)
    which, epochs = np.array([4, 0, 1], dtype=np.intp), np.array([2, 1, 3], dtype=np.intp)
    runs = []
    for data in (model.prepare(X, y), model.prepare(X.toarray(), y)):
        out, losses, steps = np.empty((3, model.n_params)), np.empty(3), np.empty(3, np.intp)
        model.train_clients(data, offsets, which, which.astype(np.int64), epochs,
                            np.zeros(model.n_params), np.empty((0, 0)), out, losses, steps, sgd)
        runs.append((out, losses, steps))
    assert_same_training(*runs, RTOL[np.float64])


# -- clients, generator, partitioners ------------------------------------------------------

def test_mixing_sparse_and_dense_clients_is_refused():
    X = sp.random(10, 4, density=0.5, format="csr", random_state=0)
    hosted = {0: (X.toarray(), np.zeros(10)), 1: (X, np.zeros(10))}
    with pytest.raises(ValueError, match="client 1 is sparse, client 0 dense"):
        client_data.concatenate(LinearModel("squared"), hosted)


def test_client_csr_with_nan_is_named():
    X = sp.csr_matrix(np.arange(1.0, 41.0).reshape(10, 4))
    X.data[9] = np.nan
    with pytest.raises(ValueError, match=r"X of client 0\[2, 1\] = nan"):
        client_data.concatenate(LinearModel("squared"), {0: (X, np.zeros(10))})


@needs_csr_problem
def test_csr_clients_are_stacked_with_offsets():
    clients = make_bag_of_words(6, 50, 4, mean_rows=5, seed=1)
    hosted = {i: (X.tocoo() if i == 2 else X, y) for i, (X, y) in enumerate(clients)}
    data, offsets, ids, _ = client_data.concatenate(LinearModel("logistic"), hosted)
    assert sp.issparse(data.X) and data.X.format == "csr" and data.sparse
    np.testing.assert_array_equal(ids, np.arange(6))
    for i, (X, y) in enumerate(clients):
        np.testing.assert_array_equal(data.X[offsets[i]:offsets[i + 1]].toarray(), X.toarray())
        np.testing.assert_array_equal(data.y[offsets[i]:offsets[i + 1]], y)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bag_of_words_shapes_and_determinism(dtype):
    clients = make_bag_of_words(40, 300, 8, mean_rows=12, n_classes=3, seed=4, dtype=dtype)
    again = make_bag_of_words(40, 300, 8, mean_rows=12, n_classes=3, seed=4, dtype=dtype)
    other = make_bag_of_words(40, 300, 8, mean_rows=12, n_classes=3, seed=5, dtype=dtype)
    assert len(clients) == 40 and sum(len(y) for _, y in clients) == 40 * 12
    for (X, y), (X2, y2) in zip(clients, again):
        assert X.format == "csr" and X.dtype == dtype and X.shape == (len(y), 300)
        assert (X != X2).nnz == 0 and np.array_equal(y, y2)
        assert set(np.unique(y)) <= {0, 1, 2}
        norms = np.sqrt(X.multiply(X).sum(axis=1)).A1
        np.testing.assert_allclose(norms, 1, rtol=1e-6)
        assert np.all(np.diff(X.indptr) <= 8)
    assert any(X.shape != X2.shape or (X != X2).nnz for (X, _), (X2, _) in zip(clients, other))
    sizes = sorted(len(y) for _, y in clients)
    assert sizes[-1] > 3 * sizes[0]                          # power-law sizes
    counts = np.asarray(sum(X.sum(axis=0) for X, _ in clients)).ravel()
    assert counts[:10].sum() > counts[-100:].sum()           # Zipf tokens


@pytest.mark.parametrize("kw,match", [(dict(n_clients=0), "n_clients"),
                                      (dict(n_classes=1), "n_classes"),
                                      (dict(power=-1.0), "power")])
def test_bag_of_words_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make_bag_of_words(**{"vocabulary": 20, **kw})


def test_split_devices_of_csr_clients_gives_a_csr_test_set():
    clients = make_bag_of_words(10, 100, 5, mean_rows=10, seed=2)
    train_part, (X_test, y_test) = split_devices(clients, 0.2, seed=0)
    assert X_test.format == "csr" and X_test.shape == (len(y_test), 100)
    assert sum(len(y) for _, y in train_part) + len(y_test) == 100


def test_partitioners_index_csr_rows():
    clients = make_bag_of_words(5, 100, 5, mean_rows=40, seed=2)
    X = sp.vstack([X for X, _ in clients], format="csr")
    y = np.concatenate([y for _, y in clients])
    for parts in (iid(X.shape[0], 4), dirichlet(y, 4, 1.0, min_size=5), shards(y, 4),
                  quantity_skew(X.shape[0], 4, power=1.0)):
        pieces = [X[p] for p in parts]
        assert all(piece.format == "csr" for piece in pieces)
        assert sum(piece.shape[0] for piece in pieces) == X.shape[0]


# -- end to end ------------------------------------------------------------------------------

BAG = dict(n_clients=100, vocabulary=300, tokens_per_row=20, mean_rows=40, seed=0)


@needs_csr_problem
@pytest.mark.parametrize("strategy,lr,momentum,l2", [(FedAvg(), 2.0, 0.0, 0.0),
                                                     (FedProx(mu=0.1), 1.0, 0.5, 1e-3),
                                                     (Scaffold(), 2.0, 0.0, 0.0)])
def test_fedavg_on_bag_of_words_learns_and_equals_the_dense_run(strategy, lr, momentum, l2):
    clients, (X_test, y_test) = split_devices(make_bag_of_words(**BAG), 0.2, seed=0)
    fits = []
    for X_of in (lambda X: X, lambda X: X.toarray()):
        trainer = FederatedTrainer(strategy, "logistic", rounds=30, clients_per_round=20,
                                   local_epochs=3, batch_size=10, lr=lr, momentum=momentum,
                                   l2=l2, n_workers=2, seed=1)
        fits.append(trainer.fit([(X_of(X), y) for X, y in clients]))
    sparse_fit, dense_fit = fits
    np.testing.assert_allclose(sparse_fit.theta_, dense_fit.theta_, rtol=1e-9,
                               atol=1e-9 * np.abs(dense_fit.theta_).max())
    majority = max(y_test.mean(), 1 - y_test.mean())            # 0.54 here
    accuracy = np.mean(sparse_fit.predict(X_test) == y_test)    # ~0.74 (the optimum: 0.77)
    assert accuracy > majority + 0.12


@needs_csr_problem
def test_a_resumed_run_on_csr_clients_ends_bit_identical(tmp_path):
    clients = make_bag_of_words(20, 100, 5, mean_rows=20, seed=0)

    def trainer(rounds, threads, **kw):
        return FederatedTrainer(Scaffold(), "logistic", rounds=rounds, clients_per_round=5,
                                lr=1.0, momentum=0.5, n_workers=threads, **kw)

    full = trainer(4, 2).fit(clients)
    path = tmp_path / "run.npz"
    trainer(2, 2, checkpoint=path).fit(clients)
    resumed = trainer(4, 1, checkpoint=path, resume=True).fit(clients)
    np.testing.assert_array_equal(resumed.theta_, full.theta_)
