"""Fused loss/gradient kernels (compiled; validated by cyfed.gradients).

One pass over the rows of X: for a block of rows, the margins z = x.theta + b
are computed, turned into the loss and the gradient multipliers r = w dl/dz by
a link, and r x is accumulated while the block is still in cache.  Each thread
takes a contiguous range of blocks and its own double accumulator; the per-thread
sums are added in thread order at the end.

Returned are sums, not means: sum_i w_i l_i, sum_i w_i, and into grad_out
sum_i w_i dl_i/dtheta (then the intercept part).  Means and the L2 term are the
caller's business, which is what a distributed trainer needs for its Allreduce.

Optional per-example clipping (DP-SGD): example i's gradient with respect to
(theta, b) is x_i (x) r_i and r_i, of squared norm ||r_i||^2 (||x_i||^2 + [b]), so
scaling r_i by min(1, C / that norm) before r x is accumulated clips it without
ever forming the per-example gradient.
"""
from cython cimport floating
from cython.parallel cimport prange
from cpython.mem cimport PyMem_Free, PyMem_Malloc

from cyfed._vector_math cimport (BLOCK_BYTES, CYFED_NARROW_MAX, CYFED_SOFTMAX_WORK,
                                 MAX_BLOCK_ROWS, axpy8, block_margins, block_rows, check_block,
                                 check_row, choose_threads, clip_rows, cyfed_have_openmp,
                                 cyfed_max_threads, dot8, gemv4, ger4, ger4_vec, link, narrow,
                                 next_block, softmax_lanes, softmax_vectors)

import numpy as np

cpdef enum LossKind:      # the values of _vector_math.pxd's KIND_* constants
    SQUARED = 0
    LOGISTIC = 1
    SOFTMAX = 2

cpdef enum Status:         # the values of _vector_math.pxd's STATUS_* constants
    OK = 0
    BAD_LABEL = 1          # label not in {0, 1} (logistic) or 0..k-1 (softmax)
    NEGATIVE_WEIGHT = 2    # sample_weight < 0
    BAD_ROW = 3            # row index outside [0, n)

def have_openmp():
    """True when the kernels were compiled with OpenMP."""
    return bool(cyfed_have_openmp())


def max_threads():
    """Threads a kernel uses by default (OpenMP's max, honours OMP_NUM_THREADS)."""
    return cyfed_max_threads()


cdef int gather_block(int kind, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                      const floating *y, const floating *sw, const Py_ssize_t *rows,
                      Py_ssize_t start, Py_ssize_t m, const floating *X,
                      const double *row_sq, const floating **xp, floating *yb, floating *wb,
                      double *nsq, double *wsum, Py_ssize_t *bad) noexcept nogil:
    """Collect row pointers, labels, weights (and, with row_sq, squared row norms)
    of one block, validating them.

    Pads the block to a multiple of 8 with weight-0 copies of its first row.
    """
    cdef Py_ssize_t i, row
    cdef int status
    cdef floating wv
    for i in range(m):
        status = check_row(kind, n, k, y, sw, rows, start + i, &row, bad)
        if status != OK:
            return status
        wv = sw[row] if sw != NULL else 1
        xp[i] = X + row * d
        yb[i] = y[row]
        wb[i] = wv
        if row_sq != NULL:
            nsq[i] = row_sq[row]
        wsum[0] += wv
    for i in range(m, (m + 7) & ~7):
        xp[i] = xp[0]
        yb[i] = 0
        wb[i] = 0
    return OK


cdef inline void flush_block(double *gacc, floating *gsum, Py_ssize_t n) noexcept nogil:
    """Add a float32 block's gradient sums into the float64 accumulator (float64: no-op)."""
    cdef Py_ssize_t j
    if floating is float:
        for j in range(n):
            gacc[j] += gsum[j]


cdef struct Scratch:
    # Per-thread buffers of one kernel call (B = rows per block, kp = padded k).
    void *z          # (B + 8) * kp margins, then gradient multipliers
    void *yb         # B + 8 gathered labels
    void *wb         # B + 8 gathered weights
    double *nsq      # B gathered squared row norms (clipping with a row subset)
    void *ones       # B unit weights (used when there are no sample weights)
    void *xcopy      # B * d gathered rows (narrow path with a row subset)
    void *gblk       # d * kp + k gradient sums of one block (float32 only)
    void *work       # CYFED_SOFTMAX_WORK(k, B + 8): class-major copy of a block (softmax link)
    const void **xp  # B + 8 row pointers


