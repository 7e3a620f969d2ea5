"""Compressed gradients for synchronous data-parallel GD (see docs/distributed.md)."""
import copy

import numpy as np

from cyfed import compress
from cyfed.compress.rounds import WIRE_DTYPE, Uplink

class GradientCompression:
    """The sum over ranks of each rank's gradient sums, through compressed payloads.

    Called in place of ``comm.allreduce_sum(buf)`` on `DistributedGD`'s buffer
    ``[gradient sums (width), loss sum, weight sum, clipped count, error flag]``:
    the gradient part of every rank goes through `cyfed.compress.rounds.Uplink`
    (float32 on the wire, error feedback keyed by the rank, random draws seeded by
    (seed, t, stream, rank)), one Allgatherv carries every rank's payload to every
    rank, and each rank decodes them all and adds them in rank order, so every rank
    holds the same sum.  The scalars (and a flag for a gradient that could not be
    encoded, i.e. one that is not finite) go in an in-place Allreduce of 5
    float64s first: on a kernel error or a non-finite gradient anywhere, no payload
    is sent and `DistributedGD` raises on every rank (a non-finite gradient leaves
    NaN in the sum, which it reports as divergence).
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


