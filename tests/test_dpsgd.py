"""DP-SGD: per-example clipping in the kernel, and DistributedGD(privacy=DPSGD(...)).

The clipped sums are checked against a numpy reference that materialises every
example's gradient; the trainer against the DP-SGD update written out by hand
(the noise is the draw of default_rng([seed, t, 1])), the accountant, and a
single-process run on the full data.  Tests marked `mpi` shard their data over
`cyfed.comm.get_comm()` and hold for any number of ranks.
"""
import numpy as np
import pytest
from scipy.special import expit, softmax

from cyfed import accountant
from cyfed.comm import LocalComm, get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD, batches
from cyfed.gradients import clipped_grad_sum, loss_grad
from cyfed.privacy import DPSGD
from reference import interrupted_and_resumed

COMM = get_comm()
# (loss, k): softmax with few classes takes the padded micro-kernels, with 40 the general ones
MODELS = [("squared", 1), ("logistic", 1), ("softmax", 4), ("softmax", 40)]
MODEL_IDS = ["squared", "logistic", "softmax4", "softmax40"]


def make_problem(loss, k, n, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))).astype(dtype)
    W = rng.standard_normal((d, max(k, 2))) / np.sqrt(d)
    z = X @ W
    if loss == "squared":
        y = z[:, 0] + 0.5 * rng.standard_normal(n)
    elif loss == "logistic":
        y = (rng.random(n) < expit(z[:, 0])).astype(float)
    else:
        y = rng.integers(0, k, size=n).astype(float)
    coef = 0.3 * rng.standard_normal((d, k) if k > 1 else d)
    intercept = 0.1 * rng.standard_normal(k) if k > 1 else 0.2
    return X, y.astype(dtype), coef.astype(dtype), intercept


def per_example_gradients(loss, X, y, coef, intercept, sample_weight=None, rows=None):
    """(per-example weighted gradients (m, d*k [+ k]), losses (m,)) in float64, materialised."""
    dtype = X.dtype
    X, y = X.astype(np.float64), y.astype(np.float64)
    w = np.ones(len(X)) if sample_weight is None else sample_weight.astype(dtype).astype(float)
    if rows is not None:
        X, y, w = X[rows], y[rows], w[rows]
    W = np.asarray(coef, dtype=dtype).astype(np.float64).reshape(X.shape[1], -1)
    b = 0.0 if intercept is None else np.asarray(intercept, dtype=dtype).astype(np.float64)
    z = X @ W + b
    if loss == "squared":
        r = 2 * (z - y[:, None])
        losses = (z[:, 0] - y) ** 2
    elif loss == "logistic":
        r = expit(z) - y[:, None]
        losses = np.logaddexp(0, z[:, 0]) - y * z[:, 0]
    else:
        labels = y.astype(int)
        r = softmax(z, axis=1)
        r[np.arange(len(y)), labels] -= 1
        losses = np.logaddexp.reduce(z, axis=1) - z[np.arange(len(y)), labels]
    r *= w[:, None]
    G = (X[:, :, None] * r[:, None, :]).reshape(len(X), -1)
    if intercept is not None:
        G = np.hstack([G, r])
    return G, w * losses


def reference_clipped(G, clip_norm):
    """(sum of the clipped rows of G, per-element scale |.| of that sum, clipped count)."""
    norms = np.linalg.norm(G, axis=1)
    clipped = G * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))[:, None]
    return clipped.sum(axis=0), np.abs(clipped).sum(axis=0), int(np.sum(norms > clip_norm))


def clip_norm_in_a_gap(G):
    """A C midway in the widest gap between per-example norms near their median, so
    that no example's norm is within rounding of C and the clipped count is exact."""
    norms = np.sort(np.linalg.norm(G, axis=1))
    lo, hi = len(norms) // 4, 3 * len(norms) // 4
    i = lo + int(np.argmax(np.diff(norms[lo:hi + 1])))
    assert norms[i + 1] - norms[i] > 1e-4 * norms[i]
    return 0.5 * (norms[i] + norms[i + 1])


def assert_sums_close(got_coef, got_b, ref, scale, rtol, intercept):
    got = np.r_[np.ravel(got_coef), np.ravel(got_b) if intercept is not None else []]
    np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * (scale.max() + 1e-30) * 4)


