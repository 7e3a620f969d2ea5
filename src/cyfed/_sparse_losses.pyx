"""Loss, gradient and Hessian kernels over CSR matrices (compiled; validated by
cyfed.gradients and cyfed.hessian).

X (n, d) is given as its CSR arrays: data (float32/float64), indices and indptr
(both int32 or both int64), and d.  Row i holds the entries data[p] at columns
indices[p], p in [indptr[i], indptr[i+1]).  Column indices may be unsorted, and
duplicates add up (as in scipy), everywhere except in `hessian_diag_sums` and
`row_sq_norms`, which square single entries: the caller passes a canonical
matrix (`scipy.sparse.csr_matrix.sum_duplicates`) there.  indptr is trusted (the
caller checks it: O(n)); every column index is checked here (O(nnz), alongside
the work) and one outside [0, d) gives the status BAD_COLUMN with the row.

The kernels mirror the dense ones of _losses / _hessian, argument for argument
with X replaced by (data, indices, indptr, n_features), with the same outputs,
statuses and thread semantics:

* `loss_grad_sums`: one pass over the nonzeros.  For a block of rows the margins
  z_i = x_i theta + b (double accumulators) are computed, turned into the loss
  and the multipliers r_i = w_i dl_i/dz by _vector_math's links, optionally
  clipped, and r_i x_i is scattered into the gradient while the block's
  nonzeros are still in cache.
* `curvature`, `hess_vec_sums`, `hessian_diag_sums`, `hessian_sums`: as in
  _hessian, row by row: H_i v = x~_i (x) h_i with h_i = D_i (x~_i v) (softmax:
  w_i (P_i * u_i - P_i (P_i . u_i)), u_i = x~_i V); the diagonal
  sum_i R_ic x_ij^2; the full Hessian by outer products of each row's nonzeros
  (p x p output: small d only).

Margins are accumulated in float64 against a float64 copy of coef whose last
row is the intercept (x~_i = (x_i, 1)).  Threads take contiguous ranges of row
blocks, each with a dense float64 accumulator of (d + 1) k entries (p^2 for
`hessian_sums`); they are added in thread order, so a result depends on the
thread count only.  In the first-order and Hessian-vector passes a thread's
accumulator is interleaved with its copy of coef (row j: coef[j, :], then the
gradient's k entries), so the scatter g[j] += x_ij r_i finds the line the margin
just read in L1 (measured ~7% faster than separate arrays at d = 50,000).  The
scatter costs O(nnz) and no sort; the accumulators O(threads d k) to clear and
merge, so a call uses fewer threads when that would rival its O(nnz k) work
(`sparse_threads`).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from cpython.mem cimport PyMem_Free, PyMem_Malloc

from cyfed._vector_math cimport (BLOCK_BYTES, CYFED_SOFTMAX_WORK, KIND_LOGISTIC, KIND_SOFTMAX,
                                 KIND_SQUARED, MAX_BLOCK_ROWS, block_rows, check_row,
                                 choose_threads, clip_rows, link)
from cyfed._vector_math cimport STATUS_OK as OK

cdef extern from "_vector_math.h" nogil:
    double cyfed_exp_neg_d(double x)

import numpy as np


ctypedef fused index_t:
    int32_t
    int64_t


cpdef enum SparseStatus:   # beyond cyfed._losses.Status (OK, BAD_LABEL, NEGATIVE_WEIGHT, BAD_ROW)
    BAD_COLUMN = 4         # a column index outside [0, d) in row bad_index of X


# ----------------------------------------------------------------------- row primitives

cdef inline bint columns_ok(const index_t *indices, Py_ssize_t lo, Py_ssize_t hi,
                            Py_ssize_t d) noexcept nogil:
    """Whether indices[lo:hi] all lie in [0, d) (a negative index wraps to a huge size_t)."""
    cdef Py_ssize_t p
    cdef size_t bad = 0
    for p in range(lo, hi):
        bad |= <size_t>(<Py_ssize_t>indices[p]) >= <size_t>d
    return bad == 0


cdef inline double row_dot(const floating *data, const index_t *indices, Py_ssize_t lo,
                           Py_ssize_t hi, const double *w, Py_ssize_t ld) noexcept nogil:
    """sum_p data[p] w[indices[p] ld] over p in [lo, hi), with four accumulators (the
    gathers of four entries overlap instead of waiting on one FMA chain)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef Py_ssize_t p = lo
    while p + 4 <= hi:
        s0 += <double>data[p] * w[indices[p] * ld]
        s1 += <double>data[p + 1] * w[indices[p + 1] * ld]
        s2 += <double>data[p + 2] * w[indices[p + 2] * ld]
        s3 += <double>data[p + 3] * w[indices[p + 3] * ld]
        p += 4
    while p < hi:
        s0 += <double>data[p] * w[indices[p] * ld]
        p += 1
    return (s0 + s1) + (s2 + s3)


cdef inline void row_margins(const floating *data, const index_t *indices, Py_ssize_t lo,
                             Py_ssize_t hi, Py_ssize_t k, const double *W, Py_ssize_t ld,
                             const double *b, double *z) noexcept nogil:
    """z[c] = sum_p data[p] W[indices[p] ld + c] + b[c], c < k."""
    cdef Py_ssize_t p, c
    cdef double x
    cdef const double *wj
    if k == 1:
        z[0] = row_dot(data, indices, lo, hi, W, ld) + b[0]
        return
    for c in range(k):
        z[c] = b[c]
    for p in range(lo, hi):
        x = data[p]
        wj = W + <Py_ssize_t>indices[p] * ld
        for c in range(k):
            z[c] += x * wj[c]


