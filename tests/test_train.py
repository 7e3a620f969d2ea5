"""`cyfed train`: config files and overrides, outputs, resume, errors, serial and under mpiexec."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cyfed
import cyfed.compress
from cyfed.cli import config as cfg
from cyfed import strategies
from cyfed.model_file import load_model

MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

FEDERATED = """
    mode = "federated"
    loss = "softmax"
    [data]
    builtin = "fedprox-synthetic"
    test_fraction = 0.2
    [trainer]
    rounds = 3
    clients_per_round = 5
    local_epochs = 1
    lr = 0.01
    seed = 1
    [strategy]
    name = "FedAdam"
    eta = 0.01
    aggregator = { name = "FedTrimmedAvg", beta = 0.2 }
"""


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def cyfed_cli(*args, n_ranks=1, cwd=None):
    cmd = [sys.executable, "-m", "cyfed", *map(str, args)]
    if n_ranks > 1:
        cmd = [MPIEXEC, "-n", str(n_ranks)] + cmd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(cyfed.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


# -- config -----------------------------------------------------------------------------------

def test_overrides_beat_the_file_and_build_nested_strategies(tmp_path):
    config = cfg.load(write(tmp_path, FEDERATED), ["trainer.lr=0.5", "strategy.eta=0.02",
                                                   "data.test_fraction=0.1"])
    assert config["trainer"]["lr"] == 0.5 and config["data"]["test_fraction"] == 0.1
    strategy = cfg.make_strategy(config["strategy"])
    assert isinstance(strategy, strategies.FedAdam) and strategy.eta == 0.02
    assert isinstance(strategy.aggregator, strategies.FedTrimmedAvg)


@pytest.mark.parametrize("override, match", [
    ("trainer.lrr=0.1", "did you mean 'lr'"),
    ("strategy.name=\"FedAdma\"", "did you mean 'FedAdam'"),
    ("strategy.etta=1", "did you mean 'eta'"),
    ("dat.path=\"x\"", "did you mean 'data'"),
    ("output.modle=\"x\"", "did you mean 'model'"),
    ("mode=\"fedrated\"", "mode must be one of"),
    ("strategy.eta=-1", "eta must be"),
    ("trainer.max_iter=3", "unknown key 'max_iter'.*valid: batch_size"),   # DistributedGD's
    ("lr", "section.key=value"),
])
def test_bad_keys_and_values_are_refused_with_a_suggestion(tmp_path, override, match):
    with pytest.raises(cfg.ConfigError, match=match):
        cfg.load(write(tmp_path, FEDERATED), [override])


def test_data_needs_a_source_and_distributed_takes_no_strategy(tmp_path):
    with pytest.raises(cfg.ConfigError, match="exactly one of path"):
        cfg.load(write(tmp_path, "[data]\nlabel = 0\n"))
    with pytest.raises(cfg.ConfigError, match="federated"):
        cfg.load(write(tmp_path, 'mode = "distributed"\n[data]\nbuiltin = "iris"\n'
                                 '[strategy]\nname = "FedAvg"\n'))


@pytest.mark.parametrize("override, match", [
    ("privacy.clip_nrom=1.0", "did you mean 'clip_norm'"),
    ("privacy.noise=\"local\"", "noise must be one of"),
    ("secure_aggregation.bits=8", "bits must be an integer"),
    ("secure_aggregation.neighbors=4", "did you mean 'neighbours'"),
])
def test_privacy_and_secure_aggregation_tables_are_checked(tmp_path, override, match):
    private = FEDERATED.replace('name = "FedAdam"', 'name = "FedAvg"').replace(
        "    eta = 0.01\n    aggregator = { name = \"FedTrimmedAvg\", beta = 0.2 }\n", "")
    private += "    [privacy]\n    noise_multiplier = 1.0\n    [secure_aggregation]\n"
    with pytest.raises(cfg.ConfigError, match=match):
        cfg.load(write(tmp_path, private), [override])
    with pytest.raises(cfg.ConfigError, match="federated"):
        cfg.load(write(tmp_path, 'mode = "distributed"\n[data]\nbuiltin = "iris"\n'
                                 '[secure_aggregation]\nbits = 32\n'))


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load(tmp_path / "nope.toml")
    with pytest.raises(cfg.ConfigError, match="bad.toml"):
        cfg.load(write(tmp_path, "mode = \n", "bad.toml"))


# -- the command end to end -------------------------------------------------------------------

def test_federated_train_writes_model_history_and_checkpoint(tmp_path):
    proc = cyfed_cli("train", "--config", write(tmp_path, FEDERATED), "-o",
                     tmp_path / "out" / "m.npz")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    history = json.loads((out / "m.history.json").read_text())
    assert [h["round"] for h in history] == [0, 1, 2] and "test_accuracy" in history[-1]
    assert (out / "m.history.csv").read_text().startswith("round,")
    assert (out / "m.checkpoint.npz").exists() and (out / "m.config.json").exists()
    model = load_model(out / "m.npz")
    assert model["loss"] == "softmax" and model["coef"].shape == (60, 10)
    assert model["metadata"]["metrics"]["round"] == 2
    assert "model in" in proc.stdout


PRIVATE = FEDERATED.replace('name = "FedAdam"', 'name = "FedAvg"').replace(
    "    eta = 0.01\n    aggregator = { name = \"FedTrimmedAvg\", beta = 0.2 }\n", "") + """
    [privacy]
    clip_norm = 1.0
    target_epsilon = 5.0
    noise = "distributed"
    adaptive = true
    count_noise = 1.0
    [secure_aggregation]
    clip_range = 3.0
    neighbours = "log"
