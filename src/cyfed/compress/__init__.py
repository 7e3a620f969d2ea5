"""Communication compressors: a vector in, one byte payload out, and back.

Each compressor has ``encode(x, rng=None, key=None) -> payload``,
``decode(payload) -> x_hat`` (x's dtype and shape), ``payload_nbytes(payload)``
and ``max_payload_nbytes(d, dtype)`` (to size receive buffers).  ``x`` is a 1-d
float32/float64 vector of finite values (PowerSGD also takes a 2-d matrix);
the kernels are compiled (cyfed._compress).  A payload is one C-contiguous
``numpy.uint8`` array, ready for ``MPI Gatherv``, that decodes on its own
(``cyfed.compress.decode(payload)`` picks the compressor from it):

======  =====  ==================================================================
offset  bytes  header (little-endian, HEADER_NBYTES = 24)
======  =====  ==================================================================
0       1      codec id (``Compressor.codec``)
1       1      itemsize of x: 4 (float32) or 8 (float64)
2       1      ndim of x (2 only for a matrix given to PowerSGD)
3       1      0
4       4      uint32 parameter: QSGD levels s, TopK/RandK k, PowerSGD rank r
8       8      uint64 d, the number of entries of x (d < 2**32)
16      8      float64 norm (QSGD) or scale (ScaledSign), uint64 seed (RandK),
               uint64 rows (PowerSGD), else 0
======  =====  ==================================================================

and the body (p = itemsize)::

    FP16, BF16     2 d                     16-bit values
    QSGD(s)        w ceil(d / 8)           codes of w = 1 + bit_length(s) bits
    TopK(k)        k (p + 4)               k values, then k uint32 indices
    RandK(k)       k p                     k values (indices regenerated from the seed)
    ScaledSign     ceil(d / 8)             sign bits
    PowerSGD(r)    (n + m) r p             P (n x r), then Q (m x r), row-major

Randomness (QSGD, RandK, PowerSGD's first Q) comes from ``rng``: a
``numpy.random.Generator``, an int seed, or None for the compressor's own
generator (made from its ``seed``); the same rng state gives the same payload.
``key`` names the client (or rank) whose state a stateful compressor uses
(PowerSGD's warm start); the others ignore it.  `ErrorFeedback` wraps any of
them (a residual per key) and is used exactly like them.

Payloads are decoded in place when 8-byte aligned (else copied once); a
truncated or inconsistent payload raises ValueError.  Bodies are in the host's
byte order, assumed little-endian (x86-64, ARM64), like the header.  The kernels
run on one thread (they are memory-bound: several GB/s per core).
"""
import struct

import numpy as np

from cyfed import _validation as check
from cyfed._simd import load

_kernels, _ = load("_compress")

HEADER_NBYTES = 24
_HEAD = struct.Struct("<BBBxIQ")
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")
_DTYPES = {4: np.dtype(np.float32), 8: np.dtype(np.float64)}
_MAX_D = 2**32 - 1


# -- validation ---------------------------------------------------------------------------

def _float_dtype(dtype, name="dtype"):
    dtype = np.dtype(dtype)
    if dtype not in check.FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {dtype}")
    return dtype


def _vector(x, ndims=(1,)):
    """x as a C-contiguous float32/float64 array with 1 <= x.size < 2**32."""
    arr = np.asarray(x)
    _float_dtype(arr.dtype, "x")
    if arr.ndim not in ndims or arr.size == 0:
        want = " or ".join(f"{n}-d" for n in ndims)
        raise ValueError(f"x must be a non-empty {want} array, got shape {arr.shape}")
    if arr.size > _MAX_D:
        raise ValueError(f"x must have fewer than 2**32 entries, got {arr.size}")
    return np.ascontiguousarray(arr)


def _raise_non_finite(x):
    check.finite(x, "x")
    raise ValueError("the norm of x overflows float64")


def _k_param(k):
    """An int k >= 1, or a fraction in (0, 1) of d."""
    if isinstance(k, (float, np.floating)):
        if not 0 < k < 1:
            raise ValueError(f"k must be an int >= 1 or a fraction in (0, 1), got {k!r}")
        return float(k)
    return check.int_at_least(k, "k", 1)


