"""Compressed gradients in DistributedGD (compression=, error_feedback=) and allgatherv.

Tests marked `mpi` shard their data over `cyfed.comm.get_comm()` with
`cyfed.data.shard_rows` and hold for any number of ranks; run them plainly and
under `mpiexec -n 2` / `-n 4`.
"""
import numpy as np
import pytest

from cyfed import compress
from cyfed.comm import CountingComm, LocalComm, get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD, DivergenceError
from cyfed.privacy import DPSGD
from reference import interrupted_and_resumed

COMM = get_comm()
SCALARS_NBYTES = 5 * 8      # loss sum, weight sum, clipped count, error flag, encode flag


def squared_problem(n=400, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X @ rng.standard_normal(d) + 0.5 + 0.1 * rng.standard_normal(n)


def softmax_problem(n=300, d=6, k=3, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    scores = X @ rng.standard_normal((d, k)) + rng.gumbel(size=(n, k))
    return X, scores.argmax(axis=1).astype(np.float64)


def shard(*arrays):
    rows = shard_rows(len(arrays[0]), COMM.rank, COMM.size)
    return [a[rows] for a in arrays]


def fitted(model):
    return np.r_[np.ravel(model.coef_), np.ravel(model.intercept_)]


# -- allgatherv -------------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("known", [False, True], ids=["exchanged", "known"])
def test_allgatherv_concatenates_every_rank_in_order_and_is_counted(known):
    comm = CountingComm(COMM)
    lengths = [r + 1 for r in range(COMM.size)]
    mine = np.full(lengths[COMM.rank], COMM.rank, dtype=np.uint8)
    out, counts = comm.allgatherv(mine, lengths if known else None)
    np.testing.assert_array_equal(out, np.repeat(np.arange(COMM.size), lengths))
    assert counts == lengths
    expected = (mine.nbytes, out.nbytes) if COMM.size > 1 else (0, 0)
    assert (comm.bytes_sent, comm.bytes_received) == expected


def test_allgatherv_refuses_counts_that_do_not_match_the_buffer():
    with pytest.raises(ValueError, match="counts"):
        LocalComm().allgatherv(np.zeros(3), [2])
    with pytest.raises(ValueError, match="counts"):
        LocalComm().allgatherv(np.zeros(3), [3, 3])


# -- trajectories ---------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("compressor,rtol", [(compress.FP16(), 2e-3), (compress.BF16(), 2e-2)],
                         ids=["fp16", "bf16"])
def test_16_bit_gradients_stay_close_to_uncompressed(compressor, rtol):
    X, y = squared_problem()
    make = lambda **kw: DistributedGD(lr=0.05, max_iter=20, momentum=0.5,  # noqa: E731
                                      comm=COMM, **kw)
    exact = make().fit(*shard(X, y))
    half = make(compression=compressor).fit(*shard(X, y))
    # each rank's gradient sums are rounded to 2^-11 (fp16) or 2^-8 (bf16) relative
    np.testing.assert_allclose(fitted(half), fitted(exact), rtol=rtol)
    np.testing.assert_allclose([h["loss"] for h in half.history_],
                               [h["loss"] for h in exact.history_], rtol=rtol)
    assert not np.array_equal(fitted(half), fitted(exact))


@pytest.mark.mpi
@pytest.mark.parametrize("make_compressor", [
    lambda m, k: compress.TopK(m),              # every coordinate, sent as float32
    lambda m, k: compress.PowerSGD(k),          # full rank: exact up to rounding
], ids=["topk-all", "powersgd-full-rank"])
def test_lossless_compressors_give_the_uncompressed_trajectory(make_compressor):
    X, y = softmax_problem()
    d, k = X.shape[1], 3
    make = lambda **kw: DistributedGD("softmax", lr=0.5, max_iter=40,  # noqa: E731
                                      momentum=0.9, nesterov=True, batch_size=64, seed=3,
                                      comm=COMM, **kw)
    exact = make().fit(*shard(X, y))
    model = make(compression=make_compressor(d * k + k, k)).fit(*shard(X, y))
    # float32 wire rounding of every rank's sums (2^-24 relative), carried over 40 steps
    np.testing.assert_allclose(fitted(model), fitted(exact), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h["grad_norm"] for h in model.history_],
                               [h["grad_norm"] for h in exact.history_], rtol=1e-5)


@pytest.mark.mpi
def test_error_feedback_top_1_percent_reaches_least_squares_and_plain_top_k_does_not():
    rng = np.random.default_rng(0)
    n, d = 2000, 200
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.5 + 0.1 * rng.standard_normal(n)
    A = np.column_stack([X, np.ones(n)])
    solution = np.linalg.lstsq(A, y, rcond=None)[0]
    make = lambda ef: DistributedGD(lr=0.005, max_iter=1500,  # noqa: E731
                                    compression=compress.TopK(0.01), error_feedback=ef,
                                    comm=COMM)
    error = {ef: np.linalg.norm(fitted(make(ef).fit(*shard(X, y))) - solution)
             / np.linalg.norm(solution) for ef in (True, False)}
    # top-k alone moves the flat directions only when they are picked (k/d of the
    # steps); error feedback delays them instead, close to plain GD's 1500 steps
    assert error[True] < 5e-3
    assert error[False] > 0.3


