"""Kafka destination: one record per candle, keyed by symbol, from an idempotent producer.

Topic: the `topic` template (default `{feed}.{table}`, e.g. `forex.normalized_ohlcv_1h`), created
when missing (`create_topics`, with `partitions` and the broker's default replication). Record: key
the display symbol (`EUR/USD`), so all candles of a symbol land in one partition in ts order; value
the candle's JSON (stream_base); header `message_id` = `<feed>.<table>.<symbol_key>.<ts ms>`. The
record timestamp is the publish time, not the candle's: topic retention (`retention.ms`) would
otherwise delete backfilled history as soon as it arrived.

Delivery: `enable.idempotence` (acks=all, ordered, no duplicates from the producer's own retries
within one producer session) and one `flush()` per `batch_size` records, which waits until the
broker has acknowledged every record of the batch; a record not acknowledged within
`timeout_seconds` fails the publish.

Duplicates: idempotence does not cover a re-publish. A retried Dagster step writes its candles
again as new records (same key, same `message_id`); Kafka keeps both. Consumers drop what they have
seen by `message_id` (or key + `ts`). Not supported yet: TLS/SASL settings.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any, ClassVar

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import Field, field_validator

from data_puller_dagster.io.destinations.stream_base import (
    Messages,
    StreamBase,
    StreamOptions,
    StreamPublishError,
    StreamUnreachableError,
    batches,
    check_template,
    name_values,
    render_name,
)
from data_puller_dagster.io.tables import TableRef

TOPIC_NAME = re.compile(r"(?!\.\.?$)[A-Za-z0-9._\-]{1,249}")  # Kafka's rule
_SERVER = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


class KafkaOptions(StreamOptions):
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of brokers to bootstrap from"
    )
    topic: str = Field(
        "{feed}.{table}", description="Topic name template: {feed}, {table}, {timeframe}, {symbol_key}"
    )
    create_topics: bool = Field(True, description="Create a missing topic (else a missing topic is an error)")
    partitions: int = Field(1, gt=0, le=10_000, description="Partitions of a topic this destination creates")
    linger_ms: int = Field(
        100, ge=0, le=60_000, description="librdkafka linger.ms: how long records wait to fill a request"
    )
    stats_interval_ms: int = Field(
        0, ge=0, le=60_000,
        description="librdkafka statistics interval; > 0 adds the producer id and Produce request count "
        "to the publish metadata (waits up to one interval after the last batch)",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        servers = [s.strip() for s in v.split(",") if s.strip()]
        bad = [s for s in servers if not _SERVER.match(s) or not 0 < int(_SERVER.match(s).group(2)) < 65536]  # type: ignore[union-attr]
        if not servers or bad:
            raise ValueError(
                f"bootstrap_servers {v!r}: expected host:port[,host:port...] (e.g. 127.0.0.1:9092); bad: {bad}"
            )
        return ",".join(servers)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        return check_template(v, ("feed", "table", "timeframe", "symbol_key"), "topic name", TOPIC_NAME)


class KafkaDestination(StreamBase):
    """Publishes candles to Kafka topics with an idempotent producer, one flush per batch."""

    name: ClassVar[str] = "kafka"
    Options: ClassVar[type[KafkaOptions]] = KafkaOptions
    options: KafkaOptions

    def __init__(self, options: KafkaOptions):
        super().__init__(options)
        self._producer: Producer | None = None
        self._known_topics: set[str] = set()
        self._errors: list[KafkaError] = []
        self._stats: dict[str, Any] | None = None
        self._stats_seen = 0

    def topic_name(self, table: TableRef, key: str) -> str:
        return render_name(self.options.topic, name_values(table, key), "topic name", TOPIC_NAME)

    # ------------------------------------------------------------------ connection
    def _base_config(self) -> dict[str, Any]:
        o = self.options
        return {
            "bootstrap.servers": o.bootstrap_servers,
            "socket.connection.setup.timeout.ms": int(o.connect_timeout_seconds * 1000),
            "client.id": "data-puller-dagster",
        }

    def _connect(self) -> Producer:
        if self._producer is not None:
            return self._producer
        o = self.options
        self._check_reachable()
        config = {
            **self._base_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": o.linger_ms,
            "message.timeout.ms": int(o.timeout_seconds * 1000),
            "queue.buffering.max.messages": max(100_000, o.batch_size),
            "delivery.report.only.error": True,
            "on_delivery": self._delivered,
            "error_cb": self._client_error,
        }
        if o.stats_interval_ms:
            config |= {"statistics.interval.ms": o.stats_interval_ms, "stats_cb": self._on_stats}
        self._producer = Producer(config)
        return self._producer

    def _check_reachable(self) -> None:
        """Fail in milliseconds when no bootstrap server accepts TCP connections (librdkafka itself
        would keep reconnecting until `message.timeout.ms`)."""
        causes = []
        for server in self.options.bootstrap_servers.split(","):
            host, port = server.rsplit(":", 1)
            try:
                socket.create_connection((host.strip("[]"), int(port)), self.options.connect_timeout_seconds).close()
                return
            except OSError as e:
                causes.append(f"{server}: {_cause(e)}")
        raise StreamUnreachableError(
            f"kafka: cannot reach any bootstrap server ({'; '.join(causes)}); check bootstrap_servers or start the broker"
        )

    def _ensure_topics(self, producer: Producer, topics: list[str]) -> None:
        missing = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
        if not missing:
            return
        try:
            existing = set(producer.list_topics(timeout=self.options.connect_timeout_seconds).topics)
        except KafkaException as e:
            raise StreamUnreachableError(
                f"kafka: no metadata from {self.options.bootstrap_servers}: {e.args[0].str()}"
            ) from None
        absent = [t for t in missing if t not in existing]
        if absent and not self.options.create_topics:
            raise StreamPublishError(f"kafka: topic(s) {absent} do not exist; create them or set create_topics: true")
        if absent:
            admin = AdminClient(self._base_config())
            futures = admin.create_topics(
                [NewTopic(t, num_partitions=self.options.partitions) for t in absent],
                request_timeout=self.options.timeout_seconds,
            )
            for topic, future in futures.items():
                try:
                    future.result()
                except KafkaException as e:
                    if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise StreamPublishError(f"kafka: cannot create topic {topic!r}: {e.args[0].str()}") from None
            producer.list_topics(timeout=self.options.connect_timeout_seconds)  # learn the new leaders now
        self._known_topics.update(missing)

    # ------------------------------------------------------------------ callbacks
    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err)

    def _client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._errors.append(err)

    def _on_stats(self, text: str) -> None:
        self._stats = orjson.loads(text)
        self._stats_seen += 1

    # ------------------------------------------------------------------ publishing
    def _send(self, table: TableRef, messages: Messages, batch_size: int) -> dict[str, Any]:
        topics = list(dict.fromkeys(self.topic_name(table, key) for key, _, _, _ in messages.runs))
        md: dict[str, Any] = {"location": f"kafka {self.options.bootstrap_servers} topic(s) {', '.join(topics)}"}
        if not len(messages):
            return {**md, "published": 0, "flushes": 0}
        producer = self._connect()
        self._ensure_topics(producer, topics)
        topic_of = {key: self.topic_name(table, key) for key, _, _, _ in messages.runs}
        keys = {key: display.encode() for key, display, _, _ in messages.runs}
        self._errors.clear()
        started, flushes = time.monotonic(), 0
        for rows in batches(range(len(messages)), batch_size):
            for i in rows:
                key = messages.keys[i]
                record = {"value": messages.payloads[i], "key": keys[key], "headers": [("message_id", messages.ids[i])]}
                try:
                    producer.produce(topic_of[key], **record)
                except BufferError:  # local queue full (a batch larger than the queue): drain, then retry
                    producer.flush(self.options.timeout_seconds)
                    producer.produce(topic_of[key], **record)
            left = producer.flush(self.options.timeout_seconds)
            flushes += 1
            if self._errors:
                raise StreamPublishError(f"kafka: the broker did not take a record: {self._errors[0].str()}")
            if left:
                raise StreamPublishError(
                    f"kafka: {left} record(s) not acknowledged within {self.options.timeout_seconds:g} s"
                )
        md |= {"published": len(messages), "flushes": flushes, "seconds": round(time.monotonic() - started, 3)}
        return md | self._stats_metadata(producer)

    def _stats_metadata(self, producer: Producer) -> dict[str, Any]:
        """librdkafka's own counters (when stats are on): the producer id the broker assigned (the
        idempotent producer is active) and the Produce requests sent so far by this producer."""
        interval = self.options.stats_interval_ms
        if not interval:
            return {}
        seen, deadline = self._stats_seen, time.monotonic() + 3 * interval / 1000
        while self._stats_seen < seen + 2 and time.monotonic() < deadline:  # a snapshot taken after the flush
            producer.poll(interval / 1000)
        stats = self._stats or {}
        eos = stats.get("eos", {})
        return {
            "kafka_idempotence": eos.get("idemp_state"),
            "kafka_producer_id": eos.get("producer_id"),
            "kafka_produce_requests": sum(b.get("req", {}).get("Produce", 0) for b in stats.get("brokers", {}).values()),
        }

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.options.timeout_seconds)
            self._producer = None


def _cause(e: OSError) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return "name does not resolve"
    if isinstance(e, TimeoutError):
        return "timed out"
    return type(e).__name__