def _k_for(k, d):
    """The number of coordinates kept of d: k, or max(1, round(k d)) for a fraction."""
    n = max(1, round(k * d)) if isinstance(k, float) else k
    if n > d:
        raise ValueError(f"k must be <= d = {d} (the length of x), got {k}")
    return n


def _generator(rng, default):
    if rng is None:
        return default
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _seed64(gen):
    return int(gen.integers(2**64, dtype=np.uint64))


# -- payloads -----------------------------------------------------------------------------

def payload_nbytes(payload):
    """Length of a payload in bytes (what goes over the wire)."""
    return memoryview(payload).nbytes


class _Header:
    """The parsed header of a payload (see the module docstring)."""

    def __init__(self, payload):
        buf = np.frombuffer(payload, dtype=np.uint8) if not isinstance(payload, np.ndarray) \
            else payload.reshape(-1).view(np.uint8)
        if buf.size < HEADER_NBYTES:
            raise ValueError(f"payload is {buf.size} bytes, shorter than the "
                             f"{HEADER_NBYTES}-byte header")
        if buf.ctypes.data % 8:
            buf = buf.copy()
        self.codec, itemsize, self.ndim, self.param, self.d = _HEAD.unpack_from(buf)
        if itemsize not in _DTYPES or self.d == 0 or self.ndim not in (1, 2):
            raise ValueError("payload has a corrupt header (itemsize, d or ndim)")
        self.dtype = _DTYPES[itemsize]
        self.buf = buf

    def extra(self, fmt):
        return fmt.unpack_from(self.buf, 16)[0]

    def body(self, nbytes):
        if self.buf.size != HEADER_NBYTES + nbytes:
            raise ValueError(f"payload is {self.buf.size} bytes, its header says "
                             f"{HEADER_NBYTES + nbytes}")
        return self.buf[HEADER_NBYTES:]

    def values(self, offset, count):
        start = HEADER_NBYTES + offset
        return self.buf[start:start + count * self.dtype.itemsize].view(self.dtype)


def _new_payload(codec, dtype, d, body_nbytes, param=0, extra=b"\0" * 8, ndim=1):
    out = np.empty(HEADER_NBYTES + body_nbytes, dtype=np.uint8)
    _HEAD.pack_into(out, 0, codec, dtype.itemsize, ndim, param, d)
    out[16:24] = np.frombuffer(extra, dtype=np.uint8)
    return out, out[HEADER_NBYTES:]


_CODECS = {}


def decode(payload):
    """Decode a payload made by any compressor (the codec id says which)."""
    codec = _Header(payload).codec
    if codec not in _CODECS:
        raise ValueError(f"payload has unknown codec id {codec}")
    return _CODECS[codec].decode(payload)


class Compressor:
    """Base class: the payload plumbing shared by the compressors."""

    codec = 0

    def __init_subclass__(cls):
        super().__init_subclass__()
        if "codec" in vars(cls):        # not a base such as _Half (codec 0 is no codec)
            _CODECS[cls.codec] = cls

    payload_nbytes = staticmethod(payload_nbytes)

    def __repr__(self):
        return f"{type(self).__name__}()"

    @classmethod
    def _header(cls, payload):
        head = _Header(payload)
        if head.codec != cls.codec:
            raise ValueError(f"payload is not a {cls.__name__} payload (codec id "
                             f"{head.codec}, expected {cls.codec})")
        return head

    def max_payload_nbytes(self, d, dtype):
        """Bytes of the payload of a length-d vector of `dtype` (its exact size here)."""
        d = check.int_at_least(d, "d", 1, _MAX_D)
        return HEADER_NBYTES + self._body_nbytes(d, _float_dtype(dtype))

    def state_dict(self):
        """State to checkpoint (arrays keyed by str); stateless compressors have none."""
        return {}

    def load_state_dict(self, state):
        """Restore what `state_dict` returned."""


