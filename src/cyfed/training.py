"""What every trainer shares: its communicator, the model bound to the ranks' data,
the run state, checkpoints and history records.

One checkpoint implementation serves `DistributedGD`, `FederatedTrainer` and any
later trainer: a run is fingerprinted by a digest of its configuration (the
trainer's `config()`: what determines the result) and one of its data (digests
of parts -- a rank's shard, a client's rows -- gathered from every rank and
taken in key order), and resuming refuses a checkpoint whose digests differ.
"""
import time
from dataclasses import dataclass, field
from pathlib import Path

from cyfed import checkpoint
from cyfed.comm import CountingComm, agree_on_data, get_comm


def single_threaded_blas():
    """A context in which numpy's BLAS runs on one thread (threadpoolctl); trainers run
    their loops in it.  Between kernel passes the loops do O(p) vector work, where
    BLAS threads gain nothing, and a multi-threaded BLAS call leaves its threads
    spinning on the cores that the next pass's OpenMP threads need.  Measured on 2
    cores, L-BFGS on a 500,000 x 50,000 CSR problem, 2 kernel threads: 68-73 ms a
    pass with BLAS on one thread, 105-123 ms with BLAS on two."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def communicator(comm):
    """The run's communicator: `comm`, or `get_comm()` (MPI world under mpiexec with
    more than one rank, else one process), counting the bytes handed to it."""
    return CountingComm(get_comm() if comm is None else comm)


def bind_data(comm, model, data, top_label):
    """Collective: the ranks agree on (n_features, dtype, classes).  Returns (data, row
    counts per rank, the model bound to (d, k), the largest label over the ranks); a
    rank without rows gets empty data of the agreed width."""
    d, dtype, counts, top = agree_on_data(comm, data.d, data.dtype, data.n, top_label)
    if data.n == 0:
        data = model.empty(d, dtype)
    return data, counts, model.bind(d, model.n_outputs(top)), top


def describe(obj):
    """A JSON-able description of a configuration object (strategy, attack, compressor,
    privacy, model): its class and hyper-parameters, recursively."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (set, frozenset)):
        return sorted(describe(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if hasattr(obj, "describe"):
        return obj.describe()
    params = obj.hyper_parameters() if hasattr(obj, "hyper_parameters") else vars(obj)
    return {"class": type(obj).__name__,
            **{k: describe(v) for k, v in sorted(params.items()) if not k.startswith("_")}}


def data_digest(comm, parts):
    """Collective: one digest of {key: digest} gathered from every rank, in key order."""
    every = {}
    for part in comm.allgather_obj(parts):
        every.update(part)
    return checkpoint.digest([every[key] for key in sorted(every)])


class Checkpoints:
    """Atomic checkpoints of one run at `path`, guarded by its fingerprint.

    config : JSON-able, what determines the result;  data : a digest of the data
    (`data_digest`);  data_name : how a mismatch of the data is described.
    """

    def __init__(self, path, config, data, data_name="other data"):
        self.path, self.config, self.data = Path(path), checkpoint.digest(config), data
        self.data_name = data_name

    def save(self, comm, arrays, meta):
        """Rank 0 writes `arrays` and `meta` with the fingerprint (atomically)."""
        if comm.rank == 0:
            checkpoint.save(self.path, arrays, {**meta, "config": self.config,
                                                "data": self.data})

    def restore(self, comm):
        """Collective: (arrays, meta) of the checkpoint, or None when there is none;
        ValueError on every rank if it was written for another config or other data."""
        found = comm.bcast_obj(self.path.exists() if comm.rank == 0 else None)
        if not found:
            return None
        arrays, meta = comm.bcast_obj(checkpoint.load(self.path) if comm.rank == 0 else None)
        if meta["config"] != self.config:
            raise ValueError(f"checkpoint {self.path} was written with another configuration "
                             "(loss, hyper-parameters or seed); refusing to resume from it")
        if meta["data"] != self.data:
            raise ValueError(f"checkpoint {self.path} was written for {self.data_name}; "
                             "refusing to resume from it")
        return arrays, meta


@dataclass
class Run:
    """The state of one fit shared by every trainer: set up once, read every step."""
    comm: object
    model: object               # cyfed.models.Model bound to (d, k)
    data: object                # this rank's validated rows
    threads: int
    callback: object = None
    checkpoints: object = None  # Checkpoints or None
    start: float = field(default_factory=time.perf_counter)
    sent: int = 0               # bytes counted up to the last record
    received: int = 0

    def stamp(self, record):
        """Add the seconds since the start and this rank's bytes since the last stamp."""
        record["seconds"] = time.perf_counter() - self.start
        return self.stamp_bytes(record)

    def stamp_bytes(self, record):
        """Add this rank's bytes handed to MPI since the last stamp."""
        record["bytes_sent"] = self.comm.bytes_sent - self.sent
        record["bytes_received"] = self.comm.bytes_received - self.received
        self.sent, self.received = self.comm.bytes_sent, self.comm.bytes_received
        return record
