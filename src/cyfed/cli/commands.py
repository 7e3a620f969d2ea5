"""The data and model subcommands of ``cyfed``: partition, evaluate, predict.

partition  split one data file into per-client files (`cyfed.io.save_clients`).
evaluate   a model file's loss and accuracy (logistic/softmax) or MSE and R²
           (squared) on a data file; under mpiexec each rank reads its own rows.
           Class-name labels (yes/no) are coded by the model's classes.
predict    a model's predictions (in the model's class names, when it has them)
           or class probabilities for every row of a data file, written as .csv
           or .npy (rank 0 writes under mpiexec).

Every command reads its data with `cyfed.io.load`: --label, --dtype,
--delimiter, --missing and --zero-based are its keywords (docs/data.md).

Input errors (missing or malformed files, a model/data feature mismatch, an
existing output without --force) print one line ``cyfed CMD: message`` on
stderr (rank 0 only) and exit 2; numerical failures exit 1.
"""
import argparse
import functools
import json
import re
import sys
from pathlib import Path

import numpy as np

from cyfed import gradients, io
from cyfed.comm import get_comm, on_rank
from cyfed.model_file import load_model
from cyfed.models import r2_score

PREDICTION_SUFFIXES = (".csv", ".npy")
DATA_HELP = (".npy, .npz, delimited text (.csv, .tsv, ...) or LIBSVM data file; text "
             "files may be .gz/.bz2/.xz compressed (docs/data.md)")


class CommandError(Exception):
    """An error reported as one line on stderr, with the exit status to return."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


_EXPECTED = (CommandError, OSError, ValueError, FloatingPointError)


def _command_error(exc):
    """`exc` as a CommandError: numerical failures exit 1, input errors 2."""
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, FloatingPointError):
        return CommandError(str(exc), 1)
    if isinstance(exc, OSError) and exc.strerror:
        return CommandError(f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror)
    return CommandError(re.sub(r'missing="(\w+)"', r"--missing \1", str(exc)))  # io's hint


def _run(name, command, args):
    """command(args, comm) -> exit status; an expected error is one line on rank 0's stderr."""
    comm = get_comm()
    try:
        return command(args, comm)
    except _EXPECTED as exc:
        error = _command_error(exc)
    if comm.rank == 0:
        print(f"cyfed {name}: {error}", file=sys.stderr)
    return error.status


def _agree(comm, fn):
    """fn() on every rank; if any rank fails, the first failure is raised on every rank."""
    try:
        result, error = fn(), None
    except _EXPECTED as exc:
        result, error = None, _command_error(exc)
    errors = comm.allgather_obj(None if error is None else (str(error), error.status))
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if not failed:
        return result
    rank, (message, status) = failed[0]
    if len(set(errors)) > 1:                  # not every rank saw it: say where
        message = on_rank(rank, message)
    raise CommandError(message, status)


def _on_rank0(comm, fn):
    """fn() on rank 0 only (file output); its failure is raised on every rank."""
    return _agree(comm, lambda: fn() if comm.rank == 0 else None)


def _load_kwargs(args):
    """The `cyfed.io.load` keywords of the data options (`_data_options`)."""
    return {"label": args.label, "dtype": args.dtype, "delimiter": args.delimiter,
            "missing": args.missing,
            "zero_based": {"true": True, "false": False}.get(args.zero_based, "auto")}


def _check_features(model, X, args):
    """Refuse data whose feature count differs from the model's."""
    d = model["coef"].shape[0]
    if X.shape[1] != d:
        raise CommandError(f"{args.model} has {d} features, but {args.data} has "
                           f"{X.shape[1]} (not counting the label column)")


# -- partition -----------------------------------------------------------------------------

def partition(args, comm):
    """Split DATA into --clients client files in DIR; print one summary line (rank 0
    does the work; under mpiexec the other ranks wait for it)."""
    def split():
        clients = io.load_clients(args.data, partition=args.method, n_clients=args.clients,
                                  seed=args.seed, alpha=args.alpha, min_size=args.min_size,
                                  **_load_kwargs(args))
        try:
            io.save_clients(clients, args.output, args.format, force=args.force)
        except FileExistsError as exc:    # io names the keyword argument, not the option
            raise CommandError(str(exc).replace("force=True", "--force")) from None
        return _partition_summary(clients, args.output)

    summary = _on_rank0(comm, split)
    if comm.rank == 0:
        print(summary)
    return 0


def _spread(values):
    """'min A, median B, max C' of a list of counts."""
    return f"min {min(values)}, median {np.median(values):g}, max {max(values)}"


