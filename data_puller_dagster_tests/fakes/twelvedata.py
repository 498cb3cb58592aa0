"""FakeTwelveData: `/time_series` over real HTTP, with both error modes and a recording of what it got.

Error modes: `error_mode="body"` answers errors with HTTP 200 and `{"code","message","status":"error"}`
(historical behaviour); `"status"` uses the matching HTTP status with the same body (recent behaviour).
Every request is kept in `.received` (path, raw query, headers) so tests can prove the key never
appeared in a URL. Like the real API, when a range holds more than `outputsize` bars the fake returns
the most recent `outputsize` of them, so a client that pages wrongly loses the oldest bars visibly.
"""

from __future__ import annotations

import collections
import threading

import numpy as np
import orjson
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster_tests.fakes.server import FakeServer, Reply

INTERVALS = {"1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "1h": "1h", "4h": "4h", "1day": "1d"}
NO_DATA = "No data is available on the specified dates. Try setting different start/end dates."
BAD_KEY = "**apikey** parameter is incorrect or not specified. You can get your free API key instantly following this link: https://twelvedata.com/pricing. If you believe that everything is correct, you can contact us at https://twelvedata.com/contact/customer"
MINUTE_429 = "You have run out of API credits for the current minute. 12 API credits were used, with the current limit being 8. Wait for the next minute or consider switching to a higher tier plan at https://twelvedata.com/pricing"


def generate_time_series(
    start: str,
    periods: int,
    timeframe: str = "1h",
    *,
    volume: bool = True,
    weekdays_only: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """Deterministic bars in Twelve Data's value layout (all strings; daily bars as YYYY-MM-DD)."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range(
        pd.Timestamp(start), periods=periods, freq=pd.Timedelta(seconds=timeframes.seconds(timeframe))
    )
    if weekdays_only:
        idx = idx[idx.dayofweek < 5]
    n = len(idx)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 1e-3, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 1e-3, n))
    fmt = "%Y-%m-%d" if timeframe == "1d" else "%Y-%m-%d %H:%M:%S"
    out = pd.DataFrame({"datetime": idx.strftime(fmt)})
    for c, v in (("open", open_), ("high", high), ("low", low), ("close", close)):
        out[c] = np.char.mod("%.5f", v).astype(object)
    if volume:
        out["volume"] = rng.integers(100, 10_000, n).astype(str).astype(object)
    return out


class FakeTwelveData(FakeServer):
    """Switches: `throttle(n)` (429 minute credits), `server_errors(n)`, `daily_quota_spent`, `latency`,
    `invalid_symbols`; `api_key` is checked against the `Authorization: apikey <KEY>` header."""

    def __init__(
        self,
        series: dict[tuple[str, str], pd.DataFrame] | None = None,
        *,
        api_key: str = "td-test-key-0123456789",
        error_mode: str = "body",
        latency: float = 0.0,
    ):
        super().__init__()
        if error_mode not in ("body", "status"):
            raise ValueError("error_mode must be 'body' or 'status'")
        self.series: dict[tuple[str, str], pd.DataFrame] = {}
        for (sym, interval), f in (series or {}).items():
            self.add(sym, interval, f)
        self.api_key = api_key
        self.error_mode = error_mode
        self.latency = latency
        self.invalid_symbols: set[str] = set()
        self.daily_quota_spent = False
        self._script: collections.deque[tuple[int, str]] = collections.deque()
        self._bodies: collections.deque[dict] = collections.deque()

    def add(self, symbol: str, interval: str, values: pd.DataFrame) -> None:
        """`interval` in Twelve Data's names (1min, 1h, 1day)."""
        f = values.copy()
        f["_ts"] = pd.to_datetime(f["datetime"], format="ISO8601")
        self.series[(symbol, interval)] = f.sort_values("_ts", kind="stable").reset_index(drop=True)

    def throttle(self, n: int) -> None:
        with self._lock:
            self._script.extend((429, MINUTE_429) for _ in range(n))

    def respond_with(self, body: dict, n: int = 1) -> None:
        """Answer the next `n` requests with this exact error body (in the current error mode)."""
        with self._lock:
            self._bodies.extend(body for _ in range(n))

    def server_errors(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._script.extend((status, "") for _ in range(n))

    @property
    def time_series_requests(self) -> int:
        return self.count("/time_series")

    def _error(self, code: int, message: str) -> Reply:
        body = orjson.dumps({"code": code, "message": message, "status": "error"})
        return Reply(200 if self.error_mode == "body" else code, body, {"Content-Type": "application/json"})

    def handle(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if self.latency:
            threading.Event().wait(self.latency)
        if path != "/time_series":
            return Reply(404, b'{"code":404,"message":"not found","status":"error"}')
        if headers.get("Authorization") != f"apikey {self.api_key}":
            return self._error(401, BAD_KEY)
        with self._lock:
            scripted = self._script.popleft() if self._script else None
            recorded = self._bodies.popleft() if self._bodies and scripted is None else None
        if recorded is not None:
            status = 200 if self.error_mode == "body" else int(recorded.get("code", 400))
            return Reply(status, orjson.dumps(recorded), {"Content-Type": "application/json"})
        if scripted is not None:
            code, msg = scripted
            if code >= 500:
                return Reply(code, b"<html>502 Bad Gateway</html>")
            return self._error(code, msg)
        if self.daily_quota_spent:
            return self._error(
                429,
                "You have run out of API credits for the day. 1316 API credits were used, with the current limit being 800.",
            )
        sym, interval = params.get("symbol", ""), params.get("interval", "")
        if interval not in INTERVALS:
            return self._error(
                400,
                f"Invalid **interval** provided: {interval}. Supported intervals: 1min, 5min, 15min, 30min, 45min, 1h, 2h, 4h, 8h, 1day, 1week, 1month",
            )
        if sym in self.invalid_symbols or not any(k[0] == sym for k in self.series):
            return self._error(
                400,
                f"**symbol** not found: {sym}. Please specify it correctly according to API Documentation.",
            )
        if params.get("timezone") != "UTC":
            return self._error(400, "fake: this fake only serves timezone=UTC (the adapter must send it)")
        f = self.series.get((sym, interval))
        if f is None:
            return self._error(400, NO_DATA)
        ts = f["_ts"]
        mask = np.ones(len(f), dtype=bool)
        if "start_date" in params:
            mask &= (ts >= pd.Timestamp(params["start_date"])).to_numpy()
        if "end_date" in params:
            mask &= (ts <= pd.Timestamp(params["end_date"])).to_numpy()
        rows = f[mask].drop(columns="_ts")
        if rows.empty:
            return self._error(400, NO_DATA)
        rows = rows.tail(int(params.get("outputsize", 30)))
        if params.get("order", "desc").lower() == "desc":
            rows = rows.iloc[::-1]
        meta = {
            "symbol": sym,
            "interval": interval,
            "currency_base": "Euro",
            "currency_quote": "US Dollar",
            "type": "Physical Currency",
        }
        values = rows.to_dict("records")
        return Reply(
            200,
            orjson.dumps({"meta": meta, "values": values, "status": "ok"}),
            {"Content-Type": "application/json", "api-credits-used": "1"},
        )
