"""Communicator collectives, written once for any size (run plainly and under mpiexec)."""
import numpy as np
import pytest

from cyfed.comm import Communicator, LocalComm, get_comm

COMM = get_comm()


def test_local_comm_is_a_communicator():
    assert isinstance(LocalComm(), Communicator)
    assert isinstance(COMM, Communicator)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_allreduce_sum_in_place(dtype):
    buf = np.arange(5, dtype=dtype) * (COMM.rank + 1)
    out = COMM.allreduce_sum(buf)
    assert out is buf
    np.testing.assert_array_equal(buf, np.arange(5) * sum(range(1, COMM.size + 1)))


@pytest.mark.mpi
def test_bcast_from_each_root():
    for root in range(COMM.size):
        buf = np.full(4, float(COMM.rank))
        COMM.bcast(buf, root=root)
        np.testing.assert_array_equal(buf, float(root))
        assert COMM.bcast_obj({"r": COMM.rank}, root=root) == {"r": root}


@pytest.mark.mpi
def test_gather_and_gatherv_in_rank_order():
    got = COMM.gather(np.array([COMM.rank, 10 * COMM.rank], dtype=np.float64))
    mine = np.arange(COMM.rank + 1, dtype=np.float32) + 100 * COMM.rank   # ragged
    flat, counts = COMM.gatherv(mine)
    assert counts == [r + 1 for r in range(COMM.size)]
    if COMM.rank == 0:
        np.testing.assert_array_equal(got, [[r, 10 * r] for r in range(COMM.size)])
        want = np.concatenate([np.arange(r + 1) + 100 * r for r in range(COMM.size)])
        np.testing.assert_array_equal(flat, want)
        assert flat.dtype == np.float32
    else:
        assert got is None and flat is None


@pytest.mark.mpi
def test_allgather_obj_in_rank_order():
    assert COMM.allgather_obj(COMM.rank * 2) == [2 * r for r in range(COMM.size)]
