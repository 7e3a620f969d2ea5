/*
 * Aggregation primitives of the server-side kernels (_aggregate.pyx,
 * _compress.pyx): the finiteness check, the weighted sum of client rows,
 * squared distances, and the comparator networks that sort tiles of client
 * rows coordinate-wise (for the median and the trimmed mean).
 * Type-generic: included by _vector_math.h once with CYFED_T = double and once
 * with CYFED_T = float; CYFED_FN(name) (defined there) makes a function `name`
 * cyfed_name_d / cyfed_name_f.
 */

/* 1 if every x[j] is finite: sum of x - x is 0, or NaN as soon as one entry is NaN/Inf. */
static inline int CYFED_FN(all_finite)(const CYFED_T *CYFED_RESTRICT x, Py_ssize_t n)
{
    CYFED_T bad = 0;
    CYFED_PRAGMA(omp simd reduction(+:bad))
    for (Py_ssize_t j = 0; j < n; ++j)
        bad += x[j] - x[j];
    return bad == 0;
}

/*
 * Aggregation over client rows (the server side): one block of n coordinates of
 * out = (sum_i w_i x_i) / divisor, float64, rows added in order four at a time,
 * (((w0 x0 + w1 x1) + w2 x2) + w3 x3) + ..., so the same bits for any blocking.
 * The first group writes out (no zeroing pass), the last one divides and checks
 * finiteness while the block is in cache: one pass over each row and the block.
 */
static CYFED_INLINE double CYFED_FN(weighted_group)(double *CYFED_RESTRICT out,
        const CYFED_T *CYFED_RESTRICT x0, const CYFED_T *CYFED_RESTRICT x1,
        const CYFED_T *CYFED_RESTRICT x2, const CYFED_T *CYFED_RESTRICT x3,
        const double *w, Py_ssize_t n, int first, int last, double divisor)
{
    const double w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
    double bad = 0.0;
    CYFED_PRAGMA(omp simd reduction(+:bad))
    for (Py_ssize_t j = 0; j < n; ++j) {
        double v = first ? w0 * x0[j] : out[j] + w0 * x0[j];
        v = ((v + w1 * x1[j]) + w2 * x2[j]) + w3 * x3[j];
        if (last) {
            v = v / divisor;
            bad += v - v;
        }
        out[j] = v;
    }
    return bad;
}

static int CYFED_FN(weighted_block)(double *CYFED_RESTRICT out, const CYFED_T *U,
                                    Py_ssize_t K, Py_ssize_t d, const double *w,
                                    double divisor, Py_ssize_t n)
{
    double bad = 0.0;
    for (Py_ssize_t i = 0; i < K; i += 4) {
        const Py_ssize_t r = K - i < 4 ? K - i : 4;
        const CYFED_T *x[4];
        double wg[4];
        for (Py_ssize_t u = 0; u < 4; ++u) {          /* missing rows: weight 0 on row i */
            x[u] = U + (u < r ? i + u : i) * d;
            wg[u] = u < r ? w[i + u] : 0.0;
        }
        const int first = i == 0, last = i + 4 >= K;
        if (first && last)
            bad += CYFED_FN(weighted_group)(out, x[0], x[1], x[2], x[3], wg, n, 1, 1, divisor);
        else if (first)
            bad += CYFED_FN(weighted_group)(out, x[0], x[1], x[2], x[3], wg, n, 1, 0, divisor);
        else if (last)
            bad += CYFED_FN(weighted_group)(out, x[0], x[1], x[2], x[3], wg, n, 0, 1, divisor);
        else
            bad += CYFED_FN(weighted_group)(out, x[0], x[1], x[2], x[3], wg, n, 0, 0, divisor);
    }
    return bad == 0.0;
}

/* sum_j (x[j] - v[j])^2 in float64 (v is float64: the centre of Weiszfeld, clipping).
   32 partial sums (four vector accumulators at AVX-512) so the additions do not wait
   on each other: one accumulator would be bound by the add latency, not by memory. */
static inline double CYFED_FN(sq_dist_to)(const CYFED_T *CYFED_RESTRICT x,
                                          const double *CYFED_RESTRICT v, Py_ssize_t n)
{
    double acc[32] = {0.0};
    const Py_ssize_t body = n & ~(Py_ssize_t)31;
    for (Py_ssize_t j = 0; j < body; j += 32) {
        CYFED_PRAGMA(omp simd)
        for (int u = 0; u < 32; ++u) {
            const double t = (double)x[j + u] - v[j + u];
            acc[u] += t * t;
        }
    }
    double s = 0.0;
    for (int u = 0; u < 32; ++u)
        s += acc[u];
    for (Py_ssize_t j = body; j < n; ++j) {
        const double t = (double)x[j] - v[j];
        s += t * t;
    }
    return s;
}

/* sum_j (x[j] - y[j])^2 in float64. */
static inline double CYFED_FN(sq_dist)(const CYFED_T *CYFED_RESTRICT x,
                                       const CYFED_T *CYFED_RESTRICT y, Py_ssize_t n)
{
    double s = 0.0;
    CYFED_PRAGMA(omp simd reduction(+:s))
    for (Py_ssize_t j = 0; j < n; ++j) {
        const double t = (double)x[j] - (double)y[j];
        s += t * t;
    }
    return s;
}

