"""Transport: the Communicator protocol, one-process LocalComm and mpi4py's MPIComm.

Algorithms are written once against `Communicator` and never import mpi4py;
this module is the only one that does, lazily, so `import cyfed` works with no
MPI library installed.  Arrays travel through mpi4py's buffer methods
(`Allreduce(MPI.IN_PLACE, buf)`, `Bcast`, `Gather`, `Gatherv`); pickling is
only for small objects.
"""
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Communicator(Protocol):
    """What the trainers need from a group of processes (SPMD: all call alike)."""

    rank: int
    size: int

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        """Sum `buf` over all ranks, in place; returns buf."""

    def bcast(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite `buf` on every rank with root's, in place; returns buf."""

    def gather(self, buf: np.ndarray, root: int = 0):
        """Every rank's equal-sized `buf` stacked in rank order on root ((size, *shape)); None elsewhere."""

    def gatherv(self, buf: np.ndarray, root: int = 0):
        """Every rank's 1-d `buf` (any lengths) concatenated in rank order on root,
        with the per-rank counts: (array, counts) on root, (None, counts) elsewhere."""

    def bcast_obj(self, obj, root: int = 0):
        """Root's small picklable object, on every rank."""

    def allgather_obj(self, obj) -> list:
        """Every rank's small picklable object, in rank order, on every rank."""

    def gather_obj(self, obj, root: int = 0):
        """Every rank's small picklable object, in rank order, on root (a list); None elsewhere."""

    def scatter_obj(self, objs, root: int = 0):
        """Root's ``objs[r]`` (a sequence of `size` small picklable objects) on rank r."""

    def barrier(self) -> None:
        """Wait for all ranks."""

    def abort(self, message: str, code: int = 1) -> None:
        """End every rank of the job, printing `message` (never returns)."""


class LocalComm:
    """A communicator of one process: every collective is the identity."""

    rank = 0
    size = 1

    def allreduce_sum(self, buf):
        return buf

    def bcast(self, buf, root=0):
        return buf

    def gather(self, buf, root=0):
        return np.array(buf)[None]

    def gatherv(self, buf, root=0):
        return np.asarray(buf).ravel(), [int(np.size(buf))]

    def bcast_obj(self, obj, root=0):
        return obj

    def allgather_obj(self, obj):
        return [obj]

    def gather_obj(self, obj, root=0):
        return [obj]

    def scatter_obj(self, objs, root=0):
        return objs[0]

    def barrier(self):
        return None

    def abort(self, message, code=1):
        raise SystemExit(f"cyfed: {message}")


class MPIComm:
    """Communicator over an mpi4py communicator (default COMM_WORLD)."""

    def __init__(self, comm=None):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        if self.size > 1:
            _abort_on_uncaught_exception(self)

    def allreduce_sum(self, buf):
        if not buf.flags.c_contiguous:
            raise ValueError("allreduce_sum needs a C-contiguous buffer")
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def bcast(self, buf, root=0):
        self.comm.Bcast(buf, root=root)
        return buf

    def gather(self, buf, root=0):
        buf = np.ascontiguousarray(buf)
        out = np.empty((self.size, *buf.shape), dtype=buf.dtype) if self.rank == root else None
        self.comm.Gather(buf, out, root=root)
        return out

    def gatherv(self, buf, root=0):
        buf = np.ascontiguousarray(buf).ravel()
        counts = self.comm.allgather(buf.size)
        out = None
        if self.rank == root:
            out = np.empty(sum(counts), dtype=buf.dtype)
            self.comm.Gatherv(buf, (out, counts), root=root)
        else:
            self.comm.Gatherv(buf, None, root=root)
        return out, counts

    def bcast_obj(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather_obj(self, obj):
        return self.comm.allgather(obj)

    def gather_obj(self, obj, root=0):
        return self.comm.gather(obj, root=root)

    def scatter_obj(self, objs, root=0):
        return self.comm.scatter(objs, root=root)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, message, code=1):
        import sys

        sys.stderr.write(f"cyfed: rank {self.rank}: {message}\n")
        sys.stderr.flush()
        self.comm.Abort(code)


def _abort_on_uncaught_exception(comm):
    """Make an exception that escapes on one rank end the whole job, not hang the rest.

    The other ranks would otherwise wait forever in their next collective; this
    prints the traceback with the rank and calls MPI_Abort (as `python -m mpi4py` does).
    """
    import sys
    import traceback

    previous = sys.excepthook
    if getattr(previous, "_cyfed_abort_hook", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            comm.abort("interrupted", code=130)
            return
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        comm.abort(f"uncaught {exc_type.__name__}: {exc}; aborting all {comm.size} ranks\n"
                   + text)

    hook._cyfed_abort_hook = True
    sys.excepthook = hook


def launched_by_mpi():
    """True when an MPI launcher started this process (no mpi4py import needed)."""
    import os

    markers = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
               "MPI_LOCALNRANKS", "HYDI_CONTROL_FD", "PMI_FD")
    return any(m in os.environ for m in markers)


def get_comm():
    """MPIComm(COMM_WORLD) when launched by mpiexec with more than one rank, else LocalComm."""
    if launched_by_mpi():
        comm = MPIComm()
        if comm.size > 1:
            return comm
    return LocalComm()
