"""Row placement (shard_rows) and memory-mapped shard loading (load_shard)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyfed.comm import LocalComm, get_comm
from cyfed.data import load_shard, shard_rows


class FakeComm(LocalComm):
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@given(n=st.integers(0, 10_000), size=st.integers(1, 64))
def test_shards_tile_the_rows_in_rank_order(n, size):
    slices = [shard_rows(n, r, size) for r in range(size)]
    assert slices[0].start == 0 and slices[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    lengths = [s.stop - s.start for s in slices]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize("rank,size", [(-1, 2), (2, 2), (0, 0)])
def test_shard_rows_rejects_bad_ranks(rank, size):
    with pytest.raises(ValueError, match="rank"):
        shard_rows(10, rank, size)


def write(tmp_path, X, y):
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "X.npy", tmp_path / "y.npy"


def test_load_shard_returns_this_ranks_rows(tmp_path):
    X = np.arange(70.0).reshape(35, 2)
    y = np.arange(35.0)
    paths = write(tmp_path, X, y)
    for size in (1, 3, 4):
        parts = [load_shard(*paths, FakeComm(r, size)) for r in range(size)]
        np.testing.assert_array_equal(np.vstack([p[0] for p in parts]), X)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
        assert all(p[0].flags.c_contiguous and not isinstance(p[0], np.memmap) for p in parts)


@pytest.mark.parametrize("X,y,match", [
    (np.zeros(5), np.zeros(5), "2-d"),
    (np.zeros((5, 2)), np.zeros(4), r"shape \(5,\)"),
])
def test_load_shard_checks_shapes(tmp_path, X, y, match):
    with pytest.raises(ValueError, match=match):
        load_shard(*write(tmp_path, X, y))


@pytest.mark.mpi
def test_load_shard_over_the_world(tmp_path_factory):
    comm = get_comm()
    # every rank writes the same files in its own directory, then loads its part
    X = np.random.default_rng(0).standard_normal((101, 3))
    y = np.arange(101.0)
    Xs, ys = load_shard(*write(tmp_path_factory.mktemp("shard"), X, y), comm)
    total = np.array([len(ys), ys.sum()])
    comm.allreduce_sum(total)
    assert total[0] == 101 and total[1] == y.sum()
    np.testing.assert_array_equal(Xs, X[shard_rows(101, comm.rank, comm.size)])