cdef int run_blocks(int kind, const floating *X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                    Py_ssize_t kp, int nv, const floating *y, const floating *sw,
                    const Py_ssize_t *rows, Py_ssize_t n_rows, Py_ssize_t B,
                    Py_ssize_t b0, Py_ssize_t b1, const floating *coef,
                    const floating *intercept, const floating *bpad, const double *row_sq,
                    double clip_sq, Scratch s, double *gacc, double *sums,
                    Py_ssize_t *bad) noexcept nogil:
    """Loss and gradient sums over blocks b0..b1-1 into this thread's gacc/sums
    (sums[0] loss, sums[1] weight, sums[2] rows clipped).

    Three paths: narrow X (squared/logistic, d <= CYFED_NARROW_MAX) with
    contiguous rows and compile-time d; softmax with k <= 2 vector lengths on
    register-blocked micro-kernels over W padded to kp columns; and the general
    four-rows-at-a-time path.  Clipping (row_sq != NULL: the rows' squared norms,
    clip_sq = C^2) scales the multipliers between the link and the gradient pass.
    """
    cdef floating *zb = <floating *>s.z
    cdef floating *yb = <floating *>s.yb
    cdef floating *wb = <floating *>s.wb
    cdef floating *ones = <floating *>s.ones
    cdef floating *xcopy = <floating *>s.xcopy
    cdef const floating **xp = <const floating **>s.xp
    # Gradient sums go straight into the float64 accumulator for float64 data;
    # float32 data sums each block in float32 (full SIMD width) and adds the
    # block's sums into float64, so rounding does not grow with n.
    cdef floating *gsum
    if floating is double:
        gsum = gacc
    else:
        gsum = <floating *>s.gblk
    cdef Py_ssize_t n_grad = d * kp + k
    cdef Py_ssize_t blk, start, m, mp, i, c, off
    cdef int status
    cdef double loss = 0.0, wsum = 0.0
    cdef double intercept_sq = 1.0 if intercept != NULL else 0.0
    cdef Py_ssize_t n_clipped = 0
    cdef const double *nsq = s.nsq if row_sq != NULL else NULL
    cdef bint is_narrow = kind != SOFTMAX and d <= CYFED_NARROW_MAX
    cdef floating b0_ = intercept[0] if intercept != NULL else 0
    cdef const floating *Xb
    cdef const char *ahead = NULL
    cdef Py_ssize_t ahead_bytes
    cdef const floating *yp
    cdef const floating *wp
    for i in range(B):
        ones[i] = 1
    for blk in range(b0, b1):
        start = blk * B
        if floating is float:
            for i in range(n_grad):
                gsum[i] = 0
        m = n_rows - start if n_rows - start < B else B
        mp = (m + 7) & ~7
        if is_narrow and rows == NULL:
            Xb, yp, wp = X + start * d, y + start, (sw + start if sw != NULL else ones)
            off = check_block(kind, yp, sw + start if sw != NULL else NULL, m, &wsum)
            if off >= 0:
                bad[0] = start + off
                return NEGATIVE_WEIGHT if wp[off] < 0 else BAD_LABEL
            loss += narrow(kind, Xb, m, d, coef, b0_, intercept != NULL, zb, yp, wp, gsum,
                           row_sq + start if row_sq != NULL else NULL, clip_sq, &n_clipped)
            flush_block(gacc, gsum, n_grad)
            continue
        status = gather_block(kind, n, d, k, y, sw, rows, start, m, X, row_sq, xp, yb, wb,
                              s.nsq, &wsum, bad)
        if status != OK:
            return status
        if is_narrow:
            for i in range(m):
                for c in range(d):
                    xcopy[i * d + c] = xp[i][c]
            loss += narrow(kind, xcopy, m, d, coef, b0_, intercept != NULL, zb, yb, wb, gsum,
                           nsq, clip_sq, &n_clipped)
            flush_block(gacc, gsum, n_grad)
            continue
        # the next block's rows (this thread's), requested a slice per group of this block's
        ahead_bytes = next_block(X, d, n_rows, start, B, &ahead) \
            if rows == NULL and blk + 1 < b1 else 0
        block_margins(kind, xp, mp, d, k, kp, nv, coef, bpad, intercept != NULL, zb, ahead,
                      ahead_bytes)
        loss += link(kind, zb, yb, wb, mp, k, kp, <floating *>s.work)
        if row_sq != NULL:
            n_clipped += clip_rows(zb, m, k, kp, nsq, clip_sq, intercept_sq)
        if kind != SOFTMAX:
            for i in range(0, mp, 8):
                axpy8(gsum, zb + i, xp + i, d)
        else:
            for i in range(0, mp, 4):
                if nv > 0:
                    ger4_vec(gsum, xp + i, 4, zb + i * kp, kp, d, nv)
                else:
                    ger4(gsum, xp + i, zb + i * k, d, k)
        if intercept != NULL:
            for i in range(mp):
                for c in range(k):
                    gsum[d * kp + c] += zb[i * kp + c]
        flush_block(gacc, gsum, n_grad)
    sums[0] = loss
    sums[1] = wsum
    sums[2] = n_clipped
    return OK


