"""Binance spot klines: REST (`GET /api/v3/klines`) and, for published days, the public archive.

Why pages are computed up front and fetched concurrently: a page is ~1000 candles and one round trip,
so a month of 1m candles is 44 latency-bound requests. Windows of exactly `limit` candles are known
before the first request, so they can run in parallel (bounded by `max_concurrency` and the shared
weight budget) and be reassembled in order. Any failed page fails the whole fetch: no silent holes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import requests

from data_puller_dagster import timeframes
from data_puller_dagster.config import AppConfig, BinanceSourceConfig, StorageConfig
from data_puller_dagster.sources.bans import BanStore, ban_key
from data_puller_dagster.sources.base import check_range, raw_empty
from data_puller_dagster.sources.binance_klines import (
    PROVIDER,
    KlineColumns,
    columns_frame,
    frame_columns,
    kline_columns,
    klines_frame,
    ms_epochs,
    parse_klines_body,
)
from data_puller_dagster.sources.errors import (
    ChecksumMismatchError,
    InvalidRequestError,
    IpBannedError,
    MalformedResponseError,
    SourceError,
)
from data_puller_dagster.sources.http import (
    Decision,
    Done,
    Fail,
    HttpClient,
    Retry,
    fetch_pages,
    retry_after_seconds,
)
from data_puller_dagster.sources.ratelimit import MinuteBudget, shared_budget

if TYPE_CHECKING:
    from data_puller_dagster.sources.binance_archive import BinanceArchive

log = logging.getLogger("data_puller_dagster.sources")

KLINES_PATH = "/api/v3/klines"
KLINES_WEIGHT = 2
PAGE_LIMIT = 1000
# Project timeframe -> Binance interval (identical names today; mapped here so that stays one place).
BINANCE_INTERVALS: dict[str, str] = {tf: tf for tf in timeframes.TIMEFRAMES}
# A 418 without an end (no body timestamp, no Retry-After): assume Binance's shortest ban.
DEFAULT_BAN = timedelta(minutes=2)


def _ms(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)


def _fmt_ms(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


def binance_error(resp: requests.Response) -> tuple[int | None, str]:
    """(code, msg) of a Binance error body `{"code":-1121,"msg":"Invalid symbol."}`, tolerating others."""
    try:
        body = orjson.loads(resp.content)
        if isinstance(body, dict):
            return body.get("code"), str(body.get("msg", ""))
    except orjson.JSONDecodeError:
        pass
    return None, resp.text[:200]


def ban_until(resp: requests.Response, msg: str) -> datetime | None:
    """When a 418 ban ends: from the body ("IP banned until <ms>") or Retry-After seconds."""
    import re

    m = re.search(r"until (\d{12,})", msg)
    if m:
        return datetime.fromtimestamp(int(m.group(1)) / 1000, UTC)
    if resp.headers.get("Retry-After") is not None:
        return datetime.now(UTC) + pd.Timedelta(seconds=retry_after_seconds(resp, 0)).to_pytimedelta()
    return None


class BinanceRest:
    """Paged, concurrent `/api/v3/klines` over one HTTP session and a shared weight budget."""

    provider = PROVIDER

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_concurrency: int = 8,
        budget: MinuteBudget | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        page_limit: int = PAGE_LIMIT,
        now: Callable[[], pd.Timestamp] | None = None,
        bans: BanStore | None = None,
        connect_timeout: float | None = None,
        max_retry_seconds: float | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        # Bans every process sees (None: only this process's budget remembers them).
        self.bans = bans
        self.ban_key = ban_key(PROVIDER, self.base_url)
        self.max_concurrency = max_concurrency
        self.page_limit = page_limit
        self.now = now or (lambda: pd.Timestamp.now(tz="UTC"))
        self.budget = budget
        self.http = HttpClient(
            PROVIDER, timeout=timeout, max_retries=max_retries, budget=budget,
            backoff_base=backoff_base, backoff_max=backoff_max, pool_size=max_concurrency,
            connect_timeout=connect_timeout, max_retry_seconds=max_retry_seconds,
            url_setting="sources.binance.base_url (BINANCE_BASE_URL)",
        )  # fmt: skip

    def page_windows(self, timeframe: str, start: pd.Timestamp, end: pd.Timestamp) -> list[tuple[int, int]]:
        """Inclusive [startTime, endTime] ms windows of `page_limit` candles covering [start, min(end, now))."""
        step = timeframes.seconds(timeframe) * 1000
        end_ms = min(_ms(end), _ms(self.now()) + 1)  # never ask past "now" (the open candle is included)
        first = -(-_ms(start) // step) * step
        if first >= end_ms:
            return []
        span = self.page_limit * step
        starts = np.arange(first, end_ms, span, dtype="int64")
        ends = np.minimum(starts + span, end_ms) - 1
        return list(zip(starts.tolist(), ends.tolist(), strict=True))

    def _where_recorded(self) -> str:
        return f" (recorded in {self.bans.path})" if self.bans is not None else ""

    def _guard(self, what: str, symbol: str) -> Callable[[], None]:
        """Raise before sending while a ban recorded by any process of the deployment is running."""

        def guard() -> None:
            if self.bans is None:
                return
            end = self.bans.until(self.ban_key)
            if end is None:
                return
            until = datetime.fromtimestamp(end, UTC)
            raise IpBannedError(
                f"{what}: IP banned until {until.isoformat()} by Binance{self._where_recorded()}; no request "
                f"is sent to {self.ban_key.split(' ', 1)[1]} before then (each one would lengthen the ban). "
                "Re-run after that time; lower max_concurrency or weight_budget_per_minute to avoid new bans",
                until=until, symbol=symbol)  # fmt: skip

        return guard

    def _banned(self, resp: requests.Response, msg: str, what: str, symbol: str) -> Fail:
        """A 418: remember the end in this process and for every other one, and stop."""
        until = ban_until(resp, msg)
        assumed = until is None
        if until is None:
            until = datetime.now(UTC) + DEFAULT_BAN
        if self.budget is not None:
            self.budget.ban(until.timestamp())
        if self.bans is not None:
            self.bans.record(self.ban_key, until.timestamp(), f"HTTP 418 for {what}: {msg[:200]}")
        note = " (no end given; assuming 2 minutes, the shortest Binance ban)" if assumed else ""
        return Fail(IpBannedError(
            f"{what}: HTTP 418, IP banned until {until.isoformat()}{note} ({msg}){self._where_recorded()}; "
            "no request is sent to Binance from this deployment until then (each one would lengthen the "
            "ban). Re-run after that time; lower max_concurrency or weight_budget_per_minute",
            until=until, symbol=symbol))  # fmt: skip

    def _classify(self, what: str, symbol: str) -> Callable[[requests.Response], Decision]:
        def classify(resp: requests.Response) -> Decision:
            s = resp.status_code
            if s == 200:
                try:
                    return Done(orjson.loads(resp.content))
                except orjson.JSONDecodeError:
                    return Fail(
                        MalformedResponseError(
                            f"{what}: response is not JSON: {resp.text[:120]!r}",
                            provider=PROVIDER,
                            symbol=symbol,
                        )
                    )
            code, msg = binance_error(resp)
            if s == 418:
                return self._banned(resp, msg, what, symbol)
            if s == 429:
                return Retry(
                    f"HTTP 429 ({code}: {msg})", wait=retry_after_seconds(resp, 60.0), rate_limited=True
                )
            if s >= 500:
                return Retry(f"HTTP {s} ({msg[:120]})")
            hint = {
                -1121: f"symbol {symbol!r} does not exist on Binance spot; fix the feed's symbols",
                -1120: "the interval is not accepted; use one of " + ", ".join(BINANCE_INTERVALS),
            }.get(code or 0, "the request parameters were rejected; check symbol, interval and range")
            return Fail(
                InvalidRequestError(
                    f"{what}: HTTP {s} code {code}: {msg} -> {hint}", provider=PROVIDER, symbol=symbol
                )
            )

        return classify

    def _page(
        self, symbol: str, timeframe: str, ws: int, we: int, cancelled: threading.Event
    ) -> list[tuple[KlineColumns, pd.Timestamp]]:
        """One window's responses as (columns, fetched_at): usually one, more if the server capped it."""
        parts: list[tuple[KlineColumns, pd.Timestamp]] = []
        step = timeframes.seconds(timeframe) * 1000
        cursor = ws
        while cursor <= we:
            what = f"binance {symbol} {timeframe} {_fmt_ms(cursor)}..{_fmt_ms(we)}"
            params = {"symbol": symbol, "interval": BINANCE_INTERVALS[timeframe], "startTime": cursor,
                      "endTime": we, "limit": self.page_limit}  # fmt: skip
            body = self.http.get(
                self.base_url + KLINES_PATH, params, what=what, classify=self._classify(what, symbol),
                cost=KLINES_WEIGHT, cancelled=cancelled, guard=self._guard(what, symbol),
            )  # fmt: skip
            fetched_at = pd.Timestamp.now(tz="UTC")
            cols = kline_columns(body, what)
            del body  # the decoded rows: the columns hold everything from here on
            parts.append((cols, fetched_at))
            # A full page may have been capped by the server below our window: continue after its last row.
            if len(cols["open_time"]) < self.page_limit:
                break
            cursor = int(ms_epochs(cols["open_time"]).max()) + step
        return parts

    def fetch_range(
        self, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp
    ) -> pd.DataFrame:
        windows = self.page_windows(timeframe, start, end)
        if not windows:
            return raw_empty(PROVIDER)
        pages = fetch_pages(
            lambda w, cancelled: self._page(symbol, timeframe, w[0], w[1], cancelled),
            windows,
            self.max_concurrency,
            "binance-page",
        )
        return columns_frame([part for page in pages for part in page], symbol, timeframe, "binance")

    def close(self) -> None:
        self.http.close()


