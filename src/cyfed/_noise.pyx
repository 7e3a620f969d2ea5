"""Compiled Gaussian noise for distributed DP: rows[i, j] += scale[j] * z(key, client_ids[i], j).

Called by ``cyfed.private_rounds.PrivateRounds._add_shares`` (which builds the
rows and the scales itself, so only assert-level checks happen there); the
kernel runs without the GIL, threaded over rows.

Generator
    Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
    SC 2011; the generator of Random123, cuRAND, JAX and PyTorch's CUDA RNG),
    a counter-based generator that passes TestU01's BigCrush with a margin
    (it is Crush-resistant from 7 rounds).  Block (pair) k of client c under
    the 128-bit key (key0, key1) is

        philox4x32_10(counter = (k, lo32(key1), lo32(c), hi32(c)), key = key0)

    so a draw is a pure function of (key, client, column): it does not depend
    on the rank or thread that computes it, the other rows, or the row's
    position.  96 of the key's 128 bits are used (key0 whole as Philox's key,
    the low half of key1 in the counter).  Columns: at most 2^33 per row.

Normal transform
    Box-Muller on the block's two 64-bit halves, 52 random bits each:
    u1 = 2 - d1 in (0, 1] (never 0, so log is finite; |z| <= sqrt(104 ln 2) ~ 8.49)
    and u2 = d2 - 1 in [0, 1), d in [1, 2) built from the bits;
    r = sqrt(-2 log u1), theta = 2 pi u2.  theta is reduced exactly:
    theta = n pi/2 + a with n = round(4 u2) and a = (4 u2 - n) pi/2 in
    [-pi/4, pi/4] (4 u2 - n is exact), then fdlibm's kernel polynomials give
    sin a and cos a and n rotates them.  log is fdlibm's (< 1 ulp).  All in
    branch-free C that the compiler vectorises (8 lanes with AVX-512).
    Pair k gives the normals of two columns 64 apart: within each chunk of
    128 columns starting at 128 q, pair 64 q + l gives column 128 q + l
    (r cos theta) and column 128 q + 64 + l (r sin theta), so no interleaving.
    Error of z against the exact transform of the same (u1, u2), measured in
    long double by the tests: < 1.2e-15 absolute, < 2e-15 relative where
    |z| > 0.5 (near z = 0 the relative error is that of any double angle).  The Philox part is written with AVX-512F / AVX2 intrinsics
    (GCC expands a 64-bit-lane product by a constant into shifts and adds).  Floating-point contraction is switched off for this
    code, so every SIMD build (baseline, x86-64-v3, x86-64-v4) produces the
    same bits.

Zero scales: a column with scale[j] == 0 is left untouched (bit for bit, NaN
and -0.0 included), though its draw still exists (columns keep their draws).
"""
from cython cimport view
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint32_t, uint64_t

