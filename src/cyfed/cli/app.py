"""Command line: ``cyfed`` / ``python -m cyfed``.

Subcommands
-----------
demo   the main job: the seed example, a kernel speed table beside numpy, a
       data-parallel logistic regression, federated FedAvg vs FedProx on
       Synthetic(1,1), DP-FedAvg with secure aggregation and a compressed uplink
       (all but the speed table over MPI ranks under mpiexec).
info   the build and runtime configuration (SIMD level, OpenMP, MPI).
train  a federated or distributed run from a TOML config (cyfed.cli.train).
plot   training histories (JSON/CSV from write_history) drawn into one image.
partition  one data file split into per-client files (cyfed.cli.commands: these three).
evaluate   a model file's loss and accuracy, or MSE and R², on a data file (MPI ranks).
predict    a model file's predictions for a data file, written as .csv or .npy.
Usage errors exit with status 2, Ctrl-C with 130; ``cyfed --version`` names the version.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import cyfed
from cyfed import io
from cyfed.cli import commands
from cyfed.cli import train as train_command
from cyfed.cli.plotting import load_history, plot_history
from cyfed.comm import LocalComm, get_comm, launched_by_mpi
from cyfed.data import make_fedprox_synthetic, split_devices
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer
from cyfed.compress import TopK
from cyfed.privacy import ClientDP
from cyfed.secagg import SecureAggregation
from cyfed.strategies import FedAvg, FedProx


def _best_of(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _numpy_loss_grad(loss, X, y, coef, intercept):
    """The two-pass numpy formulation (X @ theta, then X.T @ r) that the kernels fuse."""
    n = X.shape[0]
    z = X @ coef + intercept
    if loss == "squared":
        r = z - y
        return r @ r / n, X.T @ (2 * r) / n
    if loss == "logistic":
        p = np.exp(-np.logaddexp(0, -z))
        return np.mean(np.logaddexp(0, z) - y * z), X.T @ (p - y) / n
    z_max = z.max(axis=1, keepdims=True)
    e = np.exp(z - z_max)
    s = e.sum(axis=1, keepdims=True)
    labels = y.astype(np.intp)
    value = np.mean(np.log(s[:, 0]) + z_max[:, 0] - z[np.arange(n), labels])
    p = e / s
    p[np.arange(n), labels] -= 1
    return value, X.T @ p / n


def kernel_table(shapes, repeat, out):
    """Time cyfed.loss_grad beside the numpy two-pass reference, both on all cores."""
    rng = np.random.default_rng(0)
    out.write(f"\nFused loss/gradient kernels vs numpy (float64, SIMD {cyfed.gradients.SIMD_LEVEL}, "
              f"{cyfed.gradients._kernels.max_threads()} threads; best of {repeat}):\n")
    out.write(f"{'loss':9s} {'n x d':>14s} {'numpy ms':>10s} {'cyfed ms':>10s} {'speed-up':>9s}\n")
    for n, d in shapes:
        X = rng.standard_normal((n, d))
        for loss in ("squared", "logistic", "softmax"):
            if loss == "softmax":
                coef, b = 0.1 * rng.standard_normal((d, 10)), np.zeros(10)
                y = rng.integers(0, 10, n).astype(np.float64)
            else:
                coef, b = 0.1 * rng.standard_normal(d), 0.1
                y = (rng.random(n) < 0.5).astype(np.float64)
            t_np = _best_of(lambda: _numpy_loss_grad(loss, X, y, coef, b), repeat)
            t_cy = _best_of(lambda: cyfed.loss_grad(loss, X, y, coef, b), repeat)
            out.write(f"{loss:9s} {f'{n}x{d}':>14s} {t_np * 1e3:10.2f} {t_cy * 1e3:10.2f} "
                      f"{t_np / t_cy:8.2f}x\n")


def demo(args):
    comm = get_comm()
    out = sys.stdout if comm.rank == 0 else open("/dev/null", "w")
    out.write(f"cyfed {cyfed.__version__} demo on {comm.size} rank(s)\n")

    # 1. The seed example: full-batch GD, squared loss, no intercept.
    X, y = io.builtin("seed")
    seed = DistributedGD(lr=0.01, max_iter=1000, fit_intercept=False).fit(X, y)
    out.write(f"\nSeed example (1000 GD steps, lr 0.01): theta = {np.round(seed.coef_, 8)}\n")
    summary = [("seed example, 1000 GD steps", f"theta = {np.round(seed.coef_, 8)}")]
    # ... and its example 4.2: two clients trained alone, then together with FedAvg.
    clients = io.builtin("seed-clients")
    thetas = [DistributedGD(lr=0.01, max_iter=1000, fit_intercept=False, comm=LocalComm())
              .fit(X, y).coef_ for X, y in clients]
    fed = FederatedTrainer(FedAvg(), rounds=1000, local_epochs=1, batch_size=None, lr=0.01,
                           fit_intercept=False, comm=comm).fit(clients)
    out.write(f"Example 4.2, each client alone: theta1 = {np.round(thetas[0], 8)}, "
              f"theta2 = {np.round(thetas[1], 8)}; FedAvg of both (1000 rounds): "
              f"theta = {np.round(fed.coef_, 8)}\n")
    summary.append(("example 4.2, two clients alone, then FedAvg",
                    f"theta1 = {np.round(thetas[0], 8)}, theta2 = {np.round(thetas[1], 8)}, "
                    f"FedAvg {np.round(fed.coef_, 8)}"))

    # 2. Kernel speed beside numpy (one process; skipped over ranks so timings stay honest).
    if comm.size == 1:
        kernel_table(args.shapes, args.repeat, out)

    # 3. Data-parallel logistic regression: each rank generates and holds its own shard.
    n_total, d = args.rows, 50
    truth = np.random.default_rng(42).standard_normal(d)
    lo, hi = comm.rank * n_total // comm.size, (comm.rank + 1) * n_total // comm.size
    shard_rng = np.random.default_rng([7, comm.rank])
    X_local = shard_rng.standard_normal((hi - lo, d))
    y_local = (X_local @ truth + 0.5 * shard_rng.standard_normal(hi - lo) > 0).astype(float)
    model = DistributedGD("logistic", lr=1.0, max_iter=args.iters, l2=1e-4, momentum=0.9,
                          n_threads=None if comm.size == 1 else 1, comm=comm)
    start = time.perf_counter()
    model.fit(X_local, y_local)
    seconds = time.perf_counter() - start
    accuracy = model.score(X_local, y_local)
    out.write(f"\nDistributed logistic regression: {n_total} x {d} rows over {comm.size} rank(s), "
              f"{model.n_iter_} iterations\n")
    for h in model.history_[:: max(1, len(model.history_) // 5)] + model.history_[-1:]:
        out.write(f"  iter {h['iter']:4d}  loss {h['loss']:.6f}  |grad| {h['grad_norm']:.2e}\n")
    out.write(f"  {seconds / model.n_iter_ * 1e3:.2f} ms per iteration, "
              f"training accuracy {accuracy:.4f}\n")
    summary.append((f"distributed logistic GD, {n_total:,} x {d}",
                    f"loss {model.history_[-1]['loss']:.4f}, accuracy {accuracy:.4f}, "
                    f"{seconds / model.n_iter_ * 1e3:.2f} ms/iteration"))

    # 4. Federated: FedAvg vs FedProx on FedProx's Synthetic(1,1), clients over the ranks.
    train, test = split_devices(make_fedprox_synthetic(1.0, 1.0, n_devices=30, seed=0), 0.2)
    out.write(f"\nFederated softmax regression on Synthetic(1,1): 30 devices, 10 per round, "
              f"E=20, B=10, {args.rounds} rounds\n")
    for name, strategy in [("FedAvg", FedAvg()), ("FedProx mu=1", FedProx(mu=1.0))]:
        trainer = FederatedTrainer(strategy, "softmax", rounds=args.rounds, clients_per_round=10,
                                   local_epochs=20, batch_size=10, lr=0.01, seed=0, comm=comm,
                                   n_workers=None if comm.size == 1 else 1)
        start = time.perf_counter()
        last = trainer.fit(train, test=test).history_[-1]
        seconds = time.perf_counter() - start
        if comm.rank == 0:
            out.write(f"  {name:13s} train loss {last['train_loss']:.4f}  test accuracy "
                      f"{last['test_accuracy']:.3f}  ({seconds / args.rounds * 1e3:.1f} ms "
                      f"per round)\n")
            summary.append((f"federated {name}, Synthetic(1,1)",
                            f"train loss {last['train_loss']:.4f}, test accuracy "
                            f"{last['test_accuracy']:.3f}, "
                            f"{seconds / args.rounds * 1e3:.1f} ms/round"))
    summary += private_and_compressed(train, test, args.rounds, comm, out)
    width = max(len(part) for part, _ in summary)
    out.write(f"\nSummary ({comm.size} rank(s))\n")
    for part, result in summary:
        out.write(f"  {part:<{width}}  {result}\n")
    return 0


def private_and_compressed(train, test, rounds, comm, out):
    """5. DP-FedAvg with secure aggregation against plain FedAvg on 300 IID Synthetic(0,0)
    devices (10 % sampled per round), and FedAvg with a top-k 1 % uplink (error
    feedback) on the 30 devices of part 4: summary rows."""
    common = dict(comm=comm, n_workers=None if comm.size == 1 else 1, seed=0)
    many, many_test = split_devices(
        make_fedprox_synthetic(0.0, 0.0, n_devices=300, iid=True, seed=1), 0.2)
    private, public = (FederatedTrainer(
        FedAvg(), "softmax", rounds=rounds, fraction=0.1, sampling="poisson", local_epochs=5,
        batch_size=10, lr=0.05, **common, **options).fit(many, test=many_test).history_[-1]
        for options in (dict(privacy=ClientDP(clip_norm=1.0, target_epsilon=8.0, delta=1e-5,
                                              noise="distributed", adaptive=True),
                             secure_aggregation=SecureAggregation(clip_range=3.0,
                                                                  neighbours="log")), {}))
    plain, compressed = (FederatedTrainer(
        FedAvg(), "softmax", rounds=rounds, clients_per_round=30, local_epochs=1, batch_size=10,
        lr=0.01, **common, **options).fit(train, test=test).history_
        for options in ({}, {"compression": TopK(0.01), "error_feedback": True}))
    if comm.rank != 0:
        return []
    fewer = sum(r["bytes_up"] for r in plain) / sum(r["bytes_up"] for r in compressed)
    rows = [("federated DP-FedAvg + SecAgg+, Synthetic(0,0)",
             f"({private['epsilon']:.2f}, 1e-5)-DP: test accuracy "
             f"{private['test_accuracy']:.3f} (non-private {public['test_accuracy']:.3f}), "
             f"server saw only sums of ~{private['secagg_clients']} clients"),
            ("federated FedAvg, top-k 1 % uplink + EF",
             f"test accuracy {compressed[-1]['test_accuracy']:.3f} (uncompressed "
             f"{plain[-1]['test_accuracy']:.3f}) with {fewer:.0f}x fewer uplink bytes")]
    out.write(f"\nPrivate and compressed federated rounds ({rounds} rounds)\n")
    for part, result in rows:
        out.write(f"  {part}: {result}\n")
    return rows


def info(args):
    """show_config(), plus the MPI library and job size when launched by mpiexec."""
    config = cyfed.show_config("dicts")
    comm = get_comm()
    if launched_by_mpi():
        from mpi4py import MPI
        config["mpi"] = {"library": MPI.Get_library_version().strip().splitlines()[0],
                         "vendor": "%s %d.%d.%d" % (MPI.get_vendor()[0], *MPI.get_vendor()[1]),
                         "size": comm.size}
    if comm.rank == 0:
        print(json.dumps(config, indent=2))
    return 0


def _fail(message, status):
    """One line on stderr; returns the exit status."""
    print(f"cyfed plot: {message}", file=sys.stderr)
    return status


def _labels(paths):
    """Legend labels: file stems, or the paths as given where stems repeat."""
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else list(paths)


def plot(args):
    """Draw the history files; exit 2 on bad input or an existing OUT, 1 without matplotlib."""
    out = Path(args.output)
    if out.exists() and not args.force:
        return _fail(f"{out} exists; pass --force to overwrite it", 2)
    histories = {}
    for label, path in zip(_labels(args.histories), args.histories):
        try:
            histories[label] = load_history(path)
        except OSError as exc:
            return _fail(f"cannot read {path}: {exc.strerror or exc}", 2)
        except ValueError as exc:
            return _fail(str(exc), 2)
    history = histories if len(histories) > 1 else histories.popitem()[1]
    try:
        plot_history(history, out, metrics=args.metrics, title=args.title)
    except ImportError as exc:
        return _fail(str(exc), 1)
    except ValueError as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc.strerror or exc}", 2)
    return 0


def _names(text):
    """Comma-separated metric names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected metric names such as loss,test_accuracy, "
                                         f"got {text!r}")
    return names


