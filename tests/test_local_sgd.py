"""Local SGD (DistributedGD(local_steps=H, overlap=...)) and byte accounting.

Tests marked `mpi` shard their data over `cyfed.comm.get_comm()` with
`cyfed.data.shard_rows`, so every rank knows the whole shard layout and checks
the run against a numpy simulation of all the shards; run them plainly and under
`mpiexec -n 2` / `-n 4`.
"""
import numpy as np
import pytest

from cyfed.comm import CountingComm, LocalComm, get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD
from cyfed.privacy import DPSGD
from reference import interrupted_and_resumed

COMM = get_comm()


def problem(n=400, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X @ rng.standard_normal(d) + 0.5 + 0.1 * rng.standard_normal(n)


def layout(n, size=COMM.size):
    """Every rank's row range of n rows (what `shard` hands out)."""
    return [shard_rows(n, r, size) for r in range(size)]


def shard(*arrays):
    rows = layout(len(arrays[0]))[COMM.rank]
    return [a[rows] for a in arrays]


def local_sgd_reference(X, y, shards, H, T, lr, momentum=0.0, l2=0.0, batch_size=None,
                        seed=0, overlap=False, w=None):
    """Squared-loss local SGD on simulated shards, written out plainly.

    Each shard steps on its rows (or its part of the global batch drawn for
    (seed, t)) for H steps, then the states [theta, v] are averaged with weights
    W_r / W (the shards' sums of the sample weights w, unit by default); with
    overlap each shard keeps its progress on top of the previous average
    (CoCoD-SGD) and the last round ends in a plain average.
    """
    N, d = X.shape
    A = np.column_stack([X, np.ones(N)])
    w = np.ones(N) if w is None else w
    share = np.array([w[s].sum() for s in shards]) / w.sum()
    state = np.zeros((len(shards), 2, d + 1))           # per shard: [theta, velocity]
    pending = None
    for t0 in range(0, T, H):
        for t in range(t0, min(t0 + H, T)):
            rng = np.random.default_rng([seed, t])
            drawn = (np.arange(N) if batch_size is None
                     else np.sort(rng.choice(N, batch_size, replace=False)))
            for r, s in enumerate(shards):
                rows = drawn[(drawn >= s.start) & (drawn < s.stop)]
                if len(rows) == 0:
                    continue
                theta, v = state[r]
                g = 2 * A[rows].T @ (w[rows] * (A[rows] @ theta - y[rows])) / w[rows].sum()
                g[:d] += l2 * theta[:d]
                v[:] = momentum * v + g
                theta -= lr * (v if momentum else g)
        if pending is not None:
            average, snapshot = pending
            state = average + (state - snapshot)
        if overlap and t0 + H < T:
            pending = (np.tensordot(share, state, axes=1), state.copy())
        else:
            state[:] = np.tensordot(share, state, axes=1)
            pending = None
    return state[0, 0]


def fitted(model):
    return np.r_[model.coef_, model.intercept_]


@pytest.mark.mpi
def test_one_local_step_is_the_synchronous_algorithm():
    """H = 1 takes the gradient-Allreduce path: bit-identical to the default, and plain GD."""
    X, y = problem()
    default = DistributedGD(lr=0.05, max_iter=30, momentum=0.5, comm=COMM).fit(*shard(X, y))
    h1 = DistributedGD(lr=0.05, max_iter=30, momentum=0.5, local_steps=1,
                       comm=COMM).fit(*shard(X, y))
    np.testing.assert_array_equal(fitted(h1), fitted(default))
    assert [h["loss"] for h in h1.history_] == [h["loss"] for h in default.history_]
    np.testing.assert_allclose(fitted(h1), local_sgd_reference(X, y, [slice(0, len(y))], 1, 30,
                                                               0.05, momentum=0.5), rtol=1e-10)


@pytest.mark.mpi
@pytest.mark.parametrize("overlap", [False, True], ids=["blocking", "overlap"])
@pytest.mark.parametrize("H,momentum,batch_size", [(2, 0.0, None), (8, 0.0, None),
                                                   (4, 0.9, None), (3, 0.0, 64), (5, 0.5, 48)])
def test_local_sgd_matches_a_numpy_simulation_of_the_shards(H, momentum, batch_size, overlap):
    X, y = problem(n=403)                       # uneven shards: the averaging weights matter
    w = np.random.default_rng(5).uniform(0.2, 3.0, len(y))
    model = DistributedGD(lr=0.03, max_iter=29, momentum=momentum, l2=0.01,
                          batch_size=batch_size, seed=3, local_steps=H, overlap=overlap,
                          comm=COMM).fit(*shard(X, y, w))
    expected = local_sgd_reference(X, y, [slice(r.start, r.stop) for r in layout(len(y))], H,
                                   29, 0.03, momentum, 0.01, batch_size, seed=3, overlap=overlap,
                                   w=w)
    np.testing.assert_allclose(fitted(model), expected, rtol=1e-10, atol=1e-12)
    assert model.n_iter_ == 29
    assert [h["iter"] for h in model.history_] == list(range(0, 29, H))
    if COMM.size > 1 and H > 1 and batch_size is None:  # shards see different data: H matters
        sync = DistributedGD(lr=0.03, max_iter=29, momentum=momentum, l2=0.01,
                             comm=COMM).fit(*shard(X, y, w))
        assert not np.allclose(fitted(model), fitted(sync), rtol=1e-8)


@pytest.mark.mpi
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_local_steps_divide_the_bytes(momentum):
    """Bytes per record are the Allreduce buffers' sizes; H = 8 sends 1/8 as many buffers."""
    X, y = problem(d=7)
    m = 7 + 1
    runs = {H: DistributedGD(lr=0.01, max_iter=40, momentum=momentum, local_steps=H,
                             comm=COMM).fit(*shard(X, y)) for H in (1, 8)}
    per_record = {1: (m + 4) * 8, 8: ((2 * m if momentum else m) + 3) * 8}
    for H, model in runs.items():
        assert len(model.history_) == 40 // H
        for h in model.history_:
            assert h["bytes_sent"] == h["bytes_received"] == (per_record[H] if COMM.size > 1
                                                              else 0)
    total = {H: sum(h["bytes_sent"] for h in model.history_) for H, model in runs.items()}
    assert total == ({1: 40 * per_record[1], 8: 5 * per_record[8]} if COMM.size > 1
                     else {1: 0, 8: 0})


def test_partial_last_round_is_one_more_average():
    X, y = problem()
    model = DistributedGD(lr=0.01, max_iter=21, local_steps=8, comm=ClaimsSize(2)).fit(X, y)
    assert [h["iter"] for h in model.history_] == [0, 8, 16]
    assert [h["bytes_sent"] for h in model.history_] == [(6 + 3) * 8] * 3


class ClaimsSize(LocalComm):
    """A one-process communicator that claims `size` ranks (its collectives stay identities)."""

    def __init__(self, size):
        self.size = size


def test_counting_comm_counts_the_buffers_handed_over():
    comm = CountingComm(ClaimsSize(3))
    buf = np.zeros(10)
    comm.allreduce_sum(buf)
    assert (comm.bytes_sent, comm.bytes_received) == (80, 80)
    comm.wait(comm.iallreduce_sum(np.zeros(5, dtype=np.float32)))
    assert (comm.bytes_sent, comm.bytes_received) == (100, 100)
    comm.bcast(buf, root=0)                         # rank 0 is root: it sends
    comm.bcast(buf, root=1)                         # and receives from another root
    assert (comm.bytes_sent, comm.bytes_received) == (180, 180)
    comm.gather(np.zeros(2), root=0)
    assert (comm.bytes_sent, comm.bytes_received) == (196, 196)
    assert comm.rank == 0 and comm.size == 3 and comm.allgather_obj("x") == ["x"]
    single = CountingComm(LocalComm())
    single.allreduce_sum(buf)
    assert (single.bytes_sent, single.bytes_received) == (0, 0)


def test_overlap_on_one_process_is_local_gd_up_to_rounding():
    """With one rank the average is the model itself: overlap only reorders a subtraction."""
    X, y = problem()
    plain = DistributedGD(lr=0.05, max_iter=40, local_steps=4).fit(X, y)
    overlapped = DistributedGD(lr=0.05, max_iter=40, local_steps=4, overlap=True).fit(X, y)
    sync = DistributedGD(lr=0.05, max_iter=40).fit(X, y)
    np.testing.assert_array_equal(fitted(plain), fitted(sync))
    np.testing.assert_allclose(fitted(overlapped), fitted(plain), rtol=1e-13)


@pytest.mark.mpi
@pytest.mark.parametrize("overlap", [False, True], ids=["blocking", "overlap"])
def test_local_sgd_converges_near_least_squares(overlap):
    X, y = problem(n=2000, d=6, seed=1)
    solution = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)[0]
    model = DistributedGD(lr=0.02, max_iter=800, local_steps=8, overlap=overlap,
                          comm=COMM).fit(*shard(X, y))
    losses = np.array([h["loss"] for h in model.history_])
    # with overlap the recorded loss mixes the ranks' own models: it may wobble by
    # ~1e-11 relative at the fixed point
    assert np.all(np.diff(losses) <= 1e-9 * losses[0]) and losses[-1] < 1e-2 * losses[0]
    assert np.max(np.abs(fitted(model) - solution)) <= 1e-3 * np.max(np.abs(solution))


