"""The WebSocket server destination with real `websockets` clients on 127.0.0.1.

What is proven: subscriptions filter by symbol (display form or key), timeframe, table and feed, `*`
takes all, a client that has not subscribed gets nothing, a bad message gets an error and keeps the
connection; each candle arrives as exactly the bytes every stream sends (stream_base) and decodes to
the published frame; a re-published slice sends nothing twice while an in-progress candle's updates go
out; a client that never reads is dropped with 1008 while a fast one receives every candle and publish
latency stays small; close() disconnects clients (1001) and frees the port for the next server.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
import uuid
from datetime import date, timedelta
from typing import Any

import orjson
import pandas as pd
import pytest
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from data_puller_dagster.io.destinations.stream_base import StreamUnreachableError, prepare
from data_puller_dagster.io.destinations.websocket_server import WebSocketServerDestination
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.transform.canonical import CANONICAL_DTYPES
from data_puller_dagster_tests.io.conftest import candles
from data_puller_dagster_tests.servers.kafka import free_port

SYMBOLS = {"EURUSD": "EUR/USD", "GBPUSD": "GBP/USD"}
D1, DAYS = date(2024, 1, 4), 5
H1 = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
H4 = TableRef("forex", "ohlcv_4h", "derived", "forex", "4h", ("symbol", "ts"))
PART = PartitionSlice(SYMBOLS, D1, D1 + timedelta(days=DAYS - 1))


def frame(start: date = D1, days: int = DAYS) -> pd.DataFrame:
    return pd.concat(
        [candles("EUR/USD", start, days), candles("GBP/USD", start, days, seed_offset=40)], ignore_index=True
    )


def four_hourly(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["ts"].dt.hour % 4 == 0].assign(timeframe="4h").reset_index(drop=True)


def decoded(messages: list[bytes]) -> pd.DataFrame:
    df = pd.DataFrame([orjson.loads(m) for m in messages])
    for c in ("ts", "fetched_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df.astype(CANONICAL_DTYPES)


def server(**options: Any) -> WebSocketServerDestination:
    return WebSocketServerDestination.from_options(WebSocketServerDestination.Options(port=0, **options), None)


async def subscriber(url: str, subscription: dict[str, Any] | None, **kwargs: Any) -> ClientConnection:
    ws = await connect(url, **kwargs)
    if subscription is not None:
        await ws.send(orjson.dumps({"subscribe": subscription}).decode())
        ack = orjson.loads(await ws.recv())
        assert "subscribed" in ack, ack
    return ws


async def drain(ws: ClientConnection, quiet: float = 0.3) -> list[bytes]:
    """Every message until `quiet` seconds pass without one (as the bytes received)."""
    out = []
    while True:
        try:
            msg = await asyncio.wait_for(ws.recv(decode=False), quiet)
        except TimeoutError:
            return out
        out.append(msg)


class WebSocketBroker:
    """The server as a broker of the streaming contract (io/test_stream_destinations.py): each
    destination() starts a server with one real client (on its own thread and loop) subscribed to this
    broker's feed before anything is published; consume() returns what that client received. The
    messages carry no id; the consumer derives it from symbol and ts as `<feed>.<table>.<key>.<ts ms>`."""

    kind = "websocket_server"

    def __init__(self) -> None:
        self.feed = f"t{uuid.uuid4().hex[:10]}"
        self.table = TableRef(self.feed, "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
        self.part = PART
        self.received: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[WebSocketServerDestination] = []

    def destination(self, **options: Any) -> WebSocketServerDestination:
        dest = server(**options)
        dest.start()
        asyncio.run_coroutine_threadsafe(self._subscribe(dest.location), self.loop).result(5)
        self.servers.append(dest)
        return dest

    async def _subscribe(self, url: str) -> None:
        ws = await subscriber(url, {"feeds": [self.feed]})

        async def read() -> None:
            try:
                async for m in ws:
                    self.received.append(m if isinstance(m, bytes) else m.encode())
            except ConnectionClosed:
                pass

        self.loop.create_task(read())

    def consume(self, expected: int) -> list[dict[str, Any]]:
        deadline, seen, quiet_since = time.monotonic() + 10, -1, time.monotonic()
        while time.monotonic() < deadline:  # until the expected count and then 0.5 s of silence
            if len(self.received) != seen:
                seen, quiet_since = len(self.received), time.monotonic()
            elif seen >= expected and time.monotonic() - quiet_since > 0.5:
                break
            time.sleep(0.02)
        out = []
        for m in list(self.received):
            candle = orjson.loads(m)
            key, ms = candle["symbol"].replace("/", ""), pd.Timestamp(candle["ts"]).value // 10**6
            out.append({"id": f"{self.table.feed}.{self.table.name}.{key}.{ms}", "candle": candle})
        return out

    def cleanup(self) -> None:
        for dest in self.servers:
            dest.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_subscriptions_filter_and_messages_are_the_stream_bodies() -> None:
    df, dest = frame(), server()

    async def main() -> None:
        url = dest.location if dest.start() else ""
        a = await subscriber(url, {"symbols": ["EUR/USD"], "timeframes": ["1h"]})
        b = await subscriber(url, {"symbols": "*", "timeframes": ["4h"]})
        c = await subscriber(url, {"symbols": ["*"], "timeframes": "*"})
        e = await subscriber(url, {"symbols": ["GBPUSD", "EURUSD"], "tables": ["ohlcv_4h"], "feeds": ["forex"]})
        f = await subscriber(url, {"feeds": ["crypto"]})
        idle = await subscriber(url, None)  # connected, never subscribes
        bad = await subscriber(url, None)
        for message, error in [("hello", "not JSON"), ('{"subscribe": {"symbol": ["X"]}}', "unknown key(s) ['symbol']"),
                               ('{"subscribe": {"symbols": ["eur usd"]}}', "is not a valid symbol"),
                               ('{"subscribe": {"timeframes": ["7 minutes"]}}', "not a timeframe")]:  # fmt: skip
            await bad.send(message)
            assert error in orjson.loads(await bad.recv())["error"]

        md = await asyncio.to_thread(dest.publish, H1, df.sample(frac=1.0, random_state=1), PART)
        assert (md["rows"], md["published"], md["skipped_rows"], md["clients"]) == (len(df), len(df), 0, 5)
        h4 = four_hourly(df)
        md4 = await asyncio.to_thread(dest.publish, H4, h4, PART)
        got = {"c": await drain(c)}  # then everything is buffered at the other clients too
        got |= {name: await drain(ws, 0.05) for name, ws in [("a", a), ("b", b), ("e", e), ("f", f), ("idle", idle), ("bad", bad)]}

        bodies, bodies4 = prepare(H1, df, PART, "x").payloads, prepare(H4, h4, PART, "x").payloads
        assert got["c"] == bodies + bodies4  # byte for byte what every other stream sends, in stream order
        want = df[df["symbol"] == "EUR/USD"].sort_values("ts").reset_index(drop=True)
        pd.testing.assert_frame_equal(decoded(got["a"]), want, check_exact=True)
        assert got["b"] == got["e"] == bodies4 and md4["queued_messages"] == 3 * len(h4)
        assert md["queued_messages"] == len(want) + len(df)
        assert got["f"] == got["idle"] == got["bad"] == []

        # The same slice again (a retried step): nothing is sent twice. A later slice is.
        again = await asyncio.to_thread(dest.publish, H1, df, PART)
        assert (again["published"], again["skipped_rows"], again["queued_messages"]) == (0, len(df), 0)
        later = frame(D1 + timedelta(days=DAYS), 2)
        part2 = PartitionSlice(SYMBOLS, D1 + timedelta(days=DAYS), D1 + timedelta(days=DAYS + 1))
        await asyncio.to_thread(dest.publish, H1, later, part2)
        assert await drain(c) == prepare(H1, later, part2, "x").payloads
        assert decoded(await drain(a, 0.05))["ts"].tolist() == later[later["symbol"] == "EUR/USD"]["ts"].tolist()
        assert await drain(b, 0.05) == []
        for ws in (a, b, c, e, f, idle, bad):
            await ws.close()

    try:
        asyncio.run(main())
    finally:
        dest.close()


def test_in_progress_updates_go_out_and_repeats_do_not() -> None:
    base = frame().sort_values(["symbol", "ts"]).groupby("symbol").tail(1).reset_index(drop=True)
    dest = server()

    async def main() -> None:
        ws = await subscriber(dest.location if dest.start() else "", {"symbols": ["EURUSD"]})
        sent = []
        for close, final in [(1.1, False), (1.1, False), (1.2, False), (1.25, True), (1.25, True), (1.3, False)]:
            md = await asyncio.to_thread(dest.publish, H1, base.assign(close=close, is_final=final), PART)
            sent.append(md["published"])
        got = [orjson.loads(m) for m in await drain(ws)]
        assert sent == [2, 0, 2, 2, 0, 0]  # a repeat is not sent, nor anything after the final candle
        assert [(m["close"], m["is_final"]) for m in got] == [(1.1, False), (1.2, False), (1.25, True)]
        await ws.close()

    try:
        asyncio.run(main())
    finally:
        dest.close()


def _slow_socket(port: int) -> socket.socket:
    """A connected socket with a tiny receive buffer, so that a client that stops reading pushes
    back on the server quickly (as a client on a slow link would)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def test_a_slow_client_is_dropped_and_never_stalls_publish_or_the_fast_client() -> None:
    # ~34k messages (11 MB): far more than the kernel buffers (up to 4 MB here) and the queue hold.
    days, publishes = 20, 50
    base, dest = frame(days=days), server(queue_size=5000)

    async def main() -> None:
        host, port = dest.start()
        url = dest.location
        fast = await subscriber(url, {"symbols": "*"})
        slow = await subscriber(url, {"symbols": "*"}, sock=_slow_socket(port), max_queue=1)  # never reads now
        received: list[bytes] = []

        async def read_fast() -> None:
            while len(received) < publishes * len(base):
                received.append(await fast.recv(decode=False))

        reader = asyncio.create_task(read_fast())
        latencies, mds = [], []
        for i in range(publishes):  # a live-like cadence: a new slice every few ms
            shift = timedelta(days=days * i)
            part = PartitionSlice(SYMBOLS, D1 + shift, D1 + shift + timedelta(days=days - 1))
            started = time.perf_counter()
            mds.append(await asyncio.to_thread(dest.publish, H1, base.assign(ts=base["ts"] + shift), part))
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
        await asyncio.wait_for(reader, 20)

        assert sum(md["dropped_clients"] for md in mds) == 1 == dest.dropped_clients
        assert mds[-1]["clients"] == 1  # the fast one
        assert len(received) == publishes * len(base)
        last = base.assign(ts=base["ts"] + timedelta(days=days * (publishes - 1)))
        pd.testing.assert_frame_equal(decoded(received[-len(base) :]), last.sort_values(["symbol", "ts"]).reset_index(drop=True), check_exact=True)
        # Publish never waited for the slow client: bounded by building the messages and a hand-over.
        print(f"publish of {len(base)} candles: median {statistics.median(latencies) * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms")
        assert max(latencies) < 0.5 and statistics.median(latencies) < 0.1
        # The slow client, reading at last, gets what was buffered for it and then the close frame.
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(slow.recv(decode=False), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert info.value.rcvd.reason.startswith("too slow: more than 5000 messages waiting")
        await fast.close()

    try:
        asyncio.run(main())
    finally:
        dest.close()


def test_close_disconnects_clients_and_frees_the_port() -> None:
    port = free_port()
    dest = WebSocketServerDestination(WebSocketServerDestination.Options(port=port))
    assert dest.location == f"ws://127.0.0.1:{port}/"
    with pytest.raises(OSError):  # building the destination opens no port
        socket.create_connection(("127.0.0.1", port), 1)

    async def main() -> None:
        assert dest.start() == ("127.0.0.1", port) == dest.start()  # start() is idempotent
        ws = await subscriber(dest.location, {"symbols": "*"})
        received: list[bytes] = []

        async def read() -> None:
            while True:
                received.append(await ws.recv(decode=False))

        reader = asyncio.create_task(read())
        await asyncio.to_thread(dest.publish, H1, frame(), PART)
        started = time.monotonic()
        await asyncio.to_thread(dest.close)
        assert time.monotonic() - started < 1
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(reader, 2)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert len(received) == len(frame())  # what was queued was delivered before closing
        with pytest.raises(OSError):
            await connect(dest.location, open_timeout=2)

    asyncio.run(main())
    dest.close()  # idempotent
    # The port is free again: another server binds it at once, and this one restarts on publish.
    other = WebSocketServerDestination(WebSocketServerDestination.Options(port=port))
    try:
        assert other.start() == ("127.0.0.1", port)
        with pytest.raises(StreamUnreachableError, match=rf"cannot listen on 127.0.0.1:{port}: .*address already in use"):
            dest.publish(H1, frame(), PART)
    finally:
        other.close()
    assert dest.publish(H1, frame(D1 + timedelta(days=DAYS), 1), PartitionSlice(SYMBOLS, D1 + timedelta(days=DAYS), D1 + timedelta(days=DAYS)))["rows"] > 0
    dest.close()


def test_protocol_edges_and_options() -> None:
    dest = server(max_clients=1)

    async def main() -> None:
        url = dest.location if dest.start() else ""
        with pytest.raises(InvalidStatus, match="404"):
            await connect(url + "candles")
        first = await subscriber(url, None)
        second = await connect(url)
        with pytest.raises(ConnectionClosed) as info:
            await second.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013 and "server full" in info.value.rcvd.reason
        await first.close()

    try:
        asyncio.run(main())
    finally:
        dest.close()
    assert (WebSocketServerDestination.name, WebSocketServerDestination.kind) == ("websocket_server", "stream")
    assert WebSocketServerDestination.Options().port == 8765  # the defaults are valid
    for options, message in [({"host": "not a host!"}, "neither an IP address nor a host name"),
                             ({"port": 70000}, "less than or equal to 65535"), ({"queue_size": 0}, "greater than or equal to 1"),
                             ({"token": "x"}, "Extra inputs are not permitted")]:  # fmt: skip
        with pytest.raises(ValidationError, match=message):
            WebSocketServerDestination.Options(**options)
