"""ProgressBar drawing, redraw rate limit and TTY detection; rank-aware logging."""
import io
import logging

import pytest

from cyfed.cli import progress
from cyfed.cli.progress import ProgressBar, setup_logging


class CountingStream(io.StringIO):
    """A stream that counts its writes and can claim to be a terminal."""

    def __init__(self, tty=False):
        super().__init__()
        self.tty, self.writes = tty, 0

    def write(self, text):
        self.writes += 1
        return super().write(text)

    def isatty(self):
        return self.tty


class FakeTime:
    """Stands in for the time module inside cyfed.cli.progress: a clock set by hand."""

    def __init__(self):
        self.now = 1024.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(progress, "time", fake)
    return fake


def last_line(stream):
    return stream.getvalue().rstrip("\n").split("\r")[-1].rstrip()


def test_bar_shows_desc_count_bar_elapsed_eta_and_metrics(clock):
    stream = CountingStream()
    bar = ProgressBar(5, desc="round", stream=stream, enabled=True)
    clock.now += 10
    bar.update(loss=0.123456789, acc=0.91, clients=10)
    assert last_line(stream) == ("round: 1/5 [####----------------] 0:10 ETA 0:40 "
                                 "loss=0.1235 acc=0.91 clients=10")
    clock.now += 3715
    bar.update(2, loss=1.5e-7)
    assert last_line(stream) == ("round: 3/5 [############--------] 1:02:05 ETA 41:23 "
                                 "loss=1.5e-07 acc=0.91 clients=10")


def test_eta_is_unknown_before_the_first_step():
    stream = CountingStream()
    ProgressBar(100, stream=stream, enabled=True)
    assert last_line(stream) == "0/100 [--------------------] 0:00 ETA ?"


def test_context_manager_closes_once_with_a_newline():
    stream = CountingStream()
    with ProgressBar(3, desc="iter", stream=stream, enabled=True) as bar:
        for _ in range(3):
            bar.update(loss=0.5)
    text = stream.getvalue()
    assert bar.closed and text.endswith("\n") and text.count("\n") == 1
    assert "iter: 3/3 [####################]" in text and "loss=0.5" in text
    bar.close()
    assert stream.getvalue() == text


def test_shorter_line_wipes_the_longer_one_before_it(clock):
    stream = CountingStream()
    bar = ProgressBar(10, stream=stream, enabled=True, min_interval=0)
    bar.update(note="a long note")
    long_line = stream.getvalue().split("\r")[-1]
    bar.update(note="x")
    assert len(stream.getvalue().split("\r")[-1]) == len(long_line)


@pytest.mark.parametrize("enabled,tty", [(False, True), (False, False), (None, False)])
def test_disabled_bar_writes_nothing(enabled, tty):
    stream = CountingStream(tty=tty)
    with ProgressBar(10, desc="round", stream=stream, enabled=enabled) as bar:
        for _ in range(10):
            bar.update(loss=1.0)
    assert stream.getvalue() == "" and stream.writes == 0
    assert bar.n == 10 and bar.metrics == {"loss": 1.0}


def test_enabled_none_draws_on_a_terminal():
    stream = CountingStream(tty=True)
    with ProgressBar(2, stream=stream) as bar:
        bar.update()
    assert last_line(stream).startswith("1/2 [##########----------]")


def test_redraws_are_rate_limited_but_completion_is_always_drawn(clock):
    stream = CountingStream()
    bar = ProgressBar(1000, stream=stream, enabled=True)      # min_interval 0.1 s
    drawn = stream.writes
    for _ in range(998):
        clock.now += 1 / 1024                                  # exact in binary
        bar.update(loss=0.1)
    assert stream.writes - drawn == 9                          # one draw per 0.1 s
    clock.now += 1 / 1024
    bar.update()
    assert stream.writes - drawn == 9
    bar.update()
    assert stream.writes - drawn == 10 and "1000/1000" in last_line(stream)


def test_many_fast_updates_cost_few_writes():
    stream = CountingStream()
    with ProgressBar(100_000, stream=stream, enabled=True, min_interval=60) as bar:
        for _ in range(99_999):
            bar.update()
        assert stream.writes == 1
        bar.update()
        assert stream.writes == 2
    assert last_line(stream).startswith("100000/100000")


def test_bar_refuses_a_negative_total():
    with pytest.raises(ValueError, match="total"):
        ProgressBar(-1)


@pytest.fixture
def cyfed_logger():
    """The "cyfed" logger, with its handlers and level restored after the test."""
    logger = logging.getLogger("cyfed")
    handlers, level = logger.handlers[:], logger.level
    yield logger
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)


def test_logging_names_the_rank_when_there_are_several(cyfed_logger):
    stream = io.StringIO()
    assert setup_logging("warning", rank=1, size=4, stream=stream) is cyfed_logger
    logging.getLogger("cyfed.federated").warning("client %d left out", 7)
    logging.getLogger("cyfed.federated").info("not shown")
    assert stream.getvalue() == "[rank 1/4] WARNING cyfed.federated: client 7 left out\n"


def test_logging_has_no_rank_on_one_process(cyfed_logger):
    stream = io.StringIO()
    setup_logging("Info", stream=stream)
    logging.getLogger("cyfed.distributed").info("iteration %d", 3)
    assert stream.getvalue() == "INFO cyfed.distributed: iteration 3\n"
    assert cyfed_logger.level == logging.INFO


def test_setup_logging_twice_replaces_its_handler(cyfed_logger):
    other = logging.StreamHandler(io.StringIO())
    cyfed_logger.addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("DEBUG", rank=0, size=2, stream=first)
    setup_logging(logging.ERROR, rank=0, size=2, stream=second)
    logging.getLogger("cyfed").error("once")
    assert first.getvalue() == "" and second.getvalue() == "[rank 0/2] ERROR cyfed: once\n"
    assert len(cyfed_logger.handlers) == 2 and other in cyfed_logger.handlers


@pytest.mark.parametrize("kwargs,match", [
    ({"level": "verbose"}, "unknown logging level 'verbose'"),
    ({"level": ""}, "unknown logging level"),
    ({"rank": 4, "size": 4}, "rank < size"),
    ({"rank": 0, "size": 0}, "rank < size"),
])
def test_setup_logging_refuses_bad_arguments(cyfed_logger, kwargs, match):
    before = cyfed_logger.handlers[:]
    with pytest.raises(ValueError, match=match):
        setup_logging(**kwargs)
    assert cyfed_logger.handlers == before
