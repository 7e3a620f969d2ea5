"""Transport: the Communicator protocol, one-process LocalComm and mpi4py's MPIComm.

Algorithms are written once against `Communicator` and never import mpi4py;
this module is the only one that does, lazily, so `import cyfed` works with no
MPI library installed.  Arrays travel through mpi4py's buffer methods
(`Allreduce(MPI.IN_PLACE, buf)`, `Bcast`, `Gather`, `Gatherv`, `Allgatherv`);
pickling is only for small objects.

Point-to-point messages (`send`, `recv`, `isend`, `irecv`, `wait`, `waitany`,
`iprobe`) are an extension outside the `Communicator` protocol, used by the
asynchronous trainer's real MPI mode: arrays only (mpi4py's uppercase `Send`,
`Isend`, `Irecv`, `Request.Waitany`), `source=None` / `tag=None` meaning any.
Requests are opaque objects handed back to `wait` / `waitany`.

`iallreduce_sum` (a non-blocking in-place sum, completed by `wait` and advanced
by `test`) lets an algorithm overlap a reduction with computation.
`CountingComm` wraps any communicator and counts the bytes of the buffers
handed to it.

SPMD collectives every algorithm uses live here too: `raise_if_any` and
`on_every_rank` turn an error on one rank into the same exception on every
rank (never a hang), `agree_on_data` checks that the ranks' shards fit together.
"""
from collections import deque
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Communicator(Protocol):
    """What the trainers need from a group of processes (SPMD: all call alike)."""

    rank: int
    size: int

    def allreduce_sum(self, buf: np.ndarray) -> np.ndarray:
        """Sum `buf` over all ranks, in place; returns buf."""

    def iallreduce_sum(self, buf: np.ndarray):
        """Start summing `buf` over all ranks in place; a request for `wait` / `test`.
        Leave `buf` alone until the request completes."""

    def wait(self, request):
        """Complete `request`."""

    def test(self, request) -> bool:
        """Whether `request` has completed (also gives MPI a chance to progress it)."""

    def bcast(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite `buf` on every rank with root's, in place; returns buf."""

    def gather(self, buf: np.ndarray, root: int = 0):
        """Every rank's equal-sized `buf` stacked in rank order on root ((size, *shape)); None elsewhere."""

    def gatherv(self, buf: np.ndarray, root: int = 0):
        """Every rank's 1-d `buf` (any lengths) concatenated in rank order on root,
        with the per-rank counts: (array, counts) on root, (None, counts) elsewhere."""

    def allgatherv(self, buf: np.ndarray, counts=None):
        """Every rank's 1-d `buf` (any lengths) concatenated in rank order, on every
        rank: (array, counts).  `counts`, every rank's length (the same list on all
        ranks), skips the exchange of the lengths when they are known beforehand."""

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

    def iallreduce_sum(self, buf):
        return _LocalRequest(self, None, None)

    def bcast(self, buf, root=0):
        return buf

    def gather(self, buf, root=0):
        return np.array(buf)[None]

    def gatherv(self, buf, root=0):
        return np.asarray(buf).ravel(), [int(np.size(buf))]

    def allgatherv(self, buf, counts=None):
        buf = np.array(buf).ravel()
        return buf, _check_counts(counts, self, buf.size) or [buf.size]

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

    # -- point-to-point: messages to oneself (rank 0), matched in order by tag --------

    def _mailbox(self):
        box = self.__dict__.get("_box")
        if box is None:
            box = self.__dict__["_box"] = deque()
        return box

    @staticmethod
    def _check_peer(peer, what):
        if peer not in (0, None):
            raise ValueError(f"{what} must be 0 (or None) on a LocalComm, got {peer!r}")

    def send(self, buf, dest, tag=0):
        self._check_peer(dest, "dest")
        self._mailbox().append((tag, np.array(buf, copy=True)))

    def isend(self, buf, dest, tag=0):
        self.send(buf, dest, tag)
        return _LocalRequest(self, None, None)

    def irecv(self, buf, source=None, tag=None):
        self._check_peer(source, "source")
        return _LocalRequest(self, buf, tag)

    def recv(self, buf, source=None, tag=None):
        return self.irecv(buf, source, tag).wait()

    def wait(self, request):
        return request.wait()

    def test(self, request):
        return request.ready()

    def waitany(self, requests):
        """(index, source, tag) of the first of `requests` that a queued message completes."""
        for i, req in enumerate(requests):
            if req is not None and req.ready():
                source, tag = req.wait()
                return i, source, tag
        raise RuntimeError("waitany on a LocalComm: no message can complete any request "
                           "(it would wait forever)")

    def iprobe(self, source=None, tag=None):
        self._check_peer(source, "source")
        return any(tag is None or t == tag for t, _ in self._mailbox())


class MPIComm:
    """Communicator over an mpi4py communicator (default COMM_WORLD).  A copy is the
    same communicator (the same group of processes), so estimators holding one can
    be deep-copied and cloned."""

    def __deepcopy__(self, memo):
        return self

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

    def iallreduce_sum(self, buf):
        if not buf.flags.c_contiguous:
            raise ValueError("iallreduce_sum needs a C-contiguous buffer")
        return self.comm.Iallreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)

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

    def allgatherv(self, buf, counts=None):
        buf = np.ascontiguousarray(buf).ravel()
        counts = _check_counts(counts, self, buf.size) or self.comm.allgather(buf.size)
        out = np.empty(sum(counts), dtype=buf.dtype)
        self.comm.Allgatherv(buf, (out, counts))
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

        sys.stderr.write(f"cyfed: {on_rank(self.rank, message)}\n")
        sys.stderr.flush()
        self.comm.Abort(code)

    # -- point-to-point (arrays through the uppercase buffer methods) -----------------

    def _peer(self, peer):
        return self._MPI.ANY_SOURCE if peer is None else peer

    def _tag(self, tag):
        return self._MPI.ANY_TAG if tag is None else tag

    def send(self, buf, dest, tag=0):
        """Blocking send of a C-contiguous array to rank `dest`."""
        self.comm.Send(buf, dest=dest, tag=tag)

    def recv(self, buf, source=None, tag=None):
        """Blocking receive into `buf`; returns (source, tag) of the message."""
        status = self._MPI.Status()
        self.comm.Recv(buf, source=self._peer(source), tag=self._tag(tag), status=status)
        return status.Get_source(), status.Get_tag()

    def isend(self, buf, dest, tag=0):
        """Non-blocking send; keep `buf` unchanged until the request completes."""
        return self.comm.Isend(buf, dest=dest, tag=tag)

    def irecv(self, buf, source=None, tag=None):
        """Non-blocking receive into `buf`; a request for `wait` / `waitany`."""
        return self.comm.Irecv(buf, source=self._peer(source), tag=self._tag(tag))

    def wait(self, request):
        """Complete `request`; (source, tag) of a receive."""
        status = self._MPI.Status()
        request.Wait(status)
        return status.Get_source(), status.Get_tag()

    def test(self, request):
        """Whether `request` has completed; each call lets MPI progress it (MPICH and
        Open MPI advance a non-blocking collective only inside MPI calls)."""
        return bool(request.Test())

    def waitany(self, requests):
        """Wait for one of `requests` (a list; None entries are skipped) to complete:
        (index, source, tag).  The list entry is left as it is: replace or drop it."""
        status = self._MPI.Status()
        reqs = [self._MPI.REQUEST_NULL if r is None else r for r in requests]
        index = self._MPI.Request.Waitany(reqs, status)
        if index == self._MPI.UNDEFINED:
            raise RuntimeError("waitany: no active request")
        return index, status.Get_source(), status.Get_tag()

    def iprobe(self, source=None, tag=None):
        """Whether a matching message is waiting to be received."""
        return bool(self.comm.Iprobe(source=self._peer(source), tag=self._tag(tag)))


