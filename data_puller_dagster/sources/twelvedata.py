"""Twelve Data `/time_series` for forex, US equities, commodities and indices.

Why these choices:
- `timezone=UTC` always: the default ("Exchange") would shift every bar by the exchange offset and DST.
- The key goes only in the `Authorization: apikey <KEY>` header, never the query string, so no logged
  URL (ours, urllib3's, a proxy's) can carry it; every message passes through redaction as well.
- Errors come as `{"code","message","status":"error"}` with HTTP 200 (historically) or with the matching
  HTTP status (recently): both are classified by the body first, then by the status.
- Paging by time window: a window of `outputsize` candles on a 24/7 grid can never hold more than
  `outputsize` bars (markets have fewer), so no page is truncated.
- `file:///dir` base URL: the offline demo reads recorded bodies from
  `<dir>/time_series/<KEY>/<interval>.json` through the same parser.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import orjson
import pandas as pd
import requests

from data_puller_dagster import timeframes
from data_puller_dagster.config import AppConfig, TwelveDataSourceConfig
from data_puller_dagster.sources.base import add_provenance, check_range, raw_empty
from data_puller_dagster.sources.errors import (
    AuthenticationError,
    InvalidRequestError,
    LocalDataMissingError,
    MalformedResponseError,
    RateLimitedError,
)
from data_puller_dagster.sources.http import Decision, Done, Fail, HttpClient, Retry, fetch_pages, redact
from data_puller_dagster.sources.ratelimit import MinuteBudget, shared_budget
from data_puller_dagster.symbols import partition_key

PROVIDER = "twelvedata"
# Project timeframe -> Twelve Data interval: the one place these names are mapped.
TWELVEDATA_INTERVALS: dict[str, str] = {
    "1m": "1min", "5m": "5min", "15m": "15min", "30m": "30min", "1h": "1h", "4h": "4h", "1d": "1day",
}  # fmt: skip
VALUE_FIELDS = ["open", "high", "low", "close", "volume"]
NO_DATA = "no data is available on the specified dates"
AUTH_HINT = "bad or missing TWELVEDATA_API_KEY: export a valid key (or set sources.twelvedata.api_key)"


def seconds_to_next_minute(now: float | None = None) -> float:
    """Credits reset on the wall-clock minute: wait until just after it."""
    t = time.time() if now is None else now
    return 60.0 - (t % 60.0) + 0.5


def _fmt(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S")


def parse_time_series_body(
    body: Any, symbol: str, timeframe: str, fetched_at: pd.Timestamp, what: str
) -> pd.DataFrame:
    """A `/time_series` "ok" body -> Twelve Data raw frame (strings exactly as sent, volume <NA> if absent)."""
    if not isinstance(body, dict) or not isinstance(body.get("values", []), list):
        raise MalformedResponseError(
            f"{what}: expected an object with a 'values' array", provider=PROVIDER, symbol=symbol
        )
    values = body.get("values") or []
    if not values:
        return raw_empty(PROVIDER)
    try:
        f = pd.DataFrame.from_records(values)
    except (TypeError, ValueError) as e:
        raise MalformedResponseError(
            f"{what}: 'values' entries are not objects ({e})", provider=PROVIDER, symbol=symbol
        ) from None
    missing = [c for c in ("datetime", "open", "high", "low", "close") if c not in f.columns]
    if missing:
        raise MalformedResponseError(
            f"{what}: values lack field(s) {missing}", provider=PROVIDER, symbol=symbol
        )
    out = pd.DataFrame({"datetime": f["datetime"].astype("string")})
    for c in VALUE_FIELDS:
        out[c] = f[c].astype("string") if c in f.columns else pd.array([pd.NA] * len(f), dtype="string")
    meta = body.get("meta")
    stated = meta.get("interval") if isinstance(meta, dict) else None
    out["interval"] = pd.array([None if stated is None else str(stated)] * len(f), dtype="string")
    ts = pd.to_datetime(out["datetime"], format="ISO8601", errors="coerce")
    ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    return add_provenance(out, ts, symbol, timeframe, PROVIDER, fetched_at)


class TwelveDataAdapter:
    """Paged, concurrent, credit-limited `/time_series` (or recorded bodies under a file:// base URL)."""

    provider = PROVIDER

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        /,
        *,
        outputsize: int | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        max_concurrency: int | None = None,
        budget: MinuteBudget | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        minute_wait: Callable[[], float] = seconds_to_next_minute,
        now: Callable[[], pd.Timestamp] | None = None,
        connect_timeout: float | None = None,
        max_retry_seconds: float | None = None,
        **options: Any,
    ):
        """`TwelveDataAdapter(base_url, api_key, ...)`: the client as given (what `from_config` builds;
        no credit budget unless `budget` is passed). Without a positional base URL: from keyword options
        named as in `sources.twelvedata` (`api_key`, `base_url`, `credits_per_minute`, `outputsize`,
        `max_concurrency`, `timeout_seconds`, ...), whose defaults and checks are TwelveDataSourceConfig's
        (`TWELVEDATA_BASE_URL` / `TWELVEDATA_API_KEY` when not given), with the per-minute credit budget
        shared by every adapter of that base URL in the process, exactly as the pipeline builds it."""
        if base_url is None:
            from data_puller_dagster.sources.options import split_options

            given = {"outputsize": outputsize, "max_retries": max_retries, "max_concurrency": max_concurrency,
                     "max_retry_seconds": max_retry_seconds}  # fmt: skip
            options.update({k: v for k, v in given.items() if v is not None})
            if api_key is not None:  # TwelveDataAdapter(None, "key"): the key positionally
                options.setdefault("api_key", api_key)
            c, unknown = split_options(TwelveDataSourceConfig, options, "TwelveDataAdapter options")
            if unknown:
                raise TypeError(f"TwelveDataAdapter got unexpected keyword argument(s): {', '.join(unknown)}")
            base_url = c.base_url
            api_key = c.api_key.get_secret_value() if c.api_key is not None else None
            outputsize, max_retries, max_concurrency = c.outputsize, c.max_retries, c.max_concurrency
            timeout = c.timeout_seconds if timeout is None else timeout
            connect_timeout = c.connect_timeout_seconds if connect_timeout is None else connect_timeout
            max_retry_seconds = c.max_retry_seconds
            budget = budget or shared_budget(
                PROVIDER, c.base_url, lambda: MinuteBudget(c.credits_per_minute, 1.0, provider=PROVIDER), options=c
            )
        elif options:
            raise TypeError(f"TwelveDataAdapter got unexpected keyword argument(s): {', '.join(options)}")
        outputsize = 5000 if outputsize is None else outputsize
        timeout = 30.0 if timeout is None else timeout
        max_retries = 5 if max_retries is None else max_retries
        max_concurrency = 4 if max_concurrency is None else max_concurrency
        self.base_url = base_url.rstrip("/")
        self.local: Path | None = (
            Path(unquote(urlparse(self.base_url).path)) if self.base_url.startswith("file://") else None
        )
        self._key = api_key or None
        self.outputsize = outputsize
        self.max_concurrency = max_concurrency
        self.minute_wait = minute_wait
        self.now = now or (lambda: pd.Timestamp.now(tz="UTC"))
        headers = {"Authorization": f"apikey {self._key}"} if self._key else {}
        self.http = HttpClient(
            PROVIDER, timeout=timeout, max_retries=max_retries, budget=budget, headers=headers,
            secrets=[self._key], backoff_base=backoff_base, backoff_max=backoff_max, pool_size=max_concurrency,
            connect_timeout=connect_timeout, max_retry_seconds=max_retry_seconds,
            url_setting="sources.twelvedata.base_url (TWELVEDATA_BASE_URL)",
        )  # fmt: skip

    # The source plug-in contract (sources/base.py source_class): registered as entry point `twelvedata`.
    Options = TwelveDataSourceConfig
    asset_classes = ("forex", "equity", "commodity", "index")
    raw_layout = "twelvedata"

    @classmethod
    def from_options(cls, options: TwelveDataSourceConfig, cfg: AppConfig) -> TwelveDataAdapter:
        return cls.from_config(options)

    @classmethod
    def from_config(cls, c: TwelveDataSourceConfig, **overrides: Any) -> TwelveDataAdapter:
        budget = overrides.pop("budget", None) or shared_budget(
            PROVIDER, c.base_url, lambda: MinuteBudget(c.credits_per_minute, 1.0, provider=PROVIDER), options=c
        )
        key = c.api_key.get_secret_value() if c.api_key is not None else None
        return cls(
            c.base_url, key, outputsize=c.outputsize, max_retries=c.max_retries,
            max_concurrency=c.max_concurrency, budget=budget,
            **{"timeout": c.timeout_seconds, "connect_timeout": c.connect_timeout_seconds,
               "max_retry_seconds": c.max_retry_seconds, **overrides},
        )  # fmt: skip

    def __repr__(self) -> str:  # never show the key
        return f"TwelveDataAdapter(base_url={self.base_url!r}, api_key={'***' if self._key else None})"

    # ------------------------------------------------------------------------------------ paging
    def page_windows(
        self, timeframe: str, start: pd.Timestamp, end: pd.Timestamp
    ) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """[ws, we) windows of at most `outputsize` candles (24/7 grid) covering [start, min(end, now))."""
        end = min(end, self.now())
        if end <= start:
            return []
        span = pd.Timedelta(seconds=timeframes.seconds(timeframe) * self.outputsize)
        starts = pd.date_range(start, end, freq=span, inclusive="left")
        return [(ws, min(ws + span, end)) for ws in starts]

    def _classify(self, what: str, symbol: str) -> Callable[[requests.Response], Decision]:
        def classify(resp: requests.Response) -> Decision:
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                body = None
            is_error = isinstance(body, dict) and body.get("status") == "error"
            if resp.status_code == 200 and not is_error:
                if body is None:
                    return Fail(
                        MalformedResponseError(
                            f"{what}: response is not JSON: {resp.text[:120]!r}",
                            provider=PROVIDER,
                            symbol=symbol,
                        )
                    )
                return Done(body)
            code = body.get("code") if is_error else resp.status_code
            msg = str(body.get("message", "")) if is_error else resp.text[:200]
            code = code if isinstance(code, int) else resp.status_code
            if code == 401 or resp.status_code == 401:
                return Fail(
                    AuthenticationError(
                        f"{what}: HTTP {resp.status_code} code 401 -> {AUTH_HINT}",
                        provider=PROVIDER,
                        symbol=symbol,
                    )
                )
            if code == 429 or resp.status_code == 429:
                if "for the day" in msg:
                    return Fail(RateLimitedError(
                        f"{what}: daily API credits are spent ({msg[:100]}); retry tomorrow or raise the plan",
                        provider=PROVIDER, symbol=symbol, retryable=False))  # fmt: skip
                return Retry(
                    f"code 429: minute credits spent ({msg[:100]})",
                    wait=self.minute_wait(),
                    rate_limited=True,
                )
            if code == 400 and NO_DATA in msg.lower():
                return Done({"status": "ok", "values": []})
            if code >= 500 or resp.status_code >= 500:
                return Retry(f"HTTP {resp.status_code} code {code} ({msg[:100]})")
            return Fail(InvalidRequestError(
                f"{what}: HTTP {resp.status_code} code {code}: {msg} -> check the symbol {symbol!r} and interval "
                f"(supported here: {', '.join(TWELVEDATA_INTERVALS)})", provider=PROVIDER, symbol=symbol))  # fmt: skip

        return classify

    def _page(
        self, symbol: str, timeframe: str, ws: pd.Timestamp, we: pd.Timestamp, cancelled: threading.Event
    ) -> pd.DataFrame:
        what = f"twelvedata {symbol} {timeframe} {ws.isoformat()}..{we.isoformat()}"
        params = {
            "symbol": symbol, "interval": TWELVEDATA_INTERVALS[timeframe], "timezone": "UTC", "order": "asc",
            "outputsize": self.outputsize, "start_date": _fmt(ws),
            # end_date one second before the window end: no overlap whether the API treats it as inclusive or not
            "end_date": _fmt(we - pd.Timedelta(seconds=1)),
        }  # fmt: skip
        body = self.http.get(
            f"{self.base_url}/time_series",
            params,
            what=what,
            classify=self._classify(what, symbol),
            cancelled=cancelled,
        )
        return parse_time_series_body(body, symbol, timeframe, pd.Timestamp.now(tz="UTC"), what)

    def _fetch_local(
        self, symbol: str, timeframe: str, start: pd.Timestamp, end: pd.Timestamp
    ) -> pd.DataFrame:
        assert self.local is not None
        path = self.local / "time_series" / partition_key(symbol) / f"{TWELVEDATA_INTERVALS[timeframe]}.json"
        what = f"twelvedata (file) {symbol} {timeframe} {start.isoformat()}..{end.isoformat()}"
        if not path.is_file():
            raise LocalDataMissingError(
                f"{what}: no recorded response at {path}; add that file (a /time_series body) or point "
                "TWELVEDATA_BASE_URL at the real API", provider=PROVIDER, symbol=symbol)  # fmt: skip
        try:
            body = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as e:
            raise MalformedResponseError(
                f"{what}: {path} is not JSON ({e})", provider=PROVIDER, symbol=symbol
            ) from None
        if isinstance(body, dict) and body.get("status") == "error":
            raise InvalidRequestError(
                f"{what}: {path} records an error: {body.get('message')}", provider=PROVIDER, symbol=symbol
            )
        df = parse_time_series_body(body, symbol, timeframe, pd.Timestamp.now(tz="UTC"), what)
        return df[(df["ts"] >= start) & (df["ts"] < end)].reset_index(drop=True)

    def fetch(self, symbol: str, timeframe: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Raw frame for [start, end), sorted by ts; complete or an exception naming symbol and range."""
        s, e = check_range(PROVIDER, symbol, timeframe, start, end)
        if self.local is not None:
            out = self._fetch_local(symbol, timeframe, s, e)
        else:
            if not self._key:
                raise AuthenticationError(
                    f"twelvedata {symbol} {timeframe} {s}..{e}: {AUTH_HINT}", provider=PROVIDER, symbol=symbol
                )
            windows = self.page_windows(timeframe, s, e)
            if not windows:
                return raw_empty(PROVIDER)
            parts = fetch_pages(
                lambda w, cancelled: self._page(symbol, timeframe, w[0], w[1], cancelled),
                windows,
                self.max_concurrency,
                "twelvedata-page",
            )
            parts = [p for p in parts if len(p)]
            out = pd.concat(parts, ignore_index=True) if parts else raw_empty(PROVIDER)
        if out.empty:
            return raw_empty(PROVIDER)
        order = np.argsort(out["ts"].to_numpy(), kind="stable")  # NaT sorts last
        return out.iloc[order].reset_index(drop=True)

    def close(self) -> None:
        self.http.close()


__all__ = [
    "TWELVEDATA_INTERVALS",
    "TwelveDataAdapter",
    "parse_time_series_body",
    "redact",
    "seconds_to_next_minute",
]
