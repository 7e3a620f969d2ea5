import numpy as np
import numpy.typing as npt

MAX_COLUMNS: int

def add_gaussian_rows(
    rows: npt.NDArray[np.float64],
    client_ids: npt.NDArray[np.int64],
    key0: int,
    key1: int,
    scale: npt.NDArray[np.float64],
    n_threads: int,
) -> None: ...
def philox4x32_10(counter: npt.ArrayLike, key: int) -> npt.NDArray[np.uint32]: ...