/*
 * Comparator network on a tile of K rows x CYFED_NET_LANES coordinates (row r
 * at tile + r * lanes): comparator c puts min into row net[2c] and max into row
 * net[2c + 1], every lane independently, so one comparator is a vector min and a
 * vector max across client rows (no per-coordinate branching).  The x86 min/max
 * instructions are spelt out: GCC turns `x < y ? x : y` stored back in place into
 * a branchy masked store.  (NaN never reaches here: tiles are checked first.)
 */
#define CYFED_NET_LANES ((Py_ssize_t)(CYFED_NET_BYTES / sizeof(CYFED_T)))
#if defined(__AVX512F__)
#define CYFED_NET_STEP 64
#define CYFED_NV_d __m512d
#define CYFED_NV_f __m512
#define CYFED_NV_LOAD_d _mm512_loadu_pd
#define CYFED_NV_LOAD_f _mm512_loadu_ps
#define CYFED_NV_STORE_d _mm512_storeu_pd
#define CYFED_NV_STORE_f _mm512_storeu_ps
#define CYFED_NV_MIN_d _mm512_min_pd
#define CYFED_NV_MIN_f _mm512_min_ps
#define CYFED_NV_MAX_d _mm512_max_pd
#define CYFED_NV_MAX_f _mm512_max_ps
#elif defined(__AVX__)
#define CYFED_NET_STEP 32
#define CYFED_NV_d __m256d
#define CYFED_NV_f __m256
#define CYFED_NV_LOAD_d _mm256_loadu_pd
#define CYFED_NV_LOAD_f _mm256_loadu_ps
#define CYFED_NV_STORE_d _mm256_storeu_pd
#define CYFED_NV_STORE_f _mm256_storeu_ps
#define CYFED_NV_MIN_d _mm256_min_pd
#define CYFED_NV_MIN_f _mm256_min_ps
#define CYFED_NV_MAX_d _mm256_max_pd
#define CYFED_NV_MAX_f _mm256_max_ps
#elif defined(__SSE2__)
#define CYFED_NET_STEP 16
#define CYFED_NV_d __m128d
#define CYFED_NV_f __m128
#define CYFED_NV_LOAD_d _mm_loadu_pd
#define CYFED_NV_LOAD_f _mm_loadu_ps
#define CYFED_NV_STORE_d _mm_storeu_pd
#define CYFED_NV_STORE_f _mm_storeu_ps
#define CYFED_NV_MIN_d _mm_min_pd
#define CYFED_NV_MIN_f _mm_min_ps
#define CYFED_NV_MAX_d _mm_max_pd
#define CYFED_NV_MAX_f _mm_max_ps
#endif

static inline void CYFED_FN(run_network)(CYFED_T *CYFED_RESTRICT tile, const int *net,
                                         Py_ssize_t n_comparators)
{
    const Py_ssize_t L = CYFED_NET_LANES;
    for (Py_ssize_t c = 0; c < n_comparators; ++c) {
        CYFED_T *a = tile + net[2 * c] * L;
        CYFED_T *b = tile + net[2 * c + 1] * L;
#ifdef CYFED_NET_STEP
        for (Py_ssize_t l = 0; l < L; l += CYFED_NET_STEP / (Py_ssize_t)sizeof(CYFED_T)) {
            const CYFED_CAT(CYFED_NV, CYFED_S) x = CYFED_CAT(CYFED_NV_LOAD, CYFED_S)(a + l);
            const CYFED_CAT(CYFED_NV, CYFED_S) y = CYFED_CAT(CYFED_NV_LOAD, CYFED_S)(b + l);
            CYFED_CAT(CYFED_NV_STORE, CYFED_S)(a + l, CYFED_CAT(CYFED_NV_MIN, CYFED_S)(x, y));
            CYFED_CAT(CYFED_NV_STORE, CYFED_S)(b + l, CYFED_CAT(CYFED_NV_MAX, CYFED_S)(x, y));
        }
#else
        for (Py_ssize_t l = 0; l < L; ++l) {
            const CYFED_T x = a[l], y = b[l];
            a[l] = x < y ? x : y;
            b[l] = x < y ? y : x;
        }
#endif
    }
}

/*
 * Sort `groups` aligned groups of `size` (8 or 16) tile rows each, the network
 * held in vector registers (one register per row and lane strip): the first
 * phases of the whole network without a load or store per comparator.
 */
#ifdef CYFED_NET_STEP
#define CYFED_LOAD_ROW(r) CYFED_CAT(CYFED_NV, CYFED_S) v##r = \
    CYFED_CAT(CYFED_NV_LOAD, CYFED_S)(rows + r * L + l);
