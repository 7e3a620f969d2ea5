"""Compiled aggregation kernels over client rows (validated by cyfed.aggregate).

`updates` is (K, d), one row per client.  Threads split the d coordinates into
fixed blocks of BLOCK (sums over rows stay within a block and are finished in
block order), so every result is bit-identical for any number of threads.
NaN/Inf rows show in the sums' results (NaN/Inf propagate); network_mean, whose
min/max would hide them, returns whether every value it read was finite.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.float cimport DBL_MAX
from libc.math cimport NAN, sqrt

from cyfed._vector_math cimport (all_finite, cyfed_prefetch_l2, cyfed_thread_id, load_tile,
                                 mean_of_rows, network_lanes, run_network, sort_groups, sq_dist,
                                 sq_dist_to, weighted_block)

import numpy as np

cdef enum:
    BLOCK = 16384         # coordinates per block (sums over rows: long streams per row)
    PAIR_BLOCK = 2048     # ... for the pairwise distances (K rows of a block stay in L2)


cdef inline Py_ssize_t n_blocks(Py_ssize_t d) noexcept nogil:
    return (d + BLOCK - 1) // BLOCK


def weighted_sum(const floating[:, ::1] updates, const double[::1] weights, double divisor,
                 double[::1] out, int n_threads):
    """out = (sum_i weights[i] * updates[i, :]) / divisor, rows added in order, float64.
    Returns 1 if every output is finite (checked per block while it is in cache)."""
    cdef Py_ssize_t K = updates.shape[0], d = updates.shape[1], blk, j0
    cdef const floating *U = &updates[0, 0]
    cdef int nt = max(1, min(n_threads, n_blocks(d)))
    cdef int[::1] finite = np.ones(n_blocks(d), dtype=np.intc)
    for blk in prange(n_blocks(d), nogil=True, num_threads=nt, schedule="static"):
        j0 = blk * BLOCK
        finite[blk] = weighted_block(&out[j0], U + j0, K, d, &weights[0], divisor,
                                     min(BLOCK, d - j0))
    return int(min(finite))


def sq_dists_to(const floating[:, ::1] updates, const double[::1] center, double[::1] out,
                int n_threads):
    """out[i] = ||updates[i] - center||^2 (float64)."""
    cdef Py_ssize_t K = updates.shape[0], d = updates.shape[1], nb = n_blocks(d), blk, i, j0
    cdef double[:, ::1] partial = np.empty((nb, K))
    cdef const floating *U = &updates[0, 0]
    cdef int nt = max(1, min(n_threads, nb))
    for blk in prange(nb, nogil=True, num_threads=nt, schedule="static"):
        j0 = blk * BLOCK
        for i in range(K):
            partial[blk, i] = sq_dist_to(U + i * d + j0, &center[j0], min(BLOCK, d - j0))
    _sum_blocks(partial, out)


def pair_sq_dists(const floating[:, ::1] updates, double[:, ::1] out, int n_threads):
    """out[i, j] = ||updates[i] - updates[j]||^2, exact differences (no Gram identity)."""
    cdef Py_ssize_t K = updates.shape[0], d = updates.shape[1]
    cdef Py_ssize_t nb = (d + PAIR_BLOCK - 1) // PAIR_BLOCK
    cdef Py_ssize_t n_pairs = K * (K - 1) // 2, blk, i, j, p, j0, n
    cdef double[:, ::1] partial = np.empty((nb, max(n_pairs, 1)))
    cdef double[::1] flat = np.empty(max(n_pairs, 1))
    cdef const floating *U = &updates[0, 0]
    cdef int nt = max(1, min(n_threads, nb))
    for blk in prange(nb, nogil=True, num_threads=nt, schedule="static"):
        j0 = blk * PAIR_BLOCK
        n = min(PAIR_BLOCK, d - j0)
        if j0 + PAIR_BLOCK < d:          # the next block of every row: K short streams
            for i in range(K):
                cyfed_prefetch_l2(U + i * d + j0 + PAIR_BLOCK,
                                  min(PAIR_BLOCK, d - j0 - PAIR_BLOCK) * sizeof(floating))
        p = 0
        for i in range(K):
            for j in range(i + 1, K):
                partial[blk, p] = sq_dist(U + i * d + j0, U + j * d + j0, n)
                p = p + 1
    if n_pairs == 0:
        out[0, 0] = 0
        return
    _sum_blocks(partial, flat)
    p = 0
    for i in range(K):
        out[i, i] = 0
        for j in range(i + 1, K):
            out[i, j] = flat[p]
            out[j, i] = flat[p]
            p += 1


cdef void _sum_blocks(double[:, ::1] partial, double[::1] out) noexcept:
    """out[c] = sum over blocks, in block order, of partial[blk, c]."""
    cdef Py_ssize_t blk, c
    for c in range(out.shape[0]):
        out[c] = 0
    for blk in range(partial.shape[0]):
        for c in range(out.shape[0]):
            out[c] += partial[blk, c]


def network_mean(const floating[:, ::1] updates, Py_ssize_t groups, int group_size,
                 const int[:, ::1] network, Py_ssize_t lo, Py_ssize_t hi, floating[::1] out,
                 int n_threads):
    """Per coordinate: sort the first `groups` aligned groups of group_size (8 or 16)
    rows in registers, run the comparator network over the K values, then out[j] =
    mean of the values at positions lo..hi-1 (a median, a trimmed mean).

    Tiles of network_lanes coordinates x K rows are copied to a per-thread buffer;
    each comparator is a vector min/max across two client rows."""
    cdef Py_ssize_t K = updates.shape[0], d = updates.shape[1]
    cdef Py_ssize_t L = network_lanes(&out[0]), n_tiles = (d + L - 1) // L
    cdef Py_ssize_t n_comp = network.shape[0], tile, j0, n, t
    cdef int nt = max(1, min(n_threads, n_tiles))
    dtype = np.float32 if floating is float else np.float64
    # tiles start on 64-byte boundaries: split vector loads stall store forwarding
    cdef Py_ssize_t stride = K * L + L
    raw = np.empty(nt * stride + L, dtype=dtype)
    cdef floating[:, ::1] buf = raw[(-raw.ctypes.data % 64) // raw.itemsize:][:nt * stride] \
        .reshape(nt, stride)
    cdef int[::1] finite = np.ones(nt, dtype=np.intc)
    cdef const int *net = &network[0, 0] if n_comp > 0 else NULL
    cdef const floating *U = &updates[0, 0]
    for tile in prange(n_tiles, nogil=True, num_threads=nt, schedule="static"):
        t = cyfed_thread_id()
        j0 = tile * L
        n = min(L, d - j0)
        if not load_tile(&buf[t, 0], U, K, d, j0, n):
            finite[t] = 0
        sort_groups(&buf[t, 0], groups, group_size)
        run_network(&buf[t, 0], net, n_comp)
        mean_of_rows(&buf[t, 0], lo, hi, &out[j0], n)
    return int(min(finite))


def finite_rows(const floating[:, ::1] updates, unsigned char[::1] out):
    """out[i] = 1 if every entry of row i is finite, else 0 (one pass, no temporaries)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(updates.shape[0]):
            out[i] = all_finite(&updates[i, 0], updates.shape[1]) if updates.shape[1] else 1


def clip_scales(const double[:, ::1] messages, const double[::1] reference, double clip_norm,
                double[::1] scales, int n_threads):
    """scales[i] = min(1, clip_norm / ||messages[i] - reference||): exactly 1 when the
    update fits, NaN when row i is not finite, 0 when its squared norm overflows
    (with clip_norm = inf: 1 for every finite row, NaN otherwise).  Threads over rows."""
    cdef Py_ssize_t K = messages.shape[0], p = messages.shape[1], i
    cdef const double *r = &reference[0]
    cdef double sq
    cdef int nt = max(1, min(n_threads, K // 64))
    for i in prange(K, nogil=True, num_threads=nt, schedule="static"):
        sq = sq_dist_to(&messages[i, 0], r, p)
        if sq <= DBL_MAX:           # finite: so is every entry of the row
            scales[i] = 1.0 if sq <= clip_norm * clip_norm else clip_norm / sqrt(sq)
        else:                       # a NaN/Inf entry, or a finite row too big to square
            scales[i] = NAN if not all_finite(&messages[i, 0], p) else 0.0
