import enum

import numpy as np
import numpy.typing as npt

class LossKind(enum.IntEnum):
    SQUARED = 0
    LOGISTIC = 1
    SOFTMAX = 2

class Status(enum.IntEnum):
    OK = 0
    BAD_LABEL = 1
    NEGATIVE_WEIGHT = 2
    BAD_ROW = 3

BLAS_MAX_X_BYTES: int
BLAS_SOFTMAX_ITEMSIZES: tuple[int, ...]

def have_openmp() -> bool: ...
def uses_blas(
    kind: int,
    n: int,
    d: int,
    k: int,
    itemsize: int,
    all_rows: bool = ...,
    clipping: bool = ...,
) -> bool: ...
def max_threads() -> int: ...
def loss_grad_sums(
    kind: int,
    X: npt.NDArray[np.floating],
    y: npt.NDArray[np.floating],
    coef: npt.NDArray[np.floating],
    intercept: npt.NDArray[np.floating],
    sample_weight: npt.NDArray[np.floating],
    rows: npt.NDArray[np.intp],
    grad_out: npt.NDArray[np.float64],
    n_threads: int,
    clip_norm: float,
    row_sq_norms: npt.NDArray[np.float64],
) -> tuple[float, float, int, int, int]: ...
def margins(
    X: npt.NDArray[np.floating],
    coef: npt.NDArray[np.floating],
    intercept: npt.NDArray[np.floating],
    out: npt.NDArray[np.floating],
    n_threads: int,
) -> None: ...
