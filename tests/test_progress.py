"""Progress lines: items done, rate and ETA, at the first update, every interval and at the end."""

import logging

import pytest

from caslie.progress import Progress, clock_text


class Clock:
    """A settable clock, so that rates and intervals are exact."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05"), (90000, "25:00:00")]
)
def test_clock_text(seconds, text):
    assert clock_text(seconds) == text


def test_lines_come_first_then_every_interval_with_rate_and_eta(caplog):
    clock = Clock()
    bar = Progress(100, "voter (score)", "caption", interval_s=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="caslie.progress"):
        clock.now += 2
        bar.update(10)  # the first update: 5 captions/s, 90 left
        clock.now += 4
        bar.update(20)  # inside the interval: no line
        clock.now += 6
        bar.update(30)  # 10 s after the first line: 60 in 12 s
        clock.now += 8
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "voter (score): 10/100 captions (10.0%), 5.0 captions/s, ETA 0:00:18",
        "voter (score): 60/100 captions (60.0%), 5.0 captions/s, ETA 0:00:08",
        "voter (score): 60/100 captions in 0:00:20, 3.0 captions/s",
    ]
    bar.close()
    assert len(caplog.records) == 3  # the last line once


def test_eta_is_unknown_before_any_item_and_a_disabled_bar_stays_silent(caplog):
    clock = Clock()
    bar = Progress(5, "x", "image", clock=clock)
    assert bar.eta_s() is None and bar.line().endswith("ETA ?")
    quiet = Progress(5, "y", "image", enabled=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="caslie.progress"):
        clock.now += 1
        quiet.update(5)
        quiet.close()
    assert not caplog.records and quiet.eta_s() == 0