@dataclass(frozen=True)
class ChecksumFallback:
    """A day whose archive file failed verification and was fetched over REST instead."""

    symbol: str
    timeframe: str
    day: str  # YYYY-MM-DD
    reason: str  # the verification error (names the file)


class BinanceAdapter:
    """Binance spot candles: archive days where published (verified), REST for everything else.

    A day whose archive file fails its checksum (or has none) is never taken from the archive: it is
    fetched over REST like an unpublished day and listed in `checksum_fallbacks` (the raw asset counts
    them in its metadata). Only if REST has no candles for that day either does the fetch fail.
    """

    provider = PROVIDER
    # The source plug-in contract (sources/base.py source_class): registered as entry point `binance`.
    Options = BinanceSourceConfig
    asset_classes = ("crypto",)
    raw_layout = "binance"

    @classmethod
    def from_options(cls, options: BinanceSourceConfig, cfg: AppConfig) -> BinanceAdapter:
        """Bans are persisted under `<storage.data_dir>/.state/bans.json` so every process of the
        deployment (step retries, daemon runs, CLI commands) honours them (see sources/bans.py)."""
        from data_puller_dagster.sources.bans import BanStore

        return cls.from_config(options, bans=BanStore.for_data_dir(cfg.storage.data_dir))

    def __init__(
        self,
        rest: BinanceRest | None = None,
        archive: BinanceArchive | None = None,
        /,
        *,
        bans: BanStore | None = None,
        **options: Any,
    ):
        """`BinanceAdapter(rest[, archive])`: from parts (what `from_config` builds); or, without them,
        from keyword options named as in `sources.binance` (`base_url`, `archive_url`, `use_archive`,
        `weight_budget_per_minute`, `max_concurrency`, ...), whose defaults and checks are
        BinanceSourceConfig's (`BINANCE_BASE_URL` / `BINANCE_ARCHIVE_URL` when not given). Other keywords
        (`backoff_base`, `page_limit`, `budget`, ...) go to BinanceRest as `from_config`'s overrides.
        `bans`: where 418 bans are persisted; default `<DATA_PULLER_HOME or ./data>/.state/bans.json`,
        the file every pipeline process of the default data_dir reads."""
        if rest is None:
            from data_puller_dagster.sources.options import split_options

            c, overrides = split_options(BinanceSourceConfig, options, "BinanceAdapter options")
            if bans is None:
                bans = BanStore.for_data_dir(StorageConfig().data_dir)
            built = type(self).from_config(c, bans=bans, **overrides)
            rest, archive = built.rest, built.archive
        elif options or bans is not None:
            raise TypeError(
                "BinanceAdapter: pass either rest[, archive] or keyword options (base_url=..., ...), not both"
            )
        self.rest = rest
        self.archive = archive
        self.checksum_fallbacks: list[ChecksumFallback] = []

    @classmethod
    def from_config(
        cls, c: BinanceSourceConfig, *, bans: BanStore | None = None, **overrides: Any
    ) -> BinanceAdapter:
        """Adapter from the `sources.binance` config; `overrides` (e.g. backoff_base) go to BinanceRest.

        `bans`: where 418 bans are persisted for every process (build_adapter passes the data_dir's).
        """
        from data_puller_dagster.sources.binance_archive import BinanceArchive

        budget = overrides.pop("budget", None) or shared_budget(
            PROVIDER, c.base_url,
            lambda: MinuteBudget(c.weight_budget_per_minute, c.weight_safety_fraction,
                                 used_header="X-MBX-USED-WEIGHT-1M", provider=PROVIDER),
            options=c,
        )  # fmt: skip
        timeouts = {"timeout": c.timeout_seconds, "connect_timeout": c.connect_timeout_seconds,
                    "max_retry_seconds": c.max_retry_seconds}  # fmt: skip
        rest = BinanceRest(
            c.base_url, max_retries=c.max_retries, max_concurrency=c.max_concurrency,
            budget=budget, bans=bans, **{**timeouts, **overrides},
        )  # fmt: skip
        archive = None
        if c.use_archive:
            archive = BinanceArchive(
                c.archive_url, max_retries=c.max_retries, max_concurrency=c.max_concurrency,
                backoff_base=overrides.get("backoff_base", 0.5), **timeouts,
            )  # fmt: skip
        return cls(rest, archive)

    def fetch(self, symbol: str, timeframe: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Raw frame for [start, end): archive days (source binance_archive) + REST for the rest."""
        s, e = check_range(PROVIDER, symbol, timeframe, start, end)
        parts: list[pd.DataFrame] = []
        rest_ranges: list[tuple[pd.Timestamp, pd.Timestamp]] = [(s, e)]
        unverified: dict[pd.Timestamp, ChecksumMismatchError] = {}
        if self.archive is not None and e > s:
            _, found, unverified = self.archive.fetch_days(symbol, timeframe, s, e, self.rest.now())
            parts.extend(found.values())
            rest_ranges = _uncovered(s, e, sorted(found))
            for d, err in sorted(unverified.items()):
                log.warning(
                    "%s; fetching %s %s %s over REST instead", err, symbol, timeframe, f"{d:%Y-%m-%d}"
                )
        rest_parts = [self.rest.fetch_range(symbol, timeframe, rs, re_) for rs, re_ in rest_ranges]
        if unverified:
            self._check_fallbacks(symbol, timeframe, s, e, unverified, rest_parts)
        parts = [p for p in parts + rest_parts if len(p)]
        if not parts:
            return raw_empty(PROVIDER)
        out = _one_chunk(pd.concat(parts, ignore_index=True)) if len(parts) > 1 else parts[0]
        if out["ts"].is_monotonic_increasing and out.index.equals(pd.RangeIndex(len(out))):
            return out  # already in order (the usual case): sorting would copy every column
        return out.sort_values("ts", kind="stable", ignore_index=True)

    def _check_fallbacks(
        self,
        symbol: str,
        timeframe: str,
        s: pd.Timestamp,
        e: pd.Timestamp,
        unverified: dict[pd.Timestamp, ChecksumMismatchError],
        rest_parts: list[pd.DataFrame],
    ) -> None:
        """Record the days REST replaced; fail (not retryable) for one REST could not supply either."""
        ts = (
            pd.concat([p["ts"] for p in rest_parts], ignore_index=True)
            if rest_parts
            else pd.Series([], dtype="datetime64[ns, UTC]")
        )
        for d, err in sorted(unverified.items()):
            lo, hi = max(d, s), min(d + pd.Timedelta(days=1), e)
            if not ((ts >= lo) & (ts < hi)).any():
                raise ChecksumMismatchError(
                    f"{err}. REST has no {symbol} {timeframe} candles for {d:%Y-%m-%d} either, so the day "
                    "cannot be stored. Retry the partition once Binance re-publishes the file (or REST serves "
                    "the day), or set sources.binance.use_archive: false if REST is known to be complete",
                    provider=PROVIDER, symbol=symbol)  # fmt: skip
            self.checksum_fallbacks.append(ChecksumFallback(symbol, timeframe, f"{d:%Y-%m-%d}", str(err)))

    @property
    def checksum_fallback_days(self) -> int:
        """Days this adapter fetched over REST because their archive file failed verification."""
        return len(self.checksum_fallbacks)

    def close(self) -> None:
        self.rest.close()
        if self.archive is not None:
            self.archive.close()


def _one_chunk(df: pd.DataFrame) -> pd.DataFrame:
    """Arrow-backed text columns of a concatenated frame (one Arrow chunk per part) as one chunk each.

    Why: a year of archive days is 366 chunks; every Arrow kernel then runs per chunk, and a `take`
    over the column (a store gathering one day's rows) concatenates all of them again on each call.
    """
    for c in df.columns:
        dtype = df[c].dtype
        if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
            arrow = pa.array(df[c].array)  # the column's own Arrow data, no copy
            if isinstance(arrow, pa.ChunkedArray) and arrow.num_chunks > 1:
                df[c] = dtype.__from_arrow__(arrow.combine_chunks())
    return df


def _uncovered(
    start: pd.Timestamp, end: pd.Timestamp, days: list[pd.Timestamp]
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Parts of [start, end) not covered by the whole UTC `days` the archive delivered."""
    out: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    cursor = start
    for d in days:
        ds, de = max(d, start), min(d + pd.Timedelta(days=1), end)
        if ds > cursor:
            out.append((cursor, ds))
        cursor = max(cursor, de)
    if cursor < end:
        out.append((cursor, end))
    return out


__all__ = [
    "BINANCE_INTERVALS",
    "BinanceAdapter",
    "BinanceRest",
    "ChecksumFallback",
    "SourceError",
    "columns_frame",
    "frame_columns",
    "kline_columns",
    "klines_frame",
    "parse_klines_body",
]
