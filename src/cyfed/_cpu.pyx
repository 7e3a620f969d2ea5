"""CPU feature detection for choosing a SIMD build (compiled for the baseline ISA)."""

cdef extern from *:
    """
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    static int cyfed_x86_64_level(void)
    {
        __builtin_cpu_init();
    #if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
        /* exactly the ISA levels the variants are compiled with (-march=x86-64-vN) */
        int v3 = __builtin_cpu_supports("x86-64-v3");
        int v4 = __builtin_cpu_supports("x86-64-v4");
    #else
        int v3 = __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("popcnt")
              && __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2")
              && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi")
              && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c")
              && __builtin_cpu_supports("movbe");
        int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
              && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq")
              && __builtin_cpu_supports("avx512vl");
    #endif
        return v4 ? 4 : (v3 ? 3 : 1);
    }
    #else
    static int cyfed_x86_64_level(void) { return 0; }
    #endif
    """
    int cyfed_x86_64_level()


def x86_64_level():
    """Highest x86-64 micro-architecture level this CPU and OS support.

    1 = baseline, 3 = x86-64-v3 (AVX2, FMA, BMI1/2), 4 = x86-64-v4 (AVX-512
    F/BW/CD/DQ/VL); 0 when not on x86-64 (or the compiler could not tell).
    libgcc's detection also checks that the OS saves the AVX/AVX-512 state.
    """
    return cyfed_x86_64_level()
