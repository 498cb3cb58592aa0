"""FakeBinance (REST `/api/v3/klines`) and a data.binance.vision archive writer/server.

Reusable by end-to-end tests and benchmarks: `generate_klines` makes a year of 1m candles (525,600 rows)
with numpy in well under a second; prices are formatted to Binance's 8-decimal strings per page, when
served, so generation stays cheap. Misbehaviour switches are plain methods/attributes (see FakeBinance).
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster_tests.fakes.server import FakeServer, Reply

KLINE_FIELDS = [
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trades", "taker_buy_base", "taker_buy_quote", "ignore",
]  # fmt: skip
FLOAT_FIELDS = ["open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base", "taker_buy_quote"]


def generate_klines(
    start: str | pd.Timestamp, periods: int, timeframe: str = "1m", seed: int = 0
) -> pd.DataFrame:
    """Deterministic klines in wire layout: int64 times, float64 prices (formatted when served).

    Every 7th candle is a zero-trade candle (O=H=L=C=previous close, volume 0), like real quiet minutes.
    """
    rng = np.random.default_rng(seed)
    step = timeframes.seconds(timeframe) * 1000
    t0 = pd.Timestamp(start, tz="UTC") if pd.Timestamp(start).tzinfo is None else pd.Timestamp(start)
    ot = int(t0.value // 1_000_000) + np.arange(periods, dtype="int64") * step
    close = np.round(30000 * np.exp(np.cumsum(rng.normal(0, 5e-4, periods))), 2)
    open_ = np.round(np.concatenate([[close[0]], close[:-1]]), 2)
    zero = np.arange(periods) % 7 == 3
    close = np.where(zero, open_, close)
    high = np.round(np.maximum(open_, close) * (1 + np.where(zero, 0, rng.uniform(0, 1e-3, periods))), 2)
    low = np.round(np.minimum(open_, close) * (1 - np.where(zero, 0, rng.uniform(0, 1e-3, periods))), 2)
    vol = np.where(zero, 0.0, np.round(rng.uniform(0.1, 50, periods), 8))
    trades = np.where(zero, 0, rng.integers(1, 500, periods)).astype("int64")
    return pd.DataFrame({
        "open_time": ot, "open": open_, "high": high, "low": low, "close": close, "volume": vol,
        "close_time": ot + step - 1, "quote_volume": np.round(vol * close, 8), "trades": trades,
        "taker_buy_base": np.round(vol / 2, 8), "taker_buy_quote": np.round(vol * close / 2, 8), "ignore": "0",
    })  # fmt: skip


def wire_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame exactly as it goes on the wire: float columns as 8-decimal strings, others unchanged."""
    out = frame[KLINE_FIELDS].copy()
    for c in FLOAT_FIELDS:
        if out[c].dtype.kind == "f":
            out[c] = np.char.mod("%.8f", out[c].to_numpy()).astype(object)
    out["ignore"] = out["ignore"].astype(str)
    return out


