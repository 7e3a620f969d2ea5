"""Run configuration for ``cyfed train``: a TOML file, command-line overrides, validation.

Layout (every table optional except what the mode needs)::

    mode = "federated"               # or "distributed"
    loss = "softmax"                 # squared | logistic | softmax (default: from the labels)
    [data]                           # path = a file or a directory of client files,
    path = "train.csv"               # or builtin = "fedprox-synthetic" / "digits" / ...
    label = -1                       # column index or name (CSV)
    dtype = "float64"
    missing = "drop"                 # or "mean": rows with empty cells (default: refused)
    partition = "dirichlet"          # federated, one file: iid | dirichlet | shards | quantity
    n_clients = 100
    alpha = 0.5
    min_size = 10                    # smallest client of dirichlet (default 10) / quantity
    test = "test.csv"                # held-out data evaluated every round (optional)
    test_fraction = 0.2              # or: hold out this share of each client (builtins)
    [trainer]                        # FederatedTrainer / DistributedGD keyword arguments
    rounds = 50
    [strategy]                       # federated: name + its keyword arguments;
    name = "FedProx"                 # aggregator = { name = "FedTrimmedAvg", beta = 0.2 }
    mu = 1.0
    [attack]                         # optional: name = "SignFlip", clients = [0, 1], ...
    [privacy]                        # optional: federated: cyfed.privacy.ClientDP keywords,
    clip_norm = 1.0                  # distributed: cyfed.privacy.DPSGD keywords
    target_epsilon = 3.0
    [secure_aggregation]             # optional, federated: cyfed.secagg.SecureAggregation
    neighbours = "log"               # keywords
    [compression]                    # optional: compressors of cyfed.compress (distributed:
    uplink = { name = "TopK", k = 0.01 }   # the gradients; no downlink)
    error_feedback = true
    downlink = { name = "FP16" }
    [search]                         # optional: cross-validated grid over [trainer] keys
    param_grid = { lr = [0.01, 0.1, "auto"], l2 = [0.0, 1e-4] }   # or a list of tables
    cv = 5                           # folds of rows (distributed) or of clients (federated)
    [output]
    model = "runs/demo/model.npz"    # history, config and checkpoint go beside it
    checkpoint_every = 5             # steps; or checkpoint_seconds = 60.0 (the default
                                     # when neither is given)

Overrides are ``section.key=value`` with a TOML value (``trainer.lr=0.1``,
``strategy.name="FedAdam"``).  Unknown keys are refused with the closest valid key.
Without a loss, `infer_loss` picks one from the labels.
"""
import difflib
import inspect
import numbers
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # pragma: no cover - Python 3.10
    import tomli as tomllib

import numpy as np

from cyfed import attacks, compress, gradients, io, privacy, strategies
from cyfed.secagg import SecureAggregation
from cyfed.distributed import DistributedGD
from cyfed.federated import FederatedTrainer

TOP = {"mode", "loss", "data", "trainer", "strategy", "attack", "privacy", "secure_aggregation",
       "compression", "search", "output"}
SEARCH = {"param_grid", "cv", "shuffle", "seed"}
COMPRESSION = {"uplink", "error_feedback", "downlink"}
DATA = {"path", "builtin", "label", "dtype", "delimiter", "header", "missing", "zero_based",
        "partition", "n_clients", "alpha", "min_size", "seed", "test", "test_fraction",
        "max_bytes"}
OUTPUT = {"model", "checkpoint_every", "checkpoint_seconds"}
MAX_INFERRED_CLASSES = 20           # integer labels with more distinct values: regression
NOT_FROM_CONFIG = {"comm", "checkpoint", "resume", "attack", "strategy", "loss", "privacy",
                   "secure_aggregation", "compression", "error_feedback", "downlink_compression"}
PRIVACY = {"federated": privacy.ClientDP, "distributed": privacy.DPSGD}
MODES = {"federated": FederatedTrainer, "distributed": DistributedGD}
LOSSES = tuple(gradients.LOSSES)


