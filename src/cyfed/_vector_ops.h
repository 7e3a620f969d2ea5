/*
 * Type-generic loops of the fused loss/gradient kernels, included by
 * _vector_math.h once with CYFED_T = double and once with CYFED_T = float.
 * A function `name` becomes cyfed_name_d / cyfed_name_f.
 *
 * The kernels walk X in blocks of rows; inside a block they take four rows at
 * a time so that each load of coef (or of a row of the softmax weights) serves
 * four rows, and so that the gradient accumulator sees one dependent update per
 * four rows instead of one per row.
 */
#define CYFED_CAT2(a, b) a##_##b
#define CYFED_CAT(a, b) CYFED_CAT2(a, b)
#define CYFED_FN(name) CYFED_CAT(cyfed_##name, CYFED_S)

/* out[u] = x_u . c for four rows x_u of length n. */
static inline void CYFED_FN(dot4)(const CYFED_T *x0, const CYFED_T *x1, const CYFED_T *x2,
                                  const CYFED_T *x3, const CYFED_T *CYFED_RESTRICT c,
                                  Py_ssize_t n, CYFED_T *CYFED_RESTRICT out)
{
    CYFED_T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    CYFED_PRAGMA(omp simd reduction(+:s0, s1, s2, s3))
    for (Py_ssize_t j = 0; j < n; ++j) {
        s0 += x0[j] * c[j];
        s1 += x1[j] * c[j];
        s2 += x2[j] * c[j];
        s3 += x3[j] * c[j];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

/* acc[j] += sum_u r_u x_u[j]  (acc in double whatever the input type). */
static inline void CYFED_FN(axpy4)(double *CYFED_RESTRICT acc, const CYFED_T *r,
                                   const CYFED_T *x0, const CYFED_T *x1,
                                   const CYFED_T *x2, const CYFED_T *x3, Py_ssize_t n)
{
    const CYFED_T r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
    CYFED_PRAGMA(omp simd)
    for (Py_ssize_t j = 0; j < n; ++j)
        acc[j] += (double)(r0 * x0[j] + r1 * x1[j] + r2 * x2[j] + r3 * x3[j]);
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

/* G[j, c] += sum_u x_u[j] R[u, c]; G is (d, k) double, R is (4, k). */
static inline void CYFED_FN(ger4)(double *CYFED_RESTRICT G, const CYFED_T *x0,
                                  const CYFED_T *x1, const CYFED_T *x2, const CYFED_T *x3,
                                  const CYFED_T *CYFED_RESTRICT R, Py_ssize_t d, Py_ssize_t k)
{
    const CYFED_T *R0 = R, *R1 = R + k, *R2 = R + 2 * k, *R3 = R + 3 * k;
    for (Py_ssize_t j = 0; j < d; ++j) {
        const CYFED_T a0 = x0[j], a1 = x1[j], a2 = x2[j], a3 = x3[j];
        double *g = G + j * k;
        CYFED_PRAGMA(omp simd)
        for (Py_ssize_t c = 0; c < k; ++c)
            g[c] += (double)(a0 * R0[c] + a1 * R1[c] + a2 * R2[c] + a3 * R3[c]);
    }
}

/*
 * Links: turn the margins z of m rows into the weighted loss (returned, summed
 * in double) and, in place, into the gradient multipliers r = w dloss/dz.
 */

/* squared: loss = w (z - y)^2, r = 2 w (z - y). */
static inline double CYFED_FN(link_squared)(CYFED_T *CYFED_RESTRICT z,
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
 * logistic, y in {0, 1}: loss = w (softplus(z) - y z), r = w (sigmoid(z) - y),
 * with softplus(z) = max(z, 0) + log1p(exp(-|z|)) and sigmoid from the same
 * t = exp(-|z|) <= 1, so nothing overflows for any margin.
 */
static inline double CYFED_FN(link_logistic)(CYFED_T *CYFED_RESTRICT z,
                                             const CYFED_T *CYFED_RESTRICT y,
                                             const CYFED_T *CYFED_RESTRICT w, Py_ssize_t m)
{
    double loss = 0.0;
    CYFED_PRAGMA(omp simd reduction(+:loss))
    for (Py_ssize_t i = 0; i < m; ++i) {
        const CYFED_T zi = z[i];
        const CYFED_T a = zi < 0 ? -zi : zi;
        const CYFED_T t = CYFED_FN(exp_neg)(-a);
        const CYFED_T inv = 1 / (1 + t);
        const CYFED_T p = zi >= 0 ? inv : t * inv;
        const CYFED_T pos = zi > 0 ? zi : 0;
        loss += (double)(w[i] * (pos + CYFED_FN(log1p_unit)(t) - y[i] * zi));
        z[i] = w[i] * (p - y[i]);
    }
    return loss;
}

/*
 * softmax, y in 0..k-1: loss = w (logsumexp(z) - z_y), r_c = w (p_c - [c == y]),
 * p = exp(z - max z) / sum exp(z - max z).  z is (m, k).
 */
static inline double CYFED_FN(link_softmax)(CYFED_T *CYFED_RESTRICT z,
                                            const CYFED_T *CYFED_RESTRICT y,
                                            const CYFED_T *CYFED_RESTRICT w,
                                            Py_ssize_t m, Py_ssize_t k)
{
    double loss = 0.0;
    for (Py_ssize_t i = 0; i < m; ++i) {
        CYFED_T *zi = z + i * k;
        const Py_ssize_t label = (Py_ssize_t)y[i];
        const CYFED_T z_label = zi[label];
        CYFED_T mx = zi[0];
        for (Py_ssize_t c = 1; c < k; ++c)
            mx = zi[c] > mx ? zi[c] : mx;
        CYFED_T s = 0;
        CYFED_PRAGMA(omp simd reduction(+:s))
        for (Py_ssize_t c = 0; c < k; ++c) {
            const CYFED_T e = CYFED_FN(exp_neg)(zi[c] - mx);
            zi[c] = e;
            s += e;
        }
        const CYFED_T scale = w[i] / s;
        CYFED_PRAGMA(omp simd)
        for (Py_ssize_t c = 0; c < k; ++c)
            zi[c] *= scale;
        zi[label] -= w[i];
        loss += (double)w[i] * ((double)mx + (double)CYFED_FN(log_ge1)(s) - (double)z_label);
    }
    return loss;
}

#undef CYFED_FN
#undef CYFED_CAT
#undef CYFED_CAT2
