"""Benchmarks of cyfed.hessian: a Hessian-vector pass beside a loss/gradient pass,
and the Hessian build beside numpy.

For logistic and softmax (k = 10 classes), dtype (float64, float32) and thread
count (1, 2), group ``hv-{loss}-{n}x{d}-{dtype}-t{threads}`` (300,000 x 100) times

* ``cyfed-loss_grad``: ``cyfed.loss_grad(loss, X, y, coef, intercept, n_threads=t)``,
  one fused loss + gradient pass (argument validation included);
* ``cyfed-hess_vec``: ``hessian.hess_vec_sums`` at the same point, the curvature
  computed beforehand: one fused Hessian-vector pass, what each conjugate-gradient
  step of newton-cg costs (goal: <= 1.2 x cyfed-loss_grad);
* ``cyfed-curvature``: ``hessian.curvature``, the once-per-iterate pass;
* ``numpy-hess_vec``: the same product in numpy, ``X.T @ (D * (X @ v + v_b))``
  (softmax: ``H = P * U - P * rowsum(P * U)`` with ``U = X @ V + v_b``, then ``X.T @ H``),
  in X's dtype with numpy's BLAS limited to t threads;

group ``diag-{loss}-{n}x{d}-{dtype}-t{threads}`` (same shape) times TRON's preconditioner,
the Hessian's diagonal, beside one Hessian-vector pass:

* ``cyfed-hess_vec``: as above (the yardstick: goal diag <= one Hv pass);
* ``cyfed-hessian_diag``: ``hessian.hessian_diag_sums``, one fused pass;
* ``numpy-hessian_diag``: what ``LinearModel.hessian_diag_sums`` did before that kernel,
  ``np.square(X_chunk, dtype=float64).T @ R_chunk`` over chunks of 8192 rows with
  R = ``models.row_curvature`` (w_i p_ic (1 - p_ic) for softmax), plus ``R.sum(axis=0)``;

and group ``hessian-{loss}-{n}x{d}-{dtype}-t{threads}`` times ``hessian.hessian_sums``
(``cyfed-hessian``) beside numpy's ``X.T @ (D[:, None] * X)`` plus the intercept
row (``numpy-hessian``; logistic at 300,000 x 100), or for softmax at 100,000 x 30
(p = 310) the same Kronecker structure with BLAS: ``-G.T @ G`` for the rows
``g_i = x~_i (x) p_i`` plus one ``X~.T @ (p_c * X~)`` per class.

Each benchmark records its best round in ``extra_info["seconds"]``, and the last
of a group also records the ratios (``hess_vec/loss_grad``,
``curvature/loss_grad``, ``numpy/hess_vec``; ``diag/hess_vec``, ``numpy/diag``;
``numpy/hessian``), which are printed
as a table at the end of the run.  cyfed's and numpy's results are compared
(relative 1e-10 in float64, 2e-4 in float32) whenever both sides of a group ran.

Full run (about 100 seconds on 2 idle cores; ``-k diag`` for the diagonal alone)::

    cd /work/main
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=src \\
        python -m pytest benchmarks/test_bench_hessian.py --benchmark-json=hessian.json -q

Smoke run for CI (257 rows, nothing timed, results cross-checked): add ``--smoke``.
"""
import numpy as np
import pytest

import cyfed
from cyfed import gradients, hessian
from cyfed.models import row_curvature