class ConfigError(ValueError):
    """A configuration the user must fix (the command exits with status 2)."""


def _suggest(key, valid, where, what="key"):
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown {what} {key!r} in {where}{hint}")


def _check_keys(table, valid, where):
    for key in table:
        if key not in valid:
            raise _suggest(key, valid, where)


def keyword_names(cls):
    """Keyword arguments of a class's constructor."""
    return {n for n in inspect.signature(cls).parameters if n != "self"}


def parse_override(text):
    """'section.key=value' (value in TOML syntax; bare words are taken as strings)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return name.strip().split("."), parsed


def load(path, overrides=()):
    """The validated configuration dict of a TOML file (None: none) plus overrides."""
    try:
        config = {}
        if path is not None:
            with open(path, "rb") as fh:
                config = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for override in overrides:
        keys, value = parse_override(override)
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {key!r} is not a table")
        node[keys[-1]] = value
    return validate(config)


def validate(config):
    """Check every key; fill defaults (mode federated; loss None: `infer_loss`)."""
    _check_keys(config, TOP, "the config")
    config.setdefault("mode", "federated")
    if config.setdefault("loss", None) is not None and config["loss"] not in LOSSES:
        raise _suggest(str(config["loss"]), LOSSES, "the config", "loss")
    if config["mode"] not in MODES:
        raise ConfigError(f"mode must be one of {sorted(MODES)}, got {config['mode']!r}")
    for name in ("data", "trainer", "strategy", "attack", "privacy", "secure_aggregation",
                 "compression", "search", "output"):
        if not isinstance(config.setdefault(name, {}), dict):
            raise ConfigError(f"[{name}] must be a table")
    _check_keys(config["data"], DATA, "[data]")
    data = config["data"]
    if ("path" in data) == ("builtin" in data):
        raise ConfigError("[data] needs exactly one of path = ... or builtin = ...")
    if "builtin" in data and data["builtin"] not in io.BUILTINS:
        raise _suggest(str(data["builtin"]), io.BUILTINS, "[data]", "builtin dataset")
    if "partition" in data and data["partition"] not in io.PARTITIONS:
        raise _suggest(str(data["partition"]), io.PARTITIONS, "[data]", "partition")
    _check_keys(config["output"], OUTPUT, "[output]")
    seconds = config["output"].get("checkpoint_seconds", 1.0)
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds > 0:
        raise ConfigError(f"[output] checkpoint_seconds must be a number > 0, got {seconds!r}")
    trainer_keys = keyword_names(MODES[config["mode"]]) - NOT_FROM_CONFIG
    _check_keys(config["trainer"], trainer_keys, f"[trainer] ({config['mode']})")
    if config["search"]:
        search_options(config["search"], trainer_keys, config["mode"] == "federated")
    if config["mode"] == "federated":
        make_strategy(config["strategy"] or {"name": "FedAvg"})
        if config["attack"]:
            make_attack(config["attack"])
        if config["secure_aggregation"]:
            make_secure_aggregation(config["secure_aggregation"])
    elif config["strategy"] or config["attack"] or config["secure_aggregation"]:
        raise ConfigError("[strategy], [attack] and [secure_aggregation] apply to "
                          "mode = \"federated\" only")
    elif "downlink" in config["compression"]:
        raise ConfigError("[compression] downlink applies to mode = \"federated\" only "
                          "(distributed GD compresses the gradients it all-gathers: uplink)")
    compression_options(config["compression"])
    if config["privacy"]:
        make_privacy(config["privacy"], config["mode"])
    return config


def _build(table, module, kind, base):
    table = dict(table)
    name = table.pop("name", None)
    cls = getattr(module, name, None) if isinstance(name, str) else None
    names = {n for n, c in vars(module).items()
             if isinstance(c, type) and issubclass(c, base) and c is not base
             and not n.startswith("_")}
    if cls is None or name not in names:
        raise _suggest(str(name), names, f"[{kind}]", "name")
    _check_keys(table, keyword_names(cls), f"[{kind}] ({name})")
    return cls, table


def make_strategy(table):
    """A strategy from {name = ..., its keyword arguments, aggregator = {...}}."""
    cls, kwargs = _build(table, strategies, "strategy", strategies.Strategy)
    if isinstance(kwargs.get("aggregator"), dict):
        kwargs["aggregator"] = make_strategy(kwargs["aggregator"])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[strategy] {table.get('name')}: {exc}") from None


def make_attack(table):
    """An attack from {name = ..., clients = [...], its keyword arguments}."""
    cls, kwargs = _build(table, attacks, "attack", attacks.Attack)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[attack] {table.get('name')}: {exc}") from None


def _make(cls, table, section):
    _check_keys(table, keyword_names(cls), f"[{section}] ({cls.__name__})")
    try:
        obj = cls(**table)
        if hasattr(obj, "check"):
            obj.check()
        return obj
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}] {cls.__name__}: {exc}") from None


def make_privacy(table, mode):
    """ClientDP (federated) or DPSGD (distributed) from the [privacy] table."""
    return _make(PRIVACY[mode], table, "privacy")


def make_secure_aggregation(table):
    """SecureAggregation from the [secure_aggregation] table."""
    return _make(SecureAggregation, table, "secure_aggregation")


def search_options(table, trainer_keys=None, federated=True):
    """GridSearchCV keywords from the [search] table; its grid may only name
    `trainer_keys` (None: not checked) and, federated, "strategy__<key>" parameters
    of the [strategy]."""
    _check_keys(table, SEARCH, "[search]")
    if "param_grid" not in table:
        raise ConfigError("[search] needs param_grid = { name = [values, ...], ... }")
    grid = table["param_grid"]
    grids = grid if isinstance(grid, list) else [grid]
    for one in grids:
        if not isinstance(one, dict) or not one:
            raise ConfigError("[search] param_grid must be a table of lists, or a list of them")
        for key, values in one.items():
            strategy_key = federated and key.startswith("strategy__")
            if trainer_keys is not None and not strategy_key:
                _check_keys({key: None}, trainer_keys, "[search] param_grid")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"[search] param_grid.{key} must be a non-empty list")
    options = {k: table[k] for k in ("cv", "shuffle", "seed") if k in table}
    return {"param_grid": grid, **options}


def compression_options(table):
    """FederatedTrainer keywords (compression, error_feedback, downlink_compression)
    from the [compression] table: uplink/downlink = {name = "TopK", k = 0.01}."""
    _check_keys(table, COMPRESSION, "[compression]")
    options = {}
    for key, keyword in (("uplink", "compression"), ("downlink", "downlink_compression")):
        if key in table:
            if not isinstance(table[key], dict):
                raise ConfigError(f"[compression] {key} must be a table "
                                  "{ name = ..., its keyword arguments }")
            cls, kwargs = _build(table[key], compress, f"compression.{key}",
                                 compress.Compressor)
            try:
                options[keyword] = cls(**kwargs)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"[compression] {key} {cls.__name__}: {exc}") from None
    if "error_feedback" in table:
        if not isinstance(table["error_feedback"], bool):
            raise ConfigError("[compression] error_feedback must be true or false")
        options["error_feedback"] = table["error_feedback"]
    return options


def infer_loss(y, classes=None):
    """(loss, what the labels are) for a run given no loss: class names, or at most
    MAX_INFERRED_CLASSES distinct integers, are classes (logistic for two, softmax for
    more); other labels are regression targets (squared)."""
    values = np.unique(y)
    if classes is None and not (values.size <= MAX_INFERRED_CLASSES
                                and np.array_equal(values, np.round(values))):
        return "squared", f"real numbers ({values.size} distinct values)"
    names = [str(c) for c in classes] if classes is not None else [f"{v:g}" for v in values]
    what = "class names" if classes is not None else "distinct integers"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return ("logistic" if len(names) <= 2 else "softmax"), f"{len(names)} {what} ({shown})"
