"""Compressed gradients for synchronous data-parallel GD (see docs/distributed.md)."""
import copy

import numpy as np

from cyfed import compress
from cyfed.compress.rounds import WIRE_DTYPE, Uplink


class GradientCompression:
    """The sum over ranks of each rank's gradient sums, through compressed payloads.

    Called in place of ``comm.allreduce_sum(buf)`` on the buffer ``[gradient sums,
    loss sum, weight sum, clipped count, error flag]``: the scalars go through one
    Allreduce, every rank's compressed gradient through one Allgatherv, and every
    rank decodes and adds them in rank order (docs/distributed.md).
    """

    def __init__(self, comm, compressor, error_feedback, seed, n_classes, width):
        self.comm, self.width = comm, width
        # a private copy: PowerSGD's warm start must not leak from one fit into the next
        compressor = copy.deepcopy(compressor)
        self.uplink = Uplink(compressor, error_feedback, seed, n_classes)
        shape = width
        if isinstance(compressor, compress.PowerSGD):
            shape = (width // n_classes, n_classes)
            if compressor.rank > min(shape):
                raise ValueError(f"PowerSGD rank must be <= {min(shape)} for a gradient "
                                 f"seen as a {shape[0]} x {shape[1]} matrix (rows: the "
                                 f"features and the intercept, columns: the classes), got "
                                 f"{compressor.rank}")
        # the same on every rank (the payload size depends only on the shape): no
        # exchange of the lengths before the Allgatherv
        self.counts = [compressor.max_payload_nbytes(shape, WIRE_DTYPE)] * comm.size

    def __call__(self, buf, t):
        comm, width = self.comm, self.width
        try:
            with np.errstate(over="ignore", invalid="ignore"):   # a diverging run: reported
                payload, _ = self.uplink.encode(buf[None, :width], [comm.rank], t)
        except ValueError:              # not finite (or out of FP16's range)
            payload = None
        scalars = comm.allreduce_sum(np.append(buf[width:], float(payload is None)))
        buf[width:] = scalars[:-1]
        if scalars[-1] > 0:
            buf[:width] = np.nan
        elif buf[-1] == 0:
            flat, counts = comm.allgatherv(payload, self.counts)
            buf[:width] = self.uplink.decode(flat, counts, width).sum(axis=0)
        return buf

    def state_dict(self):
        """This rank's error-feedback residual and compressor state, keyed by str(rank)."""
        return self.uplink.state_dict()

    def load_state_dict(self, states):
        """Restore this rank's entries of the merged `states` of all ranks."""
        self.uplink.load_state_dict(states, [self.comm.rank])


