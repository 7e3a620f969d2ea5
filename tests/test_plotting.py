"""plot_history on real trainer histories and their JSON/CSV files; the `cyfed plot` command."""
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cyfed
from cyfed import cli
from cyfed.data import make_fedprox_synthetic, split_devices
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer, write_history
from cyfed.cli.plotting import load_history, plot_history
from cyfed.strategies import FedAvg, FedProx

Figure = pytest.importorskip("matplotlib.figure").Figure

FED_METRICS = ["train_loss", "test_loss", "test_accuracy"]
GD_METRICS = ["loss", "grad_norm", "lr"]
MISSING = "cyfed plot needs matplotlib: pip install 'cyfed[plot]'"


@pytest.fixture(scope="module")
def fed_histories():
    """{strategy name: FederatedTrainer.history_} on a small Synthetic(1,1)."""
    train, test = split_devices(make_fedprox_synthetic(1.0, 1.0, n_devices=10, seed=0), 0.2)
    return {name: FederatedTrainer(strategy, "softmax", rounds=6, clients_per_round=5,
                                   local_epochs=2, batch_size=10, lr=0.01, seed=0)
            .fit(train, test=test).history_
            for name, strategy in [("FedAvg", FedAvg()), ("FedProx", FedProx(mu=1.0))]}


@pytest.fixture(scope="module")
def gd_history():
    X = np.random.default_rng(0).standard_normal((300, 4))
    y = (X[:, 0] - X[:, 1] > 0).astype(float)
    return DistributedGD("logistic", lr=1.0, max_iter=20).fit(X, y).history_


@pytest.fixture
def figures(monkeypatch):
    """Every Figure that plot_history saves, kept for inspection."""
    saved, savefig = [], Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make every `import matplotlib...` fail, as if it were not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def assert_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 200 and len(data) > 10_000


def panels(fig):
    return {ax.get_title(): ax for ax in fig.axes}


def test_list_history_of_federated_rounds(tmp_path, fed_histories, figures):
    history = fed_histories["FedAvg"]
    plot_history(history, tmp_path / "fed.png", title="FedAvg")
    assert_png(tmp_path / "fed.png")
    (fig,) = figures
    assert list(panels(fig)) == FED_METRICS and fig._suptitle.get_text() == "FedAvg"
    ax = panels(fig)["test_accuracy"]
    assert ax.get_xlabel() == "round" and ax.get_legend() is None
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [h["round"] for h in history])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(),
                                  [h["test_accuracy"] for h in history])


def test_list_history_of_gradient_descent_iterations(tmp_path, gd_history, figures):
    plot_history(gd_history, tmp_path / "gd.png")
    assert_png(tmp_path / "gd.png")
    (fig,) = figures
    assert list(panels(fig)) == GD_METRICS
    assert panels(fig)["loss"].get_xlabel() == "iter"
    np.testing.assert_array_equal(panels(fig)["loss"].lines[0].get_ydata(),
                                  [h["loss"] for h in gd_history])


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_history_files_from_write_history(tmp_path, fed_histories, figures, suffix):
    history = fed_histories["FedProx"]
    path = tmp_path / f"history{suffix}"
    write_history(history, path)
    plot_history(path, tmp_path / "out.png", metrics=["test_loss", "train_loss"])
    plot_history(str(path), tmp_path / "default.png")
    assert_png(tmp_path / "out.png")
    assert_png(tmp_path / "default.png")
    picked, default = figures
    assert list(panels(picked)) == ["test_loss", "train_loss"]
    assert list(panels(default)) == FED_METRICS
    np.testing.assert_allclose(panels(picked)["test_loss"].lines[0].get_ydata(),
                               [h["test_loss"] for h in history], rtol=1e-15)


def test_a_jsonl_history_of_a_killed_run_drops_its_partial_line(tmp_path, fed_histories):
    history = fed_histories["FedProx"]
    path = tmp_path / "run.history.jsonl"
    write_history(history, path)
    with open(path, "a") as fh:
        fh.write('{"round": 99, "train_lo')              # killed mid-record
    loaded = load_history(path)
    assert len(loaded) == len(history)
    assert [r["train_loss"] for r in loaded] == [h["train_loss"] for h in history]


def test_csv_cells_a_record_lacked_are_left_out(tmp_path, figures):
    history = [{"round": 0, "clients": 2, "train_loss": 0.9, "test_loss": 1.0},
               {"round": 1, "clients": 0, "test_loss": 0.8},
               {"round": 2, "clients": 2, "train_loss": 0.5, "test_loss": 0.7}]
    write_history(history, tmp_path / "h.csv")
    assert load_history(tmp_path / "h.csv") == [
        {key: float(value) for key, value in record.items()} for record in history]
    plot_history(tmp_path / "h.csv", tmp_path / "h.png", metrics="train_loss")
    line = figures[0].axes[0].lines[0]
    assert list(line.get_xdata()) == [0, 2] and list(line.get_ydata()) == [0.9, 0.5]


