"""Shared fixtures for the cyfed kernel tests.

The numpy references, comparison helpers and the random-problem generator
live in tests/reference.py (a plain module the tests import).
"""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from reference import RTOL


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    """Working dtype of a test; pair it with the `rtol` fixture."""
    return np.dtype(request.param)


@pytest.fixture
def rtol(dtype):
    """Per-dtype tolerance: float64 1e-12, float32 1e-5 (relative to the result's scale)."""
    return RTOL[dtype]


def pytest_configure(config):
    """Under mpiexec every rank runs pytest: give each its own tmp_path root."""
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")
    if rank is not None and config.option.basetemp is None:
        config.option.basetemp = Path(tempfile.gettempdir()) / f"cyfed-pytest-{os.getpid()}-rank{rank}"
