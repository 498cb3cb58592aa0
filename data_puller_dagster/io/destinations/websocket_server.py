"""WebSocket server destination: live candles pushed to subscribers on `ws://host:port/`.

Protocol (text frames, JSON):

- connect to `ws://host:port/` (any other path: HTTP 404); nothing is sent until the client subscribes;
- client -> server: `{"subscribe": {"symbols": ["EUR/USD", "BTCUSDT"], "timeframes": ["1m"],
  "tables": ["normalized_ohlcv_1m"], "feeds": ["crypto"]}}`. Each key is a list or `"*"`/`["*"]` (all);
  a missing key means all. Symbols may be written as displayed (`EUR/USD`) or as keys (`EURUSD`). A new
  subscribe replaces the previous one; `{"subscribe": {"symbols": []}}` stops the flow;
- server -> client: `{"subscribed": {"symbols": [...keys] | "*", "timeframes": ..., "tables": ...,
  "feeds": ...}}` once the subscription is in force (every candle published after it matches it), or
  `{"error": "..."}` for a bad message (the connection stays open);
- server -> client, per candle: exactly the candle's JSON object every stream sends (stream_base: every
  column of the table, ISO 8601 UTC microsecond times, exact floats). Tell candles from control messages
  by their `ts` key. Per (table, symbol), candles arrive in ts order.

Why a thread with its own asyncio loop: publish() is called from synchronous pipeline code and must
never wait for a subscriber. publish() only hands the messages to the server's loop (a few ms; bounded
by `timeout_seconds`), which appends them to each matching client's queue; a per-client task sends them.
A client whose queue would exceed `queue_size` messages is disconnected with close code 1008 and a
reason (`too slow: ...`): the close frame follows the data already buffered for it, and a client that
does not read it within CLOSE_GRACE_SECONDS is aborted. Pings every `ping_interval_seconds` drop
dead peers. So no client, however slow, holds up publish or the other clients.

No duplicate on re-publish: per (table, symbol) the server remembers the last candle it sent and sends
only later candles, or an update of that same candle (still in progress before, or final now, with other
content). A re-published slice, a retried step or older history therefore send nothing (`skipped_rows`);
publish days in time order. This memory lives as long as the destination object.

The server starts on the first publish, or on start() (the stream command can call it at start-up so
clients connect before the first candle). Building the destination (config checks, loading the Dagster
definitions) opens no port. close() closes every connection (1001), stops the loop and frees the port.
Limits: no TLS and no authentication (bind to 127.0.0.1, the default, or put a proxy in front); a
publish larger than `queue_size` for one client drops that client: the server is for live micro-batches,
not for replaying history. Inside a Dagster run the server lives as long as the step's router; it is
meant for the long-lived `data-puller stream` process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import re
import threading
from collections import deque
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
import orjson
from pydantic import Field, field_validator
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from data_puller_dagster.io.destinations.stream_base import (
    Messages,
    StreamBase,
    StreamOptions,
    StreamPublishError,
    StreamUnreachableError,
)
from data_puller_dagster.io.tables import TableRef
from data_puller_dagster.symbols import InvalidSymbolError, check_name, partition_key

CLOSE_GRACE_SECONDS = 3.0  # how long a dropped or shut-down client gets to read its close frame
_IN_PROGRESS = b'"is_final":false'  # only the key can match: quotes inside JSON strings are escaped
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")
_TIMEFRAME = re.compile(r"[0-9]{1,4}[smhdwM]")
_SUBSCRIPTION_KEYS = ("symbols", "timeframes", "tables", "feeds")
_MAX_ENTRIES = 4096


class WebSocketServerOptions(StreamOptions):
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 or :: for every interface)")
    port: int = Field(8765, ge=0, le=65535, description="TCP port; 0 picks a free one (shown in `location`)")
    queue_size: int = Field(
        10_000, ge=1, le=10_000_000, description="Messages waiting per client; a client that would exceed it is dropped"
    )
    max_clients: int = Field(100, ge=1, le=100_000, description="Connections beyond this are closed with 1013")
    ping_interval_seconds: float = Field(20.0, gt=0, le=3600, description="Keepalive ping; no pong in as long: dropped")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            if not _HOSTNAME.fullmatch(v):
                raise ValueError(f"host {v!r} is neither an IP address nor a host name") from None
        return v


class _Client:
    """One subscriber: its subscription (None: not subscribed yet), its queue and its sender task."""

    __slots__ = ("ws", "pending", "wake", "sub", "sender", "dropped")

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.pending: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.sub: dict[str, frozenset[str] | None] | None = None  # key -> allowed values, None = all
        self.sender: asyncio.Task[None] | None = None
        self.dropped = False

    def wants(self, what: str, value: str) -> bool:
        allowed = self.sub[what]  # type: ignore[index]
        return allowed is None or value in allowed


def parse_subscription(raw: str | bytes) -> dict[str, frozenset[str] | None]:
    """A client's subscribe message as allowed values per key (None: all); ValueError says what is wrong."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError('not JSON; send {"subscribe": {"symbols": [...], "timeframes": [...]}}') from None
    if not isinstance(msg, dict) or set(msg) != {"subscribe"} or not isinstance(msg["subscribe"], dict):
        raise ValueError('expected {"subscribe": {"symbols": [...], "timeframes": [...]}}')
    body = msg["subscribe"]
    unknown = sorted(set(body) - set(_SUBSCRIPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; allowed: {', '.join(_SUBSCRIPTION_KEYS)}")
    out: dict[str, frozenset[str] | None] = {}
    for key in _SUBSCRIPTION_KEYS:
        values = body.get(key, "*")
        if values == "*" or values == ["*"]:
            out[key] = None
            continue
        if not isinstance(values, list) or len(values) > _MAX_ENTRIES or not all(isinstance(v, str) for v in values):
            raise ValueError(f'{key}: expected "*" or a list of at most {_MAX_ENTRIES} strings')
        try:
            if key == "symbols":
                out[key] = frozenset(partition_key(v) for v in values)
            elif key == "timeframes":
                bad = [v for v in values if not _TIMEFRAME.fullmatch(v)]
                if bad:
                    raise ValueError(f"timeframes: {bad[0]!r} is not a timeframe such as 1m, 1h, 1d")
                out[key] = frozenset(values)
            else:
                out[key] = frozenset(check_name(v, key[:-1] + " name") for v in values)
        except InvalidSymbolError as e:
            raise ValueError(f"symbols: {e}") from None
    return out


class WebSocketServerDestination(StreamBase):
    """Serves published candles to WebSocket subscribers; slow clients are dropped, never waited for."""

    name: ClassVar[str] = "websocket_server"
    Options: ClassVar[type[WebSocketServerOptions]] = WebSocketServerOptions
    options: WebSocketServerOptions

    def __init__(self, options: WebSocketServerOptions):
        super().__init__(options)
        self._lock = threading.Lock()
        self._publishing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._address: tuple[str, int] | None = None
        self._clients: set[_Client] = set()  # touched only on the server's loop
        self._closing: set[asyncio.Task[None]] = set()
        self._last: dict[tuple[str, str], tuple[int, bool, bytes]] = {}  # (table, key) -> last sent candle
        self.dropped_clients = 0

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def location(self) -> str:
        host, port = self._address or (self.options.host, self.options.port)
        return f"ws://{f'[{host}]' if ':' in host else host}:{port}/"

    def start(self) -> tuple[str, int]:
        """Listen (if not already): returns the bound (host, port). Raises StreamUnreachableError when
        the address cannot be bound."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._address is not None:
                return self._address
            ready: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
            thread = threading.Thread(target=self._run, args=(ready,), name=f"{self.name}-server", daemon=True)
            thread.start()
            where = f"{self.name}: cannot listen on {self.options.host}:{self.options.port}"
            try:
                self._address = ready.result(self.options.connect_timeout_seconds)
            except OSError as e:
                thread.join(5)
                raise StreamUnreachableError(
                    f"{where}: {e.strerror or e}; pick another port (0 picks a free one) or stop what uses it"
                ) from None
            except concurrent.futures.TimeoutError:
                raise StreamUnreachableError(f"{where}: not listening after {self.options.connect_timeout_seconds:g} s") from None
            self._thread = thread
            return self._address

    def _run(self, ready: concurrent.futures.Future[tuple[str, int]]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop, ready))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[tuple[str, int]]) -> None:
        o = self.options
        try:
            server = await serve(
                self._handler, o.host, o.port, process_request=_only_root, ping_interval=o.ping_interval_seconds,
                ping_timeout=o.ping_interval_seconds, close_timeout=CLOSE_GRACE_SECONDS, max_size=65_536,
                max_queue=16, compression=None,
            )  # fmt: skip
        except OSError as e:
            ready.set_exception(e)
            return
        self._loop, self._stop = loop, loop.create_future()
        ready.set_result(server.sockets[0].getsockname()[:2])
        await self._stop
        await self._shutdown(server)

    async def _shutdown(self, server: Server) -> None:
        server.close(close_connections=False)  # stop listening at once
        loop, deadline = asyncio.get_running_loop(), asyncio.get_running_loop().time() + CLOSE_GRACE_SECONDS
        while any(c.pending for c in self._clients) and loop.time() < deadline:
            await asyncio.sleep(0.02)  # let the clients that keep up receive what is queued for them
        for c in list(self._clients):
            self._drop(c, 1001, "server shutting down")
        if self._closing:
            await asyncio.wait(list(self._closing))
        server.close()  # connections still in their opening handshake
        try:
            await asyncio.wait_for(server.wait_closed(), CLOSE_GRACE_SECONDS + 1)
        except TimeoutError:
            for conn in list(server.connections):
                conn.transport.abort()

    def close(self) -> None:
        """Close every connection (1001), stop the loop and free the port; the next publish restarts it."""
        with self._lock:
            thread, loop, stop = self._thread, self._loop, self._stop
            self._thread = self._loop = self._stop = None
            self._address = None
        if thread is None or loop is None or stop is None:
            return
        try:
            loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))
        except RuntimeError:  # the loop already ended
            pass
        thread.join(2 * CLOSE_GRACE_SECONDS + 5)

    # -------------------------------------------------------------------------------- clients
    async def _handler(self, ws: ServerConnection) -> None:
        if len(self._clients) >= self.options.max_clients:
            await ws.close(1013, f"server full ({self.options.max_clients} clients); try again later")
            return
        client = _Client(ws)
        self._clients.add(client)
        client.sender = asyncio.create_task(self._sender(client))
        try:
            async for raw in ws:
                try:
                    sub = parse_subscription(raw)
                except ValueError as e:
                    self._enqueue(client, [orjson.dumps({"error": str(e)})])
                    continue
                client.sub = sub
                shown = {k: "*" if v is None else sorted(v) for k, v in sub.items()}
                self._enqueue(client, [orjson.dumps({"subscribed": shown})])
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            if client.sender is not None:
                client.sender.cancel()

    @staticmethod
    async def _sender(client: _Client) -> None:
        try:
            while True:
                while client.pending:
                    await client.ws.send(client.pending.popleft(), text=True)
                client.wake.clear()
                await client.wake.wait()
        except ConnectionClosed:
            pass

    def _enqueue(self, client: _Client, messages: list[bytes]) -> bool:
        if client.dropped:
            return False
        if len(client.pending) + len(messages) > self.options.queue_size:
            self._drop(client, 1008, f"too slow: more than {self.options.queue_size} messages waiting; read faster "
                                     "or subscribe to less")  # fmt: skip
            self.dropped_clients += 1
            return False
        client.pending.extend(messages)
        client.wake.set()
        return True

    def _drop(self, client: _Client, code: int, reason: str) -> None:
        """Stop sending to the client and close it, aborting the TCP connection if it does not read the
        close frame within CLOSE_GRACE_SECONDS (websockets' close() waits for the buffer to drain)."""
        client.dropped = True
        client.pending.clear()
        self._clients.discard(client)
        if client.sender is not None:
            client.sender.cancel()

        async def close() -> None:
            try:
                async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                    await client.ws.close(code, reason)
            except TimeoutError:
                client.ws.transport.abort()

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _dispatch(self, table: TableRef, runs: list[tuple[str, list[bytes]]]) -> tuple[int, int, int]:
        """On the loop: queue each run of candles (symbol key, payloads) for every matching client.
        Returns (clients subscribed, messages queued, clients dropped)."""
        timeframe, dropped_before = table.timeframe or "", self.dropped_clients
        subscribed = queued = 0
        everything = [p for _, payloads in runs for p in payloads]
        for c in list(self._clients):
            if c.sub is None or c.dropped:
                continue
            subscribed += 1
            if not (c.wants("tables", table.name) and c.wants("timeframes", timeframe) and c.wants("feeds", table.feed)):
                continue
            msgs = everything if c.sub["symbols"] is None else [p for k, ps in runs if k in c.sub["symbols"] for p in ps]
            if msgs and self._enqueue(c, msgs):
                queued += len(msgs)
        return subscribed, queued, self.dropped_clients - dropped_before

    # -------------------------------------------------------------------------------- publish
    def _fresh(self, table: TableRef, messages: Messages) -> tuple[list[tuple[str, list[bytes]]], dict[Any, Any]]:
        """Per symbol, the candles after the last one sent (or an update of that one; see the module
        doc), and each symbol's new last candle."""
        runs, last = [], {}
        for key, _, a, b in messages.runs:
            ts = messages.ts_ms[a:b]
            state = self._last.get((table.qualified, key))
            start = a
            if state is not None:
                last_ts, last_final, last_payload = state
                start = a + int(np.searchsorted(ts, last_ts, side="left"))
                if start < b and messages.ts_ms[start] == last_ts and (last_final or messages.payloads[start] == last_payload):
                    start += 1  # the same candle again: already sent
            if start < b:
                payload = messages.payloads[b - 1]
                last[(table.qualified, key)] = (int(ts[-1]), _IN_PROGRESS not in payload, payload)
                runs.append((key, messages.payloads[start:b]))
        return runs, last

    def _send(self, table: TableRef, messages: Messages, batch_size: int) -> dict[str, Any]:
        with self._publishing:  # one publish at a time: per symbol, candles leave in order
            return self._hand_over(table, messages, batch_size)

    def _hand_over(self, table: TableRef, messages: Messages, batch_size: int) -> dict[str, Any]:
        self.start()
        runs, last = self._fresh(table, messages)
        fresh = sum(len(p) for _, p in runs)
        md: dict[str, Any] = {"location": self.location, "published": fresh, "skipped_rows": len(messages) - fresh}
        subscribed = queued = dropped = n_batches = 0
        loop = self._loop
        for chunk in _chunks(runs, batch_size) or [[]]:  # an empty hand-over still counts the clients
            if loop is None:
                raise StreamPublishError(f"{self.name}: the server at {self.location} was closed during publish")
            future = asyncio.run_coroutine_threadsafe(_call(self._dispatch, table, chunk), loop)
            try:
                subscribed, q, d = future.result(self.options.timeout_seconds)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise StreamPublishError(
                    f"{self.name}: the server loop at {self.location} did not take a batch within "
                    f"{self.options.timeout_seconds:g} s"
                ) from None
            queued, dropped, n_batches = queued + q, dropped + d, n_batches + bool(chunk)
        self._last.update(last)
        return {**md, "clients": subscribed, "queued_messages": queued, "dropped_clients": dropped, "batches": n_batches}


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _chunks(runs: list[tuple[str, list[bytes]]], size: int) -> list[list[tuple[str, list[bytes]]]]:
    """The runs cut into hand-overs of at most `size` messages, keeping each symbol's order."""
    out: list[list[tuple[str, list[bytes]]]] = [[]]
    room = size
    for key, payloads in runs:
        i = 0
        while i < len(payloads):
            if room == 0:
                out.append([])
                room = size
            take = payloads[i : i + room]
            out[-1].append((key, take))
            i, room = i + len(take), room - len(take)
    return out if out[0] else []


def _only_root(connection: ServerConnection, request: Request) -> Response | None:
    if urlsplit(request.path).path != "/":
        return connection.respond(HTTPStatus.NOT_FOUND, "no such path; connect to ws://host:port/\n")
    return None
