"""Build cyfed's compiled kernels.

Hot kernel modules are compiled once per x86-64 SIMD level under distinct
names -- ``cyfed._losses`` (baseline x86-64, runs anywhere),
``cyfed._losses_x86_64_v3`` (AVX2 + FMA) and ``cyfed._losses_x86_64_v4``
(AVX-512) -- and ``cyfed._simd`` imports the best one the CPU supports.
Other architectures and compilers get the portable build only.

Environment switches:
  CYFED_DEBUG=1      bounds/initialisation checks on, -O0 -g (slow; for hunting bugs)
  CYFED_NO_OPENMP=1  build without OpenMP (kernels then run on one thread)
  CYFED_MODULES=_a,_b  build only these modules (a developer's incremental build)
Compiler flags are probed, so a compiler without OpenMP or without -march=x86-64-vN
still builds (without threads, or without that SIMD level).
"""
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("CYFED_DEBUG", "") not in ("", "0")
NO_OPENMP = os.environ.get("CYFED_NO_OPENMP", "") not in ("", "0")
SRC = os.path.join("src", "cyfed")

# Modules whose speed depends on the vector width: built once per SIMD level.
HOT_MODULES = ["_losses", "_sgd", "_aggregate", "_compress", "_noise", "_hessian",
               "_sparse_losses", "_sparse_sgd"]
# Modules built once, for the baseline ISA.
PLAIN_MODULES = ["_cpu", "_svmlight"]
ONLY = [m for m in os.environ.get("CYFED_MODULES", "").split(",") if m]
if ONLY:
    HOT_MODULES = [m for m in HOT_MODULES if m in ONLY]
    PLAIN_MODULES = [m for m in PLAIN_MODULES if m in ONLY]
# C headers the kernels include (a change to one rebuilds them).
HEADERS = [os.path.join(SRC, h) for h in ("_vector_math.h", "_loss_ops.h", "_aggregate_ops.h",
                                         "_hessian_ops.h", "_vector_math.pxd", "_shuffle.pxd")]
# Name suffix -> alternative flag sets (the first one the compiler accepts wins).
SIMD_LEVELS = {
    "_x86_64_v3": [["-march=x86-64-v3"],
                   ["-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c", "-mlzcnt", "-mmovbe"]],
    "_x86_64_v4": [["-march=x86-64-v4", "-mprefer-vector-width=512"],
                   ["-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c", "-mlzcnt", "-mmovbe",
                    "-mavx512f", "-mavx512bw", "-mavx512cd", "-mavx512dq", "-mavx512vl",
                    "-mprefer-vector-width=512"]],
}
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
}


def is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def extension(name, source):
    return Extension(
        f"cyfed.{name}",
        [source],
        depends=HEADERS,
        include_dirs=[SRC, np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


def cythonized_extensions():
    """Every extension, the hot ones once per SIMD level (separate C build dirs)."""
    exts = cythonize(
        [extension(m, os.path.join(SRC, f"{m}.pyx")) for m in HOT_MODULES + PLAIN_MODULES],
        build_dir=os.path.join("build", "cython", "baseline"),
        include_path=["src"],
        compiler_directives=DIRECTIVES,
    )
    if is_x86_64():
        for suffix in SIMD_LEVELS:
            exts += cythonize(
                [extension(m + suffix, os.path.join(SRC, f"{m}.pyx")) for m in HOT_MODULES],
                build_dir=os.path.join("build", "cython", suffix.strip("_")),
                include_path=["src"],
                compiler_directives=DIRECTIVES,
            )
    return exts


class BuildExt(build_ext):
    """build_ext that probes compiler flags and sets them per extension."""

    def accepts(self, flags, link=False):
        """Whether the compiler compiles (and links) a small file with `flags`."""
        tmp = tempfile.mkdtemp()
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as fh:
                fh.write("#include <stdio.h>\nint main(void) { printf(\"ok\"); return 0; }\n")
            objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            if link:
                self.compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                              extra_postargs=flags)
            return True
        except Exception:
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        if msvc:
            common = ["/Od"] if DEBUG else ["/O2"]
            openmp = [] if NO_OPENMP else ["/openmp"]
            openmp_link = []
        else:
            common = ["-O0", "-g"] if DEBUG else ["-O3"]
            common += [f for f in ("-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd") if self.accepts([f])]
            openmp = [] if NO_OPENMP or not self.accepts(["-fopenmp"], link=True) \
                else ["-fopenmp"]
            openmp_link = openmp
        simd_flags = {}
        if not msvc and is_x86_64():
            for suffix, alternatives in SIMD_LEVELS.items():
                simd_flags[suffix] = next((f for f in alternatives if self.accepts(f)), None)
        kept = []
        for ext in self.extensions:
            suffix = next((s for s in SIMD_LEVELS if ext.name.endswith(s)), None)
            if suffix is not None and simd_flags.get(suffix) is None:
                print(f"cyfed: compiler lacks {suffix.strip('_')} support; skipping {ext.name}")
                continue
            ext.extra_compile_args = common + openmp + (simd_flags[suffix] if suffix else [])
            ext.extra_link_args = openmp_link
            kept.append(ext)
        self.extensions = kept
        print(f"cyfed: OpenMP {'on' if openmp else 'off'}; SIMD builds: "
              + ", ".join(["baseline"] + [s.strip("_") for s, f in simd_flags.items() if f]))
        super().build_extensions()
        self.record_flags(kept)

    def record_flags(self, extensions):
        """Write the compiler and each module's flags next to the modules, for
        `cyfed info` (cyfed._build_info.show_config)."""
        compiler = getattr(self.compiler, "compiler_so", [self.compiler.compiler_type])
        flags = {ext.name.rsplit(".", 1)[-1]: ext.extra_compile_args for ext in extensions}
        self.flags_file = Path(self.get_ext_fullpath(extensions[0].name)).parent \
            / "_build_flags.json"
        if ONLY and self.flags_file.exists():     # a partial build keeps the others' flags
            flags = {**json.loads(self.flags_file.read_text())["modules"], **flags}
        self.flags_file.write_text(json.dumps({"compiler": compiler[0], "modules": flags},
                                              indent=1))

    def copy_extensions_to_source(self):
        """--inplace: the flags file goes along with the modules."""
        super().copy_extensions_to_source()
        package = Path(self.get_finalized_command("build_py").get_package_dir("cyfed"))
        shutil.copyfile(self.flags_file, package / self.flags_file.name)


setup(ext_modules=cythonized_extensions(), cmdclass={"build_ext": BuildExt})
