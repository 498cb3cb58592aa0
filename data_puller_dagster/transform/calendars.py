"""Market calendars: which candles a market *should* have, so that closures are never reported as gaps.

Why a module of its own: gap detection, completeness checks, the `complete` flag of resampled bars,
dataset readiness and timestamp alignment all need the same answer to "was the market open for this
candle?". Getting it slightly different in two places produces phantom gaps, so there is one answer.

Conventions (all timestamps are candle OPEN times, tz-aware UTC):

- **crypto**: 24/7. Every candle of the epoch-anchored grid (`timeframes.pandas_freq`).
- **forex** (and **commodity**, which Twelve Data quotes on the same OTC week): the market opens
  Sunday 17:00 and closes Friday 17:00 America/New_York, DST-aware (21:00/22:00 UTC). Each *trading
  day* runs from 17:00 New York the evening before to 17:00 New York and is labelled by the date it
  ends on, so the week has trading days Monday..Friday. Trading days in `ForexSession.holidays`
  (default Dec 25 and Jan 1, when the interbank market does not reopen) are closed. Intraday candles
  lie on the epoch grid and are expected when any part of them overlaps an open trading day (a 4h
  candle 20:00-24:00 UTC on a winter Sunday holds the 22:00 open). Daily candles are one per open
  trading day, stamped 00:00 UTC of the label date (Monday..Friday), which is how Twelve Data and
  most vendors date forex daily bars. A data set on another clock (e.g. a broker rolling at 00:00
  UTC) is described with another `ForexSession`; `infer_forex_session` finds the roll from data.
- **equity** and **index**: the NYSE calendar (XNYS via exchange_calendars: sessions, holidays,
  special closures, early closes). Intraday candles start at the session open (09:30 New York) and
  step by the timeframe until the close; the last one may be short (a 1h bar at 15:30, or the bar
  running into a 13:00 early close). Note that 1h and 4h equity bars are therefore on the half hour
  in UTC, not on the epoch grid. Daily candles are stamped 00:00 UTC of the session date.

exchange_calendars only builds about 20 years back by default; calendars here are built for the
decade-rounded range actually asked for (GOOG data from 2004 works) and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import exchange_calendars as xcals
import numpy as np
import pandas as pd

from data_puller_dagster import timeframes

NYSE = "XNYS"
NEW_YORK = "America/New_York"
ONE_DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9

# Asset class -> which calendar family governs it.
CALENDAR_FAMILY: dict[str, str] = {
    "crypto": "24x7",
    "forex": "forex",
    "commodity": "forex",
    "equity": "exchange",
    "index": "exchange",
}


class CalendarError(ValueError):
    """A calendar question that cannot be answered (unknown asset class, bad range)."""


@dataclass(frozen=True)
class ForexSession:
    """The clock of a forex week: where trading days roll over, and which trading days are closed.

    `roll` is the local wall-clock time in `tz` at which one trading day ends and the next begins
    (and, on Friday, the week closes; on Sunday, it opens). `holidays` are "MM-DD" labels of
    trading days that are closed (the day ending at `roll` on that date).
    """

    tz: str = NEW_YORK
    roll: str = "17:00"
    holidays: tuple[str, ...] = field(default=("12-25", "01-01"))

    @property
    def roll_offset(self) -> pd.Timedelta:
        """Time to add to local wall-clock time so that the trading-day label is its calendar date."""
        hh, mm = (int(x) for x in self.roll.split(":"))
        return pd.Timedelta(hours=24) - pd.Timedelta(hours=hh, minutes=mm)


DEFAULT_FOREX = ForexSession()


def family(asset_class: str) -> str:
    """Calendar family of an asset class; raises CalendarError naming the allowed classes."""
    try:
        return CALENDAR_FAMILY[asset_class]
    except KeyError:
        raise CalendarError(
            f"unknown asset class {asset_class!r}; use one of {', '.join(CALENDAR_FAMILY)}"
        ) from None


def _utc(ts: pd.Timestamp | str) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


# ------------------------------------------------------------------------------------ exchange calendars
@functools.lru_cache(maxsize=8)
def _exchange_calendar(name: str, first_year: int, last_year: int) -> xcals.ExchangeCalendar:
    return xcals.get_calendar(name, start=f"{first_year}-01-01", end=f"{last_year}-12-31")


def exchange_calendar(start: pd.Timestamp, end: pd.Timestamp, name: str = NYSE) -> xcals.ExchangeCalendar:
    """A cached exchange calendar covering [start, end], built for decade-rounded bounds.

    Rounding to decades keeps the cache tiny while letting any range (2004 GOOG history, next year's
    schedule) be answered without exchange_calendars' "date out of bounds" errors.
    """
    first = (min(start.year, end.year) // 10) * 10
    last = (max(start.year, end.year) // 10) * 10 + 9
    return _exchange_calendar(name, first, last)


def _session_schedule(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """NYSE schedule (index = session date, naive; columns open/close UTC) for sessions near [start, end)."""
    cal = exchange_calendar(start - pd.Timedelta(days=1), end + pd.Timedelta(days=1))
    lo = (start - pd.Timedelta(days=1)).tz_localize(None).normalize()
    hi = (end + pd.Timedelta(days=1)).tz_localize(None).normalize()
    sched = cal.schedule
    return sched.loc[(sched.index >= lo) & (sched.index <= hi), ["open", "close"]]


# --------------------------------------------------------------------------------------------- forex
def forex_trading_day(ts: pd.DatetimeIndex, session: ForexSession = DEFAULT_FOREX) -> pd.DatetimeIndex:
    """Label (naive date at 00:00) of the forex trading day each instant belongs to."""
    local = ts.tz_convert(session.tz).tz_localize(None)
    return (local + session.roll_offset).normalize()


def _forex_day_open(labels: pd.DatetimeIndex, session: ForexSession) -> np.ndarray:
    weekday = np.asarray(labels.dayofweek) < 5
    if not session.holidays:
        return weekday
    mmdd = labels.strftime("%m-%d")
    return weekday & ~np.isin(np.asarray(mmdd), list(session.holidays))


def forex_open_at(ts: pd.DatetimeIndex, session: ForexSession = DEFAULT_FOREX) -> np.ndarray:
    """Whether the forex market is open at each instant (bool array)."""
    return _forex_day_open(forex_trading_day(ts, session), session)


# ------------------------------------------------------------------------------------------ the grid
def _epoch_grid(timeframe: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    step = timeframes.seconds(timeframe) * 10**9
    first = -(-start.value // step) * step
    if first >= end.value:
        return pd.DatetimeIndex([], dtype="datetime64[ns, UTC]")
    values = np.arange(first, end.value, step, dtype="int64")
    return pd.DatetimeIndex(values.view("datetime64[ns]")).tz_localize("UTC")


def _forex_grid(
    timeframe: str, start: pd.Timestamp, end: pd.Timestamp, session: ForexSession
) -> pd.DatetimeIndex:
    if timeframe == "1d":
        days = _epoch_grid("1d", start, end)
        return days[_forex_day_open(days.tz_localize(None), session)]
    candles = _epoch_grid(timeframe, start, end)
    step = timeframes.seconds(timeframe)
    # Opening/closing happen on whole hours in UTC for any tz with whole-hour offsets (New York), so a
    # candle of <= 1h is entirely open or closed; a longer one is open if any of its hours is.
    probes = max(1, step // 3600)
    is_open = np.zeros(len(candles), dtype=bool)
    for k in range(probes):  # at most 4 (4h); a loop over offsets, not over candles
        is_open |= forex_open_at(candles + pd.Timedelta(hours=k), session)
    return candles[is_open]


def _exchange_grid(timeframe: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    sched = _session_schedule(start, end)
    if timeframe == "1d":
        days = pd.DatetimeIndex(sched.index).tz_localize("UTC")
        return days[(days >= start) & (days < end)]
    step = timeframes.seconds(timeframe) * 10**9
    opens = sched["open"].to_numpy("datetime64[ns]").view("int64")
    closes = sched["close"].to_numpy("datetime64[ns]").view("int64")
    counts = -(-(closes - opens) // step)  # ceil: the last bar may be short (15:30 1h bar, early close)
    first_of_session = np.repeat(np.cumsum(counts) - counts, counts)
    offsets = (np.arange(counts.sum()) - first_of_session) * step
    values = np.repeat(opens, counts) + offsets
    grid = pd.DatetimeIndex(values.view("datetime64[ns]")).tz_localize("UTC")
    return grid[(grid >= start) & (grid < end)]


def expected_grid(
    asset_class: str,
    timeframe: str,
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    *,
    forex: ForexSession = DEFAULT_FOREX,
) -> pd.DatetimeIndex:
    """Open times (UTC, sorted, unique) of every candle the market should have in [start, end).

    Naive `start`/`end` are taken as UTC. Conventions per asset class are in the module docstring.
    """
    timeframes.check_timeframe(timeframe)
    fam = family(asset_class)
    s, e = _utc(start), _utc(end)
    if e <= s:
        return pd.DatetimeIndex([], dtype="datetime64[ns, UTC]")
    if fam == "24x7":
        return _epoch_grid(timeframe, s, e)
    if fam == "forex":
        return _forex_grid(timeframe, s, e, forex)
    return _exchange_grid(timeframe, s, e)


def on_grid(
    ts: pd.Series | pd.DatetimeIndex,
    asset_class: str,
    timeframe: str,
    *,
    forex: ForexSession = DEFAULT_FOREX,
) -> np.ndarray:
    """Whether each timestamp is a valid candle open time for the timeframe (False for NaT).

    Epoch-grid alignment everywhere except equity/index 1h and 4h, whose bars start at the session
    open (09:30 New York): those must lie on the session grid. Being on the grid is about *alignment*
    only; a crypto candle is never outside market hours, and an off-hours forex candle on the hour
    is aligned (gap reports count such candles as `unexpected`, they are not invalid).
    """
    idx = pd.DatetimeIndex(ts)
    values = idx.asi8
    valid = ~np.asarray(idx.isna())
    step = timeframes.seconds(timeframe) * 10**9
    aligned = valid & (values % step == 0)
    if family(asset_class) == "exchange" and step > 1800 * 10**9 and timeframe != "1d":
        good = idx[valid]
        if len(good):
            grid = _exchange_grid(timeframe, good.min(), good.max() + pd.Timedelta(nanoseconds=1))
            aligned = valid & np.asarray(idx.isin(grid))
    return aligned


def bin_labels(
    ts: pd.Series | pd.DatetimeIndex,
    asset_class: str,
    target_tf: str,
    *,
    forex: ForexSession = DEFAULT_FOREX,
) -> pd.DatetimeIndex:
    """Open time of the `target_tf` bar each candle open time belongs to (same conventions as the grid).

    Used by resampling and by completeness per bar, so that bars and the expected grid always agree.
    """
    idx = pd.DatetimeIndex(ts)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    fam = family(asset_class)
    if fam == "forex" and target_tf == "1d":
        return forex_trading_day(idx, forex).tz_localize("UTC")
    if fam == "exchange" and target_tf == "1d":
        return idx.tz_convert(NEW_YORK).tz_localize(None).normalize().tz_localize("UTC")
    step = timeframes.seconds(target_tf) * 10**9
    values = idx.asi8
    if fam == "exchange" and step > 1800 * 10**9 and len(idx):
        # Bars start at the session open: label = open + whole steps since the open of that session.
        dates = idx.tz_convert(NEW_YORK).tz_localize(None).normalize()
        valid = idx[~idx.isna()]
        sched = _session_schedule(valid.min(), valid.max()) if len(valid) else None
        if sched is not None and len(sched):
            opens = pd.Series(sched["open"].to_numpy("datetime64[ns]").view("int64"), index=sched.index)
            session_open = opens.reindex(dates).to_numpy(dtype="float64")
            has = ~np.isnan(session_open)
            so = np.where(has, session_open, 0).astype("int64")
            label = np.where(has & (values >= so), so + ((values - so) // step) * step, (values // step) * step)
            out = pd.DatetimeIndex(label.view("datetime64[ns]")).tz_localize("UTC")
            return out.where(~idx.isna(), pd.NaT)
    label = (values // step) * step
    out = pd.DatetimeIndex(label.view("datetime64[ns]")).tz_localize("UTC")
    return out.where(~idx.isna(), pd.NaT)


def infer_forex_session(ts: pd.Series | pd.DatetimeIndex, candidates: tuple[str, ...] | None = None) -> ForexSession:
    """Pick the weekly roll (New York wall clock, or UTC if better) that best explains a forex series.

    Why: vendors date forex bars on different clocks (New York 17:00 is the interbank convention;
    some brokers roll at 00:00 UTC or Europe/ time). Choosing the session whose closed hours contain
    the fewest of the observed candles makes weekend closures line up with the data instead of being
    reported as gaps. Ties go to the first candidate (the New York 17:00 convention).
    """
    idx = pd.DatetimeIndex(pd.Series(ts).dropna().unique())
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    options = [ForexSession()]
    rolls = candidates or tuple(f"{h:02d}:00" for h in range(24))
    options += [ForexSession(tz=tz, roll=r) for tz in (NEW_YORK, "UTC") for r in rolls]
    if idx.empty:
        return options[0]
    outside = [int((~forex_open_at(idx, s)).sum()) for s in options]  # loop over ~48 clocks, vectorized inside
    return options[int(np.argmin(outside))]
