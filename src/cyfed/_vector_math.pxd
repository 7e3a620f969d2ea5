"""Declarations of the C primitives in _vector_math.h and float/double dispatchers.

_vector_math.h instantiates the type-generic _loss_ops.h (for _losses, _sgd) and
_aggregate_ops.h (for _aggregate, _compress), so everything is declared from it.
cimported by the kernel modules; each dispatcher picks the _d or _f C function
for the fused `floating` type at compile time.
"""
from cython cimport floating

cdef extern from "_vector_math.h" nogil:
    int CYFED_NARROW_MAX
    int CYFED_NET_BYTES
    Py_ssize_t CYFED_SOFTMAX_WORK(Py_ssize_t k, Py_ssize_t m)
    int CYFED_VEC_BYTES_d
    int CYFED_VEC_BYTES_f
    int CYFED_MAX_NV_d
    int CYFED_MAX_NV_f
    int cyfed_max_threads()
    int cyfed_have_openmp()
    void cyfed_dot8_d(const double**, const double*, Py_ssize_t, double*)
    void cyfed_dot8_f(const float**, const float*, Py_ssize_t, float*)
    void cyfed_prefetch_l2(const void*, Py_ssize_t)
    void cyfed_axpy8_d(double*, const double*, const double**, Py_ssize_t)
    void cyfed_axpy8_f(float*, const float*, const float**, Py_ssize_t)
    void cyfed_gemv4_d(const double*, const double*, const double*, const double*,
                       const double*, Py_ssize_t, Py_ssize_t, double*)
    void cyfed_gemv4_f(const float*, const float*, const float*, const float*,
                       const float*, Py_ssize_t, Py_ssize_t, float*)
    void cyfed_ger4_d(double*, const double*, const double*, const double*,
                      const double*, const double*, Py_ssize_t, Py_ssize_t)
    void cyfed_ger4_f(float*, const float*, const float*, const float*,
                      const float*, const float*, Py_ssize_t, Py_ssize_t)
    double cyfed_link_squared_d(double*, const double*, const double*, Py_ssize_t)
    double cyfed_link_squared_f(float*, const float*, const float*, Py_ssize_t)
    double cyfed_link_logistic_d(double*, const double*, const double*, Py_ssize_t)
    double cyfed_link_logistic_f(float*, const float*, const float*, Py_ssize_t)
    double cyfed_link_softmax_d(double*, const double*, const double*, Py_ssize_t, Py_ssize_t,
                                Py_ssize_t, double*)
    double cyfed_link_softmax_f(float*, const float*, const float*, Py_ssize_t, Py_ssize_t,
                                Py_ssize_t, float*)
    double cyfed_narrow_d(int, const double*, Py_ssize_t, Py_ssize_t, const double*, double,
                          int, double*, const double*, const double*, double*, const double*,
                          double, Py_ssize_t*)
    double cyfed_narrow_f(int, const float*, Py_ssize_t, Py_ssize_t, const float*, float,
                          int, float*, const float*, const float*, float*, const double*,
                          double, Py_ssize_t*)
    Py_ssize_t cyfed_clip_rows_d(double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, const double*,
                                 double, double)
    Py_ssize_t cyfed_clip_rows_f(float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, const double*,
                                 double, double)
    Py_ssize_t cyfed_check_block_d(int, const double*, const double*, Py_ssize_t, double*)
    Py_ssize_t cyfed_check_block_f(int, const float*, const float*, Py_ssize_t, double*)
    void cyfed_gemv4_vec_d(const double**, int, const double*, Py_ssize_t, int, double*,
                           Py_ssize_t)
    void cyfed_gemv4_vec_f(const float**, int, const float*, Py_ssize_t, int, float*,
                           Py_ssize_t)
    void cyfed_ger4_vec_d(double*, const double**, int, const double*, Py_ssize_t,
                          Py_ssize_t, int)
    void cyfed_ger4_vec_f(float*, const float**, int, const float*, Py_ssize_t,
                          Py_ssize_t, int)
    int cyfed_thread_id()
    int cyfed_weighted_block_d(double*, const double*, Py_ssize_t, Py_ssize_t, const double*,
                               double, Py_ssize_t)
    int cyfed_weighted_block_f(double*, const float*, Py_ssize_t, Py_ssize_t, const double*,
                               double, Py_ssize_t)
    double cyfed_sq_dist_to_d(const double*, const double*, Py_ssize_t)
    double cyfed_sq_dist_to_f(const float*, const double*, Py_ssize_t)
    double cyfed_sq_dist_d(const double*, const double*, Py_ssize_t)
    double cyfed_sq_dist_f(const float*, const float*, Py_ssize_t)
    void cyfed_run_network_d(double*, const int*, Py_ssize_t)
    void cyfed_run_network_f(float*, const int*, Py_ssize_t)
    void cyfed_sort_groups_d(double*, Py_ssize_t, int)
    void cyfed_sort_groups_f(float*, Py_ssize_t, int)
    int cyfed_load_tile_d(double*, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t)
    int cyfed_load_tile_f(float*, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t)
    void cyfed_mean_of_rows_d(const double*, Py_ssize_t, Py_ssize_t, double*, Py_ssize_t)
    void cyfed_mean_of_rows_f(const float*, Py_ssize_t, Py_ssize_t, float*, Py_ssize_t)
    void cyfed_sgd_step_d(double*, double*, const double*, const double*, const double*,
                          Py_ssize_t, double, double, double, double, double)
    void cyfed_sgd_step_f(float*, float*, const float*, const float*, const float*,
                          Py_ssize_t, float, float, float, float, float)
    int cyfed_all_finite_d(const double*, Py_ssize_t)
    int cyfed_all_finite_f(const float*, Py_ssize_t)
    void cyfed_sum_rows_d(double*, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t)
    void cyfed_sum_rows_f(float*, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t)