class CountingComm:
    """A communicator that counts the bytes of the array buffers handed to MPI.

    ``bytes_sent`` / ``bytes_received`` grow by the ``nbytes`` of the send / receive
    buffers of every buffer method: an in-place (i)allreduce of b bytes counts b
    sent and b received; ``bcast`` b sent on root and b received elsewhere;
    ``gather`` / ``gatherv`` the local buffer sent and, on root, the assembled
    result received; ``allgatherv`` the local buffer sent and the assembled result
    (this rank's part included, as for ``gather``) received; ``send`` / ``isend`` b
    sent; ``recv`` / ``irecv`` the receive buffer's b received (its capacity: MPI
    may deliver a shorter message).  A communicator of size 1 hands nothing to MPI
    and counts 0.  The pickled small-object methods (``*_obj``) and the lengths
    that ``gatherv`` / ``allgatherv`` exchange when not given are not counted.
    Everything else is passed through to the wrapped communicator.
    """

    def __init__(self, comm):
        self.comm = comm
        self.bytes_sent = self.bytes_received = 0

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def _count(self, sent=0, received=0):
        if self.comm.size > 1:
            self.bytes_sent += int(sent)
            self.bytes_received += int(received)

    def allreduce_sum(self, buf):
        self._count(buf.nbytes, buf.nbytes)
        return self.comm.allreduce_sum(buf)

    def iallreduce_sum(self, buf):
        self._count(buf.nbytes, buf.nbytes)
        return self.comm.iallreduce_sum(buf)

    def bcast(self, buf, root=0):
        self._count(*((buf.nbytes, 0) if self.comm.rank == root else (0, buf.nbytes)))
        return self.comm.bcast(buf, root)

    def gather(self, buf, root=0):
        out = self.comm.gather(buf, root)
        self._count(np.asarray(buf).nbytes, 0 if out is None else out.nbytes)
        return out

    def gatherv(self, buf, root=0):
        out, counts = self.comm.gatherv(buf, root)
        self._count(np.asarray(buf).nbytes, 0 if out is None else out.nbytes)
        return out, counts

    def allgatherv(self, buf, counts=None):
        out, counts = self.comm.allgatherv(buf, counts)
        self._count(np.asarray(buf).nbytes, out.nbytes)
        return out, counts

    def send(self, buf, dest, tag=0):
        self._count(sent=buf.nbytes)
        return self.comm.send(buf, dest, tag)

    def isend(self, buf, dest, tag=0):
        self._count(sent=buf.nbytes)
        return self.comm.isend(buf, dest, tag)

    def recv(self, buf, source=None, tag=None):
        self._count(received=buf.nbytes)
        return self.comm.recv(buf, source, tag)

    def irecv(self, buf, source=None, tag=None):
        self._count(received=buf.nbytes)
        return self.comm.irecv(buf, source, tag)


