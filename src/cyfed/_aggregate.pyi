import numpy as np
import numpy.typing as npt

def weighted_sum(
    updates: npt.NDArray[np.floating],
    weights: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> None: ...
