"""Secure aggregation (cyfed.secagg): quantisation, Shamir, masks, dropouts, MPI.

References kept here: the plain integer sum of the quantised vectors (Python
ints, no ring), the float sum of the clipped inputs, and a brute-force rule for
which dropout patterns must succeed.  Tests marked `mpi` are valid for any
communicator size (run plainly and under ``mpiexec -n 2`` / ``-n 4``).
"""
import itertools

import numpy as np
import pytest
from scipy import stats

from cyfed._shamir import PRIME, shamir_combine, shamir_split
from cyfed.comm import LocalComm, get_comm
from cyfed.secagg import (MaskPRG, SecAggError, SecureAggregation, dequantize, neighbour_graph,
                          quantization_step, quantize, ring_dtype)

COMM = get_comm()
#: False-failure probability of each statistical test.
ALPHA = 1e-7


def inputs(n, d, seed=0, scale=1.3):
    """(n, d) floats in [-scale, scale] (some beyond the default clip range 1)."""
    return np.random.default_rng(seed).uniform(-scale, scale, (n, d))


def reference_sum(sa, X, ids, seed, m):
    """Exact integer sum of the clients' quantised vectors, then dequantised."""
    q = [quantize(X[u], sa.clip_range, sa.bits, m, np.random.default_rng((*seed, u)))
         for u in ids]
    ints = np.array([sum(int(v[j]) for v in q) for j in range(X.shape[1])], dtype=object)
    assert all(v < 2 ** sa.bits for v in ints)
    return ints, dequantize(ints.astype(np.float64), sa.clip_range, sa.bits, m, len(ids))


def run_local(sa, X, seed, senders=None, **kw):
    n, d = X.shape
    ids = np.arange(n, dtype=np.int64)
    senders = range(n) if senders is None else senders
    return sa.secure_sum(LocalComm(), seed, ids, ids, {u: X[u] for u in senders}, d, **kw)


# -------------------------------------------------------------------- quantisation

@pytest.mark.parametrize("bits", [16, 32, 48, 62])
def test_quantised_sum_is_exact_and_within_the_bound(bits):
    n, d, c = 50, 400, 1.0
    X = inputs(n, d)
    q = [quantize(X[u], c, bits, n, np.random.default_rng((7, u))) for u in range(n)]
    assert q[0].dtype == ring_dtype(bits)
    ring = sum(v for v in q)                                   # wraps mod 2^32 / 2^64
    exact = np.array([sum(int(v[j]) for v in q) for j in range(d)], dtype=object)
    assert max(exact) < 2 ** bits                              # no overflow of the ring
    np.testing.assert_array_equal(ring.astype(object) % 2 ** bits, exact)
    total = dequantize(ring & ring.dtype.type(2 ** bits - 1), c, bits, n, n)
    bound = n * quantization_step(c, bits, n)
    err = np.abs(total - np.clip(X, -c, c).sum(axis=0))
    assert err.max() <= bound * (1 + 1e-9) + 1e-9 * n
    if bits <= 32:                 # the bound is attained in order of magnitude, not vacuous
        assert err.max() > bound / 1000


def test_stochastic_rounding_is_unbiased_and_seeded():
    c, bits, n, draws = 1.0, 16, 1000, 20000
    step = quantization_step(c, bits, n)
    x = np.array([0.3 * step - c, 0.123456, 0.5 - 0.71 * step, -c, c])
    q = np.stack([quantize(x, c, bits, n, np.random.default_rng((s,))) for s in range(draws)])
    mean = q.mean(axis=0) * step - c
    # Each draw is within one step of x, so the sd of the mean is <= step / (2 sqrt(draws)).
    z = stats.norm.isf(ALPHA / 2)
    np.testing.assert_array_less(np.abs(mean - x), z * step / (2 * np.sqrt(draws)) + 1e-12)
    again = quantize(x, c, bits, n, np.random.default_rng((5,)))
    np.testing.assert_array_equal(again, q[5])


# ---------------------------------------------------------------------------- shamir

