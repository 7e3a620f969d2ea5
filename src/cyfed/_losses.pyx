"""Fused loss/gradient kernels (compiled; validated by cyfed.gradients).

One pass over the rows of X: for a block of rows, the margins z = x.theta + b
are computed, turned into the loss and the gradient multipliers r = w dl/dz by
a link, and r x is accumulated while the block is still in cache.  Each thread
takes a contiguous range of blocks and its own double accumulator; the per-thread
sums are added in thread order at the end.

Returned are sums, not means: sum_i w_i l_i, sum_i w_i, and into grad_out
sum_i w_i dl_i/dtheta (then the intercept part).  Means and the L2 term are the
caller's business, which is what a distributed trainer needs for its Allreduce.

Where BLAS does the two sweeps faster (`uses_blas`: squared/logistic with d > 16,
and softmax in float32 off AVX-512 builds; all rows, no clipping) a block of rows
goes instead through two BLAS calls on the thread that owns it, z = X_b theta,
then X_b^T r (see "BLAS path" below); same sums, statuses and determinism.

Optional per-example clipping (DP-SGD): example i's gradient with respect to
(theta, b) is x_i (x) r_i and r_i, of squared norm ||r_i||^2 (||x_i||^2 + [b]), so
scaling r_i by min(1, C / that norm) before r x is accumulated clips it without
ever forming the per-example gradient.
"""
from cython cimport floating
from cython.parallel cimport prange
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

from cyfed._vector_math cimport (BLOCK_BYTES, CYFED_NARROW_MAX, CYFED_SOFTMAX_WORK,
                                 MAX_BLOCK_ROWS, axpy8, block_margins, block_rows, check_block,
                                 check_row, choose_threads, clip_rows, cyfed_have_openmp,
                                 cyfed_max_threads, dot8, gemv4, ger4, ger4_vec, link, narrow,
                                 next_block, softmax_lanes, softmax_vectors)

import numpy as np

cdef extern from "_vector_math.h" nogil:
    void cyfed_col_sums_d(double*, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t)
    void cyfed_col_sums_f(float*, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t)
    void cyfed_add_intercept_d(double*, const double*, Py_ssize_t, Py_ssize_t)
    void cyfed_add_intercept_f(float*, const float*, Py_ssize_t, Py_ssize_t)


cdef inline void col_sums(floating *acc, const floating *z, Py_ssize_t m, Py_ssize_t k,
                          Py_ssize_t ldz) noexcept nogil:
    """acc[c] += sum_i z[i * ldz + c] for c < k (vectorised across rows for k = 1)."""
    if floating is double:
        cyfed_col_sums_d(acc, z, m, k, ldz)
    else:
        cyfed_col_sums_f(acc, z, m, k, ldz)


cdef inline void add_intercept(floating *z, const floating *b, Py_ssize_t m,
                               Py_ssize_t k) noexcept nogil:
    """z[i * k + c] += b[c] for m rows of k margins."""
    if floating is double:
        cyfed_add_intercept_d(z, b, m, k)
    else:
        cyfed_add_intercept_f(z, b, m, k)

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
            col_sums(gsum + d * kp, zb, mp, k, kp)
        flush_block(gacc, gsum, n_grad)
    sums[0] = loss
    sums[1] = wsum
    sums[2] = n_clipped
    return OK


# ------------------------------------------------------------------------------ BLAS path
#
# Where a pass over X is not bound by memory (X in cache, or a core slower than its
# memory) OpenBLAS's gemv/gemm micro-kernels do the arithmetic of the two sweeps
# faster than the fused pass's eight-row dot products.  So blocks of rows go through
# two BLAS calls, z = X_b theta (+ b), then grad += X_b^T r, the block still in L2
# for the second: X is read from memory once, as by the fused pass.
# Each thread runs its own contiguous range of blocks, calling BLAS itself, and keeps
# its own float64 accumulator (summed in thread order as in the fused pass), so the
# result depends on n_threads only.  A block is small enough that OpenBLAS runs
# every call on the calling thread (no OpenBLAS threads: no oversubscription with
# ours, and no summation order that varies with OpenBLAS's thread count):
#   gemv with m n < 2304 * GEMM_MULTITHREAD_THRESHOLD (= 9216 by default) and gemm
#   with m n k <= 65536 * GEMM_MULTITHREAD_THRESHOLD (= 262144) run single-threaded
#   (OpenBLAS interface/gemv.c, interface/gemm.c).
# float32 blocks are summed by BLAS in float32 and then added into float64, as the
# fused pass does with its (smaller) blocks.
#
# Which path a call takes: `uses_blas`.  The BLAS functions are scipy's
# (scipy.linalg.cython_blas, the BLAS scipy links), looked up on first use so that
# `import cyfed` does not import scipy.linalg (~250 ms).

