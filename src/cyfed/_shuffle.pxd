"""Seeded shuffles of the local-SGD kernels (_sgd, _sparse_sgd): splitmix64 (Steele,
Lea & Flood 2014) streams keyed by (seed, round, client, epoch), so a client's batches
are the same rows whichever kernel, thread or rank trains it."""
from libc.stdint cimport uint64_t


cdef inline uint64_t splitmix64(uint64_t *state) noexcept nogil:
    cdef uint64_t z
    state[0] += <uint64_t>0x9E3779B97F4A7C15
    z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline uint64_t stream_seed(uint64_t seed, uint64_t rnd, uint64_t client,
                                 uint64_t epoch) noexcept nogil:
    """A generator state that depends on (seed, round, client, epoch) only."""
    cdef uint64_t s = seed
    cdef uint64_t h = splitmix64(&s)
    s = h ^ rnd
    h = splitmix64(&s)
    s = h ^ client
    h = splitmix64(&s)
    s = h ^ epoch
    return splitmix64(&s)


cdef inline void shuffle(Py_ssize_t *perm, Py_ssize_t n, uint64_t state) noexcept nogil:
    """Fisher-Yates with a multiply-shift bounded draw (bias below n / 2^32)."""
    cdef Py_ssize_t i, j, tmp
    for i in range(n):
        perm[i] = i
    for i in range(n - 1, 0, -1):
        j = <Py_ssize_t>(((splitmix64(&state) >> 32) * <uint64_t>(i + 1)) >> 32)
        tmp = perm[i]
        perm[i] = perm[j]
        perm[j] = tmp