def test_any_t_shares_reconstruct_and_t_minus_1_do_not():
    rng = np.random.default_rng(3)
    secret = int.from_bytes(rng.bytes(32), "big")
    n, t = 6, 3
    shares = shamir_split(secret, n, t)
    assert [x for x, _ in shares] == list(range(1, n + 1))
    assert all(0 <= y < PRIME for _, y in shares)
    for subset in itertools.combinations(shares, t):
        assert shamir_combine(subset) == secret
    for subset in itertools.combinations(shares, t + 1):
        assert shamir_combine(subset) == secret
    for subset in itertools.combinations(shares, t - 1):
        assert shamir_combine(subset) != secret


def interpolate(points, x):
    """Reference: the polynomial through `points` evaluated at x, mod PRIME."""
    total = 0
    for j, (xj, yj) in enumerate(points):
        num = den = 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num, den = num * (x - xm) % PRIME, den * (xj - xm) % PRIME
        total += yj * num * pow(den, -1, PRIME)
    return total % PRIME


def test_t_minus_1_shares_fit_every_secret():
    """Perfect secrecy: t - 1 shares and any candidate secret s' lie on one polynomial of
    degree t - 1, so the t - 1 shares rule no candidate out."""
    secret = 12345
    shares = shamir_split(secret, 5, 3)
    known = shares[:2]
    for candidate in (0, 1, secret, PRIME - 1):
        third = (3, interpolate([(0, candidate)] + known, 3))
        assert shamir_combine(known + [third]) == candidate
        assert (third == shares[2]) == (candidate == secret)


@pytest.mark.parametrize("kwargs", [dict(secret=-1, n=3, t=2), dict(secret=PRIME, n=3, t=2),
                                    dict(secret=1, n=3, t=4), dict(secret=1, n=3, t=0)])
def test_shamir_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        shamir_split(**kwargs)


# ----------------------------------------------------------------------------- graph

