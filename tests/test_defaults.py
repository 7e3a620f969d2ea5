"""Data and a loss, nothing else (issue 17, item 1): DistributedGD's defaults (solver
"auto", no learning rate) reach scikit-learn's default estimators on its bundled
datasets, raw and unscaled, on a held-out split -- through the API and through
`cyfed train` in a subprocess, as the issue's first row did."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn import datasets
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split

import cyfed
from cyfed.comm import LocalComm
from cyfed.distributed import DistributedGD
from cyfed.model_file import load_model

CASES = {"breast_cancer": "logistic", "wine": "softmax", "digits": "softmax",
         "diabetes": "squared"}


def split(name):
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return train_test_split(X, y.astype(float), test_size=0.25, random_state=0)


def sklearn_default_score(loss, Xtr, Xte, ytr, yte):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # lbfgs' ConvergenceWarning on raw data
        model = LinearRegression() if loss == "squared" else LogisticRegression()
        return model.fit(Xtr, ytr).score(Xte, yte)


@pytest.mark.parametrize("name", sorted(CASES))
def test_defaults_reach_scikit_learns_default_estimators(name):
    loss = CASES[name]
    Xtr, Xte, ytr, yte = split(name)
    model = DistributedGD(loss, comm=LocalComm()).fit(Xtr, ytr)
    assert model.solver_ in ("newton-cholesky", "lbfgs")
    assert model.score(Xte, yte) >= sklearn_default_score(loss, Xtr, Xte, ytr, yte) - 0.02


def test_a_learning_rate_given_means_gradient_descent():
    Xtr, _, ytr, _ = split("breast_cancer")
    model = DistributedGD("logistic", lr=1e-6, max_iter=3, comm=LocalComm()).fit(Xtr, ytr)
    assert model.solver_ == "gd" and model.history_[0]["lr"] == 1e-6
    auto = DistributedGD("logistic", solver="gd", max_iter=3, comm=LocalComm()).fit(Xtr, ytr)
    assert auto.solver_ == "gd" and auto.history_[0]["lr"] > 0       # lr=None: 1/L


def test_cli_with_data_and_loss_alone(tmp_path):
    """The issue's first row: raw breast_cancer CSV, `--loss logistic`, nothing else."""
    Xtr, Xte, ytr, yte = split("breast_cancer")
    header = ",".join([f"f{j}" for j in range(Xtr.shape[1])] + ["target"])
    for part, (X, y) in {"train": (Xtr, ytr), "test": (Xte, yte)}.items():
        np.savetxt(tmp_path / f"{part}.csv", np.column_stack([X, y]), delimiter=",",
                   header=header, comments="")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(cyfed.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "cyfed", "train", "--mode", "distributed",
                          "--loss", "logistic", "--data", "train.csv", "--label", "target",
                          "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    model = load_model(tmp_path / "model.npz")
    accuracy = np.mean((Xte @ model["coef"] + float(model["intercept"]) > 0) == yte)
    assert accuracy >= sklearn_default_score("logistic", Xtr, Xte, ytr, yte) - 0.02
