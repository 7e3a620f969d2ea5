"""Robust aggregation rules of cyfed.aggregate against readable numpy/scipy references.

Every reference below is plain float64 numpy/scipy written straight from the
definitions (the inputs are first rounded to the working dtype, so a float32
call is compared with the exact maths on exactly the float32 numbers it got):

    median            np.median(U, axis=0)
    trimmed_mean      scipy.stats.trim_mean(U, beta, axis=0)   (cut int(beta K) per tail)
    krum_scores       score_i = sum of the squared distances from row i to its
                      max(1, K - f - 2) nearest other rows
    krum              lowest score (first index on ties); Multi-Krum: weighted mean
                      of the num_to_keep lowest-scoring rows
    bulyan            theta = K - 2f rows by repeated Krum, then per coordinate the
                      mean of the beta = theta - 2f selected values closest to the
                      selected rows' median (ties towards the earlier-selected row)
    geometric_median  smoothed Weiszfeld from the weighted mean
    centered_clipping v <- v + mean_i (x_i - v) min(1, tau / ||x_i - v||)
    clip_by_norm      row * min(1, max_norm / ||row||)

Tolerances are relative to the size of what is added up (max |U| unless said):
float64 1e-12, float32 1e-5.  Properties that hold exactly in floating point
(order statistics commute with monotone rounding, scaling by a power of two is
exact) are checked bit for bit.
"""
import re

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cyfed.aggregate import (bulyan, centered_clipping, clip_by_norm, finite_rows,
                             geometric_median, krum, krum_scores, median, trimmed_mean,
                             weighted_mean)
from reference import RTOL

DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
DTYPE_IDS = ["float32", "float64"]
# Client counts around the comparator-network sizes, and widths around the tile
# widths (16 float64 / 32 float32 coordinates per tile).
NETWORK_KS = list(range(1, 41)) + [63, 64, 65, 100, 128, 129]
TILE_DS = [1, 15, 16, 17, 31, 32, 33, 65]
BETAS = [0.0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.45, 0.49]
FAST = settings(max_examples=50, deadline=None)


# -- references --

def as64(U, dtype):
    """U rounded to the working dtype, held in float64."""
    return np.asarray(U).astype(dtype).astype(np.float64)


def krum_scores_ref(X, f):
    """score_i = sum of the m = max(1, K - f - 2) smallest ||x_i - x_j||^2, j != i."""
    K = len(X)
    m = max(1, K - f - 2)
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=2)
    scores = np.empty(K)
    for i in range(K):
        others = np.delete(D[i], i)
        scores[i] = np.sort(others)[:m].sum()
    return scores


def krum_ref(X, f, num_to_keep=1, weights=None):
    scores = krum_scores_ref(X, f)
    if num_to_keep == 1:
        return X[int(np.argmin(scores))]
    keep = np.argsort(scores, kind="stable")[:num_to_keep]
    w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.average(X[keep], axis=0, weights=w[keep])


def bulyan_ref(X, f):
    """Bulyan (El Mhamdi et al. 2018) exactly as cyfed.aggregate.bulyan documents it."""
    K, d = X.shape
    theta = K - 2 * f
    remaining = list(range(K))
    selected = []
    for _ in range(theta):
        if len(remaining) == 1:                      # only for f = 0: nothing to compare
            selected.append(remaining.pop())
            continue
        scores = krum_scores_ref(X[remaining], f)    # Krum with the same f on what is left
        selected.append(remaining.pop(int(np.argmin(scores))))
    S = X[selected]                                  # rows in selection order
    beta = theta - 2 * f
    med = np.median(S, axis=0)
    out = np.empty(d)
    for c in range(d):
        closest = np.argsort(np.abs(S[:, c] - med[c]), kind="stable")[:beta]
        out[c] = S[closest, c].mean()
    return out


def geometric_median_ref(X, weights=None, eps=1e-6, maxiter=100, tol=1e-7):
    """Smoothed Weiszfeld (RFA, Pillutla et al.) from the weighted mean."""
    w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=np.float64)
    v = w @ X / w.sum()
    for _ in range(maxiter):
        b = w / np.maximum(eps, np.linalg.norm(X - v, axis=1))
        v_new = b @ X / b.sum()
        done = np.linalg.norm(v_new - v) <= tol * max(1.0, np.linalg.norm(v))
        v = v_new
        if done:
            break
    return v


def geo_objective(X, v, weights=None):
    w = np.ones(len(X)) if weights is None else weights
    return float(w @ np.linalg.norm(X - v, axis=1))


def centered_clipping_ref(X, tau, center=None, iterations=1):
    K, d = X.shape
    v = np.zeros(d) if center is None else np.asarray(center, dtype=np.float64).copy()
    for _ in range(iterations):
        diff = X - v
        norms = np.linalg.norm(diff, axis=1)
        scale = np.where(norms == 0, 0.0, np.minimum(1.0, tau / np.where(norms == 0, 1, norms)))
        v = v + (scale[:, None] * diff).sum(axis=0) / K
    return v


def clip_by_norm_ref(X, max_norm):
    norms = np.linalg.norm(X, axis=1)
    scale = np.minimum(1.0, max_norm / np.where(norms == 0, 1, norms))
    return X * scale[:, None]


def assert_close(got, ref, dtype, scale, err_msg=""):
    """|got - ref| <= RTOL[dtype] * scale everywhere, and got has the working dtype."""
    got = np.asarray(got)
    assert got.dtype == dtype, f"dtype {got.dtype} != {dtype} {err_msg}"
    assert got.shape == np.shape(ref), f"shape {got.shape} != {np.shape(ref)} {err_msg}"
    assert np.isfinite(got).all(), f"non-finite result {got} {err_msg}"
    err = float(np.max(np.abs(got.astype(np.float64) - ref), initial=0.0))
    tol = RTOL[np.dtype(dtype)] * max(scale, 1e-300)
    assert err <= tol, f"max abs error {err:.3e} > {tol:.3e} {err_msg}"


