"""Calendars and gaps on the real series (acceptance of issue 4) and on hand-checked calendar facts."""

from __future__ import annotations

import pandas as pd
import pytest

from data_puller_dagster.transform.calendars import (
    CalendarError,
    ForexSession,
    bin_labels,
    expected_grid,
    infer_forex_session,
    on_grid,
)
from data_puller_dagster.transform.gaps import find_gaps
from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster_tests.transform import rawframes as R

H = pd.Timedelta(hours=1)


def _ts(*xs: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(x, tz="UTC") for x in xs]


def test_btcusdt_maintenance_gaps_found_exactly() -> None:
    data = normalize(R.btcusdt_1h(), asset_class="crypto", timeframe="1h").data
    gaps = find_gaps(data["ts"], "crypto", "1h", "2020-12-01", "2021-06-01")
    assert gaps.expected == 4368 and gaps.present == 4357 and gaps.missing == 11
    seg = gaps.segments
    # SOURCES.md: after 2020-12-21 14:00 (3), 2020-12-25 01:00 (1), 2021-02-11 03:00 (1),
    # 2021-03-06 01:00 (1), 2021-04-20 01:00 (2), 2021-04-25 04:00 (3)
    after = _ts("2020-12-21 14:00", "2020-12-25 01:00", "2021-02-11 03:00", "2021-03-06 01:00",
                "2021-04-20 01:00", "2021-04-25 04:00")  # fmt: skip
    counts = [3, 1, 1, 1, 2, 3]
    assert list(seg["start"]) == [a + H for a in after]
    assert list(seg["missing"]) == counts
    assert list(seg["end"]) == [a + H * (n + 1) for a, n in zip(after, counts, strict=True)]
    assert gaps.completeness == pytest.approx(4357 / 4368)
    # the zero-volume candles right before two gaps are present data, not part of the gaps
    zero = data.loc[data["volume"] == 0, "ts"].tolist()
    assert zero == _ts("2020-12-21 14:00", "2021-02-11 03:00")
    assert not gaps.missing_index.isin(zero).any()


def test_eurusd_weekends_are_closures_not_gaps() -> None:
    data = normalize(R.eurusd_1h(), asset_class="forex", timeframe="1h").data
    start, end = data["ts"].min(), data["ts"].max() + H
    gaps = find_gaps(data["ts"], "forex", "1h", start, end)
    assert gaps.missing == 0 and gaps.segments.empty and gaps.completeness == 1.0
    # two Friday 21:00 UTC candles after the 17:00 EDT close are extra data, not gaps
    grid = expected_grid("forex", "1h", start, end)
    extra = data.loc[~data["ts"].isin(grid), "ts"].tolist()
    assert extra == _ts("2017-10-06 21:00", "2017-10-20 21:00") and gaps.unexpected == 2
    # without the Christmas/New Year closures, exactly those two trading days are reported, so the
    # data follows the New York 17:00 clock and what remains is those market holidays
    no_hol = find_gaps(data["ts"], "forex", "1h", start, end, forex=ForexSession(holidays=()))
    assert no_hol.segments[["start", "end", "missing"]].values.tolist() == [
        [pd.Timestamp("2017-12-24 22:00", tz="UTC"), pd.Timestamp("2017-12-25 22:00", tz="UTC"), 24],
        [pd.Timestamp("2017-12-31 22:00", tz="UTC"), pd.Timestamp("2018-01-01 22:00", tz="UTC"), 24],
    ]


def test_goog_daily_skips_nyse_holidays_without_gaps() -> None:
    data = normalize(R.goog_1d(), asset_class="equity", timeframe="1d").data
    start, end = data["ts"].min(), data["ts"].max() + pd.Timedelta(days=1)
    gaps = find_gaps(data["ts"], "equity", "1d", start, end)  # 2004: before exchange_calendars' default range
    assert gaps.missing == 0 and gaps.unexpected == 0 and gaps.expected == len(data) == 2148
    grid = expected_grid("equity", "1d", start, end)
    for holiday in ("2004-11-25", "2007-01-02", "2012-10-29", "2012-10-30", "2012-12-25"):
        assert pd.Timestamp(holiday, tz="UTC") not in grid  # Thanksgiving, Ford mourning day, Sandy, Christmas
    # removing the sessions either side of Good Friday (2008-03-21) and a weekend: they are adjacent
    # in the calendar, so one segment of 2 missing candles, not 5 days missing
    drop = _ts("2008-03-20", "2008-03-24")
    g2 = find_gaps(data.loc[~data["ts"].isin(drop), "ts"], "equity", "1d", start, end)
    assert g2.segments.values.tolist() == [[drop[0], drop[1] + pd.Timedelta(days=1), 2]]