def _check_counts(counts, comm, size):
    """The given per-rank lengths as a list of ints (None if not given), checked
    against the rank count and this rank's buffer of `size` entries."""
    if counts is None:
        return None
    counts = [int(c) for c in counts]
    if len(counts) != comm.size or counts[comm.rank] != size:
        raise ValueError(f"counts must give all {comm.size} ranks' lengths, this rank's "
                         f"(rank {comm.rank}) being {size}; got {counts}")
    return counts


class _LocalRequest:
    """A LocalComm request: a completed send, or a receive matched when waited on."""

    def __init__(self, comm, buf, tag):
        self._comm, self._buf, self._tag, self._done = comm, buf, tag, buf is None

    def _match(self):
        box = self._comm._mailbox()
        for i, (tag, data) in enumerate(box):
            if self._tag is None or tag == self._tag:
                return i, tag, data
        return None

    def ready(self):
        return self._done or self._match() is not None

    def wait(self):
        if self._done:
            return 0, self._tag
        found = self._match()
        if found is None:
            raise RuntimeError("receive on a LocalComm with no matching message sent "
                               "(it would wait forever)")
        i, tag, data = found
        del self._comm._mailbox()[i]
        np.copyto(self._buf.reshape(-1)[:data.size], data.reshape(-1))
        self._done, self._tag = True, tag
        return 0, tag


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


def on_rank(rank, message):
    """The one wording of an error that happened on one rank: 'rank R: message'."""
    return f"rank {rank}: {message}"


def raise_if_any(comm, error):
    """Collective: if `error` is set on any rank, raise on every rank.

    The failing rank re-raises its own exception; the others raise ValueError
    naming the first failing rank and its message.  Every rank must call this
    at the same point, so that no rank is left waiting in a collective.
    """
    messages = comm.allgather_obj(None if error is None else f"{error}")
    if error is not None:
        raise error
    for rank, message in enumerate(messages):
        if message is not None:
            raise ValueError(on_rank(rank, message))


def on_every_rank(comm, fn, errors=(ValueError, TypeError)):
    """fn() on every rank; an exception of `errors` on any rank is raised on all of them."""
    try:
        return_value, error = fn(), None
    except errors as exc:
        return_value, error = None, exc
    raise_if_any(comm, error)
    return return_value


def agree_on_data(comm, n_features, dtype, n_rows, top_label=-1):
    """Collective: the ranks that hold rows must agree on (n_features, dtype).

    Returns (n_features, dtype, row counts per rank, the largest label over the
    ranks); `top_label` is this rank's largest class label (-1 when it has none
    or the task has no classes).  A rank without rows takes the agreed values.
    """
    meta = comm.allgather_obj((n_features, str(dtype), int(n_rows), int(top_label)))
    holders = [(r, m) for r, m in enumerate(meta) if m[2] > 0]
    if not holders:
        raise ValueError("no rank has any rows: the data are empty everywhere")
    if len({m[0] for _, m in holders}) > 1 or len({m[1] for _, m in holders}) > 1:
        raise ValueError("ranks disagree on the data: (n_features, dtype) per rank = "
                         + ", ".join(f"rank {r}: ({m[0]}, {m[1]})" for r, m in holders))
    n_features, dtype = holders[0][1][0], np.dtype(holders[0][1][1])
    return n_features, dtype, [m[2] for m in meta], max(m[3] for m in meta)


# -- threads that fit the ranks ------------------------------------------------------

#: Environment variables in which MPI launchers tell a process how many ranks of the
#: job run on its node (MPICH's Hydra, Open MPI).
LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")

_LAYOUT_KEYVAL = []       # the MPI attribute key caching node_layout on a communicator