cdef inline void row_scatter(double *g, Py_ssize_t ld, const floating *data,
                             const index_t *indices, Py_ssize_t lo, Py_ssize_t hi,
                             Py_ssize_t k, const double *r, bint square) noexcept nogil:
    """g[indices[p] ld + c] += x_p r[c] for p in [lo, hi), c < k; x_p = data[p], or
    data[p]^2 when square."""
    cdef Py_ssize_t p, c
    cdef double x, r0 = r[0]
    cdef double *gj
    if k == 1:
        for p in range(lo, hi):
            x = data[p]
            g[indices[p] * ld] += (x * x if square else x) * r0
        return
    for p in range(lo, hi):
        x = data[p]
        if square:
            x = x * x
        gj = g + <Py_ssize_t>indices[p] * ld
        for c in range(k):
            gj[c] += x * r[c]


cdef object with_intercept(coef, intercept):
    """float64 (d + 1, k): coef's rows, then the intercept (zeros when empty) as row d,
    so that a margin is x~_i W with x~_i = (x_i, 1)."""
    d = coef.shape[0]
    W = np.zeros((d + 1, coef.shape[1]), dtype=np.float64)
    W[:d] = coef
    if intercept.shape[0] > 0:
        W[d] = intercept
    return W


cdef void fill_interleaved(double *wg, const double *W, Py_ssize_t rows,
                           Py_ssize_t k) noexcept nogil:
    """wg[j 2k + c] = W[j k + c] for the rows of W (the other k entries of each row of wg,
    the gradient's, are left as they are: zeros)."""
    cdef Py_ssize_t j, c
    for j in range(rows):
        for c in range(k):
            wg[j * 2 * k + c] = W[j * k + c]


cdef int gather(int kind, Py_ssize_t n, Py_ssize_t k, const floating *y, const floating *sw,
                const Py_ssize_t *rows, Py_ssize_t start, Py_ssize_t m, Py_ssize_t *rowb,
                double *wb, Py_ssize_t *bad) noexcept nogil:
    """Row numbers and weights of block rows start..start+m-1 into rowb / wb, validated
    by check_row (labels only when y is not NULL)."""
    cdef Py_ssize_t i
    cdef int status
    for i in range(m):
        status = check_row(kind, n, k, y, sw, rows, start + i, &rowb[i], bad)
        if status != OK:
            return status
        wb[i] = sw[rowb[i]] if sw != NULL else 1.0
    return OK


cdef int block_margins(const floating *data, const index_t *indices, const index_t *indptr,
                       Py_ssize_t d, Py_ssize_t k, const Py_ssize_t *rowb, Py_ssize_t m,
                       const double *W, Py_ssize_t ld, double *z,
                       Py_ssize_t *bad) noexcept nogil:
    """z[i k + c] = x~_i W[:, c] for the m rows rowb of a block (W: d + 1 rows of
    stride ld, the intercept last), after checking each row's column indices
    (BAD_COLUMN, bad = the row)."""
    cdef Py_ssize_t i, lo, hi
    for i in range(m):
        lo, hi = indptr[rowb[i]], indptr[rowb[i] + 1]
        if not columns_ok(indices, lo, hi, d):
            bad[0] = rowb[i]
            return BAD_COLUMN
        row_margins(data, indices, lo, hi, k, W, ld, W + d * ld, z + i * k)
    return OK


cdef inline Py_ssize_t sparse_threads(Py_ssize_t requested, Py_ssize_t n_blocks,
                                      Py_ssize_t nnz_work, Py_ssize_t acc_size) noexcept nogil:
    """Threads for nnz_work multiply-adds over n_blocks blocks, each thread clearing,
    filling and merging a dense accumulator of acc_size entries: choose_threads', then
    at most one per 8 acc_size of work.

    Measured (AMD EPYC, x86-64-v3, one thread): an accumulator entry costs 4-7 ns
    (d = 50,000 .. 10,000,000), a nonzero of the loss/gradient pass ~3.2 ns per class,
    so the cap keeps the accumulators under ~20% of a thread's time; at d = 50,000
    (800 KB per thread, k = 1) it only binds below ~800,000 nonzeros.
    """
    cdef Py_ssize_t nt = choose_threads(requested, n_blocks, nnz_work)
    cdef Py_ssize_t cap = nnz_work // (8 * acc_size)
    if nt > cap:
        nt = cap
    return nt if nt >= 1 else 1


