"""Second-order kernels of the linear-model losses (compiled; validated by cyfed.hessian).

With z_i = x_i theta + b and x~_i = (x_i, 1) (or x_i without intercept), row i's
Hessian with respect to (theta, b) is

    squared, logistic:  D_i x~_i x~_i^T,   D_i = 2 w_i  resp.  w_i s_i (1 - s_i),
    softmax:            w_i (x~_i x~_i^T) (x) (diag(P_i) - P_i P_i^T),  P_i = softmax(z_i).

`curvature` computes D (weighted) or P (unweighted) in one pass over X;
`hess_vec_sums` the sum over rows of H_i v in one fused pass: for a block of rows
u = X_b v (+ v_b) is computed, turned into h_i = D_i u_i (softmax: w_i (P_i * u_i -
P_i (P_i . u_i))) and X_b^T h accumulated while the block is still in cache;
`hessian_sums` the sum of the H_i: each block of rows is copied to float64, scaled
by the square roots of the curvature and packed, and its A^T A accumulated by the
register-blocked syrk of _hessian_ops.h (single-threaded BLAS syrk on the same
blocks measured ~20% slower, and a BLAS called from these threads would start
threads of its own).

`hessian_diag_sums` the diagonal of that sum in one pass (TRON's preconditioner):
each block of rows is squared into scratch and sum_i R_ic x_ij^2 accumulated by
the Hv pass's micro-kernels (R_ic = D_i, softmax w_i P_ic (1 - P_ic)).

Row blocks, thread counts and kernel statuses come from _vector_math.pxd (shared
with _losses; have_openmp / max_threads are cyfed._losses').  Threads as in
_losses: each takes a contiguous range of blocks and its own float64 accumulator,
and the per-thread sums are added in thread order, so a result depends on the
thread count only.  Sums, not means: scaling and the L2 term are
the caller's business.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from cyfed._vector_math cimport (BLOCK_BYTES, KIND_LOGISTIC, KIND_SOFTMAX, KIND_SQUARED,
                                 MAX_BLOCK_ROWS, axpy8, block_margins, block_rows, check_row,
                                 choose_threads, ger4, ger4_vec, next_block, softmax_lanes,
                                 softmax_vectors)
# kernel statuses: the values of cyfed._losses.Status
from cyfed._vector_math cimport STATUS_OK as OK

cdef extern from "_vector_math.h" nogil:
    double cyfed_exp_neg_d(double x)

cdef extern from "_hessian_ops.h" nogil:
    int CYFED_MR
    int CYFED_NR
    void cyfed_pack_row(double *a, double *b, const double *row, Py_ssize_t q, Py_ssize_t i,
                        Py_ssize_t m)
    void cyfed_syrk_packed(double *C, Py_ssize_t ldc, const double *a, const double *b,
                           Py_ssize_t m, Py_ssize_t q, double alpha)

import numpy as np

# Rows per block of the curvature, Hv and diagonal passes: _vector_math's BLOCK_BYTES /
# MAX_BLOCK_ROWS, as _losses (the block stays in L1 between X_b v and X_b^T h).
# Rows per block of the Hessian: its two packed float64 copies stay in L2.
cdef Py_ssize_t HESSIAN_BLOCK_BYTES = 256 * 1024
cdef Py_ssize_t MAX_HESSIAN_ROWS = 512


cdef int gather(const floating *X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k, int kind,
                const floating *y, const floating *sw, const Py_ssize_t *rows,
                Py_ssize_t start, Py_ssize_t m, const floating **xp, double *wb,
                Py_ssize_t *bad) noexcept nogil:
    """Row pointers and weights of block rows start..start+m-1, validated (labels
    only when y is not NULL), padded to a multiple of 8 with weight-0 copies of
    the first row."""
    cdef Py_ssize_t i, row
    cdef int status
    for i in range(m):
        status = check_row(kind, n, k, y, sw, rows, start + i, &row, bad)
        if status != OK:
            return status
        xp[i] = X + row * d
        wb[i] = sw[row] if sw != NULL else 1.0
    for i in range(m, (m + 7) & ~7):
        xp[i] = xp[0]
        wb[i] = 0
    return OK


cdef inline double logistic_curvature(double z) noexcept nogil:
    """sigmoid(z) sigmoid(-z) = t / (1 + t)^2 with t = exp(-|z|) <= 1 (no overflow)."""
    cdef double t = cyfed_exp_neg_d(-z if z >= 0 else z)
    return t / ((1.0 + t) * (1.0 + t))


cdef int curvature_blocks(int kind, const floating *X, Py_ssize_t n, Py_ssize_t d,
                          Py_ssize_t k, Py_ssize_t kp, int nv, const floating *y,
                          const floating *sw, const Py_ssize_t *rows, Py_ssize_t n_rows,
                          Py_ssize_t B, Py_ssize_t b0, Py_ssize_t b1, const floating *W,
                          const floating *bpad, double *out, floating *z,
                          const floating **xp, double *wb, Py_ssize_t *bad) noexcept nogil:
    """Curvature of the rows of blocks b0..b1-1 into out (row-major, k per row)."""
    cdef Py_ssize_t blk, start, m, mp, i, c, ahead_bytes
    cdef const char *ahead = NULL
    cdef int status
    cdef double mx, e, s
    cdef const floating *zi
    cdef double *oi
    for blk in range(b0, b1):
        start = blk * B
        m = n_rows - start if n_rows - start < B else B
        mp = (m + 7) & ~7
        status = gather(X, n, d, k, kind, y, sw, rows, start, m, xp, wb, bad)
        if status != OK:
            return status
        if kind == KIND_SQUARED:
            for i in range(m):
                out[start + i] = 2.0 * wb[i]
            continue
        ahead_bytes = next_block(X, d, n_rows, start, B, &ahead) if rows == NULL else 0
        block_margins(kind, xp, mp, d, k, kp, nv, W, bpad, True, z, ahead, ahead_bytes)
        if kind == KIND_LOGISTIC:
            for i in range(m):
                out[start + i] = wb[i] * logistic_curvature(z[i])
            continue
        for i in range(m):
            zi = z + i * kp
            oi = out + (start + i) * k
            mx = zi[0]
            for c in range(1, k):
                if zi[c] > mx:
                    mx = zi[c]
            s = 0.0
            for c in range(k):
                e = cyfed_exp_neg_d(zi[c] - mx)
                oi[c] = e
                s += e
            for c in range(k):
                oi[c] /= s
    return OK


cdef object padded(W, Py_ssize_t kp):
    """W (d, k) with its columns zero-padded to kp (W itself when kp == k)."""
    if W.shape[1] == kp:
        return W
    out = np.zeros((W.shape[0], kp), dtype=W.dtype)
    out[:, :W.shape[1]] = W
    return out


cdef int layout(int kind, Py_ssize_t k, const floating *type_tag,
                Py_ssize_t *kp) noexcept nogil:
    """Vectors per row of the softmax micro-kernels (0: none) and, into kp, the
    class count padded to them (k without)."""
    cdef int nv = softmax_vectors(k, type_tag) if kind == KIND_SOFTMAX else 0
    kp[0] = nv * softmax_lanes(type_tag) if nv > 0 else k
    return nv


cdef int check_rows_shape(Py_ssize_t got, Py_ssize_t n_rows, str name,
                          Py_ssize_t k) except -1:
    """ValueError unless a per-row array holds n_rows x k entries."""
    if got != n_rows * k:
        raise ValueError(f"{name} must hold {n_rows} x {k} entries (one per row used and "
                         f"class), got {got}")
    return 0


def curvature(int kind, const floating[:, ::1] X, const floating[::1] y,
              const floating[:, ::1] coef, const floating[::1] intercept,
              const floating[::1] sample_weight, const Py_ssize_t[::1] rows,
              double[::1] out, int n_threads):
    """Per-row curvature at (coef, intercept) into out, in the order of rows.

    Parameters as _losses.loss_grad_sums (rows empty: all rows); out has n_rows
    entries (squared: 2 w_i, logistic: w_i s_i (1 - s_i)) or n_rows * k (softmax:
    softmax(z_i), row-major, unweighted).  Labels and weights are validated as by
    loss_grad_sums.  Returns (status, bad_index) as loss_grad_sums does.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], k = coef.shape[1]
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    if coef.shape[0] != d or y.shape[0] != n or intercept.shape[0] not in (0, k) \
            or sample_weight.shape[0] not in (0, n) or (kind != KIND_SOFTMAX and k != 1):
        raise ValueError("curvature: inconsistent shapes of X, y, coef, intercept, "
                         "sample_weight")
    check_rows_shape(out.shape[0], n_rows, "out", k if kind == KIND_SOFTMAX else 1)
    if n_rows == 0 or n == 0:
        return OK, -1
    cdef Py_ssize_t kp
    cdef int nv = layout(kind, k, &X[0, 0], &kp)
    cdef Py_ssize_t B = block_rows(d * sizeof(floating), BLOCK_BYTES, MAX_BLOCK_ROWS)
    cdef Py_ssize_t n_blocks = (n_rows + B - 1) // B
    cdef Py_ssize_t nt = choose_threads(n_threads, n_blocks,
                                        n_rows * d * k if kind != KIND_SQUARED else n_rows)
    dtype = np.float32 if floating is float else np.float64
    cdef const floating[:, ::1] W = padded(np.asarray(coef), kp)
    cdef floating[::1] bpad = np.zeros(kp, dtype=dtype)
    if intercept.shape[0] > 0:
        bpad[:k] = intercept
    cdef floating[:, ::1] z = np.empty((nt, (B + 8) * <Py_ssize_t>kp), dtype=dtype)
    cdef double[:, ::1] wb = np.empty((nt, B + 8), dtype=np.float64)
    cdef size_t[:, ::1] xptr = np.empty((nt, B + 8), dtype=np.uintp)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const floating *swp = &sample_weight[0] if sample_weight.shape[0] > 0 else NULL
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef Py_ssize_t t
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        status[t] = curvature_blocks(
            kind, &X[0, 0], n, d, k, kp, nv, &y[0], swp, rp, n_rows, B,
            t * n_blocks // nt, (t + 1) * n_blocks // nt, &W[0, 0], &bpad[0], &out[0],
            &z[t, 0], <const floating **>&xptr[t, 0], &wb[t, 0], &bad[t])
    for t in range(nt):
        if status[t] != OK:
            return status[t], bad[t]
    return OK, -1