ctypedef void (*dgemv_fn)(char *, int *, int *, double *, double *, int *, double *, int *,
                          double *, double *, int *) noexcept nogil
ctypedef void (*sgemv_fn)(char *, int *, int *, float *, float *, int *, float *, int *,
                          float *, float *, int *) noexcept nogil
ctypedef void (*dgemm_fn)(char *, char *, int *, int *, int *, double *, double *, int *,
                          double *, int *, double *, double *, int *) noexcept nogil
ctypedef void (*sgemm_fn)(char *, char *, int *, int *, int *, float *, float *, int *,
                          float *, int *, float *, float *, int *) noexcept nogil

cdef dgemv_fn blas_dgemv = NULL
cdef sgemv_fn blas_sgemv = NULL
cdef dgemm_fn blas_dgemm = NULL
cdef sgemm_fn blas_sgemm = NULL
cdef int blas_state = 0            # 0: not looked up yet, 1: loaded, -1: unavailable

cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define CYFED_LOSSES_AVX512 1
    #else
    #define CYFED_LOSSES_AVX512 0
    #endif
    """
    int CYFED_LOSSES_AVX512    # this build has AVX-512 (x86-64-v4)

# Which problems take the BLAS path, by measurement (kernel time, one thread, CPU
# time, BLAS path / fused pass; 2-core AMD EPYC 7002 "Zen 2", 512 KiB L2 per core,
# 16 MiB L3, x86-64-v3 build, scipy's OpenBLAS 0.3.30 Haswell kernels):
#
#   squared/logistic, d = 100   n = 2,500 (1.9 MB) ... 1,000,000 (763 MB):  0.74 - 0.87
#   squared/logistic, d = 1000  n = 10,000 and 100,000 (float64, float32):    0.94 - 1.02
#   softmax k = 10, float32     every n above, d = 100 and 1000:              0.33 - 0.42
#   softmax k = 10, float64     every n above, d = 100 and 1000:              1.05 - 1.23
#
# The BLAS path reads X from memory once too (a block's second pass hits L2), so X's
# size does not decide between the paths on this machine: the micro-kernels do.
# On an AVX-512 build (x86-64-v4, measured on Zen 4 before this path existed) the
# fused pass ran at the memory floor for X out of cache (0.91 - 1.02 x one gemv at
# 1,000,000 x 100 float64) and its softmax kernels use full-width vectors, so there
# the BLAS path is kept to X that fits in cache and to squared/logistic (unmeasured
# on that machine since).

#: X of at most this many bytes may take the BLAS path (AVX-512 builds: the L3 of the
#: 2-core cloud EPYC, 16 MiB; other builds: any size, see above).
BLAS_MAX_X_BYTES = 16 * 1024 * 1024 if CYFED_LOSSES_AVX512 else 1 << 62
#: Item sizes (4: float32, 8: float64) for which softmax takes the BLAS path.
BLAS_SOFTMAX_ITEMSIZES = () if CYFED_LOSSES_AVX512 else (4,)
#: Elements of X per gemv block (< 9216: OpenBLAS stays on the calling thread).
cdef Py_ssize_t GEMV_BLOCK_ELEMS = 8192
#: Multiply-adds per gemm block (<= 262144: OpenBLAS stays on the calling thread).
cdef Py_ssize_t GEMM_BLOCK_MACS = 262144
#: At most this many rows per block: float32 blocks are summed in float32 (by BLAS)
#: before they reach the float64 accumulator, so their rounding grows with the block.
cdef Py_ssize_t MAX_BLAS_BLOCK_ROWS = 512


cdef void *capsule_pointer(capi, name) except NULL:
    capsule = capi[name]
    return PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


cdef int load_blas():
    """Look up scipy's BLAS once; 1 if usable, -1 if not (the fused path then runs)."""
    global blas_dgemv, blas_sgemv, blas_dgemm, blas_sgemm, blas_state
    if blas_state == 0:
        try:
            from scipy.linalg import cython_blas
            capi = cython_blas.__pyx_capi__
            blas_dgemv = <dgemv_fn>capsule_pointer(capi, "dgemv")
            blas_sgemv = <sgemv_fn>capsule_pointer(capi, "sgemv")
            blas_dgemm = <dgemm_fn>capsule_pointer(capi, "dgemm")
            blas_sgemm = <sgemm_fn>capsule_pointer(capi, "sgemm")
            blas_state = 1
        except Exception:
            blas_state = -1
    return blas_state


