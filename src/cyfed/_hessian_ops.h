/*
 * Symmetric rank-m update of the Hessian kernels (_hessian.pyx): C += alpha A^T A
 * for a block A of m rows and q columns (float64), lower triangle of C.
 *
 * A is packed twice, into column panels of width CYFED_MR (the rows of a C tile)
 * and of width CYFED_NR (its columns), each panel m rows deep and zero past
 * column q, so a CYFED_MR x CYFED_NR tile of C is m rank-one updates of
 * registers: per row, two vector loads of the NR side, MR broadcasts of the MR
 * side, 2 MR fused multiply-adds.  A column panel (NR m doubles) stays in L1
 * while the MR panels below the diagonal stream past it.  Tiles straddling the
 * diagonal also update entries above it, and the padding makes a tile reach up
 * to CYFED_MR - 1 rows and CYFED_NR - 1 columns past q: the caller reads only
 * the lower triangle and gives C that much room (the padded products are 0).
 */
#ifndef CYFED_HESSIAN_OPS_H
#define CYFED_HESSIAN_OPS_H

#include <Python.h>

#define CYFED_MR 6
#define CYFED_NR 8

/* Row i of a block of m rows, row[0..q), into both packings (a: MR-wide, b: NR-wide). */
static inline void cyfed_pack_row(double *a, double *b, const double *row, Py_ssize_t q,
                                  Py_ssize_t i, Py_ssize_t m)
{
    for (Py_ssize_t j0 = 0; j0 < q; j0 += CYFED_MR) {
        double *dst = a + j0 * m + i * CYFED_MR;
        for (Py_ssize_t r = 0; r < CYFED_MR; ++r)
            dst[r] = j0 + r < q ? row[j0 + r] : 0.0;
    }
    for (Py_ssize_t j0 = 0; j0 < q; j0 += CYFED_NR) {
        double *dst = b + j0 * m + i * CYFED_NR;
        for (Py_ssize_t r = 0; r < CYFED_NR; ++r)
            dst[r] = j0 + r < q ? row[j0 + r] : 0.0;
    }
}

#if defined(__GNUC__) || defined(__clang__)
typedef double cyfed_v4d __attribute__((vector_size(32)));
typedef double cyfed_v4du __attribute__((vector_size(32), aligned(sizeof(double))));

/* C[0..MR, 0..NR) (row stride ldc) += alpha a^T b over m packed rows. */
static inline void cyfed_syrk_tile(const double *a, const double *b, Py_ssize_t m,
                                   double *c, Py_ssize_t ldc, double alpha)
{
    cyfed_v4d acc[CYFED_MR][2];
    for (int r = 0; r < CYFED_MR; ++r)
        acc[r][0] = acc[r][1] = (cyfed_v4d){0.0, 0.0, 0.0, 0.0};
    for (Py_ssize_t i = 0; i < m; ++i) {
        const cyfed_v4d b0 = *(const cyfed_v4du *)(b + i * CYFED_NR);
        const cyfed_v4d b1 = *(const cyfed_v4du *)(b + i * CYFED_NR + 4);
        const double *ai = a + i * CYFED_MR;
        for (int r = 0; r < CYFED_MR; ++r) {
            acc[r][0] += ai[r] * b0;
            acc[r][1] += ai[r] * b1;
        }
    }
    for (int r = 0; r < CYFED_MR; ++r) {
        cyfed_v4du *cr = (cyfed_v4du *)(c + r * ldc);
        cr[0] += alpha * acc[r][0];
        cr[1] += alpha * acc[r][1];
    }
}
#else
static inline void cyfed_syrk_tile(const double *a, const double *b, Py_ssize_t m,
                                   double *c, Py_ssize_t ldc, double alpha)
{
    double acc[CYFED_MR][CYFED_NR] = {{0.0}};
    for (Py_ssize_t i = 0; i < m; ++i)
        for (int r = 0; r < CYFED_MR; ++r)
            for (int s = 0; s < CYFED_NR; ++s)
                acc[r][s] += a[i * CYFED_MR + r] * b[i * CYFED_NR + s];
    for (int r = 0; r < CYFED_MR; ++r)
        for (int s = 0; s < CYFED_NR; ++s)
            c[r * ldc + s] += alpha * acc[r][s];
}
#endif

/* C (row stride ldc) += alpha A^T A on and below the diagonal, A packed by cyfed_pack_row. */
static inline void cyfed_syrk_packed(double *C, Py_ssize_t ldc, const double *a,
                                     const double *b, Py_ssize_t m, Py_ssize_t q, double alpha)
{
    for (Py_ssize_t b0 = 0; b0 < q; b0 += CYFED_NR)
        for (Py_ssize_t a0 = b0 / CYFED_MR * CYFED_MR; a0 < q; a0 += CYFED_MR)
            cyfed_syrk_tile(a + a0 * m, b + b0 * m, m, C + a0 * ldc + b0, ldc, alpha);
}

#endif
