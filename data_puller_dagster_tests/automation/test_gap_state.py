"""Pure rules of the sensor state: ranges, cursor round trip, pending expiry and backoff."""

from __future__ import annotations

from datetime import date

import pytest

from data_puller_dagster.automation.gap_state import (
    BACKOFF_BASE_SECONDS,
    PENDING_TTL_SECONDS,
    Incomplete,
    Pending,
    SensorState,
    contiguous_ranges,
)

D = date(2024, 1, 1)


def d(i: int) -> date:
    return date(2024, 1, i)


def test_contiguous_ranges_split_on_holes_and_length() -> None:
    days = [d(1), d(2), d(3), d(4), d(5), d(7), d(9), d(10)]
    assert list(contiguous_ranges(days, 3)) == [(d(1), d(3)), (d(4), d(5)), (d(7), d(7)), (d(9), d(10))]
    assert list(contiguous_ranges([], 3)) == []
    with pytest.raises(ValueError, match="max_partitions_per_run"):
        list(contiguous_ranges(days, 0))


def test_cursor_round_trip_and_bad_cursors_start_afresh() -> None:
    s = SensorState(seq=3, mat_id=42)
    s.incomplete["2024-01-01|BTCUSDT"] = Incomplete(5, 1)
    s.confirmed["2024-01-02|BTCUSDT"] = 60
    s.pending["k"] = Pending("BTCUSDT", d(1), d(3), 100.0)
    s.backoff["ETHUSDT"] = {"n": 2, "until": 500.0}
    back = SensorState.load(s.dump())
    assert (back.seq, back.mat_id, back.confirmed) == (3, 42, {"2024-01-02|BTCUSDT": 60})
    assert back.incomplete == {"2024-01-01|BTCUSDT": Incomplete(5, 1)}
    assert back.pending == {"k": Pending("BTCUSDT", d(1), d(3), 100.0)}
    assert not back.fresh and back.backing_off("ETHUSDT", 499.0) and not back.backing_off("ETHUSDT", 500.0)
    for bad in (None, "", "not json", '{"v": 99, "seq": 5}', '{"v": 1, "inc": {"x": 3}}'):
        assert SensorState.load(bad).fresh and SensorState.load(bad).seq == 0


def test_resolve_pending_success_failure_and_lost() -> None:
    s = SensorState()
    s.pending = {
        "ok": Pending("A", d(1), d(1), 0.0),
        "bad": Pending("B", d(1), d(1), 0.0),
        "run": Pending("C", d(1), d(1), 0.0),
        "new": Pending("D", d(1), d(1), 0.0),
        "lost": Pending("E", d(1), d(1), -PENDING_TTL_SECONDS),
    }
    dropped = s.resolve({"ok": "success", "bad": "failure", "run": "running"}, now=1.0)
    assert sorted(dropped) == ["bad", "lost", "ok"]
    assert sorted(s.pending) == ["new", "run"]
    assert s.backing_off("B", 1.0 + BACKOFF_BASE_SECONDS - 1) and not s.backing_off(
        "B", 1.0 + BACKOFF_BASE_SECONDS
    )
    s.pending["bad2"] = Pending("B", d(2), d(2), 2.0)
    s.resolve({"bad2": "failure"}, now=10.0)
    assert s.backoff["B"]["n"] == 2 and s.backoff["B"]["until"] == 10.0 + 2 * BACKOFF_BASE_SECONDS
    s.pending["good"] = Pending("B", d(3), d(3), 11.0)
    s.resolve({"good": "success"}, now=12.0)
    assert "B" not in s.backoff
    assert s.is_pending("C", d(1)) and not s.is_pending("C", d(2))