import numpy as np

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX2__) || defined(__AVX512F__)
    #include <immintrin.h>
    #endif

    #if defined(__clang__)
    #pragma STDC FP_CONTRACT OFF
    #elif defined(__GNUC__)
    #pragma GCC push_options
    #pragma GCC optimize ("fp-contract=off")
    #endif

    #define CYFED_PHILOX_M0 0xD2511F53U
    #define CYFED_PHILOX_M1 0xCD9E8D57U
    #define CYFED_PHILOX_W0 0x9E3779B9U
    #define CYFED_PHILOX_W1 0xBB67AE85U
    /* Box-Muller pairs per chunk: a chunk covers 2 * 64 columns.  Part of the
     * stream's definition (which column gets which draw): never tune it. */
    #define CYFED_NOISE_PAIRS 64

    static inline double cyfed_nz_bits_to_double(uint64_t b) { double x; memcpy(&x, &b, 8); return x; }
    static inline uint64_t cyfed_nz_double_to_bits(double x) { uint64_t b; memcpy(&b, &x, 8); return b; }

    /* Round keys of Philox4x32-10 for a 64-bit key, as 64-bit lanes. */
    static void cyfed_philox_round_keys(uint64_t key, uint64_t rk[20])
    {
        uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
        for (int r = 0; r < 10; r++) {
            rk[2 * r] = k0; rk[2 * r + 1] = k1;
            k0 += CYFED_PHILOX_W0; k1 += CYFED_PHILOX_W1;
        }
    }

    /* One Philox4x32-10 block (scalar; for the known-answer tests). */
    static void cyfed_philox4x32_10(uint32_t c[4], uint64_t key)
    {
        uint64_t rk[20];
        uint32_t a0 = c[0], a1 = c[1], a2 = c[2], a3 = c[3];
        cyfed_philox_round_keys(key, rk);
        for (int r = 0; r < 10; r++) {
            uint64_t p0 = (uint64_t)CYFED_PHILOX_M0 * a0;
            uint64_t p1 = (uint64_t)CYFED_PHILOX_M1 * a2;
            a0 = (uint32_t)(p1 >> 32) ^ a1 ^ (uint32_t)rk[2 * r];
            a1 = (uint32_t)p1;
            a2 = (uint32_t)(p0 >> 32) ^ a3 ^ (uint32_t)rk[2 * r + 1];
            a3 = (uint32_t)p0;
        }
        c[0] = a0; c[1] = a1; c[2] = a2; c[3] = a3;
    }

    /* log(x) for normal x > 0 (fdlibm e_log.c), all-integer argument reduction:
     * a double compare would not be if-converted for AVX2 under -ftrapping-math,
     * and AVX2 has no 64-bit arithmetic shift. */
    static inline double cyfed_nz_log(double x)
    {
        uint64_t bits = cyfed_nz_double_to_bits(x);
        int64_t mant = (int64_t)(bits & 0x000fffffffffffffULL);
        uint64_t big = (uint64_t)-(int64_t)(mant > 0x6a09e667f3bcdLL);   /* m > sqrt(2) */
        double e = cyfed_nz_bits_to_double(((bits >> 52) + (big & 1)) | 0x4330000000000000ULL)
                   - 4503599627371519.0;                                  /* 2^52 + 1023 */
        double m = cyfed_nz_bits_to_double((uint64_t)mant
                                           | (0x3ff0000000000000ULL - (big & 0x0010000000000000ULL)));
        double f = m - 1.0;
        double s = f / (2.0 + f);
        double z = s * s;
        double w = z * z;
        double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01
                    + w * 1.531383769920937332e-01));
        double t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
                    + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
        double R = t1 + t2;
        double hfsq = 0.5 * f * f;
        return e * 6.93147180369123816490e-01
               - ((hfsq - (s * (hfsq + R) + e * 1.90821492927058770002e-10)) - f);
    }

    /* Standard normals of pairs [pair0, pair0 + n), n <= CYFED_NOISE_PAIRS, of the
     * stream (rk, c1, client): zc[l] = r cos(theta), zs[l] = r sin(theta). */
    static inline void cyfed_normal_pairs(const uint64_t rk[20], uint32_t pair0, uint64_t c1,
                                          uint64_t client, int n, double *zc, double *zs)
    {
        const uint64_t lo32 = 0xffffffffULL, one = 0x3ff0000000000000ULL;
        const uint64_t c2 = client & lo32, c3 = client >> 32;
        uint64_t b1[CYFED_NOISE_PAIRS], b2[CYFED_NOISE_PAIRS];
    #if defined(__AVX512F__)
        /* 8 blocks a vector: 32-bit words in 64-bit lanes, one vpmuludq a product */
        {
            const __m512i lo = _mm512_set1_epi64((long long)lo32), one_v = _mm512_set1_epi64((long long)one);
            const __m512i mul0 = _mm512_set1_epi64(CYFED_PHILOX_M0), mul1 = _mm512_set1_epi64(CYFED_PHILOX_M1);
            const __m512i step = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
            for (int l = 0; l < n; l += 8) {
                __m512i a0 = _mm512_and_si512(_mm512_add_epi64(_mm512_set1_epi64((long long)pair0 + l), step), lo);
                __m512i a1 = _mm512_set1_epi64((long long)c1), a2 = _mm512_set1_epi64((long long)c2);
                __m512i a3 = _mm512_set1_epi64((long long)c3);
                for (int r = 0; r < 10; r++) {
                    __m512i p0 = _mm512_mul_epu32(a0, mul0), p1 = _mm512_mul_epu32(a2, mul1);
                    a0 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p1, 32), a1),
                                          _mm512_set1_epi64((long long)rk[2 * r]));
                    a1 = _mm512_and_si512(p1, lo);
                    a2 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p0, 32), a3),
                                          _mm512_set1_epi64((long long)rk[2 * r + 1]));
                    a3 = _mm512_and_si512(p0, lo);
                }
                _mm512_storeu_si512((void *)(b1 + l), _mm512_or_si512(one_v, _mm512_or_si512(
                    _mm512_slli_epi64(a0, 20), _mm512_srli_epi64(a1, 12))));
                _mm512_storeu_si512((void *)(b2 + l), _mm512_or_si512(one_v, _mm512_or_si512(
                    _mm512_slli_epi64(a2, 20), _mm512_srli_epi64(a3, 12))));
            }
        }
    #elif defined(__AVX2__)
        {
            const __m256i lo = _mm256_set1_epi64x((long long)lo32), one_v = _mm256_set1_epi64x((long long)one);
            const __m256i mul0 = _mm256_set1_epi64x(CYFED_PHILOX_M0), mul1 = _mm256_set1_epi64x(CYFED_PHILOX_M1);
            const __m256i step = _mm256_set_epi64x(3, 2, 1, 0);
            for (int l = 0; l < n; l += 4) {
                __m256i a0 = _mm256_and_si256(_mm256_add_epi64(_mm256_set1_epi64x((long long)pair0 + l), step), lo);
                __m256i a1 = _mm256_set1_epi64x((long long)c1), a2 = _mm256_set1_epi64x((long long)c2);
                __m256i a3 = _mm256_set1_epi64x((long long)c3);
                for (int r = 0; r < 10; r++) {
                    __m256i p0 = _mm256_mul_epu32(a0, mul0), p1 = _mm256_mul_epu32(a2, mul1);
                    a0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), a1),
                                          _mm256_set1_epi64x((long long)rk[2 * r]));
                    a1 = _mm256_and_si256(p1, lo);
                    a2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), a3),
                                          _mm256_set1_epi64x((long long)rk[2 * r + 1]));
                    a3 = _mm256_and_si256(p0, lo);
                }
                _mm256_storeu_si256((__m256i *)(b1 + l), _mm256_or_si256(one_v, _mm256_or_si256(
                    _mm256_slli_epi64(a0, 20), _mm256_srli_epi64(a1, 12))));
                _mm256_storeu_si256((__m256i *)(b2 + l), _mm256_or_si256(one_v, _mm256_or_si256(
                    _mm256_slli_epi64(a2, 20), _mm256_srli_epi64(a3, 12))));
            }
        }
    #else
        for (int l = 0; l < n; l++) {
            uint32_t a0 = pair0 + (uint32_t)l, a1 = (uint32_t)c1, a2 = (uint32_t)c2, a3 = (uint32_t)c3;
            for (int r = 0; r < 10; r++) {
                uint64_t p0 = (uint64_t)CYFED_PHILOX_M0 * a0;
                uint64_t p1 = (uint64_t)CYFED_PHILOX_M1 * a2;
                a0 = (uint32_t)(p1 >> 32) ^ a1 ^ (uint32_t)rk[2 * r];
                a1 = (uint32_t)p1;
                a2 = (uint32_t)(p0 >> 32) ^ a3 ^ (uint32_t)rk[2 * r + 1];
                a3 = (uint32_t)p0;
            }
            b1[l] = one | ((uint64_t)a0 << 20) | (a1 >> 12);
            b2[l] = one | ((uint64_t)a2 << 20) | (a3 >> 12);
        }
    #endif
        for (int l = 0; l < n; l++) {
            double u1 = 2.0 - cyfed_nz_bits_to_double(b1[l]);    /* (0, 1], exact */
            double u2 = cyfed_nz_bits_to_double(b2[l]) - 1.0;    /* [0, 1), exact */
            double r = sqrt(-2.0 * cyfed_nz_log(u1));
            const double shift = 6755399441055744.0;              /* 1.5 * 2^52 */
            double t = 4.0 * u2 + shift;                          /* low bits: n */
            uint64_t n4 = cyfed_nz_double_to_bits(t);
            double g = 4.0 * u2 - (t - shift);                    /* [-1/2, 1/2], exact */
            double a = g * 1.57079632679489661923;                /* [-pi/4, pi/4] */
            double z = a * a;
            /* fdlibm k_sin.c / k_cos.c (FreeBSD), |error| < 1 ulp on [-pi/4, pi/4] */
            double sr = 8.33333333332248946124e-03 + z * (-1.98412698298579493134e-04
                        + z * (2.75573137070700676789e-06 + z * (-2.50507602534068634195e-08
                        + z * 1.58969099521155010221e-10)));
            double sa = a + (z * a) * (-1.66666666666666324348e-01 + z * sr);
            double cr = z * (4.16666666666666019037e-02 + z * (-1.38888888888741095749e-03
                        + z * (2.48015872894767294178e-05 + z * (-2.75573143513906633035e-07
                        + z * (2.08757232129817482790e-09 + z * -1.13596475577881948265e-11)))));
            double hz = 0.5 * z;
            double w = 1.0 - hz;
            double ca = w + (((1.0 - w) - hz) + z * cr);
            /* theta = n pi/2 + a: turn (cos a, sin a) by n quarter turns */
            uint64_t odd = 0 - (n4 & 1);
            uint64_t cb = cyfed_nz_double_to_bits(ca), sb = cyfed_nz_double_to_bits(sa);
            uint64_t cq = (sb & odd) | (cb & ~odd), sq = (cb & odd) | (sb & ~odd);
            zc[l] = r * cyfed_nz_bits_to_double(cq ^ (((n4 + 1) & 2) << 62));
            zs[l] = r * cyfed_nz_bits_to_double(sq ^ ((n4 & 2) << 62));
        }
    }

    /* x[l] += s[l] * z[l] where s[l] != 0 (bitwise select: x untouched where s == 0). */
    static inline void cyfed_axpy_nonzero(double *x, const double *s, const double *z, int n)
    {
        for (int l = 0; l < n; l++) {
            uint64_t keep = (uint64_t)-(int64_t)((cyfed_nz_double_to_bits(s[l]) << 1) == 0);
            uint64_t y = cyfed_nz_double_to_bits(x[l] + s[l] * z[l]);
            x[l] = cyfed_nz_bits_to_double((y & ~keep) | (cyfed_nz_double_to_bits(x[l]) & keep));
        }
    }

    /* row[j] += scale[j] * z(key, client, j) for j < w (w <= 2^33). */
    static void cyfed_gauss_row(double *row, int64_t w, const double *scale, uint64_t client,
                                const uint64_t rk[20], uint64_t c1)
    {
        double zc[CYFED_NOISE_PAIRS], zs[CYFED_NOISE_PAIRS];
        for (int64_t base = 0; base < w; base += 2 * CYFED_NOISE_PAIRS) {
            int64_t left = w - base;
            int n = left < CYFED_NOISE_PAIRS ? (int)left : CYFED_NOISE_PAIRS;
            int ns = left <= CYFED_NOISE_PAIRS ? 0
                     : (left < 2 * CYFED_NOISE_PAIRS ? (int)(left - CYFED_NOISE_PAIRS)
                        : CYFED_NOISE_PAIRS);
            cyfed_normal_pairs(rk, (uint32_t)(base / 2), c1, client, n, zc, zs);
            cyfed_axpy_nonzero(row + base, scale + base, zc, n);
            cyfed_axpy_nonzero(row + base + CYFED_NOISE_PAIRS, scale + base + CYFED_NOISE_PAIRS,
                               zs, ns);
        }
    }

    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    int CYFED_NOISE_PAIRS
    void cyfed_philox_round_keys(uint64_t key, uint64_t *rk) nogil
    void cyfed_philox4x32_10(uint32_t *c, uint64_t key) nogil
    void cyfed_gauss_row(double *row, int64_t w, const double *scale, uint64_t client,
                         const uint64_t *rk, uint64_t c1) nogil