@pytest.mark.mpi
def test_every_rank_holds_the_same_model_and_a_seed_reproduces_it():
    X, y = squared_problem(d=40)
    make = lambda seed: DistributedGD(lr=0.05, max_iter=30, seed=seed,  # noqa: E731
                                      compression=compress.RandK(8), comm=COMM)
    model = make(0).fit(*shard(X, y))
    for other in COMM.allgather_obj(fitted(model)):
        np.testing.assert_array_equal(other, fitted(model))
    np.testing.assert_array_equal(fitted(make(0).fit(*shard(X, y))), fitted(model))
    assert not np.array_equal(fitted(make(1).fit(*shard(X, y))), fitted(model))


# -- bytes ----------------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("compressor", [
    compress.FP16(), compress.BF16(), compress.QSGD(4), compress.TopK(0.1), compress.RandK(3),
    compress.ScaledSign(), compress.PowerSGD(1)], ids=repr)
def test_bytes_per_step_are_the_payloads_and_the_scalars(compressor):
    X, y = softmax_problem()
    d, k = X.shape[1], 3
    model = DistributedGD("softmax", lr=0.1, max_iter=3, compression=compressor,
                          error_feedback=not isinstance(compressor, (compress.RandK,
                                                                     compress.QSGD)),
                          comm=COMM).fit(*shard(X, y))
    shape = (d + 1, k) if isinstance(compressor, compress.PowerSGD) else d * k + k
    payload = compressor.max_payload_nbytes(shape, np.float32)
    P = COMM.size
    sent, received = ((SCALARS_NBYTES + payload, SCALARS_NBYTES + P * payload) if P > 1
                      else (0, 0))
    assert [(h["bytes_sent"], h["bytes_received"]) for h in model.history_] == \
        [(sent, received)] * 3
    uncompressed = DistributedGD("softmax", lr=0.1, max_iter=1, comm=COMM).fit(*shard(X, y))
    assert uncompressed.history_[0]["bytes_sent"] == (8 * (d * k + k + 4) if P > 1 else 0)


# -- checkpoints ----------------------------------------------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("loss,compressor,ef", [
    ("squared", compress.TopK(2), True),
    ("softmax", compress.PowerSGD(2), True),
    ("squared", compress.QSGD(2), False),
], ids=["topk-ef", "powersgd-ef", "qsgd"])
def test_resume_with_residuals_ends_bit_identical(tmp_path, loss, compressor, ef):
    X, y = squared_problem(d=12) if loss == "squared" else softmax_problem()
    make = lambda **kw: DistributedGD(loss, lr=0.05, max_iter=30,  # noqa: E731
                                      momentum=0.8, batch_size=64, compression=compressor,
                                      error_feedback=ef, comm=COMM, **kw)
    path = tmp_path / "compressed.npz"
    full, resumed = interrupted_and_resumed(make, shard(X, y), path, 5)
    np.testing.assert_array_equal(fitted(resumed), fitted(full))
    assert resumed.history_ == [{**h, "seconds": r["seconds"]}
                                for h, r in zip(full.history_, resumed.history_)]
    with pytest.raises(ValueError, match="another configuration"):
        DistributedGD(loss, lr=0.05, max_iter=30, momentum=0.8, batch_size=64,
                      compression=compressor, error_feedback=not ef, comm=COMM,
                      checkpoint=path, resume=True).fit(*shard(X, y))


@pytest.mark.mpi
def test_checkpoint_holds_every_ranks_residual(tmp_path):
    from cyfed import checkpoint

    X, y = squared_problem(d=12)
    path = tmp_path / "residuals.npz"
    DistributedGD(lr=0.05, max_iter=4, compression=compress.TopK(1), error_feedback=True,
                  comm=COMM, checkpoint=path).fit(*shard(X, y))
    if COMM.rank == 0:
        arrays, _ = checkpoint.load(path)
        residuals = arrays["compression"]["residuals"]
        assert sorted(residuals) == sorted(str(r) for r in range(COMM.size))
        assert all(r.shape == (13,) and r.dtype == np.float32 and np.any(r)
                   for r in residuals.values())


# -- errors ---------------------------------------------------------------------------

@pytest.mark.mpi
def test_divergence_is_reported_on_every_rank():
    X, y = squared_problem()
    with pytest.raises(DivergenceError):
        DistributedGD(lr=50.0, max_iter=200, compression=compress.TopK(3),
                      error_feedback=True, comm=COMM).fit(*shard(X, y))


@pytest.mark.parametrize("params,error,match", [
    (dict(compression="topk"), TypeError, "compression must be"),
    (dict(compression=compress.FP16(), error_feedback="yes"), TypeError, "error_feedback"),
    (dict(error_feedback=True), ValueError, "error_feedback needs compression"),
    (dict(compression=compress.FP16(), privacy=DPSGD(1.0, 1.0, 0.1)), ValueError, "privacy"),
    (dict(compression=compress.FP16(), local_steps=2), ValueError, "local_steps=1"),
    (dict(compression=compress.FP16(), overlap=True), ValueError, "overlap=False"),
    (dict(compression=compress.RandK(2), error_feedback=True), ValueError, "contractive"),
    (dict(compression=compress.PowerSGD(2)), ValueError, "PowerSGD rank"),
    (dict(compression=compress.TopK(10)), ValueError, "k must be <="),
])
def test_bad_compression_parameters(params, error, match):
    X, y = squared_problem(n=30, d=2)
    with pytest.raises(error, match=match):
        DistributedGD(**params).fit(X, y)
