"""Build and runtime configuration report (numpy.show_config style)."""
import importlib.resources
import importlib.util
import json
import platform

import numpy as np

from cyfed import _simd


def _build_flags():
    """The compiler and flags each module was built with (written by setup.py)."""
    path = importlib.resources.files("cyfed") / "_build_flags.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _threads(choice):
    """thread_choice's dict as `cyfed info` shows it."""
    return {"per_rank": choice["threads"], "cores": choice["cores"],
            "ranks_on_node": choice["ranks_on_node"], "ranks_sharing_cores": choice["sharing"],
            "nodes": choice["nodes"], "why": choice["reason"]}


def show_config(mode="stdout"):
    """Print (mode="stdout") or return (mode="dicts") how cyfed is built and runs.

    Includes the SIMD build picked for this CPU (override: CYFED_SIMD), the
    builds installed, OpenMP and its default thread count, the threads each rank
    of the trainers takes by default and why (`cyfed.comm.thread_choice`: cores of
    the CPU affinity // ranks on this node sharing them, unless OMP_NUM_THREADS
    is set), whether mpi4py is importable, and the compiler and flags of every
    compiled module.  Under mpiexec every rank must call it (the ranks on a node
    are counted with a collective).
    """
    from cyfed import __version__, gradients
    from cyfed.comm import get_comm, thread_choice

    kernels = gradients._kernels
    installed = [lvl for lvl in _simd.LEVELS
                 if importlib.util.find_spec(f"cyfed._losses{_simd._SUFFIX[lvl]}") is not None]
    info = {
        "cyfed": __version__,
        "simd": {"selected": gradients.SIMD_LEVEL, "cpu_supports": _simd.cpu_level(),
                 "installed": installed},
        "openmp": {"enabled": kernels.have_openmp(), "max_threads": kernels.max_threads()},
        "threads": _threads(thread_choice(get_comm())),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "mpi4py": importlib.util.find_spec("mpi4py") is not None,
        "build": _build_flags(),
    }
    if mode == "dicts":
        return info
    if mode != "stdout":
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    print(json.dumps(info, indent=2))
    return None
