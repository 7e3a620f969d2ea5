"""``cyfed train``: a distributed or federated run from flags and/or a TOML config file.

    cyfed train --mode federated --loss softmax --data DATA [--label COL]
                [--config FILE] [--set section.key=value ...] [--out MODEL.npz]

Flags override the config file, ``--set`` overrides both.  Every rank reads the
config and its data; rank 0 writes MODEL.npz (the final model with its config
and metrics, for ``cyfed evaluate`` / ``cyfed predict``) and beside it
MODEL.config.json (the resolved config), MODEL.history.json and .csv (rewritten
after every round or iteration, so an interrupted run keeps its metrics) and
MODEL.checkpoint.npz (every ``output.checkpoint_every`` steps; ``--resume``
continues from it bit-identical).  With a ``[search]`` table the grid is
cross-validated first (`cyfed.model_selection.GridSearchCV`, no checkpoints),
its table written to MODEL.search.csv, and the best candidate trained as above.
Exit status: 0 done, 1 training failed, 2 bad config, data or output.
"""
import itertools
import json
import logging
import sys
from pathlib import Path

import cyfed
from cyfed import io, model_file, model_selection
from cyfed._params import clone
from cyfed.comm import get_comm
from cyfed.data import shard_rows, split_devices
from cyfed.comm import on_every_rank
from cyfed.federated import write_history
from cyfed.cli import config as cfg
from cyfed.cli.progress import ProgressBar, setup_logging

log = logging.getLogger("cyfed.train")
SIDE_FILES = {"config": ".config.json", "history": ".history.json",
              "history_csv": ".history.csv", "checkpoint": ".checkpoint.npz",
              "search": ".search.csv"}


def register(sub):
    p = sub.add_parser("train", help="federated or distributed training (flags, TOML config)",
                       description=__doc__.split("\n\n")[2].replace("\n", " "))
    p.add_argument("--config", metavar="FILE", help="TOML file (layout: cyfed.cli.config)")
    p.add_argument("--mode", choices=sorted(cfg.MODES), help="default: federated")
    p.add_argument("--loss", choices=("squared", "logistic", "softmax"),
                   help="default: squared")
    p.add_argument("--data", metavar="PATH",
                   help="data file or directory of client files ([data] path)")
    p.add_argument("--label", metavar="COLUMN", help="label column: index or name")
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
             ("data.path", args.data and json.dumps(args.data)), ("data.label", label)]
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


def _arrays(data):
    """(X, y) of a builtin array dataset or a file; all rows (federated) or this rank's."""
    kwargs = {k: data[k] for k in ("label", "delimiter", "header", "max_bytes") if k in data}
    if "builtin" in data:
        return io.builtin(data["builtin"], dtype=data.get("dtype", "float64"))
    return io.load(data["path"], dtype=data.get("dtype", "float64"), **kwargs)


def _clients(data):
    """(clients, test) for a federated run."""
    dtype, seed = data.get("dtype", "float64"), data.get("seed", 0)
    test = io.load(data["test"], dtype=dtype) if "test" in data else None
    if data.get("builtin") in io.FEDERATED_BUILTINS:
        clients = io.builtin(data["builtin"], dtype=dtype, seed=seed)
    elif "path" in data and Path(data["path"]).is_dir():
        clients = io.load_clients(data["path"], dtype=dtype)
    else:
        if "partition" not in data or "n_clients" not in data:
            raise cfg.ConfigError("[data] of one file or array dataset needs partition = ... "
                                  "and n_clients = ... for a federated run")
        X, y = _arrays(data)
        split = io.PARTITIONS[data["partition"]](y, data["n_clients"], seed,
                                                 data.get("alpha", 0.5))
        clients = [(X[rows], y[rows]) for rows in split]
    if test is None and "test_fraction" in data:
        clients, test = split_devices(clients, data["test_fraction"], seed=seed)
    return clients, test


def _trainer(config, comm, out, resume):
    trainer_cls = cfg.MODES[config["mode"]]
    kwargs = dict(config["trainer"], comm=comm, checkpoint=out["checkpoint"], resume=resume)
    if "checkpoint_every" in config["output"]:
        kwargs["checkpoint_every"] = config["output"]["checkpoint_every"]
    if config["privacy"]:
        kwargs["privacy"] = cfg.make_privacy(config["privacy"], config["mode"])
    kwargs.update(cfg.compression_options(config["compression"]))
    if config["mode"] == "distributed":
        return trainer_cls(config["loss"], **kwargs)
    strategy = cfg.make_strategy(config["strategy"] or {"name": "FedAvg"})
    attack = cfg.make_attack(config["attack"]) if config["attack"] else None
    if config["secure_aggregation"]:
        kwargs["secure_aggregation"] = cfg.make_secure_aggregation(config["secure_aggregation"])
    return trainer_cls(strategy, config["loss"], attack=attack, **kwargs)


def _setup(args, comm):
    config = cfg.load(args.config, _flag_overrides(args) + args.set)
    out = _outputs(args, config)
    if config["mode"] == "federated":
        data = _clients(config["data"])
    else:
        X, y = _arrays(config["data"])
        part = shard_rows(len(y), comm.rank, comm.size)
        data = (X[part], y[part])
    return config, out, data, _trainer(config, comm, out, args.resume)


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


def train(args):
    comm = get_comm()
    try:
        setup_logging(args.log_level, comm.rank, comm.size)
        config, out, data, trainer = on_every_rank(comm, lambda: _setup(args, comm),
                                                   (ValueError, TypeError, OSError))
    except (cfg.ConfigError, ValueError, TypeError, OSError) as exc:
        return _fail(comm, exc, 2)
    if comm.rank == 0:
        out["model"].parent.mkdir(parents=True, exist_ok=True)
        out["config"].write_text(json.dumps(config, indent=1, default=str))
    bar = ProgressBar(_steps(config, trainer), desc=config["mode"],
                      enabled=False if args.quiet or comm.rank != 0 else None)

    def after_step(record):
        if comm.rank == 0:
            write_history(trainer.history_, out["history"])
            write_history(trainer.history_, out["history_csv"])
        bar.update(**_metrics(record))

    try:
        if config["search"]:
            _search(config, trainer, data, out, comm, args.quiet)
        with bar:
            if config["mode"] == "federated":
                clients, test = data
                trainer.fit(clients, test=test, callback=after_step)
            else:
                trainer.fit(*data, callback=after_step)
    except Exception as exc:                         # noqa: BLE001 - reported, status 1
        log.debug("training failed", exc_info=True)
        return _fail(comm, f"training failed: {type(exc).__name__}: {exc}", 1)
    if comm.rank == 0:
        last = trainer.history_[-1] if trainer.history_ else {}
        model_file.save_model(out["model"], loss=config["loss"], coef=trainer.coef_,
                              intercept=trainer.intercept_, force=True,
                              metadata={"config": config, "metrics": last,
                                        "mode": config["mode"], "ranks": comm.size})
        if not args.quiet:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in _metrics(last).items())
            print(f"cyfed {cyfed.__version__} train ({config['mode']}, {comm.size} rank(s)): "
                  f"{len(trainer.history_)} steps; {shown}; model in {out['model']}")
    return 0