class _Half(Compressor):
    """16-bit floats: 2 bytes per coordinate, relative error <= 2^-(mantissa bits + 1)."""

    def _body_nbytes(self, d, dtype):
        return 2 * d

    def encode(self, x, rng=None, key=None):
        x = _vector(x)
        payload, body = _new_payload(self.codec, x.dtype, x.size, 2 * x.size)
        if not self._to16(x, body.view(np.uint16)):
            _raise_non_finite(x)
        return payload

    @classmethod
    def decode(cls, payload):
        head = cls._header(payload)
        out = np.empty(head.d, dtype=head.dtype)
        cls._from16(head.body(2 * head.d).view(np.uint16), out)
        return out


class FP16(_Half):
    """IEEE 754 half precision (11-bit significand, round to nearest even; float64
    goes through float32).  |x_i| > 65504 becomes +-inf, |x_i| < 2^-24 rounds to
    zero (or a subnormal): scale gradients into range first."""

    codec = 1

    @staticmethod
    def _to16(x, out):
        if _kernels.HAVE_FP16:
            return _kernels.fp16_encode(x, out)
        out[:] = x.astype(np.float32).astype(np.float16).view(np.uint16)
        return np.isfinite(x).all()

    @staticmethod
    def _from16(h, out):
        if _kernels.HAVE_FP16:
            _kernels.fp16_decode(h, out)
        else:
            out[:] = h.view(np.float16)


class BF16(_Half):
    """bfloat16: the top 16 bits of float32(x), rounded to nearest, ties to even
    (8-bit significand, float32's exponent range: relative error <= 2^-8)."""

    codec = 2
    _to16 = staticmethod(_kernels.bf16_encode)
    _from16 = staticmethod(_kernels.bf16_decode)