"""


def test_compression_table_builds_the_compressors(tmp_path):
    text = FEDERATED + """
    [compression]
    uplink = { name = "TopK", k = 0.05 }
    error_feedback = true
    downlink = { name = "QSGD", levels = 31 }
"""
    config = cfg.load(write(tmp_path, text))
    options = cfg.compression_options(config["compression"])
    assert isinstance(options["compression"], cyfed.compress.TopK)
    assert isinstance(options["downlink_compression"], cyfed.compress.QSGD)
    assert options["error_feedback"] is True
    for override, match in [("compression.uplink.name=\"TopKK\"", "did you mean 'TopK'"),
                            ("compression.uplink.k=-1", "k must be"),
                            ("compression.feedback=true", "did you mean 'error_feedback'")]:
        with pytest.raises(cfg.ConfigError, match=match):
            cfg.load(write(tmp_path, text), [override])
    proc = cyfed_cli("train", "--config", write(tmp_path, text), "-o", tmp_path / "m.npz")
    assert proc.returncode == 0, proc.stderr
    history = json.loads((tmp_path / "m.history.json").read_text())
    plain = cyfed_cli("train", "--config", write(tmp_path, FEDERATED, "plain.toml"), "-o",
                      tmp_path / "p.npz")
    assert plain.returncode == 0, plain.stderr
    plain_history = json.loads((tmp_path / "p.history.json").read_text())
    assert history[0]["bytes_up"] * 5 < plain_history[0]["bytes_up"]


def test_private_federated_train_records_epsilon(tmp_path):
    proc = cyfed_cli("train", "--config", write(tmp_path, PRIVATE), "-o", tmp_path / "m.npz")
    assert proc.returncode == 0, proc.stderr
    history = json.loads((tmp_path / "m.history.json").read_text())
    eps = [h["epsilon"] for h in history]
    assert eps == sorted(eps) and 0 < eps[-1] <= 5.0
    assert all(h["secagg_clients"] == 5 for h in history)


def test_resume_continues_to_the_same_bits(tmp_path):
    config = write(tmp_path, FEDERATED)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert cyfed_cli("train", "--config", config, "-o", a, "--set",
                     "trainer.rounds=5").returncode == 0
    assert cyfed_cli("train", "--config", config, "-o", b).returncode == 0
    resumed = cyfed_cli("train", "--config", config, "-o", b, "--resume", "--set",
                        "trainer.rounds=5")
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_array_equal(load_model(a)["coef"], load_model(b)["coef"])
    assert len(json.loads((tmp_path / "b.history.json").read_text())) == 5


def test_an_earlier_run_is_not_overwritten_without_force(tmp_path):
    config = write(tmp_path, FEDERATED)
    out = tmp_path / "out" / "m.npz"
    assert cyfed_cli("train", "--config", config, "-o", out).returncode == 0
    again = cyfed_cli("train", "--config", config, "-o", out)
    assert again.returncode == 2 and "--force" in again.stderr
    assert cyfed_cli("train", "--config", config, "-o", out, "--force").returncode == 0


def test_distributed_train_on_a_csv_file_from_flags_alone(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3
    np.savetxt(tmp_path / "data.csv", np.column_stack([X, y]), delimiter=",",
               header="a,b,c,target", comments="")
    proc = cyfed_cli("train", "--mode", "distributed", "--loss", "squared", "--data",
                     "data.csv", "--label", "target", "--set", "trainer.lr=0.2", "--set",
                     "trainer.max_iter=300", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model = load_model(tmp_path / "model.npz")
    np.testing.assert_allclose(model["coef"], [1.0, -2.0, 0.5], atol=1e-6)
    assert abs(float(model["intercept"]) - 0.3) < 1e-6


def test_distributed_train_with_dp_sgd_and_compressed_gradients(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 3))
    y = (X @ np.array([1.0, -2.0, 0.5]) > 0).astype(float)
    np.savetxt(tmp_path / "data.csv", np.column_stack([X, y]), delimiter=",")
    common = ["train", "--mode", "distributed", "--loss", "logistic", "--data", "data.csv",
              "--label", "-1", "--set", "trainer.lr=0.5", "--set", "trainer.max_iter=40",
              "--quiet"]
    private = cyfed_cli(*common, "-o", "dp.npz", "--set", "privacy.clip_norm=1.0", "--set",
                        "privacy.noise_multiplier=1.0", "--set", "privacy.sample_rate=0.05",
                        cwd=tmp_path)
    assert private.returncode == 0, private.stderr
    history = json.loads((tmp_path / "dp.history.json").read_text())
    assert 0 < history[-1]["epsilon"] and history[-1]["batch_size"] > 0
    compressed = cyfed_cli(*common, "-o", "c.npz", "--set",
                           'compression.uplink={ name = "TopK", k = 2 }', "--set",
                           "compression.error_feedback=true", cwd=tmp_path)
    assert compressed.returncode == 0, compressed.stderr
    refused = cyfed_cli(*common, "--set", 'compression.downlink={ name = "FP16" }',
                        cwd=tmp_path)
    assert refused.returncode == 2 and "federated" in refused.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "trainer.lrr=1"], "did you mean 'lr'"),
    (["--set", "data.builtin=\"nope\""], "nope"),
])
def test_errors_are_one_line_and_exit_2(tmp_path, args, message):
    proc = cyfed_cli("train", "--config", write(tmp_path, FEDERATED), "-o", tmp_path / "o.npz",
                     *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec")
def test_train_under_mpiexec_matches_one_process(tmp_path):
    config = write(tmp_path, FEDERATED)
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    serial = cyfed_cli("train", "--config", config, "-o", one, "--quiet")
    spread = cyfed_cli("train", "--config", config, "-o", two, "--quiet", n_ranks=2)
    assert serial.returncode == 0 and spread.returncode == 0, spread.stderr
    np.testing.assert_array_equal(load_model(one)["coef"], load_model(two)["coef"])
    bad = cyfed_cli("train", "--config", config, "-o", tmp_path / "x.npz", "--set",
                    "trainer.lrr=1", n_ranks=2)
    assert bad.returncode != 0 and bad.stderr.count("did you mean") == 1


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_demo_and_info_run_serially_and_under_mpiexec(n_ranks):
    if n_ranks > 1 and MPIEXEC is None:
        pytest.skip("needs mpiexec")
    demo = cyfed_cli("demo", "--rows", 4000, "--iters", 3, "--rounds", 2, "--shapes", "2000x10",
                     "--repeat", 1, n_ranks=n_ranks)
    assert demo.returncode == 0, demo.stderr
    assert "Seed example" in demo.stdout and "FedProx" in demo.stdout
    assert demo.stdout.count("Seed example") == 1                  # rank 0 prints
    info = cyfed_cli("info", n_ranks=n_ranks)
    config = json.loads(info.stdout)
    assert info.returncode == 0 and config["cyfed"] == cyfed.__version__
    assert ("mpi" in config) == (n_ranks > 1)


@pytest.mark.parametrize("command", ["demo", "info", "train", "plot", "partition", "evaluate",
                                     "predict"])
def test_every_subcommand_has_help(command):
    proc = cyfed_cli(command, "--help")
    assert proc.returncode == 0 and "usage: cyfed" in proc.stdout


@pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec")
def test_a_file_unreadable_on_one_rank_ends_every_rank(tmp_path):
    """An OSError on rank 1 only (its data file missing) must not leave rank 0 waiting."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from cyfed.comm import get_comm
        from cyfed.cli import main
        rank = get_comm().rank
        data = {str(tmp_path)!r} + ("/data.csv" if rank == 0 else "/missing-on-rank-1.csv")
        sys.exit(main(["train", "--mode", "distributed", "--data", data, "-o",
                       {str(tmp_path / "m.npz")!r}]))
    """))
    (tmp_path / "data.csv").write_text("1,2,3\n4,5,6\n7,8,9\n")
    env = {**os.environ, "PYTHONPATH": str(Path(cyfed.__file__).parents[1]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "rank 1" in proc.stderr and "Traceback" not in proc.stderr


# -- solvers, lr="auto", standardize and [search] (issue 14) -------------------------------------

SEARCH = """
mode = "distributed"
loss = "logistic"
[data]
path = "scaled.csv"
[trainer]
{trainer}
[search]
param_grid = {grid}
cv = {cv}
"""


def badly_scaled_csv(tmp_path, n=400):
    """A logistic problem with features scaled 0.01..100 (raw: a guessed lr fails)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n, 4)) * [0.01, 1.0, 100.0, 5.0] + [0, 3, -50, 0]
    z = (X - X.mean(0)) / X.std(0) @ np.array([1.0, -2.0, 0.5, 1.0])
    y = (z + rng.logistic(size=n) > 0).astype(float)
    np.savetxt(tmp_path / "scaled.csv", np.column_stack([X, y]), delimiter=",")
    return X, y