# Loss kinds as the C links see them (cyfed._losses.LossKind mirrors these values).
cdef enum:
    KIND_SQUARED = 0
    KIND_LOGISTIC = 1
    KIND_SOFTMAX = 2


# Kernel statuses of the fused passes (cyfed._losses.Status mirrors these values and
# documents them).
cdef enum:
    STATUS_OK = 0
    STATUS_BAD_LABEL = 1
    STATUS_NEGATIVE_WEIGHT = 2
    STATUS_BAD_ROW = 3


# Row blocking and threading of the fused passes (_losses, _hessian).
cdef enum:
    # Bytes of X per block of a first-order / Hessian-vector pass: the block stays in
    # L1 between its two sweeps (margins, then the gradient accumulation).
    BLOCK_BYTES = 16 * 1024
    MAX_BLOCK_ROWS = 256
    # Below this many multiply-adds per thread a call uses fewer threads (fork/join
    # costs more).
    MIN_WORK_PER_THREAD = 1 << 15


cdef inline Py_ssize_t block_rows(Py_ssize_t row_bytes, Py_ssize_t block_bytes,
                                  Py_ssize_t max_rows) noexcept nogil:
    """Rows per block of block_bytes, rows of row_bytes: a multiple of 8 in [8, max_rows]."""
    cdef Py_ssize_t b = block_bytes // row_bytes
    if b > max_rows:
        b = max_rows
    b -= b % 8
    return b if b >= 8 else 8


cdef inline Py_ssize_t choose_threads(Py_ssize_t requested, Py_ssize_t n_blocks,
                                      Py_ssize_t work) noexcept nogil:
    """Threads for `work` multiply-adds in n_blocks blocks: at most requested and
    n_blocks, and at least MIN_WORK_PER_THREAD multiply-adds each (>= 1)."""
    cdef Py_ssize_t nt = requested
    if nt > n_blocks:
        nt = n_blocks
    if nt > 1 and work < MIN_WORK_PER_THREAD * nt:
        nt = work // MIN_WORK_PER_THREAD
    return nt if nt >= 1 else 1


cdef inline void dot8(const floating **x, const floating *c, Py_ssize_t n,
                      floating *out) noexcept nogil:
    if floating is double:
        cyfed_dot8_d(x, c, n, out)
    else:
        cyfed_dot8_f(x, c, n, out)


