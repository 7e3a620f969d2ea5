"""Compressed gradients in distributed GD at P ranks: bytes, time and loss per compressor.

    mpiexec -n 2 python benchmarks/mpi_compressed_gd.py [--smoke]

The synthetic softmax problem of `mpi_local_sgd.py` with a large gradient
(default 1,000 features x 100 classes: 100,100 float64s = 782 KiB per rank per
step uncompressed, 2,000 rows per rank), trained by `DistributedGD(compression=...,
error_feedback=...)` on mini-batches of --batch rows per rank for --iters steps.
For each compressor: a warm-up fit, a Barrier, then --repeat timed fits
(MPI.Wtime); ms per step is the best fit's, maximum over ranks (OSU style).
Rank 0 prints a markdown table: the payload a rank sends per step (as
`compression.max_payload_nbytes` says), the bytes this rank handed to MPI per step
(the history's bytes_sent and bytes_received: payload Allgatherv + the 40-byte
scalar Allreduce), the reduction against uncompressed in bytes sent, ms per step,
and the final model's full training loss over all ranks.
"""
import argparse

import numpy as np

from cyfed import compress
from cyfed.comm import get_comm
from cyfed.distributed import DistributedGD
from mpi_local_sgd import global_loss, make_shard, timed_fit

KIB = 1024.0


def compressors():
    """(label, compressor or None, error feedback) of every row of the table."""
    return [("none", None, False),
            ("FP16", compress.FP16(), False),
            ("BF16", compress.BF16(), False),
            ("QSGD(15)", compress.QSGD(15), False),
            ("TopK(1%)", compress.TopK(0.01), False),
            ("TopK(1%)", compress.TopK(0.01), True),
            ("RandK(10%)", compress.RandK(0.1, unbiased=False), True),
            ("ScaledSign", compress.ScaledSign(), True),
            ("PowerSGD(4)", compress.PowerSGD(4), True)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="rows per rank")
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64, help="mini-batch rows per rank")
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--lr", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="a tiny problem, one fit (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.features, args.classes, args.iters, args.repeat = 200, 50, 10, 8, 1
    comm = get_comm()
    X, y = make_shard(comm.rank, args.rows, args.features, args.classes)
    width = args.features * args.classes + args.classes
    results = []
    for label, compressor, ef in compressors():
        def make(max_iter=args.iters, compressor=compressor, ef=ef):
            return DistributedGD("softmax", lr=args.lr, max_iter=max_iter,
                                 batch_size=args.batch * comm.size, compression=compressor,
                                 error_feedback=ef, seed=0, n_threads=args.threads,
                                 comm=comm)
        model, per_step = timed_fit(comm, make, X, y, args.repeat)
        shape = (args.features + 1, args.classes) if isinstance(
            compressor, compress.PowerSGD) else width
        payload = 8 * width if compressor is None else compressor.max_payload_nbytes(
            shape, np.float32)
        results.append((label, ef, payload, model, per_step, global_loss(comm, model, X, y)))
    if comm.rank != 0:
        return
    print(f"softmax, {comm.size} rank(s) x {args.rows} rows x {args.features} features x "
          f"{args.classes} classes float64 ({width} gradient entries), batch {args.batch}/rank, "
          f"{args.iters} steps, lr {args.lr}, {args.threads} thread(s)/rank\n")
    print("| compressor | error feedback | payload KiB / rank | KiB sent / step / rank "
          "| KiB received / step / rank | none / this (sent) | ms / step | final loss |")
    print("|:--|:--|--:|--:|--:|--:|--:|--:|")
    base = None
    for label, ef, payload, model, per_step, loss in results:
        sent = np.mean([h["bytes_sent"] for h in model.history_])
        received = np.mean([h["bytes_received"] for h in model.history_])
        base = sent if base is None else base
        ratio = f"{base / sent:.1f}" if sent else "-"
        print(f"| {label} | {'yes' if ef else 'no'} | {payload / KIB:.2f} | {sent / KIB:.2f} "
              f"| {received / KIB:.2f} | {ratio} | {per_step * 1e3:.3f} | {loss:.4f} |")


if __name__ == "__main__":
    main()
