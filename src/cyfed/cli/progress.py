"""Progress bars for rounds and iterations, and rank-aware logging.

`ProgressBar` is a dependency-free one-line bar (count, bar, elapsed, ETA and
the latest metrics), redrawn at most every `min_interval` seconds.  Under MPI
enable it on one rank only, e.g. ``ProgressBar(rounds, enabled=comm.rank == 0)``.

`setup_logging` configures the "cyfed" logger; with several ranks every record
names its rank: ``[rank 1/4] WARNING cyfed.federated: ...``.
"""
import logging
import numbers
import sys
import time

_BAR_WIDTH = 20


def _clock(seconds):
    """m:ss, or h:mm:ss from an hour on."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _metric(value):
    """A compact form of one metric: 4 significant digits for reals."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{value:.4g}"
    return str(value)


def _is_tty(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressBar:
    """One-line progress bar on `stream` (default sys.stderr).

    ``update(n=1, **metrics)`` advances it and records the latest metrics
    (``loss=0.123, acc=0.91``); the line is redrawn at most every
    `min_interval` seconds, and always on completion and on `close()`.
    `enabled=None` draws only when the stream is a TTY; a disabled bar
    writes nothing.  Usable as a context manager (closes on exit).
    """

    def __init__(self, total, *, desc="", stream=None, enabled=None, min_interval=0.1):
        if not isinstance(total, numbers.Integral) or total < 0:
            raise ValueError(f"total must be an int >= 0, got {total!r}")
        self.total, self.desc, self.n, self.metrics = int(total), desc, 0, {}
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _is_tty(self.stream) if enabled is None else bool(enabled)
        self.min_interval = min_interval
        self.closed = False
        self._start = self._last_draw = time.monotonic()
        self._width = 0
        if self.enabled:
            self._draw(self._start)

    def update(self, n=1, **metrics):
        """Advance by n steps; `metrics` replace the ones shown."""
        self.n += n
        self.metrics.update(metrics)
        if not self.enabled or self.closed:
            return
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval or self.n >= self.total:
            self._draw(now)

    def close(self):
        """Draw the final state and end the line (once)."""
        if self.enabled and not self.closed:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _format(self, elapsed):
        """The bar's text after `elapsed` seconds."""
        fraction = min(self.n / self.total, 1.0) if self.total else 1.0
        filled = int(fraction * _BAR_WIDTH)
        eta = _clock(elapsed / self.n * max(self.total - self.n, 0)) if self.n else "?"
        parts = [f"{self.desc}:" if self.desc else "",
                 f"{self.n}/{self.total}",
                 "[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "]",
                 f"{_clock(elapsed)} ETA {eta}",
                 *(f"{key}={_metric(value)}" for key, value in self.metrics.items())]
        return " ".join(part for part in parts if part)

    def _draw(self, now):
        line = self._format(now - self._start)
        pad = " " * max(self._width - len(line), 0)     # wipe a longer previous line
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._width, self._last_draw = len(line), now


class _RankFilter(logging.Filter):
    """Adds `rank` and `size` to every record that reaches the handler."""

    def __init__(self, rank, size):
        super().__init__()
        self.rank, self.size = rank, size

    def filter(self, record):
        record.rank, record.size = self.rank, self.size
        return True


class _CyfedHandler(logging.StreamHandler):
    """The handler setup_logging installs (and replaces when called again)."""


def _level(level):
    """A logging level from an int or a case-insensitive name."""
    if isinstance(level, numbers.Integral) and not isinstance(level, bool):
        return int(level)
    value = logging.getLevelName(str(level).upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown logging level {level!r}; use DEBUG, INFO, WARNING, "
                         "ERROR or CRITICAL")
    return value


def setup_logging(level="WARNING", rank=0, size=1, stream=None):
    """Configure the "cyfed" logger to write to `stream` (default sys.stderr).

    With size > 1 every record starts with ``[rank R/S]``.  Calling it again
    replaces the handler it installed before; returns the logger.
    """
    value = _level(level)
    if not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size, got rank={rank!r}, size={size!r}")
    fmt = "%(levelname)s %(name)s: %(message)s"
    if size > 1:
        fmt = "[rank %(rank)d/%(size)d] " + fmt
    handler = _CyfedHandler(sys.stderr if stream is None else stream)
    handler.addFilter(_RankFilter(rank, size))
    handler.setFormatter(logging.Formatter(fmt))
    logger = logging.getLogger("cyfed")
    for old in [h for h in logger.handlers if isinstance(h, _CyfedHandler)]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(value)
    return logger