cdef inline void axpy8(floating *acc, const floating *r, const floating **x,
                       Py_ssize_t n) noexcept nogil:
    if floating is double:
        cyfed_axpy8_d(acc, r, x, n)
    else:
        cyfed_axpy8_f(acc, r, x, n)


cdef inline void gemv4(const floating **x, const floating *W, Py_ssize_t d, Py_ssize_t k,
                       floating *z) noexcept nogil:
    if floating is double:
        cyfed_gemv4_d(x[0], x[1], x[2], x[3], W, d, k, z)
    else:
        cyfed_gemv4_f(x[0], x[1], x[2], x[3], W, d, k, z)


cdef inline void ger4(floating *G, const floating **x, const floating *R, Py_ssize_t d,
                      Py_ssize_t k) noexcept nogil:
    if floating is double:
        cyfed_ger4_d(G, x[0], x[1], x[2], x[3], R, d, k)
    else:
        cyfed_ger4_f(G, x[0], x[1], x[2], x[3], R, d, k)


cdef inline double link(int kind, floating *z, const floating *y, const floating *w,
                        Py_ssize_t m, Py_ssize_t k, Py_ssize_t ldz,
                        floating *work) noexcept nogil:
    if floating is double:
        if kind == KIND_SQUARED:
            return cyfed_link_squared_d(z, y, w, m)
        if kind == KIND_LOGISTIC:
            return cyfed_link_logistic_d(z, y, w, m)
        return cyfed_link_softmax_d(z, y, w, m, k, ldz, work)
    else:
        if kind == KIND_SQUARED:
            return cyfed_link_squared_f(z, y, w, m)
        if kind == KIND_LOGISTIC:
            return cyfed_link_logistic_f(z, y, w, m)
        return cyfed_link_softmax_f(z, y, w, m, k, ldz, work)


cdef inline double narrow(int kind, const floating *Xb, Py_ssize_t m, Py_ssize_t d,
                          const floating *c, floating b, int has_b, floating *z,
                          const floating *y, const floating *w, floating *g,
                          const double *row_sq, double clip_sq,
                          Py_ssize_t *n_clipped) noexcept nogil:
    if floating is double:
        return cyfed_narrow_d(kind, Xb, m, d, c, b, has_b, z, y, w, g, row_sq, clip_sq,
                              n_clipped)
    else:
        return cyfed_narrow_f(kind, Xb, m, d, c, b, has_b, z, y, w, g, row_sq, clip_sq,
                              n_clipped)


cdef inline Py_ssize_t clip_rows(floating *z, Py_ssize_t m, Py_ssize_t k, Py_ssize_t ldz,
                                 const double *row_sq, double clip_sq,
                                 double intercept_sq) noexcept nogil:
    if floating is double:
        return cyfed_clip_rows_d(z, m, k, ldz, row_sq, clip_sq, intercept_sq)
    else:
        return cyfed_clip_rows_f(z, m, k, ldz, row_sq, clip_sq, intercept_sq)


cdef inline Py_ssize_t check_block(int kind, const floating *y, const floating *w,
                                   Py_ssize_t m, double *wsum) noexcept nogil:
    if floating is double:
        return cyfed_check_block_d(kind, y, w, m, wsum)
    else:
        return cyfed_check_block_f(kind, y, w, m, wsum)


cdef inline void gemv4_vec(const floating **x, int nr, const floating *Wp, Py_ssize_t d,
                           int nv, floating *z, Py_ssize_t ldz) noexcept nogil:
    """z[u] += x[u] Wp for the nr <= 4 rows x[0..nr-1] (padded layout, nv vectors)."""
    if floating is double:
        cyfed_gemv4_vec_d(x, nr, Wp, d, nv, z, ldz)
    else:
        cyfed_gemv4_vec_f(x, nr, Wp, d, nv, z, ldz)


cdef inline void ger4_vec(floating *G, const floating **x, int nr, const floating *R,
                          Py_ssize_t ldr, Py_ssize_t d, int nv) noexcept nogil:
    """G += sum_u x[u]^T R[u] for the nr <= 4 rows x[0..nr-1]."""
    if floating is double:
        cyfed_ger4_vec_d(G, x, nr, R, ldr, d, nv)
    else:
        cyfed_ger4_vec_f(G, x, nr, R, ldr, d, nv)


