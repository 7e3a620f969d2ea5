"""The command line on a LIBSVM file too wide to densify (issue 15): train (one
process and under mpiexec -n 2), evaluate, predict, partition into sparse client
files and train federated on them -- in a subprocess, as a user runs it.

The file has 2,000 rows and a feature index near 300,000: dense float64 it would
take 4.8 GB, over io.load's max_bytes (2 GiB), so any densification would be refused.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import cyfed
from cyfed import io
from cyfed.model_file import load_model

N, D = 2000, 300_000
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(Path(cyfed.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}


def cyfed_cli(*args, n_ranks=1, cwd):
    cmd = [sys.executable, "-m", "cyfed", *map(str, args)]
    if n_ranks > 1:
        cmd = ["timeout", "120", MPIEXEC, "-n", str(n_ranks)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=ENV, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """(directory, X, y): wide.svm, 10 nonzeros per row, the label from 5 columns."""
    where = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    informative = np.array([3, 17, 1000, 150_000, D - 1])
    cols = np.sort(np.column_stack([rng.choice(informative, (N, 3)),
                                    rng.integers(0, D, (N, 7))]), axis=1)
    X = sp.csr_matrix((rng.standard_normal(N * 10), cols.ravel(),
                       np.arange(0, N * 10 + 1, 10)), shape=(N, D))
    X.sum_duplicates()
    truth = np.zeros(D)
    truth[informative] = [2.0, -2.0, 1.5, -1.5, 2.0]
    y = (X @ truth > 0).astype(float)
    io.save_svmlight(where / "wide.svm", X, y)
    return where, X, y


def test_train_evaluate_predict_without_densifying(wide):
    where, X, y = wide
    cyfed_cli("train", "--mode", "distributed", "--loss", "logistic", "--data", "wide.svm",
              "-o", "m.npz", "--quiet", cwd=where)
    model = load_model(where / "m.npz")
    assert model["coef"].shape[0] == D
    report = json.loads(cyfed_cli("evaluate", "m.npz", "wide.svm", "--json", cwd=where))
    assert report["accuracy"] > 0.95
    cyfed_cli("predict", "m.npz", "wide.svm", "-o", "p.csv", cwd=where)
    predicted = np.loadtxt(where / "p.csv", skiprows=1)
    assert predicted.shape == (N,)
    assert np.mean(predicted == y) == pytest.approx(report["accuracy"])


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_two_ranks_read_halves_and_train_the_same_model(wide):
    where, _, _ = wide
    cyfed_cli("train", "--mode", "distributed", "--loss", "logistic", "--data", "wide.svm",
              "-o", "one.npz", "--quiet", cwd=where)
    cyfed_cli("train", "--mode", "distributed", "--loss", "logistic", "--data", "wide.svm",
              "-o", "two.npz", "--quiet", n_ranks=2, cwd=where)
    one, two = load_model(where / "one.npz"), load_model(where / "two.npz")
    np.testing.assert_allclose(two["coef"], one["coef"], rtol=1e-6, atol=1e-8)


def test_partition_keeps_clients_sparse_and_trains_federated(wide):
    where, _, _ = wide
    cyfed_cli("partition", "wide.svm", "--method", "iid", "--clients", "4", "-o", "parts",
              cwd=where)
    files = sorted((where / "parts").iterdir())
    assert [f.suffix for f in files] == [".svm"] * 4
    clients = io.load_clients(where / "parts")
    assert all(sp.issparse(X) and X.shape[1] == D for X, _ in clients)
    assert sum(X.shape[0] for X, _ in clients) == N
    cyfed_cli("train", "--mode", "federated", "--loss", "logistic", "--data", "parts",
              "-o", "fed.npz", "--quiet", "--set", "trainer.rounds=5", cwd=where)
    assert load_model(where / "fed.npz")["coef"].shape[0] == D