#: Columns a row may have (pair indices are 32-bit).
MAX_COLUMNS = 2 ** 33


def add_gaussian_rows(double[:, ::view.contiguous] rows, const int64_t[::1] client_ids, uint64_t key0,
                      uint64_t key1, const double[::1] scale, int n_threads):
    """rows[i, j] += scale[j] * z(key, client_ids[i], j), z standard normal.

    rows: (m, w) float64, rows contiguous (any row stride, e.g. the first w
    columns of a wider C-contiguous array), client_ids: (m,) int64, scale: (w,)
    float64, key (key0, key1): two uint64 (e.g. ``SeedSequence(...).generate_state(2,
    np.uint64)``).  Threads over rows; the result is the same for any n_threads.
    """
    cdef Py_ssize_t m = rows.shape[0], w = rows.shape[1], i
    if client_ids.shape[0] != m:
        raise ValueError(f"client_ids: expected shape ({m},), got ({client_ids.shape[0]},)")
    if scale.shape[0] != w:
        raise ValueError(f"scale: expected shape ({w},), got ({scale.shape[0]},)")
    if w > MAX_COLUMNS:
        raise ValueError(f"rows: at most {MAX_COLUMNS} columns, got {w}")
    if m == 0 or w == 0:
        return
    cdef uint64_t rk[20]
    cyfed_philox_round_keys(key0, rk)
    cdef uint64_t c1 = key1 & 0xffffffffULL
    cdef int nt = max(1, min(n_threads, m))
    cdef const double *sc = &scale[0]
    cdef char *base = <char *>&rows[0, 0]
    cdef Py_ssize_t stride = rows.strides[0]
    cdef const int64_t *ids = &client_ids[0]
    for i in prange(m, nogil=True, num_threads=nt, schedule="static"):
        cyfed_gauss_row(<double *>(base + i * stride), w, sc, <uint64_t>ids[i], rk, c1)


def philox4x32_10(counter, uint64_t key):
    """One Philox4x32-10 block: 4 uint32 words for a 4-word counter and a 64-bit
    key whose low half is Random123's key[0] (for known-answer tests)."""
    cdef uint32_t c[4]
    cdef int k
    words = [int(v) for v in counter]
    if len(words) != 4:
        raise ValueError(f"counter: expected 4 words, got {len(words)}")
    for k in range(4):
        c[k] = words[k]
    cyfed_philox4x32_10(c, key)
    return np.array([c[0], c[1], c[2], c[3]], dtype=np.uint32)
