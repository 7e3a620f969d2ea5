/*
 * Vectorisable primitives for the cyfed kernels.
 *
 * Everything here is branch-free `static inline` C so that the compiler can
 * vectorise the loops that call it (the build compiles these once per SIMD
 * level: x86-64 baseline, x86-64-v3, x86-64-v4).  Reductions carry
 * `#pragma omp simd reduction`, which lets the compiler reassociate that one
 * sum into several vector accumulators (enabled by -fopenmp-simd); nothing is
 * compiled with -ffast-math, so NaN and Inf keep their IEEE meaning.
 *
 * exp and log are our own (glibc's are not vectorisable without fast-math):
 *   exp(x) = 2^n * P(r),  n = round(x / ln 2),  r = x - n ln 2 (Cody-Waite),
 *            P the Taylor polynomial of degree 12 (double) / 7 (float), so the
 *            truncation error is below 2e-16 (double) / 2e-8 (float) relative.
 *   log(x) = e ln 2 + log(m), m in [sqrt(2)/2, sqrt(2)), with the fdlibm
 *            expansion log(m) = f - (f^2/2 - s (f^2/2 + R(s^2))), s = f/(2+f).
 * Both are specialised to the arguments the losses use: exp for x <= 0,
 * log for x >= 1 (and log1p for t >= 0).
 */
#ifndef CYFED_VECTOR_MATH_H
#define CYFED_VECTOR_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <Python.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
static inline int cyfed_thread_id(void) { return omp_get_thread_num(); }
static inline int cyfed_max_threads(void) { return omp_get_max_threads(); }
static inline int cyfed_have_openmp(void) { return 1; }
#else
static inline int cyfed_thread_id(void) { return 0; }
static inline int cyfed_max_threads(void) { return 1; }
static inline int cyfed_have_openmp(void) { return 0; }
#endif

#define CYFED_PRAGMA(x) _Pragma(#x)

/*
 * Vector width (bytes) of the softmax micro-kernels, per type, and how many
 * vectors a row of class margins may take (k <= CYFED_MAX_NV * width / sizeof(T)
 * uses them, i.e. k <= 16 doubles or 32 floats).  Doubles use 32 bytes: on AMD
 * Zen 4 a 512-bit operation costs two 256-bit ones, and k = 10 doubles fill
 * 3 x 4 lanes (12) instead of 2 x 8 (16); floats keep 64 bytes (measured).
 */
#define CYFED_VEC_BYTES_d 32
#define CYFED_VEC_BYTES_f 64
#define CYFED_MAX_NV_d 4
#define CYFED_MAX_NV_f 2

/* Work entries the softmax link needs for a block of m rows of k classes. */
#define CYFED_SOFTMAX_WORK(k, m) (((k) + 6) * ((m) + 16))

/* Bytes of one row of a comparator-network tile (coordinates x sizeof(T)). */
#define CYFED_NET_BYTES 128

/*
 * Batcher's odd-even merge sort networks for 8 and 16 values (comparator (a, b):
 * min to a, max to b), as X-macros so that one list yields both an in-register
 * sequence and a table.  They are the first phases of the network of any larger
 * power of two, which sort each aligned group of 8 or 16 rows.
 */
#define CYFED_BATCHER8(CS) CS(0,1) CS(2,3) CS(4,5) CS(6,7) CS(0,2) CS(1,3) CS(4,6) CS(5,7) \
    CS(1,2) CS(5,6) CS(0,4) CS(1,5) CS(2,6) CS(3,7) CS(2,4) CS(3,5) CS(1,2) CS(3,4) CS(5,6)
#define CYFED_BATCHER16(CS) CS(0,1) CS(2,3) CS(4,5) CS(6,7) CS(8,9) CS(10,11) CS(12,13) \
    CS(14,15) CS(0,2) CS(1,3) CS(4,6) CS(5,7) CS(8,10) CS(9,11) CS(12,14) CS(13,15) CS(1,2) \
    CS(5,6) CS(9,10) CS(13,14) CS(0,4) CS(1,5) CS(2,6) CS(3,7) CS(8,12) CS(9,13) CS(10,14) \
    CS(11,15) CS(2,4) CS(3,5) CS(10,12) CS(11,13) CS(1,2) CS(3,4) CS(5,6) CS(9,10) CS(11,12) \
    CS(13,14) CS(0,8) CS(1,9) CS(2,10) CS(3,11) CS(4,12) CS(5,13) CS(6,14) CS(7,15) CS(4,8) \
    CS(5,9) CS(6,10) CS(7,11) CS(2,4) CS(3,5) CS(6,8) CS(7,9) CS(10,12) CS(11,13) CS(1,2) \
    CS(3,4) CS(5,6) CS(7,8) CS(9,10) CS(11,12) CS(13,14)
#define CYFED_PAIR(a, b) a, b,
static const int cyfed_batcher8[] = {CYFED_BATCHER8(CYFED_PAIR)};
static const int cyfed_batcher16[] = {CYFED_BATCHER16(CYFED_PAIR)};
#undef CYFED_PAIR

/* Widest X (columns) that takes the compile-time-D "narrow" path. */
#define CYFED_NARROW_MAX 16

#if defined(__GNUC__) || defined(__clang__)
#define CYFED_RESTRICT __restrict__
#define CYFED_INLINE inline __attribute__((always_inline))
#else
#define CYFED_RESTRICT
#define CYFED_INLINE inline
#endif

static inline double cyfed_bits_to_double(int64_t b) { double x; memcpy(&x, &b, 8); return x; }
static inline int64_t cyfed_double_to_bits(double x) { int64_t b; memcpy(&b, &x, 8); return b; }
static inline float cyfed_bits_to_float(int32_t b) { float x; memcpy(&x, &b, 4); return x; }
static inline int32_t cyfed_float_to_bits(float x) { int32_t b; memcpy(&b, &x, 4); return b; }

