"""Data placement: which rows a rank holds, and loading only those rows.

Rows are split into contiguous blocks in rank order, the first n % size ranks
taking one row more (so every rank's block is known from (n, rank, size) alone).
A LIBSVM file is split by bytes instead (its rows are not known before it is
parsed): each rank parses the lines of its 1/size of the bytes.
"""
import zipfile
from pathlib import Path

import numpy as np
from scipy import sparse


def shard_rows(n, rank, size):
    """The slice of rows 0..n-1 that `rank` of `size` holds (contiguous, rank order)."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size, got rank={rank}, size={size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def load_shard(path_X, path_y=None, comm=None, *, dtype="float64", n_features=None,
               zero_based="auto", n_threads=None):
    """This rank's rows of X and y stored as files.

    Three layouts:

    * ``path_X`` a 2-d .npy X (n, d), ``path_y`` a 1-d .npy y (n,): both
      memory-mapped, this rank's block of rows ``shard_rows(n, rank, size)``
      copied out (C-contiguous, as stored; dtype is not applied);
    * ``path_X`` a CSR .npz (`scipy.sparse.save_npz`), ``path_y`` a .npy y: the
      same block of rows as a CSR matrix, reading from the archive only the
      block's part of the indices and values (as stored);
    * ``path_X`` a LIBSVM/svmlight file (labels inside; ``path_y`` None, any
      extension, also compressed): rank r parses the lines of bytes
      [r*N/size, (r+1)*N/size) of the N-byte file, after syncing to the next
      line start (`cyfed.io.load_svmlight`'s byte ranges), so the ranks' rows
      tile the file in order; X is CSR in `dtype`, y float in `dtype`.  The
      ranks agree on zero-basedness ("auto": 0-based when any rank sees an
      index 0) and on n_features (None: the largest index over all ranks + 1)
      with one small allgather.  A compressed file is decompressed whole on
      every rank (its byte shares count decompressed bytes).

    A malformed file raises the same ValueError on every rank (located as
    ``path:line:column`` on the rank that found it), so none is left waiting.
    `comm` None is a single process (`LocalComm`); collective otherwise.
    """
    from cyfed.comm import LocalComm

    comm = LocalComm() if comm is None else comm
    if path_y is None:
        return _svmlight_shard(Path(path_X), comm, dtype, n_features, zero_based, n_threads)
    y = np.load(path_y, mmap_mode="r")
    if Path(path_X).suffix.lower() == ".npz":
        X = _csr_npz_rows(path_X, lambda n: _check_y(path_y, y, n, comm))
    else:
        X = np.load(path_X, mmap_mode="r")
        if X.ndim != 2:
            raise ValueError(f"{path_X}: X must be 2-d (n_samples, n_features), "
                             f"got shape {X.shape}")
        X = np.ascontiguousarray(X[_check_y(path_y, y, X.shape[0], comm)])
    return X, np.ascontiguousarray(y[shard_rows(y.shape[0], comm.rank, comm.size)])


def _check_y(path_y, y, n, comm):
    """This rank's rows of n, once y is checked to be 1-d with n entries."""
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{path_y}: y must have shape ({n},), got shape {y.shape}")
    return shard_rows(n, comm.rank, comm.size)


def _csr_npz_rows(path, rows_of):
    """Rows rows_of(n) of the CSR matrix in a `scipy.sparse.save_npz` archive, reading
    the whole indptr but only those rows' part of indices and data."""
    try:
        with zipfile.ZipFile(path) as archive:
            fmt = _npz_member(archive, path, "format")
            if fmt.item() not in (b"csr", "csr"):
                raise ValueError(f"{path}: a {fmt.item()!r} sparse matrix; load_shard reads "
                                 "CSR .npz files (scipy.sparse.save_npz of a csr_matrix)")
            shape = tuple(int(v) for v in _npz_member(archive, path, "shape"))
            indptr = _npz_member(archive, path, "indptr")
            if indptr.shape != (shape[0] + 1,):
                raise ValueError(f"{path}: indptr has shape {indptr.shape}, expected "
                                 f"({shape[0] + 1},)")
            rows = rows_of(shape[0])
            lo, hi = int(indptr[rows.start]), int(indptr[rows.stop])
            indices = _npz_member(archive, path, "indices", lo, hi)
            data = _npz_member(archive, path, "data", lo, hi)
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read as a scipy.sparse .npz: {exc}") from None
    return sparse.csr_matrix((data, indices, indptr[rows.start:rows.stop + 1] - lo),
                             shape=(rows.stop - rows.start, shape[1]))


def _npz_member(archive, path, name, start=0, stop=None):
    """Entries start:stop of the 1-d array `name` of an .npz archive, read (and, when
    compressed, decompressed) up to `stop` only."""
    with archive.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(f)
        if len(shape) > 1 or dtype.hasobject:
            raise ValueError(f"{path}: {name} must be a 1-d numeric array, got shape {shape} "
                             f"and dtype {dtype}")
        stop = (shape[0] if shape else 1) if stop is None else stop
        f.seek(f.tell() + start * dtype.itemsize)
        out = np.empty(stop - start, dtype=dtype)
        if f.readinto(out.view(np.uint8)) != out.nbytes:
            raise ValueError(f"{path}: {name} is shorter than its header says")
    return out.reshape(shape) if not shape else out


def _svmlight_shard(path, comm, dtype, n_features, zero_based, n_threads):
    """This rank's byte share of a LIBSVM file, with the layout agreed over `comm`."""
    from functools import partial

    from cyfed import io
    from cyfed.comm import on_every_rank

    def parse():
        io._svmlight_options(n_features, zero_based)
        where = partial(io._byte_share, rank=comm.rank, size=comm.size)
        return io._svmlight_range(io._file(path), where, io._dtype(dtype), zero_based,
                                  n_features, n_threads=n_threads)

    errors = (ValueError, TypeError, OSError)
    part = on_every_rank(comm, parse, errors)
    stats = _agreed_stats(comm.allgather_obj(tuple(int(v) for v in part.stats)))
    X = on_every_rank(comm, lambda: part.matrix(zero_based, n_features, stats), errors)
    return X, part.y.astype(X.dtype, copy=False)


def _agreed_stats(per_rank):
    """The file's SvmlightStats from every rank's (rows, smallest, largest index)."""
    from cyfed.io import SvmlightStats

    lows = [low for _, low, high in per_rank if high >= 0]
    return SvmlightStats(sum(rows for rows, _, _ in per_rank), min(lows, default=-1),
                         max(high for _, _, high in per_rank))