class FakeBinance(FakeServer):
    """Binance spot `/api/v3/klines` + `/api/v3/time` over real HTTP.

    Switches (all thread-safe; counts are "next N klines requests"):
    - `throttle(n, retry_after)`: 429 + Retry-After + -1003 body
    - `ban(until_ms)`: 418 with the real "IP banned until <ms>" body, until `unban()`
    - `ban_for(seconds)`: the next klines request triggers a ban lasting `seconds` (418 + Retry-After +
      the "IP banned until <ms>" body); it ends by itself. Every klines request received while a ban is
      active, other than the one that triggered it, is recorded in `requests_while_banned` (real Binance
      lengthens the ban for each of them)
    - `server_errors(n, status)`: 5xx
    - `slow(n, seconds)`: delay before answering (to trip client timeouts); `latency` applies to all
    - `duplicates = k`: each page also repeats the k candles before startTime (overlapping pages)
    - `malformed = True`: one row per page is cut to 11 fields
    - `invalid_symbols`: symbols answered with 400 {"code":-1121,"msg":"Invalid symbol."}
    - `weight_offset`: added to the X-MBX-USED-WEIGHT-1M header (simulate other clients on the IP)
    - `used_weight_header = False`: no X-MBX-USED-WEIGHT-1M header (a client can only count its own)
    - `enforce_weight(limit, window_seconds, ban_after_429s, ban_seconds)`: Binance at its limit, scaled
      down: a klines request (weight 2) that would take the window's weight above `limit` gets a 429
      (not counted), and `ban_after_429s` 429s in a row trigger a `ban_seconds` 418 ban (as `ban_for`);
      the used-weight header then counts that window. `window_weights` (window id -> weight served),
      `max_window_weight` and `throttled` (429s sent) record what the clients did
    Counters: `received` (every request), `klines_requests`, `max_in_flight`, `requests_while_banned`.
    """

    def __init__(
        self,
        series: dict[tuple[str, str], pd.DataFrame] | None = None,
        *,
        latency: float = 0.0,
        max_limit: int = 1000,
    ):
        super().__init__()
        self.series: dict[tuple[str, str], pd.DataFrame] = {}
        self._wire_cache: dict[tuple[str, str], tuple[pd.DataFrame, np.ndarray]] = {}
        for (sym, tf), f in (series or {}).items():
            self.add(sym, tf, f)
        self.latency = latency
        self.max_limit = max_limit
        self.duplicates = 0
        self.malformed = False
        self.invalid_symbols: set[str] = set()
        self.weight_offset = 0
        self._script: collections.deque[Reply] = collections.deque()
        self._ban_until: int | None = None
        self._ban_armed: float | None = None  # ban_for(seconds) waiting for its trigger request
        self._ban_timed = False  # the active ban ends by itself at _ban_until
        self.requests_while_banned: list[dict[str, str]] = []
        self._weight: dict[int, int] = {}
        self.weight_window = 60.0  # seconds the used-weight header (and enforce_weight) counts over
        self.used_weight_header = True
        self.weight_limit: int | None = None
        self.ban_after_429s = 3
        self.limit_ban_seconds = 10.0
        self.throttled = 0
        self._throttled_in_row = 0
        self._in_flight = 0
        self.max_in_flight = 0

    def add(self, symbol: str, interval: str, frame: pd.DataFrame) -> None:
        f = frame[KLINE_FIELDS].sort_values("open_time", kind="stable").reset_index(drop=True)
        self.series[(symbol, interval)] = f

    def _wire_rows(self, symbol: str, interval: str, frame: pd.DataFrame) -> np.ndarray:
        """The series in wire layout as an object array, formatted once per series frame (a year of 1m
        is ~530 pages; formatting each page's prices again made the server, not the client, the limit)."""
        with self._lock:  # formatted by one thread; the others wait for it rather than repeat it
            cached = self._wire_cache.get((symbol, interval))
            if cached is None or cached[0] is not frame:
                cached = (frame, wire_strings(frame).to_numpy(dtype=object))
                self._wire_cache[(symbol, interval)] = cached
            return cached[1]

    # ----------------------------------------------------------------------------- switches
    def throttle(self, n: int, retry_after: float = 0) -> None:
        body = orjson.dumps(
            {
                "code": -1003,
                "msg": "Too much request weight used; current limit is 6000 request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
            }
        )
        with self._lock:
            self._script.extend(
                Reply(429, body, {"Retry-After": str(retry_after), "Content-Type": "application/json"})
                for _ in range(n)
            )

    def server_errors(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._script.extend(Reply(status, b"<html>Service Unavailable</html>") for _ in range(n))

    def slow(self, n: int, seconds: float) -> None:
        with self._lock:
            self._script.extend(Reply(-1, b"", delay=seconds) for _ in range(n))

    def enforce_weight(
        self, limit: int, window_seconds: float = 60.0, *, ban_after_429s: int = 3, ban_seconds: float = 10.0
    ) -> None:
        with self._lock:
            self.weight_limit, self.weight_window = limit, window_seconds
            self.ban_after_429s, self.limit_ban_seconds = ban_after_429s, ban_seconds
            self._weight.clear()

    @property
    def window_weights(self) -> dict[int, int]:
        with self._lock:
            return dict(self._weight)

    @property
    def max_window_weight(self) -> int:
        with self._lock:
            return max(self._weight.values(), default=0)

    def ban(self, until_ms: int) -> None:
        self._ban_until = until_ms

    def ban_for(self, seconds: float) -> None:
        with self._lock:
            self._ban_armed = seconds

    def unban(self) -> None:
        self._ban_until = None
        self._ban_timed = False

    @property
    def ban_ends_ms(self) -> int | None:
        """End of the current (or last) ban, epoch ms."""
        return self._ban_until

    @property
    def klines_requests(self) -> int:
        return self.count("/api/v3/klines")

    # ------------------------------------------------------------------------------ serving
    def handle(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if path == "/api/v3/time":
            return Reply(
                200, orjson.dumps({"serverTime": int(pd.Timestamp.now(tz="UTC").value // 1_000_000)})
            )
        if path != "/api/v3/klines":
            return Reply(404, b'{"code":-1,"msg":"not found"}')
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.latency:
                threading.Event().wait(self.latency)
            return self._klines(params)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _weight_headers(self) -> dict[str, str]:
        return self._charge()[1]

    def _charge(self) -> tuple[Reply | None, dict[str, str]]:
        """Count the request's weight in its window (one lock: concurrent requests cannot both take the
        last units); with `enforce_weight`, refuse it with a 429 (or the 418 ban it earns) instead."""
        now_ns = pd.Timestamp.now(tz="UTC").value
        window = int(now_ns // int(self.weight_window * 1e9))
        with self._lock:
            used = self._weight.get(window, 0)
            if self.weight_limit is not None and used + 2 > self.weight_limit:
                self.throttled += 1
                self._throttled_in_row += 1
                if self._throttled_in_row >= self.ban_after_429s:
                    self._throttled_in_row = 0
                    self._ban_until = now_ns // 1_000_000 + int(self.limit_ban_seconds * 1000)
                    self._ban_timed = True
                    msg = f"Way too much request weight used; IP banned until {self._ban_until}."
                    return Reply(418, orjson.dumps({"code": -1003, "msg": msg}), {
                        "Retry-After": str(int(-(-self.limit_ban_seconds // 1))),
                        "Content-Type": "application/json"}), {}  # fmt: skip
                wait = (window + 1) * self.weight_window - now_ns / 1e9
                body = orjson.dumps({"code": -1003, "msg": f"Too much request weight used; current limit is "
                                     f"{self.weight_limit} request weight per {self.weight_window:g} s."})
                return Reply(429, body, {"Retry-After": str(max(1, math.ceil(wait))),
                                         "Content-Type": "application/json"}), {}  # fmt: skip
            self._throttled_in_row = 0
            self._weight[window] = used + 2
            used = used + 2 + self.weight_offset
        if not self.used_weight_header:
            return None, {"Content-Type": "application/json"}
        return None, {"X-MBX-USED-WEIGHT-1M": str(used), "Content-Type": "application/json"}

    def _banned_reply(self, params: dict[str, str]) -> Reply | None:
        """The 418 for a request arriving while banned (recorded), or None when not banned."""
        now_ms = int(pd.Timestamp.now(tz="UTC").value // 1_000_000)
        headers = {"Content-Type": "application/json"}
        with self._lock:
            if self._ban_armed is not None:  # this request triggers the ban
                self._ban_until, self._ban_timed = now_ms + int(self._ban_armed * 1000), True
                headers["Retry-After"] = str(int(-(-self._ban_armed // 1)))
                self._ban_armed = None
            elif self._ban_until is None or (self._ban_timed and now_ms >= self._ban_until):
                return None
            else:
                self.requests_while_banned.append(dict(params))
                if self._ban_timed:
                    headers["Retry-After"] = str(max(1, -(-(self._ban_until - now_ms) // 1000)))
            until = self._ban_until
        msg = f"Way too much request weight used; IP banned until {until}. Please use WebSocket Streams for live updates to avoid bans."
        return Reply(418, orjson.dumps({"code": -1003, "msg": msg}), headers)

    def _klines(self, params: dict[str, str]) -> Reply:
        banned = self._banned_reply(params)
        if banned is not None:
            return banned
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        if scripted is not None and scripted.status != -1:
            return scripted
        delay = scripted.delay if scripted is not None else 0.0
        refused, headers = self._charge()
        if refused is not None:
            return refused
        sym, interval = params.get("symbol", ""), params.get("interval", "")
        if not sym:
            return Reply(
                400,
                orjson.dumps(
                    {
                        "code": -1102,
                        "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                    }
                ),
                headers,
            )
        if sym in self.invalid_symbols or not any(k[0] == sym for k in self.series):
            return Reply(400, orjson.dumps({"code": -1121, "msg": "Invalid symbol."}), headers, delay)
        if interval not in timeframes.TIMEFRAMES:
            return Reply(400, orjson.dumps({"code": -1120, "msg": "Invalid interval."}), headers, delay)
        f = self.series.get((sym, interval))
        if f is None:
            return Reply(200, b"[]", headers, delay)
        limit = min(int(params.get("limit", 500)), self.max_limit)
        ot = f["open_time"].to_numpy()
        i = int(np.searchsorted(ot, int(params["startTime"]), "left")) if "startTime" in params else 0
        j = int(np.searchsorted(ot, int(params["endTime"]), "right")) if "endTime" in params else len(ot)
        i0 = max(0, i - self.duplicates)
        rows: list[Any] = self._wire_rows(sym, interval, f)[i0 : min(j, i + limit)].tolist()
        if self.malformed and rows:
            rows[len(rows) // 2] = rows[len(rows) // 2][:11]
        return Reply(200, orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY), headers, delay)


# ------------------------------------------------------------------------------------------ archive
def write_archive(
    root: Path,
    frame: pd.DataFrame,
    symbol: str,
    interval: str,
    *,
    micros: bool = False,
    header: bool = False,
    bad_checksum_days: tuple[str, ...] = (),
    missing_checksum_days: tuple[str, ...] = (),
) -> list[str]:
    """Write data.binance.vision daily zips + `.zip.CHECKSUM` under `root`; returns the days written.

    `micros` writes open/close times in microseconds (the 2025+ spot format); `header` adds a header row.
    """
    base = root / "data" / "spot" / "daily" / "klines" / symbol / interval
    base.mkdir(parents=True, exist_ok=True)
    wire = wire_strings(frame)
    if micros:
        wire["open_time"] = wire["open_time"].astype("int64") * 1000 + 0
        wire["close_time"] = wire["close_time"].astype("int64") * 1000 + 999
    days = pd.to_datetime(frame["open_time"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    written = []
    for day, rows in wire.groupby(days.to_numpy(), sort=True):
        name = f"{symbol}-{interval}-{day}"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{name}.csv", rows.to_csv(header=header, index=False, lineterminator="\n"))
        data = buf.getvalue()
        (base / f"{name}.zip").write_bytes(data)
        digest = hashlib.sha256(data + (b"x" if day in bad_checksum_days else b"")).hexdigest()
        if day not in missing_checksum_days:
            (base / f"{name}.zip.CHECKSUM").write_text(f"{digest}  {name}.zip\n")
        written.append(str(day))
    return written


class FakeArchive(FakeServer):
    """Serves a directory written by `write_archive` over HTTP (404 for anything missing)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = Path(root).resolve()

    def handle(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Reply:
        p = (self.root / path.lstrip("/")).resolve()
        if self.root not in p.parents or not p.is_file():
            return Reply(404, b"<Error><Code>NoSuchKey</Code></Error>")
        return Reply(200, p.read_bytes(), {"Content-Type": "application/zip"})