def available_cores():
    """(cores this process may run on, where the number comes from): the size of its
    CPU affinity mask, else `os.cpu_count()` where the OS has no affinity call."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0))), "CPU affinity"
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1), "os.cpu_count()"


def _mpi4py_comm(comm):
    """The mpi4py communicator under `comm` (through CountingComm and MPIComm), or None."""
    for _ in range(8):
        if comm is None or hasattr(comm, "Split_type"):
            return comm
        comm = getattr(comm, "comm", None)
    return None


def _launcher_local_size():
    """Ranks of this MPI job on this node as the launcher says, or None."""
    import os

    for name in LOCAL_SIZE_VARIABLES:
        try:
            value = int(os.environ[name])
        except (KeyError, ValueError):
            continue
        if value >= 1:
            return value
    return None


def node_layout(comm):
    """How the ranks of `comm` sit on the machines: a dict

    ``ranks_on_node``  ranks of `comm` on this rank's node (the size of an MPI
                       shared-memory split, ``Split_type(COMM_TYPE_SHARED)``);
    ``sharing``        of those, the ranks whose CPU affinity overlaps this rank's
                       (itself included): all of them unless the launcher binds
                       ranks to disjoint cores;
    ``nodes``          nodes `comm` spans (the same on every rank);
    ``source``         where the numbers come from.

    Collective on an MPI communicator the first time (every rank must call it);
    the result is cached on the communicator (an MPI attribute, so every rank
    hits or misses alike, and it goes away with the communicator).  A
    communicator without MPI (LocalComm, a test double) is one process: 1 rank,
    or, under an MPI launcher (say a LocalComm per rank of an ``mpiexec -n 4``
    job), the launcher's count of the job's ranks on this node.
    """
    mpi = _mpi4py_comm(comm)
    if mpi is None:
        local = _launcher_local_size() if launched_by_mpi() else None
        if local is None:
            return {"ranks_on_node": 1, "sharing": 1, "nodes": 1, "source": "one process"}
        return {"ranks_on_node": local, "sharing": local, "nodes": 1,
                "source": "the MPI launcher's local rank count"}
    import os

    from mpi4py import MPI

    if not _LAYOUT_KEYVAL:
        _LAYOUT_KEYVAL.append(MPI.Comm.Create_keyval())
    key = _LAYOUT_KEYVAL[0]
    cached = mpi.Get_attr(key)
    if cached is not None:
        return dict(cached)
    try:
        mine = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mine = None
    node = mpi.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        masks = node.allgather(mine)
        leader = node.Get_rank() == 0
        ranks_on_node = node.Get_size()
    finally:
        node.Free()
    nodes = mpi.allreduce(int(leader), op=MPI.SUM)
    sharing = (ranks_on_node if mine is None or any(m is None for m in masks)
               else sum(1 for m in masks if m & mine))
    layout = {"ranks_on_node": ranks_on_node, "sharing": max(1, sharing), "nodes": nodes,
              "source": "MPI shared-memory split"}
    mpi.Set_attr(key, layout)
    return dict(layout)


def thread_choice(comm, n_threads=None):
    """The OpenMP threads per rank the trainers use by default, and why: a dict

    ``threads``        the choice;
    ``cores``          cores this process may run on (its CPU affinity);
    ``ranks_on_node``, ``sharing``, ``nodes``: `node_layout(comm)`;
    ``reason``         one line saying which rule decided.

    The rules, first match wins: an explicit `n_threads` (the trainers'
    ``n_threads=`` / ``n_workers=``); ``OMP_NUM_THREADS`` set in the environment
    (OpenMP's max threads, as the kernels take it); else cores // ranks sharing
    them (at least 1), so that the ranks on a node never start more threads than
    it has cores.  Collective the first time on an MPI communicator (every rank
    calls it, whatever the rules decide; see `node_layout`).
    """
    import os

    layout = node_layout(comm)
    cores, where = available_cores()
    choice = {"cores": cores, **{k: layout[k] for k in ("ranks_on_node", "sharing", "nodes")}}
    if n_threads is not None:
        from cyfed import _validation

        threads = _validation.n_threads(n_threads, None)
        reason = f"n_threads={threads} given"
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        from cyfed import gradients

        threads = int(gradients._kernels.max_threads())
        reason = (f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS'].strip()} is set: "
                  f"OpenMP's max threads, {threads}")
    else:
        sharing = layout["sharing"]
        threads = max(1, cores // sharing)
        reason = (f"{cores} cores ({where}) // {sharing} rank"
                  f"{'s' if sharing != 1 else ''} on this node sharing them "
                  f"({layout['source']})")
    choice.update(threads=threads, reason=reason)
    return choice


def default_threads(comm):
    """Threads per rank when the trainer's n_threads / n_workers is None:
    `thread_choice(comm)["threads"]` (collective the first time on an MPI communicator)."""
    return thread_choice(comm)["threads"]
