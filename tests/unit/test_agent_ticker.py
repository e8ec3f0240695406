"""The agent's Ticker: the periodic dataplane refresh keeps coming until it is stopped,
even after a call that failed."""

import logging
import threading
import time

from felix_py.agent import Ticker


def test_ticks_until_stopped_and_survives_a_failing_call(caplog):
    calls = []
    third = threading.Event()

    def fn():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("first call fails")
        if len(calls) == 3:
            third.set()
    with caplog.at_level(logging.ERROR):
        ticker = Ticker(0.05, fn)
        assert third.wait(5), "the ticker stopped after a failing call"
        ticker.stop()
        ticker.join(2)
    assert not ticker.is_alive()
    stopped_at = len(calls)
    time.sleep(0.2)
    assert len(calls) == stopped_at                 # nothing after stop()
    assert all(b - a >= 0.04 for a, b in zip(calls, calls[1:]))
    assert "periodic felix-refresh failed" in caplog.text and "first call fails" in caplog.text
