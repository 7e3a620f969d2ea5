"""Time per full-batch DistributedGD iteration beside the bare kernel, at P ranks.

    mpiexec -n 2 python benchmarks/mpi_gd_scaling.py [--rows 2000000 --features 50]
        [--solver gd|lbfgs|newton-cg|newton-cholesky]

Each rank holds rows/P rows of one float64 problem (generated in blocks seeded
by the block index, so the data do not depend on P) and uses --threads OpenMP
threads (default 1).  Rank 0 prints the seconds per iteration of
`DistributedGD.fit` (gd: one fused kernel pass + one Allreduce per iteration;
the other solvers: the seconds per pass over the data, line-search trials and
Hessian passes included, and the whole fit) and of the bare kernel on the local
shard (`cyfed.loss_grad`), best of --repeat fits.  Run it at P = 1 and P = 2
(and more on a bigger machine): parallel efficiency = t(1) / (P t(P)); the
trainer's overhead at P = 1 is fit / kernel.
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
    parser.add_argument("--solver", default="gd")
    args = parser.parse_args()
    comm = get_comm()
    X, y = rows_of(shard_rows(args.rows, comm.rank, comm.size), args.features, args.loss)
    coef = np.zeros(args.features)

    fit_times, whole = [], []
    for _ in range(args.repeat):
        model = DistributedGD(args.loss, lr=0.01, max_iter=args.iters, n_threads=args.threads,
                              comm=comm, solver=args.solver, l2=1e-4,
                              gtol=None if args.solver == "gd" else 0.0)
        comm.barrier()
        start = time.perf_counter()
        model.fit(X, y)
        whole.append(time.perf_counter() - start)
        passes = model.history_[-1].get("evaluations", args.iters)
        fit_times.append(whole[-1] / passes)
    kernel_times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        for _ in range(args.iters):
            cyfed.loss_grad(args.loss, X, y, coef, 0.0, n_threads=args.threads)
        kernel_times.append((time.perf_counter() - start) / args.iters)
    fit_best = max(comm.allgather_obj(min(fit_times)))
    kernel_best = max(comm.allgather_obj(min(kernel_times)))
    whole_best = max(comm.allgather_obj(min(whole)))
    if comm.rank == 0:
        unit = "iter" if args.solver == "gd" else f"pass ({passes} passes, {model.n_iter_} " \
            f"iterations, whole fit {whole_best:.3f} s)"
        print(f"{args.loss} {args.rows}x{args.features} float64, {args.solver}, {comm.size} "
              f"rank(s) x {args.threads} thread(s): fit {fit_best * 1e3:.2f} ms/{unit}, bare "
              f"kernel on the local shard {kernel_best * 1e3:.2f} ms, fit/kernel "
              f"{fit_best / kernel_best:.3f}")


def rows_of(rows, d, loss, block=100_000):
    """(X, y) of the global rows `rows`, generated block by block (P-independent)."""
    X = np.empty((rows.stop - rows.start, d))
    for b in range(rows.start // block, -(-rows.stop // block)):
        lo, hi = max(rows.start, b * block), min(rows.stop, (b + 1) * block)
        Xb = np.random.default_rng([0, b]).standard_normal((block, d))
        X[lo - rows.start:hi - rows.start] = Xb[lo - b * block:hi - b * block]
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(float) if loss == "logistic" \
        else X @ np.ones(d)
    return X, y


if __name__ == "__main__":
    main()
