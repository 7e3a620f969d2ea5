"""cyfed._noise: Gaussian rows from Philox4x32-10 + Box-Muller (distributed DP shares).

Statistical checks use fixed keys (deterministic, so never flaky) and bounds of
6 standard errors; the reference stream is recomputed in numpy (Philox in
uint64 arithmetic, Box-Muller in long double) to pin the layout and accuracy.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from cyfed import _simd
from cyfed._simd import load

noise, _ = load("_noise")
KEY = tuple(int(k) for k in np.random.SeedSequence([7, 3, 2]).generate_state(2, np.uint64))
PAIRS = 64                                     # pairs per chunk (CYFED_NOISE_PAIRS)


def draws(ids, width, key=KEY, n_threads=1, scale=None):
    rows = np.zeros((len(ids), width))
    scale = np.ones(width) if scale is None else scale
    noise.add_gaussian_rows(rows, np.asarray(ids, dtype=np.int64), key[0], key[1], scale,
                            n_threads)
    return rows


# ----------------------------------------------------------------- reference stream

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = np.uint64(0xFFFFFFFF)


def philox_ref(c0, c1, c2, c3, key):
    """Philox4x32-10 on arrays of 32-bit words (held in uint64)."""
    a = [np.asarray(c, dtype=np.uint64) & MASK for c in (c0, c1, c2, c3)]
    k0, k1 = key & 0xFFFFFFFF, key >> 32
    for _ in range(10):
        p0 = np.uint64(M0) * a[0]
        p1 = np.uint64(M1) * a[2]
        a = [(p1 >> np.uint64(32)) ^ a[1] ^ np.uint64(k0), p1 & MASK,
             (p0 >> np.uint64(32)) ^ a[3] ^ np.uint64(k1), p0 & MASK]
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return a


def reference_row(cid, width, key=KEY):
    """z of one row, Box-Muller in long double from the documented counters."""
    n_pairs = ((width + 2 * PAIRS - 1) // (2 * PAIRS)) * PAIRS
    k = np.arange(n_pairs, dtype=np.uint64)
    a0, a1, a2, a3 = philox_ref(k, key[1] & 0xFFFFFFFF, cid & 0xFFFFFFFF, cid >> 32, key[0])
    top1 = (a0 << np.uint64(20)) | (a1 >> np.uint64(12))        # 52 bits
    top2 = (a2 << np.uint64(20)) | (a3 >> np.uint64(12))
    ld = np.longdouble
    u1 = ld(1) - top1.astype(ld) / ld(2.0 ** 52)                 # 2 - d1
    u2 = top2.astype(ld) / ld(2.0 ** 52)
    r = np.sqrt(-2 * np.log(u1))
    theta = 2 * ld(np.pi) * u2
    zc, zs = r * np.cos(theta), r * np.sin(theta)
    out = np.empty(n_pairs * 2, dtype=ld)
    chunks = n_pairs // PAIRS
    out.reshape(chunks, 2, PAIRS)[:, 0] = zc.reshape(chunks, PAIRS)
    out.reshape(chunks, 2, PAIRS)[:, 1] = zs.reshape(chunks, PAIRS)
    return out[:width]


# ------------------------------------------------------------------------ the generator

@pytest.mark.parametrize("counter, key, expected", [
    # Random123 kat_vectors, philox4x32 10 rounds
    ((0, 0, 0, 0), 0, (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, 0xffffffffffffffff, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), 0x299f31d0a4093822,
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
])
def test_philox_known_answers(counter, key, expected):
    np.testing.assert_array_equal(noise.philox4x32_10(counter, key),
                                  np.array(expected, dtype=np.uint32))
    ref = philox_ref(*[[c] for c in counter], key)
    assert tuple(int(w[0]) for w in ref) == expected


@pytest.mark.parametrize("width", [1, 63, 64, 65, 127, 128, 129, 612, 1000])
def test_matches_reference_stream(width):
    """Layout (which pair feeds which column) and Box-Muller accuracy, against a
    long-double recomputation from the same Philox bits."""
    ids = [0, 5, 2**31 + 3, 2**40 + 11]
    z = draws(ids, width)
    for row, cid in zip(z, ids):
        ref = reference_row(cid, width)
        err = np.abs(row - ref)
        assert err.max() < 4e-15, (cid, float(err.max()))            # absolute
        big = np.abs(ref) > 0.5
        assert np.all(err[big] / np.abs(ref[big]) < 4e-15)            # relative


# --------------------------------------------------------------------- distribution

@pytest.fixture(scope="module")
def sample():
    """~10^6 draws: 1,000 clients x 1,030 columns (several chunks, a ragged tail)."""
    return draws(np.arange(1000) * 7 + 3, 1030)


def test_moments(sample):
    z = sample.ravel()
    n = z.size
    assert abs(z.mean()) < 6 / np.sqrt(n)
    assert abs(z.var() - 1) < 6 * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < 6 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 6 * np.sqrt(24 / n)
    # moments per column position (each cos/sin slot of a chunk) and per row
    assert np.abs(sample.mean(axis=0)).max() < 6 / np.sqrt(sample.shape[0]) * 1.5
    assert np.abs(sample.var(axis=0) - 1).max() < 6 * np.sqrt(2 / sample.shape[0]) * 1.5


def test_kolmogorov_smirnov(sample):
    assert stats.kstest(sample.ravel(), "norm").pvalue > 1e-6
    # the cos and sin halves separately (a broken angle would show in one of them)
    chunk = sample[:, :1024].reshape(1000, 8, 2, PAIRS)
    assert stats.kstest(chunk[:, :, 0].ravel(), "norm").pvalue > 1e-6
    assert stats.kstest(chunk[:, :, 1].ravel(), "norm").pvalue > 1e-6


def test_tails(sample):
    z = sample.ravel()
    for t in (3.0, 4.0):
        expected = z.size * 2 * stats.norm.sf(t)
        got = np.count_nonzero(np.abs(z) > t)
        assert abs(got - expected) < 6 * np.sqrt(expected), (t, got, expected)
    assert np.abs(z).max() < np.sqrt(2 * 52 * np.log(2)) + 1e-12


def test_chi_square_bins(sample):
    edges = stats.norm.ppf(np.linspace(0, 1, 101)[1:-1])
    counts = np.bincount(np.searchsorted(edges, sample.ravel()), minlength=100)
    assert stats.chisquare(counts).pvalue > 1e-6


# --------------------------------------------------------------------- independence

def test_independence(sample):
    n = sample.size
    bound = 6 / np.sqrt(n)
    z = sample.ravel()
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < bound            # consecutive columns
    cs = sample[:, :1024].reshape(1000, 8, 2, PAIRS)                  # cos/sin of one pair
    assert abs(np.corrcoef(cs[:, :, 0].ravel(), cs[:, :, 1].ravel())[0, 1]) < 6 / np.sqrt(n / 2)
    sq = cs ** 2                                                      # same radius: 0 for BM
    assert abs(np.corrcoef(sq[:, :, 0].ravel(), sq[:, :, 1].ravel())[0, 1]) < 6 / np.sqrt(n / 2)
    assert abs(np.corrcoef(sample[:-1].ravel(), sample[1:].ravel())[0, 1]) < bound  # clients


def test_neighbouring_clients_and_keys_differ():
    a = draws([0, 1, 2**32, 2**32 + 1], 300)
    assert len({row.tobytes() for row in a}) == 4
    other_key = (KEY[0] ^ 1, KEY[1])
    other_c1 = (KEY[0], KEY[1] ^ 1)
    b, c = draws([0], 300, other_key), draws([0], 300, other_c1)
    for x in (b, c):
        assert not np.any(x[0] == a[0])
        assert abs(np.corrcoef(x[0], a[0])[0, 1]) < 0.3


# ---------------------------------------------------------------------- determinism

@pytest.mark.parametrize("n_threads", [1, 2, 4])
def test_row_depends_only_on_key_and_client(n_threads):
    ids = np.array([9, 4, 17, 2**33 + 1, 0, 5, 6])
    width = 300
    full = draws(ids, width, n_threads=n_threads)
    for i, cid in enumerate(ids):
        alone = draws([cid], width)[0]
        np.testing.assert_array_equal(full[i], alone)
    perm = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(draws(ids[perm], width, n_threads=n_threads), full[perm])
    # added onto existing values, in a strided (wider) array
    base = np.random.default_rng(1).standard_normal((len(ids), width + 5))
    rows = base.copy()
    noise.add_gaussian_rows(rows[:, :width], ids, KEY[0], KEY[1], np.ones(width), n_threads)
    np.testing.assert_array_equal(rows[:, :width], base[:, :width] + full)
    np.testing.assert_array_equal(rows[:, width:], base[:, width:])


def test_prefix_of_a_wider_row():
    """Column j's draw does not depend on the width."""
    np.testing.assert_array_equal(draws([3], 1000)[0, :200], draws([3], 200)[0])


