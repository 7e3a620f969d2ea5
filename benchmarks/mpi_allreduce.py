"""OSU-style Allreduce latency/bandwidth: cyfed's MPIComm beside raw mpi4py.

    mpiexec -n 2 python benchmarks/mpi_allreduce.py [--smoke]

For each message size (float64 buffers, 8 B .. 16 MiB): warm-up calls, a
Barrier, then `iters` timed calls with MPI.Wtime for each implementation,
interleaved in rounds so drifting machine load hits both alike; the per-call time is
the mean over calls of the maximum over ranks (as osu_allreduce reports).
Rank 0 prints a table: size, raw mpi4py us, MPIComm us, overhead %, MPIComm MB/s.
"""
import argparse

import numpy as np
from mpi4py import MPI

from cyfed.comm import MPIComm


def time_calls(comm, fn, buf, iters, warmup):
    for _ in range(warmup):
        fn(buf)
    comm.Barrier()
    start = MPI.Wtime()
    for _ in range(iters):
        fn(buf)
    elapsed = (MPI.Wtime() - start) / iters
    return comm.allreduce(elapsed, op=MPI.MAX)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="few sizes and calls (CI)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    world = MPI.COMM_WORLD
    cyfed_comm = MPIComm(world)

    def raw(buf):
        world.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    sizes = [1, 16, 1024, 1 << 17] if args.smoke else [1 << p for p in range(0, 22, 3)]
    rows = []
    for count in sizes:
        buf = np.ones(count)
        iters = 10 if args.smoke else max(20, min(20000, (1 << 24) // (8 * count)))
        best = {"raw": np.inf, "cyfed": np.inf}
        for _ in range(1 if args.smoke else args.rounds):
            best["raw"] = min(best["raw"], time_calls(world, raw, buf, iters, iters // 10 + 1))
            best["cyfed"] = min(best["cyfed"], time_calls(world, cyfed_comm.allreduce_sum, buf,
                                                          iters, iters // 10 + 1))
        rows.append((count * 8, best["raw"], best["cyfed"]))
    if world.rank == 0:
        print(f"Allreduce(IN_PLACE, SUM), float64, {world.size} ranks "
              f"(best of {1 if args.smoke else args.rounds} rounds)")
        print(f"{'bytes':>10s} {'mpi4py us':>11s} {'MPIComm us':>11s} {'overhead':>9s} "
              f"{'MB/s':>9s}")
        for nbytes, t_raw, t_cy in rows:
            print(f"{nbytes:>10d} {t_raw * 1e6:11.2f} {t_cy * 1e6:11.2f} "
                  f"{(t_cy / t_raw - 1) * 100:8.1f}% {nbytes / t_cy / 1e6:9.1f}")


if __name__ == "__main__":
    main()