cdef object thread_sums(const int[::1] status, const Py_ssize_t[::1] bad,
                        const double[:, ::1] gacc, Py_ssize_t d, Py_ssize_t k, Py_ssize_t kp,
                        double[::1] out):
    """(status, bad_index) of the first thread that failed; else (OK, -1), out (zeroed)
    gaining the threads' accumulators in thread order (a row of gacc: d * kp coef
    entries, padding columns skipped, then k intercept entries)."""
    cdef Py_ssize_t t, j, c
    for t in range(status.shape[0]):
        if status[t] != OK:
            return status[t], bad[t]
    for t in range(gacc.shape[0]):
        for j in range(d):
            for c in range(k):
                out[j * k + c] += gacc[t, j * kp + c]
        for c in range(k):
            out[d * k + c] += gacc[t, d * kp + c]
    return OK, -1


cdef void add_block_products(const floating **xp, floating *h, Py_ssize_t m, Py_ssize_t mp,
                             Py_ssize_t d, Py_ssize_t k, Py_ssize_t kp, int nv, int kind,
                             floating *gblk, double *gacc) noexcept nogil:
    """gacc[j kp + c] += sum_i x_ij h_ic over a block's rows xp (h: m rows of kp
    multipliers, 1 unless softmax; its padding rows up to mp are zeroed here).

    float64 data accumulates straight into gacc; float32 data sums the block in
    float32 into gblk (full SIMD width) and adds that into gacc, so rounding does
    not grow with n.
    """
    cdef floating *gsum
    cdef Py_ssize_t i
    if floating is double:
        gsum = gacc
    else:
        gsum = gblk
        for i in range(d * kp):
            gsum[i] = 0
    if kind != KIND_SOFTMAX:
        for i in range(m, mp):
            h[i] = 0
        for i in range(0, mp, 8):
            axpy8(gsum, h + i, xp + i, d)
    else:
        for i in range(m * kp, mp * kp):
            h[i] = 0
        for i in range(0, mp, 4):
            if nv > 0:
                ger4_vec(gsum, xp + i, 4, h + i * kp, kp, d, nv)
            else:
                ger4(gsum, xp + i, h + i * k, d, k)
    if floating is float:
        for i in range(d * kp):
            gacc[i] += gsum[i]


