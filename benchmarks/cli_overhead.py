"""``cyfed train`` beside the same job through the Python API: the command line's overhead.

    PYTHONPATH=src python benchmarks/cli_overhead.py [--steps 100 1000 10000] [--repeat 3]

The job: a small CSV (2,000 rows x 10 features, squared loss), distributed mode,
solver "gd" with a fixed lr (cheap steps, so any per-step cost of the command
line shows), one thread.  For each step count, the best of `repeat` runs of each,
interleaved, in CPU seconds (user + sys, of this process and of the subprocesses:
steadier than wall time on a shared machine; ``--wall`` for wall time):

* api      in this process: `cyfed.io.load`, `DistributedGD.fit`, `model_file.save_model`;
* +files   api, then the history as the command line leaves it, written once at the
           end (`write_history` to .json and .csv): the same job's same files;
* in-proc  `cyfed.cli.main(["train", ...])` in this process: the same job with the
           command line's files (history, checkpoint, config, model), no start-up;
* cli      ``python -m cyfed train ... --quiet`` in a subprocess (wall time);
* startup  ``python -m cyfed --version`` in a subprocess: the interpreter and the
           imports, which the cli time includes.

The issue's goal: in-proc / api <= 1.1 for any number of steps (in-proc / +files
compares the same outputs); cli / api adds the start-up, a constant.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cyfed import io, model_file
from cyfed.cli import main as cyfed_main
from cyfed.distributed import DistributedGD
from cyfed.federated import write_history

LR, ROWS, FEATURES = 0.05, 2000, 10


def cpu_seconds():
    """CPU seconds (user + sys) of this process and its finished subprocesses so far."""
    return sum(usage.ru_utime + usage.ru_stime for usage in (
        resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def best_of(repeat, clock, *fns):
    """The best time by `clock` of each of `fns`, called in turn `repeat` times."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            start = clock()
            fn()
            spent.append(clock() - start)
    return [min(spent) for spent in times]


def api(csv, steps, out, files=False):
    X, y = io.load(csv)
    gd = DistributedGD(lr=LR, max_iter=steps, solver="gd", n_threads=1).fit(X, y)
    model_file.save_model(out, loss="squared", coef=gd.coef_, intercept=gd.intercept_,
                          metadata={"metrics": gd.history_[-1]}, force=True)
    if files:
        for suffix in (".json", ".csv"):
            write_history(gd.history_, out.with_suffix(suffix))


def cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "cyfed", *map(str, args)], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def train_args(csv, steps, out):
    return ["train", "--mode", "distributed", "--loss", "squared", "--data", str(csv),
            "--set", f"trainer.lr={LR}", "--set", f"trainer.max_iter={steps}", "--set",
            'trainer.solver="gd"', "--set", "trainer.n_threads=1", "-o", str(out), "--force",
            "--quiet"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--wall", action="store_true", help="wall time, not CPU time")
    args = parser.parse_args()
    clock = time.perf_counter if args.wall else cpu_seconds
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((ROWS, FEATURES))
        y = X @ rng.standard_normal(FEATURES) + 0.1 * rng.standard_normal(ROWS)
        csv = tmp / "data.csv"
        np.savetxt(csv, np.column_stack([X, y]), delimiter=",")
        startup, = best_of(args.repeat, clock, lambda: cli("--version"))
        print(f"startup (python -m cyfed --version): {startup:.3f} s")
        print(f"{'steps':>7} {'api s':>8} {'+files s':>9} {'in-proc s':>10} {'cli s':>8} "
              f"{'in-proc/api':>12} {'in-proc/+files':>15} {'cli/api':>8}")
        for steps in args.steps:
            t_api, t_files, t_in, t_cli = best_of(
                args.repeat, clock, lambda: api(csv, steps, tmp / "api.npz"),
                lambda: api(csv, steps, tmp / "files.npz", files=True),
                lambda: cyfed_main(train_args(csv, steps, tmp / "in.npz")),
                lambda: cli(*train_args(csv, steps, tmp / "cli.npz")))
            print(f"{steps:>7} {t_api:8.3f} {t_files:9.3f} {t_in:10.3f} {t_cli:8.3f} "
                  f"{t_in / t_api:12.3f} {t_in / t_files:15.3f} {t_cli / t_api:8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