DTYPES = ("float64", "float32")
THREADS = (1, 2)
HV_SHAPE = (300_000, 100)
HESSIAN_SHAPES = {"logistic": (300_000, 100), "softmax": (100_000, 30)}
RTOL = {"float64": 1e-10, "float32": 2e-4}
#: Per kind of group: its members (the last to run records the ratios), the
#: (cyfed, numpy) pair whose results are cross-checked, and its ratios as
#: (name, numerator, denominator).
GROUPS = {
    "hv": (("cyfed-loss_grad", "cyfed-hess_vec", "cyfed-curvature", "numpy-hess_vec"),
           ("cyfed-hess_vec", "numpy-hess_vec"),
           (("hess_vec/loss_grad", "cyfed-hess_vec", "cyfed-loss_grad"),
            ("curvature/loss_grad", "cyfed-curvature", "cyfed-loss_grad"),
            ("numpy/hess_vec", "numpy-hess_vec", "cyfed-hess_vec"))),
    "diag": (("cyfed-hess_vec", "cyfed-hessian_diag", "numpy-hessian_diag"),
             ("cyfed-hessian_diag", "numpy-hessian_diag"),
             (("diag/hess_vec", "cyfed-hessian_diag", "cyfed-hess_vec"),
              ("numpy/diag", "numpy-hessian_diag", "cyfed-hessian_diag"))),
    "hessian": (("cyfed-hessian", "numpy-hessian"), ("cyfed-hessian", "numpy-hessian"),
                (("numpy/hessian", "numpy-hessian", "cyfed-hessian"),)),
}
#: Rows per chunk of the numpy diagonal (LinearModel.hessian_diag_sums' former DIAG_CHUNK).
NUMPY_DIAG_CHUNK = 1 << 13


def _case_id(kind, loss, shape, dtype, threads):
    return f"{kind}-{loss}-{shape[0]}x{shape[1]}-{dtype}-t{threads}"


HV_CASES = [pytest.param(loss, HV_SHAPE, dtype, threads,
                         id=_case_id("hv", loss, HV_SHAPE, dtype, threads))
            for dtype in DTYPES for loss in ("logistic", "softmax") for threads in THREADS]
DIAG_CASES = [pytest.param(loss, HV_SHAPE, dtype, threads,
                           id=_case_id("diag", loss, HV_SHAPE, dtype, threads))
              for dtype in DTYPES for loss in ("logistic", "softmax") for threads in THREADS]
HESSIAN_CASES = [pytest.param(loss, shape, dtype, threads,
                              id=_case_id("hessian", loss, shape, dtype, threads))
                 for loss, shape in HESSIAN_SHAPES.items() for dtype in DTYPES
                 for threads in THREADS]


# ----------------------------------------------------------------------------- the point

class Point:
    """A bench problem prepared for the low-level API: curvature at (coef, intercept)
    and a direction v (coef part (d, k), intercept part (k,)) in X's dtype."""

    def __init__(self, problem):
        self.loss = problem.loss
        self.X = problem.X
        self.prepared = gradients.prepare(problem.loss, problem.X, problem.y)
        self.coef2d = problem.coef.reshape(problem.X.shape[1], -1)
        self.k = self.coef2d.shape[1]
        self.b = np.asarray(problem.intercept, dtype=problem.dtype).reshape(self.k)
        self.curv = hessian.curvature(self.prepared, self.coef2d, self.b, None, 1)
        rng = np.random.default_rng(7)
        self.v = rng.standard_normal(self.coef2d.shape).astype(problem.dtype)
        self.vb = rng.standard_normal(self.k).astype(problem.dtype)
        self.p = self.coef2d.size + self.k


# --------------------------------------------------------------------------- timed calls

def cyfed_hess_vec(point, *, n_threads):
    out = np.empty(point.p)
    hessian.hess_vec_sums(point.prepared, point.curv, point.v, point.vb, None, out, n_threads)
    return out


def cyfed_curvature(point, *, n_threads):
    return hessian.curvature(point.prepared, point.coef2d, point.b, None, n_threads)


def cyfed_hessian(point, *, n_threads):
    out = np.empty((point.p, point.p))
    hessian.hessian_sums(point.prepared, point.curv, None, True, out, n_threads)
    return out


def cyfed_hessian_diag(point, *, n_threads):
    out = np.empty(point.p)
    hessian.hessian_diag_sums(point.prepared, point.curv, None, True, out, n_threads)
    return out