cdef inline void sgd_step(floating *w, floating *v, const floating *G, const floating *w0,
                          const floating *corr, Py_ssize_t n, floating scale, floating l2,
                          floating mu, floating mom, floating lr) noexcept nogil:
    if floating is double:
        cyfed_sgd_step_d(w, v, G, w0, corr, n, scale, l2, mu, mom, lr)
    else:
        cyfed_sgd_step_f(w, v, G, w0, corr, n, scale, l2, mu, mom, lr)


cdef inline void sum_rows(floating *acc, const floating *z, Py_ssize_t m, Py_ssize_t k,
                          Py_ssize_t ldz) noexcept nogil:
    if floating is double:
        cyfed_sum_rows_d(acc, z, m, k, ldz)
    else:
        cyfed_sum_rows_f(acc, z, m, k, ldz)


cdef inline int all_finite(const floating *x, Py_ssize_t n) noexcept nogil:
    if floating is double:
        return cyfed_all_finite_d(x, n)
    else:
        return cyfed_all_finite_f(x, n)



cdef inline Py_ssize_t softmax_lanes(const floating *type_tag) noexcept nogil:
    """Lanes of one softmax micro-kernel vector for this type (the pointer only picks it)."""
    if floating is double:
        return CYFED_VEC_BYTES_d // sizeof(double)
    else:
        return CYFED_VEC_BYTES_f // sizeof(float)