def test_labelled_histories_are_overlaid(tmp_path, fed_histories, figures):
    write_history(fed_histories["FedProx"], tmp_path / "prox.csv")
    plot_history({"FedAvg": fed_histories["FedAvg"], "FedProx": tmp_path / "prox.csv"},
                 tmp_path / "both.png")
    assert_png(tmp_path / "both.png")
    (fig,) = figures
    assert list(panels(fig)) == FED_METRICS
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["FedAvg", "FedProx"]
        assert [line.get_color() for line in ax.lines] == ["C0", "C1"]


def test_federated_and_gradient_descent_runs_share_a_panel(tmp_path, fed_histories,
                                                           gd_history, figures):
    plot_history({"fed": fed_histories["FedAvg"], "gd": gd_history}, tmp_path / "mix.png",
                 metrics=["train_loss", "loss"])
    ax = panels(figures[0])["loss"]
    assert ax.get_xlabel() == "round / iter"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["gd"]
    assert ax.lines[0].get_color() == "C1"


@pytest.mark.parametrize("history,metrics,match", [
    ([{"round": 0, "loss": 1.0}], ["acc"], r"no numeric metric\(s\) acc .*available: round, loss"),
    ([{"round": 0, "loss": 1.0}], [], "metrics is empty"),
    ([{"round": 0, "seconds": 1.0, "bytes_up": 8}], None, "no numeric metrics"),
    ([], None, "no records"),
    ({"round": [0, 1]}, None, "list of records"),
    ({}, None, "dict is empty"),
])
def test_bad_histories_and_metrics_are_refused(tmp_path, history, metrics, match):
    with pytest.raises(ValueError, match=match):
        plot_history(history, tmp_path / "x.png", metrics=metrics)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name,content,match", [
    ("h.json", "[{\"round\": 0,", "not valid JSON"),
    ("h.json", "{\"round\": 0}", "list of records"),
    ("h.json", "[]", "no records"),
    ("h.csv", "", "no records"),
    ("h.txt", "[]", "ends in .json, .jsonl or .csv"),
])
def test_invalid_history_files_are_refused(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        load_history(tmp_path / name)


def test_missing_matplotlib_is_a_clear_import_error(tmp_path, gd_history, no_matplotlib):
    with pytest.raises(ImportError) as info:
        plot_history(gd_history, tmp_path / "x.png")
    assert str(info.value) == MISSING


def test_cli_without_matplotlib_exits_1_with_one_line(tmp_path, gd_history, no_matplotlib,
                                                      capsys):
    write_history(gd_history, tmp_path / "h.json")
    assert cli.main(["plot", str(tmp_path / "h.json"), "-o", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err == f"cyfed plot: {MISSING}\n"
    assert not (tmp_path / "x.png").exists()


def run_cli(*args, cwd):
    """`python -m cyfed ARGS` in a subprocess that imports this same cyfed."""
    package_root = str(Path(cyfed.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in [package_root, os.environ.get("PYTHONPATH")] if p))
    return subprocess.run([sys.executable, "-m", "cyfed", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_plots_several_histories_and_refuses_to_overwrite(tmp_path, fed_histories):
    write_history(fed_histories["FedAvg"], tmp_path / "fedavg.json")
    write_history(fed_histories["FedProx"], tmp_path / "fedprox.csv")
    files = ["fedavg.json", "fedprox.csv"]
    done = run_cli("plot", *files, "-o", "cmp.png", "--metrics", "test_accuracy, train_loss",
                   "--title", "FedAvg vs FedProx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_png(tmp_path / "cmp.png")

    before = (tmp_path / "cmp.png").read_bytes()
    refused = run_cli("plot", *files, "-o", "cmp.png", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr == "cyfed plot: cmp.png exists; pass --force to overwrite it\n"
    assert (tmp_path / "cmp.png").read_bytes() == before

    forced = run_cli("plot", *files, "-o", "cmp.png", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert_png(tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").read_bytes() != before      # all three metrics now


@pytest.mark.parametrize("files,extra,message", [
    ({}, [], "cannot read missing.json: No such file or directory"),
    ({"bad.json": "not json"}, [], "bad.json: not valid JSON"),
    ({"h.json": json.dumps([{"round": 0, "loss": 1.0}])}, ["--metrics", "acc"],
     "no numeric metric(s) acc in the history"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, files, extra, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    history = next(iter(files), "missing.json")
    done = run_cli("plot", history, "-o", "out.png", *extra, cwd=tmp_path)
    assert done.returncode == 2
    assert re.fullmatch(r"cyfed plot: .+\n", done.stderr) and message in done.stderr
    assert not (tmp_path / "out.png").exists()


def test_cli_plot_help(tmp_path):
    done = run_cli("plot", "--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("usage: cyfed plot")
    assert "--force" in done.stdout and "--metrics" in done.stdout
