import numpy as np
import numpy.typing as npt

def recurrence_table(steps: int, lr: float, l2: float, mu: float,
                     momentum: float) -> npt.NDArray[np.float64]: ...
def train_clients(
    kind: int,
    data: npt.NDArray[np.floating],
    indices: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    indptr: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    n_features: int,
    y: npt.NDArray[np.floating],
    offsets: npt.NDArray[np.intp],
    which: npt.NDArray[np.intp],
    client_ids: npt.NDArray[np.int64],
    epochs: npt.NDArray[np.intp],
    global_params: npt.NDArray[np.floating],
    corrections: npt.NDArray[np.floating],
    out: npt.NDArray[np.float64],
    losses: npt.NDArray[np.float64],
    steps: npt.NDArray[np.intp],
    n_classes: int,
    fit_intercept: bool,
    batch_size: int,
    max_steps: int,
    lr: float,
    l2: float,
    mu: float,
    momentum: float,
    seed: int,
    rnd: int,
    n_threads: int,
) -> None: ...