def numpy_hessian_diag(point, *, n_threads=None):
    """The diagonal of sum_i H_i in numpy, in row chunks, accumulated in float64."""
    X = point.X
    R = row_curvature(point.prepared, point.curv)
    diag = np.zeros((X.shape[1], point.k))
    for start in range(0, len(X), NUMPY_DIAG_CHUNK):
        rows = slice(start, start + NUMPY_DIAG_CHUNK)
        diag += np.square(X[rows], dtype=np.float64).T @ R[rows]
    return np.concatenate([diag.ravel(), R.sum(axis=0)])


def numpy_hess_vec(point, *, n_threads=None):
    """sum_i H_i v in numpy, in X's dtype (curvature given as D or P)."""
    X, dtype = point.X, point.X.dtype
    if point.k == 1:
        h = point.curv.astype(dtype) * (X @ point.v[:, 0] + point.vb[0])
        return np.concatenate([X.T @ h, [h.sum()]]).astype(np.float64)
    P = point.curv.astype(dtype)
    PU = P * (X @ point.v + point.vb)
    H = PU - P * PU.sum(axis=1, keepdims=True)
    return np.concatenate([(X.T @ H).ravel(), H.sum(axis=0)]).astype(np.float64)


def numpy_hessian(point, *, n_threads=None):
    """sum_i H_i in numpy, in X's dtype, same layout as hessian_sums."""
    X, dtype, k = point.X, point.X.dtype, point.k
    if k == 1:
        D = point.curv.astype(dtype)
        XD = X.T @ D
        return np.block([[X.T @ (D[:, None] * X), XD[:, None]],
                         [XD[None, :], np.array([[D.sum()]])]]).astype(np.float64)
    P = point.curv.astype(dtype)
    Xt = np.column_stack([X, np.ones(len(X), dtype=dtype)])
    G = (Xt[:, :, None] * P[:, None, :]).reshape(len(X), -1)   # g_i = x~_i (x) p_i
    H = -(G.T @ G)
    for c in range(k):
        H[c::k, c::k] += Xt.T @ (P[:, c:c + 1] * Xt)
    return H.astype(np.float64)


# ------------------------------------------------------------------------------- helpers

def _label(benchmark, group, impl, loss, shape, dtype, threads):
    benchmark.group = group
    benchmark.extra_info.update(implementation=impl, loss=loss, n=shape[0], d=shape[1],
                                dtype=dtype, threads=threads)


def _point(bench_data, loss, shape, dtype):
    """The group's Point, made once per (loss, shape, dtype) and freed with its data."""
    problem = bench_data.problem(loss, shape, dtype)
    key = ("point", problem.shape, dtype, loss)
    seen = bench_data.results.setdefault(key, {})
    if "point" not in seen:
        seen["point"] = Point(problem)
    return seen["point"]


def _record(benchmark, bench_data, group_key, impl, result, ratio_table):
    """Keep this side's result and best time; cross-check cyfed against numpy; when
    the group is complete, add its ratios to extra_info and to the printed table."""
    seconds = None if benchmark.stats is None else benchmark.stats.stats.min
    benchmark.extra_info["seconds"] = seconds
    seen = bench_data.results.setdefault(group_key, {})
    seen[impl] = (result, seconds)
    kind, dtype = group_key[0], group_key[2]
    names, (cy, ref), ratio_defs = GROUPS[kind]
    if {cy, ref} <= seen.keys() and impl in (cy, ref):
        a, b = seen[cy][0], seen[ref][0]
        err = float(np.max(np.abs(a - b)))
        scale = float(np.max(np.abs(b)))
        assert err <= RTOL[dtype] * scale, \
            f"{group_key}: |cyfed - numpy| = {err:.3g}, |numpy| = {scale:.3g}"
    times = {name: seen.get(name, (None, None))[1] for name in names}
    if impl != names[-1] or None in times.values():
        return
    ratios = {name: times[num] / times[den] for name, num, den in ratio_defs}
    benchmark.extra_info["ratios"] = ratios
    ms = ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in times.items())
    ratio_table.append(f"{benchmark.group}: " + ", ".join(
        f"{name} {r:.2f}" for name, r in ratios.items()) + f"  ({ms})")


