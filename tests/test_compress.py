"""Tests of cyfed.compress: round trips, payload sizes, statistics, error feedback, errors.

Monte Carlo checks use fixed seeds and thresholds of >= 5.5 standard errors
(false-failure probability < 1e-7 each under a normal approximation).
"""
import math

import numpy as np
import pytest

from cyfed import compress as C

H = C.HEADER_NBYTES


def vec(d, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(d).astype(dtype)


def indices(payload, k, dtype):
    p = np.dtype(dtype).itemsize
    return np.frombuffer(payload[H + k * p:H + k * (p + 4)].tobytes(), dtype=np.uint32)


# -- FP16 / BF16 --------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 7, 8, 1001])
def test_fp16_round_trip(dtype, d):
    x = vec(d, dtype) * 100
    payload = C.FP16().encode(x)
    y = C.decode(payload)
    assert y.dtype == dtype and y.shape == x.shape
    assert len(payload) == C.FP16().payload_nbytes(payload) == H + 2 * d
    np.testing.assert_array_equal(y, x.astype(np.float32).astype(np.float16).astype(dtype))


def bf16_reference(x):
    """Round-to-nearest-even truncation of the float32 bits (numpy integer math)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return u.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("d", [1, 9, 1001])
def test_bf16_round_trip(dtype, d):
    x = vec(d, dtype) * 1e3
    y = C.BF16().decode(C.BF16().encode(x))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, bf16_reference(x).astype(dtype))
    np.testing.assert_array_less(np.abs(y - x), 2.0**-8 * np.abs(x) + 1e-30)


def test_bf16_ties_to_even():
    # 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even (1); 1 + 3 2^-8 -> 1 + 2^-6
    x = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8)], dtype=np.float32)
    np.testing.assert_array_equal(C.BF16().decode(C.BF16().encode(x)), [1, 1 + 2.0**-6, -1])


# -- QSGD ---------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [1, 2, 3, 7, 15, 100, 127])
@pytest.mark.parametrize("d", [1, 5, 8, 4099, 10000])
def test_qsgd_round_trip_structure(dtype, levels, d):
    x = vec(d, dtype, seed=d)
    q = C.QSGD(levels)
    payload = q.encode(x, rng=7)
    width = 1 + levels.bit_length()
    assert len(payload) == q.max_payload_nbytes(d, dtype) == H + width * math.ceil(d / 8)
    y = q.decode(payload)
    assert y.dtype == dtype and y.shape == (d,)
    norm = np.linalg.norm(x.astype(np.float64))
    level = np.abs(y.astype(np.float64)) * levels / norm
    np.testing.assert_allclose(level, np.round(level), atol=1e-4)
    ratio = np.abs(x.astype(np.float64)) * levels / norm
    assert np.all((level >= np.floor(ratio) - 1e-4) & (level <= np.ceil(ratio) + 1e-4))
    assert np.all((y == 0) | (np.sign(y) == np.sign(x)))
    np.testing.assert_array_equal(q.decode(q.encode(x, rng=7)), y)    # deterministic per seed


def test_qsgd_level_widths():
    assert [1 + s.bit_length() for s in (1, 3, 7, 15, 127)] == [2, 3, 4, 5, 8]
    assert C.QSGD(3).max_payload_nbytes(16, np.float32) == H + 2 * 3


@pytest.mark.parametrize("levels", [1, 4])
def test_qsgd_unbiased_and_variance_bound(dtype, levels):
    d, n = 64, 20000
    x = vec(d, dtype, seed=3)
    x[:4] = 0                                   # exact zeros stay zero
    q = C.QSGD(levels)
    rng = np.random.default_rng(11)
    Y = np.array([q.decode(q.encode(x, rng=rng)) for _ in range(n)], dtype=np.float64)
    norm = np.linalg.norm(x.astype(np.float64))
    # unbiased: per coordinate, |mean - x_i| <= 6 standard errors (Bernoulli per level step)
    r = np.abs(x.astype(np.float64)) * levels / norm
    p = r - np.floor(r)
    se = norm / levels * np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(Y.mean(axis=0) - x) <= 6 * se + 1e-6 * norm)
    assert np.all(Y[:, :4] == 0)
    # exact expected squared error: sum_i (norm/s)^2 p_i (1 - p_i), below Lemma 3.1's bound
    err = ((Y - x) ** 2).sum(axis=1)
    expected = (norm / levels) ** 2 * np.sum(p * (1 - p))
    assert abs(err.mean() - expected) <= 6 * err.std() / np.sqrt(n) + 1e-6 * norm**2
    assert expected <= min(d / levels**2, np.sqrt(d) / levels) * norm**2


def test_qsgd_zero_vector(dtype):
    y = C.QSGD(5).decode(C.QSGD(5).encode(np.zeros(9, dtype)))
    np.testing.assert_array_equal(y, np.zeros(9, dtype))


# -- top-k ------------------------------------------------------------------------------------

@pytest.mark.parametrize("d, k", [(1, 1), (10, 3), (1000, 10), (100_003, 1000), (200_000, 2000),
                                  (200_000, 150_000), (70_000, 70_000)])
def test_topk_matches_argpartition(dtype, d, k):
    x = vec(d, dtype, seed=k)
    t = C.TopK(k)
    payload = t.encode(x)
    assert len(payload) == t.max_payload_nbytes(d, dtype) == H + k * (4 + np.dtype(dtype).itemsize)
    ref = np.sort(np.argpartition(np.abs(x), d - k)[d - k:])
    np.testing.assert_array_equal(indices(payload, k, dtype), ref)
    y = t.decode(payload)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[ref], x[ref])
    assert np.count_nonzero(np.delete(y, ref)) == 0


def test_topk_fraction():
    x = vec(1000, np.float64)
    assert len(C.TopK(0.01).encode(x)) == H + 10 * 12
    assert len(C.TopK(0.0001).encode(x)) == H + 1 * 12          # at least one


def test_topk_ties_lowest_index_wins(dtype):
    x = np.array([1, -3, 2, 3, -2, 3, 0, -0.0, 2], dtype=dtype)
    for k, want in [(1, [1]), (2, [1, 3]), (3, [1, 3, 5]), (4, [1, 2, 3, 5]),
                    (5, [1, 2, 3, 4, 5]), (8, [0, 1, 2, 3, 4, 5, 6, 8])]:
        np.testing.assert_array_equal(indices(C.TopK(k).encode(x), k, dtype), want)


def test_topk_ties_large(dtype):
    # many equal magnitudes across the threshold, at sizes where the sampled path runs
    rng = np.random.default_rng(5)
    x = rng.integers(-20, 21, 300_000).astype(dtype)
    k = 5000
    got = indices(C.TopK(k).encode(x), k, dtype)
    a = np.abs(x)
    order = np.lexsort((np.arange(x.size), -a))    # by magnitude desc, then index asc
    np.testing.assert_array_equal(got, np.sort(order[:k]))


def test_topk_adversarial_sample():
    # the large values sit outside every sampled chunk: the fallback must still be exact
    x = np.zeros(1 << 20, dtype=np.float32)
    x[100:1100] = np.arange(1, 1001)
    got = indices(C.TopK(500).encode(x), 500, np.float32)
    np.testing.assert_array_equal(got, np.arange(600, 1100))


# -- random-k ---------------------------------------------------------------------------------

@pytest.mark.parametrize("d, k", [(1, 1), (10, 3), (1000, 600), (1000, 1000), (100_000, 100)])
def test_randk_round_trip(dtype, d, k):
    x = vec(d, dtype) + 5                      # no zeros: kept coordinates show
    r = C.RandK(k)
    payload = r.encode(x, rng=3)
    assert len(payload) == r.max_payload_nbytes(d, dtype) == H + k * np.dtype(dtype).itemsize
    y = r.decode(payload)
    kept = np.flatnonzero(y)
    assert y.dtype == dtype and len(kept) == k
    np.testing.assert_allclose(y[kept], x[kept] * (d / k), rtol=1e-6)
    np.testing.assert_array_equal(C.RandK(k, unbiased=False).decode(
        C.RandK(k, unbiased=False).encode(x, rng=3))[kept], x[kept])  # same seed, same set
    np.testing.assert_array_equal(r.decode(r.encode(x, rng=3)), y)


def test_randk_unbiased(dtype):
    d, k, n = 50, 5, 40000
    x = vec(d, dtype, seed=1)
    r = C.RandK(k)
    rng = np.random.default_rng(2)
    Y = np.array([r.decode(r.encode(x, rng=rng)) for _ in range(n)], dtype=np.float64)
    # coordinate i: (d/k) x_i with probability k/d, else 0
    p = k / d
    se = np.abs(x) * (d / k) * np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(Y.mean(axis=0) - x) <= 6 * se)
    counts = (Y != 0).sum(axis=0)               # each coordinate kept with probability k/d
    assert np.all(np.abs(counts - n * p) <= 6 * np.sqrt(n * p * (1 - p)))


# -- scaled sign ------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 8, 13, 1001])
def test_scaled_sign(dtype, d):
    x = vec(d, dtype)
    x[0] = 0
    payload = C.ScaledSign().encode(x)
    assert len(payload) == H + math.ceil(d / 8)
    y = C.decode(payload)
    scale = np.abs(x.astype(np.float64)).sum() / d
    want = np.where(x < 0, -scale, scale).astype(dtype)
    np.testing.assert_allclose(y, want, rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert y.dtype == dtype


# -- PowerSGD ---------------------------------------------------------------------------------

def test_powersgd_exact_for_rank_r(dtype):
    rng = np.random.default_rng(0)
    M = (rng.standard_normal((60, 3)) @ rng.standard_normal((3, 40))).astype(dtype)
    ps = C.PowerSGD(3, shape=(60, 40))
    payload = ps.encode(M.ravel(), key="client-7")
    assert len(payload) == ps.max_payload_nbytes((60, 40), dtype) \
        == H + (60 + 40) * 3 * np.dtype(dtype).itemsize
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for _ in range(3):                              # and stays exact, warm-started
        y = ps.decode(payload)
        assert y.shape == (2400,) and y.dtype == dtype
        np.testing.assert_allclose(y, M.ravel(), atol=tol * np.abs(M).max())
        payload = ps.encode(M.ravel(), key="client-7")
    Y = C.decode(ps.encode(M))                      # a 2-d x keeps its shape
    assert Y.shape == M.shape


def test_powersgd_error_decreases_with_warm_start(dtype):
    rng = np.random.default_rng(1)
    U, _ = np.linalg.qr(rng.standard_normal((80, 80)))
    V, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    s = 0.8 ** np.arange(50)
    M = ((U[:, :50] * s) @ V.T).astype(dtype)
    ps = C.PowerSGD(4)
    errors = [np.linalg.norm(ps.decode(ps.encode(M, rng=0)) - M) for _ in range(15)]
    best = np.sqrt(np.sum(s[4:] ** 2))              # Eckart-Young
    assert all(b <= a * (1 + 1e-4) for a, b in zip(errors, errors[1:]))
    assert errors[0] > 1.05 * best and errors[-1] < 1.01 * best


def test_powersgd_state_dict_round_trip():
    M = vec(600, np.float64).reshape(30, 20)
    a, b = C.PowerSGD(2), C.PowerSGD(2)
    a.encode(M, key=1)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"1"}
    np.testing.assert_array_equal(a.encode(M, key=1), b.encode(M, key=1))


# -- error feedback ---------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: C.TopK(0.05), lambda: C.ScaledSign(),
                                  lambda: C.QSGD(2), lambda: C.RandK(7, unbiased=False),
                                  lambda: C.BF16(), lambda: C.PowerSGD(1, shape=(10, 10))])
def test_error_feedback_preserves_sum(dtype, make):
    ef = C.ErrorFeedback(make())
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal(100).astype(dtype) for _ in range(30)]
    sent = np.zeros(100)
    for x in xs:
        payload = ef.encode(x, key=3, rng=rng)
        sent += ef.decode(payload)
    total = np.sum(xs, axis=0, dtype=np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(sent + ef.residual(3), total, atol=tol * np.abs(total).max())
    assert ef.residual(4) is None


@pytest.mark.parametrize("make", [lambda: C.TopK(3), lambda: C.QSGD(7),
                                  lambda: C.PowerSGD(1, shape=(4, 5))])
def test_error_feedback_is_used_like_its_compressor(make):
    """The compressors' calls, positional rng included; the first payload is C's own."""
    x = vec(20, np.float64)
    comp, ef = make(), C.ErrorFeedback(make())
    for codec in (comp, ef):
        assert codec.max_payload_nbytes((4, 5) if isinstance(comp, C.PowerSGD) else 20,
                                        np.float64) == len(codec.encode(x, 7, key=1))
    first = C.ErrorFeedback(make()).encode(x, 5, key=2)
    np.testing.assert_array_equal(first, make().encode(x, 5, key=2))
    np.testing.assert_array_equal(ef.decode(first), C.decode(first))
    assert ef.payload_nbytes(first) == len(first)
    ef.encode(x)                                                # key=None is a key too
    assert ef.residual(None) is not None and ef.state_dict().keys() == {"1", "None"}


def test_error_feedback_keys_and_state():
    ef = C.ErrorFeedback(C.TopK(1))
    ef.encode(np.array([1.0, 2.0]), key=0)
    ef.encode(np.array([5.0, 1.0]), key="b")
    state = ef.state_dict()
    assert sorted(state) == ["0", "b"]
    np.testing.assert_array_equal(state["0"], [1.0, 0.0])
    other = C.ErrorFeedback(C.TopK(1))
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.encode(np.array([0.5, 0.0]), key=0),
                                  ef.encode(np.array([0.5, 0.0]), key=0))


# -- payloads ---------------------------------------------------------------------------------

ALL = [C.FP16(), C.BF16(), C.QSGD(3), C.TopK(5), C.RandK(5), C.ScaledSign()]


@pytest.mark.parametrize("comp", ALL, ids=repr)
def test_payload_is_self_describing(dtype, comp):
    x = vec(37, dtype)
    payload = comp.encode(x, rng=1)
    assert payload.dtype == np.uint8 and payload.ndim == 1 and payload.flags.c_contiguous
    assert comp.payload_nbytes(payload) == len(payload) == comp.max_payload_nbytes(37, dtype)
    y = comp.decode(payload)
    np.testing.assert_array_equal(C.decode(bytes(payload)), y)     # bytes, receiver alone
    buf = np.zeros(len(payload) + 3, np.uint8)                     # unaligned slice
    buf[3:] = payload
    np.testing.assert_array_equal(C.decode(buf[3:]), y)
    with pytest.raises(ValueError, match="payload"):
        comp.decode(payload[:-1])


def test_decode_rejects_wrong_codec_and_bad_index():
    with pytest.raises(ValueError, match="not a TopK payload"):
        C.TopK(1).decode(C.FP16().encode(np.ones(3)))
    payload = C.TopK(1).encode(np.array([0.0, 2.0]))
    payload[-4:] = np.frombuffer(np.uint32(9).tobytes(), np.uint8)
    with pytest.raises(ValueError, match="index"):
        C.decode(payload)
    payload = C.FP16().encode(np.ones(3))
    payload[0] = 0                                              # no compressor's codec id
    with pytest.raises(ValueError, match="unknown codec id 0"):
        C.decode(payload)


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make, arg", [
    (lambda: C.TopK(0), "k"), (lambda: C.TopK(-3), "k"), (lambda: C.TopK(1.5), "k"),
    (lambda: C.TopK(0.0), "k"), (lambda: C.RandK(True), "k"), (lambda: C.QSGD(0), "levels"),
    (lambda: C.QSGD(128), "levels"), (lambda: C.PowerSGD(0), "rank"),
    (lambda: C.PowerSGD(2, shape=(3,)), "shape")])
def test_bad_parameters(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


@pytest.mark.parametrize("comp", ALL, ids=repr)
def test_bad_input(comp):
    with pytest.raises(ValueError, match="x must be a non-empty 1-d"):
        comp.encode(np.ones((2, 3)))
    with pytest.raises(ValueError, match="x must be a non-empty 1-d"):
        comp.encode(np.ones(0))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        comp.encode(np.ones(3, dtype=np.int64))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(40)
        x[17] = bad
        with pytest.raises(ValueError, match=r"x contains NaN or infinity \(x\[17\]"):
            comp.encode(x)


def test_k_larger_than_d():
    with pytest.raises(ValueError, match="k must be <= d = 3"):
        C.TopK(4).encode(np.ones(3))
    with pytest.raises(ValueError, match="k must be <= d = 3"):
        C.RandK(4).encode(np.ones(3))


def test_powersgd_bad_input():
    ps = C.PowerSGD(3)
    with pytest.raises(ValueError, match="shape"):
        ps.encode(np.ones(12))
    with pytest.raises(ValueError, match="does not match"):
        ps.encode(np.ones(12), shape=(5, 3))
    with pytest.raises(ValueError, match="rank must be <= min"):
        ps.encode(np.ones((2, 6)))
    with pytest.raises(ValueError, match="NaN"):
        ps.encode(np.full((4, 4), np.nan))


def test_qsgd_norm_overflow():
    with pytest.raises(ValueError, match="overflows"):
        C.QSGD(1).encode(np.full(4, 1e200))


def test_error_feedback_needs_a_compressor():
    with pytest.raises(TypeError, match="compressor"):
        C.ErrorFeedback(np.float16)
