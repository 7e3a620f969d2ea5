"""Checkpoints: atomic files, and federated runs resumed bit-identical (also after SIGKILL)."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cyfed
from cyfed import checkpoint, strategies
from cyfed.attacks import SignFlip
from cyfed.data import make_fedprox_synthetic
from cyfed.federated import FederatedTrainer

MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
DEVICES = make_fedprox_synthetic(1.0, 1.0, n_devices=12, seed=5)
PARAMS = dict(clients_per_round=6, local_epochs=1, batch_size=10, lr=0.01, seed=3)


def test_save_load_round_trip(tmp_path):
    arrays = {"theta": np.arange(5.0), "strategy": {"m": np.ones(2), "aggregator": {}},
              "client_state": {"3": np.float32([1, 2])}, "t": 4}
    checkpoint.save(tmp_path / "c.npz", arrays, {"round": 7, "history": [{"a": 1}]})
    got, meta = checkpoint.load(tmp_path / "c.npz")
    assert meta["round"] == 7 and meta["history"] == [{"a": 1}]
    np.testing.assert_array_equal(got["theta"], arrays["theta"])
    assert got["strategy"]["aggregator"] == {}
    assert got["client_state"]["3"].dtype == np.float32 and int(got["t"]) == 4


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"theta": np.zeros(3)}, {"round": 1})

    def broken(fh, **arrays):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"theta": np.ones(3)}, {"round": 2})
    arrays, meta = checkpoint.load(path)
    assert meta["round"] == 1 and not arrays["theta"].any()
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]       # no temporary left


def test_not_a_checkpoint_is_refused(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a cyfed checkpoint"):
        checkpoint.load(tmp_path / "x.npz")


STRATEGIES = {
    "fedavg": lambda: strategies.FedAvg(),
    "adam-scaffold": lambda: strategies.FedAdam(eta=0.01, aggregator=strategies.Scaffold()),
    "cclip": lambda: strategies.CenteredClipping(0.5),
    "avgm-trimmed": lambda: strategies.FedAvgM(server_momentum=0.9,
                                               aggregator=strategies.FedTrimmedAvg(0.2)),
}


@pytest.mark.parametrize("name", STRATEGIES)
def test_resumed_run_ends_bit_identical(name, tmp_path):
    make = STRATEGIES[name]
    attack = SignFlip([2], 3.0)
    full = FederatedTrainer(make(), "softmax", rounds=6, attack=attack, **PARAMS).fit(DEVICES)
    path = tmp_path / "run.npz"
    FederatedTrainer(make(), "softmax", rounds=3, checkpoint=path, attack=attack,
                     **PARAMS).fit(DEVICES)
    resumed = FederatedTrainer(make(), "softmax", rounds=6, checkpoint=path, resume=True,
                               attack=attack, **PARAMS).fit(DEVICES)
    np.testing.assert_array_equal(resumed.theta_, full.theta_)
    assert [h["round"] for h in resumed.history_] == list(range(6))
    assert checkpoint.load(path)[1]["round"] == 6


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    a = FederatedTrainer(strategies.FedAvg(), "softmax", rounds=2, checkpoint=tmp_path / "n.npz",
                         resume=True, **PARAMS).fit(DEVICES)
    b = FederatedTrainer(strategies.FedAvg(), "softmax", rounds=2, **PARAMS).fit(DEVICES)
    np.testing.assert_array_equal(a.theta_, b.theta_)


@pytest.mark.parametrize("change, match", [
    (dict(lr=0.02), "another configuration"), (dict(seed=4), "another configuration"),
    (dict(strategy=strategies.FedProx(0.1)), "another configuration"),
    (dict(devices=DEVICES[::-1]), "other client data"),
])
def test_resume_refuses_another_config_or_data(change, match, tmp_path):
    path = tmp_path / "run.npz"
    FederatedTrainer(strategies.FedAvg(), "softmax", rounds=2, checkpoint=path,
                     **PARAMS).fit(DEVICES)
    strategy = change.pop("strategy", strategies.FedAvg())
    devices = change.pop("devices", DEVICES)
    with pytest.raises(ValueError, match=match):
        FederatedTrainer(strategy, "softmax", rounds=4, checkpoint=path, resume=True,
                         **{**PARAMS, **change}).fit(devices)


KILLED_RUN = """
    import os, signal, sys
    import numpy as np
    from cyfed.comm import get_comm
    from cyfed.data import make_fedprox_synthetic
    from cyfed.federated import FederatedTrainer
    from cyfed.strategies import FedAdam, Scaffold

    class KilledAt(FedAdam):
        def aggregate(self, *args):
            if kill_at is not None and self.t + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)       # no cleanup, no flush
            return super().aggregate(*args)

    path, out, kill_at = sys.argv[1], sys.argv[2], (int(sys.argv[3]) if len(sys.argv) > 3
                                                     else None)
    devices = make_fedprox_synthetic(1.0, 1.0, n_devices=12, seed=5)
    trainer = FederatedTrainer(KilledAt(eta=0.01, aggregator=Scaffold()), "softmax",
                               rounds=6, checkpoint=path, resume=True, comm=get_comm(),
                               **{PARAMS})
    trainer.fit(devices)
    if trainer.comm.rank == 0:
        np.save(out, trainer.theta_)