def loss_grad_sums(int kind, const floating[:, ::1] X, const floating[::1] y,
                   const floating[:, ::1] coef, const floating[::1] intercept,
                   const floating[::1] sample_weight, const Py_ssize_t[::1] rows,
                   double[::1] grad_out, int n_threads, double clip_norm,
                   const double[::1] row_sq_norms):
    """Weighted loss and gradient sums of one loss over the rows of X.

    Parameters (validated by the caller)
    ----------
    kind : SQUARED, LOGISTIC or SOFTMAX.
    X : (n, d);  y : (n,) labels/targets in X's dtype;  coef : (d, k), k = 1
        unless softmax;  intercept : (k,) or empty for none;  sample_weight :
        (n,) or empty for unit weights;  rows : row indices, or empty for all
        rows;  grad_out : (d*k + k,) float64, overwritten with
        sum_i w_i dl_i/d(coef, intercept);  n_threads >= 1;
    clip_norm : C > 0 clips every example's weighted gradient w_i dl_i/d(coef,
        intercept) to norm C before it is summed (0: no clipping);
    row_sq_norms : (n,) float64, ||x_i||^2 of every row of X (read only when
        clipping; float64 whatever X's dtype, so the norms carry no extra rounding).

    Returns
    -------
    (loss_sum, weight_sum, n_clipped, status, bad_index): n_clipped counts the
    examples whose gradient was scaled down; loss_sum stays unclipped.  status
    is OK or the first problem a thread met (BAD_LABEL / NEGATIVE_WEIGHT at row
    bad_index, BAD_ROW at position bad_index of rows).
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], k = coef.shape[1]
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    # softmax with few classes: pad W to nv whole vectors per row
    cdef int nv = softmax_vectors(k, &X[0, 0]) if kind == SOFTMAX and n > 0 else 0
    cdef Py_ssize_t kp = nv * softmax_lanes(&X[0, 0]) if nv > 0 else k
    cdef Py_ssize_t B = block_rows(d * kp * sizeof(floating), BLOCK_BYTES, MAX_BLOCK_ROWS)
    cdef Py_ssize_t n_blocks = (n_rows + B - 1) // B
    cdef Py_ssize_t nt = choose_threads(n_threads, n_blocks, n_rows * d * k)
    cdef Py_ssize_t stride = (d * kp + k + 7) & ~7     # threads' accumulators 64 bytes apart
    grad_out[:] = 0
    if n_rows == 0 or n == 0:
        return 0.0, 0.0, 0, OK, -1

    dtype = np.float32 if floating is float else np.float64
    coef_used = coef
    if kp != k:
        coef_used = np.zeros((d, kp), dtype=dtype)
        coef_used[:, :k] = coef
    cdef const floating[:, ::1] W = coef_used
    # the intercept padded to kp columns (zeros: padding columns, or no intercept)
    cdef floating[::1] bpad = np.zeros(kp, dtype=dtype)
    if intercept.shape[0] > 0:
        bpad[:k] = intercept
    cdef floating[:, ::1] zbuf = np.empty((nt, (B + 8) * kp), dtype=dtype)
    cdef Py_ssize_t work_size = CYFED_SOFTMAX_WORK(k, B + 8) if kind == SOFTMAX else 0
    cdef floating[:, ::1] vbuf = np.empty((nt, 3 * (B + 8) + B * d + stride + work_size),
                                          dtype=dtype)
    cdef size_t[:, ::1] xptr = np.empty((nt, B + 8), dtype=np.uintp)
    cdef double[:, ::1] gacc = np.zeros((nt, stride), dtype=np.float64)
    cdef double[:, ::1] nsq = np.empty((nt, B if clip_norm > 0 else 1), dtype=np.float64)
    cdef double[:, ::1] sums = np.zeros((nt, 8), dtype=np.float64)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)

    cdef const floating *Xp = &X[0, 0]
    cdef const floating *ic = &intercept[0] if intercept.shape[0] > 0 else NULL
    cdef const floating *swp = &sample_weight[0] if sample_weight.shape[0] > 0 else NULL
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef const double *row_sq = &row_sq_norms[0] if clip_norm > 0 else NULL
    cdef Py_ssize_t t, j, c
    cdef Scratch *scratch = <Scratch *>PyMem_Malloc(nt * sizeof(Scratch))
    if scratch == NULL:
        raise MemoryError()
    for t in range(nt):
        scratch[t].z = &zbuf[t, 0]
        scratch[t].yb = &vbuf[t, 0]
        scratch[t].wb = &vbuf[t, B + 8]
        scratch[t].nsq = &nsq[t, 0]
        scratch[t].ones = &vbuf[t, 2 * (B + 8)]
        scratch[t].xcopy = &vbuf[t, 3 * (B + 8)]
        scratch[t].gblk = &vbuf[t, 3 * (B + 8) + B * d]
        scratch[t].work = &vbuf[t, 3 * (B + 8) + B * d + stride] if work_size > 0 else NULL
        scratch[t].xp = <const void **>&xptr[t, 0]
    try:
        for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
            status[t] = run_blocks(
                kind, Xp, n, d, k, kp, nv, &y[0], swp, rp, n_rows, B,
                t * n_blocks // nt, (t + 1) * n_blocks // nt, &W[0, 0], ic, &bpad[0], row_sq,
                clip_norm * clip_norm, scratch[t], &gacc[t, 0], &sums[t, 0], &bad[t])
    finally:
        PyMem_Free(scratch)

    for t in range(nt):
        if status[t] != OK:
            return 0.0, 0.0, 0, status[t], bad[t]
    cdef double loss = 0.0, wsum = 0.0, n_clipped = 0.0
    for t in range(nt):
        loss += sums[t, 0]
        wsum += sums[t, 1]
        n_clipped += sums[t, 2]
    for j in range(d):
        for c in range(k):
            grad_out[j * k + c] = 0
            for t in range(nt):
                grad_out[j * k + c] += gacc[t, j * kp + c]
    for c in range(k):
        grad_out[d * k + c] = 0
        for t in range(nt):
            grad_out[d * k + c] += gacc[t, d * kp + c]
    return loss, wsum, <Py_ssize_t>n_clipped, OK, -1


def margins(const floating[:, ::1] X, const floating[:, ::1] coef,
            const floating[::1] intercept, floating[:, ::1] out, int n_threads):
    """out = X @ coef + intercept, shapes (n, d) @ (d, k) -> (n, k); intercept may be empty."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], k = coef.shape[1]
    cdef Py_ssize_t n_octs = (n + 7) // 8
    cdef Py_ssize_t nt = choose_threads(n_threads, n_octs, n * d * k)
    if n == 0:
        return
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] zbuf = np.empty((nt, 8 * k), dtype=dtype)
    cdef const floating *ic = &intercept[0] if intercept.shape[0] > 0 else NULL
    cdef Py_ssize_t t
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        margins_range(&X[0, 0], n, d, k, &coef[0, 0], ic, &out[0, 0], &zbuf[t, 0],
                      t * n_octs // nt, (t + 1) * n_octs // nt)


cdef void margins_range(const floating *X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                        const floating *coef, const floating *intercept, floating *out,
                        floating *z, Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    """Margins of rows 8*q0 .. 8*q1-1 (clipped to n), eight rows at a time."""
    cdef const floating *xp[8]
    cdef Py_ssize_t q, u, c, i
    for q in range(q0, q1):
        for u in range(8):
            i = 8 * q + u
            xp[u] = X + (i if i < n else n - 1) * d
        if k == 1:
            dot8(xp, coef, d, z)
        else:
            for c in range(8 * k):
                z[c] = 0
            gemv4(xp, coef, d, k, z)
            gemv4(xp + 4, coef, d, k, z + 4 * k)
        for u in range(8):
            i = 8 * q + u
            if i < n:
                for c in range(k):
                    out[i * k + c] = z[u * k + c] + (intercept[c] if intercept != NULL else 0)
