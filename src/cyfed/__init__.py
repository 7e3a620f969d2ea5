"""cyfed: Cython-accelerated distributed and federated gradient descent.

Compiled loss/gradient kernels (`loss_grad`, `margins`), usable without MPI;
`show_config()` reports the SIMD build and threading in use.
"""
from cyfed._build_info import show_config
from cyfed.gradients import loss_grad, margins, predict, predict_proba

__version__ = "0.1.0"
__all__ = ["loss_grad", "margins", "predict", "predict_proba", "show_config", "__version__"]
