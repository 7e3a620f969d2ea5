"""Compiled aggregation kernels (validated by cyfed.aggregate).

Sums run over the client rows in the order given, each row added to a float64
accumulator vectorised across parameters: the same bits on any machine, with
any number of threads elsewhere in the process.
"""
from cython cimport floating

from cyfed._vector_math cimport all_finite


def weighted_sum(const floating[:, ::1] updates, const double[::1] weights, double[::1] out):
    """out = sum_i weights[i] * updates[i, :], rows added in order (out is overwritten)."""
    cdef Py_ssize_t n_rows = updates.shape[0], n_cols = updates.shape[1], i, j
    cdef double w
    with nogil:
        for j in range(n_cols):
            out[j] = 0
        for i in range(n_rows):
            w = weights[i]
            for j in range(n_cols):
                out[j] += w * updates[i, j]


def finite_rows(const floating[:, ::1] updates, unsigned char[::1] out):
    """out[i] = 1 if every entry of row i is finite, else 0 (one pass, no temporaries)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(updates.shape[0]):
            out[i] = all_finite(&updates[i, 0], updates.shape[1]) if updates.shape[1] else 1
