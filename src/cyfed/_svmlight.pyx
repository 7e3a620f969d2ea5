"""LIBSVM / svmlight text to CSR arrays: a multi-threaded two-pass parser.

The caller (`cyfed.io`) hands over the bytes of a file (a read-only memory map,
or the decompressed text of a compressed file) and a line-aligned range
[begin, end) of them (`line_range`).  The range is cut at line starts into
chunks; OpenMP threads count each chunk's rows and stored values (pass 1,
tokenising only), the arrays are allocated at their exact final sizes, and the
threads parse each chunk into its own slice of them (pass 2).  So the only
memory beyond the returned arrays is a small per-chunk table.

A line is ``label [qid:int] index:value ...``; ``#`` starts a comment running
to the end of the line; blank lines are skipped; a carriage return is blank
space (CRLF files).  Numbers are decimal (``-1.5e-3``, ``+1``, ``.5``); inf,
nan, hexadecimal and anything beyond the output dtype's range are refused.
Indices are written as they are in the file (the caller shifts one-based ones).

Errors are a status and a byte position per chunk, turned into a `ParseError`
after the parallel loop: the first failing chunk's first error, i.e. the first
error in the file whatever the number of threads.
"""
from cython.parallel cimport prange
from libc.math cimport isfinite
from libc.stdint cimport INT32_MAX, INT64_MAX, int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #include <stdlib.h>
    #include <string.h>
    #ifdef _OPENMP
    #include <omp.h>
    static int svm_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int svm_max_threads(void) { return 1; }
    #endif

    /* Longest number text handed to strtod (longer ones are refused). */
    #define SVM_MAX_NUMBER 255

    static const double svm_pow10[23] = {
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
        1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

    /* The decimal number [+-] digits [. digits] [(e|E) [+-] digits] spanning exactly
       [s, e) -> *out (0), or -1 when the text is anything else (inf, nan, hex, ...).
       At most 19 significant digits, a mantissa <= 2^53 and a power of ten within
       1e22 give one exact multiplication or division of two exact doubles: a
       correctly rounded result (Clinger's fast path).  Other numbers go to strtod,
       correctly rounded too, on a NUL-terminated copy (never reading past e). */
    static int svm_parse_double(const char *s, const char *e, double *out)
    {
        const char *p = s;
        int neg = 0, digits = 0, sig = 0, frac = 0, eneg = 0, edigits = 0;
        long exp10 = 0, e10;
        unsigned long long mant = 0;
        char copy[SVM_MAX_NUMBER + 1];
        if (p < e && (*p == '+' || *p == '-')) neg = *p++ == '-';
        for (; p < e && *p >= '0' && *p <= '9'; p++, digits++) {
            sig += mant != 0 || *p != '0';
            if (sig <= 19) mant = mant * 10 + (unsigned)(*p - '0');
        }
        if (p < e && *p == '.') {
            for (p++; p < e && *p >= '0' && *p <= '9'; p++, digits++) {
                sig += mant != 0 || *p != '0';
                if (sig <= 19) { mant = mant * 10 + (unsigned)(*p - '0'); frac++; }
            }
        }
        if (digits == 0) return -1;
        if (p < e && (*p == 'e' || *p == 'E')) {
            p++;
            if (p < e && (*p == '+' || *p == '-')) eneg = *p++ == '-';
            for (; p < e && *p >= '0' && *p <= '9'; p++, edigits++)
                if (exp10 < 100000) exp10 = exp10 * 10 + (*p - '0');
            if (edigits == 0) return -1;
        }
        if (p != e) return -1;
        e10 = (eneg ? -exp10 : exp10) - frac;
        if (sig <= 19 && mant <= (1ULL << 53) && e10 >= -22 && e10 <= 22) {
            double v = (double)mant;
            v = e10 < 0 ? v / svm_pow10[-e10] : v * svm_pow10[e10];
            *out = neg ? -v : v;
            return 0;
        }
        if (e - s > SVM_MAX_NUMBER) return -1;
        memcpy(copy, s, (size_t)(e - s));
        copy[e - s] = '\\0';
        *out = strtod(copy, NULL);
        return 0;
    }

    /* The integer [+|-] digits (a sign only when `sign`) spanning exactly [s, e) -> *out
       (0), or -1 (not such an integer, or more than 18 digits). */
    static int svm_parse_int(const char *s, const char *e, int sign, long long *out)
    {
        int neg = 0;
        long long v = 0;
        if (s < e && (*s == '+' || (sign && *s == '-'))) neg = *s++ == '-';
        if (s == e || e - s > 18) return -1;
        for (; s < e; s++) {
            if (*s < '0' || *s > '9') return -1;
            v = v * 10 + (*s - '0');
        }
        *out = neg ? -v : v;
        return 0;
    }
    """
    int svm_max_threads() nogil
    int svm_parse_double(const char *s, const char *e, double *out) nogil
    int svm_parse_int(const char *s, const char *e, int sign, long long *out) nogil

ctypedef fused index_t:
    int32_t
    int64_t

ctypedef fused value_t:
    float
    double

# What a pass over a chunk does.
cdef enum Mode:
    COUNT = 0       # count rows and index:value tokens (no number parsed)
    INDICES = 1     # also parse and check the indices (their range, increasing)
    FILL = 2        # parse everything into the arrays

cdef enum Status:
    OK = 0
    BAD_LABEL = 1
    BAD_QID = 2
    NO_COLON = 3
    BAD_INDEX = 4
    NOT_INCREASING = 5
    BAD_VALUE = 6
    OUT_OF_RANGE = 7
    TOO_WIDE = 8        # an index needs int64 indices (the caller retries)
    MISCOUNTED = 9      # pass 2 disagrees with pass 1: a bug, never bad input

#: Status -> the name ParseError.code carries.
STATUS_NAMES = {BAD_LABEL: "label", BAD_QID: "qid", NO_COLON: "colon", BAD_INDEX: "index",
                NOT_INCREASING: "order", BAD_VALUE: "value", OUT_OF_RANGE: "range"}

# Bytes per chunk aimed at (smaller ranges get fewer chunks), and chunks per thread.
cdef enum:
    CHUNK_BYTES = 1 << 18
    CHUNKS_PER_THREAD = 4

cdef struct Chunk:
    Py_ssize_t begin        # [begin, end): whole lines
    Py_ssize_t end
    int64_t rows            # pass 1: counted; pass 2: checked
    int64_t nnz
    int64_t row0            # where the chunk's rows and values go
    int64_t nnz0
    int64_t min_index       # INT64_MAX / -1 when the chunk has no index
    int64_t max_index
    int status
    Py_ssize_t where        # byte position of the error
    int64_t detail          # NOT_INCREASING: the previous index; OUT_OF_RANGE: the index


class ParseError(ValueError):
    """A syntax error at byte `pos` of the text: `code` names what is wrong ("label",
    "qid", "colon", "index", "order", "value", "range"); `detail` is the previous
    index ("order") or the index ("range")."""

    def __init__(self, code, pos, detail):
        super().__init__(f"{code} error at byte {pos}")
        self.code, self.pos, self.detail = code, pos, detail


def max_threads():
    """Threads a parse uses by default (OpenMP's max, honours OMP_NUM_THREADS)."""
    return svm_max_threads()


cdef const char *EMPTY = b""


cdef inline bint is_space(char c) noexcept nogil:
    return c == c' ' or c == c'\t' or c == c'\r' or c == c'\v' or c == c'\f'


cdef inline Py_ssize_t skip_spaces(const char *buf, Py_ssize_t p, Py_ssize_t stop) noexcept nogil:
    while p < stop and is_space(buf[p]):
        p += 1
    return p


cdef inline Py_ssize_t token_end(const char *buf, Py_ssize_t p, Py_ssize_t stop) noexcept nogil:
    while p < stop and not is_space(buf[p]):
        p += 1
    return p


cdef inline Py_ssize_t find(const char *buf, char c, Py_ssize_t p, Py_ssize_t stop) noexcept nogil:
    """Position of the first `c` in [p, stop), else stop."""
    cdef const char *hit = <const char *>memchr(buf + p, c, <size_t>(stop - p))
    return stop if hit == NULL else hit - buf


cdef inline int fail(Chunk *c, int status, Py_ssize_t where, int64_t detail) noexcept nogil:
    c.status, c.where, c.detail = status, where, detail
    return status


cdef int scan_chunk(const char *buf, Chunk *c, int mode, int64_t least, int64_t limit,
                    index_t *indptr, index_t *indices, value_t *data, double *y,
                    int64_t *qid) noexcept nogil:
    """One pass of `mode` over the lines of chunk c; FILL writes rows c.row0.. and values
    c.nnz0.. (never more than pass 1 counted).  Returns (and records) the status.

    The loop keeps its state in locals and writes c once at the end: the chunks
    share cache lines, and per-token writes to them would serialise the threads.
    """
    cdef Py_ssize_t p = c.begin, end = c.end, eol, stop, tok, colon
    cdef int64_t rows = 0, nnz = 0, counted_rows = c.rows, counted_nnz = c.nnz
    cdef int64_t row0 = c.row0, nnz0 = c.nnz0, low = INT64_MAX, high = -1, previous
    cdef long long number
    cdef double value
    cdef int64_t widest = INT32_MAX - 1 if index_t is int32_t else INT64_MAX
    c.status = OK
    while p < end:
        eol = find(buf, c'\n', p, end)
        stop = find(buf, c'#', p, eol)
        p = skip_spaces(buf, p, stop)
        if p < stop:
            tok = token_end(buf, p, stop)
            if mode == FILL:
                if rows >= counted_rows:
                    return fail(c, MISCOUNTED, p, 0)
                if svm_parse_double(buf + p, buf + tok, &value) or not isfinite(value):
                    return fail(c, BAD_LABEL, p, 0)
                y[row0 + rows] = value
            p = skip_spaces(buf, tok, stop)
            if stop - p >= 4 and memcmp(buf + p, b"qid:", 4) == 0:
                tok = token_end(buf, p, stop)
                if mode == FILL:
                    if svm_parse_int(buf + p + 4, buf + tok, 1, &number):
                        return fail(c, BAD_QID, p, 0)
                    if qid != NULL:
                        qid[row0 + rows] = number
                p = skip_spaces(buf, tok, stop)
            elif mode == FILL and qid != NULL:
                qid[row0 + rows] = 0
            previous = -1
            while p < stop:
                tok = token_end(buf, p, stop)
                if mode != COUNT:
                    colon = find(buf, c':', p, tok)
                    if colon == tok:
                        return fail(c, NO_COLON, p, 0)
                    if svm_parse_int(buf + p, buf + colon, 0, &number) or number < least:
                        return fail(c, BAD_INDEX, p, 0)
                    if number <= previous:
                        return fail(c, NOT_INCREASING, p, previous)
                    if 0 <= limit < number:
                        return fail(c, OUT_OF_RANGE, p, number)
                    low = min(low, number)
                    high = max(high, number)
                    previous = number
                    if mode == FILL:
                        if nnz >= counted_nnz:
                            return fail(c, MISCOUNTED, p, 0)
                        if number > widest:
                            return fail(c, TOO_WIDE, p, number)
                        if svm_parse_double(buf + colon + 1, buf + tok, &value) \
                                or not isfinite(<value_t>value):
                            return fail(c, BAD_VALUE, p, 0)
                        indices[nnz0 + nnz] = <index_t>number
                        data[nnz0 + nnz] = <value_t>value
                nnz += 1
                p = skip_spaces(buf, tok, stop)
            rows += 1
            if mode == FILL:
                indptr[row0 + rows] = <index_t>(nnz0 + nnz)
        p = eol + 1
    if mode == FILL and (rows != counted_rows or nnz != counted_nnz):
        return fail(c, MISCOUNTED, end, 0)
    c.rows, c.nnz, c.min_index, c.max_index = rows, nnz, low, high
    return OK


cdef void scan_all(const char *buf, Chunk *chunks, Py_ssize_t n_chunks, int mode,
                   int64_t least, int64_t limit, int n_threads) noexcept nogil:
    """A COUNT or INDICES pass over every chunk, in parallel."""
    cdef Py_ssize_t i
    for i in prange(n_chunks, num_threads=n_threads, schedule="dynamic"):
        scan_chunk[int32_t, double](buf, &chunks[i], mode, least, limit,
                                    NULL, NULL, NULL, NULL, NULL)


cdef void fill_all(const char *buf, Chunk *chunks, Py_ssize_t n_chunks, int64_t least,
                   int64_t limit, index_t *indptr, index_t *indices, value_t *data,
                   double *y, int64_t *qid, int n_threads) noexcept nogil:
    """The FILL pass over every chunk, in parallel."""
    cdef Py_ssize_t i
    for i in prange(n_chunks, num_threads=n_threads, schedule="dynamic"):
        scan_chunk(buf, &chunks[i], FILL, least, limit, indptr, indices, data, y, qid)


cdef Py_ssize_t line_start_at_or_after(const char *buf, Py_ssize_t pos,
                                       Py_ssize_t end) noexcept nogil:
    """The first line start >= pos in a text whose lines end at `end`."""
    if pos <= 0 or buf[pos - 1] == c'\n':
        return pos
    return min(find(buf, c'\n', pos, end) + 1, end)


cdef Py_ssize_t split(const char *buf, Py_ssize_t begin, Py_ssize_t end, Chunk *chunks,
                      Py_ssize_t n_chunks) noexcept nogil:
    """Cut [begin, end) at line starts into at most n_chunks chunks; returns how many."""
    cdef Py_ssize_t k, m = 0, start = begin, stop
    for k in range(1, n_chunks + 1):
        stop = end if k == n_chunks else line_start_at_or_after(
            buf, begin + (end - begin) // n_chunks * k, end)
        if stop > start:
            chunks[m].begin, chunks[m].end = start, stop
            m += 1
            start = stop
    return m


cdef const char *text_pointer(const unsigned char[::1] text) noexcept:
    """The first byte of `text` (a static empty string when it is empty)."""
    if text.shape[0] == 0:
        return EMPTY
    return <const char *>&text[0]


def line_range(const unsigned char[::1] text, Py_ssize_t start, Py_ssize_t stop):
    """(begin, end): the bytes of the lines that the byte range [start, stop) owns.

    A line belongs to the range holding the byte just before it (the newline
    ending the previous line); the first line belongs to the non-empty range
    that starts at 0 (after a UTF-8 byte-order mark, which is skipped).  So
    ranges that tile [0, len) hand out every line exactly once, and
    [offset, offset + length) owns the lines scikit-learn's
    ``load_svmlight_file(offset=, length=)`` reads.
    """
    cdef Py_ssize_t n = text.shape[0]
    cdef const char *buf = text_pointer(text)
    start, stop = min(max(start, 0), n), min(max(stop, 0), n)
    if stop <= start:
        return start, start
    if start == 0:
        begin = 3 if n >= 3 and memcmp(buf, b"\xef\xbb\xbf", 3) == 0 else 0
    else:
        begin = min(find(buf, c'\n', start, n) + 1, n)
    end = n if stop == n else min(find(buf, c'\n', stop, n) + 1, n)
    return begin, max(begin, end)


def count_newlines(const unsigned char[::1] text, Py_ssize_t stop):
    """The number of newlines in text[:stop] (a position's line number minus 1)."""
    cdef const char *buf = text_pointer(text)
    cdef Py_ssize_t p = 0, count = 0
    stop = min(max(stop, 0), text.shape[0])
    with nogil:
        p = find(buf, c'\n', p, stop)
        while p < stop:
            count += 1
            p = find(buf, c'\n', p + 1, stop)
    return count


cdef class _Chunks:
    """The chunk table of one range: C memory freed with the object."""
    cdef Chunk *chunks
    cdef Py_ssize_t n

    def __cinit__(self, const unsigned char[::1] text, Py_ssize_t begin, Py_ssize_t end,
                  int n_threads):
        cdef Py_ssize_t wanted = max(1, min(n_threads * CHUNKS_PER_THREAD,
                                            (end - begin) // CHUNK_BYTES))
        self.chunks = <Chunk *>malloc(wanted * sizeof(Chunk))
        if self.chunks == NULL:
            raise MemoryError()
        self.n = split(text_pointer(text), begin, end, self.chunks, wanted)

    def __dealloc__(self):
        free(self.chunks)

    cdef int status(self) noexcept:
        """The first chunk's non-OK status (OK when none)."""
        cdef Py_ssize_t i
        for i in range(self.n):
            if self.chunks[i].status != OK:
                return self.chunks[i].status
        return OK

    cdef raise_first_error(self):
        """Raise the first chunk's error (file order), if any."""
        cdef Py_ssize_t i
        cdef Chunk *c
        for i in range(self.n):
            c = &self.chunks[i]
            if c.status == MISCOUNTED:
                raise RuntimeError(f"cyfed._svmlight: chunk {i} counted differently in its "
                                   "two passes (a bug; please report it)")
            if c.status != OK:
                raise ParseError(STATUS_NAMES[c.status], c.where, c.detail)

    cdef tuple totals(self):
        """(rows, stored values, smallest index, largest index) over the chunks, and
        each chunk's row0/nnz0 set (prefix sums)."""
        cdef Py_ssize_t i
        cdef int64_t rows = 0, nnz = 0, low = INT64_MAX, high = -1
        for i in range(self.n):
            self.chunks[i].row0, self.chunks[i].nnz0 = rows, nnz
            rows += self.chunks[i].rows
            nnz += self.chunks[i].nnz
            low = min(low, self.chunks[i].min_index)
            high = max(high, self.chunks[i].max_index)
        return rows, nnz, (low if high >= 0 else -1), high


def scan(const unsigned char[::1] text, Py_ssize_t begin, Py_ssize_t end, int64_t least,
         int64_t limit, int n_threads):
    """(rows, smallest index, largest index) of text[begin:end] as written (-1, -1:
    no index), checking the indices (>= least, <= limit unless limit < 0, increasing
    along each line) but not parsing labels or values.  Raises ParseError."""
    chunks = _Chunks(text, begin, end, n_threads)
    cdef _Chunks table = chunks
    cdef const char *buf = text_pointer(text)
    with nogil:
        scan_all(buf, table.chunks, table.n, INDICES, least, limit, n_threads)
    table.raise_first_error()
    rows, _, low, high = table.totals()
    return rows, low, high


def parse(const unsigned char[::1] text, Py_ssize_t begin, Py_ssize_t end, dtype,
          int64_t least, int64_t limit, bint query_id, int n_threads):
    """The rows of text[begin:end] as CSR arrays.

    Parameters
    ----------
    text : bytes-like, read-only
        The file's bytes; [begin, end) must be whole lines (`line_range`).
    dtype : numpy float dtype
        float32 or float64: the dtype of `data`.
    least, limit : int
        Indices must be >= least and, unless limit < 0, <= limit (as written).
    query_id : bool
        Also return each row's ``qid:`` (0 for rows without one).
    n_threads : int
        OpenMP threads.

    Returns
    -------
    tuple
        (indptr, indices, data, y, qid or None, smallest index, largest index):
        indptr and indices int32 when the values count and `limit` fit, else
        int64 (scipy's choice, so a csr_matrix takes them without a copy); y
        float64; indices as written (-1, -1: no index).  Raises ParseError.
    """
    chunks = _Chunks(text, begin, end, n_threads)
    cdef _Chunks table = chunks
    cdef const char *buf = text_pointer(text)
    with nogil:
        scan_all(buf, table.chunks, table.n, COUNT, least, limit, n_threads)
    rows, nnz, _, _ = table.totals()
    index_dtype = np.int32 if max(nnz, limit + 1) < INT32_MAX else np.int64
    while True:
        arrays = (np.zeros(rows + 1, dtype=index_dtype), np.empty(nnz, dtype=index_dtype),
                  np.empty(nnz, dtype=dtype), np.empty(rows, dtype=np.float64),
                  np.empty(rows if query_id else 0, dtype=np.int64))
        fill(buf, table, least, limit, arrays, n_threads)
        if table.status() != TOO_WIDE or index_dtype == np.int64:
            break
        index_dtype = np.int64
    table.raise_first_error()
    _, _, low, high = table.totals()
    indptr, indices, data, y, qid = arrays
    return indptr, indices, data, y, (qid if query_id else None), low, high


cdef fill(const char *buf, _Chunks table, int64_t least, int64_t limit, tuple arrays,
          int n_threads):
    """The FILL pass into the arrays `parse` made (indptr, indices, data, y, qid),
    specialised by their dtypes."""
    cdef cnp.ndarray indptr, indices, data, y, qid
    indptr, indices, data, y, qid = arrays
    cdef void *p = cnp.PyArray_DATA(indptr)
    cdef void *i = cnp.PyArray_DATA(indices)
    cdef void *d = cnp.PyArray_DATA(data)
    cdef double *labels = <double *>cnp.PyArray_DATA(y)
    cdef int64_t *q = <int64_t *>cnp.PyArray_DATA(qid) if qid.shape[0] else NULL
    cdef bint wide = indices.dtype == np.int64, single = data.dtype == np.float32
    with nogil:
        if wide and single:
            fill_all(buf, table.chunks, table.n, least, limit, <int64_t *>p, <int64_t *>i,
                     <float *>d, labels, q, n_threads)
        elif wide:
            fill_all(buf, table.chunks, table.n, least, limit, <int64_t *>p, <int64_t *>i,
                     <double *>d, labels, q, n_threads)
        elif single:
            fill_all(buf, table.chunks, table.n, least, limit, <int32_t *>p, <int32_t *>i,
                     <float *>d, labels, q, n_threads)
        else:
            fill_all(buf, table.chunks, table.n, least, limit, <int32_t *>p, <int32_t *>i,
                     <double *>d, labels, q, n_threads)
