"""Model files: a trained linear model in one ``.npz`` file.

Arrays ``coef`` ((d,) for "squared"/"logistic", (d, k) with k >= 2 for
"softmax") and ``intercept`` (a scalar, or (k,) for "softmax"), and
``__meta__``: JSON of ``{"format": 1, "loss": ..., "cyfed_version": ...,
**metadata}``, plus ``"classes"`` (the class names, a list of strings or
numbers, class k predicted as code k) for a classifier trained on named classes.
Written atomically by `cyfed.checkpoint.save` (the path holds
the old file or the complete new one, never a partial one).
"""
import zipfile
from pathlib import Path

import numpy as np

import cyfed
from cyfed import _validation, checkpoint
from cyfed.gradients import LOSSES

RESERVED = ("format", "loss", "cyfed_version", "classes")


def save_model(path, *, loss, coef, intercept, metadata, classes=None, force=False):
    """Write a model file; an existing `path` is refused unless `force`.

    `metadata` is a JSON-able dict (config, metrics, ...) whose keys may not
    be "format", "loss", "cyfed_version" or "classes".  `classes`: the class
    names of a logistic (2) or softmax (one per column of coef) model, as
    `cyfed.io.load` gives them (``data.classes``); None: the labels are the codes.
    """
    path = Path(path)
    coef, intercept = _checked(path, loss, _validation.real_array(coef, "coef"),
                               _validation.real_array(intercept, "intercept"))
    clash = sorted(metadata.keys() & RESERVED)
    if clash:
        raise ValueError(f"metadata may not use the reserved key(s) {', '.join(clash)}")
    named = {} if classes is None else {"classes": _class_list(path, loss, coef, classes)}
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    checkpoint.save(path, {"coef": coef, "intercept": intercept},
                    {"loss": loss, "cyfed_version": cyfed.__version__, **metadata, **named})


def load_model(path):
    """dict(loss, coef, intercept, classes, metadata) of a model file written by `save_model`.

    intercept is a float, or a (k,) array for softmax; classes is the array of
    class names, or None; metadata is the saved metadata plus "cyfed_version".
    Raises ValueError for any other file.
    """
    path = Path(path)
    arrays, meta = _read(path)
    if (set(arrays) != {"coef", "intercept"} or meta.get("loss") not in LOSSES
            or "cyfed_version" not in meta):
        raise _not_a_model(path)
    coef, intercept = _checked(path, meta["loss"], arrays["coef"], arrays["intercept"])
    classes = meta.get("classes")
    if classes is not None:
        classes = np.asarray(_class_list(path, meta["loss"], coef, classes))
    return {"loss": meta["loss"], "coef": coef,
            "intercept": float(intercept) if intercept.ndim == 0 else intercept,
            "classes": classes,
            "metadata": {k: v for k, v in meta.items()
                         if k not in ("format", "loss", "classes")}}


def _read(path):
    """(arrays, meta) of an npz file in checkpoint layout; ValueError for anything else."""
    try:
        return checkpoint.load(path)
    except (ValueError, EOFError, zipfile.BadZipFile, KeyError):
        raise _not_a_model(path) from None


def _not_a_model(path):
    """The ValueError for a file that is not a model file."""
    return ValueError(f"{path} is not a cyfed model file (written by save_model)")


def _checked(path, loss, coef, intercept):
    """(coef, intercept) if they are float arrays shaped as `loss` needs, else ValueError."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    for name, arr in (("coef", coef), ("intercept", intercept)):
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise ValueError(f"{path}: {name} must be a float array")
    softmax = loss == "softmax"
    if coef.ndim != 1 + softmax or coef.shape[0] < 1 or (softmax and coef.shape[1] < 2):
        want = "(d, k) with k >= 2" if softmax else "(d,)"
        raise ValueError(f"{path}: coef of a {loss} model must have shape {want}, "
                         f"got {coef.shape}")
    if intercept.shape != coef.shape[1:]:
        raise ValueError(f"{path}: intercept must have shape {coef.shape[1:]} for coef of "
                         f"shape {coef.shape}, got {intercept.shape}")
    return coef, intercept


def _class_list(path, loss, coef, classes):
    """`classes` as a JSON-able list of distinct strings or numbers, as many as the
    classes of a `loss` model with `coef`; ValueError otherwise."""
    values = np.asarray(classes).tolist()
    want = {"squared": 0, "logistic": 2, "softmax": coef.shape[-1]}[loss]
    if not isinstance(values, list) or len(values) != want or not want:
        raise ValueError(f"{path}: a {loss} model with coef of shape {coef.shape} has "
                         f"{want or 'no'} classes, got classes={classes!r}")
    if (len(set(values)) != len(values) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"{path}: classes must be distinct strings or numbers, "
                         f"got {classes!r}")
    return values
