"""Logistic regression without a learning rate: every solver on the same sharded data.

    mpiexec -n 4 python mpi_examples/logistic_lbfgs.py [--rows N] [--features D]

Each rank generates only its own rows of one global problem (badly scaled,
correlated features: the setting where a guessed learning rate fails), then
trains it with solver="lbfgs", "newton-cg", "newton-cholesky" and "auto", and
on standardized features with L-BFGS and with gradient descent at lr="auto" --
none of them is given a learning rate.  Rank 0 prints, per solver, the
objective, the gradient norm, iterations, passes over the data and seconds, and
checks that the Newton solvers agree on the optimum (features scaled from 0.1
to 100 leave plain L-BFGS far from it).  The model is the same for any number
of ranks (up to summation order).
"""
import argparse
import time

import numpy as np

from cyfed.comm import get_comm
from cyfed.data import shard_rows
from cyfed.distributed import DistributedGD

BLOCK = 10_000
L2 = 1e-4


def generated_rows(start, stop, d, seed=0):
    """Rows start..stop-1 of the global problem, made block by block (the same rows
    whatever the number of ranks)."""
    rng = np.random.default_rng([seed, 0])
    scales = np.logspace(-1, 2, d)                     # features from 0.1 to 100
    truth = rng.standard_normal(d) / scales
    X, y = np.empty((stop - start, d)), np.empty(stop - start)
    for b in range(start // BLOCK, (stop - 1) // BLOCK + 1 if stop > start else 0):
        block = np.random.default_rng([seed, 1, b])
        Xb = block.standard_normal((BLOCK, d))
        Xb[:, 1:] += 0.5 * Xb[:, :-1]                  # correlated neighbours
        Xb *= scales
        yb = (Xb @ truth + block.logistic(size=BLOCK) > 0).astype(float)
        lo, hi = max(start, b * BLOCK), min(stop, (b + 1) * BLOCK)
        X[lo - start:hi - start] = Xb[lo - b * BLOCK:hi - b * BLOCK]
        y[lo - start:hi - start] = yb[lo - b * BLOCK:hi - b * BLOCK]
    return X, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    comm = get_comm()
    rows = shard_rows(args.rows, comm.rank, comm.size)
    X, y = generated_rows(rows.start, rows.stop, args.features)
    runs = {solver: dict(solver=solver) for solver in
            ("lbfgs", "newton-cg", "newton-cholesky", "auto")}
    # standardized: the l2 penalty is on the scaled coefficients -- another objective
    runs["lbfgs, std"] = dict(solver="lbfgs", standardize=True)
    runs["gd lr=auto, std"] = dict(lr="auto", momentum=0.9, nesterov=True, standardize=True,
                                   max_iter=500, tol=1e-10)
    losses = {}
    if comm.rank == 0:
        print(f"{args.rows} x {args.features} over {comm.size} rank(s), L2-logistic, "
              f"l2 = {L2}")
        print(f"{'solver':<18}{'objective':>16}{'|grad|':>10}{'iters':>7}{'passes':>8}"
              f"{'seconds':>9}")
    for name, params in runs.items():
        comm.barrier()
        start = time.perf_counter()
        model = DistributedGD("logistic", l2=L2, n_threads=args.threads, comm=comm,
                              **{"max_iter": 200, **params}).fit(X, y)
        seconds = time.perf_counter() - start
        last = model.history_[-1]
        losses[name] = last["loss"]
        if comm.rank == 0:
            label = name if name != "auto" else f"auto -> {model.solver_}"
            passes = last.get("evaluations", model.n_iter_)
            print(f"{label:<18}{last['loss']:16.10f}{last['grad_norm']:10.1e}"
                  f"{model.n_iter_:7d}{passes:8d}{seconds:9.2f}")
    newton = [losses[s] for s in ("newton-cg", "newton-cholesky", "auto")]
    spread = (max(newton) - min(newton)) / min(newton)
    if comm.rank == 0:
        print(f"the Newton solvers agree on the optimum to {spread:.1e} (relative); "
              f"L-BFGS is {losses['lbfgs'] / min(newton) - 1:.1e} above it after "
              f"{runs['lbfgs'].get('max_iter', 200)} iterations on the raw features")
    assert spread < 1e-9, spread


if __name__ == "__main__":
    main()
