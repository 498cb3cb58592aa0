"""One contract for every stream destination, against real brokers: Redis (127.0.0.1:6379) and
RabbitMQ (127.0.0.1:5672), which every machine runs, and a tansu Kafka-protocol broker started by
servers/kafka.py. Each broker is read back with its own client (redis-py, pika, confluent-kafka).

What is proven per broker: a real two-symbol, several-day candle frame arrives with every value
exact and in ts order per symbol; a second publish of the same slice (a Dagster step retry) makes
no consumer see a candle twice (Redis: the broker refuses it; RabbitMQ/Kafka: the copies carry the
same deterministic id, and deduplicating on it restores the slice exactly); batch_size is visible at
the broker or on the wire; bad options and unreachable brokers fail at once with clear messages and
no secrets. Under CI=true an unreachable Redis/RabbitMQ fails these tests instead of skipping them.

The webhook and websocket_server streams have no broker: the broker tests read them back through a
real HTTP receiver / websockets subscriber started by the test (their modules); their option and
failure tests (which differ: a required URL, retries; a server that binds a port) live there too.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import orjson
import pandas as pd
import pika
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import ValidationError

from data_puller_dagster.io.destinations.kafka_store import KafkaDestination
from data_puller_dagster.io.destinations.rabbitmq_store import RabbitMQDestination
from data_puller_dagster.io.destinations.redis_stream_store import RedisStreamDestination
from data_puller_dagster.io.destinations.stream_base import (
    StreamPublishError,
    StreamUnreachableError,
)
from data_puller_dagster.io.errors import FrameContractError
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.transform.canonical import CANONICAL_DTYPES
from data_puller_dagster_tests.io.conftest import candles
from data_puller_dagster_tests.io.test_webhook_destination import WebhookBroker
from data_puller_dagster_tests.io.test_websocket_server_destination import WebSocketBroker
from data_puller_dagster_tests.servers.kafka import free_port

KINDS = ["redis_stream", "rabbitmq", "kafka"]
# Streams without a broker, read back by a receiver / subscriber of the test's own (see their modules).
PUSH_KINDS = {"webhook": WebhookBroker, "websocket_server": WebSocketBroker}
REDIS_URL = os.environ.get("DATA_PULLER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("DATA_PULLER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
SYMBOLS = {"EURUSD": "EUR/USD", "GBPUSD": "GBP/USD"}
D1, DAYS = date(2024, 1, 4), 5  # Thursday: the slice spans a forex weekend (a real gap)
SECRET = "s3cr3t-Pw"


def frame(start: date = D1, days: int = DAYS) -> pd.DataFrame:
    return pd.concat(
        [candles("EUR/USD", start, days), candles("GBP/USD", start, days, seed_offset=40)], ignore_index=True
    )


def need(url: str, what: str) -> None:
    """Skip locally, FAIL under CI=true, when the service every machine runs is not there."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or {"redis": 6379, "amqp": 5672}[parts.scheme]
    try:
        socket.create_connection((host, port), 3).close()
    except OSError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} at {host}:{port} unreachable under CI: {e}")
        pytest.skip(f"{what} at {host}:{port} unreachable: {e}")


