"""Model files, and the partition / evaluate / predict subcommands run end to end.

The subcommands run as `python -m cyfed` in a subprocess importing the cyfed
under test (the source tree here, the installed package in CI); evaluate also
under `mpiexec -n 2` when mpiexec is installed next to the interpreter.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

import cyfed
from cyfed import checkpoint, gradients, io
from cyfed.model_file import load_model, save_model

MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
RNG = np.random.default_rng(11)
N, D, K = 90, 4, 3
X = RNG.standard_normal((N, D))
MODELS = {
    "squared": (RNG.standard_normal(D), 0.5),
    "logistic": (RNG.standard_normal(D), -0.25),
    "softmax": (RNG.standard_normal((D, K)), RNG.standard_normal(K)),
}


def labels(loss):
    """Targets for X: noisy real values, or classes mostly matching the model."""
    coef, intercept = MODELS[loss]
    z = X @ coef + intercept + 0.7 * RNG.standard_normal((N, *np.shape(intercept)))
    if loss == "squared":
        return z
    return (z > 0).astype(float) if loss == "logistic" else np.argmax(z, axis=1).astype(float)


Y = {loss: labels(loss) for loss in MODELS}


def run_cli(*args, mpi=0, cwd=None):
    """`python -m cyfed ARGS` (under `mpiexec -n mpi` when mpi > 0), importing this cyfed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        p for p in [str(Path(cyfed.__file__).parents[1]), os.environ.get("PYTHONPATH")] if p))
    cmd = [sys.executable, "-m", "cyfed", *map(str, args)]
    if mpi:
        cmd = [MPIEXEC, "-n", str(mpi), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=60)


def write_csv(path, X, y):
    """CSV with a header, the label first (column "label"), values that read back exactly."""
    np.savetxt(path, np.column_stack([y, X]), delimiter=",", fmt="%.17g", comments="",
               header=",".join(["label"] + [f"x{j}" for j in range(X.shape[1])]))
    return path


@pytest.fixture
def files(tmp_path):
    """A model file per loss, and the data as a CSV (labels first) and an .npz file."""
    out = {}
    for loss, (coef, intercept) in MODELS.items():
        out[f"{loss}.model"] = tmp_path / f"{loss}-model.npz"
        save_model(out[f"{loss}.model"], loss=loss, coef=coef, intercept=intercept,
                   metadata={"config": {"lr": 0.1}})
        out[f"{loss}.csv"] = write_csv(tmp_path / f"{loss}.csv", X, Y[loss])
        out[f"{loss}.npz"] = tmp_path / f"{loss}-data.npz"
        np.savez(out[f"{loss}.npz"], X=X, y=Y[loss])
    return out


def one_line_error(proc, command):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cyfed {command}: "), proc.stderr
    return lines[0]


# -- model files ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss, coef, intercept", [
    ("squared", np.array([1.5, -2.0, 0.25]), 0.75),
    ("logistic", np.float32([0.5, 1.0]), np.float32(-1.5)),
    ("softmax", np.arange(6.0).reshape(3, 2) / 7, np.array([0.1, -0.1])),
    ("softmax", np.float32([[1, 2, 3], [4, 5, 6]]), np.float32([0, 1, 2])),
], ids=["squared-scalar", "logistic-float32", "softmax-matrix", "softmax-float32"])
def test_model_round_trip(tmp_path, loss, coef, intercept):
    metadata = {"config": {"lr": 0.5, "rounds": 3}, "metrics": {"loss": [0.7, 0.4]}}
    save_model(tmp_path / "m.npz", loss=loss, coef=coef, intercept=intercept, metadata=metadata)
    model = load_model(tmp_path / "m.npz")
    assert model["loss"] == loss
    assert model["metadata"] == {**metadata, "cyfed_version": cyfed.__version__}
    np.testing.assert_array_equal(model["coef"], coef)
    assert model["coef"].dtype == coef.dtype
    if np.ndim(intercept) == 0:
        assert type(model["intercept"]) is float and model["intercept"] == intercept
    else:
        np.testing.assert_array_equal(model["intercept"], intercept)
    with np.load(tmp_path / "m.npz") as raw:
        assert sorted(raw.files) == ["__meta__", "coef", "intercept"]
        meta = json.loads(str(raw["__meta__"]))
    assert meta == {"format": 1, "loss": loss, "cyfed_version": cyfed.__version__, **metadata}


