"""A trainer's history_ (a list of dicts) written as JSON or CSV."""
import csv
import json
from pathlib import Path


def write_history(history, path):
    """Write a trainer's history_ (a list of dicts) as JSON (.json) or CSV (.csv)."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(history, indent=1))
    elif path.suffix == ".csv":
        columns = list(dict.fromkeys(key for record in history for key in record))
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
    else:
        raise ValueError(f"history path must end in .json or .csv, got {path.name!r}")
