"""Compiled kernels of the communication compressors (validated by cyfed.compress).

Every kernel reads a C-contiguous float32/float64 vector and writes into
caller-allocated parts of a payload (or a caller-allocated output), without the
GIL.  Encoders report non-finite input through their return value (a flag, or a
NaN/Inf norm) instead of raising inside the loop.

Randomness comes from a counter-based hash, u_i = mix(mix(i ^ lo) + hi) with
(lo, hi) the two halves of a 64-bit seed and mix the "lowbias32" integer hash
(C. Wellons): draw i does not depend on the draws before it, so loops
vectorise and a receiver regenerates the same draws from the seed alone.
"""
from cython cimport floating
from libc.math cimport sqrt
from libc.float cimport DBL_MAX
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from cyfed._vector_math cimport all_finite

import numpy as np

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    #if defined(__GNUC__) && (defined(__AVX__) || defined(__BMI2__))
    #include <immintrin.h>
    #endif

    static inline uint32_t cyfed_mix32(uint32_t x)
    {
        x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
        return x;
    }

    /* Draw i of the stream `seed`: 32 uniform bits. */
    static inline uint32_t cyfed_rand32(uint64_t seed, uint32_t i)
    {
        return cyfed_mix32(cyfed_mix32(i ^ (uint32_t)seed) + (uint32_t)(seed >> 32));
    }

    /* IEEE half precision with the F16C instructions (x86-64-v3/v4 builds);
     * elsewhere the Python side converts with numpy.  Returns 1 if x is finite
     * (sum of x - x: 0, or NaN for NaN/Inf). */
    #if defined(__GNUC__) && defined(__F16C__) && defined(__AVX__)
    #define CYFED_HAVE_F16 1
    static inline __m256 cyfed_load8_f(const float *x) { return _mm256_loadu_ps(x); }
    static inline __m256 cyfed_load8_d(const double *x)
    {
        return _mm256_set_m128(_mm256_cvtpd_ps(_mm256_loadu_pd(x + 4)),
                               _mm256_cvtpd_ps(_mm256_loadu_pd(x)));
    }
    static inline void cyfed_store8_f(float *x, __m256 v) { _mm256_storeu_ps(x, v); }
    static inline void cyfed_store8_d(double *x, __m256 v)
    {
        _mm256_storeu_pd(x, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        _mm256_storeu_pd(x + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    #define CYFED_F16(T, S)                                                         \\
    static int cyfed_to_f16_##S(const T *x, Py_ssize_t n, uint16_t *h)             \\
    {                                                                               \\
        Py_ssize_t i = 0;                                                           \\
        T bad = 0;                                                                  \\
        for (; i + 8 <= n; i += 8)                                                  \\
            _mm_storeu_si128((__m128i *)(h + i),                                    \\
                             _mm256_cvtps_ph(cyfed_load8_##S(x + i),                \\
                                             _MM_FROUND_TO_NEAREST_INT));           \\
        for (; i < n; ++i)                                                          \\
            h[i] = _cvtss_sh((float)x[i], _MM_FROUND_TO_NEAREST_INT);               \\
        _Pragma("omp simd reduction(+:bad)")                                        \\
        for (i = 0; i < n; ++i)                                                     \\
            bad += x[i] - x[i];                                                     \\
        return bad == 0;                                                            \\
    }                                                                               \\
    static void cyfed_from_f16_##S(const uint16_t *h, Py_ssize_t n, T *x)          \\
    {                                                                               \\
        Py_ssize_t i = 0;                                                           \\
        for (; i + 8 <= n; i += 8)                                                  \\
            cyfed_store8_##S(x + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i)))); \\
        for (; i < n; ++i)                                                          \\
            x[i] = (T)_cvtsh_ss(h[i]);                                              \\
    }
    #else
    #define CYFED_HAVE_F16 0
    #define CYFED_F16(T, S)                                                         \\
    static int cyfed_to_f16_##S(const T *x, Py_ssize_t n, uint16_t *h) { return -1; } \\
    static void cyfed_from_f16_##S(const uint16_t *h, Py_ssize_t n, T *x) {}
    #endif
    CYFED_F16(float, f)
    CYFED_F16(double, d)

    /* Vectorised float64 sums (the pragma lets the compiler split the sum). */
    #define CYFED_SUMS(T, S)                                                        \\
    static double cyfed_sum_sq_##S(const T *x, Py_ssize_t n)                       \\
    {                                                                               \\
        double s = 0;                                                               \\
        _Pragma("omp simd reduction(+:s)")                                          \\
        for (Py_ssize_t i = 0; i < n; ++i) s += (double)x[i] * (double)x[i];       \\
        return s;                                                                   \\
    }                                                                               \\
    static double cyfed_sum_abs_##S(const T *x, Py_ssize_t n)                      \\
    {                                                                               \\
        double s = 0;                                                               \\
        _Pragma("omp simd reduction(+:s)")                                          \\
        for (Py_ssize_t i = 0; i < n; ++i) s += fabs((double)x[i]);                \\
        return s;                                                                   \\
    }
    CYFED_SUMS(float, f)
    CYFED_SUMS(double, d)

    /* QSGD codes 2 level + [x < 0] of x[0..n) (coordinates i0...), one byte each. */
    #define CYFED_QSGD_CODES(T, S)                                                  \\
    static void cyfed_qsgd_codes_##S(const T *x, Py_ssize_t n, Py_ssize_t i0,      \\
                                     double scale, uint32_t levels, uint64_t seed,  \\
                                     uint8_t *codes)                                \\
    {                                                                               \\
        _Pragma("omp simd")                                                         \\
        for (Py_ssize_t j = 0; j < n; ++j) {                                        \\
            const double r = fabs((double)x[j]) * scale;                            \\
            uint32_t l = (uint32_t)r;                                               \\
            /* round up with probability r - l (32-bit uniform: bias < 2^-32) */    \\
            l += cyfed_rand32(seed, (uint32_t)(i0 + j)) * 2.3283064365386963e-10 < r - l; \\
            l = l < levels ? l : levels;                                            \\
            codes[j] = (uint8_t)(2 * l + (x[j] < 0));                               \\
        }                                                                           \\
    }                                                                               \\
    static void cyfed_qsgd_values_##S(const uint8_t *codes, Py_ssize_t n, T unit, T *x) \\
    {                                                                               \\
        _Pragma("omp simd")                                                         \\
        for (Py_ssize_t j = 0; j < n; ++j)                                          \\
            x[j] = (T)(codes[j] >> 1) * unit * (1 - 2 * (T)(codes[j] & 1));         \\
    }
    CYFED_QSGD_CODES(float, f)
    CYFED_QSGD_CODES(double, d)

    /* 8 codes of w bits (one per byte of `bytes`) <-> 8 w bits, little-endian. */
    static inline uint64_t cyfed_pack8(uint64_t bytes, int w)
    {
    #if defined(__BMI2__)
        return _pext_u64(bytes, 0x0101010101010101ULL * ((1U << w) - 1));
    #else
        uint64_t acc = 0;
        for (int j = 0; j < 8; ++j) acc |= ((bytes >> (8 * j)) & 0xff) << (j * w);
        return acc;
    #endif
    }
    static inline uint64_t cyfed_unpack8(uint64_t acc, int w)
    {
    #if defined(__BMI2__)
        return _pdep_u64(acc, 0x0101010101010101ULL * ((1U << w) - 1));
    #else
        uint64_t bytes = 0, mask = (1U << w) - 1;
        for (int j = 0; j < 8; ++j) bytes |= ((acc >> (j * w)) & mask) << (8 * j);
        return bytes;
    #endif
    }

    /* Sign bits: bit j of bits[g] = [x[8 g + j] < 0] (a vector compare per byte where
     * AVX has one, then the last partial byte). */
    #if defined(__GNUC__) && defined(__AVX__)
    static inline int cyfed_sign_byte_f(const float *x)
    {
        return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x), _mm256_setzero_ps(),
                                                _CMP_LT_OQ));
    }
    static inline int cyfed_sign_byte_d(const double *x)
    {
        const __m256d z = _mm256_setzero_pd();
        return _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(x), z, _CMP_LT_OQ))
               | _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(x + 4), z, _CMP_LT_OQ)) << 4;
    }
    #define CYFED_SIGN_BYTES(S)                                                     \\
        for (; 8 * g + 8 <= n; ++g) bits[g] = (uint8_t)cyfed_sign_byte_##S(x + 8 * g);
    #else
    #define CYFED_SIGN_BYTES(S)
    #endif
    #define CYFED_SIGNS(T, S)                                                       \\
    static void cyfed_signs_##S(const T *x, Py_ssize_t n, uint8_t *bits)           \\
    {                                                                               \\
        Py_ssize_t g = 0;                                                           \\
        CYFED_SIGN_BYTES(S)                                                         \\
        for (; 8 * g < n; ++g) {                                                    \\
            uint8_t byte = 0;                                                       \\
            for (Py_ssize_t j = 0; j < 8 && 8 * g + j < n; ++j)                     \\
                byte |= (uint8_t)((x[8 * g + j] < 0) << j);                         \\
            bits[g] = byte;                                                         \\
        }                                                                           \\
    }
    CYFED_SIGNS(float, f)
    CYFED_SIGNS(double, d)

    /* Top-k candidates: append to idx every i < n whose magnitude key |x_i| (the
     * float's bits without the sign) is >= t, in increasing i; returns how many.
     * NaN/Inf have the largest keys, so they always pass. */
    #define CYFED_FILTER_TAIL(UT, MASK)                                             \\
        for (; i < n; ++i) {                                                        \\
            UT k;                                                                   \\
            memcpy(&k, x + i, sizeof k);                                            \\
            if ((k & MASK) >= t) idx[c++] = (uint32_t)i;                            \\
        }                                                                           \\
        return c;
    static Py_ssize_t cyfed_filter_f(const float *x, Py_ssize_t n, uint32_t t, uint32_t *idx)
    {
        Py_ssize_t i = 0, c = 0;
    #if defined(__GNUC__) && defined(__AVX512F__)
        /* branch-free: compress the passing lanes' indices in a register, store 16
         * (idx has room: c <= i), advance by their count */
        const __m512i m = _mm512_set1_epi32(0x7fffffff), tv = _mm512_set1_epi32((int)t);
        const __m512i step = _mm512_set1_epi32(16);
        __m512i iv = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; i + 16 <= n; i += 16, iv = _mm512_add_epi32(iv, step)) {
            const __mmask16 b = _mm512_cmpge_epu32_mask(
                _mm512_and_si512(_mm512_loadu_si512(x + i), m), tv);
            _mm512_storeu_si512(idx + c, _mm512_maskz_compress_epi32(b, iv));
            c += __builtin_popcount(b);
        }
    #elif defined(__GNUC__) && defined(__AVX2__)
        /* keys < 2^31: the signed compare key > t - 1 is key >= t (also for t = 0) */
        const __m256i m = _mm256_set1_epi32(0x7fffffff), tv = _mm256_set1_epi32((int)t - 1);
        for (; i + 8 <= n; i += 8) {
            const __m256i k = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), m);
            unsigned b = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(
                _mm256_cmpgt_epi32(k, tv)));
            for (; b; b &= b - 1) idx[c++] = (uint32_t)(i + __builtin_ctz(b));
        }
    #endif
        CYFED_FILTER_TAIL(uint32_t, 0x7fffffffU)
    }
    static Py_ssize_t cyfed_filter_d(const double *x, Py_ssize_t n, uint64_t t, uint32_t *idx)
    {
        Py_ssize_t i = 0, c = 0;
    #if defined(__GNUC__) && defined(__AVX512F__)
        const __m512i m = _mm512_set1_epi64(0x7fffffffffffffffLL);
        const __m512i tv = _mm512_set1_epi64((long long)t);
        const __m256i step = _mm256_set1_epi32(8);
        __m256i iv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (; i + 8 <= n; i += 8, iv = _mm256_add_epi32(iv, step)) {
            const __mmask8 b = _mm512_cmpge_epu64_mask(
                _mm512_and_si512(_mm512_loadu_si512(x + i), m), tv);
            _mm256_storeu_si256((__m256i *)(idx + c), _mm256_maskz_compress_epi32(b, iv));
            c += __builtin_popcount(b);
        }
    #elif defined(__GNUC__) && defined(__AVX2__)
        const __m256i m = _mm256_set1_epi64x(0x7fffffffffffffffLL);
        const __m256i tv = _mm256_set1_epi64x((long long)t - 1);
        for (; i + 4 <= n; i += 4) {
            const __m256i k = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), m);
            unsigned b = (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(
                _mm256_cmpgt_epi64(k, tv)));
            for (; b; b &= b - 1) idx[c++] = (uint32_t)(i + __builtin_ctz(b));
        }
    #endif
        CYFED_FILTER_TAIL(uint64_t, 0x7fffffffffffffffULL)
    }
    #undef CYFED_FILTER_TAIL

    #if defined(_MSC_VER)
    #include <intrin.h>
    static inline int cyfed_ctz64(uint64_t v)
    {
        unsigned long i;
        _BitScanForward64(&i, v);
        return (int)i;
    }
    #else
    static inline int cyfed_ctz64(uint64_t v) { return __builtin_ctzll(v); }
    #endif
    """
    int CYFED_HAVE_F16
    double cyfed_sum_sq_f(const float*, Py_ssize_t) noexcept nogil
    double cyfed_sum_sq_d(const double*, Py_ssize_t) noexcept nogil
    double cyfed_sum_abs_f(const float*, Py_ssize_t) noexcept nogil
    double cyfed_sum_abs_d(const double*, Py_ssize_t) noexcept nogil
    void cyfed_qsgd_codes_f(const float*, Py_ssize_t, Py_ssize_t, double, uint32_t, uint64_t,
                            uint8_t*) noexcept nogil
    void cyfed_qsgd_codes_d(const double*, Py_ssize_t, Py_ssize_t, double, uint32_t, uint64_t,
                            uint8_t*) noexcept nogil
    void cyfed_qsgd_values_f(const uint8_t*, Py_ssize_t, float, float*) noexcept nogil
    void cyfed_qsgd_values_d(const uint8_t*, Py_ssize_t, double, double*) noexcept nogil
    uint64_t cyfed_pack8(uint64_t, int) noexcept nogil
    uint64_t cyfed_unpack8(uint64_t, int) noexcept nogil
    void cyfed_signs_f(const float*, Py_ssize_t, uint8_t*) noexcept nogil
    void cyfed_signs_d(const double*, Py_ssize_t, uint8_t*) noexcept nogil
    uint32_t cyfed_rand32(uint64_t seed, uint32_t i) noexcept nogil
    int cyfed_to_f16_f(const float*, Py_ssize_t, uint16_t*) noexcept nogil
    int cyfed_to_f16_d(const double*, Py_ssize_t, uint16_t*) noexcept nogil
    void cyfed_from_f16_f(const uint16_t*, Py_ssize_t, float*) noexcept nogil
    void cyfed_from_f16_d(const uint16_t*, Py_ssize_t, double*) noexcept nogil
    Py_ssize_t cyfed_filter_f(const float*, Py_ssize_t, uint32_t, uint32_t*) noexcept nogil
    Py_ssize_t cyfed_filter_d(const double*, Py_ssize_t, uint64_t, uint32_t*) noexcept nogil
    int count_trailing_zeros "cyfed_ctz64"(uint64_t) noexcept nogil

#: Whether fp16_encode/fp16_decode are compiled (F16C: the x86-64-v3/v4 builds).
HAVE_FP16 = bool(CYFED_HAVE_F16)

cdef enum:
    DIGIT = 11                  # bits of one radix-select digit
    SAMPLE_CHUNKS = 64          # top-k threshold sample: chunks of ...
    SAMPLE_CHUNK = 64           # ... contiguous coordinates
    SAMPLE_MIN_D = 65536        # below this, select among all coordinates
    CHUNK = 4096                # QSGD: coordinates per pass through a byte buffer (the
                                # loops' range step repeats it: range needs a literal)


cdef inline uint64_t magnitude_key(const floating *x, Py_ssize_t i) noexcept nogil:
    """The bits of |x_i|: ordered like the magnitudes (NaN/Inf above every finite)."""
    cdef uint32_t u32
    cdef uint64_t u64
    if floating is float:
        memcpy(&u32, &x[i], 4)
        return u32 & 0x7fffffffU
    else:
        memcpy(&u64, &x[i], 8)
        return u64 & 0x7fffffffffffffffULL


# -- FP16, BF16 --------------------------------------------------------------------------

def fp16_encode(const floating[::1] x, uint16_t[::1] out):
    """out = x rounded to IEEE half (via float32 for float64); 1 if x is all finite."""
    cdef int finite
    with nogil:
        if floating is float:
            finite = cyfed_to_f16_f(&x[0], x.shape[0], &out[0])
        else:
            finite = cyfed_to_f16_d(&x[0], x.shape[0], &out[0])
    return finite


def fp16_decode(const uint16_t[::1] h, floating[::1] out):
    with nogil:
        if floating is float:
            cyfed_from_f16_f(&h[0], h.shape[0], &out[0])
        else:
            cyfed_from_f16_d(&h[0], h.shape[0], &out[0])


def bf16_encode(const floating[::1] x, uint16_t[::1] out):
    """out = the top 16 bits of float32(x), rounded to nearest, ties to even;
    1 if x is all finite."""
    cdef Py_ssize_t i
    cdef float v
    cdef uint32_t u, bad = 0
    with nogil:
        for i in range(x.shape[0]):
            v = <float>x[i]
            memcpy(&u, &v, 4)
            bad |= (u & 0x7fffffffU) >= 0x7f800000U
            out[i] = <uint16_t>((u + 0x7fffU + ((u >> 16) & 1)) >> 16)
    return bad == 0


def bf16_decode(const uint16_t[::1] h, floating[::1] out):
    cdef Py_ssize_t i
    cdef uint32_t u
    cdef float v
    with nogil:
        for i in range(h.shape[0]):
            u = (<uint32_t>h[i]) << 16
            memcpy(&v, &u, 4)
            out[i] = v


# -- QSGD --------------------------------------------------------------------------------

cdef inline double sum_sq(const floating *x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return cyfed_sum_sq_f(x, n)
    else:
        return cyfed_sum_sq_d(x, n)


def qsgd_encode(const floating[::1] x, int levels, int width, uint64_t seed, uint8_t[::1] out):
    """Stochastic quantisation of |x_i| / ||x||_2 to l / levels, the sign kept.

    code_i = 2 level_i + [x_i < 0] in `width` bits, 8 codes per `width` bytes
    (little-endian; the last group zero-padded), CHUNK coordinates at a time
    through a byte buffer.  Returns ||x||_2 in float64 (NaN/Inf if x is not
    finite: then nothing is written)."""
    cdef Py_ssize_t d = x.shape[0], c0, n, g, g0
    cdef double norm, scale
    cdef uint8_t codes[CHUNK]
    cdef uint64_t acc
    with nogil:
        norm = sqrt(sum_sq(&x[0], d))
    if not norm <= DBL_MAX:
        return norm
    scale = levels / norm if norm > 0 else 0.0
    with nogil:
        for c0 in range(0, d, 4096):
            n = min(CHUNK, d - c0)
            if floating is float:
                cyfed_qsgd_codes_f(&x[c0], n, c0, scale, levels, seed, codes)
            else:
                cyfed_qsgd_codes_d(&x[c0], n, c0, scale, levels, seed, codes)
            memset(&codes[n], 0, (8 - n % 8) % 8)
            for g in range((n + 7) // 8):
                memcpy(&acc, &codes[8 * g], 8)
                acc = cyfed_pack8(acc, width)
                g0 = (c0 // 8 + g) * width
                if g0 + 8 <= out.shape[0]:
                    memcpy(&out[g0], &acc, 8)     # the next group overwrites the spill
                else:
                    memcpy(&out[g0], &acc, out.shape[0] - g0)
    return norm


def qsgd_decode(const uint8_t[::1] body, int levels, int width, double norm,
                floating[::1] out):
    """out_i = +-level_i * norm / levels from the codes qsgd_encode wrote."""
    cdef Py_ssize_t d = out.shape[0], c0, n, g, g0
    cdef floating unit = <floating>(norm / levels)
    cdef uint8_t codes[CHUNK]
    cdef uint64_t acc
    with nogil:
        for c0 in range(0, d, 4096):
            n = min(CHUNK, d - c0)
            for g in range((n + 7) // 8):
                g0 = (c0 // 8 + g) * width
                acc = 0
                memcpy(&acc, &body[g0], min(8, body.shape[0] - g0))
                acc = cyfed_unpack8(acc, width)     # reads the low 8 width bits only
                memcpy(&codes[8 * g], &acc, 8)
            if floating is float:
                cyfed_qsgd_values_f(codes, n, unit, &out[c0])
            else:
                cyfed_qsgd_values_d(codes, n, unit, &out[c0])


# -- top-k -------------------------------------------------------------------------------

cdef uint64_t select_key(uint64_t *w, Py_ssize_t n, Py_ssize_t need, int bits,
                         Py_ssize_t *ties) noexcept nogil:
    """The need-th largest (1 <= need <= n) of the n `bits`-bit keys in w, by radix
    select on DIGIT-bit digits from the top (w is compacted in place); *ties = how
    many of the keys equal to it rank within the top `need`."""
    cdef uint32_t hist[1 << DIGIT]
    cdef int shift = max(bits - DIGIT, 0), bucket
    cdef Py_ssize_t i, kept, above
    while True:
        for bucket in range(1 << DIGIT):
            hist[bucket] = 0
        for i in range(n):
            hist[(w[i] >> shift) & ((1 << DIGIT) - 1)] += 1
        bucket = (1 << DIGIT) - 1
        above = 0
        while above + hist[bucket] < need:
            above += hist[bucket]
            bucket -= 1
        need -= above
        kept = 0
        for i in range(n):
            if ((w[i] >> shift) & ((1 << DIGIT) - 1)) == <uint64_t>bucket:
                w[kept] = w[i]
                kept += 1
        n = kept
        if shift == 0:
            ties[0] = need
            return w[0]
        shift = max(shift - DIGIT, 0)


cdef uint64_t sample_threshold(const floating *x, Py_ssize_t d, Py_ssize_t k,
                               uint64_t *w) noexcept nogil:
    """A magnitude key that about k (1 + a few / sqrt(k)) of the d keys reach: from
    SAMPLE_CHUNKS evenly spaced chunks of SAMPLE_CHUNK coordinates (contiguous, so
    a row-major matrix is sampled across its columns), the key ranked
    p m + 4 sqrt(p m) + 4 from the top of the m sampled, p = k / d.  0 (every
    key) for small d or large p."""
    cdef Py_ssize_t m = SAMPLE_CHUNKS * SAMPLE_CHUNK, c, j, start, ties
    cdef double pm = m * (<double>k / d)
    cdef Py_ssize_t rank = <Py_ssize_t>(pm + 4 * sqrt(pm) + 5)
    if d < SAMPLE_MIN_D or rank > m:
        return 0
    for c in range(SAMPLE_CHUNKS):
        start = c * (d - SAMPLE_CHUNK) // (SAMPLE_CHUNKS - 1)
        for j in range(SAMPLE_CHUNK):
            w[c * SAMPLE_CHUNK + j] = magnitude_key(x, start + j)
    return select_key(w, m, rank, 8 * sizeof(floating) - 1, &ties)


def topk(const floating[::1] x, uint32_t[::1] idx, floating[::1] val):
    """The k = len(idx) largest |x_i|: idx ascending, val[j] = x[idx[j]].  Among equal
    magnitudes at the threshold the lowest indices win.  Returns 0 if x is not
    finite (then idx/val are garbage).

    Candidates: the coordinates at or above a sampled threshold (one vector
    compare per 64 bytes of x), else every coordinate; then the exact k-th key T
    by radix select among them, and one ordered pass over the candidates."""
    cdef Py_ssize_t d = x.shape[0]
    cdef uint32_t[::1] cand = np.empty(d, dtype=np.uint32)
    cdef uint64_t[::1] work = np.empty(max(d, SAMPLE_CHUNKS * SAMPLE_CHUNK), dtype=np.uint64)
    cdef int finite
    with nogil:
        finite = topk_select(&x[0], d, &idx[0], &val[0], idx.shape[0], &cand[0], &work[0])
    return finite


cdef int topk_select(const floating *x, Py_ssize_t d, uint32_t *idx, floating *val,
                     Py_ssize_t k, uint32_t *cand, uint64_t *work) noexcept nogil:
    cdef Py_ssize_t n_cand, i, j, ties
    cdef uint64_t t, T, key, bad = (0xffULL << 23) if floating is float else (0x7ffULL << 52)
    t = sample_threshold(x, d, k, work)
    while True:
        if floating is float:
            n_cand = cyfed_filter_f(x, d, <uint32_t>t, cand)
        else:
            n_cand = cyfed_filter_d(x, d, t, cand)
        if n_cand >= k:
            break
        t = 0                           # the sample misled: take every coordinate
    for i in range(n_cand):
        work[i] = magnitude_key(x, cand[i])
        if work[i] >= bad:
            return 0
    T = select_key(work, n_cand, k, 8 * sizeof(floating) - 1, &ties)
    j = 0
    for i in range(n_cand):
        key = magnitude_key(x, cand[i])
        if key > T or (key == T and ties > 0):
            ties -= key == T
            idx[j] = cand[i]
            val[j] = x[cand[i]]
            j += 1
    return 1


def scatter(const uint32_t[::1] idx, const floating[::1] val, floating[::1] out):
    """out[idx[j]] = val[j]; returns 0 (writing nothing past out) if an index is out
    of range."""
    cdef Py_ssize_t j, d = out.shape[0]
    cdef bint in_range = True
    with nogil:
        for j in range(idx.shape[0]):
            if idx[j] >= d:
                in_range = False
                break
            out[idx[j]] = val[j]
    return in_range


# -- random-k ----------------------------------------------------------------------------

def randk_indices(Py_ssize_t d, uint64_t seed, uint32_t[::1] idx):
    """k = len(idx) distinct coordinates of [0, d), uniformly at random from the
    stream `seed`, in increasing order.  Uniform draws (Lemire's multiply-shift
    with rejection: exactly uniform) fill a bitmap until k distinct (d - k
    excluded ones when k > d / 2); the bitmap is then read in order."""
    cdef Py_ssize_t k = idx.shape[0], drawn = 0, target, w, j
    cdef bint complement = 2 * k > d
    cdef uint64_t[::1] bitmap = np.zeros((d + 63) // 64, dtype=np.uint64)
    cdef uint64_t m, word, reject = (<uint64_t>1 << 32) % <uint64_t>d
    cdef uint32_t i = 0, c
    target = d - k if complement else k
    with nogil:
        while drawn < target:
            m = <uint64_t>cyfed_rand32(seed, i) * <uint64_t>d
            i += 1
            if <uint32_t>m < reject:
                continue
            c = <uint32_t>(m >> 32)
            if not (bitmap[c >> 6] >> (c & 63)) & 1:
                bitmap[c >> 6] |= 1ULL << (c & 63)
                drawn += 1
        j = 0
        for w in range(bitmap.shape[0]):
            word = ~bitmap[w] if complement else bitmap[w]
            while word and j < k:
                idx[j] = <uint32_t>(64 * w + count_trailing_zeros(word))
                word &= word - 1
                j += 1


def gather(const floating[::1] x, const uint32_t[::1] idx, double scale, floating[::1] val):
    """val[j] = scale * x[idx[j]]; returns 1 if x is all finite."""
    cdef Py_ssize_t j
    cdef floating s = <floating>scale
    cdef bint finite
    with nogil:
        finite = all_finite(&x[0], x.shape[0])
        for j in range(idx.shape[0]):
            val[j] = s * x[idx[j]]
    return finite


# -- scaled sign -------------------------------------------------------------------------

def sign_encode(const floating[::1] x, uint8_t[::1] bits):
    """bits: bit j of byte g is [x_{8g+j} < 0]; returns ||x||_1 (NaN/Inf if x is not
    finite)."""
    cdef double l1
    with nogil:
        if floating is float:
            l1 = cyfed_sum_abs_f(&x[0], x.shape[0])
            cyfed_signs_f(&x[0], x.shape[0], &bits[0])
        else:
            l1 = cyfed_sum_abs_d(&x[0], x.shape[0])
            cyfed_signs_d(&x[0], x.shape[0], &bits[0])
    return l1


def sign_decode(const uint8_t[::1] bits, double scale, floating[::1] out):
    """out_i = -scale if bit i is set, else +scale."""
    cdef Py_ssize_t i
    cdef floating s = <floating>scale
    with nogil:
        for i in range(out.shape[0]):
            out[i] = s * (1 - 2 * <floating>((bits[i >> 3] >> (i & 7)) & 1))
