"""Issue 17's table, replayed as a new user would, through the command line in a
subprocess: --version, cyfed.distributed, a bad --set value, a forgotten --loss,
Ctrl-C (serial and under mpiexec) and the bytes a long run writes per step."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cyfed
from cyfed.model_file import load_model

MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(Path(cyfed.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}


def command(*args, n_ranks=1):
    cmd = [sys.executable, "-m", "cyfed", *map(str, args)]
    return [MPIEXEC, "-n", str(n_ranks)] + cmd if n_ranks > 1 else cmd


def cyfed_cli(*args, n_ranks=1, cwd=None):
    return subprocess.run(command(*args, n_ranks=n_ranks), capture_output=True, text=True,
                          timeout=120, env=ENV, cwd=cwd)


def cyfed_lines(stderr):
    """The lines cyfed wrote on stderr (not mpiexec's)."""
    return [line for line in stderr.splitlines() if line.startswith("cyfed")]


def csv_data(tmp_path, labels="binary", n=300):
    """data.csv: 4 features and a label column last (0/1, 0/1/2 or real)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 4))
    z = X @ np.array([1.0, -2.0, 0.5, 1.0])
    y = {"binary": (z > 0).astype(int), "three": np.digitize(z, [-1.0, 1.0]),
         "real": z + 0.1 * rng.standard_normal(n)}[labels]
    np.savetxt(tmp_path / "data.csv", np.column_stack([X, y]), delimiter=",", fmt="%.10g")
    return X, y


def test_version():
    proc = cyfed_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"cyfed {cyfed.__version__}\n"


def test_subpackages_are_attributes_and_help_lists_the_trainers_first():
    script = ("import sys, cyfed\n"
              "assert 'sklearn' not in sys.modules\n"
              "print(cyfed.distributed.DistributedGD.__name__,"
              " cyfed.federated.FederatedTrainer.__name__,"
              " cyfed.model_selection.GridSearchCV.__name__)\n"
              "assert 'sklearn' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["DistributedGD", "FederatedTrainer", "GridSearchCV"]
    doc = cyfed.__doc__
    assert doc.index("DistributedGD") < doc.index("LogisticRegression") < doc.index("loss_grad")
    with pytest.raises(AttributeError, match="no attribute 'distributd'"):
        cyfed.distributd


@pytest.mark.parametrize("mode", ["distributed", "federated"])
@pytest.mark.parametrize("override, message", [
    ('trainer.lr="fast"', "lr"), ("trainer.lr=-1", "lr"),
    ("output.checkpoint_seconds=0", "checkpoint_seconds must be a number > 0")])
def test_a_bad_value_exits_2_with_one_line(tmp_path, mode, override, message):
    csv_data(tmp_path)
    data = (["--loss", "logistic", "--data", "data.csv"] if mode == "distributed" else
            ["--loss", "softmax", "--set", 'data.builtin="fedprox-synthetic"'])
    proc = cyfed_cli("train", "--mode", mode, *data, "--set", override, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr
    assert "training failed" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_value_refused_before_the_first_step_exits_2(tmp_path):
    csv_data(tmp_path)
    proc = cyfed_cli("train", "--mode", "distributed", "--loss", "logistic", "--data",
                     "data.csv", "--set", "trainer.lr=0.1", "--set", "trainer.batch_size=5000",
                     cwd=tmp_path)
    assert proc.returncode == 2 and cyfed_lines(proc.stderr) == [
        "cyfed train: batch_size=5000 exceeds the 300 rows held by all ranks together"]


@pytest.mark.parametrize("labels, loss, what", [
    ("binary", "logistic", "2 distinct integers (0, 1)"),
    ("three", "softmax", "3 distinct integers (0, 1, 2)"),
    ("real", "squared", "real numbers (300 distinct values)"),
])
def test_a_forgotten_loss_is_inferred_from_the_labels_and_said(tmp_path, labels, loss, what):
    csv_data(tmp_path, labels)
    proc = cyfed_cli("train", "--mode", "distributed", "--data", "data.csv", "--quiet",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"cyfed train: no --loss given; the labels are {what}, so --loss {loss} (train "
        + ("a classifier with --loss logistic or softmax)" if loss == "squared"
           else "a regression with --loss squared)")]
    assert load_model(tmp_path / "model.npz")["loss"] == loss
    evaluated = json.loads(cyfed_cli("evaluate", "model.npz", "data.csv", "--json",
                                     cwd=tmp_path).stdout)
    assert evaluated["r2"] > 0.99 if loss == "squared" else evaluated["accuracy"] > 0.95


def interrupt(args, history, n_ranks=1, cwd=None):
    """Start `cyfed train`, send SIGINT to its process group once `history` has a line
    (as Ctrl-C in a terminal does): the CompletedProcess (SIGKILL after 60 s)."""
    proc = subprocess.Popen(command(*args, n_ranks=n_ranks), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (history.exists() and history.read_text().count("\n")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


LONG = ["train", "--mode", "distributed", "--loss", "logistic", "--data", "data.csv",
        "--set", "trainer.lr=0.1", "--set", 'trainer.solver="gd"', "--set",
        "trainer.max_iter=100000", "--quiet"]


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_ctrl_c_ends_with_one_line_exit_130_and_a_checkpoint(tmp_path, n_ranks):
    if n_ranks > 1 and MPIEXEC is None:
        pytest.skip("needs mpiexec")
    csv_data(tmp_path, n=100)
    proc = interrupt([*LONG, "-o", "m.npz"], tmp_path / "m.history.jsonl", n_ranks, tmp_path)
    assert proc.returncode == 130, proc.stderr
    lines = cyfed_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    step = int(lines[0].split("interrupted at step ")[1].split(";")[0])
    assert lines[0] == (f"cyfed train: interrupted at step {step}; checkpoint at "
                        "m.checkpoint.npz; continue with --resume")
    records = json.loads((tmp_path / "m.history.json").read_text())
    assert 0 < step <= len(records) <= step + 1 < 100000
    assert not (tmp_path / "m.npz").exists()


def test_resume_after_ctrl_c_ends_where_an_uninterrupted_run_does(tmp_path):
    csv_data(tmp_path, n=100)
    steps = ["--set", "trainer.max_iter=20000"]
    assert interrupt([*LONG, *steps, "-o", "m.npz"], tmp_path / "m.history.jsonl",
                     cwd=tmp_path).returncode == 130
    resumed = cyfed_cli(*LONG, *steps, "-o", "m.npz", "--resume", cwd=tmp_path)
    whole = cyfed_cli(*LONG, *steps, "-o", "w.npz", cwd=tmp_path)
    assert resumed.returncode == 0 and whole.returncode == 0, resumed.stderr + whole.stderr
    np.testing.assert_array_equal(load_model(tmp_path / "m.npz")["coef"],
                                  load_model(tmp_path / "w.npz")["coef"])
    assert len((tmp_path / "m.history.jsonl").read_text().splitlines()) == 20000


WRITTEN = """
import sys
from cyfed.cli import main
status = main(sys.argv[1:])
print(next(l.split()[1] for l in open("/proc/self/io") if l.startswith("wchar")))
sys.exit(status)
"""


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_a_long_run_writes_the_same_bytes_per_step(tmp_path):
    """1,000 iterations: the history grows a line per step, and the whole command
    writes the same number of bytes per step (no file is rewritten every step)."""
    csv_data(tmp_path)
    written = {}
    for steps in (250, 500, 1000):
        args = ["train", "--mode", "distributed", "--loss", "logistic", "--data", "data.csv",
                "--set", "trainer.lr=0.1", "--set", 'trainer.solver="gd"', "--set",
                f"trainer.max_iter={steps}", "-o", f"m{steps}.npz", "--quiet"]
        proc = subprocess.run([sys.executable, "-c", WRITTEN, *args], capture_output=True,
                              text=True, env=ENV, cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stderr
        written[steps] = int(proc.stdout)
        lines = (tmp_path / f"m{steps}.history.jsonl").read_text().splitlines()
        assert len(lines) == steps and max(map(len, lines)) < 1.5 * min(map(len, lines))
    per_step = [(written[500] - written[250]) / 250, (written[1000] - written[500]) / 500]
    assert 0.8 < per_step[1] / per_step[0] < 1.25 and per_step[1] < 4096, written


def test_a_federated_run_on_one_csv_splits_it_out_of_the_box(tmp_path):
    """Issue 17's row: a federated run on one CSV needed two --set flags, and a
    Dirichlet split could not lower min_size.  Now: 10 IID clients by default (said on
    stderr), and --clients/--partition/--alpha/--min-size (or [data] min_size)."""
    csv_data(tmp_path, n=400)
    base = ("train", "--mode", "federated", "--loss", "logistic", "--data",
            tmp_path / "data.csv", "--quiet", "--set", "trainer.rounds=2")
    proc = cyfed_cli(*base, "-o", tmp_path / "a.npz")
    assert proc.returncode == 0, proc.stderr
    assert "10 IID clients" in proc.stderr
    history = [json.loads(line) for line in (tmp_path / "a.history.jsonl").read_text().splitlines()]
    assert len(history) == 2
    proc = cyfed_cli(*base, "-o", tmp_path / "b.npz", "--clients", "8", "--partition",
                     "dirichlet", "--alpha", "0.3", "--min-size", "4")
    assert proc.returncode == 0, proc.stderr
    assert "IID" not in proc.stderr
    proc = cyfed_cli(*base, "-o", tmp_path / "c.npz", "--clients", "8", "--partition",
                     "dirichlet", "--set", "data.min_size=4")
    assert proc.returncode == 0, proc.stderr
    proc = cyfed_cli(*base, "-o", tmp_path / "d.npz", "--clients", "100", "--partition",
                     "dirichlet")
    assert proc.returncode == 2
    assert cyfed_lines(proc.stderr) == [
        "cyfed train: 400 rows cannot give 100 clients at least 10 row(s) each"]