#define CYFED_STORE_ROW(r) CYFED_CAT(CYFED_NV_STORE, CYFED_S)(rows + r * L + l, v##r);
#define CYFED_CS(a, b) { const CYFED_CAT(CYFED_NV, CYFED_S) t_ = \
    CYFED_CAT(CYFED_NV_MIN, CYFED_S)(v##a, v##b); \
    v##b = CYFED_CAT(CYFED_NV_MAX, CYFED_S)(v##a, v##b); v##a = t_; }
#define CYFED_ROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define CYFED_ROWS16(X) CYFED_ROWS8(X) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#endif
static inline void CYFED_FN(sort_groups)(CYFED_T *CYFED_RESTRICT tile, Py_ssize_t groups,
                                         int size)
{
    const Py_ssize_t L = CYFED_NET_LANES;
    for (Py_ssize_t g = 0; g < groups; ++g) {
        CYFED_T *CYFED_RESTRICT rows = tile + g * size * L;
#ifdef CYFED_NET_STEP
        for (Py_ssize_t l = 0; l < L; l += CYFED_NET_STEP / (Py_ssize_t)sizeof(CYFED_T)) {
            if (size == 16) {
                CYFED_ROWS16(CYFED_LOAD_ROW)
                CYFED_BATCHER16(CYFED_CS)
                CYFED_ROWS16(CYFED_STORE_ROW)
            } else {
                CYFED_ROWS8(CYFED_LOAD_ROW)
                CYFED_BATCHER8(CYFED_CS)
                CYFED_ROWS8(CYFED_STORE_ROW)
            }
        }
#else
        if (size == 16)
            CYFED_FN(run_network)(rows, cyfed_batcher16, sizeof(cyfed_batcher16) / (2 * sizeof(int)));
        else
            CYFED_FN(run_network)(rows, cyfed_batcher8, sizeof(cyfed_batcher8) / (2 * sizeof(int)));
#endif
    }
}
#ifdef CYFED_NET_STEP
#undef CYFED_LOAD_ROW
#undef CYFED_STORE_ROW
#undef CYFED_CS
#undef CYFED_ROWS8
#undef CYFED_ROWS16
#endif

/* Copy K rows' [j0, j0 + n) (n <= lanes) into a tile; returns 1 if every value is finite. */
static inline int CYFED_FN(load_tile)(CYFED_T *CYFED_RESTRICT tile, const CYFED_T *U,
                                      Py_ssize_t K, Py_ssize_t d, Py_ssize_t j0, Py_ssize_t n)
{
    const Py_ssize_t L = CYFED_NET_LANES;
    CYFED_T bad[CYFED_NET_BYTES / sizeof(CYFED_T)] = {0};     /* x - x: 0, or NaN for NaN/Inf */
    const int ahead = j0 + 2 * L <= d;   /* the next tile: one stream per row is too
                                          * many for the hardware prefetcher at large K */
    for (Py_ssize_t r = 0; r < K; ++r) {
        const CYFED_T *CYFED_RESTRICT x = U + r * d + j0;
        CYFED_T *CYFED_RESTRICT t = tile + r * L;
        if (ahead)
            cyfed_prefetch_l2(x + L, L * (Py_ssize_t)sizeof(CYFED_T));
        if (n == L) {
            CYFED_PRAGMA(omp simd)
            for (Py_ssize_t l = 0; l < L; ++l) {
                t[l] = x[l];
                bad[l] += x[l] - x[l];
            }
        } else {
            for (Py_ssize_t l = 0; l < L; ++l) {
                t[l] = l < n ? x[l] : 0;
                bad[l] += t[l] - t[l];
            }
        }
    }
    CYFED_T total = 0;
    for (Py_ssize_t l = 0; l < L; ++l)
        total += bad[l];
    return total == 0;
}

/* out[l] = mean of tile rows lo..hi-1 (summed in float64, in row order), l < n. */
static inline void CYFED_FN(mean_of_rows)(const CYFED_T *CYFED_RESTRICT tile, Py_ssize_t lo,
                                          Py_ssize_t hi, CYFED_T *CYFED_RESTRICT out,
                                          Py_ssize_t n)
{
    const Py_ssize_t L = CYFED_NET_LANES;
    double acc[CYFED_NET_BYTES / sizeof(CYFED_T)];
    CYFED_PRAGMA(omp simd)
    for (Py_ssize_t l = 0; l < L; ++l)
        acc[l] = 0.0;
    for (Py_ssize_t r = lo; r < hi; ++r) {
        CYFED_PRAGMA(omp simd)
        for (Py_ssize_t l = 0; l < L; ++l)
            acc[l] += (double)tile[r * L + l];
    }
    const double count = (double)(hi - lo);
    for (Py_ssize_t l = 0; l < n; ++l)
        out[l] = (CYFED_T)(acc[l] / count);
}
#undef CYFED_NET_LANES
#ifdef CYFED_NET_STEP
#undef CYFED_NET_STEP
#undef CYFED_NV_d
#undef CYFED_NV_f
#undef CYFED_NV_LOAD_d
#undef CYFED_NV_LOAD_f
#undef CYFED_NV_STORE_d
#undef CYFED_NV_STORE_f
#undef CYFED_NV_MIN_d
#undef CYFED_NV_MIN_f
#undef CYFED_NV_MAX_d
#undef CYFED_NV_MAX_f
#endif