@pytest.mark.parametrize("overrides", [
    ["trainer.solver=\"newton-cg\""],
    ["trainer.solver=\"auto\"", "trainer.standardize=true"],
    ["trainer.lr=\"auto\"", "trainer.standardize=true", "trainer.max_iter=400",
     "trainer.momentum=0.9", "trainer.nesterov=true"],
])
def test_train_needs_no_learning_rate(tmp_path, overrides):
    """Every learning-rate-free way reaches scikit-learn's accuracy on badly scaled data."""
    from sklearn.linear_model import LogisticRegression

    X, y = badly_scaled_csv(tmp_path)
    sets = [arg for o in overrides + ["trainer.l2=1e-3"] for arg in ("--set", o)]
    proc = cyfed_cli("train", "--mode", "distributed", "--loss", "logistic", "--data",
                     "scaled.csv", "--quiet", *sets, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model = load_model(tmp_path / "model.npz")
    pred = (X @ model["coef"] + float(model["intercept"]) > 0).astype(float)
    Z = (X - X.mean(0)) / X.std(0) if "trainer.standardize=true" in overrides else X
    reference = LogisticRegression(C=1 / (1e-3 * len(y)), max_iter=100_000, tol=1e-10).fit(
        Z, y).score(Z, y)
    assert np.mean(pred == y) >= reference - 0.005


def test_search_table_picks_the_best_candidate_and_trains_it(tmp_path):
    badly_scaled_csv(tmp_path)
    config = write(tmp_path, SEARCH.format(trainer="max_iter = 50\nstandardize = true",
                                           grid='{ lr = [1e-4, "auto"], l2 = [1e-3, 1.0] }',
                                           cv=4))
    proc = cyfed_cli("train", "--config", config, "-o", "m.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import csv
    with open(tmp_path / "m.search.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["param_lr"] for r in rows} == {"0.0001", "auto"}
    best = min(rows, key=lambda r: int(r["rank_test_score"]))
    scores = [float(best[f"split{i}_test_score"]) for i in range(4)]
    assert float(best["mean_test_score"]) == max(float(r["mean_test_score"]) for r in rows)
    assert best["param_lr"] == "auto" and np.isfinite(scores).all()
    assert "best: {'l2': " in proc.stdout
    trained = json.loads((tmp_path / "m.history.json").read_text())
    assert len(trained) == 50 and trained[0]["lr"] != 1e-4       # the best lr was trained


def test_federated_search_over_strategy_parameters(tmp_path):
    config = write(tmp_path, FEDERATED + """
    [search]
    param_grid = { lr = [0.01, 0.05], strategy__eta = [0.01, 0.1] }
    cv = 3
    """)
    proc = cyfed_cli("train", "--config", config, "-o", "f.npz", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "f.search.csv").read_text()
    assert text.count("FedAdam(") == 4 and "eta=0.1" in text


@pytest.mark.parametrize("search, message", [
    ('{ param_grid = { lrr = [1] } }', "did you mean 'lr'"),
    ('{ param_grid = { lr = 0.1 } }', "non-empty list"),
    ('{ cv = 3 }', "needs param_grid"),
    ('{ param_grid = { lr = [0.1] }, folds = 3 }', "unknown key 'folds'"),
])
def test_bad_search_tables_exit_2(tmp_path, search, message):
    proc = cyfed_cli("train", "--config", write(tmp_path, FEDERATED), "-o", tmp_path / "o.npz",
                     "--set", f"search={search}")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec")
def test_search_under_mpiexec_writes_the_same_table(tmp_path):
    badly_scaled_csv(tmp_path)
    config = write(tmp_path, SEARCH.format(trainer='solver = "newton-cholesky"',
                                           grid="{ l2 = [1e-4, 1e-2, 1.0] }", cv=3))
    tables = []
    for n_ranks, name in ((1, "a.npz"), (2, "b.npz")):
        proc = cyfed_cli("train", "--config", config, "-o", name, "--quiet", n_ranks=n_ranks,
                         cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        with open(tmp_path / name.replace(".npz", ".search.csv")) as fh:
            tables.append([(r["param_l2"], round(float(r["mean_test_score"]), 10))
                           for r in csv_rows(fh)])
    assert tables[0] == tables[1]


def csv_rows(fh):
    import csv
    return list(csv.DictReader(fh))