def uses_blas(int kind, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k, Py_ssize_t itemsize,
              bint all_rows=True, bint clipping=False):
    """Whether loss_grad_sums runs the BLAS path for this problem (else the fused pass).

    X (n, d) of `itemsize`-byte floats, k classes (1 unless softmax); all_rows: no
    `rows` subset; clipping: a clip_norm > 0.
    """
    if not all_rows or clipping or n <= 0:
        return False
    if kind == SOFTMAX:
        if itemsize not in BLAS_SOFTMAX_ITEMSIZES:
            return False
    elif d <= CYFED_NARROW_MAX:                         # the narrow kernels are faster
        return False
    if d * 8 > GEMV_BLOCK_ELEMS or d * k * 8 > GEMM_BLOCK_MACS:   # blocks of >= 8 rows
        return False
    return n * d * itemsize <= BLAS_MAX_X_BYTES and load_blas() == 1


cdef inline void gemv(char trans, int m, int n, floating alpha, const floating *a, int lda,
                      const floating *x, floating beta, floating *y) noexcept nogil:
    """y = alpha op(A) x + beta y, A (m, n) column-major (BLAS ?gemv, unit strides)."""
    cdef int one = 1
    if floating is double:
        blas_dgemv(&trans, &m, &n, &alpha, <double *>a, &lda, <double *>x, &one, &beta, y,
                   &one)
    else:
        blas_sgemv(&trans, &m, &n, &alpha, <float *>a, &lda, <float *>x, &one, &beta, y,
                   &one)


cdef inline void gemm(char transa, char transb, int m, int n, int kk, const floating *a,
                      int lda, const floating *b, int ldb, floating beta, floating *c,
                      int ldc) noexcept nogil:
    """C = op(A) op(B) + beta C, column-major (BLAS ?gemm with alpha = 1)."""
    cdef floating alpha = 1
    if floating is double:
        blas_dgemm(&transa, &transb, &m, &n, &kk, &alpha, <double *>a, &lda, <double *>b,
                   &ldb, &beta, c, &ldc)
    else:
        blas_sgemm(&transa, &transb, &m, &n, &kk, &alpha, <float *>a, &lda, <float *>b,
                   &ldb, &beta, c, &ldc)


cdef int run_blas_blocks(int kind, const floating *X, Py_ssize_t n, Py_ssize_t d,
                         Py_ssize_t k, const floating *y, const floating *sw, Py_ssize_t B,
                         Py_ssize_t b0, Py_ssize_t b1, const floating *W,
                         const floating *intercept, floating *z, floating *ones,
                         floating *gblk, floating *work, double *gacc, double *sums,
                         Py_ssize_t *bad) noexcept nogil:
    """Loss and gradient sums over blocks b0..b1-1 (B rows each) of all of X's rows,
    by BLAS calls on this thread, into gacc (d*k + k) and sums (loss, weight).

    X (n, d) is, in BLAS's column-major terms, the d x n matrix X^T with ld d; W (d, k)
    is W^T (k x d, ld k).  Labels and weights are checked block by block before the
    block is used: the first bad row of the range is reported as by the fused pass.
    """
    cdef floating *gsum
    if floating is double:
        gsum = gacc                 # float64: BLAS adds straight into the accumulator
    else:
        gsum = gblk                 # float32: a block's sums, then added into float64
    cdef floating one = 1, zero = 0
    cdef floating beta = 1 if floating is double else 0
    cdef Py_ssize_t blk, start, m, i, off, row
    cdef Py_ssize_t dk = d * k
    cdef int status, dd = <int>d, kk = <int>k, mm
    cdef double loss = 0.0, wsum = 0.0
    cdef const floating *Xb
    cdef const floating *wb
    for i in range(B):
        ones[i] = 1
    for blk in range(b0, b1):
        start = blk * B
        m = n - start if n - start < B else B
        mm = <int>m
        Xb = X + start * d
        wb = sw + start if sw != NULL else ones
        if kind == SOFTMAX:
            for i in range(start, start + m):
                status = check_row(kind, n, k, y, sw, NULL, i, &row, bad)
                if status != OK:
                    return status
            check_block(kind, y + start, sw + start if sw != NULL else NULL, m, &wsum)
            # Z^T (k x m) = W^T (k x d) X_b^T (d x m)
            gemm(c'N', c'N', kk, mm, dd, W, kk, Xb, dd, zero, z, kk)
        else:
            off = check_block(kind, y + start, sw + start if sw != NULL else NULL, m, &wsum)
            if off >= 0:
                bad[0] = start + off
                return NEGATIVE_WEIGHT if wb[off] < 0 else BAD_LABEL
            # z (m) = (X_b^T)^T theta
            gemv(c'T', dd, mm, one, Xb, dd, W, zero, z)
        if intercept != NULL:
            add_intercept(z, intercept, m, k)
        loss += link(kind, z, y + start, wb, m, k, k, work)
        if kind == SOFTMAX:
            # G^T (k x d) += R^T (k x m) X_b (m x d)
            gemm(c'N', c'T', kk, dd, mm, z, kk, Xb, dd, beta, gsum, kk)
        else:
            # g (d) += X_b^T r
            gemv(c'N', dd, mm, one, Xb, dd, z, beta, gsum)
        if intercept != NULL:
            if floating is float:
                for i in range(k):
                    gsum[dk + i] = 0
            col_sums(gsum + dk, z, m, k, k)
        if floating is float:
            for i in range(dk + (k if intercept != NULL else 0)):
                gacc[i] += gsum[i]
    sums[0] = loss
    sums[1] = wsum
    return OK