""".replace("{PARAMS}", repr(PARAMS))


def run_script(tmp_path, n_ranks, *args):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(KILLED_RUN))
    cmd = [sys.executable, str(script), *map(str, args)]
    if n_ranks > 1:
        cmd = [MPIEXEC, "-n", str(n_ranks)] + cmd
    # the cyfed these tests import (the source tree here, the installed package in CI)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(cyfed.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_sigkill_then_resume_equals_the_uninterrupted_run(n_ranks, tmp_path):
    if n_ranks > 1 and (MPIEXEC is None or pytest.importorskip("mpi4py") is None):
        pytest.skip("needs mpiexec")
    full = FederatedTrainer(strategies.FedAdam(eta=0.01, aggregator=strategies.Scaffold()),
                            "softmax", rounds=6, **PARAMS).fit(DEVICES)
    path, out = tmp_path / "run.npz", tmp_path / "theta.npy"
    killed = run_script(tmp_path, n_ranks, path, out, 4)
    assert killed.returncode != 0 and not out.exists(), killed.stderr
    assert checkpoint.load(path)[1]["round"] == 3            # rounds 0..2 were saved
    done = run_script(tmp_path, n_ranks, path, out)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(out), full.theta_)


@pytest.mark.parametrize("params", [dict(momentum=0.9, batch_size=50, lr_schedule="cosine"),
                                    dict(tol=1e-4, lr=0.05)], ids=["momentum-batches", "tol"])
def test_distributed_gd_resumes_bit_identical(params, tmp_path, monkeypatch):
    from cyfed.distributed import DistributedGD, batches
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5))
    y = X @ rng.standard_normal(5) + 0.1 * rng.standard_normal(300)
    full = DistributedGD(max_iter=40, **params).fit(X, y)
    stop_at = full.n_iter_ // 2 + 1
    path = tmp_path / "gd.npz"

    class Interrupted(Exception):
        pass

    real_batch = batches.minibatch

    def interrupted(seed, t, *args):
        if t == stop_at:
            raise Interrupted
        return real_batch(seed, t, *args)

    with monkeypatch.context() as patch:
        patch.setattr(batches, "minibatch", interrupted)
        with pytest.raises(Interrupted):
            DistributedGD(max_iter=40, checkpoint=path, checkpoint_every=3, **params).fit(X, y)
    assert checkpoint.load(path)[1]["iteration"] == stop_at // 3 * 3
    resumed = DistributedGD(max_iter=40, checkpoint=path, resume=True, **params).fit(X, y)
    np.testing.assert_array_equal(resumed.coef_, full.coef_)
    assert resumed.intercept_ == full.intercept_
    assert resumed.n_iter_ == full.n_iter_
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in full.history_]
    again = DistributedGD(max_iter=40, checkpoint=path, resume=True, **params).fit(X, y)
    np.testing.assert_array_equal(again.coef_, full.coef_)          # a finished run stays put
    with pytest.raises(ValueError, match="another configuration"):
        DistributedGD(max_iter=40, checkpoint=path, resume=True, **{**params, "seed": 9}).fit(X, y)