@pytest.mark.parametrize("n,k", [(10, 2), (11, 3), (100, 14), (7, 6), (5, None), (30, 40)])
def test_neighbour_graph_is_symmetric_and_regular(n, k):
    g = neighbour_graph(n, k, (1, 2))
    degree = n - 1 if k is None or 2 * -(-k // 2) >= n - 1 else 2 * -(-k // 2)
    assert g.shape == (n, degree)
    adjacency = np.zeros((n, n), dtype=int)
    adjacency[np.repeat(np.arange(n), degree), g.ravel()] = 1
    np.testing.assert_array_equal(adjacency, adjacency.T)
    assert adjacency.trace() == 0 and np.all(adjacency.sum(axis=1) == degree)
    np.testing.assert_array_equal(g, neighbour_graph(n, k, (1, 2)))
    if degree < n - 1:
        assert not np.array_equal(g, neighbour_graph(n, k, (1, 3)))


# ------------------------------------------------------------------------------ masks

@pytest.mark.parametrize("cipher", ["aes-ctr", "chacha20"])
@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_mask_prg_cancels_and_is_seeded(cipher, dtype):
    prg = MaskPRG(dtype, cipher)
    d = MaskPRG.CHUNK // np.dtype(dtype).itemsize * 2 + 3        # crosses chunk edges
    y = np.arange(d, dtype=dtype)
    a, b = bytes(range(32)), bytes(range(1, 33))
    prg.apply(y, a, +1)
    first = y.copy()
    prg.apply(y, b, +1)
    prg.apply(y, a, -1)
    prg.apply(y, b, -1)
    np.testing.assert_array_equal(y, np.arange(d, dtype=dtype))
    z = np.arange(d, dtype=dtype)
    np.testing.assert_array_equal(prg.apply(z, a, +1), first)
    assert np.mean(first == np.arange(d)) < 1e-3


# ------------------------------------------------------------------------ secure_sum

@pytest.mark.parametrize("neighbours", [None, 2, "log"])
@pytest.mark.parametrize("bits", [20, 32, 40])
def test_secure_sum_equals_the_plain_quantised_sum(neighbours, bits):
    n, d, seed = 12, 37, (4, 1)
    sa = SecureAggregation(bits=bits, neighbours=neighbours)
    X = inputs(n, d)
    result = run_local(sa, X, seed)
    _, want = reference_sum(sa, X, range(n), seed, n)
    np.testing.assert_array_equal(result.total, want)
    np.testing.assert_array_equal(result.clients, np.arange(n))
    assert result.clipped == np.count_nonzero(np.abs(X) > 1.0)
    bound = n * quantization_step(1.0, bits, n)
    assert np.abs(result.total - np.clip(X, -1, 1).sum(axis=0)).max() <= bound * (1 + 1e-9)


def test_secure_sum_is_deterministic_though_keys_are_random():
    sa = SecureAggregation(neighbours="log")
    X = inputs(20, 9)
    a = run_local(sa, X, (1,), transcript=True)
    b = run_local(sa, X, (1,), transcript=True)
    np.testing.assert_array_equal(a.total, b.total)
    assert a.transcript["public_keys"] != b.transcript["public_keys"]
    assert not np.array_equal(a.transcript["masked"][0], b.transcript["masked"][0])


@pytest.mark.parametrize("bits", [20, 32, 48])
def test_a_masked_vector_is_uniform_over_the_ring(bits):
    """Chi-square on the top byte of one client's masked vector, inputs all zero (the
    quantised vector is then nearly constant); a false failure has probability ALPHA."""
    n, d = 3, 1 << 16
    sa = SecureAggregation(bits=bits)
    result = run_local(sa, np.zeros((n, d)), (9,), transcript=True)
    bins = 256
    critical = stats.chi2.isf(ALPHA, bins - 1)
    for u in range(n):
        y = result.transcript["masked"][u].astype(np.uint64)
        assert y.max() < 2 ** bits
        counts = np.bincount((y >> np.uint64(bits - 8)).astype(np.int64), minlength=bins)
        assert stats.chisquare(counts).statistic < critical
    # the same test rejects the unmasked quantised vector
    q = quantize(np.zeros(d), 1.0, bits, n, np.random.default_rng(0)).astype(np.uint64)
    counts = np.bincount((q >> np.uint64(bits - 8)).astype(np.int64), minlength=bins)
    assert stats.chisquare(counts).statistic > critical


def must_succeed(sa, n, seed, dropped_early, dropped_late):
    """Brute-force rule: at least t masked inputs, and t answering holders for every
    needed secret (b_u of each sender; s_u of each early dropper with a sender neighbour)."""
    g = neighbour_graph(n, sa.degree(n), seed)
    t = sa.reconstruction_threshold(n)
    senders = set(range(n)) - dropped_early
    answering = senders - dropped_late
    if len(senders) < t:
        return False
    for u in range(n):
        holders = set(g[u].tolist()) | {u}
        needed = u in senders or bool(set(g[u].tolist()) & senders)
        if needed and len(holders & answering) < t:
            return False
    return True


@pytest.mark.parametrize("neighbours,threshold", [(None, None), (2, None), (None, 4)])
def test_every_dropout_pattern(neighbours, threshold):
    n, d, seed = 5, 3, (2,)
    sa = SecureAggregation(neighbours=neighbours, threshold=threshold)
    X = inputs(n, d)
    outcomes = set()
    for pattern in itertools.product("ael", repeat=n):   # alive / early / late dropper
        early = {u for u, p in enumerate(pattern) if p == "e"}
        late = {u for u, p in enumerate(pattern) if p == "l"}
        senders = sorted(set(range(n)) - early)
        if must_succeed(sa, n, seed, early, late):
            result = run_local(sa, X, seed, senders, unresponsive=late)
            _, want = reference_sum(sa, X, senders, seed, n)
            np.testing.assert_array_equal(result.total, want)
            np.testing.assert_array_equal(result.clients, senders)
            np.testing.assert_array_equal(result.unresponsive, sorted(late))
            outcomes.add(True)
        else:
            with pytest.raises(SecAggError, match="round abandoned"):
                run_local(sa, X, seed, senders, unresponsive=late)
            outcomes.add(False)
    assert outcomes == {True, False}


def test_server_never_sees_an_individual_input():
    n, d, seed = 8, 200, (3,)
    sa = SecureAggregation(neighbours=4, threshold=3)
    X = inputs(n, d)
    assert must_succeed(sa, n, seed, {4}, {6})
    result = run_local(sa, X, seed, senders=[0, 1, 2, 3, 5, 6, 7], unresponsive={6},
                       transcript=True)
    view = result.transcript
    for u, y in view["masked"].items():
        q = quantize(X[u], 1.0, 32, n, np.random.default_rng((*seed, u)))
        assert np.mean(y == q) < 0.02
    b_owners, s_owners = set(), set()
    for holder, (b, s) in view["unmask_answers"].items():
        assert not set(b) & set(s)
        b_owners |= set(b)
        s_owners |= set(s)
    assert b_owners and s_owners and not b_owners & s_owners
    assert 4 in s_owners and 4 not in b_owners
    # ciphertexts of the shares do not contain the plain share values
    shares = [v for answers in view["unmask_answers"].values() for part in answers
              for v in part.values()]
    blobs = b"".join(c for box in view["ciphertexts"].values() for c in box.values())
    assert not any(y.to_bytes(66, "big") in blobs for y in shares)


def test_simulated_drop_after_masking_keeps_the_inputs():
    n, d, seed = 30, 5, (11,)
    sa = SecureAggregation(neighbours="log", drop_after_masking=0.2)
    X = inputs(n, d)
    result = run_local(sa, X, seed)
    assert 0 < len(result.unresponsive) < n
    _, want = reference_sum(sa, X, range(n), seed, n)
    np.testing.assert_array_equal(result.total, want)
    np.testing.assert_array_equal(run_local(sa, X, seed).unresponsive, result.unresponsive)


def test_a_client_answers_the_unmasking_request_once():
    from cyfed.secagg import _Client
    client = _Client(0, np.array([1, 2]), np.array([0, 1, 2]), 2)
    client.unmask({0, 1})
    with pytest.raises(SecAggError, match="twice"):
        client.unmask({0, 2})


def test_a_tampered_share_abandons_the_round(monkeypatch):
    from cyfed import secagg
    original = secagg._Server.route_shares

    def tamper(self, outboxes):
        inbox = original(self, outboxes)
        blob = bytearray(inbox[1][0])
        blob[-1] ^= 1
        inbox[1][0] = bytes(blob)
        return inbox

    monkeypatch.setattr(secagg._Server, "route_shares", tamper)
    with pytest.raises(SecAggError, match="forged or misrouted"):
        run_local(SecureAggregation(), inputs(4, 3), (1,))


# ------------------------------------------------------------------------ parameters

@pytest.mark.parametrize("kwargs,name", [
    (dict(clip_range=0.0), "clip_range"), (dict(clip_range=float("inf")), "clip_range"),
    (dict(bits=15), "bits"), (dict(bits=63), "bits"), (dict(bits=32.0), "bits"),
    (dict(neighbours=0), "neighbours"), (dict(neighbours="sqrt"), "neighbours"),
    (dict(neighbours=True), "neighbours"),
    (dict(threshold=1), "threshold"), (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"), (dict(threshold="half"), "threshold"),
    (dict(drop_after_masking=1.0), "drop_after_masking"),
    (dict(drop_after_masking=-0.1), "drop_after_masking"),
])
def test_bad_parameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SecureAggregation(**kwargs)


@pytest.mark.parametrize("kwargs,m,name", [
    (dict(), 1, "at least 2"), (dict(neighbours=2, threshold=4), 10, "threshold"),
    (dict(bits=16), 1 << 16, "bits"),
])
def test_check_clients(kwargs, m, name):
    sa = SecureAggregation(**kwargs)
    with pytest.raises(ValueError, match=name):
        sa.check_clients(m)


def test_defaults_follow_the_papers():
    sa = SecureAggregation()
    assert sa.degree(100) == 99 and sa.reconstruction_threshold(100) == 51   # t > n / 2
    plus = SecureAggregation(neighbours="log", threshold=0.5)
    assert plus.degree(1000) == 20 and plus.reconstruction_threshold(1000) == 11
    assert plus.degree(4) == 3


@pytest.mark.parametrize("change,name", [
    (dict(sampled=np.array([2, 1, 0])), "sampled"), (dict(hosted=[[0, 1, 2]]), "hosted"),
    (dict(vectors={5: np.zeros(4)}), "vectors"), (dict(vectors={0: np.zeros(3)}), r"vectors\[0\]"),
    (dict(vectors={0: np.array([0, np.nan, 0, 0])}), "non-finite"), (dict(d=0), "d must"),
    (dict(seed=(-1,)), "seed"), (dict(hosted=np.arange(2)), "hosted on no rank"),
])
def test_bad_call_arguments(change, name):
    args = dict(seed=(1,), sampled=np.arange(3), hosted=np.arange(3),
                vectors={0: np.zeros(4)}, d=4)
    args.update(change)
    with pytest.raises(ValueError, match=name):
        SecureAggregation().secure_sum(LocalComm(), **args)


# ------------------------------------------------------------------------------- MPI

@pytest.mark.mpi
def test_gather_obj_and_scatter_obj():
    got = COMM.gather_obj({"rank": COMM.rank})
    if COMM.rank == 0:
        assert got == [{"rank": r} for r in range(COMM.size)]
    else:
        assert got is None
    objs = [("to", r) for r in range(COMM.size)] if COMM.rank == 0 else None
    assert COMM.scatter_obj(objs) == ("to", COMM.rank)


@pytest.mark.mpi
@pytest.mark.parametrize("neighbours", [None, "log"])
def test_clients_spread_over_ranks_give_the_serial_total(neighbours):
    n, d, seed = 13, 21, (5, 2)
    sa = SecureAggregation(neighbours=neighbours)
    X = inputs(n, d)
    ids = np.arange(n, dtype=np.int64)
    hosted = ids[ids % COMM.size == (COMM.size - 1 - COMM.rank)]   # rank 0 hosts the last ones
    senders = [u for u in hosted.tolist() if u != 4]                 # client 4 drops early
    result = sa.secure_sum(COMM, seed, ids, hosted, {u: X[u] for u in senders}, d,
                           unresponsive={7})
    serial = run_local(sa, X, seed, [u for u in range(n) if u != 4], unresponsive={7})
    if COMM.rank == 0:
        np.testing.assert_array_equal(result.total, serial.total)
        np.testing.assert_array_equal(result.clients, serial.clients)
        assert result.clipped == serial.clipped
        assert result.bytes_up["masked_input"] == (n - 1) * d * 4
    else:
        assert result is None


@pytest.mark.mpi
def test_too_many_drops_raise_on_every_rank():
    n, d = 6, 4
    ids = np.arange(n, dtype=np.int64)
    hosted = ids[ids % COMM.size == COMM.rank]
    vectors = {u: np.zeros(d) for u in hosted.tolist() if u == 0}    # one sender < t
    with pytest.raises(SecAggError, match="round abandoned"):
        SecureAggregation().secure_sum(COMM, (1,), ids, hosted, vectors, d)
    late = set(range(1, n))                                           # nobody else answers
    vectors = {u: np.zeros(d) for u in hosted.tolist()}
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        SecureAggregation().secure_sum(COMM, (1,), ids, hosted, vectors, d, unresponsive=late)


@pytest.mark.mpi
def test_a_bad_vector_on_the_last_rank_raises_on_every_rank():
    n, d = 6, 4
    ids = np.arange(n, dtype=np.int64)
    hosted = ids[ids % COMM.size == COMM.rank]
    vectors = {u: np.zeros(d if COMM.rank != COMM.size - 1 else d + 1) for u in hosted.tolist()}
    with pytest.raises(ValueError):
        SecureAggregation().secure_sum(COMM, (1,), ids, hosted, vectors, d)


@pytest.mark.mpi
def test_a_client_hosted_twice_raises_on_every_rank():
    if COMM.size == 1:
        pytest.skip("needs two ranks")
    ids = np.arange(4, dtype=np.int64)
    hosted = ids if COMM.rank < 2 else ids[:0]
    with pytest.raises(ValueError, match="hosted on ranks"):
        SecureAggregation().secure_sum(COMM, (1,), ids, hosted, {}, 3)