# ---------------------------------------------------------------------------- kernel

@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("shape", [(3001, 50), (517, 5)], ids=["3001x50", "517x5-narrow"])
@pytest.mark.parametrize("subset", [False, True], ids=["all", "rows"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unit", "weighted"])
@pytest.mark.parametrize("fit_intercept", [True, False], ids=["b", "no-b"])
@pytest.mark.parametrize("loss,k", MODELS, ids=MODEL_IDS)
def test_clipped_sums_match_materialised_per_example_gradients(
        loss, k, fit_intercept, weighted, subset, shape, threads, dtype, rtol):
    n, d = shape
    X, y, coef, b = make_problem(loss, k, n, d, dtype)
    intercept = b if fit_intercept else None
    rng = np.random.default_rng(1)
    sw = rng.uniform(0, 2, size=n) if weighted else None
    if weighted:
        sw[::7] = 0                                     # weight-0 rows: zero gradient
    rows = rng.integers(0, n, size=n // 2) if subset else None   # repeats allowed
    G, losses = per_example_gradients(loss, X, y, coef, intercept, sw, rows)
    C = clip_norm_in_a_gap(G)
    ref, scale, count = reference_clipped(G, C)
    loss_sum, g_coef, g_b, n_clipped = clipped_grad_sum(
        loss, X, y, coef, intercept, clip_norm=C, sample_weight=sw, rows=rows, n_threads=threads)
    assert n_clipped == count and 0 < count < len(G)
    assert g_coef.shape == np.shape(coef) and g_coef.dtype == np.float64
    assert (g_b is None) == (intercept is None)
    assert_sums_close(g_coef, g_b, ref, scale, rtol, intercept)
    assert loss_sum == pytest.approx(losses.sum(), rel=4 * rtol)     # loss stays unclipped


@pytest.mark.parametrize("loss,k", MODELS, ids=MODEL_IDS)
def test_a_large_clip_norm_gives_the_unclipped_sums(loss, k, dtype, rtol):
    X, y, coef, b = make_problem(loss, k, 2000, 9, dtype)
    loss_sum, g_coef, g_b, n_clipped = clipped_grad_sum(loss, X, y, coef, b, clip_norm=1e100)
    value, mean_coef, mean_b = loss_grad(loss, X, y, coef, b)
    assert n_clipped == 0
    n = len(X)
    np.testing.assert_allclose(g_coef, n * mean_coef.astype(np.float64), rtol=20 * rtol,
                               atol=20 * rtol * n * np.abs(mean_coef).max())
    np.testing.assert_allclose(g_b, n * np.asarray(mean_b, dtype=np.float64), rtol=20 * rtol,
                               atol=20 * rtol * n * np.abs(mean_coef).max())
    assert loss_sum == pytest.approx(n * value, rel=10 * rtol)


@pytest.mark.parametrize("fit_intercept", [True, False], ids=["b", "no-b"])
@pytest.mark.parametrize("loss,k", MODELS, ids=MODEL_IDS)
def test_a_tiny_clip_norm_leaves_every_example_at_norm_c(loss, k, fit_intercept, dtype, rtol):
    X, y, coef, b = make_problem(loss, k, 300, 6, dtype)
    intercept = b if fit_intercept else None
    C = 1e-3
    G, _ = per_example_gradients(loss, X, y, coef, intercept)
    assert np.all(np.linalg.norm(G, axis=1) > C)
    _, g_coef, g_b, n_clipped = clipped_grad_sum(loss, X, y, coef, intercept, clip_norm=C)
    assert n_clipped == len(X)
    ref, scale, _ = reference_clipped(G, C)
    assert_sums_close(g_coef, g_b, ref, scale, rtol, intercept)
    for i in (0, 17, 299):                         # one example alone: its clipped gradient
        _, gi, bi, ci = clipped_grad_sum(loss, X, y, coef, intercept, clip_norm=C, rows=[i])
        norm = np.linalg.norm(np.r_[gi.ravel(), np.ravel(bi) if fit_intercept else []])
        assert ci == 1 and norm == pytest.approx(C, rel=10 * rtol)
        assert norm <= C * (1 + 1e-12)            # never above C: the sensitivity bound


def test_the_thread_count_changes_only_rounding():
    X, y, coef, b = make_problem("softmax", 4, 20000, 30, np.float64)
    results = [clipped_grad_sum("softmax", X, y, coef, b, clip_norm=0.5, n_threads=t)
               for t in (1, 2, 3, 8)]
    for loss_sum, g, gb, count in results[1:]:
        assert count == results[0][3]
        np.testing.assert_allclose(g, results[0][1], rtol=1e-12, atol=1e-12 * np.abs(g).max())
        np.testing.assert_allclose(gb, results[0][2], rtol=1e-12)
        assert loss_sum == pytest.approx(results[0][0], rel=1e-12)


@pytest.mark.parametrize("bad", [0, -1.0, np.nan, np.inf])
def test_bad_clip_norm_is_a_value_error_naming_it(bad):
    X, y, coef, b = make_problem("squared", 1, 10, 3, np.float64)
    with pytest.raises(ValueError, match="clip_norm"):
        clipped_grad_sum("squared", X, y, coef, b, clip_norm=bad)


@pytest.mark.parametrize("bad", [True, "1", None])
def test_non_numeric_clip_norm_is_a_type_error(bad):
    X, y, coef, b = make_problem("squared", 1, 10, 3, np.float64)
    with pytest.raises(TypeError, match="clip_norm"):
        clipped_grad_sum("squared", X, y, coef, b, clip_norm=bad)


def test_clipped_sum_validates_like_loss_grad():
    X, y, coef, b = make_problem("logistic", 1, 10, 3, np.float64)
    y[4] = 2
    with pytest.raises(ValueError, match=r"y\[4\]"):
        clipped_grad_sum("logistic", X, y, coef, b, clip_norm=1.0)
    with pytest.raises(ValueError, match="coef must have shape"):
        clipped_grad_sum("logistic", X, y, coef[:2], b, clip_norm=1.0)


# --------------------------------------------------------------------------- trainer

def shard(*arrays):
    rows = shard_rows(len(arrays[0]), COMM.rank, COMM.size)
    return [a[rows] for a in arrays]


def one_step(X, y, privacy, loss="squared", fit_intercept=True, seed=3):
    model = DistributedGD(loss, lr=1.0, max_iter=1, fit_intercept=fit_intercept, seed=seed,
                          privacy=privacy).fit(X, y)
    return np.r_[np.ravel(model.coef_), np.ravel(model.intercept_)], model


@pytest.mark.parametrize("fit_intercept", [True, False], ids=["b", "no-b"])
@pytest.mark.parametrize("seed", [0, 3])
def test_noise_is_the_shared_draw_scaled_by_z_c(seed, fit_intercept):
    """One step at lr 1 from zero: the noisy and noiseless runs differ by noise / (q N)."""
    X, y, _, _ = make_problem("softmax", 10, 2000, 50, np.float64)
    q, C, z = 0.05, 0.7, 1.3
    clean, _ = one_step(X, y, DPSGD(C, 0.0, q), "softmax", fit_intercept, seed)
    noisy, model = one_step(X, y, DPSGD(C, z, q), "softmax", fit_intercept, seed)
    implied = (clean - noisy) * (q * len(X))          # theta_1 = -g_0 with lr 1
    dk = 50 * 10
    draw = np.random.default_rng([seed, 0, 1]).normal(0.0, z * C, size=dk + 10)
    if not fit_intercept:
        draw[dk:] = 0
    np.testing.assert_allclose(implied, draw, rtol=1e-9, atol=1e-12)
    # and its spread is z C: sum of squares / (z C)^2 ~ chi^2(dk), within 5 sigma
    chi2 = np.sum(implied[:dk] ** 2) / (z * C) ** 2
    assert abs(chi2 - dk) <= 5 * np.sqrt(2 * dk)
    assert model.noise_multiplier_ == z


def test_a_full_batch_step_is_the_clipped_sum_plus_noise_over_qn():
    """q = 1: the batch is every row; the step is the numpy reference, written out."""
    X, y, coef0, b0 = make_problem("logistic", 1, 500, 8, np.float64)
    C, z, l2 = 0.4, 0.8, 0.1
    model = DistributedGD("logistic", lr=0.5, max_iter=1, l2=l2, seed=7,
                          privacy=DPSGD(C, z, 1.0)).fit(X, y, coef_init=coef0, intercept_init=b0)
    G, losses = per_example_gradients("logistic", X, y, coef0, b0)
    total, _, count = reference_clipped(G, C)
    noise = np.random.default_rng([7, 0, 1]).normal(0.0, z * C, size=9)
    grad = (total + noise) / len(X)
    grad[:8] += l2 * coef0
    np.testing.assert_allclose(np.r_[model.coef_, model.intercept_], np.r_[coef0, b0] - 0.5 * grad,
                               rtol=1e-12)
    record = model.history_[0]
    assert record["batch_size"] == len(X)
    assert record["clipped_fraction"] == count / len(X)
    assert record["loss"] == pytest.approx(losses.mean() + 0.5 * l2 * coef0 @ coef0, rel=1e-12)


def test_poisson_batches_have_the_binomial_law():
    n, q, steps = 1000, 0.03, 400
    X, y, _, _ = make_problem("squared", 1, n, 3, np.float64)
    model = DistributedGD(lr=1e-6, max_iter=steps, privacy=DPSGD(1.0, 1.0, q)).fit(X, y)
    sizes = np.array([h["batch_size"] for h in model.history_])
    # the total over independent steps is Binomial(steps n, q): within 5 sigma of its mean
    assert abs(sizes.sum() - steps * n * q) <= 5 * np.sqrt(steps * n * q * (1 - q))
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.3)
    assert len(set(sizes.tolist())) > 5                  # not a fixed size
    # every row is drawn at rate q: each count over the steps ~ Binomial(steps, q)
    counts = np.zeros(n)
    for t in range(steps):
        rows, size = batches.poisson_batch(model.seed, t, q, n, 0, n)
        assert size == sizes[t] and np.all(np.diff(rows) > 0)
        counts[rows] += 1
    assert np.all(np.abs(counts - steps * q) <= 6 * np.sqrt(steps * q * (1 - q)))


def test_the_batch_does_not_depend_on_how_rows_are_split():
    model = DistributedGD(seed=11)
    n, q = 10007, 0.02
    for t in range(5):
        whole, size = batches.poisson_batch(model.seed, t, q, n, 0, n)
        assert size == len(whole)
        for bounds in ([0, 3000, 3000, 10007], [0, 1, 5000, 9999, 10007]):
            parts = [batches.poisson_batch(model.seed, t, q, n, lo, hi - lo)[0] + lo
                     for lo, hi in zip(bounds[:-1], bounds[1:])]
            np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_an_empty_batch_steps_on_the_noise_alone():
    X, y, _, _ = make_problem("squared", 1, 10, 3, np.float64)
    q, C, z = 1e-4, 1.0, 2.0                        # P(empty batch) = (1 - q)^10 ~ 0.999
    model = DistributedGD(lr=1.0, max_iter=1, seed=0, privacy=DPSGD(C, z, q)).fit(X, y)
    assert model.history_[0]["batch_size"] == 0
    assert model.history_[0]["clipped_fraction"] == 0.0
    noise = np.random.default_rng([0, 0, 1]).normal(0.0, z * C, size=4)
    np.testing.assert_allclose(np.r_[model.coef_, model.intercept_], -noise / (q * len(X)),
                               rtol=1e-12)


def test_epsilon_in_history_is_the_accountants():
    X, y, _, _ = make_problem("logistic", 1, 400, 4, np.float64)
    z, q, delta = 1.1, 0.05, 1e-5
    model = DistributedGD("logistic", lr=0.1, max_iter=12,
                          privacy=DPSGD(1.0, z, q, delta=delta)).fit(X, y)
    eps = [h["epsilon"] for h in model.history_]
    assert all(a < b for a, b in zip(eps, eps[1:]))
    for t in (0, 5, 11):
        assert eps[t] == pytest.approx(accountant.epsilon(z, q, t + 1, delta), rel=1e-12)
    assert model.accountant_.steps == 12
    assert model.accountant_.epsilon(delta) == pytest.approx(eps[-1], rel=1e-12)
    quiet = DistributedGD("logistic", lr=0.1, max_iter=3,
                          privacy=DPSGD(1.0, z, q, delta=None)).fit(X, y)
    assert all("epsilon" not in h for h in quiet.history_)


def test_target_epsilon_calibrates_the_noise_before_training():
    X, y, _, _ = make_problem("logistic", 1, 400, 4, np.float64)
    target, q, steps = 2.0, 0.05, 30
    model = DistributedGD("logistic", lr=0.1, max_iter=steps,
                          privacy=DPSGD(1.0, sample_rate=q, target_epsilon=target)).fit(X, y)
    assert model.noise_multiplier_ > 0
    assert target - 0.05 <= model.history_[-1]["epsilon"] <= target
    assert model.history_[-1]["epsilon"] == pytest.approx(
        accountant.epsilon(model.noise_multiplier_, q, steps, 1e-5), rel=1e-12)


@pytest.mark.parametrize("params", [dict(momentum=0.9, lr_schedule="cosine"),
                                    dict(tol=1e-3, fit_intercept=False)],
                         ids=["momentum", "tol-no-b"])
def test_resume_with_dp_ends_bit_identical(params, tmp_path):
    X, y, _, _ = make_problem("softmax", 3, 600, 5, np.float64)
    make = lambda **kw: DistributedGD("softmax", lr=0.3, max_iter=30, seed=4,   # noqa: E731
                                      privacy=DPSGD(0.5, 0.7, 0.1), **params, **kw)
    path = tmp_path / "dp.npz"
    full, resumed = interrupted_and_resumed(make, (X, y), path, 3)
    np.testing.assert_array_equal(resumed.coef_, full.coef_)
    np.testing.assert_array_equal(resumed.intercept_, full.intercept_)
    assert resumed.n_iter_ == full.n_iter_
    assert resumed.history_ == [{**h, "seconds": r["seconds"]}
                                for h, r in zip(full.history_, resumed.history_)]
    assert resumed.accountant_.steps == full.n_iter_
    assert resumed.accountant_.epsilon(1e-5) == pytest.approx(full.accountant_.epsilon(1e-5),
                                                              rel=1e-12)
    with pytest.raises(ValueError, match="another configuration"):
        DistributedGD("softmax", lr=0.3, max_iter=30, seed=4, privacy=DPSGD(0.5, 0.8, 0.1),
                      checkpoint=path, resume=True, **params).fit(X, y)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(batch_size=10, privacy=DPSGD(1.0, 1.0, 0.1)), ValueError, "batch_size.*Poisson"),
    (dict(privacy="dp"), TypeError, "DPSGD"),
    (dict(privacy=DPSGD(-1.0, 1.0, 0.1)), ValueError, "clip_norm"),
    (dict(privacy=DPSGD(1.0, 1.0, 0.0)), ValueError, "sample_rate"),
    (dict(privacy=DPSGD(1.0)), ValueError, "noise_multiplier"),
])
def test_bad_privacy_options(kwargs, error, match):
    X, y, _, _ = make_problem("squared", 1, 20, 3, np.float64)
    with pytest.raises(error, match=match):
        DistributedGD(**kwargs).fit(X, y)