/* exp(x) for x <= 0; x below -708 returns exp(-708) ~ 3.3e-308; NaN stays NaN. */
static inline double cyfed_exp_neg_d(double x)
{
    const double shift = 6755399441055744.0;          /* 1.5 * 2^52 */
    double xc = x < -708.0 ? -708.0 : x;
    double t = xc * 1.4426950408889634 + shift;       /* low bits of t hold n */
    double n = t - shift;
    double r = xc - n * 6.93147180369123816490e-01;   /* ln2, high part */
    r = r - n * 1.90821492927058770002e-10;           /* ln2, low part */
    double p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* shift as unsigned: the exponent bits of n wrap modulo 2^64 as intended */
    double y = cyfed_bits_to_double((int64_t)((uint64_t)cyfed_double_to_bits(p)
                                              + ((uint64_t)cyfed_double_to_bits(t) << 52)));
    return x == x ? y : x;
}

static inline float cyfed_exp_neg_f(float x)
{
    const float shift = 12582912.0f;                  /* 1.5 * 2^23 */
    float xc = x < -86.0f ? -86.0f : x;
    float t = xc * 1.44269504f + shift;
    float n = t - shift;
    float r = xc - n * 0.693145752f;                  /* ln2, high part */
    r = r - n * 1.42860677e-06f;                      /* ln2, low part */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    float y = cyfed_bits_to_float((int32_t)((uint32_t)cyfed_float_to_bits(p)
                                            + ((uint32_t)cyfed_float_to_bits(t) << 23)));
    return x == x ? y : x;
}

/* log(x) for finite x >= 1 (fdlibm e_log.c coefficients); NaN/Inf propagate. */
static inline double cyfed_log_ge1_d(double x)
{
    int64_t bits = cyfed_double_to_bits(x);
    /* e = exponent as a double without an int64->double conversion (AVX2 has none) */
    double e = cyfed_bits_to_double((bits >> 52) | 0x4330000000000000LL) - 4503599627371519.0;
    double m = cyfed_bits_to_double((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
    int big = m > 1.4142135623730951;
    m = big ? 0.5 * m : m;
    e = big ? e + 1.0 : e;
    double f = m - 1.0;
    double s = f / (2.0 + f);
    double z = s * s;
    double w = z * z;
    double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    double t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
                 + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    double R = t1 + t2;
    double hfsq = 0.5 * f * f;
    double y = e * 6.93147180369123816490e-01
             - ((hfsq - (s * (hfsq + R) + e * 1.90821492927058770002e-10)) - f);
    return (x - x == 0.0) ? y : x + x;  /* Inf -> Inf, NaN -> NaN */
}

static inline float cyfed_log_ge1_f(float x)
{
    int32_t bits = cyfed_float_to_bits(x);
    float e = (float)((bits >> 23) - 127);
    float m = cyfed_bits_to_float((bits & 0x007fffff) | 0x3f800000);
    int big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e = big ? e + 1.0f : e;
    float f = m - 1.0f;
    float s = f / (2.0f + f);
    float z = s * s;
    float w = z * z;
    float t1 = w * (0.40000972152f + w * 0.24279078841f);
    float t2 = z * (0.66666662693f + w * 0.28498786688f);
    float R = t1 + t2;
    float hfsq = 0.5f * f * f;
    float y = e * 0.693145752f - ((hfsq - (s * (hfsq + R) + e * 1.42860677e-06f)) - f);
    return (x - x == 0.0f) ? y : x + x;
}

/* log(1 + t) for finite t >= 0: log(u) plus the rounding error of u = 1 + t. */
static inline double cyfed_log1p_d(double t)
{
    double u = 1.0 + t;
    return cyfed_log_ge1_d(u) + (t - (u - 1.0)) / u;
}

static inline float cyfed_log1p_f(float t)
{
    float u = 1.0f + t;
    return cyfed_log_ge1_f(u) + (t - (u - 1.0f)) / u;
}

/*
 * Prefetch [p, p + nbytes) into L2, one request per 64-byte line.  The kernels
 * spread the next block's lines over the current block's work: rows of a few
 * hundred bytes are streams too short for the hardware prefetcher to train on.
 */
static inline void cyfed_prefetch_l2(const void *p, Py_ssize_t nbytes)
{
#if defined(__GNUC__) || defined(__clang__)
    const char *c = (const char *)p;
    for (Py_ssize_t off = 0; off < nbytes; off += 64)
        __builtin_prefetch(c + off, 0, 2);
#else
    (void)p; (void)nbytes;
#endif
}

/*
 * Type-generic loops, instantiated for double and float: _loss_ops.h (the loss
 * and SGD kernels' primitives) and _aggregate_ops.h (the aggregation kernels').
 * In both, a function `name` becomes cyfed_name_d / cyfed_name_f.
 */
#define CYFED_CAT2(a, b) a##_##b
#define CYFED_CAT(a, b) CYFED_CAT2(a, b)
#define CYFED_FN(name) CYFED_CAT(cyfed_##name, CYFED_S)

#define CYFED_T double
#define CYFED_S d
#include "_loss_ops.h"
#include "_aggregate_ops.h"
#undef CYFED_T
#undef CYFED_S

#define CYFED_T float
#define CYFED_S f
#include "_loss_ops.h"
#include "_aggregate_ops.h"
#undef CYFED_T
#undef CYFED_S

#undef CYFED_FN
#undef CYFED_CAT
#undef CYFED_CAT2

#endif