@pytest.mark.mpi
def test_tolerances_are_checked_at_averages():
    X, y = problem()
    model = DistributedGD(lr=0.05, max_iter=5000, gtol=1e-6, local_steps=4,
                          comm=COMM).fit(*shard(X, y))
    assert model.n_iter_ < 5000 and model.n_iter_ % 4 == 0
    assert model.history_[-1]["grad_norm"] <= 1e-6 < model.history_[-2]["grad_norm"]
    by_loss = DistributedGD(lr=0.05, max_iter=5000, tol=1e-10, local_steps=4, overlap=True,
                            comm=COMM).fit(*shard(X, y))
    assert by_loss.n_iter_ < 5000 and by_loss.n_iter_ % 4 == 0


def test_pseudo_gradient_is_the_gradient_norm_for_one_process_without_momentum():
    X, y = problem()
    sync = DistributedGD(lr=0.05, max_iter=10, comm=LocalComm()).fit(X, y)
    averaged = DistributedGD(lr=0.05, max_iter=10, overlap=True, comm=LocalComm()).fit(X, y)
    np.testing.assert_allclose([h["grad_norm"] for h in averaged.history_],
                               [h["grad_norm"] for h in sync.history_], rtol=1e-9)


@pytest.mark.mpi
def test_resumed_local_sgd_ends_bit_identical(tmp_path):
    X, y = problem()
    make = lambda **kw: DistributedGD(lr=0.05, max_iter=30, local_steps=4,  # noqa: E731
                                      momentum=0.8, batch_size=64, comm=COMM, **kw)
    path = tmp_path / "local.npz"
    full, resumed = interrupted_and_resumed(make, shard(X, y), path, 5)
    np.testing.assert_array_equal(fitted(resumed), fitted(full))
    assert resumed.n_iter_ == full.n_iter_ == 30
    assert resumed.history_ == [{**h, "seconds": r["seconds"]}
                                for h, r in zip(full.history_, resumed.history_)]
    with pytest.raises(ValueError, match="another configuration"):
        DistributedGD(lr=0.05, max_iter=30, local_steps=2, momentum=0.8, batch_size=64,
                      comm=COMM, checkpoint=path, resume=True).fit(*shard(X, y))


@pytest.mark.parametrize("params,match", [
    (dict(local_steps=0), "local_steps.*H < 1"), (dict(local_steps=-3), "local_steps"),
    (dict(local_steps=2.0), "local_steps"), (dict(local_steps=True), "local_steps"),
    (dict(overlap="yes"), "overlap"),
    (dict(local_steps=2, privacy=DPSGD(1.0, 1.0, 0.1)), "privacy needs local_steps=1"),
    (dict(overlap=True, privacy=DPSGD(1.0, 1.0, 0.1)), "privacy needs local_steps=1"),
    (dict(overlap=True, checkpoint="x.npz"), "checkpoint.*overlap"),
])
def test_bad_local_sgd_parameters(params, match):
    X, y = problem(n=30, d=2)
    with pytest.raises(ValueError, match=match):
        DistributedGD(**params).fit(X, y)
