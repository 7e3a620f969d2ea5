"""The package's layers (README "Architecture"): what each module may import.

Each check runs in a fresh interpreter, so modules imported by other tests do
not hide an import that a module pulls in by itself.
"""
import subprocess
import sys

import pytest


def imported_after(statement):
    """The cyfed modules and mpi4py imported by `statement` in a fresh interpreter."""
    code = (f"import sys; {statement}; "
            "print(' '.join(m for m in sys.modules if m.startswith(('cyfed', 'mpi4py'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", [
    "cyfed", "cyfed.models", "cyfed.training", "cyfed.distributed", "cyfed.federated",
    "cyfed.asynchronous", "cyfed.secagg", "cyfed.privacy", "cyfed.compress",
    "cyfed.strategies", "cyfed.aggregate"])
def test_algorithms_do_not_import_mpi4py(module):
    assert "mpi4py" not in imported_after(f"import {module}")


def test_secure_aggregation_does_not_pull_in_the_trainers():
    mods = imported_after("import cyfed.secagg")
    assert not mods & {"cyfed.distributed", "cyfed.federated", "cyfed.training"}


def test_transport_and_kernels_know_nothing_of_the_algorithms():
    for module in ("cyfed.comm", "cyfed.gradients", "cyfed.aggregate"):
        mods = imported_after(f"import {module}")
        assert not {m for m in mods if m.split(".")[1:2] and m.split(".")[1] in (
            "distributed", "federated", "asynchronous", "training", "models", "strategies",
            "cli")}, module


def test_models_do_not_import_the_trainers():
    mods = imported_after("import cyfed.models")
    assert not mods & {"cyfed.distributed", "cyfed.federated", "cyfed.training"}
