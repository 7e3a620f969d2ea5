"""Launch real MPI jobs (mpiexec -n 2/3) from a serial test, each under a timeout.

Checks what only a whole job shows: an exception on one rank ends every rank
(no hang) with a message naming the rank, and the seed example gives the same
theta for 1, 2 and 3 ranks.  Skipped when no mpiexec/mpi4py is installed.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

pytestmark = pytest.mark.skipif(
    MPIEXEC is None or pytest.importorskip("mpi4py") is None, reason="needs mpiexec and mpi4py")


def mpirun(n, script, tmp_path, *args, timeout=60):
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    start = time.monotonic()
    proc = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, str(path), *args],
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def test_uncaught_exception_on_one_rank_ends_the_job(tmp_path):
    proc, seconds = mpirun(2, """
        import numpy as np
        from cyfed.comm import get_comm
        comm = get_comm()
        if comm.rank == 1:
            raise RuntimeError("disk full on this node")
        comm.allreduce_sum(np.zeros(3))   # rank 0 would wait here forever
        comm.allreduce_sum(np.zeros(3))
    """, tmp_path)
    assert proc.returncode != 0
    assert "rank 1" in proc.stderr and "disk full on this node" in proc.stderr
    assert seconds < 30


def test_error_inside_fit_on_one_rank_ends_every_rank(tmp_path):
    proc, seconds = mpirun(2, """
        import numpy as np
        from cyfed.comm import get_comm
        from cyfed.distributed import DistributedGD
        comm = get_comm()
        X = np.ones((5, 2))
        y = np.zeros(5)
        if comm.rank == 1:
            y[3] = 7.0            # not a 0/1 label: only rank 1 can see it
        DistributedGD("logistic", max_iter=10, comm=comm).fit(X, y)
    """, tmp_path)
    assert proc.returncode != 0
    assert "rank 1" in proc.stderr and "y must hold labels 0 or 1" in proc.stderr
    assert seconds < 30


@pytest.mark.parametrize("n", [1, 2, 3])
def test_seed_example_script(n):
    proc = subprocess.run([MPIEXEC, "-n", str(n), sys.executable,
                           str(ROOT / "mpi_examples" / "distributed_gd.py")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"ranks={n} theta = [0.73444079 0.18403266]" in proc.stdout
