"""Sparse text over MPI: each rank parses only its share of a LIBSVM file's bytes.

    mpiexec -n 4 python mpi_examples/sparse_text.py [--clients N] [--path FILE]

The corpus: the Sent140-like clients of `cyfed.data.make_bag_of_words` (a
10,000-word vocabulary, ~20 tokens per row, Zipf token frequencies, power-law
client sizes), each split into train and test rows.  Two ways to train on it,
neither densifying anything:

* data-parallel: rank 0 writes the pooled training rows as one LIBSVM file
  (or --path names one), every rank reads only the lines of its 1/size of the
  file's bytes (`cyfed.data.load_shard`) into a CSR shard, and the ranks train
  L2-logistic regression with `DistributedGD(solver="auto")` -- no learning
  rate: L-BFGS over Allreduce on the sparse fused kernels;
* federated: FedAvg over the clients (spread over the ranks), local SGD in the
  compiled CSR loop, whose lazy L2 updates touch only a row's words.

Rank 0 prints the rows each rank parsed and both models' test accuracy.  The
distributed model is the same for any number of ranks (to rounding of the rank
sums), the federated one bit-identical.
"""
import argparse
import os
import tempfile

import numpy as np
import scipy.sparse as sp

from cyfed import io
from cyfed.comm import get_comm
from cyfed.data import load_shard, make_bag_of_words, split_devices
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer
from cyfed.strategies import FedAvg

L2 = 1e-4


def read_shard(comm, clients, path, n_features):
    """This rank's bytes of the LIBSVM file at `path` (written by rank 0 from the
    pooled rows of `clients` when path is None; n_features: the vocabulary, which
    the rows need not all use)."""
    with tempfile.TemporaryDirectory() as tmp:
        if path is None:
            path = os.path.join(tmp, "corpus.svm")
            if comm.rank == 0:
                io.save_svmlight(path, sp.vstack([X for X, _ in clients], format="csr"),
                                 np.concatenate([y for _, y in clients]))
            path = comm.bcast_obj(path)
        comm.barrier()
        shard = load_shard(path, comm=comm, n_features=n_features)
        comm.barrier()                  # every rank has read before rank 0 cleans up
    return shard


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--path", help="a LIBSVM file to train on instead (distributed)")
    args = parser.parse_args()
    comm = get_comm()
    clients, (X_test, y_test) = split_devices(make_bag_of_words(n_clients=args.clients,
                                                                seed=0))
    X, y = read_shard(comm, clients, args.path, None if args.path else X_test.shape[1])
    rows = comm.allgather_obj(X.shape[0])
    if comm.rank == 0:
        print(f"{sum(rows)} training rows x {X.shape[1]} words over {comm.size} rank(s) "
              f"(rows parsed per rank: {rows}), {len(clients)} clients")
    model = DistributedGD("logistic", l2=L2, comm=comm).fit(X, y)
    accuracy = model.score(X_test, y_test) if args.path is None else model.score(X, y)
    if comm.rank == 0:
        print(f"distributed, solver {model.solver_}: {model.n_iter_} iterations, "
              f"{'test' if args.path is None else 'training'} accuracy {accuracy:.4f}")
    fed = FederatedTrainer(FedAvg(), "logistic", rounds=30, clients_per_round=40,
                           local_epochs=2, batch_size=10, lr=1.0, l2=L2, seed=0,
                           comm=comm).fit(clients, test=(X_test, y_test))
    if comm.rank == 0:
        last = fed.history_[-1]
        print(f"federated FedAvg, 40 of {len(clients)} clients per round, 30 rounds: "
              f"test accuracy {last['test_accuracy']:.4f}")
        print(f"federated coef checksum {float(np.abs(fed.coef_).sum()):.17g}")


if __name__ == "__main__":
    main()
