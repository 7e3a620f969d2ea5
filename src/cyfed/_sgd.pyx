"""Local training of federated clients: whole mini-batch SGD runs in one compiled call.

`train_clients` trains every sampled client of a round that this process hosts:
for client c, E_c epochs over its rows, each epoch a fresh shuffle from a
generator seeded by (seed, round, client id, epoch) (splitmix64, in C), each
step on a mini-batch of B rows:

    g = mean over the batch of dl/dw + l2 w + mu (w - w_global) + corr_c
    v = momentum v + g;   w = w - lr v

(FedProx's proximal term mu, SCAFFOLD's correction corr_c = c - c_c).  A
client's result depends only on (seed, round, id, its data, the global model),
never on the thread or rank that trained it.  Threads take clients dynamically.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset

from cyfed._vector_math cimport (KIND_SOFTMAX, axpy8, cyfed_thread_id, dot8, gemv4,
                                 gemv4_vec, ger4, ger4_vec, link, sgd_step, softmax_lanes,
                                 softmax_vectors, sum_rows)

import numpy as np

# -- seeded shuffles (splitmix64; Steele, Lea & Flood 2014) ---------------------------

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


cdef void shuffle(Py_ssize_t *perm, Py_ssize_t n, uint64_t state) noexcept nogil:
    """Fisher-Yates with a multiply-shift bounded draw (bias below n / 2^32)."""
    cdef Py_ssize_t i, j, tmp
    for i in range(n):
        perm[i] = i
    for i in range(n - 1, 0, -1):
        j = <Py_ssize_t>(((splitmix64(&state) >> 32) * <uint64_t>(i + 1)) >> 32)
        tmp = perm[i]
        perm[i] = perm[j]
        perm[j] = tmp


def shuffled(Py_ssize_t n, uint64_t seed, uint64_t rnd, uint64_t client, uint64_t epoch):
    """The permutation of range(n) that client `client` uses in (round, epoch) (for tests)."""
    out = np.empty(n, dtype=np.intp)
    cdef Py_ssize_t[::1] view = out
    if n > 0:
        shuffle(&view[0], n, stream_seed(seed, rnd, client, epoch))
    return out


# -- one mini-batch gradient ------------------------------------------------------------

cdef double batch_gradient(int kind, const floating *X, const floating *y, Py_ssize_t d,
                           Py_ssize_t k, Py_ssize_t kp, int nv, const Py_ssize_t *rows,
                           Py_ssize_t m, const floating *W, const floating *b, int has_b,
                           floating *G, floating *z, floating *yb, floating *wb,
                           const floating **xp, floating *work) noexcept nogil:
    """Sum over the m batch rows of the loss (returned) and of its gradient (into G,
    (d*kp + k) entries, overwritten).  W is (d, kp); padding rows have weight 0."""
    cdef Py_ssize_t i, c, group = 4 if kind == KIND_SOFTMAX else 8
    cdef Py_ssize_t mp = (m + group - 1) // group * group
    cdef double loss
    for i in range(mp):
        xp[i] = X + rows[i if i < m else 0] * d
        yb[i] = y[rows[i if i < m else 0]]
        wb[i] = 1 if i < m else 0
    for i in range(d * kp + k):
        G[i] = 0
    if kind == KIND_SOFTMAX:
        for i in range(mp):
            for c in range(kp):
                z[i * kp + c] = b[c] if (has_b and c < k) else 0
        for i in range(0, mp, 4):
            if nv > 0:
                gemv4_vec(xp + i, W, d, nv, z + i * kp, kp)
            else:
                gemv4(xp + i, W, d, k, z + i * k)
        loss = link(kind, z, yb, wb, mp, k, kp, work)
        for i in range(0, mp, 4):
            if nv > 0:
                ger4_vec(G, xp + i, z + i * kp, kp, d, nv)
            else:
                ger4(G, xp + i, z + i * k, d, k)
    else:
        for i in range(0, mp, 8):
            dot8(xp + i, W, d, z + i)
        if has_b:
            for i in range(mp):
                z[i] += b[0]
        loss = link(kind, z, yb, wb, mp, k, kp, work)
        for i in range(0, mp, 8):
            axpy8(G, z + i, xp + i, d)
    if has_b:
        sum_rows(G + d * kp, z, mp, k, kp)
    return loss


cdef struct Settings:
    int kind
    Py_ssize_t d, k, kp, batch, max_steps
    int nv, has_b
    double lr, l2, mu, momentum
    uint64_t seed, rnd


cdef void train_client(Settings s, const floating *X, const floating *y, Py_ssize_t n,
                       uint64_t client, Py_ssize_t epochs, const floating *W0,
                       const floating *b0, const floating *corr, double *out,
                       double *loss_out, Py_ssize_t *steps_out, floating *w, floating *v,
                       floating *G, floating *w0, floating *cp, floating *z, floating *yb,
                       floating *wb, const floating **xp, floating *work,
                       Py_ssize_t *perm) noexcept nogil:
    """E epochs of mini-batch SGD for one client, from the global (W0, b0); the local
    model is written unpadded to out ((d*k + k) entries).  w, v, G, w0 (the global
    model) and cp (the correction) use the padded layout (d*kp + k)."""
    cdef Py_ssize_t d = s.d, k = s.k, kp = s.kp, P = d * kp + k, dkp = d * kp
    cdef Py_ssize_t e, start, m, j, c, steps = 0, rows_seen = 0
    cdef double loss = 0.0
    cdef floating scale, lr = <floating>s.lr, l2 = <floating>s.l2, mu = <floating>s.mu
    cdef floating mom = <floating>s.momentum
    memset(w0, 0, P * sizeof(floating))
    memset(cp, 0, P * sizeof(floating))
    memset(v, 0, P * sizeof(floating))
    for j in range(d):                         # the global model, padded to kp columns
        memcpy(w0 + j * kp, W0 + j * k, k * sizeof(floating))
        if corr != NULL:
            memcpy(cp + j * kp, corr + j * k, k * sizeof(floating))
    if s.has_b:
        memcpy(w0 + dkp, b0, k * sizeof(floating))
    if corr != NULL:
        memcpy(cp + dkp, corr + d * k, k * sizeof(floating))
    memcpy(w, w0, P * sizeof(floating))
    for e in range(epochs):
        shuffle(perm, n, stream_seed(s.seed, s.rnd, client, e))
        start = 0
        while start < n and (s.max_steps <= 0 or steps < s.max_steps):
            m = n - start if n - start < s.batch else s.batch
            loss += batch_gradient(s.kind, X, y, d, k, kp, s.nv, perm + start, m, w,
                                   w + dkp, s.has_b, G, z, yb, wb, xp, work)
            scale = <floating>(1.0 / m)
            # g = mean gradient + l2 w (coef only) + mu (w - w_global) + correction
            sgd_step(w, v, G, w0, cp, dkp, scale, l2, mu, mom, lr)
            if s.has_b:                                # the intercept: no L2
                sgd_step(w + dkp, v + dkp, G + dkp, w0 + dkp, cp + dkp, k, scale, 0, mu,
                         mom, lr)
            start += m
            steps += 1
            rows_seen += m
    for j in range(d + 1):                     # unpad: coef rows, then the intercept
        for c in range(k):
            out[j * k + c] = w[j * kp + c]
    loss_out[0] = loss / rows_seen if rows_seen > 0 else 0.0
    steps_out[0] = steps


def train_clients(int kind, const floating[:, ::1] X, const floating[::1] y,
                  const Py_ssize_t[::1] offsets, const Py_ssize_t[::1] which,
                  const long long[::1] client_ids, const Py_ssize_t[::1] epochs,
                  const floating[::1] global_params, const floating[:, ::1] corrections,
                  double[:, ::1] out, double[::1] losses, Py_ssize_t[::1] steps,
                  Py_ssize_t n_classes, bint fit_intercept, Py_ssize_t batch_size,
                  Py_ssize_t max_steps, double lr, double l2, double mu, double momentum,
                  uint64_t seed, uint64_t rnd, int n_threads):
    """Train clients `which` (positions into offsets) of this process in one call.

    X, y: all hosted clients' rows concatenated, client i owning rows
    offsets[i]:offsets[i+1]; client_ids[i]: its global id (seeds its shuffles);
    epochs[i]: local epochs of the i-th trained client (0: dropped);
    global_params: (d*k + k) flat (coef row-major, then intercept);
    corrections: (len(which), d*k + k) SCAFFOLD corrections or shape (0, 0);
    out (>= len(which), d*k + k) float64: the local models (first len(which) rows);
    losses: mean batch loss;
    steps: local steps taken.
    """
    cdef Py_ssize_t d = X.shape[1], k = n_classes, m_clients = which.shape[0]

    cdef Settings s
    s.kind = kind
    s.d, s.k = d, k
    s.nv = softmax_vectors(k, &global_params[0]) if kind == KIND_SOFTMAX else 0
    s.kp = s.nv * softmax_lanes(&global_params[0]) if s.nv > 0 else k
    s.batch, s.max_steps, s.has_b = batch_size, max_steps, fit_intercept
    s.lr, s.l2, s.mu, s.momentum, s.seed, s.rnd = lr, l2, mu, momentum, seed, rnd
    cdef Py_ssize_t kp = s.kp, P = d * kp + k, B8 = batch_size + 8
    cdef Py_ssize_t max_rows = 0, i, t
    for i in range(m_clients):
        max_rows = max(max_rows, offsets[which[i] + 1] - offsets[which[i]])
    cdef int nt = max(1, min(n_threads, m_clients))
    if m_clients == 0:
        return
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] buf = np.empty((nt, 5 * P + B8 * (kp + 2) + (k + 4) * B8 + 8),
                                         dtype=dtype)
    cdef size_t[:, ::1] ptrs = np.zeros((nt, B8), dtype=np.uintp)
    cdef Py_ssize_t[:, ::1] perms = np.empty((nt, max(max_rows, 1)), dtype=np.intp)
    cdef const floating *corr_base = &corrections[0, 0] if corrections.shape[0] > 0 else NULL
    cdef const floating *Xp = &X[0, 0]
    cdef const floating *yp = &y[0]
    cdef const floating *gp = &global_params[0]
    cdef floating *scratch
    cdef Py_ssize_t row0
    for i in prange(m_clients, nogil=True, num_threads=nt, schedule="dynamic"):
        t = cyfed_thread_id()
        scratch = &buf[t, 0]
        row0 = offsets[which[i]]
        train_client(s, Xp + row0 * d, yp + row0, offsets[which[i] + 1] - row0,
                     <uint64_t>client_ids[i], epochs[i], gp, gp + d * k,
                     corr_base + i * (d * k + k) if corr_base != NULL else NULL,
                     &out[i, 0], &losses[i], &steps[i],
                     scratch, scratch + P, scratch + 2 * P, scratch + 3 * P, scratch + 4 * P,
                     scratch + 5 * P, scratch + 5 * P + B8 * kp,
                     scratch + 5 * P + B8 * (kp + 1), <const floating **>&ptrs[t, 0],
                     scratch + 5 * P + B8 * (kp + 2), &perms[t, 0])
