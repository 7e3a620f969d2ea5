"""``cyfed train``: a distributed or federated run from flags and/or a TOML config file.

    cyfed train --mode federated --loss softmax --data DATA [--label COL]
                [--config FILE] [--set section.key=value ...] [--out MODEL.npz]

Flags override the config file, ``--set`` overrides both; without a loss one is
inferred from the labels (and said on stderr).  Every rank reads the config and
its data; rank 0 writes MODEL.npz (the final model with its config and metrics,
for ``cyfed evaluate`` / ``cyfed predict``) and beside it MODEL.config.json (the
resolved config), MODEL.history.jsonl (a line per round or iteration, appended
as it ends, so an interrupted run keeps its metrics), MODEL.history.json and .csv
(once, at the end) and MODEL.checkpoint.npz (every ``output.checkpoint_every``
steps, or ``output.checkpoint_seconds``, 60 by default, and at the end;
``--resume`` continues from it bit-identical).  Ctrl-C stops every rank after a
last checkpoint.  With a ``[search]`` table the grid is cross-validated first
(`cyfed.model_selection.GridSearchCV`, no checkpoints), its table written to
MODEL.search.csv, and the best candidate trained as above.
Exit status: 0 done, 1 training failed, 2 bad config, hyper-parameter, data or
output, 130 interrupted.
"""
import itertools
import json
import logging
import signal
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import numpy as np

import cyfed
from cyfed import checkpoint, io, model_file, model_selection
from cyfed._params import clone
from cyfed.comm import get_comm
from cyfed.data import shard_rows, split_devices
from cyfed.comm import on_every_rank
from cyfed.federated.history import HistoryLog, json_array, write_history
from cyfed.cli import config as cfg
from cyfed.cli.progress import ProgressBar, setup_logging

log = logging.getLogger("cyfed.train")
SIDE_FILES = {"config": ".config.json", "history": ".history.json",
              "history_csv": ".history.csv", "history_log": ".history.jsonl",
              "checkpoint": ".checkpoint.npz", "search": ".search.csv"}
CHECKPOINT_SECONDS = 60.0   # the checkpoint period without output.checkpoint_every
NEVER = 2**62               # the trainer's checkpoint_every when StepControl times them
AGREE_SECONDS = 0.1         # how often the ranks agree on stopping and checkpointing