def size(*arrays):
    return max(float(np.max(np.abs(a), initial=0.0)) for a in arrays)


# -- strategies --

def finite_floats(dtype):
    """Finite floats of this width, |x| in {0} u [1e-6, 1e3]: no overflow or underflow
    anywhere (squared distances included), so scalings by powers of two are exact."""
    width = 32 if np.dtype(dtype) == np.float32 else 64
    return st.floats(-1e3, 1e3, width=width, allow_subnormal=False).map(
        lambda x: 0.0 if abs(x) < 1e-6 else x)


def matrices(dtype, rows=(1, 12), cols=(1, 5)):
    shapes = st.tuples(st.integers(*rows), st.integers(*cols))
    return shapes.flatmap(lambda s: hnp.arrays(dtype, s, elements=finite_floats(dtype)))


def small_ints(dtype, rows, cols=(1, 4)):
    """Small-integer matrices: every distance and sum is exact, ties are plentiful."""
    shapes = st.tuples(st.integers(*rows), st.integers(*cols))
    return shapes.flatmap(lambda s: hnp.arrays(dtype, s, elements=st.integers(-3, 3),
                                               fill=st.nothing()))


def normal_rows(K, d, dtype, seed):
    return np.random.default_rng(seed).standard_normal((K, d)).astype(dtype)


# -- median, trimmed mean --

@pytest.mark.parametrize("K", NETWORK_KS)
def test_median_matches_numpy_around_network_sizes(K, dtype):
    rng = np.random.default_rng(K)
    for d in TILE_DS:
        for kind in ("normal", "ties"):
            if kind == "normal":
                U = rng.standard_normal((K, d)).astype(dtype)
            else:                                    # many equal values per coordinate
                U = rng.integers(-2, 3, (K, d)).astype(dtype)
            got = median(U)
            ref = np.median(as64(U, dtype), axis=0)
            msg = f"K={K} d={d} {kind}"
            if K % 2:                                # an order statistic: exact
                assert got.dtype == dtype
                np.testing.assert_array_equal(got, ref.astype(dtype), err_msg=msg)
            else:
                assert_close(got, ref, dtype, size(U), msg)


@pytest.mark.parametrize("K", NETWORK_KS)
def test_trimmed_mean_matches_scipy_around_network_sizes(K, dtype):
    rng = np.random.default_rng(1000 + K)
    for d in (1, 17, 33):
        U = rng.standard_normal((K, d)).astype(dtype)
        U[rng.integers(K, size=d), np.arange(d)] = 1e3      # an outlier per coordinate
        for beta in BETAS:
            ref = scipy.stats.trim_mean(as64(U, dtype), beta, axis=0)
            assert_close(trimmed_mean(U, beta), ref, dtype, size(U), f"K={K} d={d} beta={beta}")


