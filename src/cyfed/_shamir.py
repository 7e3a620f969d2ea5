"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1).

A secret s in [0, P) is hidden as the constant term of a random polynomial of
degree t - 1,

    f(x) = s + a_1 x + ... + a_{t-1} x^{t-1}  (mod P),  a_i uniform in [0, P),

and share i is the point (i, f(i)) for i = 1..n.  Any t points determine f, so
Lagrange interpolation at 0 gives the secret back,

    s = sum_j y_j prod_{m != j} x_m / (x_m - x_j)  (mod P);

any t - 1 points are consistent with *every* secret (for each candidate s
there is exactly one polynomial through them and (0, s)), so they reveal
nothing about it (Shamir, "How to share a secret", CACM 22(11), 1979).

P = 2^521 - 1 is a Mersenne prime, larger than the 2^256 of a 32-byte key, so
a key is shared as one field element.  Arithmetic on Python ints; the random
coefficients come from the OS CSPRNG (`secrets`) unless a numpy Generator is
given (tests only: such shares are reproducible, hence not secret).
"""
import secrets

import numpy as np

#: The field modulus, the Mersenne prime 2^521 - 1.
PRIME = (1 << 521) - 1
#: Bytes of a field element written big-endian (521 bits -> 66 bytes).
ELEMENT_BYTES = 66


def _random_element(rng):
    if rng is None:
        return secrets.randbelow(PRIME)
    # 72 random bytes reduced mod P: the bias is below 2^-55, fine for tests.
    return int.from_bytes(rng.bytes(72), "big") % PRIME


def shamir_split(secret, n, t, rng=None):
    """Split `secret` into `n` shares, any `t` of which reconstruct it.

    Parameters
    ----------
    secret : int in [0, PRIME)
    n : int >= 1
        Number of shares; share i is the point (i, f(i)), i = 1..n.
    t : int in [1, n]
        Reconstruction threshold (degree of f is t - 1).
    rng : numpy.random.Generator or None
        None (the default) draws the coefficients from the OS CSPRNG.

    Returns
    -------
    list of (int, int)
        The n points (x, y), y in [0, PRIME).
    """
    secret = int(secret)
    if not 0 <= secret < PRIME:
        raise ValueError(f"secret must lie in [0, 2^521 - 1), got {secret.bit_length()} bits")
    if not 1 <= t <= n:
        raise ValueError(f"need 1 <= t <= n, got t={t}, n={n}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator or None, got {type(rng).__name__}")
    coefficients = [secret] + [_random_element(rng) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for a in reversed(coefficients):      # Horner
            y = (y * x + a) % PRIME
        shares.append((x, y))
    return shares


def lagrange_at_zero(xs):
    """Coefficients l_j with f(0) = sum_j l_j f(x_j) mod P, for distinct nonzero xs."""
    xs = [int(x) for x in xs]
    if len(set(xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ValueError("share x-coordinates must be distinct and nonzero")
    coefficients = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        coefficients.append(num * pow(den, -1, PRIME) % PRIME)
    return coefficients


def shamir_combine(shares):
    """The secret interpolated from shares [(x, y), ...] (at least t of them).

    With fewer than t shares the result is a field element unrelated to the
    secret (no error can be raised: t is not recorded in the shares).
    """
    shares = list(shares)
    if not shares:
        raise ValueError("no shares to combine")
    weights = lagrange_at_zero([x for x, _ in shares])
    return sum(w * y for w, (_, y) in zip(weights, shares)) % PRIME