class Broker:
    """One broker under test: builds its destination on unique names, reads everything back with the
    broker's own client as (symbol, message id, candle dict, transport details), removes its names."""

    kind = ""

    def __init__(self) -> None:
        self.feed = f"t{uuid.uuid4().hex[:10]}"
        self.table = TableRef(self.feed, "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
        self.part = PartitionSlice(SYMBOLS, D1, date(2024, 1, D1.day + DAYS - 1))

    def destination(self, **options: Any) -> Any: ...
    def consume(self, expected: int) -> list[dict[str, Any]]: ...
    def cleanup(self) -> None: ...


class RedisBroker(Broker):
    kind = "redis_stream"

    def __init__(self) -> None:
        super().__init__()
        self.r = redis.Redis.from_url(REDIS_URL)

    def destination(self, **options: Any) -> RedisStreamDestination:
        return RedisStreamDestination(RedisStreamDestination.Options(url=REDIS_URL, **options))

    def streams(self) -> list[str]:
        return [f"{self.feed}:{self.table.name}:{k}" for k in sorted(SYMBOLS)]  # the default template

    def consume(self, expected: int) -> list[dict[str, Any]]:
        out = []
        for stream in self.streams():
            for entry_id, fields in self.r.xrange(stream):
                out.append({"id": fields[b"id"].decode(), "candle": orjson.loads(fields[b"data"]),
                            "entry_id": entry_id.decode()})
        return out

    def cleanup(self) -> None:
        self.r.delete(*self.streams())
        self.r.close()


class RabbitBroker(Broker):
    kind = "rabbitmq"

    def __init__(self) -> None:
        super().__init__()
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.ch = self.conn.channel()
        self.exchange = f"{self.feed}.{self.table.name}"
        # The exchange as the destination declares it, and a queue bound before anything is published.
        self.ch.exchange_declare(self.exchange, "topic", durable=True)
        self.queue = self.bind(f"{self.feed}.all")

    def bind(self, name: str, **arguments: Any) -> str:
        self.ch.queue_declare(name, arguments=arguments or None, auto_delete=False)
        self.ch.queue_bind(name, self.exchange, "#")
        return name

    def destination(self, **options: Any) -> RabbitMQDestination:
        return RabbitMQDestination(RabbitMQDestination.Options(url=AMQP_URL, exchange="{feed}.{table}", **options))

    def consume(self, expected: int, queue: str | None = None) -> list[dict[str, Any]]:
        out = []
        while (got := self.ch.basic_get(queue or self.queue, auto_ack=True))[0] is not None:
            method, props, body = got
            out.append({"id": props.message_id, "candle": orjson.loads(body), "routing_key": method.routing_key,
                        "delivery_mode": props.delivery_mode, "content_type": props.content_type})
        return out

    def cleanup(self) -> None:
        for q in (self.queue, f"{self.feed}.capped", f"{self.feed}.copy"):
            self.ch.queue_delete(q)
        self.ch.exchange_delete(self.exchange)
        self.conn.close()


class KafkaBroker(Broker):
    kind = "kafka"

    def __init__(self, bootstrap: str) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.topic = f"{self.feed}.{self.table.name}"  # the default template

    def destination(self, **options: Any) -> KafkaDestination:
        return KafkaDestination(
            KafkaDestination.Options(bootstrap_servers=self.bootstrap, stats_interval_ms=50, **options)
        )

    def consume(self, expected: int) -> list[dict[str, Any]]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.feed, "enable.auto.commit": False})
        consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        records, deadline, quiet_since = [], time.monotonic() + 20, None
        try:
            # Read until the expected count and then 1 s of silence (so extra copies would show up too).
            while time.monotonic() < deadline:
                batch = [m for m in consumer.consume(1000, 0.2) if m.error() is None]
                records += batch
                if batch or len(records) < expected:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 1.0:
                    break
        finally:
            consumer.close()
        return [{"id": dict(m.headers())["message_id"].decode(), "candle": orjson.loads(m.value()),
                 "key": m.key().decode()} for m in records]

    def cleanup(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.delete_topics([self.topic], operation_timeout=10).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - a test that failed before creating it
                pass


@pytest.fixture(params=[*KINDS, *PUSH_KINDS])
def broker(request: pytest.FixtureRequest):
    if request.param == "redis_stream":
        need(REDIS_URL, "Redis")
        b: Broker = RedisBroker()
    elif request.param == "rabbitmq":
        need(AMQP_URL, "RabbitMQ")
        b = RabbitBroker()
    elif request.param in PUSH_KINDS:
        b = PUSH_KINDS[request.param]()
    else:
        b = KafkaBroker(request.getfixturevalue("kafka_bootstrap"))
    yield b
    b.cleanup()


def decoded(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The consumed candles as a canonical frame, in the order they were consumed."""
    df = pd.DataFrame([r["candle"] for r in records])
    for c in ("ts", "fetched_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df.astype(CANONICAL_DTYPES)


def expected_ids(table: TableRef, df: pd.DataFrame) -> list[str]:
    key = df["symbol"].str.replace("/", "")
    return (f"{table.feed}.{table.name}." + key + "." + (df["ts"].astype("int64") // 10**6).astype(str)).tolist()


def per_symbol(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["candle"]["symbol"], []).append(r)
    return out


# ------------------------------------------------------------------------------------------- tests
def test_publishes_every_candle_exactly_and_in_order(broker: Broker) -> None:
    df = frame()
    shuffled = df.sample(frac=1.0, random_state=7).reset_index(drop=True)  # order is the destination's job
    dest = broker.destination()
    try:
        md = dest.publish(broker.table, shuffled, broker.part)
    finally:
        dest.close()
    assert md["rows"] == len(df) > 150 and md["published"] == len(df)
    records = broker.consume(len(df))
    assert len(records) == len(df)
    groups = per_symbol(records)
    assert sorted(groups) == ["EUR/USD", "GBP/USD"]
    for symbol, recs in groups.items():
        want = df[df["symbol"] == symbol].sort_values("ts").reset_index(drop=True)
        got = decoded(recs)
        pd.testing.assert_frame_equal(got, want, check_exact=True)  # floats, nulls, Int64, bools, µs times
        assert [r["id"] for r in recs] == expected_ids(broker.table, want)
        key = symbol.replace("/", "")
        if broker.kind == "redis_stream":
            assert [r["entry_id"] for r in recs] == [f"{i.rsplit('.', 1)[1]}-0" for i in expected_ids(broker.table, want)]
        elif broker.kind == "rabbitmq":
            assert {(r["routing_key"], r["delivery_mode"], r["content_type"]) for r in recs} == {
                (f"{broker.feed}.{key}.1h", 2, "application/json")
            }
        elif broker.kind == "kafka":
            assert {r["key"] for r in recs} == {symbol}


def test_republishing_a_slice_gives_no_consumer_a_candle_twice(broker: Broker) -> None:
    df = frame()
    dest = broker.destination()
    try:
        first = dest.publish(broker.table, df, broker.part)
        again = dest.publish(broker.table, df, broker.part)  # what a retried Dagster step does
    finally:
        dest.close()
    n = len(df)
    if broker.kind in PUSH_KINDS:
        # webhook: the copies go out under the same Idempotency-Keys and the receiver processes none of
        # them again; websocket_server: the server sends nothing it has sent already.
        assert (first["published"], again["published"]) == (n, n if broker.kind == "webhook" else 0)
        records = broker.consume(n)
        assert len(records) == n == len({r["id"] for r in records})
        return
    if broker.kind == "redis_stream":
        # Redis refuses the copies: the stream holds each candle once, and the retry sent nothing.
        assert (first["published"], again["published"], again["skipped_rows"]) == (n, 0, n)
        records = broker.consume(n)
        assert len(records) == n and len({r["id"] for r in records}) == n
        # A later, overlapping slice appends only the candles after each stream's last entry.
        later = frame(date(2024, 1, D1.day + 2), DAYS)
        dest = broker.destination()
        part = PartitionSlice(SYMBOLS, date(2024, 1, D1.day + 2), date(2024, 1, D1.day + DAYS + 1))
        md = dest.publish(broker.table, later, part)
        dest.close()
        new = later[later["ts"] > later["symbol"].map(df.groupby("symbol")["ts"].max())]
        assert md["published"] == len(new) > 0 and md["skipped_rows"] == len(later) - len(new)
        records = broker.consume(n + len(new))
        assert len(records) == n + len(new) == len({r["id"] for r in records})
        for recs in per_symbol(records).values():
            ts = [r["candle"]["ts"] for r in recs]
            assert ts == sorted(ts)
        return
    # RabbitMQ and Kafka keep both copies (neither deduplicates); each copy carries the same id, so a
    # consumer that drops ids it has seen gets every candle exactly once, in order.
    records = broker.consume(2 * n)
    assert len(records) == 2 * n
    ids = [r["id"] for r in records]
    assert len(set(ids)) == n
    for recs in per_symbol(records).values():
        half = len(recs) // 2
        assert [r["id"] for r in recs[:half]] == [r["id"] for r in recs[half:]]
        assert [r["candle"] for r in recs[:half]] == [r["candle"] for r in recs[half:]]
    seen: set[str] = set()
    deduped = [r for r in records if not (r["id"] in seen or seen.add(r["id"]))]
    for symbol, recs in per_symbol(deduped).items():
        want = df[df["symbol"] == symbol].sort_values("ts").reset_index(drop=True)
        pd.testing.assert_frame_equal(decoded(recs), want, check_exact=True)
    if broker.kind == "kafka":
        # The broker assigned a producer id: the idempotent producer was active (no duplicates from the
        # producer's own retries). It does not, and cannot, dedupe a second publish of the same candles.
        assert first["kafka_idempotence"] == again["kafka_idempotence"] == "Assigned"
        assert first["kafka_producer_id"] is not None and first["kafka_producer_id"] >= 0


def _monitored_batches(r: redis.Redis, publish: Any, prefix: str) -> list[int]:
    """XADDs per MULTI/EXEC of the connection that wrote our streams, read from Redis' MONITOR."""
    token = f"end-{uuid.uuid4().hex}"
    with r.monitor() as mon:
        publish()
        r.echo(token)
        commands = []
        for cmd in mon.listen():
            if token in cmd["command"]:
                break
            commands.append((cmd["client_address"], cmd["client_port"], cmd["command"].split(" ", 2)))
    ours = {(a, p) for a, p, words in commands if words[0] == "XADD" and words[1].startswith(prefix)}
    assert len(ours) == 1
    sizes, current = [], None
    for a, p, words in commands:
        if (a, p) not in ours:
            continue
        if words[0] == "MULTI":
            current = 0
        elif words[0] == "XADD":
            current += 1
        elif words[0] == "EXEC":
            sizes.append(current)
    return sizes


def test_batch_size_is_honoured(broker: Broker) -> None:
    df = frame()
    n = len(df)
    if broker.kind in PUSH_KINDS:
        # webhook: one request per batch; websocket_server: one hand-over to the server's loop per batch
        # (its wire carries one frame per candle).
        dest = broker.destination(batch_size=70)
        md = dest.publish(broker.table, df, broker.part, batch_size=50)  # the route's batch_size wins
        dest.close()
        records = broker.consume(n)
        assert md["batches"] == math.ceil(n / 50) and len(records) == n
        if broker.kind == "webhook":
            sizes = pd.Series([r["batch_id"] for r in records]).value_counts(sort=False).tolist()
            assert sizes == [50] * (n // 50) + [n % 50]
        return
    if broker.kind == "redis_stream":
        # MONITOR shows each batch as one MULTI ... EXEC of the publisher's connection.
        dest = broker.destination(batch_size=70)
        sizes = _monitored_batches(broker.r, lambda: dest.publish(broker.table, df, broker.part, batch_size=50),
                                   f"{broker.feed}:")
        dest.close()
        assert sizes == [50] * (n // 50) + [n % 50]  # the route's batch_size wins over the option
        assert len(broker.consume(n)) == n
    elif broker.kind == "rabbitmq":
        # A queue capped at 25 messages that rejects further publishes makes the broker nack message 26.
        # A second, uncapped queue receives every message actually sent: the publisher sends a whole
        # batch, waits for its confirms, sees the nack and stops, so the copy holds whole batches only.
        assert isinstance(broker, RabbitBroker)
        broker.bind(f"{broker.feed}.capped", **{"x-max-length": 25, "x-overflow": "reject-publish"})
        copy = broker.bind(f"{broker.feed}.copy")
        for size in (10, 40):
            dest = broker.destination(batch_size=size)
            with pytest.raises(StreamPublishError, match="refused .* message"):
                dest.publish(broker.table, df, broker.part)
            assert len(broker.consume(0, queue=copy)) == math.ceil(26 / size) * size
            broker.ch.queue_purge(f"{broker.feed}.capped")
        md = broker.destination(batch_size=40).publish(broker.table, df.iloc[:20], broker.part)
        assert (md["published"], md["confirm_waits"]) == (20, 1)
    else:
        # librdkafka's count of Produce requests on the wire: one per flushed batch (linger long enough
        # that nothing leaves before the flush).
        dest = broker.destination(batch_size=60, linger_ms=5000)
        try:
            md = dest.publish(broker.table, df, broker.part)
            before = md["kafka_produce_requests"]
            md2 = dest.publish(broker.table, df, broker.part, batch_size=n)
        finally:
            dest.close()
        assert md["flushes"] == math.ceil(n / 60) and before == math.ceil(n / 60)
        assert md2["kafka_produce_requests"] - before == 1
        assert md2["seconds"] < 4  # flush() sends at once; it did not sit out linger.ms
        assert len(broker.consume(2 * n)) == 2 * n


def test_broker_specific_edges(broker: Broker) -> None:
    df = frame()
    if broker.kind == "redis_stream":
        # MAXLEN ~ trims whole stream nodes; the trimmed candles are still not published again, because
        # XADD compares with the stream's last id, which trimming does not lower.
        assert isinstance(broker, RedisBroker)
        dest = broker.destination(maxlen=10)
        first = dest.publish(broker.table, df, broker.part)
        again = dest.publish(broker.table, df, broker.part)
        dest.close()
        assert first["published"] == len(df) and again["published"] == 0
        counts = df.groupby(df["symbol"].str.replace("/", ""))["ts"].size()
        lengths = {s.rsplit(":", 1)[1]: broker.r.xlen(s) for s in broker.streams()}
        # Redis trims only whole nodes (stream-node-max-entries, 100 by default): a stream of 117 is cut,
        # one of 63 is not.
        trimmed = [k for k, n in counts.items() if n > 110]
        assert trimmed and all(10 <= lengths[k] < counts[k] for k in trimmed), (lengths, counts.to_dict())
    elif broker.kind == "rabbitmq":
        # Messages no queue is bound for are dropped by RabbitMQ; the publish counts them.
        assert isinstance(broker, RabbitBroker)
        dest = RabbitMQDestination(RabbitMQDestination.Options(url=AMQP_URL, exchange="{feed}.unbound"))
        md = dest.publish(broker.table, df.iloc[:7], broker.part)
        broker.ch.exchange_delete(f"{broker.feed}.unbound")
        assert (md["published"], md["unroutable"]) == (7, 7)
    elif broker.kind == "kafka":
        dest = broker.destination(topic="{feed}.missing", create_topics=False)
        with pytest.raises(StreamPublishError, match=rf"\['{broker.feed}.missing'\] do not exist"):
            dest.publish(broker.table, df, broker.part)
        dest.close()
    elif broker.kind == "webhook":
        # The receiver processed the first batch but answered 500: the retry carries the same key and
        # is not processed again.
        broker.receiver.plan.append(("after", 500))  # type: ignore[attr-defined]
        md = broker.destination().publish(broker.table, df, broker.part)
        assert md["retries"] == 1 and len(broker.consume(len(df))) == len(df)
    else:
        # Another feed's table reaches no subscriber of this feed (each subscribed to {"feeds": [feed]}).
        other = TableRef("otherfeed", broker.table.name, "normalized", "forex", "1h", ("symbol", "ts"))
        dest = broker.destination()
        md = dest.publish(other, df, broker.part)
        dest.close()
        assert (md["clients"], md["queued_messages"]) == (1, 0) and broker.consume(0) == []


BAD_OPTIONS = {
    "redis_stream": [
        ({"url": f"http://user:{SECRET}@127.0.0.1:6379/0"}, "not a Redis URL"),
        ({"url": f"redis://user:{SECRET}@127.0.0.1:port/0"}, "not a valid Redis URL"),
        ({"url": f"redis://127.0.0.1:6379/0?password={SECRET}&db=x", "stream": "{feed}:{table}"}, "must contain {symbol_key}"),
        ({"stream": "{feed}:{table}:{symbol_key}:{user}"}, "placeholder {user} is not allowed"),
        ({"stream": "{feed} {table}/{symbol_key}"}, "is not valid; it must match"),
        ({"batch_size": 0}, "greater than 0"),
    ],
    "rabbitmq": [
        ({"url": f"http://guest:{SECRET}@127.0.0.1:5672/%2F"}, "not an AMQP URL"),
        ({"exchange": "amq.candles"}, "reserved by RabbitMQ"),
        ({"exchange": "candles for {feed}", "url": f"amqp://guest:{SECRET}@h/%2F"}, "is not valid; it must match"),
        ({"exchange": "{feed}.{symbol}"}, "placeholder {symbol} is not allowed"),
    ],
    "kafka": [
        ({"bootstrap_servers": "127.0.0.1"}, "expected host:port"),
        ({"topic": "{feed}/{table}"}, "is not valid; it must match"),
        ({"topic": "{feed}.{table}{x}"}, "placeholder {x} is not allowed"),
        ({"topic": "{feed"}, "malformed"),
        ({"partitions": 0}, "greater than 0"),
    ],
}
CLASSES = {"redis_stream": RedisStreamDestination, "rabbitmq": RabbitMQDestination, "kafka": KafkaDestination}


@pytest.mark.parametrize("kind", KINDS)
def test_bad_options_name_the_option_and_hide_secrets(kind: str) -> None:
    cls = CLASSES[kind]
    assert (cls.name, cls.kind) == (kind, "stream")
    for options, message in BAD_OPTIONS[kind]:
        with pytest.raises(ValidationError) as info:
            cls.Options(**options)
        text = str(info.value)
        assert message in text, (options, text)
        # Neither the message nor any error's own text shows it (`input` is left to config.py, which
        # never prints the input of a SecretStr field).
        assert SECRET not in text and all(SECRET not in e["msg"] for e in info.value.errors())
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        cls.Options(passwd=SECRET)
    # The defaults are valid and render to the documented names.
    dest = cls.from_options(cls.Options(), None)
    table = TableRef("forex", "ohlcv_4h", "derived", "forex", "4h", ("symbol", "ts"))
    name = {"redis_stream": lambda: dest.stream_name(table, "EURUSD"),
            "rabbitmq": lambda: (dest.exchange_name(table), dest.routing_key(table, "BRK.B")),
            "kafka": lambda: dest.topic_name(table, "EURUSD")}[kind]()
    assert name == {"redis_stream": "forex:ohlcv_4h:EURUSD",
                    "rabbitmq": ("data_puller.ohlcv_4h", "forex.BRK_B.4h"),
                    "kafka": "forex.ohlcv_4h"}[kind]
    # Only tables with one row per (symbol, ts) have per-candle ids; a bad batch_size is named.
    raw = TableRef("forex", "raw_ohlcv_1h", "raw", "forex", "1h", None)
    part = PartitionSlice(SYMBOLS, D1, date(2024, 1, D1.day + DAYS - 1))
    with pytest.raises(FrameContractError, match="route only layers normalized, derived, enriched"):
        dest.publish(raw, frame(), part)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        dest.publish(table, frame(), part, batch_size=0)


@pytest.mark.parametrize("kind", KINDS)
def test_unreachable_broker_fails_fast_without_secrets(kind: str) -> None:
    port = free_port()  # nothing listens there
    cls = CLASSES[kind]
    options = {
        "redis_stream": {"url": f"redis://user:{SECRET}@127.0.0.1:{port}/0"},
        "rabbitmq": {"url": f"amqp://guest:{SECRET}@127.0.0.1:{port}/%2F"},
        "kafka": {"bootstrap_servers": f"127.0.0.1:{port}"},
    }[kind]
    dest = cls(cls.Options(**options))
    table = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
    started = time.monotonic()
    with pytest.raises(StreamUnreachableError) as info:
        dest.publish(table, frame(), PartitionSlice(SYMBOLS, D1, date(2024, 1, D1.day + DAYS - 1)))
    assert time.monotonic() - started < 3
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text and "connection refused" in text and SECRET not in text
    dest.close()


def test_wrong_credentials_are_named_without_the_password() -> None:
    need(AMQP_URL, "RabbitMQ")
    need(REDIS_URL, "Redis")
    table = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
    part = PartitionSlice(SYMBOLS, D1, date(2024, 1, D1.day + DAYS - 1))
    for dest in (
        RabbitMQDestination(RabbitMQDestination.Options(url=f"amqp://guest:{SECRET}@127.0.0.1:5672/%2F")),
        RedisStreamDestination(RedisStreamDestination.Options(url=f"redis://nobody:{SECRET}@127.0.0.1:6379/0")),
    ):
        with pytest.raises(StreamUnreachableError, match="refused the credentials") as info:
            dest.publish(table, frame(), part)
        assert SECRET not in str(info.value)
        dest.close()