@pytest.mark.mpi
@pytest.mark.parametrize("loss,k", [("squared", 1), ("logistic", 1), ("softmax", 3)])
def test_same_dp_model_for_any_number_of_ranks(loss, k):
    """Sharded over COMM, every rank reaches the single-process model of the full data."""
    X, y, _, _ = make_problem(loss, k, 1001, 7, np.float64, seed=5)
    params = dict(lr=0.2, max_iter=15, momentum=0.5, seed=2,
                  privacy=DPSGD(0.3, 1.0, 0.07, delta=1e-5))
    serial = DistributedGD(loss, comm=LocalComm(), **params).fit(X, y)
    model = DistributedGD(loss, comm=COMM, **params).fit(*shard(X, y))
    np.testing.assert_allclose(model.coef_, serial.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.intercept_, serial.intercept_, rtol=1e-10, atol=1e-12)
    for mine, ref in zip(model.history_, serial.history_):
        assert mine["batch_size"] == ref["batch_size"]
        assert mine["clipped_fraction"] == ref["clipped_fraction"]
        assert mine["epsilon"] == ref["epsilon"]
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-10)


@pytest.mark.mpi
def test_privacy_checked_on_every_rank():
    X, y, _, _ = make_problem("squared", 1, 50, 3, np.float64)
    with pytest.raises(ValueError, match="batch_size"):
        DistributedGD(batch_size=5, privacy=DPSGD(1.0, 1.0, 0.1), comm=COMM).fit(*shard(X, y))