def _partition_summary(clients, directory):
    """One line: the number of clients, rows per client and (integer labels) classes."""
    line = (f"{len(clients)} clients in {directory}: rows per client "
            f"{_spread([y.size for _, y in clients])}")
    if all(np.array_equal(y, np.round(y)) for _, y in clients):
        line += f"; classes per client {_spread([np.unique(y).size for _, y in clients])}"
    return line


# -- evaluate ------------------------------------------------------------------------------

def evaluate(args, comm):
    """Print MODEL's metrics on DATA (rank 0), the rows spread over the ranks."""
    model, y, sums = _agree(comm, lambda: _local_sums(args, comm))
    totals = comm.allreduce_sum(sums)
    if totals[1] == 0:
        raise CommandError(f"{args.data} has no rows")
    metrics = _metrics(model["loss"], totals, y, comm)
    if comm.rank == 0:
        print(json.dumps(metrics) if args.json else _metrics_line(metrics))
    return 0


def _local_sums(args, comm):
    """(model, this rank's y, [loss sum, rows, correct count or sum of y])."""
    model = load_model(args.model)
    data = io.load(args.data, **_load_kwargs(args), rank=comm.rank, size=comm.size)
    X, y = _model_codes(model, data, args)
    _check_features(model, X, args)
    if X.shape[0] == 0:
        return model, y, np.zeros(3)
    loss, coef, intercept = model["loss"], model["coef"], model["intercept"]
    value, _, _ = gradients.loss_grad(loss, X, y, coef, intercept)
    third = (y.sum(dtype=np.float64) if loss == "squared"
             else np.count_nonzero(gradients.predict(loss, X, coef, intercept) == y))
    return model, y, np.array([value * X.shape[0], X.shape[0], third], dtype=np.float64)


def _model_codes(model, data, args):
    """`data` with class-name labels coded by the model's classes."""
    if data.classes is None:
        return data
    if model["classes"] is None:
        names = ", ".join(map(str, data.classes[:3])) + ", ..." * (data.classes.size > 3)
        raise CommandError(f"{args.data} labels rows with class names ({names}), but "
                           f"{args.model} has none (it was trained on numeric labels)")
    return io.relabel(data, model["classes"], of=args.model, source=args.data)


def _metrics(loss, totals, y, comm):
    """The metrics dict of summed [loss sum, rows, correct or sum of y]."""
    loss_sum, n, third = totals
    metrics = {"loss_function": loss, "rows": int(n)}
    if loss != "squared":
        return {**metrics, "loss": loss_sum / n, "accuracy": third / n}
    centred = y.astype(np.float64) - third / n
    total = comm.allreduce_sum(np.array([centred @ centred]))[0]
    return {**metrics, "mse": loss_sum / n, "r2": r2_score(loss_sum, total)}


def _metrics_line(metrics):
    """'<loss> model, N rows: name value, ...' for a terminal."""
    values = ", ".join(f"{k} {'n/a' if v is None else f'{v:.6g}'}"
                       for k, v in metrics.items() if k not in ("loss_function", "rows"))
    return f"{metrics['loss_function']} model, {metrics['rows']} rows: {values}"


# -- predict -------------------------------------------------------------------------------

def predict(args, comm):
    """Write MODEL's predictions (or --proba probabilities) for every row of DATA to OUT
    (rank 0 does the work; under mpiexec the other ranks wait for it)."""
    def write():
        out = _prediction_path(args.output, args.force)
        model = load_model(args.model)
        if args.proba and model["loss"] == "squared":
            raise CommandError(f"--proba needs a logistic or softmax model; {args.model} is "
                               "a squared-loss model")
        X, _ = io.load(args.data, **_load_kwargs(args))
        _check_features(model, X, args)
        fn = gradients.predict_proba if args.proba else gradients.predict
        values = fn(model["loss"], X, model["coef"], model["intercept"])
        classes = model["classes"]
        if classes is not None and not args.proba:
            values = classes[values.astype(np.intp)]
        _write_predictions(out, values, classes)

    _on_rank0(comm, write)
    return 0


def _prediction_path(output, force):
    """OUT as a Path: a .csv or .npy file that may be written."""
    out = Path(output)
    if out.suffix.lower() not in PREDICTION_SUFFIXES:
        raise CommandError(f"{out}: the output must end in .csv or .npy")
    if out.exists() and not force:
        raise CommandError(f"{out} exists; pass --force to overwrite it")
    return out