cdef blas_sums(int kind, const floating[:, ::1] X, const floating[::1] y,
               const floating[:, ::1] coef, const floating[::1] intercept,
               const floating[::1] sample_weight, double[::1] grad_out, int n_threads):
    """loss_grad_sums by the BLAS path (all rows, no clipping; see `uses_blas`)."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], k = coef.shape[1]
    cdef Py_ssize_t B
    if kind == SOFTMAX:
        B = GEMM_BLOCK_MACS // (d * k)
    else:
        B = GEMV_BLOCK_ELEMS // d
    B = B if B < MAX_BLAS_BLOCK_ROWS else MAX_BLAS_BLOCK_ROWS
    B = B - B % 8 if B >= 8 else 8
    cdef Py_ssize_t n_blocks = (n + B - 1) // B
    cdef Py_ssize_t nt = choose_threads(n_threads, n_blocks, n * d * k)
    cdef Py_ssize_t n_grad = d * k + k
    # one allocation per call: every thread's scratch (floats) and accumulators
    # (doubles), each thread's 64-byte aligned and 64 bytes apart
    cdef Py_ssize_t work_size = CYFED_SOFTMAX_WORK(k, B + 8) if kind == SOFTMAX else 0
    cdef Py_ssize_t n_float = (B * k + B + n_grad + work_size + 15) & ~15
    cdef Py_ssize_t n_double = (n_grad + 8 + 7) & ~7
    cdef Py_ssize_t stride = n_float * sizeof(floating) + n_double * sizeof(double)
    cdef char *raw = <char *>PyMem_Malloc(nt * stride + 64)
    if raw == NULL:
        raise MemoryError()
    cdef char *base = <char *>((<size_t>raw + 63) & ~(<size_t>63))
    cdef floating *fl
    cdef double *acc
    cdef Py_ssize_t t, j, i
    cdef int status_buf[64]
    cdef Py_ssize_t bad_buf[64]
    cdef int *status = status_buf
    cdef Py_ssize_t *bad = bad_buf
    cdef const floating *ic = &intercept[0] if intercept.shape[0] > 0 else NULL
    cdef const floating *swp = &sample_weight[0] if sample_weight.shape[0] > 0 else NULL
    cdef double loss = 0.0, wsum = 0.0
    try:
        if nt > 64:
            status = <int *>PyMem_Malloc(nt * (sizeof(int) + sizeof(Py_ssize_t)))
            if status == NULL:
                raise MemoryError()
            bad = <Py_ssize_t *>(status + nt)
        for t in range(nt):
            acc = <double *>(base + t * stride + n_float * sizeof(floating))
            for j in range(n_double):
                acc[j] = 0
            bad[t] = -1
        if nt == 1:
            with nogil:
                fl = <floating *>base
                status[0] = run_blas_blocks(
                    kind, &X[0, 0], n, d, k, &y[0], swp, B, 0, n_blocks, &coef[0, 0], ic,
                    fl, fl + B * k, fl + B * k + B, fl + B * k + B + n_grad,
                    <double *>(base + n_float * sizeof(floating)),
                    <double *>(base + n_float * sizeof(floating)) + n_grad, &bad[0])
        else:
            for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
                fl = <floating *>(base + t * stride)
                acc = <double *>(base + t * stride + n_float * sizeof(floating))
                status[t] = run_blas_blocks(
                    kind, &X[0, 0], n, d, k, &y[0], swp, B, t * n_blocks // nt,
                    (t + 1) * n_blocks // nt, &coef[0, 0], ic, fl, fl + B * k,
                    fl + B * k + B, fl + B * k + B + n_grad, acc, acc + n_grad, &bad[t])
        for t in range(nt):
            if status[t] != OK:
                return 0.0, 0.0, 0, status[t], bad[t]
        for t in range(nt):
            acc = <double *>(base + t * stride + n_float * sizeof(floating))
            loss += acc[n_grad]
            wsum += acc[n_grad + 1]
            for j in range(n_grad):
                grad_out[j] += acc[j]
    finally:
        if status != status_buf:
            PyMem_Free(status)
        PyMem_Free(raw)
    return loss, wsum, 0, OK, -1


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
    if uses_blas(kind, n, d, k, sizeof(floating), rows.shape[0] == 0, clip_norm > 0):
        return blas_sums(kind, X, y, coef, intercept, sample_weight, grad_out, n_threads)

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
