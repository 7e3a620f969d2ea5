import numpy as np
import numpy.typing as npt

def curvature(
    kind: int,
    X: npt.NDArray[np.floating],
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
    X: npt.NDArray[np.floating],
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
    X: npt.NDArray[np.floating],
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
    X: npt.NDArray[np.floating],
    sample_weight: npt.NDArray[np.floating],
    rows: npt.NDArray[np.intp],
    curv: npt.NDArray[np.float64],
    k: int,
    fit_intercept: bool,
    out: npt.NDArray[np.float64],
    n_threads: int,
) -> tuple[int, int]: ...