@pytest.fixture(scope="module")
def ratio_table(request):
    """Lines of ratios, printed after the module's benchmarks."""
    lines = []
    yield lines
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if lines and reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():     # teardown output is captured
            reporter.write_line("")
            reporter.write_sep("-", "cyfed.hessian ratios (best rounds)")
            for line in lines:
                reporter.write_line(line)


# --------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("loss, shape, dtype, threads", HV_CASES)
def test_loss_grad(benchmark, timed, bench_data, ratio_table, loss, shape, dtype, threads):
    problem = bench_data.problem(loss, shape, dtype)
    group = _case_id("hv", loss, problem.shape, dtype, threads)
    _label(benchmark, group, "cyfed-loss_grad", loss, problem.shape, dtype, threads)

    def fn(X, y, coef, b, *, n_threads):
        return cyfed.loss_grad(loss, X, y, coef, b, n_threads=n_threads)

    value, _, _ = timed(fn, (problem.X, problem.y, problem.coef, problem.intercept),
                        threads=threads)
    assert np.isfinite(value)
    _record(benchmark, bench_data, ("hv", problem.shape, dtype, threads, loss),
            "cyfed-loss_grad", None, ratio_table)


def _bench(benchmark, timed, bench_data, ratio_table, kind, impl, fn, loss, shape, dtype,
           threads, keep=True):
    """Time fn on the group's Point and record it (its result too, when `keep`);
    returns (result, point)."""
    point = _point(bench_data, loss, shape, dtype)
    _label(benchmark, _case_id(kind, loss, point.X.shape, dtype, threads), impl, loss,
           point.X.shape, dtype, threads)
    result = timed(fn, (point,), threads=threads)
    assert np.isfinite(result).all()
    _record(benchmark, bench_data, (kind, point.X.shape, dtype, threads, loss), impl,
            result if keep else None, ratio_table)
    return result, point


@pytest.mark.parametrize("impl, fn", [("cyfed-hess_vec", cyfed_hess_vec),
                                      ("cyfed-curvature", cyfed_curvature),
                                      ("numpy-hess_vec", numpy_hess_vec)],
                         ids=["cyfed-hess_vec", "cyfed-curvature", "numpy-hess_vec"])
@pytest.mark.parametrize("loss, shape, dtype, threads", HV_CASES)
def test_hv(benchmark, timed, bench_data, ratio_table, impl, fn, loss, shape, dtype, threads):
    _bench(benchmark, timed, bench_data, ratio_table, "hv", impl, fn, loss, shape, dtype,
           threads, keep=impl != "cyfed-curvature")


@pytest.mark.parametrize("impl, fn", [("cyfed-hess_vec", cyfed_hess_vec),
                                      ("cyfed-hessian_diag", cyfed_hessian_diag),
                                      ("numpy-hessian_diag", numpy_hessian_diag)],
                         ids=["cyfed-hess_vec", "cyfed-hessian_diag", "numpy-hessian_diag"])
@pytest.mark.parametrize("loss, shape, dtype, threads", DIAG_CASES)
def test_diag(benchmark, timed, bench_data, ratio_table, impl, fn, loss, shape, dtype,
              threads):
    result, point = _bench(benchmark, timed, bench_data, ratio_table, "diag", impl, fn, loss,
                           shape, dtype, threads, keep=impl != "cyfed-hess_vec")
    assert result.shape == (point.p,)


@pytest.mark.parametrize("impl, fn", [("cyfed-hessian", cyfed_hessian),
                                      ("numpy-hessian", numpy_hessian)],
                         ids=["cyfed-hessian", "numpy-hessian"])
@pytest.mark.parametrize("loss, shape, dtype, threads", HESSIAN_CASES)
def test_hessian(benchmark, timed, bench_data, ratio_table, impl, fn, loss, shape, dtype,
                 threads):
    result, point = _bench(benchmark, timed, bench_data, ratio_table, "hessian", impl, fn,
                           loss, shape, dtype, threads)
    assert result.shape == (point.p, point.p)
