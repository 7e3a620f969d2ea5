"""cyfed.aggregate against numpy, for both dtypes."""
import numpy as np
import pytest

from cyfed.aggregate import finite_rows, weighted_mean


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_mean_matches_numpy_average(dtype):
    rng = np.random.default_rng(0)
    U = rng.standard_normal((37, 101)).astype(dtype)
    w = rng.uniform(0, 5, 37)
    got = weighted_mean(U, w)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, np.average(U.astype(np.float64), axis=0, weights=w),
                               rtol=1e-12 if dtype == np.float64 else 1e-6)


def test_weighted_mean_is_the_sequential_sum_and_does_not_depend_on_threads():
    """The in-order sum (to rounding: the compiled loop may fuse multiply-adds), and the
    same bits whatever the BLAS thread settings."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    U, w = rng.standard_normal((50, 7)), rng.uniform(0, 1, 50)
    acc = np.zeros(7)
    for wi, row in zip(w, U):
        acc += wi * row
    first = weighted_mean(U, w)
    np.testing.assert_allclose(first, acc / w.sum(), rtol=1e-14, atol=1e-16)
    for threads in (1, 2):
        with threadpool_limits(threads):
            np.testing.assert_array_equal(weighted_mean(U, w), first)


@pytest.mark.parametrize("weights,match", [
    (np.ones(3), r"shape \(4,\)"), (np.array([1, -1, 1, 1.0]), ">= 0"),
    (np.zeros(4), "positive sum"), (np.array([1, np.nan, 1, 1]), "finite"),
])
def test_weighted_mean_rejects_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        weighted_mean(np.ones((4, 2)), weights)


def test_weighted_mean_rejects_bad_updates():
    with pytest.raises(ValueError, match="updates must have shape"):
        weighted_mean(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="updates must have shape"):
        weighted_mean(np.ones((0, 3)), np.ones(0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_rows_matches_numpy(dtype):
    rng = np.random.default_rng(2)
    U = rng.standard_normal((200, 33)).astype(dtype)
    for i, value in zip(rng.choice(200, 30, replace=False), [np.nan, np.inf, -np.inf] * 10):
        U[i, rng.integers(33)] = value
    np.testing.assert_array_equal(finite_rows(U), np.all(np.isfinite(U), axis=1))
