import numpy as np
import numpy.typing as npt

def weighted_sum(
    updates: npt.NDArray[np.floating],
    weights: npt.NDArray[np.float64],
    divisor: float,
    out: npt.NDArray[np.float64],
    n_threads: int,
) -> int: ...
def sq_dists_to(
    updates: npt.NDArray[np.floating],
    center: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
    n_threads: int,
) -> None: ...
def pair_sq_dists(
    updates: npt.NDArray[np.floating], out: npt.NDArray[np.float64], n_threads: int
) -> None: ...
def network_mean(
    updates: npt.NDArray[np.floating],
    groups: int,
    group_size: int,
    network: npt.NDArray[np.intc],
    lo: int,
    hi: int,
    out: npt.NDArray[np.floating],
    n_threads: int,
) -> int: ...
def finite_rows(updates: npt.NDArray[np.floating], out: npt.NDArray[np.uint8]) -> None: ...
def clip_scales(
    messages: npt.NDArray[np.float64],
    reference: npt.NDArray[np.float64],
    clip_norm: float,
    scales: npt.NDArray[np.float64],
    n_threads: int,
) -> None: ...
