"""Cross-validated grid searches over MPI ranks: rows sharded, clients in place.

    mpiexec -n 4 python mpi_examples/grid_search.py [--rows N] [--clients M]

1. An L2 path for `cyfed.linear_model.LogisticRegression` (warm-started from the
   strongest penalty) on rows sharded over the ranks: the folds are cut by global
   row index, so the table is the same for any number of ranks.
2. A learning-rate grid for `DistributedGD(solver="gd")`, with lr="auto" (1/L)
   among the candidates.
3. FedAvg's learning rate and FedProx's mu by folds of held-out clients, each
   client's rows staying on the rank that hosts it.

Rank 0 prints each grid table and the best candidate; the last line, the best
scores, is the same for 1, 2, 3 or 4 ranks.
"""
import argparse

import numpy as np

from cyfed.comm import get_comm
from cyfed.data import make_fedprox_synthetic, shard_rows
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer
from cyfed.linear_model import LogisticRegression
from cyfed.model_selection import GridSearchCV
from cyfed.strategies import FedAvg, FedProx


def shard(n, d, comm, seed=0):
    """This rank's rows of one global problem (the same data for any rank count)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.linspace(0.2, 3.0, d)
    y = (X @ rng.standard_normal(d) + rng.standard_normal(n) > 0).astype(int)
    rows = shard_rows(n, comm.rank, comm.size)
    return X[rows], y[rows]


def report(comm, title, search):
    """Rank 0: the grid table, best first."""
    if comm.rank != 0:
        return
    print(f"\n{title}: best {search.best_params_}, score {search.best_score_:.4f}")
    rows = sorted(search.to_table(), key=lambda r: r["rank_test_score"])
    names = [k for k in rows[0] if k.startswith("param_")]
    iters = "mean_n_iter" in rows[0]
    print("rank  mean    std     " + "  ".join(n[6:] for n in names)
          + ("  iterations" if iters else ""))
    for r in rows:
        params = "  ".join("-" if r[n] is None else str(r[n]) for n in names)
        print(f"{r['rank_test_score']:4d}  {r['mean_test_score']:.4f}  {r['std_test_score']:.4f}  "
              f"{params}" + (f"  {r['mean_n_iter']:.1f}" if iters else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    comm = get_comm()
    X, y = shard(args.rows, 20, comm)

    path = GridSearchCV(LogisticRegression(tol=1e-6), {"C": np.logspace(-4, 1, 6).tolist()},
                        cv=5).fit(X, y)
    report(comm, "LogisticRegression, L2 path", path)

    rates = GridSearchCV(DistributedGD("logistic", max_iter=50),
                         {"lr": [0.01, 0.1, 1.0, 10.0, "auto"]}, cv=3).fit(X, y)
    report(comm, "DistributedGD(solver='gd'), learning rate", rates)

    clients = make_fedprox_synthetic(n_devices=args.clients, iid=True, seed=1)
    trainer = FederatedTrainer(FedAvg(), "softmax", rounds=10, local_epochs=2, batch_size=10,
                               fraction=0.5)
    fed = GridSearchCV(trainer, [{"lr": [0.003, 0.03]},
                                 {"strategy": [FedProx(mu=0.01), FedProx(mu=1.0)], "lr": [0.03]}],
                       cv=4).fit(clients)
    report(comm, "FederatedTrainer, folds of clients", fed)
    if comm.rank == 0:
        print(f"\nbest scores: {path.best_score_:.6f} {rates.best_score_:.6f} "
              f"{fed.best_score_:.6f}")


if __name__ == "__main__":
    main()
