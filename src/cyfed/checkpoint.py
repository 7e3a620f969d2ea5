"""Checkpoints: atomic files of a training run's state, and the hashes that guard a resume.

A checkpoint is one ``.npz`` file: arrays under their names (nested dicts
flattened as ``a/b/c``) plus ``__meta__``, a JSON string (format version, the
config and data hashes, anything JSON-able such as the history).  It is
written to a temporary file in the same directory, flushed and fsync'ed, then
renamed over the target (and the directory fsync'ed): at every moment the
path holds either the previous complete checkpoint or the new complete one.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from scipy import sparse

FORMAT = 1


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if "/" in key:
            raise ValueError(f"checkpoint keys may not contain '/': {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat[f"{name}/"] = np.zeros(0)          # marks an (possibly empty) dict
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def _unflatten(flat):
    tree = {}
    for name in sorted(flat, key=len):
        parts = name.rstrip("/").split("/")
        node = tree
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = {} if name.endswith("/") else flat[name]
    return tree


def save(path, arrays, meta):
    """Write {name: array or nested dict} and the JSON-able `meta` to `path`, atomically."""
    path = Path(path)
    payload = _flatten(arrays)
    payload["__meta__"] = np.array(json.dumps({"format": FORMAT, **meta}))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path):
    """(arrays as nested dicts, meta) of a checkpoint written by `save`."""
    with np.load(path, allow_pickle=False) as data:
        flat = {name: data[name] for name in data.files if name != "__meta__"}
        if "__meta__" not in data.files:
            raise ValueError(f"{path} is not a cyfed checkpoint (no metadata)")
        meta = json.loads(str(data["__meta__"]))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')} is not {FORMAT}")
    return _unflatten(flat), meta


def digest(*parts):
    """A short hex digest of arrays and JSON-able values (config and data fingerprints)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if sparse.issparse(part):           # CSR: its shape and arrays
            part = sparse.csr_matrix(part)
            h.update(f"csr{part.shape}".encode())
            for arr in (part.indptr, part.indices, part.data):
                h.update(digest(arr).encode())
        elif isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(memoryview(arr).cast("B"))
        else:
            h.update(json.dumps(part, sort_keys=True, default=repr).encode())
    return h.hexdigest()