cdef int hv_blocks(int kind, const floating *X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                   Py_ssize_t kp, int nv, const floating *sw, const Py_ssize_t *rows,
                   Py_ssize_t n_rows, Py_ssize_t B, Py_ssize_t b0, Py_ssize_t b1,
                   const double *curv, const floating *V, const floating *vpad, bint has_b,
                   floating *u, floating *gblk, const floating **xp, double *wb,
                   double *gacc, Py_ssize_t *bad) noexcept nogil:
    """sum_i H_i v over blocks b0..b1-1 into this thread's gacc (d * kp coef entries,
    then k intercept entries)."""
    cdef Py_ssize_t blk, start, m, mp, i, c, ahead_bytes
    cdef const char *ahead = NULL
    cdef int status
    cdef double h, pu
    cdef floating *ui
    cdef const double *pi
    cdef double *bacc = gacc + d * kp
    for blk in range(b0, b1):
        start = blk * B
        m = n_rows - start if n_rows - start < B else B
        mp = (m + 7) & ~7
        status = gather(X, n, d, k, kind, <const floating *>NULL, sw, rows, start, m, xp, wb,
                        bad)
        if status != OK:
            return status
        ahead_bytes = next_block(X, d, n_rows, start, B, &ahead) if rows == NULL else 0
        block_margins(kind, xp, mp, d, k, kp, nv, V, vpad, True, u, ahead, ahead_bytes)
        if kind != KIND_SOFTMAX:
            # h_i = D_i u_i
            for i in range(m):
                h = curv[start + i] * u[i]
                u[i] = <floating>h
                if has_b:
                    bacc[0] += h
        else:
            # h_i = w_i P_i * (u_i - P_i . u_i); padding lanes of u stay 0
            for i in range(m):
                ui = u + i * kp
                pi = curv + (start + i) * k
                pu = 0.0
                for c in range(k):
                    pu += pi[c] * ui[c]
                for c in range(k):
                    h = wb[i] * pi[c] * (ui[c] - pu)
                    ui[c] = <floating>h
                    if has_b:
                        bacc[c] += h
        add_block_products(xp, u, m, mp, d, k, kp, nv, kind, gblk, gacc)
    return OK


