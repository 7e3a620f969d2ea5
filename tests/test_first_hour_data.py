"""Issue 17, "the data people have": the file rows of the new user's table replayed as
the user did them -- `cyfed train` on the file, then `cyfed evaluate` / `cyfed predict`,
each a subprocess -- with the good outcome asserted: exit 0 and a model within 2
points of scikit-learn's LogisticRegression (C=1 on standardised features) on a
held-out split, or exit 2 with a message that says what to do.

    yes/no labels         class names kept in the model, predictions in yes/no
    empty cells           refused naming the count and file:line:column; data.missing
    .tsv, .csv.gz         read by extension, decompressed
    0-based LIBSVM        as scikit-learn's dump_svmlight_file writes it
"""
import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cyfed
from cyfed.model_file import load_model, save_model

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import dump_svmlight_file, load_breast_cancer  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

NAMES = np.array(["no", "yes"])


def cyfed_cli(*args, cwd=None):
    """`python -m cyfed ARGS`, importing the cyfed under test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(cyfed.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cyfed", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def split():
    """breast_cancer (raw, unscaled) as a 75/25 train/test split."""
    data = load_breast_cancer()
    order = np.random.default_rng(0).permutation(data.target.size)
    cut = data.target.size * 3 // 4
    return {"names": list(data.feature_names),
            "train": (data.data[order[:cut]], data.target[order[:cut]]),
            "test": (data.data[order[cut:]], data.target[order[cut:]])}


def write_table(path, names, X, labels, delimiter=","):
    """A header of `names` + "diagnosis", then rows; NaN features as empty cells."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as f:
        out = csv.writer(f, delimiter=delimiter)
        out.writerow([*names, "diagnosis"])
        for x, label in zip(X, labels):
            out.writerow(["" if np.isnan(v) else repr(float(v)) for v in x] + [label])
    return path


def sklearn_accuracy(split, X_train=None, impute=False):
    """Held-out accuracy of scikit-learn's LogisticRegression, C=1 on standardised X."""
    X_train = split["train"][0] if X_train is None else X_train
    steps = [SimpleImputer()] if impute else []
    model = make_pipeline(*steps, StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(X_train, split["train"][1])
    return model.score(*split["test"])


def train(data, tmp_path, *options):
    """`cyfed train` of a logistic model on DATA with label column "diagnosis" (the
    problem scikit-learn solves: standardised, l2 = 1/n as C=1)."""
    n = len(split_rows(data))
    return cyfed_cli("train", "--mode", "distributed", "--loss", "logistic", "--data", data,
                     "--label", "diagnosis", "-o", tmp_path / "model.npz", "--quiet",
                     "--set", 'trainer.solver="auto"', "--set", "trainer.standardize=true",
                     "--set", f"trainer.l2={1.0 / n!r}", *options)


def split_rows(data):
    """The data rows of a text file (one per line after the header; LIBSVM: every line)."""
    opener = gzip.open if str(data).endswith(".gz") else open
    with opener(data, "rt") as f:
        lines = [line for line in f if line.strip()]
    return lines if str(data).endswith(".libsvm") else lines[1:]


def evaluate(tmp_path, data, *options):
    """The metrics `cyfed evaluate --json` prints for the trained model on DATA."""
    proc = cyfed_cli("evaluate", tmp_path / "model.npz", data, "--label", "diagnosis",
                     "--json", *options)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_close_to_sklearn(accuracy, split, **kwargs):
    reference = sklearn_accuracy(split, **kwargs)
    assert abs(accuracy - reference) <= 0.02, (accuracy, reference)


# -- yes/no labels -----------------------------------------------------------------------------

def test_yes_no_labels_train_evaluate_and_predict_in_yes_no(split, tmp_path):
    train_csv = write_table(tmp_path / "train.csv", split["names"], split["train"][0],
                            NAMES[split["train"][1]])
    test_csv = write_table(tmp_path / "test.csv", split["names"], split["test"][0],
                           NAMES[split["test"][1]])
    proc = train(train_csv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = evaluate(tmp_path, test_csv)
    assert_close_to_sklearn(metrics["accuracy"], split)

    proc = cyfed_cli("predict", tmp_path / "model.npz", test_csv, "--label", "diagnosis",
                     "-o", tmp_path / "pred.csv")
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "pred.csv").read_text().split()
    assert lines[0] == "prediction" and set(lines[1:]) <= {"yes", "no"}
    hits = np.mean(np.array(lines[1:]) == NAMES[split["test"][1]])
    assert hits == pytest.approx(metrics["accuracy"])

    proc = cyfed_cli("predict", tmp_path / "model.npz", test_csv, "--label", "diagnosis",
                     "--proba", "-o", tmp_path / "proba.csv")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "proba.csv").read_text().split("\n", 1)[0] == "proba_no,proba_yes"


def test_model_file_keeps_the_class_names(tmp_path):
    save_model(tmp_path / "m.npz", loss="logistic", coef=np.ones(2), intercept=0.0,
               metadata={"mode": "distributed"}, classes=NAMES)
    model = load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(model["classes"], NAMES)
    assert model["metadata"] == {"mode": "distributed", "cyfed_version": cyfed.__version__}
    save_model(tmp_path / "n.npz", loss="logistic", coef=np.ones(2), intercept=0.0, metadata={})
    assert load_model(tmp_path / "n.npz")["classes"] is None
    for loss, coef, classes, match in [
            ("logistic", np.ones(2), ["a", "b", "c"], "has 2 classes"),
            ("softmax", np.ones((2, 3)), ["a", "b"], "has 3 classes"),
            ("squared", np.ones(2), ["a", "b"], "has no classes"),
            ("logistic", np.ones(2), ["a", "a"], "distinct strings or numbers")]:
        with pytest.raises(ValueError, match=match):
            save_model(tmp_path / "x.npz", loss=loss, coef=coef, metadata={},
                       intercept=np.zeros(coef.shape[1:]), classes=classes)
    with pytest.raises(ValueError, match="reserved key"):
        save_model(tmp_path / "x.npz", loss="logistic", coef=np.ones(2), intercept=0.0,
                   metadata={"classes": ["a", "b"]})