def test_nyse_intraday_sessions_early_close_and_dst() -> None:
    m1 = expected_grid("equity", "1m", "2023-07-03", "2023-07-06")
    days = pd.Series(1, index=m1).groupby(m1.date).sum()
    assert days.tolist() == [210, 390]  # July 3 half day (9:30-13:00), July 4 closed, July 5 full
    assert m1[0] == pd.Timestamp("2023-07-03 13:30", tz="UTC")  # 09:30 EDT
    h1 = expected_grid("equity", "1h", "2023-01-05", "2023-01-06")
    assert h1[0] == pd.Timestamp("2023-01-05 14:30", tz="UTC") and len(h1) == 7  # EST, last bar 15:30-16:00
    assert on_grid(h1, "equity", "1h").all()
    assert not on_grid(pd.DatetimeIndex(_ts("2023-01-05 14:00")), "equity", "1h").any()


def test_forex_week_is_new_york_17_to_17_dst_aware() -> None:
    summer = expected_grid("forex", "1h", "2023-07-07", "2023-07-11")
    assert summer[summer.dayofweek == 4].max() == pd.Timestamp("2023-07-07 20:00", tz="UTC")
    assert summer[summer.dayofweek == 6].min() == pd.Timestamp("2023-07-09 21:00", tz="UTC")
    winter = expected_grid("forex", "1h", "2023-01-13", "2023-01-17")
    assert winter[winter.dayofweek == 4].max() == pd.Timestamp("2023-01-13 21:00", tz="UTC")
    assert winter[winter.dayofweek == 6].min() == pd.Timestamp("2023-01-15 22:00", tz="UTC")
    assert len(winter) == 22 + 2 + 24  # Friday until 22:00 UTC, Sunday from 22:00, Monday whole
    # 4h candle holding the Sunday open is expected; daily bars are Monday..Friday
    h4 = expected_grid("forex", "4h", "2023-01-15", "2023-01-16")
    assert h4[0] == pd.Timestamp("2023-01-15 20:00", tz="UTC")
    d1 = expected_grid("forex", "1d", "2023-01-09", "2023-01-23")
    assert list(d1.dayofweek.unique()) == [0, 1, 2, 3, 4] and len(d1) == 10
    # a closed weekend expects nothing: complete, not a gap
    weekend = find_gaps(pd.Series([], dtype="datetime64[ns, UTC]"), "forex", "1h", "2023-01-14", "2023-01-15")
    assert weekend.expected == 0 and weekend.completeness == 1.0


def test_infer_forex_session_finds_the_clock() -> None:
    data = normalize(R.eurusd_1h(), asset_class="forex", timeframe="1h").data
    assert infer_forex_session(data["ts"]) == ForexSession()
    shifted = data["ts"] + pd.Timedelta(hours=3)  # a broker clock 3h ahead of UTC, taken as UTC
    inferred = infer_forex_session(shifted)
    assert inferred != ForexSession()
    g = find_gaps(shifted, "forex", "1h", shifted.min(), shifted.max() + H, forex=inferred)
    g_ny = find_gaps(shifted, "forex", "1h", shifted.min(), shifted.max() + H)
    assert g.unexpected < g_ny.unexpected


def test_crypto_grid_and_labels() -> None:
    g = expected_grid("crypto", "15m", "2024-03-10 00:07", "2024-03-10 01:00")
    assert list(g) == _ts("2024-03-10 00:15", "2024-03-10 00:30", "2024-03-10 00:45")
    lab = bin_labels(g, "crypto", "1h")
    assert (lab == pd.Timestamp("2024-03-10", tz="UTC")).all()
    with pytest.raises(CalendarError, match="unknown asset class 'stocks'"):
        expected_grid("stocks", "1h", "2024-01-01", "2024-01-02")
