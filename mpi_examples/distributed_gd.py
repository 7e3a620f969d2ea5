"""The seed's example 4.1 as data-parallel gradient descent over MPI ranks.

    mpiexec -n 3 python mpi_examples/distributed_gd.py

X = [[1, 2], [2, 3], [3, 4]], y = [1, 2, 3], theta0 = 0, lr = 0.01, 1000
full-batch steps of the squared loss without intercept.  Each rank holds a
contiguous block of the rows (with 4 ranks, one holds none); each step sums
the ranks' gradients with one Allreduce.  Prints, from rank 0,
theta = [0.73444079 0.18403266] for any number of ranks (also without mpiexec).
"""
import numpy as np

from cyfed.comm import get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD

comm = get_comm()
X = np.array([[1, 2], [2, 3], [3, 4]])
y = np.array([1, 2, 3])
rows = shard_rows(len(y), comm.rank, comm.size)
model = DistributedGD(lr=0.01, max_iter=1000, fit_intercept=False, comm=comm)
model.fit(X[rows], y[rows])
if comm.rank == 0:
    print(f"ranks={comm.size} theta = {np.array2string(model.coef_, precision=8)}")
