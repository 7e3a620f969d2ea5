"""comm=None under mpiexec: the trainers train one model over every rank.

Replays what a user did (issue 13): wrote ``DistributedGD(...).fit(X_shard,
y_shard)`` with no ``comm`` and launched ``mpiexec -n 4``.  Before, every rank
silently trained its own model on its own shard; now the default communicator
is MPI's world, so every rank holds the model of the whole data -- the one a
single process trains on all rows.  ``comm=LocalComm()`` keeps per-rank models.
"""
import json

import numpy as np
import pytest

from cyfed.comm import LocalComm
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg
from test_mpi_launch import MPIEXEC, mpirun

pytestmark = pytest.mark.skipif(MPIEXEC is None or pytest.importorskip("mpi4py") is None,
                                reason="needs mpiexec and mpi4py")

DATA = """
import json, sys
import numpy as np
from cyfed.data import shard_rows
rng = np.random.default_rng(0)
X = rng.standard_normal((400, 5))
y = (X @ np.arange(1.0, 6.0) + 0.3 * rng.standard_normal(400) > 0).astype(float)


def report(rank, **values):
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as fh:
        json.dump({"rank": rank, **values}, fh)
"""


def whole_data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5))
    y = (X @ np.arange(1.0, 6.0) + 0.3 * rng.standard_normal(400) > 0).astype(float)
    return X, y


def ranks_output(proc, tmp_path):
    """What each rank wrote with `report` (stdout lines of ranks may interleave)."""
    assert proc.returncode == 0, proc.stderr
    return [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]


def test_distributed_gd_without_comm_under_mpiexec_trains_one_model(tmp_path):
    proc, _ = mpirun(4, DATA + """
from cyfed.comm import get_comm
from cyfed.distributed import DistributedGD
from mpi4py import MPI
rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
part = shard_rows(len(y), rank, size)
model = DistributedGD("logistic", lr=0.5, max_iter=50).fit(X[part], y[part])
report(rank, coef=model.coef_.tolist(), intercept=model.intercept_,
       score=model.score(X[part], y[part]))
""", tmp_path, str(tmp_path), timeout=120)
    out = ranks_output(proc, tmp_path)
    assert len(out) == 4
    X, y = whole_data()
    one = DistributedGD("logistic", lr=0.5, max_iter=50, comm=LocalComm()).fit(X, y)
    for rank in out:
        np.testing.assert_allclose(rank["coef"], one.coef_, rtol=1e-10, atol=1e-12)
        assert rank["intercept"] == pytest.approx(one.intercept_, rel=1e-10, abs=1e-12)
        assert rank["score"] == pytest.approx(one.score(X, y))


def test_local_comm_under_mpiexec_keeps_one_model_per_rank(tmp_path):
    proc, _ = mpirun(2, DATA + """
from cyfed.comm import LocalComm
from cyfed.distributed import DistributedGD
from mpi4py import MPI
rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
part = shard_rows(len(y), rank, size)
model = DistributedGD("logistic", lr=0.5, max_iter=50, comm=LocalComm()).fit(X[part], y[part])
report(rank, coef=model.coef_.tolist())
""", tmp_path, str(tmp_path), timeout=120)
    out = ranks_output(proc, tmp_path)
    X, y = whole_data()
    for rank in out:
        part = slice(*[(0, 200), (200, 400)][rank["rank"]])
        own = DistributedGD("logistic", lr=0.5, max_iter=50, comm=LocalComm()).fit(X[part],
                                                                                 y[part])
        np.testing.assert_allclose(rank["coef"], own.coef_, rtol=1e-12)
    assert not np.allclose(out[0]["coef"], out[1]["coef"])


def test_federated_trainer_without_comm_under_mpiexec_spreads_the_clients(tmp_path):
    proc, _ = mpirun(3, DATA + """
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg
from mpi4py import MPI
clients = [(X[i::8], y[i::8]) for i in range(8)]
trainer = FederatedTrainer(FedAvg(), "logistic", rounds=3, lr=0.1).fit(clients)
report(MPI.COMM_WORLD.Get_rank(), theta=trainer.theta_.tolist(),
       bytes=sum(r["bytes_sent"] for r in trainer.history_))
""", tmp_path, str(tmp_path), timeout=120)
    out = ranks_output(proc, tmp_path)
    X, y = whole_data()
    clients = [(X[i::8], y[i::8]) for i in range(8)]
    one = FederatedTrainer(FedAvg(), "logistic", rounds=3, lr=0.1, comm=LocalComm()).fit(clients)
    assert len(out) == 3
    for rank in out:
        assert np.array_equal(rank["theta"], one.theta_)    # bit-identical
        assert rank["bytes"] > 0                              # the ranks did talk
