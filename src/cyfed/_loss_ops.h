/*
 * Loss/gradient primitives of the loss and SGD kernels (_losses.pyx, _sgd.pyx):
 * the dot/axpy/gemv/ger micro-kernels that compute margins and accumulate
 * gradients, the links (squared, logistic, softmax), per-example clipping, the
 * narrow-X kernels, label/weight checks, the softmax vector micro-kernels and
 * the local SGD step.  Type-generic: included by _vector_math.h once with
 * CYFED_T = double and once with CYFED_T = float; CYFED_FN(name) (defined
 * there) makes a function `name` cyfed_name_d / cyfed_name_f.
 *
 * The kernels walk X in blocks of rows; inside a block they take eight rows
 * (four for softmax) at a time so that each load of coef (or of a row of the
 * softmax weights) serves several rows, and so that the gradient accumulator
 * sees one load/store per eight rows instead of one per row.
 */

/* out[u] = x_u . c for eight rows x_u of length n (x points to 8 row pointers). */
static inline void CYFED_FN(dot8)(const CYFED_T *const *x, const CYFED_T *CYFED_RESTRICT c,
                                  Py_ssize_t n, CYFED_T *CYFED_RESTRICT out)
{
    const CYFED_T *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
    const CYFED_T *x4 = x[4], *x5 = x[5], *x6 = x[6], *x7 = x[7];
    CYFED_T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    CYFED_PRAGMA(omp simd reduction(+:s0, s1, s2, s3, s4, s5, s6, s7))
    for (Py_ssize_t j = 0; j < n; ++j) {
        const CYFED_T cj = c[j];
        s0 += x0[j] * cj; s1 += x1[j] * cj; s2 += x2[j] * cj; s3 += x3[j] * cj;
        s4 += x4[j] * cj; s5 += x5[j] * cj; s6 += x6[j] * cj; s7 += x7[j] * cj;
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
    out[4] = s4; out[5] = s5; out[6] = s6; out[7] = s7;
}

/* acc[j] += sum_u r_u x_u[j] over eight rows. */
static inline void CYFED_FN(axpy8)(CYFED_T *CYFED_RESTRICT acc, const CYFED_T *r,
                                   const CYFED_T *const *x, Py_ssize_t n)
{
    const CYFED_T *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
    const CYFED_T *x4 = x[4], *x5 = x[5], *x6 = x[6], *x7 = x[7];
    const CYFED_T r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
    const CYFED_T r4 = r[4], r5 = r[5], r6 = r[6], r7 = r[7];
    CYFED_PRAGMA(omp simd)
    for (Py_ssize_t j = 0; j < n; ++j)
        acc[j] += (r0 * x0[j] + r1 * x1[j]) + (r2 * x2[j] + r3 * x3[j])
                  + ((r4 * x4[j] + r5 * x5[j]) + (r6 * x6[j] + r7 * x7[j]));
}

/* z_u[c] += sum_j x_u[j] W[j, c] for four rows; W is (d, k) C-ordered, z is (4, k). */
static inline void CYFED_FN(gemv4)(const CYFED_T *x0, const CYFED_T *x1, const CYFED_T *x2,
                                   const CYFED_T *x3, const CYFED_T *CYFED_RESTRICT W,
                                   Py_ssize_t d, Py_ssize_t k, CYFED_T *CYFED_RESTRICT z)
{
    CYFED_T *z0 = z, *z1 = z + k, *z2 = z + 2 * k, *z3 = z + 3 * k;
    for (Py_ssize_t j = 0; j < d; ++j) {
        const CYFED_T a0 = x0[j], a1 = x1[j], a2 = x2[j], a3 = x3[j];
        const CYFED_T *w = W + j * k;
        CYFED_PRAGMA(omp simd)
        for (Py_ssize_t c = 0; c < k; ++c) {
            z0[c] += a0 * w[c];
            z1[c] += a1 * w[c];
            z2[c] += a2 * w[c];
            z3[c] += a3 * w[c];
        }
    }
}

/* G[j, c] += sum_u x_u[j] R[u, c]; G is (d, k), R is (4, k). */
static inline void CYFED_FN(ger4)(CYFED_T *CYFED_RESTRICT G, const CYFED_T *x0,
                                  const CYFED_T *x1, const CYFED_T *x2, const CYFED_T *x3,
                                  const CYFED_T *CYFED_RESTRICT R, Py_ssize_t d, Py_ssize_t k)
{
    const CYFED_T *R0 = R, *R1 = R + k, *R2 = R + 2 * k, *R3 = R + 3 * k;
    for (Py_ssize_t j = 0; j < d; ++j) {
        const CYFED_T a0 = x0[j], a1 = x1[j], a2 = x2[j], a3 = x3[j];
        CYFED_T *g = G + j * k;
        CYFED_PRAGMA(omp simd)
        for (Py_ssize_t c = 0; c < k; ++c)
            g[c] += a0 * R0[c] + a1 * R1[c] + a2 * R2[c] + a3 * R3[c];
    }
}

/*
 * One local SGD step over n parameters (restrict: the arrays never overlap):
 * g = G scale + l2 w + mu (w - w0) + corr;  v = mom v + g;  w -= lr v.
 * corr may be NULL only for plain SGD (l2 = mu = mom = 0), which skips v.
 */
static inline void CYFED_FN(sgd_step)(CYFED_T *CYFED_RESTRICT w, CYFED_T *CYFED_RESTRICT v,
                                      const CYFED_T *CYFED_RESTRICT G,
                                      const CYFED_T *CYFED_RESTRICT w0,
                                      const CYFED_T *CYFED_RESTRICT corr, Py_ssize_t n,
                                      CYFED_T scale, CYFED_T l2, CYFED_T mu, CYFED_T mom,
                                      CYFED_T lr)
{
    if (corr == NULL && l2 == 0 && mu == 0 && mom == 0) {   /* plain SGD: w -= lr G scale */
        CYFED_PRAGMA(omp simd)
        for (Py_ssize_t j = 0; j < n; ++j)
            w[j] -= lr * (G[j] * scale);
        return;
    }
    CYFED_PRAGMA(omp simd)
    for (Py_ssize_t j = 0; j < n; ++j) {
        const CYFED_T g = G[j] * scale + l2 * w[j] + mu * (w[j] - w0[j]) + corr[j];
        const CYFED_T vj = mom * v[j] + g;
        v[j] = vj;
        w[j] -= lr * vj;
    }
}

/* acc[c] += sum_i z[i * ldz + c] for c < k (the intercept's gradient). */
static inline void CYFED_FN(sum_rows)(CYFED_T *CYFED_RESTRICT acc,
                                      const CYFED_T *CYFED_RESTRICT z,
                                      Py_ssize_t m, Py_ssize_t k, Py_ssize_t ldz)
{
    for (Py_ssize_t i = 0; i < m; ++i) {
        CYFED_PRAGMA(omp simd)
        for (Py_ssize_t c = 0; c < k; ++c)
            acc[c] += z[i * ldz + c];
    }
}

/*
 * As sum_rows, but one class (k = 1, ldz = 1) is summed with a vector reduction:
 * a plain `acc[0] += z[i]` loop is one serial chain of additions (4 cycles each),
 * which cost the loss kernels ~10 % at 10,000 x 100 (measured with perf).
 */
static inline void CYFED_FN(col_sums)(CYFED_T *CYFED_RESTRICT acc,
                                      const CYFED_T *CYFED_RESTRICT z,
                                      Py_ssize_t m, Py_ssize_t k, Py_ssize_t ldz)
{
    if (k == 1 && ldz == 1) {
        CYFED_T s = 0;
        CYFED_PRAGMA(omp simd reduction(+:s))
        for (Py_ssize_t i = 0; i < m; ++i)
            s += z[i];
        acc[0] += s;
        return;
    }
    CYFED_FN(sum_rows)(acc, z, m, k, ldz);
}

/* z[i * k + c] += b[c]: the intercept added to a block of m rows of k margins. */
static inline void CYFED_FN(add_intercept)(CYFED_T *CYFED_RESTRICT z,
                                           const CYFED_T *CYFED_RESTRICT b,
                                           Py_ssize_t m, Py_ssize_t k)
{
    if (k == 1) {
        const CYFED_T b0 = b[0];
        CYFED_PRAGMA(omp simd)
        for (Py_ssize_t i = 0; i < m; ++i)
            z[i] += b0;
        return;
    }
    for (Py_ssize_t i = 0; i < m; ++i) {
        CYFED_PRAGMA(omp simd)
        for (Py_ssize_t c = 0; c < k; ++c)
            z[i * k + c] += b[c];
    }
}

/*
 * Links: turn the margins z of m rows into the weighted loss (returned, summed
 * in double) and, in place, into the gradient multipliers r = w dloss/dz.
 */

/* squared: loss = w (z - y)^2, r = 2 w (z - y). */
static CYFED_INLINE double CYFED_FN(link_squared)(CYFED_T *CYFED_RESTRICT z,
                                            const CYFED_T *CYFED_RESTRICT y,
                                            const CYFED_T *CYFED_RESTRICT w, Py_ssize_t m)
{
    double loss = 0.0;
    CYFED_PRAGMA(omp simd reduction(+:loss))
    for (Py_ssize_t i = 0; i < m; ++i) {
        const CYFED_T res = z[i] - y[i];
        loss += (double)(w[i] * res * res);
        z[i] = 2 * w[i] * res;
    }
    return loss;
}

/*
 * logistic, y in {0, 1}: with s = 1 - 2y (+1 for y = 0, -1 for y = 1),
 *   loss = w softplus(s z) = w (max(s z, 0) + log1p(exp(-|z|))),
 *   r    = w (sigmoid(z) - y) = w s sigmoid(s z),
 * both from t = exp(-|z|) <= 1: nothing overflows, and a confidently right row
 * (s z << 0) keeps full relative accuracy instead of cancelling z - z.
 */
static CYFED_INLINE double CYFED_FN(link_logistic)(CYFED_T *CYFED_RESTRICT z,
                                                   const CYFED_T *CYFED_RESTRICT y,
                                                   const CYFED_T *CYFED_RESTRICT w,
                                                   Py_ssize_t m)
{
    double loss = 0.0;
    CYFED_PRAGMA(omp simd reduction(+:loss))
    for (Py_ssize_t i = 0; i < m; ++i) {
        const CYFED_T s = 1 - 2 * y[i];
        const CYFED_T u = s * z[i];
        const CYFED_T t = CYFED_FN(exp_neg)(u < 0 ? u : -u);
        const CYFED_T inv = 1 / (1 + t);
        const CYFED_T sig_u = u >= 0 ? inv : t * inv;
        /* z - z is 0, or NaN for an infinite margin: overflow stays visible */
        loss += (double)(w[i] * ((u > 0 ? u : 0) + CYFED_FN(log1p)(t) + (z[i] - z[i])));
        z[i] = w[i] * s * sig_u;
    }
    return loss;
}

/*
 * softmax, y in 0..k-1, z is (m, k) with row stride ldz >= k.  With
 * mx = max_c z_c (at c*), e_c = exp(z_c - mx), S = sum_c e_c and
 * S' = S - e_{c*} (the other classes, summed without cancellation):
 *   loss = w ((mx - z_y) + log1p(S')),
 *   r_c  = w (e_c / S - [c == y]),  and r_y = -w S'/S when y = c*,
 * so confidently right rows keep their relative accuracy.  The block is
 * copied class-major into `work` (CYFED_SOFTMAX_WORK(k, m) entries), its rows
 * padded to whole vectors of CYFED_LINK_LANES, so that every step vectorises
 * across rows rather than across the few classes of one row, without remainders.
 */
#define CYFED_LINK_LANES ((Py_ssize_t)(64 / sizeof(CYFED_T)))
static inline double CYFED_FN(link_softmax)(CYFED_T *CYFED_RESTRICT z,
                                            const CYFED_T *CYFED_RESTRICT y,
                                            const CYFED_T *CYFED_RESTRICT w,
                                            Py_ssize_t m, Py_ssize_t k, Py_ssize_t ldz,
                                            CYFED_T *CYFED_RESTRICT work)
{
    const Py_ssize_t L = CYFED_LINK_LANES, mv = (m + L - 1) / L * L;
    CYFED_T *zt = work, *mx = zt + k * mv, *top = mx + mv, *sum = top + mv;
    CYFED_T *others = sum + mv, *zy = others + mv, *wv = zy + mv;
    for (Py_ssize_t i = 0; i < m; ++i) {
        const CYFED_T *zi = z + i * ldz;
        for (Py_ssize_t c = 0; c < k; ++c)
            zt[c * mv + i] = zi[c];
        zy[i] = zi[(Py_ssize_t)y[i]];
        wv[i] = w[i];
    }
    for (Py_ssize_t i = m; i < mv; ++i) {            /* padding rows: finite, weight 0 */
        for (Py_ssize_t c = 0; c < k; ++c)
            zt[c * mv + i] = 0;
        zy[i] = 0;
        wv[i] = 0;
    }
    /* every loop below runs whole vectors of L rows */
#define CYFED_ROWS(i) for (Py_ssize_t i##0 = 0; i##0 < mv; i##0 += L) \
                      CYFED_PRAGMA(omp simd) for (Py_ssize_t i = i##0; i < i##0 + L; ++i)
    CYFED_ROWS(i) {
        mx[i] = zt[i];
        top[i] = 0;
        sum[i] = 0;
        others[i] = 0;
    }
    for (Py_ssize_t c = 1; c < k; ++c) {
        const CYFED_T *zc = zt + c * mv;
        const CYFED_T label_c = (CYFED_T)c;
        CYFED_ROWS(i) {                           /* unconditional stores: if-converted */
            const CYFED_T zi = zc[i], best = mx[i], at = top[i];
            const int up = zi > best;
            mx[i] = up ? zi : best;
            top[i] = up ? label_c : at;
        }
    }
    for (Py_ssize_t c = 0; c < k; ++c) {
        CYFED_T *zc = zt + c * mv;
        CYFED_ROWS(i) {
            const CYFED_T e = CYFED_FN(exp_neg)(zc[i] - mx[i]);
            zc[i] = e;
            sum[i] += e;
            others[i] += top[i] == (CYFED_T)c ? 0 : e;
        }
    }
    CYFED_ROWS(i) {
        zy[i] = mx[i] - zy[i];                     /* mx - z_y >= 0 */
        mx[i] = CYFED_FN(log1p)(others[i]);        /* mx now log1p(S') */
        sum[i] = wv[i] / sum[i];                   /* sum now the scale w / S */
    }
#undef CYFED_ROWS
    double loss = 0.0;
    for (Py_ssize_t i = 0; i < m; ++i)
        loss += (double)w[i] * ((double)zy[i] + (double)mx[i]);
    for (Py_ssize_t i = 0; i < m; ++i) {
        const Py_ssize_t label = (Py_ssize_t)y[i];
        CYFED_T *zi = z + i * ldz;
        for (Py_ssize_t c = 0; c < k; ++c)
            zi[c] = zt[c * mv + i] * sum[i];
        zi[label] = (CYFED_T)label == top[i] ? -others[i] * sum[i] : zi[label] - w[i];
    }
    return loss;
}

/*
 * Per-example clipping (DP-SGD) of m rows of gradient multipliers r_i (row i of z,
 * stride ldz, k classes): example i's gradient x_i (x) r_i, plus r_i for the
 * intercept, has squared norm ||r_i||^2 (row_sq[i] + intercept_sq), row_sq[i] =
 * ||x_i||^2; r_i is scaled so that norm is at most C (clip_sq = C^2).  The norm
 * and scale are computed in double, so a clipped gradient has norm C to the
 * rounding of CYFED_T.  Returns how many rows were scaled (weight-0 and padding
 * rows have r_i = 0 and never are).
 */
static Py_ssize_t CYFED_FN(clip_rows)(CYFED_T *CYFED_RESTRICT z, Py_ssize_t m, Py_ssize_t k,
                                      Py_ssize_t ldz, const double *CYFED_RESTRICT row_sq,
                                      double clip_sq, double intercept_sq)
{
    Py_ssize_t n_clipped = 0;
    if (k == 1 && ldz == 1 && sizeof(CYFED_T) == sizeof(float)) {
        /* float32 in float32 lanes (a loop mixing float and double lanes does not
           vectorise); the target norm is lowered by 2^-20 so that float rounding of
           the scale cannot leave a clipped gradient above C */
        const float c2 = (float)(clip_sq * (1.0 - 0x1p-20)), b2 = (float)intercept_sq;
        int clipped = 0;
        CYFED_PRAGMA(omp simd reduction(+:clipped))
        for (Py_ssize_t i = 0; i < m; ++i) {
            const float r = (float)z[i], g2 = r * r * ((float)row_sq[i] + b2);
            const int over = g2 > c2;
            z[i] = (CYFED_T)(over ? r * sqrtf(c2 / g2) : r);
            clipped += over;
        }
        return clipped;
    }
    if (k == 1 && ldz == 1) {
        /* branch-free, so it vectorises (about half the rows clip: a branch mispredicts) */
        CYFED_PRAGMA(omp simd reduction(+:n_clipped))
        for (Py_ssize_t i = 0; i < m; ++i) {
            const double r = (double)z[i], g2 = r * r * (row_sq[i] + intercept_sq);
            const int over = g2 > clip_sq;
            z[i] = (CYFED_T)(over ? r * sqrt(clip_sq / g2) : r);
            n_clipped += over;
        }
        return n_clipped;
    }
    /* float32: the same 2^-20 margin, for the rounding of the scaled multipliers */
    const double target = sizeof(CYFED_T) == sizeof(float) ? clip_sq * (1.0 - 0x1p-20) : clip_sq;
    for (Py_ssize_t i = 0; i < m; ++i) {
        CYFED_T *zi = z + i * ldz;
        double rr = 0.0;
        for (Py_ssize_t c = 0; c < k; ++c)
            rr += (double)zi[c] * (double)zi[c];
        const double g2 = rr * (row_sq[i] + intercept_sq);
        if (g2 > target) {
            const double scale = sqrt(target / g2);
            for (Py_ssize_t c = 0; c < k; ++c)
                zi[c] = (CYFED_T)((double)zi[c] * scale);
            ++n_clipped;
        }
    }
    return n_clipped;
}

/*
 * Narrow X (d <= CYFED_NARROW_MAX columns, squared/logistic): the block's rows
 * are contiguous (m, D) with D a compile-time constant, so the margin loop and
 * the gradient reduction vectorise across rows (interleaved loads) instead of
 * along a row too short for a vector.  Returns the block's weighted loss and
 * adds sum_i r_i x_i to g[0..D-1] and sum_i r_i to g[D] when has_b.  With row_sq
 * (the rows' ||x_i||^2, else NULL) each r_i is clipped first (clip_rows) and the
 * count of clipped rows is added to *n_clipped.
 */
#define CYFED_ACC(D, j) if (D > j) g##j += r * x[j];
#define CYFED_DEFINE_NARROW(D)                                                          \
static double CYFED_CAT(CYFED_FN(narrow), D)(int kind, const CYFED_T *CYFED_RESTRICT Xb, \
        Py_ssize_t m, const CYFED_T *CYFED_RESTRICT c, CYFED_T b, int has_b,            \
        CYFED_T *CYFED_RESTRICT z, const CYFED_T *y, const CYFED_T *w,                  \
        CYFED_T *CYFED_RESTRICT g, const double *row_sq, double clip_sq,                \
        Py_ssize_t *n_clipped)                                                          \
{                                                                                       \
    CYFED_PRAGMA(omp simd)                                                              \
    for (Py_ssize_t i = 0; i < m; ++i) {                                                \
        CYFED_T a = b;                                                                  \
        for (int j = 0; j < D; ++j)                                                     \
            a += Xb[i * D + j] * c[j];                                                  \
        z[i] = a;                                                                       \
    }                                                                                   \
    double loss = kind == 0 ? CYFED_FN(link_squared)(z, y, w, m)                        \
                            : CYFED_FN(link_logistic)(z, y, w, m);                      \
    if (row_sq != NULL)                                                                 \
        *n_clipped += CYFED_FN(clip_rows)(z, m, 1, 1, row_sq, clip_sq, has_b ? 1.0 : 0.0); \
    /* one scalar accumulator per column (an array-section reduction spills) */      \
    CYFED_T g0 = 0, g1 = 0, g2 = 0, g3 = 0, g4 = 0, g5 = 0, g6 = 0, g7 = 0, gb = 0;     \
    CYFED_T g8 = 0, g9 = 0, g10 = 0, g11 = 0, g12 = 0, g13 = 0, g14 = 0, g15 = 0;      \
    CYFED_PRAGMA(omp simd reduction(+:g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10,    \
                                      g11, g12, g13, g14, g15, gb))                    \
    for (Py_ssize_t i = 0; i < m; ++i) {                                                \
        const CYFED_T r = z[i];                                                         \
        const CYFED_T *x = Xb + i * D;                                                  \
        gb += r;                                                                        \
        CYFED_ACC(D, 0)  CYFED_ACC(D, 1)  CYFED_ACC(D, 2)  CYFED_ACC(D, 3)                          \
        CYFED_ACC(D, 4)  CYFED_ACC(D, 5)  CYFED_ACC(D, 6)  CYFED_ACC(D, 7)                          \
        CYFED_ACC(D, 8)  CYFED_ACC(D, 9)  CYFED_ACC(D, 10) CYFED_ACC(D, 11)                         \
        CYFED_ACC(D, 12) CYFED_ACC(D, 13) CYFED_ACC(D, 14) CYFED_ACC(D, 15)                         \
    }                                                                                   \
    const CYFED_T gsum[16] = {g0, g1, g2, g3, g4, g5, g6, g7,                           \
                              g8, g9, g10, g11, g12, g13, g14, g15};                    \
    for (int j = 0; j < D; ++j)                                                         \
        g[j] += gsum[j];                                                                \
    if (has_b)                                                                          \
        g[D] += gb;                                                                     \
    return loss;                                                                        \
}
CYFED_DEFINE_NARROW(1)  CYFED_DEFINE_NARROW(2)  CYFED_DEFINE_NARROW(3)  CYFED_DEFINE_NARROW(4)
CYFED_DEFINE_NARROW(5)  CYFED_DEFINE_NARROW(6)  CYFED_DEFINE_NARROW(7)  CYFED_DEFINE_NARROW(8)
CYFED_DEFINE_NARROW(9)  CYFED_DEFINE_NARROW(10) CYFED_DEFINE_NARROW(11) CYFED_DEFINE_NARROW(12)
CYFED_DEFINE_NARROW(13) CYFED_DEFINE_NARROW(14) CYFED_DEFINE_NARROW(15) CYFED_DEFINE_NARROW(16)
#undef CYFED_DEFINE_NARROW
#undef CYFED_ACC

static double CYFED_FN(narrow)(int kind, const CYFED_T *Xb, Py_ssize_t m, Py_ssize_t d,
                               const CYFED_T *c, CYFED_T b, int has_b, CYFED_T *z,
                               const CYFED_T *y, const CYFED_T *w, CYFED_T *g,
                               const double *row_sq, double clip_sq, Py_ssize_t *n_clipped)
{
    switch (d) {
#define CYFED_CASE(D) case D: return CYFED_CAT(CYFED_FN(narrow), D)(kind, Xb, m, c, b, has_b, z, y, w, g, \
                                                                    row_sq, clip_sq, n_clipped);
    CYFED_CASE(1)  CYFED_CASE(2)  CYFED_CASE(3)  CYFED_CASE(4)  CYFED_CASE(5)  CYFED_CASE(6)
    CYFED_CASE(7)  CYFED_CASE(8)  CYFED_CASE(9)  CYFED_CASE(10) CYFED_CASE(11) CYFED_CASE(12)
    CYFED_CASE(13) CYFED_CASE(14) CYFED_CASE(15) CYFED_CASE(16)
#undef CYFED_CASE
    }
    return 0.0;  /* unreachable: the caller only passes 1 <= d <= CYFED_NARROW_MAX */
}

/*
 * Labels and weights of a contiguous block, checked with vectorised counts:
 * returns the offset of the first bad entry (label outside {0,1} for logistic,
 * weight < 0) or -1, and adds the weights (m when w is NULL) to *wsum.
 */
static Py_ssize_t CYFED_FN(check_block)(int kind, const CYFED_T *y, const CYFED_T *w,
                                        Py_ssize_t m, double *wsum)
{
    CYFED_T n_bad = 0;
    double s = 0.0;
    if (w == NULL) {
        *wsum += (double)m;
        if (kind != 1)
            return -1;
        CYFED_PRAGMA(omp simd reduction(+:n_bad))
        for (Py_ssize_t i = 0; i < m; ++i)
            n_bad += (y[i] != 0 && y[i] != 1) ? 1 : 0;
    } else if (kind == 1) {
        CYFED_PRAGMA(omp simd reduction(+:n_bad, s))
        for (Py_ssize_t i = 0; i < m; ++i) {
            n_bad += ((y[i] != 0 && y[i] != 1) ? 1 : 0) + (w[i] < 0 ? 1 : 0);
            s += (double)w[i];
        }
        *wsum += s;
    } else {
        CYFED_PRAGMA(omp simd reduction(+:n_bad, s))
        for (Py_ssize_t i = 0; i < m; ++i) {
            n_bad += w[i] < 0 ? 1 : 0;
            s += (double)w[i];
        }
        *wsum += s;
    }
    if (n_bad == 0)
        return -1;
    for (Py_ssize_t i = 0; i < m; ++i)
        if ((kind == 1 && y[i] != 0 && y[i] != 1) || (w != NULL && w[i] < 0))
            return i;
    return -1;
}

#if defined(__GNUC__) || defined(__clang__)
/*
 * Softmax with k <= 2 * CYFED_VLEN(T) classes: W is padded to kp = nv * VLEN
 * columns and each of the four rows' margins lives in nv 64-byte vector
 * registers for the whole pass over j (GCC/clang vector extensions; the
 * compiler splits them into whatever the target ISA has).
 */
#define CYFED_VEC_BYTES CYFED_CAT(CYFED_VEC_BYTES, CYFED_S)
#define CYFED_MAX_NV CYFED_CAT(CYFED_MAX_NV, CYFED_S)
typedef CYFED_T CYFED_FN(vec) __attribute__((vector_size(CYFED_VEC_BYTES)));
typedef CYFED_T CYFED_FN(uvec) __attribute__((vector_size(CYFED_VEC_BYTES),
                                              aligned(sizeof(CYFED_T))));
#define CYFED_VLEN ((Py_ssize_t)(CYFED_VEC_BYTES / sizeof(CYFED_T)))
#define CYFED_LD(p) (*(const CYFED_FN(uvec) *)(p))

static inline __attribute__((always_inline)) void
CYFED_FN(gemv4_vec_impl)(const CYFED_T *const *x, const CYFED_T *Wp, Py_ssize_t d, int nv,
                         int nr, CYFED_T *z, Py_ssize_t ldz)
{
    CYFED_FN(vec) a[4][CYFED_MAX_NV];
    for (int u = 0; u < nr; ++u)
        for (int v = 0; v < nv; ++v)
            a[u][v] = CYFED_LD(z + u * ldz + v * CYFED_VLEN);
    for (Py_ssize_t j = 0; j < d; ++j) {
        const CYFED_T *wj = Wp + j * nv * CYFED_VLEN;
        for (int v = 0; v < nv; ++v) {
            const CYFED_FN(vec) wv = CYFED_LD(wj + v * CYFED_VLEN);
            for (int u = 0; u < nr; ++u)
                a[u][v] += x[u][j] * wv;
        }
    }
    for (int u = 0; u < nr; ++u)
        for (int v = 0; v < nv; ++v)
            *(CYFED_FN(uvec) *)(z + u * ldz + v * CYFED_VLEN) = a[u][v];
}

/* Compile-time (nv, nr) keep the accumulators in registers. */
#define CYFED_NV_NR_SWITCH(call)                                                  \
    switch (nv * 4 + nr - 5) {                                                      \
    case 0: call(1, 1); break; case 1: call(1, 2); break;                          \
    case 2: call(1, 3); break; case 3: call(1, 4); break;                          \
    case 4: call(2, 1); break; case 5: call(2, 2); break;                          \
    case 6: call(2, 3); break; case 7: call(2, 4); break;                          \
    CYFED_NV_NR_WIDE(call)                                                          \
    }
#if CYFED_MAX_NV > 2
#define CYFED_NV_NR_WIDE(call)                                                    \
    case 8: call(3, 1); break; case 9: call(3, 2); break;                          \
    case 10: call(3, 3); break; case 11: call(3, 4); break;                        \
    case 12: call(4, 1); break; case 13: call(4, 2); break;                        \
    case 14: call(4, 3); break; case 15: call(4, 4); break;
#else
#define CYFED_NV_NR_WIDE(call)
#endif

/* z[u] += x[u] Wp for the nr <= 4 rows x[0..nr-1] (z rows ldz apart). */
static void CYFED_FN(gemv4_vec)(const CYFED_T *const *x, int nr, const CYFED_T *Wp,
                                Py_ssize_t d, int nv, CYFED_T *z, Py_ssize_t ldz)
{
#define CYFED_CALL(NV, NR) CYFED_FN(gemv4_vec_impl)(x, Wp, d, NV, NR, z, ldz)
    CYFED_NV_NR_SWITCH(CYFED_CALL)
#undef CYFED_CALL
}

static inline __attribute__((always_inline)) void
CYFED_FN(ger4_vec_impl)(CYFED_T *G, const CYFED_T *const *x, const CYFED_T *R,
                        Py_ssize_t ldr, Py_ssize_t d, int nv, int nr)
{
    CYFED_FN(vec) r[4][CYFED_MAX_NV];
    for (int u = 0; u < nr; ++u)
        for (int v = 0; v < nv; ++v)
            r[u][v] = CYFED_LD(R + u * ldr + v * CYFED_VLEN);
    for (Py_ssize_t j = 0; j < d; ++j) {
        CYFED_T *gj = G + j * nv * CYFED_VLEN;
        for (int v = 0; v < nv; ++v) {
            CYFED_FN(uvec) *gv = (CYFED_FN(uvec) *)(gj + v * CYFED_VLEN);
            CYFED_FN(vec) acc = x[0][j] * r[0][v];
            for (int u = 1; u < nr; ++u)
                acc += x[u][j] * r[u][v];
            *gv = *gv + acc;
        }
    }
}

/* G += sum_u x[u]^T R[u] for the nr <= 4 rows x[0..nr-1] (R rows ldr apart). */
static void CYFED_FN(ger4_vec)(CYFED_T *G, const CYFED_T *const *x, int nr, const CYFED_T *R,
                               Py_ssize_t ldr, Py_ssize_t d, int nv)
{
#define CYFED_CALL(NV, NR) CYFED_FN(ger4_vec_impl)(G, x, R, ldr, d, NV, NR)
    CYFED_NV_NR_SWITCH(CYFED_CALL)
#undef CYFED_CALL
}
#undef CYFED_NV_NR_SWITCH
#undef CYFED_NV_NR_WIDE
#undef CYFED_LD
#undef CYFED_VLEN
#undef CYFED_VEC_BYTES
#undef CYFED_MAX_NV
#else
/* Portable fallback (no vector extensions): plain loops over kp = nv * VLEN lanes. */
static void CYFED_FN(gemv4_vec)(const CYFED_T *const *x, int nr, const CYFED_T *Wp,
                                Py_ssize_t d, int nv, CYFED_T *z, Py_ssize_t ldz)
{
    const Py_ssize_t kp = nv * (Py_ssize_t)(CYFED_CAT(CYFED_VEC_BYTES, CYFED_S) / sizeof(CYFED_T));
    for (int u = 0; u < nr; ++u)
        for (Py_ssize_t j = 0; j < d; ++j)
            for (Py_ssize_t c = 0; c < kp; ++c)
                z[u * ldz + c] += x[u][j] * Wp[j * kp + c];
}

static void CYFED_FN(ger4_vec)(CYFED_T *G, const CYFED_T *const *x, int nr, const CYFED_T *R,
                               Py_ssize_t ldr, Py_ssize_t d, int nv)
{
    const Py_ssize_t kp = nv * (Py_ssize_t)(CYFED_CAT(CYFED_VEC_BYTES, CYFED_S) / sizeof(CYFED_T));
    for (int u = 0; u < nr; ++u)
        for (Py_ssize_t j = 0; j < d; ++j)
            for (Py_ssize_t c = 0; c < kp; ++c)
                G[j * kp + c] += x[u][j] * R[u * ldr + c];
}
#endif

#undef CYFED_LINK_LANES
