"""SIMD build selection (CYFED_SIMD) and agreement of every build with the default one.

Each level is imported in a fresh interpreter (the choice is made once, at
import); the subprocess recomputes the same seeded problems and sends its
results back as an .npz file.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cyfed
from cyfed import _simd
from reference import assert_close

CONFIG = cyfed.show_config(mode="dicts")
SIMD = CONFIG["simd"]
LEVELS = ("baseline", "x86-64-v3", "x86-64-v4")


def runnable_levels():
    """Installed levels this CPU can execute."""
    cpu = LEVELS.index(SIMD["cpu_supports"])
    return [lvl for lvl in SIMD["installed"] if LEVELS.index(lvl) <= cpu]


# The problems, rebuilt identically in the parent and in each child.
PROBLEMS = textwrap.dedent("""
    import numpy as np

    # shapes that take each kernel path: narrow d <= 16 and general d > 16 for
    # squared/logistic; softmax with k in one/two vector registers or generic
    SHAPES = [(3001, 11, 4), (2003, 19, 20), (1001, 6, 40)]

    def problems():
        out = {}
        for n, d, k in SHAPES:
            for dtype in (np.float32, np.float64):
                for loss in ("squared", "logistic", "softmax"):
                    rng = np.random.default_rng(1234)
                    X = (rng.standard_normal((n, d)) + 0.2).astype(dtype)
                    if loss == "softmax":
                        coef = rng.standard_normal((d, k)).astype(dtype)
                        y = rng.integers(0, k, n)
                        b = rng.standard_normal(k)
                    else:
                        coef = rng.standard_normal(d).astype(dtype)
                        y = (rng.standard_normal(n) if loss == "squared"
                             else rng.integers(0, 2, n))
                        b = 0.3
                    sw = rng.uniform(0.5, 1.5, n)
                    rows = rng.integers(0, n, size=n // 2)
                    key = f"{loss}-{np.dtype(dtype).name}-{n}x{d}x{k}"
                    out[key] = (loss, X, y, coef, b, sw, rows)
        return out

    def results(cyfed):
        res = {}
        for key, (loss, X, y, coef, b, sw, rows) in problems().items():
            for tag, r in (("", None), ("/rows", rows)):
                value, g, gb = cyfed.loss_grad(loss, X, y, coef, b, sample_weight=sw,
                                               l2=0.1, rows=r)
                res[key + tag + "/value"] = np.float64(value)
                res[key + tag + "/grad_coef"] = g
                res[key + tag + "/grad_intercept"] = np.asarray(gb)
            res[key + "/margins"] = cyfed.margins(X, coef, b)
        return res
""")

CHILD = PROBLEMS + textwrap.dedent("""
    import json, sys, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import cyfed
        import cyfed.gradients
    np.savez(sys.argv[1], **results(cyfed))
    print(json.dumps({"level": cyfed.gradients.SIMD_LEVEL,
                      "module": cyfed.gradients._kernels.__name__,
                      "selected": cyfed.show_config(mode="dicts")["simd"]["selected"],
                      "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
""")


def run_child(tmp_path, simd):
    env = dict(os.environ)
    env.pop("CYFED_SIMD", None)
    if simd is not None:
        env["CYFED_SIMD"] = simd
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(cyfed.__file__))]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    out = tmp_path / f"res-{simd}.npz"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as data:
        info["results"] = dict(data)
    return info


def simd_warnings(child):
    return [w for w in child["warnings"] if "CYFED_SIMD" in w]


@pytest.fixture(scope="module")
def default_results():
    namespace = {}
    exec(PROBLEMS, namespace)
    return namespace["results"](cyfed)


# --------------------------------------------------------------------------- show_config

def test_show_config_dicts():
    assert SIMD["selected"] in SIMD["installed"]
    assert set(SIMD["installed"]) <= set(LEVELS)
    assert "baseline" in SIMD["installed"]
    assert SIMD["cpu_supports"] in LEVELS
    assert LEVELS.index(SIMD["selected"]) <= LEVELS.index(SIMD["cpu_supports"])
    assert SIMD["selected"] == cyfed.gradients.SIMD_LEVEL
    assert isinstance(CONFIG["openmp"]["enabled"], bool)
    assert CONFIG["openmp"]["max_threads"] >= 1
    assert CONFIG["cyfed"] == cyfed.__version__


def test_default_is_best_runnable_level():
    """Without CYFED_SIMD, the best installed level the CPU runs is used."""
    if os.environ.get("CYFED_SIMD", "auto").strip().lower() not in ("", "auto"):
        pytest.skip("CYFED_SIMD is set for this test run")
    assert SIMD["selected"] == runnable_levels()[-1]


def test_show_config_stdout(capsys):
    assert cyfed.show_config() is None
    printed = json.loads(capsys.readouterr().out)
    assert printed["simd"] == SIMD


def test_show_config_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        cyfed.show_config(mode="yaml")


# --------------------------------------------------------------------------- CYFED_SIMD

@pytest.mark.parametrize("level", runnable_levels())
def test_each_level_matches_default(level, tmp_path, default_results):
    child = run_child(tmp_path, level)
    assert child["level"] == level
    assert child["selected"] == level
    assert not simd_warnings(child)
    suffix = {"baseline": "", "x86-64-v3": "_x86_64_v3", "x86-64-v4": "_x86_64_v4"}[level]
    assert child["module"] == f"cyfed._losses{suffix}"
    results = child["results"]
    assert results.keys() == default_results.keys()
    for key, want in default_results.items():
        got = results[key]
        assert got.dtype == np.asarray(want).dtype, key
        rtol = 1e-5 if "float32" in key else 1e-12
        # different vector widths sum in a different order: agree to rounding
        assert_close(got, want, rtol, err_msg=f"{key} at {level}")


@pytest.mark.parametrize("spelling", ["X86_64_V3", " x86-64-v3 ", "x86_64-v3"])
def test_level_spellings(spelling, tmp_path):
    if "x86-64-v3" not in runnable_levels():
        pytest.skip("x86-64-v3 is not installed or not supported by this CPU")
    child = run_child(tmp_path, spelling)
    assert child["level"] == "x86-64-v3"
    assert not simd_warnings(child)


@pytest.mark.parametrize("value", ["auto", ""])
def test_auto(value, tmp_path):
    child = run_child(tmp_path, value)
    assert child["level"] == runnable_levels()[-1]
    assert not simd_warnings(child)


def test_invalid_value_warns_and_falls_back(tmp_path, default_results):
    child = run_child(tmp_path, "avx9000")
    assert child["level"] == runnable_levels()[-1]
    assert any(w.startswith("RuntimeWarning") and "CYFED_SIMD" in w and "avx9000" in w
               for w in child["warnings"]), child["warnings"]
    for key, want in default_results.items():
        rtol = 1e-5 if "float32" in key else 1e-12
        assert_close(child["results"][key], want, rtol, err_msg=key)


def test_level_above_cpu_warns_and_falls_back(tmp_path):
    cpu = SIMD["cpu_supports"]
    if cpu == LEVELS[-1]:
        pytest.skip(f"this CPU supports the highest level ({cpu})")
    above = LEVELS[LEVELS.index(cpu) + 1]
    child = run_child(tmp_path, above)
    assert LEVELS.index(child["level"]) <= LEVELS.index(cpu)
    assert any("CYFED_SIMD" in w for w in child["warnings"])


def test_requested_level_in_process(monkeypatch):
    """_simd.requested_level reads CYFED_SIMD at call time (no reimport needed)."""
    monkeypatch.setenv("CYFED_SIMD", "baseline")
    assert _simd.requested_level() == "baseline"
    monkeypatch.setenv("CYFED_SIMD", "nonsense")
    with pytest.warns(RuntimeWarning, match="CYFED_SIMD"):
        assert _simd.requested_level() == _simd.cpu_level()
    monkeypatch.delenv("CYFED_SIMD")
    assert _simd.requested_level() == _simd.cpu_level()