def test_model_file_is_not_overwritten_without_force(tmp_path):
    path = tmp_path / "m.npz"
    save_model(path, loss="squared", coef=[1.0, 2.0], intercept=0.0, metadata={})
    with pytest.raises(FileExistsError, match=r"m\.npz exists; pass --force"):
        save_model(path, loss="squared", coef=[3.0, 4.0], intercept=1.0, metadata={})
    np.testing.assert_array_equal(load_model(path)["coef"], [1.0, 2.0])
    save_model(path, loss="squared", coef=[3.0, 4.0], intercept=1.0, metadata={}, force=True)
    np.testing.assert_array_equal(load_model(path)["coef"], [3.0, 4.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]     # no temporary left


def write_not_a_model(path, kind):
    if kind == "checkpoint":
        checkpoint.save(path, {"coef": np.ones(2), "intercept": np.zeros(()),
                               "velocity": np.zeros(3)}, {"iteration": 3, "history": []})
    elif kind == "checkpoint-without-loss":
        checkpoint.save(path, {"coef": np.ones(2), "intercept": np.zeros(())}, {"round": 1})
    elif kind == "data-npz":
        np.savez(path, X=np.ones((3, 2)), y=np.zeros(3))
    elif kind == "csv-text":
        path.write_text("1,2,3\n4,5,6\n")
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("kind", ["checkpoint", "checkpoint-without-loss", "data-npz",
                                  "csv-text", "empty"])
def test_load_model_refuses_other_files(tmp_path, kind):
    write_not_a_model(tmp_path / "x.npz", kind)
    with pytest.raises(ValueError, match=r"x\.npz is not a cyfed model file"):
        load_model(tmp_path / "x.npz")


@pytest.mark.parametrize("loss, coef, intercept, metadata, match", [
    ("hinge", [1.0], 0.0, {}, "loss must be one of"),
    ("logistic", [[1.0, 2.0]], 0.0, {}, r"must have shape \(d,\)"),
    ("softmax", [1.0, 2.0], [0.0, 0.0], {}, r"must have shape \(d, k\)"),
    ("softmax", [[1.0, 2.0]], 0.0, {}, r"intercept must have shape \(2,\)"),
    ("squared", [1.0], 0.0, {"loss": "x"}, "reserved key"),
])
def test_save_model_refuses_bad_models(tmp_path, loss, coef, intercept, metadata, match):
    with pytest.raises(ValueError, match=match):
        save_model(tmp_path / "m.npz", loss=loss, coef=np.asarray(coef), intercept=intercept,
                   metadata=metadata)
    assert not (tmp_path / "m.npz").exists()


# -- partition -----------------------------------------------------------------------------

@pytest.mark.parametrize("method, fmt", [("iid", "npz"), ("dirichlet", "npy"),
                                         ("shards", "npz"), ("quantity", "npy")])
def test_partition_covers_every_row_once(files, tmp_path, method, fmt):
    out = tmp_path / "clients"
    proc = run_cli("partition", files["softmax.csv"], "--clients", 4, "--method", method,
                   "--alpha", 1.0, "--seed", 3, "--label", "label", "-o", out,
                   "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    clients = io.load_clients(out)
    assert len(clients) == 4 and all(p.suffix == f".{fmt}" for p in out.iterdir())
    rows = np.vstack([np.column_stack([Xk, yk]) for Xk, yk in clients])
    expected = np.column_stack([X, Y["softmax"]])
    np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(expected, axis=0))
    assert rows.shape == expected.shape
    sizes = sorted(yk.size for _, yk in clients)
    classes = sorted(np.unique(yk).size for _, yk in clients)
    assert proc.stdout == (f"4 clients in {out}: rows per client min {sizes[0]}, median "
                           f"{np.median(sizes):g}, max {sizes[-1]}; classes per client min "
                           f"{classes[0]}, median {np.median(classes):g}, max {classes[-1]}\n")


def test_partition_refuses_earlier_clients_without_force(files, tmp_path):
    args = ["partition", files["logistic.npz"], "--clients", 3, "--method", "iid",
            "-o", tmp_path / "c"]
    assert run_cli(*args).returncode == 0
    line = one_line_error(run_cli(*args, "--seed", 1), "partition")
    assert "pass --force to replace them" in line
    assert run_cli(*args, "--seed", 1, "--force").returncode == 0


# -- evaluate ------------------------------------------------------------------------------

def numpy_metrics(loss):
    coef, intercept = MODELS[loss]
    y, z = Y[loss], X @ coef + intercept
    if loss == "squared":
        sse = np.sum((z - y) ** 2)
        return {"loss_function": loss, "rows": N, "mse": sse / N,
                "r2": 1 - sse / np.sum((y - y.mean()) ** 2)}
    if loss == "logistic":
        return {"loss_function": loss, "rows": N,
                "loss": np.mean(np.logaddexp(0, z) - y * z),
                "accuracy": np.mean((z > 0) == y)}
    rows = np.arange(N), y.astype(int)
    return {"loss_function": loss, "rows": N, "loss": np.mean(logsumexp(z, axis=1) - z[rows]),
            "accuracy": np.mean(np.argmax(z, axis=1) == y)}


def assert_metrics(got, expected):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (value if isinstance(value, (str, int))
                            else pytest.approx(value, rel=1e-10, abs=1e-12)), key


@pytest.mark.parametrize("loss", list(MODELS))
@pytest.mark.parametrize("data", ["csv", "npz"])
def test_evaluate_matches_numpy(files, loss, data):
    proc = run_cli("evaluate", files[f"{loss}.model"], files[f"{loss}.{data}"], "--label", 0,
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert_metrics(json.loads(proc.stdout), numpy_metrics(loss))


def test_evaluate_prints_one_readable_line(files):
    proc = run_cli("evaluate", files["logistic.model"], files["logistic.csv"], "--label",
                   "label")
    assert proc.returncode == 0, proc.stderr
    expected = numpy_metrics("logistic")
    assert proc.stdout == (f"logistic model, {N} rows: loss {expected['loss']:.6g}, "
                           f"accuracy {expected['accuracy']:.6g}\n")


def test_evaluate_float32(files):
    proc = run_cli("evaluate", files["softmax.model"], files["softmax.csv"], "--label", 0,
                   "--dtype", "float32", "--json")
    assert proc.returncode == 0, proc.stderr
    got, expected = json.loads(proc.stdout), numpy_metrics("softmax")
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=2 / N)


# -- predict -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".npy"])
@pytest.mark.parametrize("loss, proba", [("squared", False), ("logistic", False),
                                         ("softmax", False), ("logistic", True),
                                         ("softmax", True)])
def test_predict_writes_what_gradients_predicts(files, tmp_path, loss, suffix, proba):
    out = tmp_path / f"pred{suffix}"
    proc = run_cli("predict", files[f"{loss}.model"], files[f"{loss}.npz"], "-o", out,
                   *(["--proba"] if proba else []))
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    fn = gradients.predict_proba if proba else gradients.predict
    expected = fn(loss, X, *MODELS[loss])
    got = np.load(out) if suffix == ".npy" else np.loadtxt(out, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(got, expected)
    if suffix == ".csv":
        header = out.read_text().splitlines()[0]
        assert header == ("prediction" if not proba
                          else ",".join(f"proba_{c}" for c in range(expected.shape[1])))


# -- errors and help ---------------------------------------------------------------------

def test_every_input_error_is_one_line_and_exit_2(files, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,x0,x1\n1,0.5,2\n0,oops,3\n")
    narrow = write_csv(tmp_path / "narrow.csv", X[:, :2], Y["logistic"])
    existing = tmp_path / "old.csv"
    existing.write_text("keep me\n")
    model, data = files["logistic.model"], files["logistic.csv"]
    cases = [
        (("evaluate", tmp_path / "none.npz", data), "none.npz: No such file"),
        (("evaluate", model, tmp_path / "none.csv"), "none.csv: no such file"),
        (("evaluate", model, bad), f"{bad}:3:3: field 2 is 'oops', not a number"),
        (("evaluate", data, data), "is not a cyfed model file"),
        (("evaluate", files["logistic.npz"], data), "is not a cyfed model file"),
        (("evaluate", model, narrow), f"has {D} features, but {narrow} has 2"),
        (("evaluate", model, files["softmax.csv"]), "labels 0 or 1"),
        (("predict", model, narrow, "-o", tmp_path / "p.csv"), "features"),
        (("predict", model, data, "-o", existing), "old.csv exists; pass --force"),
        (("predict", model, data, "-o", tmp_path / "p.txt"), "must end in .csv or .npy"),
        (("predict", files["squared.model"], data, "-o", tmp_path / "p.csv", "--proba"),
         "--proba needs a logistic or softmax model"),
        (("partition", bad, "--clients", 2, "--method", "iid", "-o", tmp_path / "c"),
         "bad.csv:3:3"),
        (("partition", data, "--clients", 20, "--method", "dirichlet", "-o", tmp_path / "c"),
         "cannot give 20 clients"),
    ]
    for args, message in cases:
        line = one_line_error(run_cli(*args, "--label", 0), args[0])
        assert message in line, (args, line)
    assert existing.read_text() == "keep me\n"
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("command", ["partition", "evaluate", "predict"])
def test_help(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: cyfed {command} ")


# -- under mpiexec -------------------------------------------------------------------------

needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec next to the interpreter")


@needs_mpi
@pytest.mark.parametrize("loss, data", [("squared", "npz"), ("logistic", "csv"),
                                        ("softmax", "csv")])
def test_evaluate_under_mpiexec_equals_serial(files, loss, data):
    pytest.importorskip("mpi4py")
    args = ("evaluate", files[f"{loss}.model"], files[f"{loss}.{data}"], "--label", 0, "--json")
    serial, parallel = run_cli(*args), run_cli(*args, mpi=2)
    assert serial.returncode == 0 and parallel.returncode == 0, parallel.stderr
    assert parallel.stdout.count("\n") == 1                  # rank 0 alone prints
    assert_metrics(json.loads(parallel.stdout), json.loads(serial.stdout))


@needs_mpi
def test_evaluate_error_on_one_rank_ends_every_rank(files, tmp_path):
    pytest.importorskip("mpi4py")
    y = Y["logistic"].copy()
    y[N - 3] = 2.0                                   # in rank 1's half of the rows only
    data = write_csv(tmp_path / "labels.csv", X, y)
    line = one_line_error(run_cli("evaluate", files["logistic.model"], data, "--label", 0,
                                  mpi=2), "evaluate")
    assert line.startswith("cyfed evaluate: rank 1: ") and "labels 0 or 1" in line


@needs_mpi
def test_partition_and_predict_under_mpiexec_equal_serial(files, tmp_path):
    pytest.importorskip("mpi4py")
    for mpi, name in ((0, "one"), (2, "two")):
        assert run_cli("partition", files["softmax.csv"], "--clients", 4, "--method", "iid",
                       "--label", 0, "-o", tmp_path / name, mpi=mpi).returncode == 0
        assert run_cli("predict", files["softmax.model"], files["softmax.csv"], "--label", 0,
                       "-o", tmp_path / f"{name}.npy", mpi=mpi).returncode == 0
    for i in range(4):
        a, b = (np.load(tmp_path / n / f"client_00{i}.npz") for n in ("one", "two"))
        np.testing.assert_array_equal(a["X"], b["X"])
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    again = run_cli("predict", files["softmax.model"], files["softmax.csv"], "--label", 0,
                    "-o", tmp_path / "two.npy", mpi=2)
    assert again.returncode == 2 and again.stderr.count("--force") == 1


def test_predict_on_unlabelled_features(files, tmp_path):
    features = tmp_path / "features.csv"
    np.savetxt(features, X, delimiter=",", header=",".join(f"f{j}" for j in range(X.shape[1])),
               comments="")
    out = tmp_path / "p.npy"
    proc = run_cli("predict", files["softmax.model"], features, "-o", out)
    assert proc.returncode == 0, proc.stderr
    coef, intercept = MODELS["softmax"]
    np.testing.assert_array_equal(np.load(out), gradients.predict("softmax", X, coef, intercept))
