import numpy as np
import numpy.typing as npt

def weighted_sum(
    updates: npt.NDArray[np.floating],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> None: ...
def finite_rows(updates: npt.NDArray[np.floating], out: npt.NDArray[np.uint8]) -> None: ...