def test_evaluate_names_a_label_the_model_does_not_know(split, tmp_path):
    X, y = split["train"]
    assert train(write_table(tmp_path / "t.csv", split["names"], X, NAMES[y]),
                 tmp_path).returncode == 0
    labels = NAMES[y].astype(object)
    labels[5] = "maybe"
    proc = cyfed_cli("evaluate", tmp_path / "model.npz",
                     write_table(tmp_path / "odd.csv", split["names"], X, labels),
                     "--label", "diagnosis")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"cyfed evaluate: {tmp_path / 'odd.csv'}: label 'maybe' is "
                                   f"not a class of {tmp_path / 'model.npz'} (classes: no, yes)")


def test_evaluate_text_labels_need_a_model_with_classes(tmp_path):
    save_model(tmp_path / "m.npz", loss="logistic", coef=np.ones(1), intercept=0.0, metadata={})
    data = tmp_path / "d.csv"
    data.write_text("x,diagnosis\n1,yes\n2,no\n")
    proc = cyfed_cli("evaluate", tmp_path / "m.npz", data, "--label", "diagnosis")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"cyfed evaluate: {data} labels rows with class names (no, yes), but "
        f"{tmp_path / 'm.npz'} has none (it was trained on numeric labels)")


# -- empty cells ---------------------------------------------------------------------------------

def with_holes(split, fraction=0.03, seed=1):
    """The training features with `fraction` of the cells (none in row 0) missing."""
    X = split["train"][0].copy()
    holes = np.random.default_rng(seed).random(X.shape) < fraction
    holes[0] = False
    X[holes] = np.nan
    return X


def test_empty_cells_are_refused_with_the_count_and_where(split, tmp_path):
    X = with_holes(split)
    data = write_table(tmp_path / "holes.csv", split["names"], X, split["train"][1])
    proc = train(data, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    i, j = np.argwhere(np.isnan(X))[0]
    line = i + 2                                       # the header is line 1
    column = len(",".join(repr(float(v)) for v in X[i, :j])) + 2 if j else 1
    count, rows = int(np.isnan(X).sum()), int(np.isnan(X).any(axis=1).sum())
    message = proc.stderr.strip()
    assert message.startswith(f"cyfed train: {data}:{line}:{column}: missing value (the first "
                              f"of {count} missing values in {rows} rows)"), message
    assert 'missing="drop"' in message and 'missing="mean"' in message
    assert not (tmp_path / "model.npz").exists()


@pytest.mark.parametrize("missing", ["mean", "drop"])
def test_empty_cells_with_data_missing(split, tmp_path, missing):
    X = with_holes(split)
    data = write_table(tmp_path / "holes.csv", split["names"], X, split["train"][1])
    proc = train(data, tmp_path, "--set", f'data.missing="{missing}"')
    assert proc.returncode == 0, proc.stderr
    test_csv = write_table(tmp_path / "test.csv", split["names"], *split["test"])
    accuracy = evaluate(tmp_path, test_csv)["accuracy"]
    if missing == "mean":
        assert_close_to_sklearn(accuracy, split, X_train=X, impute=True)
    else:
        assert accuracy > 0.9


def test_evaluate_with_empty_cells_takes_the_missing_option(split, tmp_path):
    assert train(write_table(tmp_path / "t.csv", split["names"], *split["train"]),
                 tmp_path).returncode == 0
    X_test = split["test"][0].copy()
    X_test[3, 4] = np.nan
    data = write_table(tmp_path / "test.csv", split["names"], X_test, split["test"][1])
    proc = cyfed_cli("evaluate", tmp_path / "model.npz", data, "--label", "diagnosis")
    assert proc.returncode == 2 and "--missing drop" in proc.stderr and "--missing mean" in \
        proc.stderr and f"{data}:5:" in proc.stderr, proc.stderr
    assert evaluate(tmp_path, data, "--missing", "drop")["rows"] == X_test.shape[0] - 1
    assert evaluate(tmp_path, data, "--missing", "mean")["rows"] == X_test.shape[0]


# -- .tsv, .csv.gz and 0-based LIBSVM --------------------------------------------------------

@pytest.mark.parametrize("name", ["data.tsv", "data.csv.gz"])
def test_tsv_and_gzipped_csv(split, tmp_path, name):
    delimiter = "\t" if name.endswith(".tsv") else ","
    data = write_table(tmp_path / name, split["names"], *split["train"], delimiter=delimiter)
    proc = train(data, tmp_path)
    assert proc.returncode == 0, proc.stderr
    test = write_table(tmp_path / f"test{name[4:]}", split["names"], *split["test"],
                       delimiter=delimiter)
    assert_close_to_sklearn(evaluate(tmp_path, test)["accuracy"], split)


def test_zero_based_libsvm_from_dump_svmlight_file(split, tmp_path):
    dump_svmlight_file(*split["train"], str(tmp_path / "train.libsvm"))     # 0-based
    dump_svmlight_file(*split["test"], str(tmp_path / "test.libsvm"))
    proc = train(tmp_path / "train.libsvm", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_close_to_sklearn(evaluate(tmp_path, tmp_path / "test.libsvm")["accuracy"], split)
