"""Data-parallel training over MPI ranks: every rank holds a shard of the rows and
takes the same steps (SPMD).

`DistributedGD` (gd) is the trainer; its loops are `sync` (one Allreduce of the
gradient sums per step, DP-SGD), `local_sgd` (H local steps between model
averages, optionally overlapped) and `lbfgs` (solver="lbfgs": one Allreduce per
line-search trial point), sharing `loop.Loop`; `batches` draws the
global mini-batches and DP noise, `compressed` sums compressed gradients.
"""
from cyfed.distributed.compressed import GradientCompression
from cyfed.distributed.gd import DistributedGD
from cyfed.distributed.loop import DivergenceError

__all__ = ["DistributedGD", "DivergenceError", "GradientCompression"]
