"""Time per full-batch DistributedGD iteration beside the bare kernel, at P ranks.

    mpiexec -n 2 python benchmarks/mpi_gd_scaling.py [--rows 2000000 --features 50]

Each rank holds rows/P rows of a float64 problem and uses --threads OpenMP
threads (default 1).  Rank 0 prints the seconds per iteration of
`DistributedGD.fit` (one fused kernel pass + one Allreduce per iteration) and of
the bare kernel on the local shard (`cyfed.loss_grad`), best of --repeat fits.
Run it at P = 1 and P = 2 (and more on a bigger machine): parallel efficiency
= t(1) / (P t(P)); the trainer's overhead at P = 1 is fit / kernel.
"""
import argparse
import time

import numpy as np

import cyfed
from cyfed.comm import get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--loss", default="squared")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    comm = get_comm()
    rows = shard_rows(args.rows, comm.rank, comm.size)
    rng = np.random.default_rng([0, comm.rank])
    X = rng.standard_normal((rows.stop - rows.start, args.features))
    y = (X[:, 0] > 0).astype(float) if args.loss == "logistic" else X @ np.ones(args.features)
    coef = np.zeros(args.features)

    fit_times = []
    for _ in range(args.repeat):
        model = DistributedGD(args.loss, lr=0.01, max_iter=args.iters, n_threads=args.threads,
                              comm=comm)
        comm.barrier()
        start = time.perf_counter()
        model.fit(X, y)
        fit_times.append((time.perf_counter() - start) / args.iters)
    kernel_times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        for _ in range(args.iters):
            cyfed.loss_grad(args.loss, X, y, coef, 0.0, n_threads=args.threads)
        kernel_times.append((time.perf_counter() - start) / args.iters)
    fit_best = max(comm.allgather_obj(min(fit_times)))
    kernel_best = max(comm.allgather_obj(min(kernel_times)))
    if comm.rank == 0:
        print(f"{args.loss} {args.rows}x{args.features} float64, {comm.size} rank(s) x "
              f"{args.threads} thread(s): fit {fit_best * 1e3:.2f} ms/iter, bare kernel on the "
              f"local shard {kernel_best * 1e3:.2f} ms, fit/kernel {fit_best / kernel_best:.3f}")


if __name__ == "__main__":
    main()