def _write_predictions(out, values, classes=None):
    """.npy: the array; .csv: a header line (probabilities: proba_<class name or
    code>), then one row per data row."""
    if out.suffix.lower() == ".npy":
        np.save(out, values)
        return
    names = range(values.shape[-1]) if classes is None else classes
    header = "prediction" if values.ndim == 1 else ",".join(f"proba_{c}" for c in names)
    fmt = {"i": "%d", "u": "%d", "U": "%s"}.get(values.dtype.kind, "%.17g")
    np.savetxt(out, values, fmt=fmt, delimiter=",", header=header, comments="")


# -- arguments -----------------------------------------------------------------------------

def _count(text):
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _label(text):
    """A label column: an index (negative counts from the end) or a CSV header name."""
    try:
        return int(text)
    except ValueError:
        return text


def _delimiter(text):
    """A CSV delimiter: "auto", "tab", "whitespace" (runs of blanks) or the text itself."""
    return {"tab": "\t", "\\t": "\t", "whitespace": None}.get(text, text)


def _data_options(p, unlabelled=False):
    """The options that go to cyfed.io.load: --label, --dtype, --delimiter, --missing,
    --zero-based (unlabelled: DATA may have no label column, the default)."""
    p.add_argument("--label", type=_label, default=None if unlabelled else -1, metavar="L",
                   help="label column of a CSV/.npy file: index or header name "
                   + ("(default: none, every column is a feature)" if unlabelled else
                      "(default: the last column)") + "; ignored for .npz and LIBSVM")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="dtype the data is read as (default: %(default)s)")
    p.add_argument("--delimiter", type=_delimiter, default="auto", metavar="D",
                   help="CSV field separator: a character, 'tab', 'whitespace' or 'auto' "
                   "(default: by extension, sniffed for other text files)")
    p.add_argument("--missing", choices=("drop", "mean"), default=None,
                   help="rows with missing values (empty, NA, NaN): drop them (predict: "
                   "no prediction for them), or fill in the column means (default: refuse "
                   "them)")
    p.add_argument("--zero-based", choices=("auto", "true", "false"), default="auto",
                   help="LIBSVM feature indices start at 0 (default: auto, 0-based when "
                   "any index is 0)")


def _add_partition(sub):
    p = sub.add_parser("partition", help="split one data file into per-client files",
                       description="Split DATA's rows over federated clients and write "
                       "DIR/client_<k>.<format>, which load_clients reads back.")
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    p.add_argument("--clients", type=_count, required=True, metavar="N", help="clients")
    p.add_argument("--method", choices=tuple(io.PARTITIONS), required=True,
                   help="partitioner of cyfed.data (quantity: sizes ~ Dirichlet(alpha))")
    p.add_argument("--alpha", type=float, default=0.5, metavar="A",
                   help="Dirichlet concentration of dirichlet/quantity (default: %(default)s)")
    p.add_argument("--min-size", type=int, metavar="M",
                   help="smallest client of dirichlet (default 10) / quantity (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    _data_options(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write")
    p.add_argument("--format", choices=("npz", "npy", "svm"),
                   help="client file format (default: svm for LIBSVM data, which stays "
                   "sparse, else npz)")
    p.add_argument("--force", action="store_true", help="replace DIR's earlier client files")
    p.set_defaults(run=functools.partial(_run, "partition", partition))


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="a model file's metrics on a data file",
                       description="Print the loss and accuracy (logistic/softmax) or the "
                       "MSE and R² (squared) of MODEL on DATA. Under mpiexec each rank "
                       "reads its own rows and rank 0 prints.")
    p.add_argument("model", metavar="MODEL", help="model file (.npz written by cyfed)")
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    _data_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=functools.partial(_run, "evaluate", evaluate))


def _add_predict(sub):
    p = sub.add_parser("predict", help="write a model's predictions for a data file",
                       description="Write MODEL's prediction for every row of DATA (features "
                       "only, or name the label column to skip with --label): targets "
                       "(squared), class labels, or with --proba class probabilities. Under "
                       "mpiexec rank 0 writes OUT.")
    p.add_argument("model", metavar="MODEL", help="model file (.npz written by cyfed)")
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    _data_options(p, unlabelled=True)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="predictions to write: .csv (with a header line) or .npy")
    p.add_argument("--proba", action="store_true",
                   help="class probabilities, one column per class (logistic/softmax)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(run=functools.partial(_run, "predict", predict))


def register(subparsers):
    """Add the partition, evaluate and predict subcommands to `subparsers`."""
    _add_partition(subparsers)
    _add_evaluate(subparsers)
    _add_predict(subparsers)
