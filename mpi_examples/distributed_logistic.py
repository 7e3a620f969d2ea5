"""Data-parallel logistic regression on a generated 1,000,000 x 50 problem.

    mpiexec -n 4 python mpi_examples/distributed_logistic.py [--rows N] [--iters T]

Each rank generates only its own rows: the rows are produced in fixed blocks
seeded by the block index, so the global data set (and the trained model) is
the same for any number of ranks.  Every iteration does one fused gradient
pass per rank and one Allreduce; rank 0 prints the loss and the time per
iteration.  Use --threads to set OpenMP threads per rank (default 1).
"""
import argparse
import time

import numpy as np

from cyfed.comm import get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD

BLOCK = 10_000


def generated_rows(start, stop, d, seed=0):
    """Rows start..stop-1 of the global problem, made block by block."""
    truth = np.random.default_rng([seed, 0]).standard_normal(d)
    X = np.empty((stop - start, d))
    y = np.empty(stop - start)
    for b in range(start // BLOCK, (stop - 1) // BLOCK + 1 if stop > start else 0):
        rng = np.random.default_rng([seed, 1, b])
        Xb = rng.standard_normal((BLOCK, d))
        yb = (Xb @ truth + rng.standard_normal(BLOCK) > 0).astype(float)
        lo, hi = max(start, b * BLOCK), min(stop, (b + 1) * BLOCK)
        X[lo - start:hi - start] = Xb[lo - b * BLOCK:hi - b * BLOCK]
        y[lo - start:hi - start] = yb[lo - b * BLOCK:hi - b * BLOCK]
    return X, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    comm = get_comm()
    rows = shard_rows(args.rows, comm.rank, comm.size)
    X, y = generated_rows(rows.start, rows.stop, args.features)
    model = DistributedGD("logistic", lr=2.0, max_iter=args.iters, l2=1e-5,
                          n_threads=args.threads, comm=comm)
    comm.barrier()
    start = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - start
    if comm.rank == 0:
        print(f"{args.rows} x {args.features} over {comm.size} rank(s), "
              f"{args.threads} thread(s) each")
        previous = 0.0
        for h in model.history_:
            print(f"iter {h['iter']:3d}  loss {h['loss']:.8f}  "
                  f"{(h['seconds'] - previous) * 1e3:7.2f} ms")
            previous = h["seconds"]
        print(f"mean {seconds / model.n_iter_ * 1e3:.2f} ms per iteration")


if __name__ == "__main__":
    main()
