"""The source article's federated example 4.2, then what it leaves out: FedAvg.

    mpiexec -n 2 python mpi_examples/federated_seed.py
    python mpi_examples/federated_seed.py

Example 4.2 gives two clients, X1 = [[1, 2], [2, 3]], y1 = [1, 2] and
X2 = [[2, 3], [3, 4]], y2 = [2, 3], and trains each one alone: 1000 full-batch
gradient steps on its mean squared error, lr 0.01, from theta = 0, no intercept.
It prints theta1 = [0.5856082 0.25610822] and theta2 = [0.49427 0.36450956] and
stops there: two local models, no federation.  Here each client's model is
cyfed's DistributedGD on that client's rows alone, then the two clients train one
model together with FedAvg: every round both run one local full-batch step from
the global model and the server averages them weighted by their row counts
(FedSGD).  That is gradient descent on the pooled rows, which rank 0 prints
beside it; the federated model is bit-identical for any number of ranks.
"""
import numpy as np

from cyfed import io
from cyfed.comm import LocalComm, get_comm
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg

STEPS, LR = 1000, 0.01


def fmt(theta):
    return np.array2string(theta, precision=8)


comm = get_comm()
clients = io.builtin("seed-clients")
local = [DistributedGD(lr=LR, max_iter=STEPS, fit_intercept=False, comm=LocalComm())
         .fit(X, y).coef_ for X, y in clients]
fed = FederatedTrainer(FedAvg(), rounds=STEPS, local_epochs=1, batch_size=None, lr=LR,
                       fit_intercept=False, comm=comm).fit(clients)
pooled = DistributedGD(lr=LR, max_iter=STEPS, fit_intercept=False, comm=LocalComm()).fit(
    np.vstack([X for X, _ in clients]), np.concatenate([y for _, y in clients]))
if comm.rank == 0:
    print("article 4.2, each client alone (1000 GD steps, lr 0.01, from 0):")
    for i, theta in enumerate(local, 1):
        print(f"theta{i} = {fmt(theta)}")
    print(f"FedAvg over both clients, {STEPS} rounds of one local step, {comm.size} rank(s):")
    print(f"global theta = {fmt(fed.coef_)}  (exactly {fed.coef_.tolist()})")
    print(f"GD on the pooled rows:  {fmt(pooled.coef_)}")