def test_trimmed_mean_zero_beta_is_the_mean_and_large_beta_cuts_int_beta_k():
    rng = np.random.default_rng(3)
    U = rng.standard_normal((10, 6))
    np.testing.assert_allclose(trimmed_mean(U, 0.0), U.mean(axis=0), rtol=0, atol=1e-14)
    S = np.sort(U, axis=0)
    # int(0.29 * 10) = 2 per tail; int(0.3 * 10) = 3; int(0.1 * 30) = int(3.0000000000000004) = 3
    np.testing.assert_allclose(trimmed_mean(U, 0.29), S[2:8].mean(axis=0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(trimmed_mean(U, 0.3), S[3:7].mean(axis=0), rtol=0, atol=1e-14)
    U30 = rng.standard_normal((30, 3))
    np.testing.assert_allclose(trimmed_mean(U30, 0.1), np.sort(U30, axis=0)[3:27].mean(axis=0),
                               rtol=0, atol=1e-14)
    # odd K, beta just below 1/2: only the median survives
    U7 = rng.standard_normal((7, 4))
    np.testing.assert_array_equal(trimmed_mean(U7, 0.49), np.median(U7, axis=0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@FAST
@given(data=st.data())
def test_median_and_trimmed_mean_on_arbitrary_floats(dtype, data):
    U = data.draw(matrices(dtype, rows=(1, 14)))
    beta = data.draw(st.floats(0.0, 0.499))
    K = len(U)
    X = as64(U, dtype)
    med, tm = median(U), trimmed_mean(U, beta)
    if K % 2:
        np.testing.assert_array_equal(med, np.median(X, axis=0).astype(dtype))
    else:
        assert_close(med, np.median(X, axis=0), dtype, size(U))
    assert_close(tm, scipy.stats.trim_mean(X, beta, axis=0), dtype, size(U))
    # bounds: the median between the coordinate min and max exactly; the trimmed
    # mean between the order statistics it keeps, k and K-1-k (up to its rounding)
    S = np.sort(X, axis=0)
    k = int(beta * K)
    assert np.all(med >= S[0]) and np.all(med <= S[-1])
    slack = RTOL[dtype] * size(U)
    assert np.all(tm >= S[k] - slack) and np.all(tm <= S[K - 1 - k] + slack)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@FAST
@given(data=st.data())
def test_median_and_trimmed_mean_are_permutation_invariant(dtype, data):
    U = data.draw(matrices(dtype, rows=(1, 14)))
    perm = np.array(data.draw(st.permutations(range(len(U)))), dtype=np.intp)
    beta = data.draw(st.sampled_from(BETAS))
    np.testing.assert_array_equal(median(U[perm]), median(U))          # same order statistics
    assert_close(trimmed_mean(U[perm], beta), trimmed_mean(U, beta).astype(np.float64), dtype,
                 size(U))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@FAST
@given(data=st.data())
def test_median_and_trimmed_mean_translate_and_scale(dtype, data):
    U = data.draw(matrices(dtype, rows=(1, 14)))
    c = np.array(data.draw(hnp.arrays(dtype, U.shape[1], elements=finite_floats(dtype))))
    beta = data.draw(st.sampled_from(BETAS))
    a = data.draw(st.sampled_from([0.25, 2.0, 8.0]))
    neg = data.draw(st.sampled_from([-1.0, -2.0]))
    K = len(U)
    Uc = U + c                                       # rounded in the working dtype
    # translation: rounding is monotone, so order statistics commute with it (odd K)
    if K % 2:
        np.testing.assert_array_equal(median(Uc), (median(U) + c).astype(dtype))
    assert_close(median(Uc), median(U).astype(np.float64) + c, dtype, size(U, c))
    assert_close(trimmed_mean(Uc, beta), trimmed_mean(U, beta).astype(np.float64) + c, dtype,
                 size(U, c))
    # scaling by a power of two is exact, and so must the results be
    aU = (a * U).astype(dtype)
    np.testing.assert_array_equal(median(aU), a * median(U))
    np.testing.assert_array_equal(trimmed_mean(aU, beta), a * trimmed_mean(U, beta))
    # a negative factor reverses the order: the median is still exact, the trimmed
    # mean up to the order of its sum
    nU = (neg * U).astype(dtype)
    np.testing.assert_array_equal(median(nU), neg * median(U))
    assert_close(trimmed_mean(nU, beta), neg * trimmed_mean(U, beta).astype(np.float64), dtype,
                 abs(neg) * size(U))


# -- krum --

@pytest.mark.parametrize("K,f", [(3, 0), (5, 1), (7, 2), (10, 3), (20, 4), (33, 15), (64, 5)])
def test_krum_scores_match_the_reference(K, f, dtype):
    for d in (1, 7, 40):
        U = normal_rows(K, d, dtype, seed=K * 100 + d)
        U[0] += 20.0                                 # a far-away (malicious) row
        ref = krum_scores_ref(as64(U, dtype), f)
        got = krum_scores(U, f)
        assert got.dtype == np.float64 and got.shape == (K,)
        np.testing.assert_allclose(got, ref, rtol=0, atol=RTOL[dtype] * size(ref),
                                   err_msg=f"d={d}")
        best = int(np.argmin(ref))
        out = krum(U, f)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, U[best])              # the row itself, bit for bit
        assert best != 0                                         # never the outlier


def test_krum_scores_count_max_one_nearest_neighbours():
    """K - f - 2 neighbours, but at least one (f large relative to K)."""
    X = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    D = (X - X.T) ** 2
    # f = 1: 5 - 1 - 2 = 2 nearest others
    expect = [np.sort(np.delete(D[i], i))[:2].sum() for i in range(5)]
    np.testing.assert_array_equal(krum_scores(X, 1), expect)
    # f = 3: 5 - 3 - 2 = 0 -> 1 nearest other.  Beyond Krum's bound K >= 2f + 3 the
    # scores may also be refused; if given, they follow the max(1, .) rule.  (Inside
    # the bound K - f - 2 >= f + 1 >= 1: the max matters within Bulyan's repeated Krum,
    # tested there.)
    expect = [np.sort(np.delete(D[i], i))[:1].sum() for i in range(5)]
    try:
        got = krum_scores(X, 3)
    except ValueError as err:
        assert re.search(r"2\s*\*\s*num_malicious\s*\+\s*3|\b9\b", str(err)), str(err)
    else:
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("K", [5, 32, 33, 40, 64])
def test_krum_scores_are_distances_even_far_from_the_origin(K, dtype):
    """Client updates are alike: rows close together, far from the origin.  The Gram
    identity ||a||^2 + ||b||^2 - 2 a.b cancels to noise there (in float32 it is off
    by percents); the scores must be the squared distances to the dtype's accuracy,
    and Krum must pick the row the true distances pick."""
    rng = np.random.default_rng(K)
    U = (5.0 + 0.01 * rng.standard_normal((K, 100))).astype(dtype)
    f = 1 if K < 7 else 2
    U[:f] += 0.05                                    # attackers, slightly off
    ref = krum_scores_ref(as64(U, dtype), f)
    np.testing.assert_allclose(krum_scores(U, f), ref, rtol=0, atol=RTOL[dtype] * size(ref))
    np.testing.assert_array_equal(krum(U, f), U[int(np.argmin(ref))])
    keep = np.argsort(ref, kind="stable")[:K // 2]
    assert_close(krum(U, f, num_to_keep=K // 2), as64(U, dtype)[keep].mean(axis=0), dtype,
                 size(U))
    if K >= 4 * f + 3:                               # Bulyan on the same rows
        assert_close(bulyan(U, f), bulyan_ref(as64(U, dtype), f), dtype, size(U))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_krum_ties_go_to_the_first_index(dtype):
    # all rows equal: every score is 0, row 0 wins (and is returned exactly)
    U = np.tile(np.array([1.5, -2.0, 0.25], dtype=dtype), (7, 1))
    np.testing.assert_array_equal(krum_scores(U, 1), np.zeros(7))
    np.testing.assert_array_equal(krum(U, 1), U[0])
    # a symmetric configuration: rows 1 and 3 tie for the lowest score
    X = np.array([[-10.0, 0], [-1, 0], [0, 5], [1, 0], [10, 0]], dtype=dtype)
    s = krum_scores(X, 0)
    assert s[1] == s[3] and s[1] == s.min()
    np.testing.assert_array_equal(krum(X, 0), X[1])
    np.testing.assert_array_equal(krum(X[::-1].copy(), 0), X[3])
    # duplicate rows score exactly the same
    Y = normal_rows(6, 4, dtype, seed=5)
    Y = np.vstack([Y, Y[2:3], Y[2:3]])                # rows 2, 6, 7 equal
    s = krum_scores(Y, 1)
    assert s[2] == s[6] == s[7]
    best = int(np.argmin(krum_scores_ref(as64(Y, dtype), 1)))
    np.testing.assert_array_equal(krum(Y, 1), Y[best])
    # Multi-Krum with tied scores keeps the earlier rows: the four inner points of a
    # symmetric cross all score 2 + 2 + 4 + 361 + 401 = 770 (f = 1, K = 8: 5 nearest)
    Z = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [20, 0], [0, 20], [-20, 0], [0, -20]],
                 dtype=dtype)
    np.testing.assert_array_equal(krum_scores(Z, 1)[:4], [770.0] * 4)
    w = np.array([1.0, 3.0, 2.0, 5.0, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(krum(Z, 1), Z[0])
    assert_close(krum(Z, 1, num_to_keep=2, weights=w), np.array([0.25, 0.75]), dtype, 1.0)
    assert_close(krum(Z, 1, num_to_keep=3, weights=w), np.array([-1 / 6, 0.5]), dtype, 1.0)
    assert_close(krum(Z[::-1].copy(), 1, num_to_keep=2), np.array([-0.5, -0.5]), dtype, 1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@FAST
@given(data=st.data())
def test_krum_and_multi_krum_on_small_integers_match_the_reference_exactly(dtype, data):
    """Integer rows: every score is an exact integer, so selection ties are real ties
    and must go to the first index (Multi-Krum: a stable sort of the scores)."""
    f = data.draw(st.integers(0, 3))
    U = data.draw(small_ints(dtype, rows=(2 * f + 3, 2 * f + 9)))
    K = len(U)
    X = as64(U, dtype)
    ref_scores = krum_scores_ref(X, f)
    np.testing.assert_array_equal(krum_scores(U, f), ref_scores)
    np.testing.assert_array_equal(krum(U, f), U[int(np.argmin(ref_scores))])
    m = data.draw(st.integers(1, K))
    w = np.array(data.draw(st.lists(st.integers(1, 4), min_size=K, max_size=K)), dtype=float)
    got = krum(U, f, num_to_keep=m, weights=w)
    assert_close(got, krum_ref(X, f, m, w), dtype, size(U))
    got_unweighted = krum(U, f, num_to_keep=m)
    assert_close(got_unweighted, krum_ref(X, f, m), dtype, size(U))
    np.testing.assert_array_equal(got_unweighted, krum(U, f, num_to_keep=m, weights=np.ones(K)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@FAST
@given(f=st.integers(0, 3), extra=st.integers(0, 8), d=st.integers(1, 6),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_krum_properties_on_generic_rows(dtype, f, extra, d, seed, data):
    K = 2 * f + 3 + extra
    U = normal_rows(K, d, dtype, seed)
    X = as64(U, dtype)
    ref = krum_scores_ref(X, f)
    gap = np.diff(np.sort(ref))
    scale = size(ref)
    distinct = gap.size == 0 or gap.min() > 1e-3 * scale        # no near-ties to flip
    got_scores = krum_scores(U, f)
    np.testing.assert_allclose(got_scores, ref, rtol=0,
                               atol=(1e-12 if dtype == np.float64 else 1e-5) * scale)
    out = krum(U, f)
    # a row of the input, bit for bit, the one with the lowest of its own scores
    np.testing.assert_array_equal(out, U[int(np.argmin(got_scores))])
    if distinct:
        np.testing.assert_array_equal(out, U[int(np.argmin(ref))])
        # permutation invariance of the selected row
        perm = np.array(data.draw(st.permutations(range(K))), dtype=np.intp)
        np.testing.assert_array_equal(krum(U[perm], f), out)
        # translation: the same row is selected from U + c
        c = np.random.default_rng(seed + 1).standard_normal(d).astype(dtype) * 10
        np.testing.assert_array_equal(krum(U + c, f), (U + c)[int(np.argmin(ref))])
    # scaling by a power of two scales every score by its square exactly: same choice
    for a in (0.5, 4.0, -2.0):
        np.testing.assert_array_equal(krum_scores((a * U).astype(dtype), f), a * a * got_scores)
        np.testing.assert_array_equal(krum((a * U).astype(dtype), f), a * out)
    # Multi-Krum: the weighted mean of the m lowest-scoring rows (by its own scores)
    m = data.draw(st.integers(1, K))
    w = np.random.default_rng(seed + 2).uniform(0.5, 2.0, K)
    keep = np.argsort(got_scores, kind="stable")[:m]
    mk = krum(U, f, num_to_keep=m, weights=w)
    assert_close(mk, np.average(X[keep], axis=0, weights=w[keep]), dtype, size(U))
    if m == 1:
        np.testing.assert_array_equal(mk, out)       # one row: returned exactly, weights or not
    if m == K:                                       # everything kept: the weighted mean
        assert_close(mk, np.average(X, axis=0, weights=w), dtype, size(U))
    # weights of rows that are not kept do not matter
    w2 = w.copy()
    w2[np.argsort(got_scores, kind="stable")[m:]] = 1e3
    np.testing.assert_array_equal(krum(U, f, num_to_keep=m, weights=w2), mk)


def test_krum_ignores_a_minority_of_attackers():
    rng = np.random.default_rng(7)
    honest = rng.normal(1.0, 0.1, (9, 20))
    attack = np.tile(rng.normal(-50.0, 0.01, 20), (3, 1))
    U = np.vstack([attack[:2], honest, attack[2:]])
    out = krum(U, 3)
    assert any(np.array_equal(out, h) for h in honest)
    mk = krum(U, 3, num_to_keep=6)
    assert np.all(np.abs(mk - 1.0) < 0.5)


# -- bulyan --

@pytest.mark.parametrize("K,f", [(3, 0), (4, 0), (7, 1), (8, 1), (11, 2), (12, 2), (16, 3),
                                 (19, 4), (40, 9), (41, 5)])
def test_bulyan_matches_the_reference(K, f, dtype):
    for d in (1, 5, 33):
        U = normal_rows(K, d, dtype, seed=K * 1000 + d)
        U[:f] = U[:f] * 30 + 100                     # f attackers, far away
        got = bulyan(U, f)
        assert_close(got, bulyan_ref(as64(U, dtype), f), dtype, size(U), f"d={d}")
        if f:
            assert np.all(np.abs(got) < 10), "attackers leaked into the aggregate"


def test_bulyan_breaks_distance_ties_towards_the_earlier_selected_row(dtype):
    """K = 9, f = 1: theta = 7, beta = 5.  Repeated Krum meets ties at almost every
    step (first remaining index wins) and selects rows 0, 6, 4, 7, 1, 2, 3, i.e. the
    values 0, -2, 0, -2, 3, 3, -3, whose median is 0.  beta = 5 keeps both zeros, both
    -2s and one of the three values at distance 3: the earliest selected, 3 (row 1),
    so the result is -1/5; the latest selected (-3) would give -7/5."""
    X = np.array([[0.0], [3.0], [3.0], [-3.0], [0.0], [2.0], [-2.0], [-2.0], [-2.0]])
    ref = bulyan_ref(X, 1)
    got = bulyan(X.astype(dtype), 1)
    assert_close(got, ref, dtype, 3.0)
    np.testing.assert_allclose(ref, [-1 / 5], rtol=1e-15)   # the hand count above


def test_bulyan_with_no_byzantine_rows_is_the_mean(dtype):
    U = normal_rows(9, 13, dtype, seed=2)
    assert_close(bulyan(U, 0), as64(U, dtype).mean(axis=0), dtype, size(U))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@FAST
@given(data=st.data())
def test_bulyan_on_small_integers_matches_the_reference(dtype, data):
    """Exact scores and medians: the Krum ties (first remaining index) and the
    closest-to-median ties (earlier-selected row) both decide the result."""
    f = data.draw(st.integers(0, 2))
    U = data.draw(small_ints(dtype, rows=(4 * f + 3, 4 * f + 8)))
    X = as64(U, dtype)
    got = bulyan(U, f)
    assert_close(got, bulyan_ref(X, f), dtype, size(U) + 1)
    assert np.all(got >= X.min(axis=0)) and np.all(got <= X.max(axis=0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@FAST
@given(f=st.integers(0, 2), extra=st.integers(0, 6), d=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1))
def test_bulyan_properties_on_generic_rows(dtype, f, extra, d, seed):
    K = 4 * f + 3 + extra
    U = normal_rows(K, d, dtype, seed)
    X = as64(U, dtype)
    got = bulyan(U, f)
    assert got.dtype == dtype and got.shape == (d,)
    assert np.all(got >= X.min(axis=0)) and np.all(got <= X.max(axis=0))
    np.testing.assert_array_equal(bulyan((4.0 * U).astype(dtype), f), 4.0 * got)
    c = np.random.default_rng(seed + 1).standard_normal(d).astype(dtype)
    assert_close(bulyan(U + c, f), got.astype(np.float64) + c, dtype, size(U, c) * 4)


# -- geometric median --

@pytest.mark.parametrize("K,d", [(2, 3), (5, 1), (9, 4), (30, 17), (129, 2)])
def test_geometric_median_follows_weiszfeld(K, d, dtype):
    rng = np.random.default_rng(K + d)
    U = rng.standard_normal((K, d)).astype(dtype)
    w = rng.uniform(0.2, 3.0, K)
    X = as64(U, dtype)
    for weights in (None, w):
        ref = geometric_median_ref(X, weights)
        got = geometric_median(U, weights=weights)
        # stopping one iteration apart moves the result by at most ~tol * max(1, |v|)
        tol = 1e-6 if dtype == np.float64 else 2e-5
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol * max(1.0, size(U)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@settings(max_examples=30, deadline=None)
@given(K=st.integers(4, 12), d=st.integers(2, 5), seed=st.integers(0, 2**32 - 1))
def test_geometric_median_minimises_the_sum_of_distances(dtype, K, d, seed):
    """Weiszfeld crawls (sublinearly) where the minimiser sits at or next to a client
    whose weight nearly balances the others' pull (e.g. K = 3, weights 2, 0.5, 1.5:
    100 000 iterations to settle), so the objective is checked on tamer problems --
    K >= 4, weights within a factor 3 -- with room to converge (maxiter=1000,
    tol=1e-12).  The default parameters are checked against the reference iteration
    above."""
    rng = np.random.default_rng(seed)
    U = (rng.standard_normal((K, d)) * rng.uniform(0.1, 10)).astype(dtype)
    w = rng.uniform(0.5, 1.5, K)
    X = as64(U, dtype)
    # (one thread: 1000 iterations on a few numbers are all parallel-region start-ups)
    got = geometric_median(U, weights=w, maxiter=1000, tol=1e-12, n_threads=1).astype(np.float64)
    best = geo_objective(X, got, w)
    # no better point nearby ...
    step = 1e-2 * size(U)
    for direction in rng.standard_normal((20, d)):
        direction *= step / np.linalg.norm(direction)
        assert best <= geo_objective(X, got + direction, w) * (1 + 1e-9)
    # ... and nothing (noticeably) better than what a general-purpose optimiser finds
    def grad(v):
        diff = v - X
        n = np.maximum(np.linalg.norm(diff, axis=1), 1e-300)
        return (w / n) @ diff
    res = scipy.optimize.minimize(lambda v: geo_objective(X, v, w), X.mean(axis=0), jac=grad,
                                  method="BFGS", options={"gtol": 1e-10})
    assert best <= res.fun * (1 + 1e-5)
    assert best <= geo_objective(X, np.average(X, axis=0, weights=w), w) * (1 + 1e-12)
    # permutation invariance (default parameters: the same iterations, summed in
    # another order) and translation equivariance (tol=0: the same number of steps)
    perm = rng.permutation(K)
    atol = (1e-6 if dtype == np.float64 else 1e-4) * max(1.0, size(U))
    np.testing.assert_allclose(geometric_median(U[perm], weights=w[perm]),
                               geometric_median(U, weights=w), rtol=0, atol=atol)
    c = rng.standard_normal(d).astype(dtype)
    np.testing.assert_allclose(geometric_median(U + c, weights=w, tol=0.0),
                               geometric_median(U, weights=w, tol=0.0).astype(np.float64) + c,
                               rtol=0, atol=atol + RTOL[dtype] * 10 * size(c))


def test_geometric_median_special_cases(dtype):
    rng = np.random.default_rng(11)
    # one point: the point itself
    x = rng.standard_normal((1, 6)).astype(dtype)
    np.testing.assert_allclose(geometric_median(x), x[0], rtol=RTOL[dtype])
    assert geometric_median(x).dtype == dtype
    # all points equal: that point
    same = np.tile(x, (5, 1))
    np.testing.assert_allclose(geometric_median(same), x[0], rtol=RTOL[dtype])
    # d = 1, odd K: the median
    for K in (3, 5, 9, 21):
        col = rng.standard_normal((K, 1)).astype(dtype)
        np.testing.assert_allclose(geometric_median(col), np.median(col, axis=0), rtol=0,
                                   atol=1e-4, err_msg=f"K={K}")
    # integer weights are repeated rows
    U = rng.standard_normal((4, 3)).astype(dtype)
    reps = np.array([1, 3, 2, 1])
    np.testing.assert_allclose(geometric_median(U, weights=reps.astype(float)),
                               geometric_median(np.repeat(U, reps, axis=0)), rtol=0, atol=1e-5)
    # zero weight: the row does not count
    w = np.array([1.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(geometric_median(U, weights=w), geometric_median(U[[0, 1, 3]]),
                               rtol=0, atol=1e-5)


def test_geometric_median_is_robust_where_the_mean_is_not():
    rng = np.random.default_rng(12)
    U = rng.standard_normal((9, 5))
    base = geometric_median(U)
    for n_bad in (1, 4):                              # up to just under half the clients
        V = U.copy()
        V[:n_bad] = 1e6
        assert np.linalg.norm(V.mean(axis=0) - U.mean(axis=0)) > 1e5
        moved = np.linalg.norm(geometric_median(V) - base)
        assert moved < (1.0 if n_bad == 1 else 5.0), f"{n_bad} outliers moved it by {moved}"
        # and it is still the Weiszfeld point of the corrupted rows
        np.testing.assert_allclose(geometric_median(V), geometric_median_ref(V), rtol=0,
                                   atol=1e-6 * 1e6)


def test_geometric_median_iteration_controls():
    rng = np.random.default_rng(13)
    U = rng.standard_normal((7, 3))
    U[0] += 40
    w = rng.uniform(0.5, 1.5, 7)
    # maxiter=1: one Weiszfeld step from the weighted mean, whatever tol says
    np.testing.assert_allclose(geometric_median(U, weights=w, maxiter=1, tol=0.0),
                               geometric_median_ref(U, w, maxiter=1, tol=0.0), rtol=1e-12)
    np.testing.assert_allclose(geometric_median(U, maxiter=3, tol=0.0),
                               geometric_median_ref(U, maxiter=3, tol=0.0), rtol=1e-12)
    # a huge tol stops after the first step
    np.testing.assert_allclose(geometric_median(U, tol=1e6),
                               geometric_median_ref(U, maxiter=1), rtol=1e-12)
    # a large eps: every b_i = w_i / eps, i.e. the weighted mean
    np.testing.assert_allclose(geometric_median(U, weights=w, eps=1e6),
                               np.average(U, axis=0, weights=w), rtol=1e-12)


# -- clipping --

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@FAST
@given(data=st.data())
def test_centered_clipping_matches_the_reference(dtype, data):
    K = data.draw(st.integers(1, 10))
    d = data.draw(st.integers(1, 6))
    seed = data.draw(st.integers(0, 2**32 - 1))
    tau = data.draw(st.floats(1e-3, 20.0))
    iterations = data.draw(st.integers(1, 4))
    rng = np.random.default_rng(seed)
    U = (rng.standard_normal((K, d)) * rng.uniform(0.1, 10)).astype(dtype)
    center = None if data.draw(st.booleans()) else rng.standard_normal(d).astype(dtype)
    X = as64(U, dtype)
    got = centered_clipping(U, tau, center=center, iterations=iterations)
    ref = centered_clipping_ref(X, tau, center, iterations)
    scale = size(U, np.zeros(1) if center is None else center) + tau * iterations
    assert_close(got, ref, dtype, 4 * scale)
    if iterations == 1:                              # one step moves by at most tau
        v0 = np.zeros(d) if center is None else center.astype(np.float64)
        assert np.linalg.norm(got - v0) <= tau * (1 + 1e-5) + RTOL[dtype] * scale


def test_centered_clipping_special_cases(dtype):
    rng = np.random.default_rng(21)
    U = rng.standard_normal((8, 5)).astype(dtype)
    X = as64(U, dtype)
    # tau beyond every distance: one step lands on the mean, from any center
    for center in (None, rng.standard_normal(5).astype(dtype)):
        assert_close(centered_clipping(U, 1e6, center=center), X.mean(axis=0), dtype, size(U))
    # rows at the center contribute nothing (no 0/0)
    c = U[3].copy()
    V = U.copy()
    V[[0, 5]] = c
    got = centered_clipping(V, 0.5, center=c, iterations=3)
    assert_close(got, centered_clipping_ref(as64(V, dtype), 0.5, as64(c, dtype), 3), dtype,
                 size(V))
    all_at_center = np.tile(c, (4, 1))
    np.testing.assert_array_equal(centered_clipping(all_at_center, 1.0, center=c), c)
    # a far attacker moves it by at most tau / K per step
    W = X.copy()
    W[0] = 1e6
    step = centered_clipping(W.astype(dtype), 1.0, center=X.mean(axis=0).astype(dtype))
    assert np.linalg.norm(step - X.mean(axis=0)) < 1.0
    # translation: shift the rows and the center together
    shift = rng.standard_normal(5).astype(dtype)
    cen = rng.standard_normal(5).astype(dtype)
    assert_close(centered_clipping(U + shift, 0.7, center=cen + shift, iterations=2),
                 centered_clipping_ref(X, 0.7, as64(cen, dtype), 2) + shift, dtype,
                 2 * size(U, shift, cen))
    # power-of-two scaling of rows, tau and center together is exact
    np.testing.assert_array_equal(
        centered_clipping((2 * U).astype(dtype), 1.4, center=2 * cen, iterations=3),
        2 * centered_clipping(U, 0.7, center=cen, iterations=3))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@FAST
@given(data=st.data())
def test_clip_by_norm_matches_the_reference(dtype, data):
    U = data.draw(matrices(dtype, rows=(1, 10), cols=(1, 6)))
    max_norm = data.draw(st.floats(1e-2, 1e3))
    X = as64(U, dtype)
    got = clip_by_norm(U, max_norm)
    assert got.shape == U.shape and got.dtype == dtype
    ref = clip_by_norm_ref(X, max_norm)
    for i in range(len(U)):                          # each row to its own scale
        assert_close(got[i], ref[i], dtype, size(X[i]), f"row {i}")
    norms = np.linalg.norm(X, axis=1)
    inside = norms <= max_norm * (1 - 1e-4)
    np.testing.assert_array_equal(got[inside], U[inside])      # scaled by exactly 1
    assert np.all(np.linalg.norm(got.astype(np.float64), axis=1) <= max_norm * (1 + RTOL[dtype]))
    # power-of-two scaling of the rows and the bound together is exact
    np.testing.assert_array_equal(clip_by_norm((4 * U).astype(dtype), 4 * max_norm), 4 * got)


def test_clip_by_norm_special_rows():
    U = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.3, 0.4, 0.0], [-30.0, 0.0, 40.0]])
    np.testing.assert_allclose(clip_by_norm(U, 1.0),
                               [[0, 0, 0], [0.6, 0.8, 0], [0.3, 0.4, 0], [-0.6, 0, 0.8]],
                               rtol=1e-15)


# -- all rules --

def _all_rules(weights=None):
    """name -> callable(U, **kw) for every rule, with parameters valid for K >= 7."""
    def n_rows(U):
        return np.shape(U)[0] if np.ndim(U) else 1

    def center(U):
        return np.full(np.shape(U)[1], 0.1) if np.ndim(U) >= 2 else None

    return {
        "weighted_mean": lambda U, **kw: weighted_mean(
            U, np.ones(n_rows(U)) if weights is None else weights, **kw),
        "median": lambda U, **kw: median(U, **kw),
        "trimmed_mean": lambda U, **kw: trimmed_mean(U, 0.2, **kw),
        "krum_scores": lambda U, **kw: krum_scores(U, 1, **kw),
        "krum": lambda U, **kw: krum(U, 1, **kw),
        "multi_krum": lambda U, **kw: krum(U, 1, num_to_keep=3, weights=weights, **kw),
        "bulyan": lambda U, **kw: bulyan(U, 1, **kw),
        "geometric_median": lambda U, **kw: geometric_median(U, weights=weights, **kw),
        "centered_clipping": lambda U, **kw: centered_clipping(
            U, 0.5, center=center(U), iterations=3, **kw),
        "clip_by_norm": lambda U, **kw: clip_by_norm(U, 2.0, **kw),
    }


RULES = list(_all_rules())


@pytest.mark.parametrize("rule", RULES)
def test_results_are_bit_identical_for_any_number_of_threads(rule, dtype):
    """Two blocks of coordinates (d > 4096) and several tiles, K above the small networks."""
    rng = np.random.default_rng(31)
    K, d = 33, 4096 + 200
    U = rng.standard_normal((K, d)).astype(dtype)
    U[:3] += 5.0
    w = rng.uniform(0.5, 2.0, K)
    fn = _all_rules(w)[rule]
    first = fn(U, n_threads=1)
    for n in (2, 3, None):
        np.testing.assert_array_equal(fn(U, n_threads=n), first, err_msg=f"n_threads={n}")
    np.testing.assert_array_equal(fn(U), first)


@pytest.mark.parametrize("rule", RULES)
def test_layout_int_input_and_read_only_arrays(rule):
    rng = np.random.default_rng(32)
    big = rng.standard_normal((24, 30))
    U = big[::2, 1::3]                               # (12, 10), strided both ways
    assert not U.flags.c_contiguous
    fn = _all_rules()[rule]
    want = fn(np.ascontiguousarray(U))
    for variant in (U, np.asfortranarray(U), U.tolist()):
        np.testing.assert_array_equal(fn(variant), want)
    # the input is left untouched, and read-only input works
    before = big.copy()
    fn(U)
    np.testing.assert_array_equal(big, before)
    ro = np.ascontiguousarray(U)
    ro.setflags(write=False)
    np.testing.assert_array_equal(fn(ro), want)
    ro32 = ro.astype(np.float32)
    ro32.setflags(write=False)
    assert fn(ro32).dtype == (np.float64 if rule == "krum_scores" else np.float32)
    # integer (and other non-float) input is computed in float64
    I = rng.integers(-5, 6, (12, 10))
    want = fn(I.astype(np.float64))
    for cast in (np.int64, np.int32, np.int8):
        got = fn(I.astype(cast))
        assert got.dtype == np.float64, f"{cast.__name__} -> {got.dtype}"
        np.testing.assert_array_equal(got, want)
    N = np.abs(I)
    np.testing.assert_array_equal(fn(N.astype(np.uint16)), fn(N.astype(np.float64)))
    B = I > 0
    np.testing.assert_array_equal(fn(B), fn(B.astype(np.float64)))


def test_result_dtypes():
    rng = np.random.default_rng(33)
    for dt in DTYPES:
        U = rng.standard_normal((9, 4)).astype(dt)
        for rule, fn in _all_rules(np.ones(9)).items():
            got = fn(U)
            assert got.dtype == (np.float64 if rule == "krum_scores" else dt), rule
            assert got.shape == ((9,) if rule == "krum_scores" else
                                 (9, 4) if rule == "clip_by_norm" else (4,)), rule


def test_single_client_and_single_coordinate():
    x = np.array([[1.5, -2.0, 3.25]])
    for fn in (median, lambda U: trimmed_mean(U, 0.4), geometric_median):
        np.testing.assert_allclose(fn(x), x[0], rtol=1e-15)
    np.testing.assert_array_equal(median(x), x[0])
    np.testing.assert_array_equal(trimmed_mean(x, 0.4), x[0])
    np.testing.assert_array_equal(bulyan(np.tile(x, (3, 1)), 0), x[0])
    col = np.array([[3.0], [1.0], [2.0], [10.0]])
    np.testing.assert_array_equal(median(col), [2.5])
    np.testing.assert_array_equal(trimmed_mean(col, 0.25), [2.5])


# -- validation --

@pytest.mark.parametrize("rule", RULES)
def test_non_finite_rows_are_named(rule):
    U = np.random.default_rng(41).standard_normal((12, 3))
    U[4, 1] = np.nan
    U[9, 2] = -np.inf
    fn = _all_rules()[rule]
    for dt in DTYPES:
        with pytest.raises(ValueError) as err:
            fn(U.astype(dt))
        msg = str(err.value)
        assert re.search(r"\b4\b", msg) and re.search(r"\b9\b", msg), msg
    assert finite_rows(U).tolist() == [i not in (4, 9) for i in range(12)]


@pytest.mark.parametrize("rule", RULES)
def test_bad_update_shapes_and_thread_counts_are_rejected(rule):
    fn = _all_rules()[rule]
    for bad in (np.ones(7), np.ones((7, 2, 2)), np.ones((0, 3)), np.float64(1.0)):
        with pytest.raises(ValueError):
            fn(bad)
    U = np.random.default_rng(42).standard_normal((8, 3))
    for n in (0, -1):
        with pytest.raises(ValueError):
            fn(U, n_threads=n)


@pytest.mark.parametrize("name", ["weighted_mean", "multi_krum", "geometric_median"])
@pytest.mark.parametrize("weights", [
    np.ones(7), np.ones((8, 1)), np.r_[1.0, -1.0, np.ones(6)], np.zeros(8),
    np.r_[np.ones(7), np.nan], np.r_[np.ones(7), np.inf],
], ids=["short", "2-D", "negative", "zero-sum", "nan", "inf"])
def test_bad_weights_are_rejected(name, weights):
    U = np.random.default_rng(43).standard_normal((8, 3))
    with pytest.raises(ValueError):
        _all_rules(weights)[name](U)


def test_bad_parameters_are_rejected():
    U = np.random.default_rng(44).standard_normal((10, 3))
    for beta in (-0.1, 0.5, 0.7, np.nan):
        with pytest.raises(ValueError):
            trimmed_mean(U, beta)
    # Krum needs K >= 2f + 3: K = 6, f = 2 -> 7
    with pytest.raises(ValueError, match=r"2\s*\*\s*num_malicious\s*\+\s*3|2\s*f\s*\+\s*3|\b7\b"):
        krum(U[:6], 2)
    krum(U[:7], 2)                                   # the bound itself is fine
    for m in (0, 11, -1):
        with pytest.raises(ValueError):
            krum(U, 1, num_to_keep=m)
    with pytest.raises(ValueError):
        krum(U, -1)
    with pytest.raises((ValueError, TypeError)):
        krum(U, 1.5)
    # Bulyan needs K >= 4f + 3: K = 10, f = 2 -> 11
    with pytest.raises(ValueError, match=r"4\s*\*\s*num_malicious\s*\+\s*3|4\s*f\s*\+\s*3|\b11\b"):
        bulyan(U, 2)
    bulyan(U[:7], 1)
    with pytest.raises(ValueError):
        bulyan(U, -1)
    for tau in (0.0, -1.0):
        with pytest.raises(ValueError):
            centered_clipping(U, tau)
    for it in (0, -2):
        with pytest.raises(ValueError):
            centered_clipping(U, 1.0, iterations=it)
    with pytest.raises(ValueError):
        centered_clipping(U, 1.0, center=np.zeros(4))
    for max_norm in (0.0, -1.0):
        with pytest.raises(ValueError):
            clip_by_norm(U, max_norm)