def hess_vec_sums(int kind, const floating[:, ::1] X, const floating[::1] sample_weight,
                  const Py_ssize_t[::1] rows, const double[::1] curv,
                  const floating[:, ::1] v, const floating[::1] v_intercept,
                  double[::1] out, int n_threads):
    """out (d*k + k,) = sum over the rows used of H_i (v, v_intercept).

    curv is `curvature`'s output for the same rows; v (d, k) the coef part of the
    direction, v_intercept (k,) its intercept part or empty for a model without
    intercept (out's last k entries are then 0).  Returns (status, bad_index):
    BAD_ROW or NEGATIVE_WEIGHT as loss_grad_sums.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], k = v.shape[1]
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    if v.shape[0] != d or v_intercept.shape[0] not in (0, k) \
            or sample_weight.shape[0] not in (0, n) or (kind != KIND_SOFTMAX and k != 1):
        raise ValueError("hess_vec_sums: inconsistent shapes of X, v, v_intercept, "
                         "sample_weight")
    check_rows_shape(curv.shape[0], n_rows, "curv", k if kind == KIND_SOFTMAX else 1)
    if out.shape[0] != d * k + k:
        raise ValueError(f"out must have {d * k + k} entries, got {out.shape[0]}")
    out[:] = 0
    if n_rows == 0 or n == 0:
        return OK, -1
    cdef Py_ssize_t kp
    cdef int nv = layout(kind, k, &X[0, 0], &kp)
    cdef Py_ssize_t B = block_rows(d * kp * sizeof(floating), BLOCK_BYTES, MAX_BLOCK_ROWS)
    cdef Py_ssize_t n_blocks = (n_rows + B - 1) // B
    cdef Py_ssize_t nt = choose_threads(n_threads, n_blocks, n_rows * d * k)
    cdef Py_ssize_t stride = (d * kp + k + 7) & ~7     # threads' accumulators 64 bytes apart
    dtype = np.float32 if floating is float else np.float64
    cdef const floating[:, ::1] V = padded(np.asarray(v), kp)
    cdef floating[::1] vpad = np.zeros(kp, dtype=dtype)
    if v_intercept.shape[0] > 0:
        vpad[:k] = v_intercept
    cdef floating[:, ::1] u = np.empty((nt, (B + 8) * <Py_ssize_t>kp), dtype=dtype)
    cdef floating[:, ::1] gblk = np.empty((nt, stride if floating is float else 1), dtype=dtype)
    cdef double[:, ::1] wb = np.empty((nt, B + 8), dtype=np.float64)
    cdef size_t[:, ::1] xptr = np.empty((nt, B + 8), dtype=np.uintp)
    cdef double[:, ::1] gacc = np.zeros((nt, stride), dtype=np.float64)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const floating *swp = &sample_weight[0] if sample_weight.shape[0] > 0 else NULL
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef bint has_b = v_intercept.shape[0] > 0
    cdef Py_ssize_t t
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        status[t] = hv_blocks(
            kind, &X[0, 0], n, d, k, kp, nv, swp, rp, n_rows, B,
            t * n_blocks // nt, (t + 1) * n_blocks // nt, &curv[0], &V[0, 0], &vpad[0], has_b,
            &u[t, 0], &gblk[t, 0], <const floating **>&xptr[t, 0], &wb[t, 0], &gacc[t, 0],
            &bad[t])
    return thread_sums(status, bad, gacc, d, k, kp, out)


cdef void square_rows(const floating **xp, Py_ssize_t mp, Py_ssize_t d,
                      floating *xsq) noexcept nogil:
    """xsq[i d + j] = xp[i][j]^2 for the mp rows xp, which then point into xsq.

    No software prefetch of the next block here (unlike the margins' passes): on
    300,000 x 100 it made the pass ~1.4x slower than the hardware prefetcher alone,
    the whole next block's prefetches being issued in one burst."""
    cdef Py_ssize_t i, j
    cdef const floating *x
    cdef floating *o
    for i in range(mp):
        x = xp[i]
        o = xsq + i * d
        for j in range(d):
            o[j] = x[j] * x[j]
        xp[i] = o


cdef int diag_blocks(int kind, const floating *X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                     Py_ssize_t kp, int nv, const floating *sw, const Py_ssize_t *rows,
                     Py_ssize_t n_rows, Py_ssize_t B, Py_ssize_t b0, Py_ssize_t b1,
                     const double *curv, bint has_b, floating *xsq, floating *r,
                     floating *gblk, const floating **xp, double *wb, double *gacc,
                     Py_ssize_t *bad) noexcept nogil:
    """The diagonal of sum_i H_i over blocks b0..b1-1 into this thread's gacc: entry
    j kp + c gains sum_i R_ic x_ij^2 and (has_b) entry d kp + c sum_i R_ic, with
    R_ic = D_i (binary) or w_i P_ic (1 - P_ic) (softmax).  The block's rows are
    squared into xsq and summed against R as the Hv pass sums X_b^T h."""
    cdef Py_ssize_t blk, start, m, mp, i, c
    cdef int status
    cdef double h
    cdef const double *pi
    cdef floating *ri
    cdef double *bacc = gacc + d * kp
    for blk in range(b0, b1):
        start = blk * B
        m = n_rows - start if n_rows - start < B else B
        mp = (m + 7) & ~7
        status = gather(X, n, d, k, kind, <const floating *>NULL, sw, rows, start, m, xp, wb,
                        bad)
        if status != OK:
            return status
        square_rows(xp, mp, d, xsq)
        if kind != KIND_SOFTMAX:
            for i in range(m):
                h = curv[start + i]
                r[i] = <floating>h
                if has_b:
                    bacc[0] += h
        else:
            for i in range(m):
                pi = curv + (start + i) * k
                ri = r + i * kp
                for c in range(k):
                    h = wb[i] * pi[c] * (1.0 - pi[c])
                    ri[c] = <floating>h
                    if has_b:
                        bacc[c] += h
                for c in range(k, kp):
                    ri[c] = 0
        add_block_products(xp, r, m, mp, d, k, kp, nv, kind, gblk, gacc)
    return OK


def hessian_diag_sums(int kind, const floating[:, ::1] X, const floating[::1] sample_weight,
                      const Py_ssize_t[::1] rows, const double[::1] curv, Py_ssize_t k,
                      bint fit_intercept, double[::1] out, int n_threads):
    """out (d*k + k,) = the diagonal of hessian_sums' result, in one pass over X:
    sum_i R_ic x_ij^2 at j k + c, then sum_i R_ic at d k + c (0 when not
    fit_intercept), R_ic = D_i (squared, logistic) or w_i P_ic (1 - P_ic) (softmax).

    curv is `curvature`'s output for the same rows.  Returns (status, bad_index):
    BAD_ROW or NEGATIVE_WEIGHT as loss_grad_sums.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1]
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    if sample_weight.shape[0] not in (0, n) or k < 1 or (kind != KIND_SOFTMAX and k != 1):
        raise ValueError("hessian_diag_sums: inconsistent shapes of X, sample_weight, k")
    check_rows_shape(curv.shape[0], n_rows, "curv", k if kind == KIND_SOFTMAX else 1)
    if out.shape[0] != d * k + k:
        raise ValueError(f"out must have {d * k + k} entries, got {out.shape[0]}")
    out[:] = 0
    if n_rows == 0 or n == 0:
        return OK, -1
    cdef Py_ssize_t kp
    cdef int nv = layout(kind, k, &X[0, 0], &kp)
    # the squared block (not X's, which is read once) stays in L1 for the accumulation
    cdef Py_ssize_t B = block_rows(d * sizeof(floating), BLOCK_BYTES, MAX_BLOCK_ROWS)
    cdef Py_ssize_t n_blocks = (n_rows + B - 1) // B
    cdef Py_ssize_t nt = choose_threads(n_threads, n_blocks, n_rows * d * k)
    cdef Py_ssize_t stride = (d * kp + k + 7) & ~7     # threads' accumulators 64 bytes apart
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] xsq = np.empty((nt, B * d), dtype=dtype)
    cdef floating[:, ::1] r = np.empty((nt, B * kp), dtype=dtype)
    cdef floating[:, ::1] gblk = np.empty((nt, stride if floating is float else 1), dtype=dtype)
    cdef double[:, ::1] wb = np.empty((nt, B + 8), dtype=np.float64)
    cdef size_t[:, ::1] xptr = np.empty((nt, B + 8), dtype=np.uintp)
    cdef double[:, ::1] gacc = np.zeros((nt, stride), dtype=np.float64)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const floating *swp = &sample_weight[0] if sample_weight.shape[0] > 0 else NULL
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef Py_ssize_t t
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        status[t] = diag_blocks(
            kind, &X[0, 0], n, d, k, kp, nv, swp, rp, n_rows, B,
            t * n_blocks // nt, (t + 1) * n_blocks // nt, &curv[0], fit_intercept,
            &xsq[t, 0], &r[t, 0], &gblk[t, 0], <const floating **>&xptr[t, 0], &wb[t, 0],
            &gacc[t, 0], &bad[t])
    return thread_sums(status, bad, gacc, d, k, kp, out)


cdef void scaled_row(double *t, const floating *x, Py_ssize_t d, bint has_b,
                     double s) noexcept nogil:
    """t[0..d + has_b) = s x~ (x~ = (x, 1) with an intercept)."""
    cdef Py_ssize_t j
    for j in range(d):
        t[j] = s * x[j]
    if has_b:
        t[d] = s


cdef int hessian_blocks(int kind, const floating *X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                        const floating *sw, const Py_ssize_t *rows, Py_ssize_t n_rows,
                        Py_ssize_t B, Py_ssize_t b0, Py_ssize_t b1, const double *curv,
                        bint has_b, double *t, double *pa, double *pb, const floating **xp,
                        double *wb, double *C, Py_ssize_t ldc, Py_ssize_t *bad) noexcept nogil:
    """sum_i H_i over blocks b0..b1-1 into the lower triangle of this thread's C.

    C (row stride ldc) is indexed class-major: entry c dd + j (dd = d + has_b) is
    coef[j, c], j = d the intercept.  Per block, each class's diagonal block of C
    gains A^T A with A[i] = sqrt(a_ic) x~_i, a_ic = D_i (binary) or w_i P_ic
    (softmax); softmax then subtracts A1^T A1, A1[i, c dd + j] = sqrt(w_i) P_ic x~_ij
    (the rank-one terms w_i g_i g_i^T, g_i = x~_i (x) P_i).  t is a row of scratch,
    pa / pb the block's two packings (_hessian_ops.h).
    """
    cdef Py_ssize_t dd = d + has_b, q = dd * k
    cdef Py_ssize_t blk, start, m, i, c
    cdef int status
    cdef double sw_i
    cdef const double *pi
    for blk in range(b0, b1):
        start = blk * B
        m = n_rows - start if n_rows - start < B else B
        status = gather(X, n, d, k, kind, <const floating *>NULL, sw, rows, start, m, xp, wb,
                        bad)
        if status != OK:
            return status
        for c in range(k):
            for i in range(m):
                scaled_row(t, xp[i], d, has_b, sqrt(curv[start + i] if kind != KIND_SOFTMAX
                                                    else wb[i] * curv[(start + i) * k + c]))
                cyfed_pack_row(pa, pb, t, dd, i, m)
            cyfed_syrk_packed(C + c * dd * (ldc + 1), ldc, pa, pb, m, dd, 1.0)
        if kind != KIND_SOFTMAX:
            continue
        for i in range(m):
            sw_i = sqrt(wb[i])
            pi = curv + (start + i) * k
            for c in range(k):
                scaled_row(t + c * dd, xp[i], d, has_b, sw_i * pi[c])
            cyfed_pack_row(pa, pb, t, q, i, m)
        cyfed_syrk_packed(C, ldc, pa, pb, m, q, -1.0)
    return OK


def hessian_sums(int kind, const floating[:, ::1] X, const floating[::1] sample_weight,
                 const Py_ssize_t[::1] rows, const double[::1] curv, Py_ssize_t k,
                 bint fit_intercept, double[:, ::1] out, int n_threads):
    """out (p, p), p = d*k + k, = sum over the rows used of H_i (the intercept rows
    and columns 0 when not fit_intercept), in loss_grad_sums' flat layout.

    curv is `curvature`'s output for the same rows.  Returns (status, bad_index):
    BAD_ROW or NEGATIVE_WEIGHT as loss_grad_sums.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], p = d * k + k
    cdef Py_ssize_t n_rows = rows.shape[0] if rows.shape[0] > 0 else n
    if sample_weight.shape[0] not in (0, n) or k < 1 or (kind != KIND_SOFTMAX and k != 1):
        raise ValueError("hessian_sums: inconsistent shapes of X, sample_weight, k")
    check_rows_shape(curv.shape[0], n_rows, "curv", k if kind == KIND_SOFTMAX else 1)
    if out.shape[0] != p or out.shape[1] != p:
        raise ValueError(f"out must have shape ({p}, {p}), got ({out.shape[0]}, "
                         f"{out.shape[1]})")
    out[:, :] = 0
    if n_rows == 0 or n == 0:
        return OK, -1
    cdef Py_ssize_t dd = d + fit_intercept, q = dd * k
    cdef Py_ssize_t B = block_rows(q * sizeof(double), HESSIAN_BLOCK_BYTES, MAX_HESSIAN_ROWS)
    cdef Py_ssize_t n_blocks = (n_rows + B - 1) // B
    cdef Py_ssize_t nt = choose_threads(n_threads, n_blocks, n_rows * q * q)
    # room for the tiles' overhang past q (_hessian_ops.h)
    cdef Py_ssize_t ldc = q + CYFED_NR
    cdef double[:, ::1] t_row = np.empty((nt, q), dtype=np.float64)
    cdef double[:, ::1] pa = np.empty((nt, B * (q + CYFED_MR)), dtype=np.float64)
    cdef double[:, ::1] pb = np.empty((nt, B * (q + CYFED_NR)), dtype=np.float64)
    cdef double[:, :, ::1] C = np.zeros((nt, q + CYFED_MR, ldc), dtype=np.float64)
    cdef double[:, ::1] wb = np.empty((nt, B + 8), dtype=np.float64)
    cdef size_t[:, ::1] xptr = np.empty((nt, B + 8), dtype=np.uintp)
    cdef int[::1] status = np.zeros(nt, dtype=np.intc)
    cdef Py_ssize_t[::1] bad = np.full(nt, -1, dtype=np.intp)
    cdef const floating *swp = &sample_weight[0] if sample_weight.shape[0] > 0 else NULL
    cdef const Py_ssize_t *rp = &rows[0] if rows.shape[0] > 0 else NULL
    cdef Py_ssize_t t, a, b
    for t in prange(nt, nogil=True, num_threads=nt, schedule="static", chunksize=1):
        status[t] = hessian_blocks(
            kind, &X[0, 0], n, d, k, swp, rp, n_rows, B,
            t * n_blocks // nt, (t + 1) * n_blocks // nt, &curv[0], fit_intercept,
            &t_row[t, 0], &pa[t, 0], &pb[t, 0], <const floating **>&xptr[t, 0], &wb[t, 0],
            &C[t, 0, 0], ldc, &bad[t])
    for t in range(nt):
        if status[t] != OK:
            return status[t], bad[t]
    # perm[c dd + j] = j k + c: class-major -> loss_grad_sums' (d, k) then k layout
    cdef Py_ssize_t[::1] perm = (np.arange(dd)[None, :] * k
                                 + np.arange(k)[:, None]).ravel().astype(np.intp)
    for a in range(q):
        for b in range(a + 1):
            for t in range(1, nt):
                C[0, a, b] += C[t, a, b]
            out[perm[a], perm[b]] = C[0, a, b]
            out[perm[b], perm[a]] = C[0, a, b]
    return OK, -1