def register(sub):
    p = sub.add_parser("train", help="federated or distributed training (flags, TOML config)",
                       description=__doc__.split("\n\n")[2].replace("\n", " "))
    p.add_argument("--config", metavar="FILE", help="TOML file (layout: cyfed.cli.config)")
    p.add_argument("--mode", choices=sorted(cfg.MODES), help="default: federated")
    p.add_argument("--loss", choices=cfg.LOSSES,
                   help="default: from the labels (classes: logistic or softmax; else squared)")
    p.add_argument("--data", metavar="PATH",
                   help="data file or directory of client files ([data] path)")
    p.add_argument("--label", metavar="COLUMN",
                   help="label column: index or name (default: the last column)")
    p.add_argument("--clients", type=int, metavar="N",
                   help=f"federated, one data file: split it into N clients ([data] n_clients; "
                   f"default {DEFAULT_CLIENTS})")
    p.add_argument("--partition", choices=tuple(io.PARTITIONS),
                   help="federated, one data file: how rows go to clients (default: iid)")
    p.add_argument("--alpha", type=float, metavar="A",
                   help="Dirichlet concentration of --partition dirichlet/quantity "
                   "(default 0.5)")
    p.add_argument("--min-size", type=int, metavar="M",
                   help="smallest client of --partition dirichlet (default 10) / quantity "
                   "(default 1)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML syntax), e.g. --set trainer.lr=0.1")
    p.add_argument("-o", "--out", metavar="MODEL.npz",
                   help="model file (default: [output] model, or model.npz); the history, "
                   "config and checkpoint go beside it")
    p.add_argument("--resume", action="store_true", help="continue from MODEL.checkpoint.npz")
    p.add_argument("--force", action="store_true", help="overwrite an earlier run in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    p.set_defaults(run=train)


def _fail(comm, message, status):
    if comm.rank == 0:
        print(f"cyfed train: {message}", file=sys.stderr)
    return status


def _flag_overrides(args):
    """--mode/--loss/--data/--label as config overrides (before --set ones)."""
    label = args.label
    if label is not None and not label.lstrip("-").isdigit():
        label = json.dumps(label)
    pairs = [("mode", args.mode and json.dumps(args.mode)),
             ("loss", args.loss and json.dumps(args.loss)),
             ("data.path", args.data and json.dumps(args.data)), ("data.label", label),
             ("data.partition", args.partition and json.dumps(args.partition)),
             ("data.n_clients", args.clients), ("data.alpha", args.alpha),
             ("data.min_size", args.min_size)]
    return [f"{key}={value}" for key, value in pairs if value is not None]


def _outputs(args, config):
    """{model, config, history, history_csv, checkpoint}: MODEL.npz and its side files."""
    model = Path(args.out or config["output"].get("model", "model.npz"))
    if model.suffix != ".npz":
        raise cfg.ConfigError(f"the model file must end in .npz, got {model}")
    paths = {"model": model, **{k: model.with_suffix(v) for k, v in SIDE_FILES.items()}}
    existing = [p for k, p in paths.items() if k in ("model", "checkpoint") and p.exists()]
    if existing and not (args.force or args.resume):
        raise cfg.ConfigError(f"{existing[0]} of an earlier run exists; pass --resume to "
                              "continue it or --force to overwrite it")
    return paths


LOAD_OPTIONS = ("label", "delimiter", "header", "missing", "zero_based", "max_bytes")
#: Clients a federated run splits one data file into when [data] n_clients is not set.
DEFAULT_CLIENTS = 10


def _arrays(data):
    """(X, y) of a builtin array dataset or a file: every row, `classes` of text labels."""
    kwargs = {k: data[k] for k in LOAD_OPTIONS if k in data}
    if "builtin" in data:
        return io.builtin(data["builtin"], dtype=data.get("dtype", "float64"))
    return io.load(data["path"], dtype=data.get("dtype", "float64"), **kwargs)


def _clients(data):
    """(clients, test, class names or None, the note of a default split or None) for a
    federated run; one file without a partition is split into DEFAULT_CLIENTS IID clients."""
    note = None
    dtype, seed = data.get("dtype", "float64"), data.get("seed", 0)
    if data.get("builtin") in io.FEDERATED_BUILTINS:
        clients = io.builtin(data["builtin"], dtype=dtype, seed=seed)
    elif "path" in data and Path(data["path"]).is_dir():
        clients = io.load_clients(data["path"], dtype=dtype,
                                  **{k: data[k] for k in LOAD_OPTIONS if k in data})
    else:
        if "partition" not in data and "n_clients" not in data:
            note = (f"federated on one data set: {DEFAULT_CLIENTS} IID clients (choose with "
                    "--clients N --partition iid|dirichlet|shards|quantity)")
        clients = io.split_clients(_arrays(data), data.get("partition", "iid"),
                                   data.get("n_clients", DEFAULT_CLIENTS),
                                   seed=seed, alpha=data.get("alpha", 0.5),
                                   min_size=data.get("min_size"))
    classes = clients[0].classes if clients else None
    test = None
    if "test" in data:
        test = io.load(data["test"], dtype=dtype)
        if classes is not None:
            test = io.relabel(test, classes, "the training data")
    elif "test_fraction" in data:
        clients, test = split_devices(clients, data["test_fraction"], seed=seed)
    return clients, test, classes, note


def _checkpoint_every(config):
    """The steps between checkpoints the config asks for, or None (StepControl times them)."""
    return config["output"].get("checkpoint_every", config["trainer"].get("checkpoint_every"))


def _trainer(config, comm, out, resume):
    """The trainer of the config, its hyper-parameters checked (ConfigError: exit 2)."""
    trainer_cls = cfg.MODES[config["mode"]]
    every = _checkpoint_every(config)
    kwargs = dict(config["trainer"], comm=comm, checkpoint=out["checkpoint"], resume=resume,
                  checkpoint_every=NEVER if every is None else every)
    if config["privacy"]:
        kwargs["privacy"] = cfg.make_privacy(config["privacy"], config["mode"])
    kwargs.update(cfg.compression_options(config["compression"]))
    if config["mode"] == "distributed":
        trainer = trainer_cls(config["loss"], **kwargs)
        check = trainer._check_params
    else:
        strategy = cfg.make_strategy(config["strategy"] or {"name": "FedAvg"})
        attack = cfg.make_attack(config["attack"]) if config["attack"] else None
        if config["secure_aggregation"]:
            kwargs["secure_aggregation"] = cfg.make_secure_aggregation(
                config["secure_aggregation"])
        trainer = trainer_cls(strategy, config["loss"], attack=attack, **kwargs)
        check = trainer._settings
    try:
        check()
    except (TypeError, ValueError) as exc:
        raise cfg.ConfigError(f"[trainer] {exc}") from None
    return trainer


def _infer_loss(config, y, classes):
    """Set config["loss"] from the labels when none is given: the note saying so, or None."""
    if config["loss"] is not None:
        return None
    config["loss"], what = cfg.infer_loss(y, classes)
    other = ("a classifier with --loss logistic or softmax" if config["loss"] == "squared"
             else "a regression with --loss squared")
    return (f"no --loss given; the labels are {what}, so --loss {config['loss']} "
            f"(train {other})")


Setup = namedtuple("Setup", "config out data classes trainer note")


def _setup(args, comm):
    """The run's Setup: config, output paths, this rank's data, the class names of text
    labels (or None), the trainer and the note of an inferred loss (or None)."""
    config = cfg.load(args.config, _flag_overrides(args) + args.set)
    out = _outputs(args, config)
    split_note = None
    if config["mode"] == "federated":
        clients, test, classes, split_note = _clients(config["data"])
        data = (clients, test)
        labels = np.concatenate([y for _, y in clients]) if clients else np.zeros(0)
    else:
        full = _arrays(config["data"])
        classes, labels = full.classes, full.y
        part = shard_rows(len(labels), comm.rank, comm.size)
        data = (full.X[part], labels[part])
    note = "; ".join(n for n in (split_note, _infer_loss(config, labels, classes)) if n)
    return Setup(config, out, data, classes, _trainer(config, comm, out, args.resume), note)


def _steps(config, trainer):
    return trainer.rounds if config["mode"] == "federated" else trainer.max_iter


def _metrics(record):
    keys = ("train_loss", "loss", "test_loss", "test_accuracy", "test_r2", "epsilon")
    return {k.replace("test_accuracy", "acc"): record[k] for k in keys if k in record}


def _strategy_grid(config, grid):
    """A grid with its "strategy__<key>" lists turned into one list of strategies (every
    combination of those keys, on top of the [strategy] table)."""
    keys = [k for k in grid if k.startswith("strategy__")]
    if not keys:
        return grid
    base = config["strategy"] or {"name": "FedAvg"}
    strategies = [cfg.make_strategy({**base, **{k[10:]: v for k, v in zip(keys, values)}})
                  for values in itertools.product(*(grid[k] for k in keys))]
    return {**{k: v for k, v in grid.items() if k not in keys}, "strategy": strategies}


def _search(config, trainer, data, out, comm, quiet):
    """Cross-validate [search]'s grid (collective); set the best candidate on `trainer`
    and write the grid table to MODEL.search.csv (rank 0)."""
    options = cfg.search_options(config["search"])
    grids = options["param_grid"]
    grids = [_strategy_grid(config, g) for g in (grids if isinstance(grids, list) else [grids])]
    options["param_grid"] = grids
    searched = clone(trainer, checkpoint=None, resume=False)
    search = model_selection.GridSearchCV(searched, refit=False, comm=comm, **options)
    if config["mode"] == "federated":
        search.fit(data[0])
    else:
        search.fit(*data)
    trainer.set_params(**search.best_params_)
    if comm.rank == 0:
        model_selection.write_cv_results(search.cv_results_, out["search"])
        if not quiet:
            rows = [(row, {k[6:]: v for k, v in row.items() if k.startswith("param_")})
                    for row in search.to_table()]
            for row, params in rows:
                print(f"rank {row['rank_test_score']:>3}  score {row['mean_test_score']:.4f}"
                      f" +- {row['std_test_score']:.4f}  {params}")
            print(f"best: {rows[search.best_index_][1]} (mean score "
                  f"{search.best_score_:.4g}); table in {out['search']}")


class Interrupted(Exception):
    """Ctrl-C, acted on by every rank after the same step."""


class StepControl:
    """The callback after every step, the same on every rank: the `bar` advances;
    about every AGREE_SECONDS rank 0 appends the new records to the history `log`, a
    checkpoint is taken every `seconds` (rank 0's clock; None: the trainer's
    checkpoint_every only), and Ctrl-C stops the run just after a checkpoint,
    raising `Interrupted`.

    The trainer checkpoints after a step while its checkpoint_every is 1, so one is
    asked for by setting it to 1 for a step.  The decisions are taken on every rank
    after the same step (rank 0 sets the steps until the next time, agreed with the
    decisions in one small Allreduce).  As a context manager it turns SIGINT into a
    request to stop (a second Ctrl-C raises KeyboardInterrupt at once).
    """

    def __init__(self, trainer, comm, bar, log, seconds):
        self.trainer, self.comm, self.bar, self.log, self.seconds = (trainer, comm, bar,
                                                                     log, seconds)
        self.every, self.steps = trainer.checkpoint_every, 0
        self.requested = self.stopping = self.asked = False
        self.countdown = self.interval = 1
        self.agreed = self.saved = time.monotonic()
        self.cost = 0.0                             # seconds the last checkpoint took
        self._previous = None

    def __call__(self, record):
        self.steps += 1
        if self.bar.enabled:
            self.bar.update(**_metrics(record))
        self.countdown -= 1
        if self.countdown > 0:
            return
        written, self.asked = self.asked, False
        if written:
            self.trainer.checkpoint_every = self.every
        stop, save = self._agree(written)
        self.stopping |= stop
        if self.stopping and written:
            raise Interrupted
        if self.stopping or save:
            self.trainer.checkpoint_every, self.asked, self.countdown = 1, True, 1

    def _agree(self, written):
        """(stop, checkpoint), the same on every rank; the steps until the next time.
        `written`: the checkpoint asked for last time is on disk (it took about the
        time since then; the next one waits ten times as long, so that checkpoints
        never take more than a tenth of the run)."""
        now = time.monotonic()
        if written:
            self.cost, self.saved = now - self.agreed, now
        if self.log is not None:
            self.log.write(self.trainer.history_)
        interval = min(max(int(self.interval * AGREE_SECONDS / max(now - self.agreed, 1e-9)),
                           1), 2 * self.interval)
        due = self.seconds is not None and now - self.saved >= max(self.seconds, 10 * self.cost)
        votes = [self.requested, due, interval]
        if self.comm.size > 1:
            if self.comm.rank != 0:
                votes[1:] = 0, 0
            votes = self.comm.allreduce_sum(np.array(votes, dtype=np.float64))
        self.countdown = self.interval = int(votes[2])
        self.agreed = now
        return bool(votes[0]), bool(votes[1])

    def _sigint(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._sigint)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _fit(config, trainer, data, out, comm, args, control):
    """Search (with [search]) and train: the exit status."""
    try:
        if config["search"]:
            _search(config, trainer, data, out, comm, args.quiet)
        with control.bar, control:
            if config["mode"] == "federated":
                clients, test = data
                trainer.fit(clients, test=test, callback=control)
            else:
                trainer.fit(*data, callback=control)
    except (Interrupted, KeyboardInterrupt):
        return _fail(comm, _interrupted(trainer, out["checkpoint"]) if comm.rank == 0 else "",
                     130)
    except (ValueError, TypeError) as exc:
        if control.steps == 0:                      # refused before the first step: input
            return _fail(comm, exc, 2)
        return _failed(comm, exc)
    except Exception as exc:                        # noqa: BLE001 - reported, status 1
        return _failed(comm, exc)
    return 0


def _failed(comm, exc):
    log.debug("training failed", exc_info=True)
    return _fail(comm, f"training failed: {type(exc).__name__}: {exc}", 1)


def _interrupted(trainer, path):
    """The line that ends an interrupted run: its step, its checkpoint, how to go on."""
    if path.exists():
        meta = checkpoint.load(path)[1]
        return (f"interrupted at step {meta.get('round', meta.get('iteration'))}; checkpoint "
                f"at {path}; continue with --resume")
    return (f"interrupted at step {len(getattr(trainer, 'history_', []))}; no checkpoint "
            "yet, so a rerun starts over")


def _write_history(trainer, history_log, out):
    """The history log's last records, then MODEL.history.json (from the log's lines)
    and .csv (rank 0, once)."""
    history = getattr(trainer, "history_", [])
    with history_log:
        if history:
            history_log.write(history)
    if history:
        out["history"].write_text(json_array(out["history_log"].read_text().splitlines()))
        write_history(history, out["history_csv"])


def train(args):
    comm = get_comm()
    try:
        setup_logging(args.log_level, comm.rank, comm.size)
        config, out, data, classes, trainer, note = on_every_rank(
            comm, lambda: _setup(args, comm), (ValueError, TypeError, OSError))
    except (cfg.ConfigError, ValueError, TypeError, OSError) as exc:
        return _fail(comm, exc, 2)
    history_log = None
    if comm.rank == 0:
        if note:
            print(f"cyfed train: {note}", file=sys.stderr)
        out["model"].parent.mkdir(parents=True, exist_ok=True)
        out["config"].write_text(json.dumps(config, indent=1, default=str))
        if not args.resume:
            out["checkpoint"].unlink(missing_ok=True)       # an earlier run's (--force)
        history_log = HistoryLog(out["history_log"])
    bar = ProgressBar(_steps(config, trainer), desc=config["mode"],
                      enabled=False if args.quiet or comm.rank != 0 else None)
    seconds = config["output"].get("checkpoint_seconds", None if _checkpoint_every(config)
                                   is not None else CHECKPOINT_SECONDS)
    control = StepControl(trainer, comm, bar, history_log, seconds)
    status = _fit(config, trainer, data, out, comm, args, control)
    if comm.rank == 0:
        _write_history(trainer, history_log, out)
    if status or comm.rank != 0:
        return status
    last = trainer.history_[-1] if trainer.history_ else {}
    model_file.save_model(out["model"], loss=config["loss"], coef=trainer.coef_,
                          intercept=trainer.intercept_, classes=classes, force=True,
                          metadata={"config": config, "metrics": last,
                                    "mode": config["mode"], "ranks": comm.size})
    if not args.quiet:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in _metrics(last).items())
        print(f"cyfed {cyfed.__version__} train ({config['mode']}, {comm.size} rank(s)): "
              f"{len(trainer.history_)} steps; {shown}; model in {out['model']}")
    return 0
