"""The arithmetic of secure aggregation: fixed-point quantisation into the ring
Z_{2^bits}, the SecAgg+ neighbour graph, and the mask generator (a stream cipher
keystream read as ring elements).  The protocol is in `cyfed.secagg`."""
import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MIN_BITS, MAX_BITS = 16, 62
#: Quantisation levels are capped at 2^53 + 1 so (x + c) / step is exact in float64.
_MAX_TOP_LEVEL = 1 << 53


def ring_dtype(bits):
    """uint32 for bits <= 32, else uint64: numpy's wrap-around is arithmetic mod 2^32 / 2^64,
    and 2^bits divides it, so reducing with ``& (2^bits - 1)`` at the end is exact."""
    return np.dtype(np.uint32 if bits <= 32 else np.uint64)


def _top_level(bits, n_summands):
    """L - 1, the largest quantised value: n (L - 1) <= 2^bits - 1 (no wrap-around)."""
    return min(((1 << bits) - 1) // n_summands, _MAX_TOP_LEVEL)


def quantization_step(clip_range, bits, n_summands):
    """step = 2 clip_range / (L - 1), the spacing of the quantisation grid."""
    return 2.0 * clip_range / _top_level(bits, n_summands)


def quantize(x, clip_range, bits, n_summands, rng):
    """Clip to [-c, c] and stochastically round onto L levels of the ring Z_{2^bits}.

    q = min(floor((clip(x, -c, c) + c) / step + u), L - 1),  u ~ U[0, 1) from `rng`,

    with L - 1 = min(floor((2^bits - 1) / n_summands), 2^53) and step = 2c / (L - 1),
    so a sum of `n_summands` values is below 2^bits.  Unbiased: E[q] step - c = clip(x).

    Parameters
    ----------
    x : (d,) float array
    clip_range : float > 0
    bits : int in [16, 62]
    n_summands : int >= 1
        Number of vectors that will be summed (the sampled clients).
    rng : numpy.random.Generator
        Source of the rounding noise; the result is a deterministic function of it.

    Returns
    -------
    (d,) uint32 (bits <= 32) or uint64 array, values in [0, L - 1].
    """
    top = _top_level(bits, n_summands)
    scaled = np.clip(np.asarray(x, dtype=np.float64), -clip_range, clip_range)
    scaled += clip_range
    scaled *= top / (2.0 * clip_range)
    scaled += rng.random(scaled.shape)
    np.floor(scaled, out=scaled)
    np.minimum(scaled, top, out=scaled)     # (x + c) / step may round a hair above L - 1
    return scaled.astype(ring_dtype(bits))


def dequantize(total, clip_range, bits, n_summands, count):
    """The float sum of `count` vectors from the sum of their quantised values.

    sum_hat = step * total - count * c.  Error bound, per coordinate, for vectors
    quantised by `quantize` with the same (clip_range, bits, n_summands):

        |sum_hat - sum_i clip(x_i, -c, c)| < count * step,   step = 2c / (L - 1),

    (each stochastic rounding moves a value by less than one step), and
    E[sum_hat] = sum_i clip(x_i) (unbiased), up to float64 rounding.

    Parameters
    ----------
    total : (d,) unsigned int array, the ring sum (already below 2^bits)
    count : int, number of vectors in the sum

    Returns
    -------
    (d,) float64
    """
    step = quantization_step(clip_range, bits, n_summands)
    return np.asarray(total).astype(np.float64) * step - count * clip_range


# ------------------------------------------------------------------------ the graph

def neighbour_graph(n, k, seed):
    """Public neighbour graph of SecAgg+: row i holds the sorted neighbours of position i.

    k None or 2 ceil(k / 2) >= n - 1: the complete graph (Bonawitz et al.).  Otherwise
    the Harary graph H_{2h, n}, h = ceil(k / 2) (a ring where each node links to the
    h nearest on either side; 2h-regular and 2h-connected) laid on a random
    permutation of the positions drawn from `seed` -- the construction of Flower's
    SecAggPlusWorkflow, a practical stand-in for Bell et al.'s random k-regular graph.

    Returns
    -------
    (n, degree) int64 array of positions in 0..n-1, degree = n - 1 or 2h.
    """
    n = int(n)
    if k is None or 2 * math.ceil(k / 2) >= n - 1:
        full = np.broadcast_to(np.arange(n, dtype=np.int64), (n, n))
        return np.ascontiguousarray(full[~np.eye(n, dtype=bool)].reshape(n, n - 1))
    half = math.ceil(k / 2)
    order = np.random.default_rng(seed).permutation(n)
    ring = np.arange(n)
    offsets = np.concatenate([np.arange(-half, 0), np.arange(1, half + 1)])
    graph = np.empty((n, 2 * half), dtype=np.int64)
    graph[order] = order[(ring[:, None] + offsets[None, :]) % n]
    graph.sort(axis=1)
    return graph


# ----------------------------------------------------------------------------- masks

class MaskPRG:
    """Expands 32-byte seeds into ring masks and adds them to a vector in place.

    The keystream of AES-256-CTR (zero IV: every seed keys one mask) is written
    by ``update_into`` into one reusable 64 KiB buffer, read as ring elements and
    added (or subtracted) with ``np.add(..., out=)``; no allocation per call and
    the chunk stays in cache between the two passes.
    """

    CHUNK = 1 << 16
    CIPHERS = {
        "aes-ctr": lambda key: Cipher(algorithms.AES(key), modes.CTR(bytes(16))),
        "chacha20": lambda key: Cipher(algorithms.ChaCha20(key, bytes(16)), None),
    }

    def __init__(self, dtype, cipher="aes-ctr"):
        if cipher not in self.CIPHERS:
            raise ValueError(f"cipher must be one of {sorted(self.CIPHERS)}, got {cipher!r}")
        self.dtype = np.dtype(dtype)
        self._cipher = self.CIPHERS[cipher]
        self._zeros = memoryview(bytes(self.CHUNK))
        self._buf = np.empty(self.CHUNK + 64, dtype=np.uint8)   # update_into wants slack

    def apply(self, y, seed, sign):
        """y += sign * PRG(seed) (mod 2^width of y's dtype), in place; sign is +1 or -1."""
        encryptor = self._cipher(seed).encryptor()
        op = np.add if sign > 0 else np.subtract
        per = self.CHUNK // self.dtype.itemsize
        for start in range(0, y.size, per):
            part = y[start:start + per]
            nbytes = part.size * self.dtype.itemsize
            encryptor.update_into(self._zeros[:nbytes], self._buf)
            op(part, self._buf[:nbytes].view(self.dtype), out=part)
        return y
