"""cyfed: Cython-accelerated distributed and federated gradient descent.

Trainers
    distributed.DistributedGD     data-parallel GD, L-BFGS and Newton over MPI ranks
    federated.FederatedTrainer    federated rounds; strategies.FedAvg, FedProx, FedAdam, ...
    asynchronous.AsyncTrainer     asynchronous federated training (FedAsync, FedBuff)

Estimators (scikit-learn's API; need scikit-learn)
    linear_model.LinearRegression, linear_model.LogisticRegression
    model_selection.GridSearchCV  cross-validated grid search over the trainers

Data and models
    io.load, io.load_clients      data files (CSV, .npy, .npz, LIBSVM), federated clients
    data                          sharding, partitioners, synthetic data
    model_file                    trained models in .npz files (``cyfed train`` writes them)

Building blocks
    privacy (DPSGD, ClientDP), secagg, compress, attacks, aggregate, accountant,
    schedules, checkpoint, comm, models, hessian, and the compiled loss/gradient
    kernels here: `loss_grad`, `margins`, `predict`, `predict_proba` (usable
    without MPI); `show_config()` reports the SIMD build and threading in use.

Every submodule is an attribute, imported on first use (``cyfed.distributed``).
The command line is ``cyfed`` (``cyfed --help``; ``python -m cyfed``).
"""
import importlib

from cyfed._build_info import show_config
from cyfed.gradients import loss_grad, margins, predict, predict_proba

__version__ = "0.1.0"
__all__ = ["loss_grad", "margins", "predict", "predict_proba", "show_config", "__version__"]

_SUBMODULES = frozenset({
    "accountant", "aggregate", "asynchronous", "attacks", "checkpoint", "cli", "comm",
    "compress", "data", "distributed", "federated", "gradients", "hessian", "io",
    "linear_model", "model_file", "model_selection", "models", "privacy", "private_rounds",
    "schedules", "secagg", "standardize", "strategies", "training"})


def __getattr__(name):
    """A public submodule, imported on first access (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
