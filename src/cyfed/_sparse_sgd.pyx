"""Local training of federated clients whose rows are CSR: `cyfed._sgd.train_clients`
for X given as (data, indices, indptr), touching only the coefficients a batch holds.

The contract is `_sgd.train_clients`'s: client c runs E_c epochs, each a shuffle
seeded by (seed, round, client id, epoch) (the same splitmix64 stream and
Fisher-Yates, so a client's batches are those of the dense run), each step

    g = mean over the batch of dl/dw + l2 w + mu (w - w_global) + corr_c
    v = momentum v + g;   w = w - lr v

with the intercept unpenalised.  The batch gradient of a coefficient row j
(its k class entries) is zero unless a batch row holds column j, so a step
updates only the rows the batch touches; every other coordinate follows the
affine recurrence of the step with a zero gradient.  Writing lambda = l2 + mu,
g0 = corr_j - mu w_global_j and x = (w_j, v_j):

    x <- M x + g0 e,   M = [[1 - lr lambda, -lr momentum], [lambda, momentum]],
                       e = (-lr, 1),

so s untouched steps give the closed form

    x_s = M^s x_0 + g0 R_s,   R_s = sum_{i<s} M^i e,

applied lazily when row j is next touched and once at the end of the client's
training.  Without momentum v stays 0 and this is the scalar recurrence
w <- a w + b, a = 1 - lr lambda, b = -lr g0:

    w_s = a^s w_0 + b (1 - a^s) / (1 - a)     (w_0 + s b when a = 1).

M^s and R_s are tabulated once per call for s = 0..(the longest client's steps),
in float64 (M^{s+1} = M M^s, R_{s+1} = M R_s + e), so a catch-up costs a few
multiply-adds and the momentum case needs no per-step dense pass.  The result
equals the dense kernel's to rounding (each closed form differs from s
sequential steps by O(s) ulps).  Plain SGD (no l2, mu, momentum, correction)
skips the bookkeeping: untouched coordinates do not move.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memset

from cyfed._vector_math cimport (KIND_LOGISTIC, KIND_SOFTMAX, CYFED_SOFTMAX_WORK,
                                 cyfed_thread_id, link, sgd_step)
from cyfed._shuffle cimport shuffle, stream_seed

import numpy as np

ctypedef fused index_t:
    int32_t
    int64_t

# -- the lazy recurrence ----------------------------------------------------------------

cdef enum:
    TABLE_WIDTH = 6         # M^s (row-major 2 x 2), then R_s (2)


def recurrence_table(Py_ssize_t steps, double lr, double l2, double mu, double momentum):
    """(steps + 1, 6) float64: row s holds M^s (m00, m01, m10, m11) and R_s (r0, r1),
    M = [[1 - lr (l2 + mu), -lr momentum], [l2 + mu, momentum]], R_s = sum_{i<s} M^i e,
    e = (-lr, 1) (the module docstring's closed form of s untouched steps)."""
    cdef double lam = l2 + mu
    cdef double m00 = 1 - lr * lam, m01 = -lr * momentum, m10 = lam, m11 = momentum
    table = np.empty((steps + 1, TABLE_WIDTH))
    cdef double[:, ::1] T = table
    cdef Py_ssize_t s
    T[0, 0], T[0, 1], T[0, 2], T[0, 3], T[0, 4], T[0, 5] = 1, 0, 0, 1, 0, 0
    for s in range(steps):
        T[s + 1, 0] = m00 * T[s, 0] + m01 * T[s, 2]
        T[s + 1, 1] = m00 * T[s, 1] + m01 * T[s, 3]
        T[s + 1, 2] = m10 * T[s, 0] + m11 * T[s, 2]
        T[s + 1, 3] = m10 * T[s, 1] + m11 * T[s, 3]
        T[s + 1, 4] = m00 * T[s, 4] + m01 * T[s, 5] - lr
        T[s + 1, 5] = m10 * T[s, 4] + m11 * T[s, 5] + 1
    return table


cdef struct Settings:
    int kind
    Py_ssize_t d, k, batch, max_steps
    int has_b, plain
    double lr, l2, mu, momentum
    uint64_t seed, rnd
    const double *table         # recurrence_table rows, TABLE_WIDTH each (unread when plain)


cdef inline void catch_up(const Settings *s, floating *w, floating *v, const floating *w0,
                          const floating *corr, Py_ssize_t j, Py_ssize_t gap) noexcept nogil:
    """Coefficient row j (k entries of w, v) moved through `gap` untouched steps:
    (w, v) <- M^gap (w, v) + g0 R_gap with g0 = corr - mu w0."""
    cdef const double *T = s.table + TABLE_WIDTH * gap
    cdef Py_ssize_t c, i
    cdef double g0, wi
    for c in range(s.k):
        i = j * s.k + c
        g0 = corr[i] - s.mu * w0[i]
        if s.momentum != 0:
            wi = w[i]
            w[i] = <floating>(T[0] * wi + T[1] * v[i] + T[4] * g0)
            v[i] = <floating>(T[2] * wi + T[3] * v[i] + T[5] * g0)
        else:
            w[i] = <floating>(T[0] * w[i] + T[4] * g0)


# -- one mini-batch step --------------------------------------------------------------

cdef Py_ssize_t batch_margins(const Settings *s, const floating *data, const index_t *indices,
                              const index_t *indptr, const floating *y, const Py_ssize_t *rows,
                              Py_ssize_t m, Py_ssize_t step, floating *w, floating *v,
                              const floating *w0, const floating *corr, floating *G,
                              floating *z, floating *yb, int64_t *last, int64_t *stamp,
                              int64_t mark, Py_ssize_t *touched) noexcept nogil:
    """Margins z (m, k) of the batch rows at w, their labels into yb; every
    coefficient row a batch row holds is listed once in `touched` (returned: how
    many), brought up to date (catch_up, unless plain) and its G row zeroed."""
    cdef Py_ssize_t u, p, j, c, nt = 0, k = s.k
    cdef const floating *b = w + s.d * k
    cdef floating x
    for u in range(m):
        yb[u] = y[rows[u]]
        for c in range(k):
            z[u * k + c] = b[c] if s.has_b else 0
        for p in range(indptr[rows[u]], indptr[rows[u] + 1]):
            j = indices[p]
            if stamp[j] != mark:
                stamp[j] = mark
                touched[nt] = j
                nt += 1
                if not s.plain and last[j] != step:
                    catch_up(s, w, v, w0, corr, j, step - last[j])
                for c in range(k):
                    G[j * k + c] = 0
            x = data[p]
            for c in range(k):
                z[u * k + c] += x * w[j * k + c]
    return nt


cdef void accumulate(Py_ssize_t k, const floating *data, const index_t *indices,
                     const index_t *indptr, const Py_ssize_t *rows, Py_ssize_t m,
                     const floating *r, floating *G, floating *Gb) noexcept nogil:
    """G[j] += sum_u r_u x_uj over the batch's nonzeros, Gb = sum_u r_u (intercept)."""
    cdef Py_ssize_t u, p, c
    cdef floating *g
    memset(Gb, 0, k * sizeof(floating))
    for u in range(m):
        for p in range(indptr[rows[u]], indptr[rows[u] + 1]):
            g = G + indices[p] * k
            for c in range(k):
                g[c] += r[u * k + c] * data[p]
        for c in range(k):
            Gb[c] += r[u * k + c]


cdef double sparse_step(const Settings *s, const floating *data, const index_t *indices,
                        const index_t *indptr, const floating *y, const Py_ssize_t *rows,
                        Py_ssize_t m, Py_ssize_t step, floating *w, floating *v,
                        const floating *w0, const floating *corr, floating *G, floating *z,
                        floating *yb, floating *wb, floating *work, int64_t *last,
                        int64_t *stamp, int64_t mark, Py_ssize_t *touched) noexcept nogil:
    """One SGD step on the batch `rows` (m of them): the batch loss sum (returned)."""
    cdef Py_ssize_t t, j, k = s.k, dk = s.d * s.k
    cdef Py_ssize_t nt = batch_margins(s, data, indices, indptr, y, rows, m, step, w, v, w0,
                                       corr, G, z, yb, last, stamp, mark, touched)
    cdef double loss = link(s.kind, z, yb, wb, m, k, k, work)
    cdef floating scale = <floating>(1.0 / m), lr = <floating>s.lr, l2 = <floating>s.l2
    cdef floating mu = <floating>s.mu, mom = <floating>s.momentum
    accumulate(k, data, indices, indptr, rows, m, z, G, G + dk)
    # the dense kernel's step (cyfed._sgd), on the touched rows only
    for t in range(nt):
        j = touched[t] * k
        sgd_step(w + j, v + j, G + j, w0 + j, corr + j if corr != NULL else NULL, k, scale,
                 l2, mu, mom, lr)
        last[touched[t]] = step + 1
    if s.has_b:                                            # the intercept: no L2
        sgd_step(w + dk, v + dk, G + dk, w0 + dk, corr + dk if corr != NULL else NULL, k,
                 scale, 0, mu, mom, lr)
    return loss


cdef void train_client(const Settings *s, const floating *data, const index_t *indices,
                       const index_t *indptr, const floating *y, Py_ssize_t row0,
                       Py_ssize_t n, uint64_t client, Py_ssize_t epochs, const floating *w0,
                       const floating *corr, double *out, double *loss_out,
                       Py_ssize_t *steps_out, floating *w, floating *v, floating *G,
                       floating *z, floating *yb, floating *wb, floating *work, int64_t *last,
                       int64_t *stamp, int64_t *mark, Py_ssize_t *touched,
                       Py_ssize_t *perm) noexcept nogil:
    """E epochs of mini-batch SGD for the client owning rows row0..row0+n-1, from the
    global model w0 ((d + 1) k entries: coef rows, then the intercept); the local
    model goes to out, unpadded.  corr is NULL only for plain SGD."""
    cdef Py_ssize_t P = (s.d + 1) * s.k, e, start, m, j, steps = 0, rows_seen = 0
    cdef double loss = 0.0
    for j in range(P):
        w[j] = w0[j]
        v[j] = 0
    for j in range(s.batch):
        wb[j] = 1
    if not s.plain:
        memset(last, 0, s.d * sizeof(int64_t))
    for e in range(epochs):
        shuffle(perm, n, stream_seed(s.seed, s.rnd, client, e))
        for j in range(n):
            perm[j] += row0
        start = 0
        while start < n and (s.max_steps <= 0 or steps < s.max_steps):
            m = n - start if n - start < s.batch else s.batch
            mark[0] += 1
            loss += sparse_step(s, data, indices, indptr, y, perm + start, m, steps, w, v,
                                w0, corr, G, z, yb, wb, work, last, stamp, mark[0], touched)
            start += m
            steps += 1
            rows_seen += m
    if not s.plain:
        for j in range(s.d):
            if last[j] != steps:
                catch_up(s, w, v, w0, corr, j, steps - last[j])
    for j in range(P):
        out[j] = w[j]
    loss_out[0] = loss / rows_seen if rows_seen > 0 else 0.0
    steps_out[0] = steps


# -- validation (before any nogil code) ---------------------------------------------------

cdef Py_ssize_t bad_row(const index_t *indices, const index_t *indptr, Py_ssize_t nnz,
                        Py_ssize_t d, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """The first row of lo..hi-1 whose indptr range or column indices are invalid, else -1."""
    cdef Py_ssize_t r, p
    for r in range(lo, hi):
        if indptr[r] < 0 or indptr[r] > indptr[r + 1] or indptr[r + 1] > nnz:
            return r
        for p in range(indptr[r], indptr[r + 1]):
            if indices[p] < 0 or indices[p] >= d:
                return r
    return -1


cdef Py_ssize_t bad_label(int kind, const floating *y, Py_ssize_t k, Py_ssize_t lo,
                          Py_ssize_t hi) noexcept nogil:
    """The first row of lo..hi-1 whose label the link cannot take (logistic: not 0/1,
    softmax: not an integer in [0, k)), else -1."""
    cdef Py_ssize_t r
    for r in range(lo, hi):
        if kind == KIND_LOGISTIC and y[r] != 0 and y[r] != 1:
            return r
        if kind == KIND_SOFTMAX and not (y[r] >= 0 and y[r] < k
                                         and y[r] == <Py_ssize_t>y[r]):
            return r
    return -1


def _check_shapes(int kind, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k, offsets, which,
                  client_ids, epochs, global_params, corrections, out, losses, steps,
                  Py_ssize_t batch_size, int n_threads):
    """ValueError naming the first argument of train_clients with a bad shape or value."""
    m, P = which.shape[0], d * k + k
    if kind not in (0, 1, 2):
        raise ValueError(f"kind must be 0 (squared), 1 (logistic) or 2 (softmax), got {kind}")
    if d < 1 or k < 1 or (kind == KIND_SOFTMAX) != (k > 1):
        raise ValueError(f"n_features must be >= 1 and n_classes 1 (>= 2 for softmax), got "
                         f"n_features={d}, n_classes={k}")
    if batch_size < 1 or n_threads < 1:
        raise ValueError(f"batch_size and n_threads must be >= 1, got {batch_size}, "
                         f"{n_threads}")
    offs = np.asarray(offsets)
    if not (offs.shape[0] >= 1 and 0 <= offs[0] and offs.max() <= n
            and np.all(np.diff(offs) >= 0)):
        raise ValueError(f"offsets must be non-decreasing in [0, {n}] (the rows of y)")
    if m and (np.min(which) < 0 or np.max(which) >= offs.shape[0] - 1):
        raise ValueError(f"which must index clients 0..{offs.shape[0] - 2} of offsets")
    for name, arr in (("client_ids", client_ids), ("epochs", epochs)):
        if arr.shape[0] != m:
            raise ValueError(f"{name} must have shape ({m},), got ({arr.shape[0]},)")
    if m and np.min(epochs) < 0:
        raise ValueError("epochs must be >= 0")
    if global_params.shape[0] != P:
        raise ValueError(f"global_params must have shape ({P},), got "
                         f"({global_params.shape[0]},)")
    if corrections.shape[0] != 0 and (corrections.shape[0], corrections.shape[1]) != (m, P):
        raise ValueError(f"corrections must have shape ({m}, {P}) or (0, 0), got "
                         f"({corrections.shape[0]}, {corrections.shape[1]})")
    if out.shape[0] < m or out.shape[1] != P or losses.shape[0] < m or steps.shape[0] < m:
        raise ValueError(f"out must have shape (>= {m}, {P}) and losses, steps >= {m} entries")


def _check_rows(int kind, const floating[::1] data, const index_t[::1] indices,
                const index_t[::1] indptr, const floating[::1] y, Py_ssize_t d, Py_ssize_t k,
                const Py_ssize_t[::1] offsets, const Py_ssize_t[::1] which):
    """ValueError naming the first row of a trained client with bad CSR structure or label."""
    cdef Py_ssize_t n = y.shape[0], nnz = data.shape[0], i, lo, hi, bad
    if indices.shape[0] != nnz or indptr.shape[0] != n + 1:
        raise ValueError(f"data and indices must have equal lengths and indptr n + 1 = {n + 1} "
                         f"entries, got {nnz}, {indices.shape[0]}, {indptr.shape[0]}")
    for i in range(which.shape[0]):
        lo, hi = offsets[which[i]], offsets[which[i] + 1]
        bad = bad_row(&indices[0] if nnz else NULL, &indptr[0], nnz, d, lo, hi)
        if bad >= 0:
            raise ValueError(f"row {bad} of the CSR matrix has indptr [{indptr[bad]}, "
                             f"{indptr[bad + 1]}) outside [0, {nnz}] or a column index "
                             f"outside [0, {d})")
        bad = bad_label(kind, &y[0], k, lo, hi) if hi > lo else -1
        if bad >= 0:
            raise ValueError(f"y[{bad}] = {y[bad]} is not a label of this loss (0/1 for "
                             f"logistic, an integer in [0, {k}) for softmax)")


def _client_steps(const Py_ssize_t[::1] offsets, const Py_ssize_t[::1] which,
                  const Py_ssize_t[::1] epochs, Py_ssize_t batch, Py_ssize_t max_steps):
    """(the most local steps of a trained client, its most rows)."""
    cdef Py_ssize_t i, n, total, most = 0, rows = 0
    for i in range(which.shape[0]):
        n = offsets[which[i] + 1] - offsets[which[i]]
        total = epochs[i] * ((n + batch - 1) // batch)
        most = max(most, min(total, max_steps) if max_steps > 0 else total)
        rows = max(rows, n)
    return most, rows


# -- the entry point ----------------------------------------------------------------------

def train_clients(int kind, const floating[::1] data, const index_t[::1] indices,
                  const index_t[::1] indptr, Py_ssize_t n_features, const floating[::1] y,
                  const Py_ssize_t[::1] offsets, const Py_ssize_t[::1] which,
                  const long long[::1] client_ids, const Py_ssize_t[::1] epochs,
                  const floating[::1] global_params, const floating[:, ::1] corrections,
                  double[:, ::1] out, double[::1] losses, Py_ssize_t[::1] steps,
                  Py_ssize_t n_classes, bint fit_intercept, Py_ssize_t batch_size,
                  Py_ssize_t max_steps, double lr, double l2, double mu, double momentum,
                  uint64_t seed, uint64_t rnd, int n_threads):
    """Train clients `which` of this process in one call: `cyfed._sgd.train_clients`
    with X (n, n_features) given as CSR arrays (data, indices, indptr; indices and
    indptr both int32 or both int64, duplicates summed as by `toarray`).

    X, y: all hosted clients' rows concatenated, client i owning rows
    offsets[i]:offsets[i+1]; client_ids[i]: its global id (seeds its shuffles);
    epochs[i]: local epochs of the i-th trained client (0: dropped);
    global_params: (d*k + k) flat (coef row-major, then intercept);
    corrections: (len(which), d*k + k) SCAFFOLD corrections or shape (0, 0);
    out (>= len(which), d*k + k) float64: the local models (first len(which) rows);
    losses: mean batch loss;  steps: local steps taken.

    Raises ValueError, before any training, for inconsistent shapes, an invalid CSR
    row (indptr or a column index out of range) or a label the loss cannot take in
    a trained client's rows.  Scratch: per thread 3 (d + 1) k floats and 3 d + (the
    most rows of a client) integers; shared: 48 bytes per local step of the longest
    client (the recurrence table; none for plain SGD).
    """
    cdef Py_ssize_t d = n_features, k = n_classes, m_clients = which.shape[0]
    cdef Py_ssize_t n = y.shape[0], P = (d + 1) * k
    _check_shapes(kind, n, d, k, offsets, which, client_ids, epochs, global_params,
                  corrections, out, losses, steps, batch_size, n_threads)
    _check_rows(kind, data, indices, indptr, y, d, k, offsets, which)
    if m_clients == 0:
        return
    most_steps, max_rows = _client_steps(offsets, which, epochs, batch_size, max_steps)
    cdef Settings s
    s.kind, s.d, s.k, s.has_b = kind, d, k, fit_intercept
    s.batch, s.max_steps = batch_size, max_steps
    s.lr, s.l2, s.mu, s.momentum, s.seed, s.rnd = lr, l2, mu, momentum, seed, rnd
    s.plain = corrections.shape[0] == 0 and l2 == 0 and mu == 0 and momentum == 0
    dtype = np.float32 if floating is float else np.float64
    cdef double[:, ::1] table = recurrence_table(0 if s.plain else most_steps, lr, l2, mu,
                                                 momentum)
    s.table = &table[0, 0]
    cdef const floating[:, ::1] corr = corrections
    if corrections.shape[0] == 0 and not s.plain:
        corr = np.zeros((1, P), dtype=dtype)      # one zero correction shared by all clients
    cdef Py_ssize_t corr_stride = P if corrections.shape[0] > 0 else 0
    cdef int nt = max(1, min(n_threads, m_clients))
    cdef Py_ssize_t B = batch_size, fl = 3 * P + B * (k + 2) + CYFED_SOFTMAX_WORK(k, B)
    cdef floating[:, ::1] buf = np.zeros((nt, fl), dtype=dtype)
    cdef int64_t[:, ::1] ints = np.zeros((nt, 2 * d + 1), dtype=np.int64)
    ints[:, d:2 * d] = -1                                 # stamps: no step has run
    cdef Py_ssize_t[:, ::1] idx = np.empty((nt, d + max(max_rows, 1)), dtype=np.intp)
    cdef const floating *cp = &corr[0, 0] if corr.shape[0] > 0 else NULL
    cdef const floating *dp = &data[0] if data.shape[0] > 0 else NULL
    cdef const index_t *ip = &indices[0] if indices.shape[0] > 0 else NULL
    cdef const floating *yp = &y[0] if n > 0 else NULL
    cdef floating *f
    cdef int64_t *g
    cdef Py_ssize_t i, t
    for i in prange(m_clients, nogil=True, num_threads=nt, schedule="dynamic"):
        t = cyfed_thread_id()
        f = &buf[t, 0]
        g = &ints[t, 0]
        train_client(&s, dp, ip, &indptr[0], yp, offsets[which[i]],
                     offsets[which[i] + 1] - offsets[which[i]], <uint64_t>client_ids[i],
                     epochs[i], &global_params[0], cp + i * corr_stride if cp != NULL else NULL,
                     &out[i, 0], &losses[i], &steps[i],
                     f, f + P, f + 2 * P, f + 3 * P, f + 3 * P + B * k,
                     f + 3 * P + B * (k + 1), f + 3 * P + B * (k + 2),
                     g, g + d, g + 2 * d, &idx[t, 0], &idx[t, d])
