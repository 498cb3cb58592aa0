"""MinuteBudget with an injected clock: the arithmetic of slowing down before the budget, pauses and bans."""

from __future__ import annotations

import pytest

from data_puller_dagster.sources import IpBannedError
from data_puller_dagster.sources.ratelimit import MinuteBudget


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def budget(clock: Clock, **kw: object) -> MinuteBudget:
    return MinuteBudget(100, 0.8, used_header="X-MBX-USED-WEIGHT-1M", clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


def test_spends_up_to_the_safety_threshold_then_waits_for_the_next_minute() -> None:
    c = Clock(600.0)
    b = budget(c)
    for _ in range(40):  # 40 x 2 = 80 = 100 * 0.8
        b.acquire(2)
    assert c.slept == []
    c.t = 630.0
    b.acquire(2)
    assert sum(c.slept) == pytest.approx(30.001)  # waited until 660 (+1 ms), the next wall-clock minute
    assert b.used == 2


def test_server_reported_weight_counts_other_clients() -> None:
    c = Clock(600.0)
    b = budget(c)
    b.acquire(2)
    b.observe({"X-MBX-USED-WEIGHT-1M": "79"})
    b.acquire(1)  # 80: still allowed
    c.t = 610.0
    b.acquire(1)
    assert sum(c.slept) == pytest.approx(50.001)
    b.observe({"X-MBX-USED-WEIGHT-1M": "garbage"})  # ignored, never crashes


def test_pause_holds_every_caller() -> None:
    c = Clock(0.0)
    b = budget(c)
    b.pause(5)
    b.acquire(1)
    assert sum(c.slept) == pytest.approx(5.001)


def test_ban_refuses_until_it_ends() -> None:
    c = Clock(1000.0)
    b = budget(c, provider="binance")
    b.ban(1060.0)
    with pytest.raises(IpBannedError, match="banned until 1970-01-01T00:17:40") as ei:
        b.acquire(2)
    assert ei.value.until is not None and ei.value.until.timestamp() == 1060.0
    c.t = 1061.0
    b.acquire(2)


def test_a_reservation_at_the_window_edge_counts_in_the_next_window_too() -> None:
    """The provider counts a request where it lands: one reserved in a window's last 3 s (5 % of 60 s)
    may land in the next window, so it is charged there as well and the next window holds less."""
    c = Clock(600.0 + 58.0)  # 2 s before the window turns
    b = budget(c)
    assert b.edge_seconds == pytest.approx(3.0)
    b.acquire(30)
    c.t = 600.0 + 56.0  # not the edge (earlier in the same window): counted once
    b.acquire(10)
    c.t = 660.0
    assert b.used == 30  # only the edge reservation was carried
    for _ in range(25):  # 30 + 25 x 2 = 80: the threshold
        b.acquire(2)
    c.t = 661.0
    b.acquire(2)
    assert sum(c.slept) == pytest.approx(59.001)  # full: held until 720


def test_at_the_edge_a_full_next_window_holds_the_request() -> None:
    c = Clock(600.0 + 59.0)
    b = budget(c)
    b.acquire(80)  # the current and the next window both at the threshold
    c.t = 600.0 + 59.5
    b.acquire(2)  # current window full: wait for 660; there, 80 carried + 2 > 80: wait for 720
    assert c.t == pytest.approx(720.001) and b.used == 2
