from mmap import mmap

import numpy as np
import numpy.typing as npt

Buffer = bytes | bytearray | memoryview | mmap

STATUS_NAMES: dict[int, str]

class ParseError(ValueError):
    code: str
    pos: int
    detail: int
    def __init__(self, code: str, pos: int, detail: int) -> None: ...

def max_threads() -> int: ...
def line_range(text: Buffer, start: int, stop: int) -> tuple[int, int]: ...
def count_newlines(text: Buffer, stop: int) -> int: ...
def scan(
    text: Buffer, begin: int, end: int, least: int, limit: int, n_threads: int
) -> tuple[int, int, int]: ...
def parse(
    text: Buffer,
    begin: int,
    end: int,
    dtype: npt.DTypeLike,
    least: int,
    limit: int,
    query_id: bool,
    n_threads: int,
) -> tuple[
    npt.NDArray[np.int32 | np.int64],
    npt.NDArray[np.int32 | np.int64],
    npt.NDArray[np.floating],
    npt.NDArray[np.float64],
    npt.NDArray[np.int64] | None,
    int,
    int,
]: ...
