"""Pick the compiled kernel build for this CPU (numpy-style runtime dispatch).

Hot kernel modules exist in up to three builds: the x86-64 baseline
(``cyfed._losses``), x86-64-v3 (AVX2 + FMA, ``cyfed._losses_x86_64_v3``) and
x86-64-v4 (AVX-512, ``cyfed._losses_x86_64_v4``).  The best level that both the
CPU supports and the install contains is used; ``CYFED_SIMD`` (``baseline``,
``x86-64-v3``, ``x86-64-v4`` or ``auto``) caps the choice.  A level the CPU
lacks is never loaded (that would die on an illegal instruction).
"""
import importlib
import os
import warnings

from cyfed._cpu import x86_64_level

LEVELS = ("baseline", "x86-64-v3", "x86-64-v4")
_SUFFIX = {"baseline": "", "x86-64-v3": "_x86_64_v3", "x86-64-v4": "_x86_64_v4"}
_CPU_LEVEL = {0: "baseline", 1: "baseline", 3: "x86-64-v3", 4: "x86-64-v4"}


def cpu_level():
    """Highest SIMD level of this CPU, one of LEVELS."""
    return _CPU_LEVEL[x86_64_level()]


def requested_level():
    """The level CYFED_SIMD asks for (the CPU's own when unset or 'auto')."""
    raw = os.environ.get("CYFED_SIMD", "auto").strip().lower().replace("_", "-")
    cpu = cpu_level()
    if raw in ("", "auto"):
        return cpu
    if raw not in LEVELS:
        warnings.warn(f"CYFED_SIMD={raw!r} is not one of auto, {', '.join(LEVELS)}; "
                      f"using {cpu}", RuntimeWarning, stacklevel=2)
        return cpu
    if LEVELS.index(raw) > LEVELS.index(cpu):
        warnings.warn(f"CYFED_SIMD={raw} but this CPU supports at most {cpu}; using {cpu}",
                      RuntimeWarning, stacklevel=2)
        return cpu
    return raw


def load(module):
    """Import the best available build of `module`; returns (module, level)."""
    wanted = LEVELS.index(requested_level())
    for level in reversed(LEVELS[:wanted + 1]):
        try:
            return importlib.import_module(f"cyfed.{module}{_SUFFIX[level]}"), level
        except ImportError:
            if level == "baseline":
                raise
    raise AssertionError("unreachable")