def test_same_bits_in_every_simd_build(tmp_path):
    levels = [lvl for lvl in _simd.LEVELS
              if lvl in ("baseline", _simd.cpu_level())
              or _simd.LEVELS.index(lvl) <= _simd.LEVELS.index(_simd.cpu_level())]
    code = ("import numpy as np, sys; from cyfed._simd import load; m, lvl = load('_noise');"
            "r = np.zeros((5, 700)); m.add_gaussian_rows(r, np.arange(5, dtype=np.int64) * 3,"
            f"{KEY[0]}, {KEY[1]}, np.ones(700), 2); np.save(sys.argv[1], r); print(lvl)")
    results = {}
    for lvl in levels:
        out = tmp_path / f"{lvl}.npy"
        env = dict(os.environ, CYFED_SIMD=lvl)
        done = subprocess.run([sys.executable, "-c", code, str(out)], env=env,
                              capture_output=True, text=True, check=True)
        if done.stdout.strip() != lvl:       # that build is not installed
            continue
        results[lvl] = np.load(out)
    ref = draws(np.arange(5) * 3, 700)
    for lvl, r in results.items():
        np.testing.assert_array_equal(r, ref, err_msg=lvl)


# ---------------------------------------------------------------------------- scale

def test_scale_per_column():
    scale = np.array([0.5, 2.0, 0.0, 1e-3, 0.0, 7.0] * 50)
    base = np.full((4000, scale.size), -0.0)
    base[:, 4::6] = np.nan
    rows = base.copy()
    noise.add_gaussian_rows(rows, np.arange(4000, dtype=np.int64), KEY[0], KEY[1], scale, 2)
    np.testing.assert_array_equal(np.signbit(rows[:, 2::6]), True)     # -0.0 untouched
    assert np.isnan(rows[:, 4::6]).all()
    std = rows[:, scale > 0].std(axis=0) / scale[scale > 0]
    assert np.abs(std - 1).max() < 6 * np.sqrt(1 / (2 * 4000)) * 1.5
    z = draws(np.arange(4000), scale.size)
    np.testing.assert_array_equal(rows[:, 1], 2.0 * z[:, 1])


def test_validation():
    rows = np.zeros((3, 10))
    with pytest.raises(ValueError, match="client_ids"):
        noise.add_gaussian_rows(rows, np.arange(2, dtype=np.int64), 1, 2, np.ones(10), 1)
    with pytest.raises(ValueError, match="scale"):
        noise.add_gaussian_rows(rows, np.arange(3, dtype=np.int64), 1, 2, np.ones(9), 1)
    noise.add_gaussian_rows(np.zeros((0, 10)), np.arange(0, dtype=np.int64), 1, 2,
                            np.ones(10), 1)
    with pytest.raises(ValueError):
        noise.add_gaussian_rows(np.zeros((3, 10))[:, ::2], np.arange(3, dtype=np.int64), 1, 2,
                                np.ones(5), 1)
