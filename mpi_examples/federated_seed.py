"""Federated averaging of the seed's least-squares data over two clients.

    mpiexec -n 2 python mpi_examples/federated_seed.py
    python mpi_examples/federated_seed.py

The rows of the seed example (X = [[1, 2], [2, 3], [3, 4]], y = [1, 2, 3]) are
split over two clients ([rows 0, 1] and [row 2]); each round both clients run
one local full-batch gradient step (lr 0.01, squared loss, no intercept) from
the global model and the server averages them weighted by their row counts
(FedAvg).  That is FedSGD: after 1000 rounds the global theta equals the
centralised gradient-descent answer [0.73444079 0.18403266] -- the
aggregation the seed's two-client sketch leaves out.  Rank 0 prints it.
"""
import numpy as np

from cyfed.comm import get_comm
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg

comm = get_comm()
X = np.array([[1.0, 2.0], [2.0, 3.0], [3.0, 4.0]])
y = np.array([1.0, 2.0, 3.0])
clients = [(X[:2], y[:2]), (X[2:], y[2:])]
trainer = FederatedTrainer(FedAvg(), rounds=1000, local_epochs=1, batch_size=None, lr=0.01,
                           fit_intercept=False, comm=comm).fit(clients)
if comm.rank == 0:
    print(f"ranks={comm.size} global theta = {np.array2string(trainer.coef_, precision=8)}")
