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

from cyfed._vector_math cimport (KIND_SOFTMAX, axpy8, cyfed_prefetch_l2, cyfed_thread_id,
                                 dot8, gemv4, gemv4_vec, ger4, ger4_vec, link,
                                 CYFED_SOFTMAX_WORK, sgd_step, softmax_lanes, softmax_vectors,
                                 sum_rows)
from cyfed._shuffle cimport shuffle, stream_seed

import numpy as np

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
    (d + 1) * kp entries, overwritten).  W is (d, kp) and b (kp,); lanes >= k are
    padding (0).  Rows are taken in groups (4 softmax, 8 otherwise); the last
    group is padded with weight-0 rows, except on the softmax micro-kernels,
    which take a short last group as it is."""
    cdef Py_ssize_t i, c, group = 4 if kind == KIND_SOFTMAX else 8
    cdef Py_ssize_t mp = (m + group - 1) // group * group
    cdef double loss
    for i in range(mp):
        xp[i] = X + rows[i if i < m else 0] * d
        yb[i] = y[rows[i if i < m else 0]]
        wb[i] = 1 if i < m else 0
    memset(G, 0, (d + 1) * kp * sizeof(floating))
    if kind == KIND_SOFTMAX:
        for i in range(mp):
            if has_b:
                memcpy(z + i * kp, b, kp * sizeof(floating))
            else:
                memset(z + i * kp, 0, kp * sizeof(floating))
        if nv > 0:                  # the last group takes only the rows it has
            for i in range(0, m, 4):
                gemv4_vec(xp + i, min(4, m - i), W, d, nv, z + i * kp, kp)
            loss = link(kind, z, yb, wb, m, k, kp, work)
            for i in range(0, m, 4):
                ger4_vec(G, xp + i, min(4, m - i), z + i * kp, kp, d, nv)
            mp = m                  # z holds exactly the m batch rows
        else:
            for i in range(0, mp, 4):
                gemv4(xp + i, W, d, k, z + i * k)
            loss = link(kind, z, yb, wb, mp, k, kp, work)
            for i in range(0, mp, 4):
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
    int nv, has_b, plain
    double lr, l2, mu, momentum
    uint64_t seed, rnd


cdef void train_client(Settings s, const floating *X, const floating *y, Py_ssize_t n,
                       uint64_t client, Py_ssize_t epochs, const floating *w0,
                       const floating *corr, double *out, double *loss_out,
                       Py_ssize_t *steps_out, floating *w, floating *v, floating *G,
                       floating *cp, floating *z, floating *yb, floating *wb,
                       const floating **xp, floating *work, Py_ssize_t *perm) noexcept nogil:
    """E epochs of mini-batch SGD for one client from the global model w0; the
    local model is written unpadded to out ((d*k + k) entries).  w0, w, v, G and
    cp (the correction; zero on entry, padding kept 0) use the padded layout of
    (d + 1) rows of kp (coef rows, then the intercept)."""
    cdef Py_ssize_t d = s.d, k = s.k, kp = s.kp, P = (d + 1) * kp, dkp = d * kp
    cdef Py_ssize_t e, start, m, j, c, steps = 0, rows_seen = 0
    cdef double loss = 0.0
    cdef floating scale, lr = <floating>s.lr, l2 = <floating>s.l2, mu = <floating>s.mu
    cdef floating mom = <floating>s.momentum
    cdef floating *corr_p = NULL if (corr == NULL and s.plain) else cp
    cyfed_prefetch_l2(X, min(n * d, 1 << 15) * sizeof(floating))
    memcpy(w, w0, P * sizeof(floating))
    # always: without momentum v holds the last step, and an overflowed one (inf) from
    # this thread's previous client would make 0 * v NaN
    memset(v, 0, P * sizeof(floating))
    if corr != NULL:
        for j in range(d + 1):
            memcpy(cp + j * kp, corr + j * k, k * sizeof(floating))
    for e in range(epochs):
        shuffle(perm, n, stream_seed(s.seed, s.rnd, client, e))
        start = 0
        while start < n and (s.max_steps <= 0 or steps < s.max_steps):
            m = n - start if n - start < s.batch else s.batch
            loss += batch_gradient(s.kind, X, y, d, k, kp, s.nv, perm + start, m, w,
                                   w + dkp, s.has_b, G, z, yb, wb, xp, work)
            scale = <floating>(1.0 / m)
            # g = mean gradient + l2 w (coef only) + mu (w - w_global) + correction
            sgd_step(w, v, G, w0, corr_p, dkp, scale, l2, mu, mom, lr)
            if s.has_b:                                # the intercept: no L2
                sgd_step(w + dkp, v + dkp, G + dkp, w0 + dkp,
                         corr_p + dkp if corr_p != NULL else NULL, kp, scale, 0, mu, mom, lr)
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
    s.plain = corrections.shape[0] == 0 and l2 == 0 and mu == 0 and momentum == 0
    cdef Py_ssize_t kp = s.kp, P = (d + 1) * kp, B8 = batch_size + 8
    cdef Py_ssize_t max_rows = 0, i, t, j
    for i in range(m_clients):
        max_rows = max(max_rows, offsets[which[i] + 1] - offsets[which[i]])
    cdef int nt = max(1, min(n_threads, m_clients))
    if m_clients == 0:
        return
    dtype = np.float32 if floating is float else np.float64
    # the global model in the padded layout, shared by every client
    cdef floating[::1] w0 = np.zeros(P, dtype=dtype)
    for j in range(d + 1):
        for t in range(k):
            w0[j * kp + t] = global_params[j * k + t]
    # per thread: w, v, G, cp (zeroed once), z, yb, wb, link work
    cdef floating[:, ::1] buf = np.zeros((nt, 4 * P + B8 * (kp + 2) + CYFED_SOFTMAX_WORK(k, B8)),
                                         dtype=dtype)
    cdef size_t[:, ::1] ptrs = np.zeros((nt, B8), dtype=np.uintp)
    cdef Py_ssize_t[:, ::1] perms = np.empty((nt, max(max_rows, 1)), dtype=np.intp)
    cdef const floating *corr_base = &corrections[0, 0] if corrections.shape[0] > 0 else NULL
    cdef const floating *Xp = &X[0, 0]
    cdef const floating *yp = &y[0]
    cdef floating *scratch
    cdef Py_ssize_t row0
    for i in prange(m_clients, nogil=True, num_threads=nt, schedule="dynamic"):
        t = cyfed_thread_id()
        scratch = &buf[t, 0]
        row0 = offsets[which[i]]
        train_client(s, Xp + row0 * d, yp + row0, offsets[which[i] + 1] - row0,
                     <uint64_t>client_ids[i], epochs[i], &w0[0],
                     corr_base + i * (d * k + k) if corr_base != NULL else NULL,
                     &out[i, 0], &losses[i], &steps[i],
                     scratch, scratch + P, scratch + 2 * P, scratch + 3 * P,
                     scratch + 4 * P, scratch + 4 * P + B8 * kp,
                     scratch + 4 * P + B8 * (kp + 1), <const floating **>&ptrs[t, 0],
                     scratch + 4 * P + B8 * (kp + 2), &perms[t, 0])
