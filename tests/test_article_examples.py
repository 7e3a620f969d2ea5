"""The source article's federated example 4.2, run as a user runs it: the script
mpi_examples/federated_seed.py in a subprocess (alone and under mpiexec -n 2),
its theta1 and theta2 against the article's numpy loop, and the FedAvg model that
follows against gradient descent on the pooled rows."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cyfed

SCRIPT = Path(__file__).parents[1] / "mpi_examples" / "federated_seed.py"
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(Path(cyfed.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
CLIENTS = [(np.array([[1.0, 2.0], [2.0, 3.0]]), np.array([1.0, 2.0])),
           (np.array([[2.0, 3.0], [3.0, 4.0]]), np.array([2.0, 3.0]))]


def article_gd(X, y, steps=1000, lr=0.01):
    """The article's numpy loop: theta -= lr * 2/n X^T (X theta - y), from 0."""
    theta = np.zeros(X.shape[1])
    for _ in range(steps):
        theta -= lr * 2 * X.T @ (X @ theta - y) / len(y)
    return theta


def run_script(n_ranks):
    cmd = [sys.executable, str(SCRIPT)]
    if n_ranks > 1:
        if MPIEXEC is None:
            pytest.skip("no mpiexec")
        cmd = ["timeout", "120", MPIEXEC, "-n", str(n_ranks)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=ENV)
    assert out.returncode == 0, out.stderr
    return out.stdout


def printed(name, text):
    match = re.search(rf"^{name} = \[([^\]]*)\]", text, re.M)
    assert match, text
    return np.array(match.group(1).split(), dtype=float)


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_example_4_2_prints_the_articles_thetas(n_ranks):
    text = run_script(n_ranks)
    for i, (X, y) in enumerate(CLIENTS, 1):
        np.testing.assert_allclose(printed(f"theta{i}", text), article_gd(X, y), rtol=0,
                                   atol=1e-8)
    assert "theta1 = [0.5856082  0.25610822]" in text
    assert "theta2 = [0.49427    0.36450956]" in text
    pooled = article_gd(np.vstack([X for X, _ in CLIENTS]),
                        np.concatenate([y for _, y in CLIENTS]))
    np.testing.assert_allclose(printed("global theta", text), pooled, rtol=0, atol=1e-8)


def test_fedavg_of_example_4_2_is_bit_identical_over_ranks():
    exact = [re.search(r"\(exactly (.*)\)", run_script(n)).group(1) for n in (1, 2)]
    assert exact[0] == exact[1]