class QSGD(Compressor):
    r"""QSGD (Alistarh et al. 2017, arXiv:1610.02132) with s = `levels` levels.

    .. math:: Q_s(x)_i = \|x\|_2 \,\mathrm{sign}(x_i)\, \xi_i / s, \qquad
              \xi_i = \lfloor s|x_i|/\|x\|_2 \rfloor + \mathrm{Bernoulli}(\mathrm{frac}
              (s|x_i|/\|x\|_2))

    is unbiased, E[Q_s(x)] = x, with variance (Lemma 3.1)
    E‖Q_s(x) − x‖² ≤ min(d/s², √d/s) ‖x‖².  ‖x‖₂ is sent as float64; each
    coordinate as 2 ξ_i + [x_i < 0] in w = 1 + bit_length(s) bits (s = 1: 2 bits,
    3: 3, 7: 4, 15: 5, 127: 8), 8 coordinates per w bytes.  The Bernoulli draws
    use 32-bit uniforms (probabilities exact to 2^-32).

    Parameters
    ----------
    levels : int in [1, 127]
    seed : int or None, the compressor's own generator (used when encode gets no rng).
    """

    codec = 3

    def __init__(self, levels, seed=0):
        self.levels = check.int_at_least(levels, "levels", 1, 127)
        self.width = 1 + self.levels.bit_length()
        self._rng = np.random.default_rng(seed)

    def __repr__(self):
        return f"QSGD(levels={self.levels})"

    def _body_nbytes(self, d, dtype):
        return self.width * -(-d // 8)

    def encode(self, x, rng=None, key=None):
        x = _vector(x)
        seed = _seed64(_generator(rng, self._rng))
        payload, body = _new_payload(self.codec, x.dtype, x.size,
                                     self._body_nbytes(x.size, x.dtype), self.levels)
        norm = _kernels.qsgd_encode(x, self.levels, self.width, seed, body)
        if not np.isfinite(norm):
            _raise_non_finite(x)
        _F64.pack_into(payload, 16, norm)
        return payload

    @classmethod
    def decode(cls, payload):
        head = cls._header(payload)
        levels = check.int_at_least(head.param, "payload levels", 1, 127)
        width = 1 + levels.bit_length()
        out = np.empty(head.d, dtype=head.dtype)
        _kernels.qsgd_decode(head.body(width * -(-head.d // 8)), levels, width,
                             head.extra(_F64), out)
        return out


class TopK(Compressor):
    """Top-k sparsification: the k coordinates of largest |x_i| (Aji & Heafield 2017,
    arXiv:1704.05021; Stich et al. 2018, arXiv:1809.07599), sent as k values and
    their uint32 indices, in increasing index order.  Ties: among coordinates of
    equal magnitude at the k-th largest, the lowest indices are kept (+0 and -0
    are equal).  Biased: pair it with `ErrorFeedback`.

    Selection is compiled and never sorts: a sampled threshold keeps about
    k (1 + O(1/sqrt(k))) candidates in one vectorised pass, a radix select finds
    the exact k-th magnitude among them.

    Parameters
    ----------
    k : int >= 1 (<= d at encode), or a fraction in (0, 1): k = max(1, round(k d)).
    """

    codec = 4

    def __init__(self, k):
        self.k = _k_param(k)

    def __repr__(self):
        return f"TopK(k={self.k})"

    def _body_nbytes(self, d, dtype):
        return _k_for(self.k, d) * (dtype.itemsize + 4)

    def encode(self, x, rng=None, key=None):
        x = _vector(x)
        k = _k_for(self.k, x.size)
        payload, body = _new_payload(self.codec, x.dtype, x.size, k * (x.itemsize + 4), k)
        values = body[:k * x.itemsize].view(x.dtype)
        if not _kernels.topk(x, body[k * x.itemsize:].view(np.uint32), values):
            _raise_non_finite(x)
        return payload

    @classmethod
    def decode(cls, payload):
        head = cls._header(payload)
        k = head.param
        p = head.dtype.itemsize
        head.body(k * (p + 4))
        out = np.zeros(head.d, dtype=head.dtype)
        if not _kernels.scatter(head.buf[HEADER_NBYTES + k * p:].view(np.uint32),
                                head.values(0, k), out):
            raise ValueError(f"payload holds an index >= d = {head.d}")
        return out


class RandK(Compressor):
    """Random-k sparsification: k coordinates drawn uniformly without replacement.

    With ``unbiased=True`` (default) the values are scaled by d/k, so
    E[x_hat] = x (each coordinate is kept with probability k/d), at variance
    (d/k − 1)‖x‖²; else x_hat is x on the k coordinates (biased, pair it with
    `ErrorFeedback`).  Only a 64-bit seed and the k values are sent: the receiver
    regenerates the (increasing) indices from the seed.

    Parameters
    ----------
    k : int >= 1 (<= d at encode), or a fraction in (0, 1): k = max(1, round(k d)).
    unbiased : bool
    seed : int or None, the compressor's own generator (used when encode gets no rng).
    """

    codec = 5

    def __init__(self, k, unbiased=True, seed=0):
        self.k = _k_param(k)
        self.unbiased = bool(unbiased)
        self._rng = np.random.default_rng(seed)

    def __repr__(self):
        return f"RandK(k={self.k}, unbiased={self.unbiased})"

    def _body_nbytes(self, d, dtype):
        return _k_for(self.k, d) * dtype.itemsize

    def encode(self, x, rng=None, key=None):
        x = _vector(x)
        k = _k_for(self.k, x.size)
        seed = _seed64(_generator(rng, self._rng))
        payload, body = _new_payload(self.codec, x.dtype, x.size, k * x.itemsize, k,
                                     _U64.pack(seed))
        idx = np.empty(k, dtype=np.uint32)
        _kernels.randk_indices(x.size, seed, idx)
        if not _kernels.gather(x, idx, x.size / k if self.unbiased else 1.0,
                               body.view(x.dtype)):
            _raise_non_finite(x)
        return payload

    @classmethod
    def decode(cls, payload):
        head = cls._header(payload)
        k = check.int_at_least(head.param, "payload k", 1, head.d)
        values = head.body(k * head.dtype.itemsize).view(head.dtype)
        idx = np.empty(k, dtype=np.uint32)
        _kernels.randk_indices(head.d, head.extra(_U64), idx)
        out = np.zeros(head.d, dtype=head.dtype)
        _kernels.scatter(idx, values, out)
        return out


class ScaledSign(Compressor):
    """Scaled sign (EF-signSGD, Karimireddy et al. 2019, arXiv:1901.09847):
    x_hat = (‖x‖₁ / d) sign(x), sign(0) = +1; one bit per coordinate plus the
    float64 scale.  Biased: pair it with `ErrorFeedback`."""

    codec = 6

    def _body_nbytes(self, d, dtype):
        return -(-d // 8)

    def encode(self, x, rng=None, key=None):
        x = _vector(x)
        payload, body = _new_payload(self.codec, x.dtype, x.size, -(-x.size // 8))
        l1 = _kernels.sign_encode(x, body)
        if not np.isfinite(l1):
            _raise_non_finite(x)
        _F64.pack_into(payload, 16, l1 / x.size)
        return payload

    @classmethod
    def decode(cls, payload):
        head = cls._header(payload)
        out = np.empty(head.d, dtype=head.dtype)
        _kernels.sign_decode(head.body(-(-head.d // 8)), head.extra(_F64), out)
        return out


class PowerSGD(Compressor):
    """PowerSGD (Vogels et al. 2019, arXiv:1905.13727): a rank-r approximation of
    the matrix M (n x m) by one step of subspace iteration,

        P = orth(M Q),   Q ← Mᵀ P,   M_hat = P Qᵀ,

    orth by Householder QR (numpy/BLAS).  Q is warm-started from the previous
    call with the same `key` (a random normal Q the first time), so repeated
    calls on similar matrices converge to the best rank-r approximation; a
    rank-r matrix is reproduced exactly (to rounding) after one call.

    Parameters
    ----------
    rank : int >= 1 (<= min(n, m) at encode)
    shape : (n, m) or None, how a 1-d x is viewed (row-major); a 2-d x gives its own.
    seed : int or None, the compressor's own generator (first Q of each key).
    """

    codec = 7

    def __init__(self, rank, shape=None, seed=0):
        self.rank = check.int_at_least(rank, "rank", 1)
        self.shape = None if shape is None else self._shape(shape)
        self._rng = np.random.default_rng(seed)
        self._q = {}

    def __repr__(self):
        return f"PowerSGD(rank={self.rank}, shape={self.shape})"

    @staticmethod
    def _shape(shape):
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
            raise ValueError(f"shape must be a (rows, cols) pair, got {shape!r}")
        return tuple(check.int_at_least(s, "shape", 1) for s in shape)

    def _matrix_shape(self, x, shape):
        if x.ndim == 2:
            return x.shape
        shape = self.shape if shape is None else self._shape(shape)
        if shape is None:
            raise ValueError("PowerSGD needs shape=(rows, cols) to view a 1-d x as a matrix")
        if shape[0] * shape[1] != x.size:
            raise ValueError(f"shape {shape} does not match x of length {x.size}")
        return shape

    def _body_nbytes(self, d, dtype):
        n, m = self._shape(d) if isinstance(d, (tuple, list)) else self.shape or (None, None)
        if n is None:
            raise ValueError("PowerSGD.max_payload_nbytes needs d=(rows, cols) or a shape")
        return (n + m) * self.rank * dtype.itemsize

    def max_payload_nbytes(self, d, dtype):
        """Bytes of the payload of an (n, m) matrix (d = (n, m), or the compressor's
        shape when d is an int)."""
        return HEADER_NBYTES + self._body_nbytes(d, _float_dtype(dtype))

    def encode(self, x, rng=None, key=None, shape=None):
        x = _vector(x, ndims=(1, 2))
        n, m = self._matrix_shape(x, shape)
        if self.rank > min(n, m):
            raise ValueError(f"rank must be <= min(rows, cols) = {min(n, m)}, got {self.rank}")
        check.finite(x, "x")
        M = x.reshape(n, m)
        Q = self._q.get(str(key))
        if Q is None or Q.shape != (m, self.rank):
            Q = _generator(rng, self._rng).standard_normal((m, self.rank))
        P, _ = np.linalg.qr(M @ Q.astype(x.dtype, copy=False))
        Q = M.T @ P
        self._q[str(key)] = Q
        payload, body = _new_payload(self.codec, x.dtype, x.size,
                                     (n + m) * self.rank * x.itemsize, self.rank,
                                     _U64.pack(n), x.ndim)
        values = body.view(x.dtype)
        values[:n * self.rank] = P.ravel()
        values[n * self.rank:] = Q.ravel()
        return payload

    @classmethod
    def decode(cls, payload):
        head = cls._header(payload)
        r, n = head.param, head.extra(_U64)
        if r < 1 or n < 1 or head.d % n:
            raise ValueError("payload has a corrupt PowerSGD header (rank, rows)")
        m = head.d // n
        values = head.body((n + m) * r * head.dtype.itemsize).view(head.dtype)
        M = values[:n * r].reshape(n, r) @ values[n * r:].reshape(m, r).T
        return M if head.ndim == 2 else M.ravel()

    def state_dict(self):
        """The warm-start Q of every key, as {str(key): (m, rank) array}."""
        return {key: Q.copy() for key, Q in self._q.items()}

    def load_state_dict(self, state):
        self._q = {str(key): np.array(Q) for key, Q in state.items()}


class ErrorFeedback:
    """Error feedback (Stich et al. 2018, arXiv:1809.07599; Karimireddy et al. 2019,
    arXiv:1901.09847) around a compressor C, one residual e_key per key (client or
    rank):

        p = x + e_key,   payload = C(p),   e_key <- p - decode(payload).

    Sum over the calls of a key: sum decode(payload) + e_key = sum x (to rounding).
    A drop-in for C: the same ``encode(x, rng=None, key=None)``, ``decode``,
    ``payload_nbytes``, ``max_payload_nbytes``, ``state_dict`` and
    ``load_state_dict``, and C's payloads.  Residuals have x's dtype and shape; a
    key's first call (or one with another shape or dtype) starts from e = 0.

    The residual stays bounded only for a contractive C,
    ||C(p) - p||^2 <= (1 - delta) ||p||^2 with delta > 0 (Karimireddy et al.,
    Theorem II): TopK, ScaledSign, PowerSGD, FP16/BF16, RandK(unbiased=False).
    RandK scaled by d / k is refused; QSGD(s) is contractive only while
    min(d / s^2, sqrt(d) / s) < 1.

    Parameters
    ----------
    compressor : Compressor
        C (not RandK(k, unbiased=True)); its own state (PowerSGD's Q) stays in it.
    """

    payload_nbytes = staticmethod(payload_nbytes)

    def __init__(self, compressor):
        if not isinstance(compressor, Compressor):
            raise TypeError(f"compressor must be a cyfed.compress compressor, "
                            f"got {type(compressor).__name__}")
        if isinstance(compressor, RandK) and compressor.unbiased:
            raise ValueError("error feedback needs a contractive compressor: use "
                             "RandK(k, unbiased=False) (the unbiased d/k scaling makes the "
                             "residual grow without bound)")
        self.compressor = compressor
        self._residuals = {}

    def __repr__(self):
        return f"ErrorFeedback({self.compressor!r})"

    def encode(self, x, rng=None, key=None):
        """C's payload of p = x + e_key; sets e_key = p - decode(payload).

        Parameters
        ----------
        x : 1-d (2-d for PowerSGD) float32/float64 array
        rng : numpy.random.Generator, int seed or None, passed to C
        key : hashable, the residual's owner (str(key) names it; None is a key too),
            passed to C (PowerSGD's warm start)
        """
        x = _vector(x, ndims=(1, 2))
        e = self._residuals.get(str(key))
        p = x.copy() if e is None or e.shape != x.shape or e.dtype != x.dtype else x + e
        payload = self.compressor.encode(p, rng=rng, key=key)
        p -= self.compressor.decode(payload)
        self._residuals[str(key)] = p
        return payload

    def decode(self, payload):
        """C's decode (the residuals are the sender's, not needed here)."""
        return self.compressor.decode(payload)

    def max_payload_nbytes(self, d, dtype):
        """C's `max_payload_nbytes`."""
        return self.compressor.max_payload_nbytes(d, dtype)

    def residual(self, key):
        """e_key (None before the key's first encode)."""
        return self._residuals.get(str(key))

    def state_dict(self):
        """The residuals as {str(key): array} (copies); C checkpoints its own state."""
        return {key: e.copy() for key, e in self._residuals.items()}

    def load_state_dict(self, state):
        """Restore the residuals `state_dict` returned (any keys left out start at 0)."""
        self._residuals = {str(key): np.array(e) for key, e in state.items()}


__all__ = ["HEADER_NBYTES", "Compressor", "FP16", "BF16", "QSGD", "TopK", "RandK",
           "ScaledSign", "PowerSGD", "ErrorFeedback", "decode", "payload_nbytes"]