cdef Py_ssize_t rows_work(const index_t *indptr, Py_ssize_t n, Py_ssize_t n_rows) noexcept nogil:
    """Nonzeros a pass over n_rows rows touches (estimated from the mean for a subset)."""
    cdef Py_ssize_t nnz = <Py_ssize_t>(indptr[n] - indptr[0])
    if n == 0:
        return 0
    return nnz if n_rows == n else (nnz // n + 1) * n_rows


cdef Py_ssize_t block_size(const index_t *indptr, Py_ssize_t n,
                           Py_ssize_t entry_bytes) noexcept nogil:
    """Rows per block: about BLOCK_BYTES of the mean row's nonzeros (a multiple of 8 in
    [8, MAX_BLOCK_ROWS]), so a block's entries stay in L1 between its two sweeps."""
    cdef Py_ssize_t per_row = (<Py_ssize_t>(indptr[n] - indptr[0]) // n + 1) if n > 0 else 1
    return block_rows(per_row * entry_bytes, BLOCK_BYTES, MAX_BLOCK_ROWS)


cdef object merge_threads(const int[::1] status, const Py_ssize_t[::1] bad,
                          const double[:, ::1] acc, Py_ssize_t ld, Py_ssize_t off,
                          Py_ssize_t width, double[::1] out, int n_threads):
    """(status, bad) of the first thread that failed; else (OK, -1) with
    out[j width + c] = sum_t acc[t, j ld + off + c] (c < width) added in thread order,
    the rows j split over threads."""
    cdef Py_ssize_t t, j, c, rows = out.shape[0] // width, nt = acc.shape[0]
    cdef Py_ssize_t chunk = 4096
    cdef Py_ssize_t n_chunks = (rows + chunk - 1) // chunk
    cdef Py_ssize_t q, lo, hi
    for t in range(status.shape[0]):
        if status[t] != OK:
            return status[t], bad[t]
    for q in prange(n_chunks, nogil=True, num_threads=min(n_threads, nt), schedule="static"):
        lo = q * chunk
        hi = min(lo + chunk, rows)
        for j in range(lo, hi):
            for c in range(width):
                out[j * width + c] = acc[0, j * ld + off + c]
        for t in range(1, nt):
            for j in range(lo, hi):
                for c in range(width):
                    out[j * width + c] += acc[t, j * ld + off + c]
    return OK, -1


cdef inline const floating *first_or_null(const floating[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


cdef int check_args(Py_ssize_t n, Py_ssize_t d, Py_ssize_t nnz_data, Py_ssize_t n_indices,
                    Py_ssize_t n_indptr, Py_ssize_t n_sw) except -1:
    """ValueError unless the CSR arrays fit (n, d) (indptr's values: the caller's)."""
    if n_indptr != n + 1 or n_indices != nnz_data or d < 1 or n_sw not in (0, n):
        raise ValueError(f"inconsistent CSR arrays: indptr {n_indptr} entries for "
                         f"{n} rows, data {nnz_data} / indices {n_indices} entries, "
                         f"n_features {d}, sample_weight {n_sw} entries")
    return 0


# ---------------------------------------------------------------------- first order

cdef struct Scratch:
    # Per-thread buffers of loss_grad_sums (B = rows per block).
    double *zd       # B * k margins, then gradient multipliers (double)
    void *z          # B * k the same in X's dtype, for the links
    void *yb         # B labels in X's dtype
    void *wf         # B weights in X's dtype
    double *wb       # B weights
    double *nsq      # B squared row norms (clipping)
    void *work       # CYFED_SOFTMAX_WORK(k, B) (softmax link)
    Py_ssize_t *rowb # B row numbers


cdef int loss_blocks(int kind, const floating *data, const index_t *indices,
                     const index_t *indptr, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                     const floating *y, const floating *sw, const Py_ssize_t *rows,
                     Py_ssize_t n_rows, Py_ssize_t B, Py_ssize_t b0, Py_ssize_t b1,
                     const double *W, bint has_b, const double *row_sq, double clip_sq,
                     Scratch s, double *wg, double *sums, Py_ssize_t *bad) noexcept nogil:
    """Loss and gradient sums over blocks b0..b1-1 into this thread's wg / sums
    (sums[0] loss, sums[1] weight, sums[2] rows clipped).

    wg (d + 1, 2k) interleaves each row of W (d + 1, k; the intercept last) with the
    gradient's: the margins' reads bring the lines the scatter then updates into L1.
    """
    cdef floating *z = <floating *>s.z
    cdef floating *yb = <floating *>s.yb
    cdef floating *wf = <floating *>s.wf
    cdef Py_ssize_t blk, start, m, i, c, row
    cdef int status
    cdef double loss = 0.0, wsum = 0.0, intercept_sq = 1.0 if has_b else 0.0
    cdef Py_ssize_t n_clipped = 0
    cdef double *bacc = wg + d * 2 * k + k
    fill_interleaved(wg, W, d + 1, k)
    for blk in range(b0, b1):
        start = blk * B
        m = n_rows - start if n_rows - start < B else B
        status = gather(kind, n, k, y, sw, rows, start, m, s.rowb, s.wb, bad)
        if status != OK:
            return status
        status = block_margins(data, indices, indptr, d, k, s.rowb, m, wg, 2 * k, s.zd, bad)
        if status != OK:
            return status
        for i in range(m):
            row = s.rowb[i]
            yb[i] = y[row]
            wf[i] = <floating>s.wb[i]
            wsum += s.wb[i]
            if row_sq != NULL:
                s.nsq[i] = row_sq[row]
        for i in range(m * k):
            z[i] = <floating>s.zd[i]
        loss += link(kind, z, yb, wf, m, k, k, <floating *>s.work)
        if row_sq != NULL:
            n_clipped += clip_rows(z, m, k, k, s.nsq, clip_sq, intercept_sq)
        for i in range(m):
            row = s.rowb[i]
            for c in range(k):
                s.zd[i * k + c] = z[i * k + c]
                if has_b:
                    bacc[c] += z[i * k + c]
            row_scatter(wg + k, 2 * k, data, indices, indptr[row], indptr[row + 1], k,
                        s.zd + i * k, False)
    sums[0] = loss
    sums[1] = wsum
    sums[2] = n_clipped
    return OK


def loss_grad_sums(int kind, const floating[::1] data, const index_t[::1] indices,
                   const index_t[::1] indptr, Py_ssize_t n_features, const floating[::1] y,
                   const floating[:, ::1] coef, const floating[::1] intercept,
                   const floating[::1] sample_weight, const Py_ssize_t[::1] rows,
                   double[::1] grad_out, int n_threads, double clip_norm,
                   const double[::1] row_sq_norms):
    """Weighted loss and gradient sums of one loss over the rows of a CSR X.

    Parameters (validated by the caller)
    ----------
    kind : SQUARED, LOGISTIC or SOFTMAX (cyfed._losses.LossKind).
    data, indices, indptr, n_features : X (n, d) in CSR form, n = len(indptr) - 1,
        d = n_features; indptr checked by the caller, column indices here.
    y, coef, intercept, sample_weight, rows, grad_out, n_threads, clip_norm,
    row_sq_norms : as cyfed._losses.loss_grad_sums (row_sq_norms: ||x_i||^2 of
        X's rows with duplicates summed, read only when clip_norm > 0).

    Returns
    -------
    (loss_sum, weight_sum, n_clipped, status, bad_index) as
    cyfed._losses.loss_grad_sums; status also BAD_COLUMN (bad_index: the row).
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1, d = n_features, k = coef.shape[1]
    check_args(n, d, data.shape[0], indices.shape[0], indptr.shape[0], sample_weight.shape[0])
    if coef.shape[0] != d or y.shape[0] != n or intercept.shape[0] not in (0, k) \
            or grad_out.shape[0] != d * k + k \
            or (clip_norm > 0 and row_sq_norms.shape[0] != n):
        raise ValueError("loss_grad_sums: inconsistent shapes of X, y, coef, intercept, "
                         "grad_out, row_sq_norms")
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    grad_out[:] = 0
    if n_rows == 0 or n == 0:
        return 0.0, 0.0, 0, OK, -1
    cdef Py_ssize_t B = block_size(&indptr[0], n, sizeof(floating) + sizeof(index_t))
    cdef Py_ssize_t n_blocks = (n_rows + B - 1) // B
    cdef Py_ssize_t stride = ((d + 1) * 2 * k + 7) & ~7     # threads' rows 64 bytes apart
    cdef Py_ssize_t nt = sparse_threads(n_threads, n_blocks,
                                        rows_work(&indptr[0], n, n_rows) * k, stride)
    dtype = np.float32 if floating is float else np.float64
    cdef const double[:, ::1] W = with_intercept(coef, intercept)
    cdef Py_ssize_t work_size = CYFED_SOFTMAX_WORK(k, B) if kind == KIND_SOFTMAX else 0
    cdef floating[:, ::1] fbuf = np.empty((nt, B * k + 2 * B + work_size + 1), dtype=dtype)
    cdef double[:, ::1] dbuf = np.empty((nt, B * k + 2 * B), dtype=np.float64)
    cdef Py_ssize_t[:, ::1] rowb = np.empty((nt, B), dtype=np.intp)
    cdef double[:, ::1] wg = np.zeros((nt, stride), dtype=np.float64)
    cdef double[:, ::1] sums = np.zeros((nt, 8), dtype=np.float64)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const double *row_sq = &row_sq_norms[0] if clip_norm > 0 else NULL
    cdef const floating *swp = first_or_null(sample_weight)
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef const floating *dp = &data[0] if data.shape[0] > 0 else NULL
    cdef const index_t *ip = &indices[0] if indices.shape[0] > 0 else NULL
    cdef Py_ssize_t t
    cdef Scratch *scratch = <Scratch *>PyMem_Malloc(nt * sizeof(Scratch))
    if scratch == NULL:
        raise MemoryError()
    for t in range(nt):
        scratch[t].zd = &dbuf[t, 0]
        scratch[t].wb = &dbuf[t, B * k]
        scratch[t].nsq = &dbuf[t, B * k + B]
        scratch[t].z = &fbuf[t, 0]
        scratch[t].yb = &fbuf[t, B * k]
        scratch[t].wf = &fbuf[t, B * k + B]
        scratch[t].work = &fbuf[t, B * k + 2 * B]
        scratch[t].rowb = &rowb[t, 0]
    try:
        for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
            status[t] = loss_blocks(
                kind, dp, ip, &indptr[0], n, d, k, &y[0], swp, rp, n_rows, B,
                t * n_blocks // nt, (t + 1) * n_blocks // nt, &W[0, 0],
                intercept.shape[0] > 0, row_sq, clip_norm * clip_norm, scratch[t], &wg[t, 0],
                &sums[t, 0], &bad[t])
    finally:
        PyMem_Free(scratch)
    result = merge_threads(status, bad, wg, 2 * k, k, k, grad_out, n_threads)
    if result[0] != OK:
        grad_out[:] = 0
        return 0.0, 0.0, 0, result[0], result[1]
    cdef double loss = 0.0, wsum = 0.0, n_clipped = 0.0
    for t in range(nt):
        loss += sums[t, 0]
        wsum += sums[t, 1]
        n_clipped += sums[t, 2]
    return loss, wsum, <Py_ssize_t>n_clipped, OK, -1


cdef void margins_rows(const floating *data, const index_t *indices, const index_t *indptr,
                       Py_ssize_t d, Py_ssize_t k, const double *W, floating *out, double *z,
                       Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t *bad) noexcept nogil:
    """out rows r0..r1-1 = X~ W (W (d + 1, k), the intercept last); bad = the first row
    with a column index out of range."""
    cdef Py_ssize_t i, c
    for i in range(r0, r1):
        if not columns_ok(indices, indptr[i], indptr[i + 1], d):
            bad[0] = i
            return
        row_margins(data, indices, indptr[i], indptr[i + 1], k, W, k, W + d * k, z)
        for c in range(k):
            out[i * k + c] = <floating>z[c]


def margins(const floating[::1] data, const index_t[::1] indices, const index_t[::1] indptr,
            Py_ssize_t n_features, const floating[:, ::1] coef,
            const floating[::1] intercept, floating[:, ::1] out, int n_threads):
    """out (n, k) = X @ coef + intercept for a CSR X (intercept may be empty).

    Returns (status, bad_index): OK, or BAD_COLUMN with the first bad row a thread met.
    """
    cdef Py_ssize_t n = indptr.shape[0] - 1, d = n_features, k = coef.shape[1]
    check_args(n, d, data.shape[0], indices.shape[0], indptr.shape[0], 0)
    if coef.shape[0] != d or intercept.shape[0] not in (0, k) or out.shape[0] != n \
            or out.shape[1] != k:
        raise ValueError("margins: inconsistent shapes of X, coef, intercept, out")
    if n == 0:
        return OK, -1
    cdef Py_ssize_t nt = choose_threads(n_threads, n, rows_work(&indptr[0], n, n) * k)
    cdef const double[:, ::1] W = with_intercept(coef, intercept)
    cdef double[:, ::1] z = np.empty((nt, k), dtype=np.float64)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const floating *dp = &data[0] if data.shape[0] > 0 else NULL
    cdef const index_t *ip = &indices[0] if indices.shape[0] > 0 else NULL
    cdef Py_ssize_t t
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        margins_rows(dp, ip, &indptr[0], d, k, &W[0, 0], &out[0, 0], &z[t, 0], t * n // nt,
                     (t + 1) * n // nt, &bad[t])
    for t in range(nt):
        if bad[t] >= 0:
            return BAD_COLUMN, bad[t]
    return OK, -1


def row_sq_norms(const floating[::1] data, const index_t[::1] indptr, double[::1] out):
    """out[i] = sum of data[p]^2 over row i, in double (||x_i||^2 for a canonical X)."""
    cdef Py_ssize_t i, p, n = indptr.shape[0] - 1
    cdef double s, x
    if out.shape[0] != n:
        raise ValueError(f"out must have {n} entries, got {out.shape[0]}")
    with nogil:
        for i in range(n):
            s = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                x = data[p]
                s += x * x
            out[i] = s


# ----------------------------------------------------------------------- second order

cdef int check_rows_shape(Py_ssize_t got, Py_ssize_t n_rows, str name,
                          Py_ssize_t k) except -1:
    """ValueError unless a per-row array holds n_rows x k entries."""
    if got != n_rows * k:
        raise ValueError(f"{name} must hold {n_rows} x {k} entries (one per row used and "
                         f"class), got {got}")
    return 0


cdef inline double logistic_curvature(double z) noexcept nogil:
    """sigmoid(z) sigmoid(-z) = t / (1 + t)^2 with t = exp(-|z|) <= 1 (no overflow)."""
    cdef double t = cyfed_exp_neg_d(-z if z >= 0 else z)
    return t / ((1.0 + t) * (1.0 + t))


cdef void softmax_row(const double *z, Py_ssize_t k, double *p) noexcept nogil:
    """p = softmax(z) (k entries), from exp(z_c - max z) <= 1."""
    cdef Py_ssize_t c
    cdef double mx = z[0], s = 0.0
    for c in range(1, k):
        if z[c] > mx:
            mx = z[c]
    for c in range(k):
        p[c] = cyfed_exp_neg_d(z[c] - mx)
        s += p[c]
    for c in range(k):
        p[c] /= s


cdef int curvature_blocks(int kind, const floating *data, const index_t *indices,
                          const index_t *indptr, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                          const floating *y, const floating *sw, const Py_ssize_t *rows,
                          Py_ssize_t n_rows, Py_ssize_t B, Py_ssize_t b0, Py_ssize_t b1,
                          const double *W, double *out, double *z, double *wb,
                          Py_ssize_t *rowb, Py_ssize_t *bad) noexcept nogil:
    """Curvature of the rows of blocks b0..b1-1 into out (row-major, k per row)."""
    cdef Py_ssize_t blk, start, m, i
    cdef int status
    for blk in range(b0, b1):
        start = blk * B
        m = n_rows - start if n_rows - start < B else B
        status = gather(kind, n, k, y, sw, rows, start, m, rowb, wb, bad)
        if status != OK:
            return status
        if kind == KIND_SQUARED:
            for i in range(m):
                out[start + i] = 2.0 * wb[i]
            continue
        status = block_margins(data, indices, indptr, d, k, rowb, m, W, k, z, bad)
        if status != OK:
            return status
        for i in range(m):
            if kind == KIND_LOGISTIC:
                out[start + i] = wb[i] * logistic_curvature(z[i])
            else:
                softmax_row(z + i * k, k, out + (start + i) * k)
    return OK


def curvature(int kind, const floating[::1] data, const index_t[::1] indices,
              const index_t[::1] indptr, Py_ssize_t n_features, const floating[::1] y,
              const floating[:, ::1] coef, const floating[::1] intercept,
              const floating[::1] sample_weight, const Py_ssize_t[::1] rows,
              double[::1] out, int n_threads):
    """Per-row curvature at (coef, intercept) into out, in the order of rows: as
    cyfed._hessian.curvature for a CSR X.  Returns (status, bad_index)."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, d = n_features, k = coef.shape[1]
    check_args(n, d, data.shape[0], indices.shape[0], indptr.shape[0], sample_weight.shape[0])
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    if coef.shape[0] != d or y.shape[0] != n or intercept.shape[0] not in (0, k) \
            or (kind != KIND_SOFTMAX and k != 1):
        raise ValueError("curvature: inconsistent shapes of X, y, coef, intercept")
    check_rows_shape(out.shape[0], n_rows, "out", k if kind == KIND_SOFTMAX else 1)
    if n_rows == 0 or n == 0:
        return OK, -1
    cdef Py_ssize_t B = block_size(&indptr[0], n, sizeof(floating) + sizeof(index_t))
    cdef Py_ssize_t n_blocks = (n_rows + B - 1) // B
    cdef Py_ssize_t nt = choose_threads(n_threads, n_blocks, rows_work(&indptr[0], n, n_rows) * k)
    cdef const double[:, ::1] W = with_intercept(coef, intercept)
    cdef double[:, ::1] z = np.empty((nt, B * k), dtype=np.float64)
    cdef double[:, ::1] wb = np.empty((nt, B), dtype=np.float64)
    cdef Py_ssize_t[:, ::1] rowb = np.empty((nt, B), dtype=np.intp)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const floating *swp = first_or_null(sample_weight)
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef const floating *dp = &data[0] if data.shape[0] > 0 else NULL
    cdef const index_t *ip = &indices[0] if indices.shape[0] > 0 else NULL
    cdef Py_ssize_t t
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        status[t] = curvature_blocks(
            kind, dp, ip, &indptr[0], n, d, k, &y[0], swp,
            rp, n_rows, B, t * n_blocks // nt, (t + 1) * n_blocks // nt, &W[0, 0], &out[0],
            &z[t, 0], &wb[t, 0], &rowb[t, 0], &bad[t])
    for t in range(nt):
        if status[t] != OK:
            return status[t], bad[t]
    return OK, -1


cdef int hv_blocks(int kind, const floating *data, const index_t *indices,
                   const index_t *indptr, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                   const floating *sw, const Py_ssize_t *rows, Py_ssize_t n_rows,
                   Py_ssize_t B, Py_ssize_t b0, Py_ssize_t b1, const double *curv,
                   const double *V, bint has_b, double *u, double *wb, Py_ssize_t *rowb,
                   double *vg, Py_ssize_t *bad) noexcept nogil:
    """sum_i H_i v over blocks b0..b1-1 into this thread's vg: V (d + 1, k; the
    intercept's direction last) interleaved with the sums as in loss_blocks."""
    cdef Py_ssize_t blk, start, m, i, c, row
    cdef int status
    cdef double pu
    cdef double *ui
    cdef const double *pi
    cdef double *bacc = vg + d * 2 * k + k
    fill_interleaved(vg, V, d + 1, k)
    for blk in range(b0, b1):
        start = blk * B
        m = n_rows - start if n_rows - start < B else B
        status = gather(kind, n, k, <const floating *>NULL, sw, rows, start, m, rowb, wb, bad)
        if status != OK:
            return status
        status = block_margins(data, indices, indptr, d, k, rowb, m, vg, 2 * k, u, bad)
        if status != OK:
            return status
        for i in range(m):
            ui = u + i * k
            if kind != KIND_SOFTMAX:
                ui[0] *= curv[start + i]                     # h_i = D_i u_i
            else:
                # h_i = w_i P_i * (u_i - P_i . u_i)
                pi = curv + (start + i) * k
                pu = 0.0
                for c in range(k):
                    pu += pi[c] * ui[c]
                for c in range(k):
                    ui[c] = wb[i] * pi[c] * (ui[c] - pu)
            if has_b:
                for c in range(k):
                    bacc[c] += ui[c]
            row = rowb[i]
            row_scatter(vg + k, 2 * k, data, indices, indptr[row], indptr[row + 1], k, ui,
                        False)
    return OK


def hess_vec_sums(int kind, const floating[::1] data, const index_t[::1] indices,
                  const index_t[::1] indptr, Py_ssize_t n_features,
                  const floating[::1] sample_weight, const Py_ssize_t[::1] rows,
                  const double[::1] curv, const floating[:, ::1] v,
                  const floating[::1] v_intercept, double[::1] out, int n_threads):
    """out (d*k + k,) = sum over the rows used of H_i (v, v_intercept): as
    cyfed._hessian.hess_vec_sums for a CSR X.  Returns (status, bad_index)."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, d = n_features, k = v.shape[1]
    check_args(n, d, data.shape[0], indices.shape[0], indptr.shape[0], sample_weight.shape[0])
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    if v.shape[0] != d or v_intercept.shape[0] not in (0, k) \
            or (kind != KIND_SOFTMAX and k != 1):
        raise ValueError("hess_vec_sums: inconsistent shapes of X, v, v_intercept")
    check_rows_shape(curv.shape[0], n_rows, "curv", k if kind == KIND_SOFTMAX else 1)
    if out.shape[0] != d * k + k:
        raise ValueError(f"out must have {d * k + k} entries, got {out.shape[0]}")
    out[:] = 0
    if n_rows == 0 or n == 0:
        return OK, -1
    cdef Py_ssize_t B = block_size(&indptr[0], n, sizeof(floating) + sizeof(index_t))
    cdef Py_ssize_t n_blocks = (n_rows + B - 1) // B
    cdef Py_ssize_t stride = ((d + 1) * 2 * k + 7) & ~7
    cdef Py_ssize_t nt = sparse_threads(n_threads, n_blocks,
                                        rows_work(&indptr[0], n, n_rows) * k, stride)
    cdef const double[:, ::1] V = with_intercept(v, v_intercept)
    cdef double[:, ::1] u = np.empty((nt, B * k), dtype=np.float64)
    cdef double[:, ::1] wb = np.empty((nt, B), dtype=np.float64)
    cdef Py_ssize_t[:, ::1] rowb = np.empty((nt, B), dtype=np.intp)
    cdef double[:, ::1] vg = np.zeros((nt, stride), dtype=np.float64)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const floating *swp = first_or_null(sample_weight)
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef const floating *dp = &data[0] if data.shape[0] > 0 else NULL
    cdef const index_t *ip = &indices[0] if indices.shape[0] > 0 else NULL
    cdef Py_ssize_t t
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        status[t] = hv_blocks(
            kind, dp, ip, &indptr[0], n, d, k, swp, rp,
            n_rows, B, t * n_blocks // nt, (t + 1) * n_blocks // nt, &curv[0], &V[0, 0],
            v_intercept.shape[0] > 0, &u[t, 0], &wb[t, 0], &rowb[t, 0], &vg[t, 0], &bad[t])
    return merge_threads(status, bad, vg, 2 * k, k, k, out, n_threads)


cdef inline void row_factors(int kind, const double *curv, Py_ssize_t pos, Py_ssize_t k,
                             double w, double *r) noexcept nogil:
    """r[c] = R_c of row number pos: D_i (binary) or w_i P_ic (1 - P_ic) (softmax)."""
    cdef Py_ssize_t c
    cdef const double *pi
    if kind != KIND_SOFTMAX:
        r[0] = curv[pos]
        return
    pi = curv + pos * k
    for c in range(k):
        r[c] = w * pi[c] * (1.0 - pi[c])


cdef int diag_rows(int kind, const floating *data, const index_t *indices,
                   const index_t *indptr, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                   const floating *sw, const Py_ssize_t *rows, Py_ssize_t r0, Py_ssize_t r1,
                   const double *curv, bint has_b, double *r, double *gacc,
                   Py_ssize_t *bad) noexcept nogil:
    """The diagonal of sum_i H_i over row numbers r0..r1-1 into this thread's gacc:
    entry j k + c gains sum_i R_ic x_ij^2, and (has_b) entry d k + c sum_i R_ic."""
    cdef Py_ssize_t pos, row, lo, hi, c
    cdef int status
    for pos in range(r0, r1):
        status = check_row(kind, n, k, <const floating *>NULL, sw, rows, pos, &row, bad)
        if status != OK:
            return status
        lo, hi = indptr[row], indptr[row + 1]
        if not columns_ok(indices, lo, hi, d):
            bad[0] = row
            return BAD_COLUMN
        row_factors(kind, curv, pos, k, sw[row] if sw != NULL else 1.0, r)
        row_scatter(gacc, k, data, indices, lo, hi, k, r, True)
        if has_b:
            for c in range(k):
                gacc[d * k + c] += r[c]
    return OK


def hessian_diag_sums(int kind, const floating[::1] data, const index_t[::1] indices,
                      const index_t[::1] indptr, Py_ssize_t n_features,
                      const floating[::1] sample_weight, const Py_ssize_t[::1] rows,
                      const double[::1] curv, Py_ssize_t k, bint fit_intercept,
                      double[::1] out, int n_threads):
    """out (d*k + k,) = the diagonal of hessian_sums' result for a CSR X without
    duplicate entries (as cyfed._hessian.hessian_diag_sums).  Returns (status, bad_index)."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, d = n_features
    check_args(n, d, data.shape[0], indices.shape[0], indptr.shape[0], sample_weight.shape[0])
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    if k < 1 or (kind != KIND_SOFTMAX and k != 1):
        raise ValueError("hessian_diag_sums: inconsistent k")
    check_rows_shape(curv.shape[0], n_rows, "curv", k if kind == KIND_SOFTMAX else 1)
    if out.shape[0] != d * k + k:
        raise ValueError(f"out must have {d * k + k} entries, got {out.shape[0]}")
    out[:] = 0
    if n_rows == 0 or n == 0:
        return OK, -1
    cdef Py_ssize_t stride = (d * k + k + 7) & ~7
    cdef Py_ssize_t nt = sparse_threads(n_threads, n_rows,
                                        rows_work(&indptr[0], n, n_rows) * k, stride)
    cdef double[:, ::1] r = np.empty((nt, k), dtype=np.float64)
    cdef double[:, ::1] gacc = np.zeros((nt, stride), dtype=np.float64)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const floating *swp = first_or_null(sample_weight)
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef const floating *dp = &data[0] if data.shape[0] > 0 else NULL
    cdef const index_t *ip = &indices[0] if indices.shape[0] > 0 else NULL
    cdef Py_ssize_t t
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        status[t] = diag_rows(
            kind, dp, ip, &indptr[0], n, d, k, swp, rp,
            t * n_rows // nt, (t + 1) * n_rows // nt, &curv[0], fit_intercept, &r[t, 0],
            &gacc[t, 0], &bad[t])
    return merge_threads(status, bad, gacc, k, 0, k, out, n_threads)


cdef void row_hessian_factor(int kind, const double *curv, Py_ssize_t pos, Py_ssize_t k,
                             double w, double *M) noexcept nogil:
    """M (k, k) with H_i = (x~_i x~_i^T) (x) M: D_i (binary), w_i (diag(P_i) - P_i P_i^T)."""
    cdef Py_ssize_t c, e
    cdef const double *pi
    if kind != KIND_SOFTMAX:
        M[0] = curv[pos]
        return
    pi = curv + pos * k
    for c in range(k):
        for e in range(k):
            M[c * k + e] = w * ((pi[c] if c == e else 0.0) - pi[c] * pi[e])


cdef int hessian_rows(int kind, const floating *data, const index_t *indices,
                      const index_t *indptr, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                      const floating *sw, const Py_ssize_t *rows, Py_ssize_t r0,
                      Py_ssize_t r1, const double *curv, bint has_b, double *M, double *H,
                      Py_ssize_t *bad) noexcept nogil:
    """sum_i H_i over row numbers r0..r1-1 into this thread's H (p, p), p = d k + k:
    for every pair (a, e) of x~_i's nonzeros (the intercept a (d, 1) entry),
    H[j_a k + c, j_e k + c'] += x_a x_e M[c, c']."""
    cdef Py_ssize_t p = d * k + k
    cdef Py_ssize_t pos, row, lo, hi, a, e, c, c2, ja, je, na
    cdef int status
    cdef double xa, xe, s
    cdef double *Hrow
    for pos in range(r0, r1):
        status = check_row(kind, n, k, <const floating *>NULL, sw, rows, pos, &row, bad)
        if status != OK:
            return status
        lo, hi = indptr[row], indptr[row + 1]
        if not columns_ok(indices, lo, hi, d):
            bad[0] = row
            return BAD_COLUMN
        row_hessian_factor(kind, curv, pos, k, sw[row] if sw != NULL else 1.0, M)
        na = hi - lo + has_b
        for a in range(na):
            ja, xa = d, 1.0                 # the intercept's entry of x~_i, last
            if a < hi - lo:
                ja, xa = indices[lo + a], data[lo + a]
            for e in range(na):
                je, xe = d, 1.0
                if e < hi - lo:
                    je, xe = indices[lo + e], data[lo + e]
                s = xa * xe
                for c in range(k):
                    Hrow = H + (ja * k + c) * p + je * k
                    for c2 in range(k):
                        Hrow[c2] += s * M[c * k + c2]
    return OK


def hessian_sums(int kind, const floating[::1] data, const index_t[::1] indices,
                 const index_t[::1] indptr, Py_ssize_t n_features,
                 const floating[::1] sample_weight, const Py_ssize_t[::1] rows,
                 const double[::1] curv, Py_ssize_t k, bint fit_intercept,
                 double[:, ::1] out, int n_threads):
    """out (p, p), p = d*k + k, = sum over the rows used of H_i for a CSR X (as
    cyfed._hessian.hessian_sums; O(sum_i nnz_i^2 k^2) work, p^2 memory per thread:
    for small d).  Returns (status, bad_index)."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, d = n_features, p = d * k + k
    check_args(n, d, data.shape[0], indices.shape[0], indptr.shape[0], sample_weight.shape[0])
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    if k < 1 or (kind != KIND_SOFTMAX and k != 1):
        raise ValueError("hessian_sums: inconsistent k")
    check_rows_shape(curv.shape[0], n_rows, "curv", k if kind == KIND_SOFTMAX else 1)
    if out.shape[0] != p or out.shape[1] != p:
        raise ValueError(f"out must have shape ({p}, {p}), got ({out.shape[0]}, "
                         f"{out.shape[1]})")
    out[:, :] = 0
    if n_rows == 0 or n == 0:
        return OK, -1
    cdef Py_ssize_t per_row = rows_work(&indptr[0], n, n_rows) // n_rows + fit_intercept
    cdef Py_ssize_t nt = sparse_threads(n_threads, n_rows, n_rows * per_row * per_row * k * k,
                                        p * p)
    cdef double[:, ::1] M = np.empty((nt, k * k), dtype=np.float64)
    cdef double[:, ::1] H = np.zeros((nt, p * p), dtype=np.float64)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const floating *swp = first_or_null(sample_weight)
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef const floating *dp = &data[0] if data.shape[0] > 0 else NULL
    cdef const index_t *ip = &indices[0] if indices.shape[0] > 0 else NULL
    cdef Py_ssize_t t
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        status[t] = hessian_rows(
            kind, dp, ip, &indptr[0], n, d, k, swp, rp,
            t * n_rows // nt, (t + 1) * n_rows // nt, &curv[0], fit_intercept, &M[t, 0],
            &H[t, 0], &bad[t])
    return merge_threads(status, bad, H, 1, 0, 1, np.asarray(out).reshape(-1), n_threads)
