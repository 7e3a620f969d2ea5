"""Plots of training histories (needs matplotlib: ``pip install 'cyfed[plot]'``).

A history is a list of dicts, one per round or iteration, as in
`FederatedTrainer.history_` (x axis "round") and `DistributedGD.history_`
(x axis "iter"), or the path of a JSON/CSV file written by
`cyfed.federated.write_history`.
"""
import csv
import json
import math
import numbers
import os
from pathlib import Path

_X_KEYS = ("round", "iter")
_NOT_METRICS = {"round", "iter", "seconds", "clients", "malicious"}   # and bytes_*
_MISSING = "cyfed plot needs matplotlib: pip install 'cyfed[plot]'"


def _number(text):
    """A CSV cell as a float where it reads as one, else the text."""
    try:
        return float(text)
    except ValueError:
        return text


def _records(history, source):
    """Check that `history` is a non-empty list of dicts; return it."""
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise ValueError(f"{source}: a history is a list of records (dicts), "
                         f"got {type(history).__name__}")
    if not history:
        raise ValueError(f"{source}: the history has no records")
    return history


def load_history(path):
    """Read a history written by `write_history` (.json, .jsonl or .csv) as a list of
    dicts.

    CSV cells become floats where they can; empty cells (a key that record
    lacked) are left out.  A JSON Lines file of a run still going (or killed) may
    end in a partial line, which is skipped.  Raises OSError if unreadable,
    ValueError if invalid.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv"):
        raise ValueError(f"{path}: a history file ends in .json, .jsonl or .csv")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    if suffix == ".jsonl":
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines.pop()                             # a record still being written
        try:
            history = [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON Lines ({exc})") from None
    elif suffix == ".json":
        try:
            history = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    else:
        history = [{key: _number(value) for key, value in row.items() if value not in ("", None)}
                   for row in csv.DictReader(text.splitlines())]
    return _records(history, path)


def _runs(history):
    """[(label or None, records)] from a history, a path or a {label: history} dict."""
    if isinstance(history, dict):
        if not history:
            raise ValueError("no histories given: the dict is empty")
        return [(str(label), _as_records(h)) for label, h in history.items()]
    return [(None, _as_records(history))]


def _as_records(history):
    if isinstance(history, (str, os.PathLike)):
        return load_history(history)
    return _records(history, "history")


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _metric_names(runs, metrics):
    """The metrics to draw: those asked for, else every numeric non-bookkeeping key."""
    numeric = list(dict.fromkeys(key for _, records in runs for record in records
                                 for key, value in record.items() if _is_number(value)))
    if metrics is None:
        names = [key for key in numeric
                 if key not in _NOT_METRICS and not key.startswith("bytes")]
        if not names:
            raise ValueError("the history has no numeric metrics to plot")
        return names
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError("metrics is empty: name at least one metric, or pass None")
    unknown = [name for name in names if name not in numeric]
    if unknown:
        raise ValueError(f"no numeric metric(s) {', '.join(unknown)} in the history; "
                         f"available: {', '.join(numeric)}")
    return names


def _x_key(records):
    """The key that numbers the records ("round" or "iter"), or None (use positions)."""
    return next((key for key in _X_KEYS if key in records[0]), None)


def _series(records, name):
    """(x, y) over the records that hold a numeric `name`."""
    key = _x_key(records)
    points = [(i if key is None else record.get(key), record.get(name))
              for i, record in enumerate(records)]
    points = [(x, y) for x, y in points if _is_number(x) and _is_number(y)]
    return [x for x, _ in points], [y for _, y in points]


def _draw(ax, runs, name):
    """One panel: metric `name` of every run (run i keeps colour Ci in all panels)."""
    for i, (label, records) in enumerate(runs):
        xs, ys = _series(records, name)
        if xs:
            ax.plot(xs, ys, color=f"C{i}", label=label, marker="." if len(xs) <= 50 else None)
    ax.set_title(name)
    ax.set_xlabel(" / ".join(dict.fromkeys(_x_key(r) or "record" for _, r in runs)))
    ax.grid(alpha=0.3)
    if runs[0][0] is not None:
        ax.legend()


def _matplotlib():
    """(Figure, FigureCanvasAgg), or ImportError saying how to install matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return Figure, FigureCanvasAgg


def plot_history(history, path, *, metrics=None, title=None):
    """Draw one panel per metric against round/iteration and save the figure to `path`.

    history: a list of dicts, a .json/.csv path from `write_history`, or a dict
    {label: history} to overlay several runs.  metrics: names to draw (default:
    every numeric key except round, iter, seconds, clients, malicious, bytes_*).
    The format follows path's suffix (PNG by default), drawn with Agg.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    runs = _runs(history)
    names = _metric_names(runs, metrics)
    ncols = 1 if len(names) == 1 else 2
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(5.5 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        _draw(ax, runs, name)
    for ax in axes[len(names):]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
