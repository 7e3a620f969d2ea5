"""A trainer's history_ (a list of dicts) written as JSON, JSON Lines or CSV, whole
(`write_history`) or as it grows (`HistoryLog`)."""
import csv
import itertools
import json
from pathlib import Path


def write_history(history, path):
    """Write a trainer's history_ (a list of dicts) as JSON (.json: a list, a record
    a line), JSON Lines (.jsonl: a record a line) or CSV (.csv: a column per key)."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json_array(map(json.dumps, history)))
    elif path.suffix == ".jsonl":
        with HistoryLog(path) as log:
            log.write(history)
    elif path.suffix == ".csv":
        columns = list(dict.fromkeys(itertools.chain.from_iterable(history)))
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows([[record.get(key, "") for key in columns] for record in history])
    else:
        raise ValueError(f"history path must end in .json or .csv (or .jsonl: JSON Lines), "
                         f"got {path.name!r}")


def json_array(lines):
    """A JSON list, a record a line, of JSON texts (e.g. a JSON Lines file's lines)."""
    return "[\n" + ",\n".join(lines) + "\n]\n"


class HistoryLog:
    """A JSON Lines history written as the run goes: ``write(history)`` appends the
    records not written yet, a line each, and flushes them to the file, so every
    record is written once and a stopped run keeps what was written.  Call it every
    so often (records are formatted faster in batches).  The first write creates (or
    truncates) the file.  A context manager (closes)."""

    def __init__(self, path):
        self.path, self.written, self._file = Path(path), 0, None

    def write(self, history):
        """Append history[written:] and flush."""
        if self._file is None:
            self._file = self.path.open("w")
        self._file.write("".join(json.dumps(record) + "\n" for record in history[self.written:]))
        self._file.flush()
        self.written = len(history)

    def close(self):
        if self._file is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