cdef inline int softmax_vectors(Py_ssize_t k, const floating *type_tag) noexcept nogil:
    """Vectors per row of k class margins in the micro-kernels (0: k too wide for them)."""
    cdef Py_ssize_t lanes = softmax_lanes(type_tag)
    cdef Py_ssize_t max_nv = CYFED_MAX_NV_d if floating is double else CYFED_MAX_NV_f
    return <int>((k + lanes - 1) // lanes) if k <= max_nv * lanes else 0


cdef inline Py_ssize_t network_lanes(const floating *type_tag) noexcept nogil:
    """Coordinates per comparator-network tile (CYFED_NET_BYTES of this type)."""
    return CYFED_NET_BYTES // sizeof(floating)


cdef inline int weighted_block(double *out, const floating *U, Py_ssize_t K, Py_ssize_t d,
                               const double *w, double divisor, Py_ssize_t n) noexcept nogil:
    """out[0..n) = (sum_i w_i U[i, 0..n)) / divisor (U: K rows of stride d); 1 if finite."""
    if floating is double:
        return cyfed_weighted_block_d(out, U, K, d, w, divisor, n)
    else:
        return cyfed_weighted_block_f(out, U, K, d, w, divisor, n)


cdef inline double sq_dist_to(const floating *x, const double *v, Py_ssize_t n) noexcept nogil:
    if floating is double:
        return cyfed_sq_dist_to_d(x, v, n)
    else:
        return cyfed_sq_dist_to_f(x, v, n)


cdef inline double sq_dist(const floating *x, const floating *y, Py_ssize_t n) noexcept nogil:
    if floating is double:
        return cyfed_sq_dist_d(x, y, n)
    else:
        return cyfed_sq_dist_f(x, y, n)


cdef inline void run_network(floating *tile, const int *net, Py_ssize_t n) noexcept nogil:
    if floating is double:
        cyfed_run_network_d(tile, net, n)
    else:
        cyfed_run_network_f(tile, net, n)


cdef inline void sort_groups(floating *tile, Py_ssize_t groups, int size) noexcept nogil:
    if floating is double:
        cyfed_sort_groups_d(tile, groups, size)
    else:
        cyfed_sort_groups_f(tile, groups, size)


cdef inline int load_tile(floating *tile, const floating *U, Py_ssize_t K, Py_ssize_t d,
                          Py_ssize_t j0, Py_ssize_t n) noexcept nogil:
    if floating is double:
        return cyfed_load_tile_d(tile, U, K, d, j0, n)
    else:
        return cyfed_load_tile_f(tile, U, K, d, j0, n)


cdef inline void mean_of_rows(const floating *tile, Py_ssize_t lo, Py_ssize_t hi,
                              floating *out, Py_ssize_t n) noexcept nogil:
    if floating is double:
        cyfed_mean_of_rows_d(tile, lo, hi, out, n)
    else:
        cyfed_mean_of_rows_f(tile, lo, hi, out, n)


cdef inline int check_row(int kind, Py_ssize_t n, Py_ssize_t k, const floating *y,
                          const floating *sw, const Py_ssize_t *rows, Py_ssize_t pos,
                          Py_ssize_t *row, Py_ssize_t *bad) noexcept nogil:
    """Row number `pos` of a pass (rows[pos], or pos itself when rows is NULL) into row,
    validated in this order: its index (STATUS_BAD_ROW, bad = pos), its label unless y
    is NULL (STATUS_BAD_LABEL: not 0/1 for logistic, not an integer in [0, k) for
    softmax) and its weight unless sw is NULL (STATUS_NEGATIVE_WEIGHT); bad = the row."""
    cdef Py_ssize_t r = rows[pos] if rows != NULL else pos
    cdef Py_ssize_t label
    cdef floating yv
    row[0] = r
    if r < 0 or r >= n:
        bad[0] = pos
        return STATUS_BAD_ROW
    if y != NULL:
        yv = y[r]
        if kind == KIND_LOGISTIC and yv != 0 and yv != 1:
            bad[0] = r
            return STATUS_BAD_LABEL
        if kind == KIND_SOFTMAX:
            label = <Py_ssize_t>yv if (yv >= 0 and yv < k) else -1
            if label < 0 or label != yv:
                bad[0] = r
                return STATUS_BAD_LABEL
    if sw != NULL and sw[r] < 0:
        bad[0] = r
        return STATUS_NEGATIVE_WEIGHT
    return STATUS_OK


cdef inline Py_ssize_t next_block(const floating *X, Py_ssize_t d, Py_ssize_t n_rows,
                                  Py_ssize_t start, Py_ssize_t B,
                                  const char **ahead) noexcept nogil:
    """Bytes of the block of contiguous rows after rows start..start+B-1 of X (0: none),
    its address into ahead (for block_margins' prefetching)."""
    cdef Py_ssize_t rest = n_rows - start - B
    if rest <= 0:
        return 0
    ahead[0] = <const char *>(X + (start + B) * d)
    return (rest if rest < B else B) * d * <Py_ssize_t>sizeof(floating)


cdef inline void block_margins(int kind, const floating **xp, Py_ssize_t mp, Py_ssize_t d,
                               Py_ssize_t k, Py_ssize_t kp, int nv, const floating *W,
                               const floating *bpad, bint has_b, floating *z,
                               const char *ahead, Py_ssize_t ahead_bytes) noexcept nogil:
    """Margins of a block of mp rows xp (mp a multiple of 8) at W.

    Softmax: z (mp, kp) = x W + bpad, W (d, kp) padded to nv vectors per row (nv > 0)
    or (d, k) with kp = k (nv = 0).  Otherwise z (mp,) = x . W, plus bpad[0] when
    has_b.  With ahead_bytes > 0 the next block (`next_block`) is prefetched along the
    way, a slice per group of rows.
    """
    cdef Py_ssize_t i = 0, u, c
    cdef Py_ssize_t step = 4 if kind == KIND_SOFTMAX else 8     # rows per micro-kernel call
    while i < mp:
        if ahead_bytes > 0:
            cyfed_prefetch_l2(ahead + ahead_bytes * i // mp,
                              ahead_bytes * (i + step) // mp - ahead_bytes * i // mp)
        if kind != KIND_SOFTMAX:
            dot8(xp + i, W, d, z + i)
        else:
            for u in range(4):
                for c in range(kp):
                    z[(i + u) * kp + c] = bpad[c]
            if nv > 0:
                gemv4_vec(xp + i, 4, W, d, nv, z + i * kp, kp)
            else:
                gemv4(xp + i, W, d, k, z + i * k)
        i += step
    if kind != KIND_SOFTMAX and has_b:
        for i in range(mp):
            z[i] += bpad[0]