def _shape(text):
    try:
        n, d = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS such as 100000x100, got {text!r}")
    if n < 1 or d < 1:
        raise argparse.ArgumentTypeError(f"shape must be positive, got {text!r}")
    return n, d


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cyfed", description="cyfed: fast distributed and federated gradient descent")
    parser.add_argument("--version", action="version", version=f"cyfed {cyfed.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="seed example, kernel table, distributed and federated runs")
    p.add_argument("--shapes", type=_shape, nargs="+",
                   default=[(1_000_000, 10), (200_000, 100), (20_000, 1000)],
                   help="kernel table shapes, ROWSxCOLS (default: %(default)s)")
    p.add_argument("--repeat", type=_positive, default=5, help="timing repeats (best is shown)")
    p.add_argument("--rows", type=_positive, default=400_000,
                   help="rows of the distributed problem, over all ranks")
    p.add_argument("--iters", type=_positive, default=50, help="distributed GD iterations")
    p.add_argument("--rounds", type=_positive, default=50, help="federated rounds")
    p.set_defaults(run=demo)
    p = sub.add_parser("info", help="show the build and runtime configuration")
    p.set_defaults(run=info)
    p = sub.add_parser("plot", help="plot training histories (JSON/CSV from write_history)",
                       description="Draw one panel per metric against round or iteration; "
                       "several histories are overlaid.")
    p.add_argument("histories", nargs="+", metavar="HISTORY", help=".json or .csv history file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="image to write (.png; other suffixes matplotlib knows also work)")
    p.add_argument("--metrics", type=_names, metavar="A,B",
                   help="comma-separated metrics (default: every numeric metric except "
                   "round/iter, seconds, clients and bytes)")
    p.add_argument("--title", help="figure title")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(run=plot)
    commands.register(sub)
    train_command.register(sub)
    return parser


def main(argv=None):
    """Run one subcommand: its exit status (130 after Ctrl-C, with one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"cyfed {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
