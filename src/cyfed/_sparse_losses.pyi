import enum

import numpy as np
import numpy.typing as npt

# X is passed as its CSR arrays: data (float32/float64), indices and indptr (both
# int32 or both int64), and n_features.
_Data = npt.NDArray[np.floating]
_Index = npt.NDArray[np.int32] | npt.NDArray[np.int64]

class SparseStatus(enum.IntEnum):
    BAD_COLUMN = 4

def loss_grad_sums(
    kind: int,
    data: _Data,
    indices: _Index,
    indptr: _Index,
    n_features: int,
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
    data: _Data,
    indices: _Index,
    indptr: _Index,
    n_features: int,
    coef: npt.NDArray[np.floating],
    intercept: npt.NDArray[np.floating],
    out: npt.NDArray[np.floating],
    n_threads: int,
) -> tuple[int, int]: ...
def row_sq_norms(data: _Data, indptr: _Index, out: npt.NDArray[np.float64]) -> None: ...
def curvature(
    kind: int,
    data: _Data,
    indices: _Index,
    indptr: _Index,
    n_features: int,
    y: npt.NDArray[np.floating],
    coef: npt.NDArray[np.floating],
    intercept: npt.NDArray[np.floating],
    sample_weight: npt.NDArray[np.floating],
    rows: npt.NDArray[np.intp],
    out: npt.NDArray[np.float64],
    n_threads: int,
) -> tuple[int, int]: ...
def hess_vec_sums(
    kind: int,
    data: _Data,
    indices: _Index,
    indptr: _Index,
    n_features: int,
    sample_weight: npt.NDArray[np.floating],
    rows: npt.NDArray[np.intp],
    curv: npt.NDArray[np.float64],
    v: npt.NDArray[np.floating],
    v_intercept: npt.NDArray[np.floating],
    out: npt.NDArray[np.float64],
    n_threads: int,
) -> tuple[int, int]: ...
def hessian_sums(
    kind: int,
    data: _Data,
    indices: _Index,
    indptr: _Index,
    n_features: int,
    sample_weight: npt.NDArray[np.floating],
    rows: npt.NDArray[np.intp],
    curv: npt.NDArray[np.float64],
    k: int,
    fit_intercept: bool,
    out: npt.NDArray[np.float64],
    n_threads: int,
) -> tuple[int, int]: ...
def hessian_diag_sums(
    kind: int,
    data: _Data,
    indices: _Index,
    indptr: _Index,
    n_features: int,
    sample_weight: npt.NDArray[np.floating],
    rows: npt.NDArray[np.intp],
    curv: npt.NDArray[np.float64],
    k: int,
    fit_intercept: bool,
    out: npt.NDArray[np.float64],
    n_threads: int,
) -> tuple[int, int]: ...
