"""RabbitMQ destination: candles as persistent messages on a durable topic exchange, publisher confirms.

Exchange: the `exchange` template (default `data_puller.{table}`), declared `topic` and durable.
Routing key: `<feed>.<symbol_key>.<timeframe>`, e.g. `forex.EURUSD.1h` (a `.` inside a symbol key,
as in `BRK.B`, becomes `_`, so the key always has three words: bind `forex.*.1h`, `*.EURUSD.#`, `#`).
Message: the candle's JSON (stream_base), `content_type` application/json, `delivery_mode` 2
(persistent), `message_id` the deterministic id `<feed>.<table>.<symbol_key>.<ts ms>`, `type` the table
(`forex.normalized_ohlcv_1h`). Per symbol, messages go out in ts order on one channel, so a queue
receives them in that order.

Delivery: publisher confirms. `batch_size` messages are sent, then the broker's confirms for all of
them are awaited (one wait per batch rather than per message, so a batch costs one round trip); a
negative confirm or no confirm within `timeout_seconds` fails the publish. Messages that no queue is
bound for are dropped by RabbitMQ (counted as `unroutable`): bind queues before publishing.

Duplicates: RabbitMQ does not deduplicate. A retried step publishes its candles again with the same
`message_id`, and consumers drop what they have seen by that id (or by routing key + `ts`).

pika's BlockingConnection waits for a confirm after every single message, so this module drives pika's
SelectConnection itself: one connection per publish, closed at its end (nothing idles between steps).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pika
import pika.exceptions
from pika.spec import Basic
from pydantic import Field, SecretStr, field_validator

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
    shown_url,
)
from data_puller_dagster.io.errors import StorageError
from data_puller_dagster.io.tables import TableRef

EXCHANGE_NAME = re.compile(r"(?!amq\.)[A-Za-z0-9_.:\-]{1,255}")  # AMQP allows these; amq.* is reserved


class RabbitMQOptions(StreamOptions):
    url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F"),
        description="amqp://user:password@host:5672/<vhost, %2F for />, or amqps://; the password is never shown",
    )
    exchange: str = Field(
        "data_puller.{table}", description="Topic exchange name template: {feed}, {table}, {timeframe}"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value()
        if not re.match(r"^amqps?://[^/?#]+", url):
            raise ValueError(f"url {shown_url(url)!r} is not an AMQP URL; use amqp://user:password@host:5672/%2F")
        try:
            pika.URLParameters(url)
        except Exception as e:  # noqa: BLE001 - pika raises ValueError, TypeError, KeyError for bad URLs
            raise ValueError(
                f"url {shown_url(url)!r} is not a valid AMQP URL ({type(e).__name__}); "
                "use amqp://user:password@host:5672/%2F"
            ) from None
        return v

    @field_validator("exchange")
    @classmethod
    def _exchange(cls, v: str) -> str:
        if v.startswith("amq."):
            raise ValueError(f"exchange name {v!r}: names starting with 'amq.' are reserved by RabbitMQ")
        return check_template(v, ("feed", "table", "timeframe"), "exchange name", EXCHANGE_NAME)


class RabbitMQDestination(StreamBase):
    """Publishes candles to a durable topic exchange with publisher confirms (one wait per batch)."""

    name: ClassVar[str] = "rabbitmq"
    Options: ClassVar[type[RabbitMQOptions]] = RabbitMQOptions
    options: RabbitMQOptions

    def __init__(self, options: RabbitMQOptions):
        super().__init__(options)
        self._shown = shown_url(options.url.get_secret_value())

    def exchange_name(self, table: TableRef) -> str:
        return render_name(self.options.exchange, name_values(table, ""), "exchange name", EXCHANGE_NAME)

    @staticmethod
    def routing_key(table: TableRef, key: str) -> str:
        if not table.timeframe:
            raise StorageError(f"rabbitmq: table {table.qualified} has no timeframe for the routing key")
        return f"{table.feed}.{key.replace('.', '_')}.{table.timeframe}"

    def _send(self, table: TableRef, messages: Messages, batch_size: int) -> dict[str, Any]:
        exchange = self.exchange_name(table)
        md: dict[str, Any] = {"location": f"{self._shown} exchange {exchange}", "exchange": exchange}
        if not len(messages):
            return {**md, "published": 0, "confirm_waits": 0, "unroutable": 0}
        o = self.options
        params = pika.URLParameters(o.url.get_secret_value())
        params.connection_attempts, params.retry_delay = 1, 0
        params.socket_timeout = params.stack_timeout = o.connect_timeout_seconds
        params.blocked_connection_timeout = o.timeout_seconds
        routing = {key: self.routing_key(table, key) for key, _, _, _ in messages.runs}
        waits = 0
        started = time.monotonic()
        with _ConfirmingChannel(params, o.connect_timeout_seconds, o.timeout_seconds, self._shown) as ch:
            ch.declare_exchange(exchange)
            for rows in batches(range(len(messages)), batch_size):
                for i in rows:
                    ch.publish(
                        exchange,
                        routing[messages.keys[i]],
                        messages.payloads[i],
                        pika.BasicProperties(
                            content_type="application/json",
                            delivery_mode=2,
                            message_id=messages.ids[i],
                            type=table.qualified,
                        ),
                    )
                ch.wait_for_confirms()
                waits += 1
            unroutable = ch.returned
        return {
            **md,
            "published": len(messages),
            "confirm_waits": waits,
            "unroutable": unroutable,
            "seconds": round(time.monotonic() - started, 3),
        }


class _ConfirmingChannel:
    """One connection and one channel in confirm mode on pika's SelectConnection, driven step by step:
    each wait runs the I/O loop until a condition holds, the broker fails, or a timeout passes."""

    def __init__(self, params: pika.URLParameters, connect_timeout: float, timeout: float, shown: str):
        self._timeout, self._shown = timeout, shown
        self._error: Exception | None = None
        self._until: Callable[[], bool] = lambda: False
        self._timed_out = False
        self._closing = False
        self._channel: Any = None
        self._pending: set[int] = set()
        self._tag = 0
        self.nacked = self.returned = 0
        self._conn = pika.SelectConnection(
            params,
            on_open_callback=self._opened,
            on_open_error_callback=self._open_failed,
            on_close_callback=self._closed,
        )
        try:
            self._wait(lambda: self._channel is not None, connect_timeout, "connecting")
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> _ConfirmingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        if not (self._conn.is_closed or self._conn.is_closing):
            try:
                self._conn.close()
            except pika.exceptions.ConnectionWrongStateError:
                return
            try:
                self._wait(lambda: self._conn.is_closed, 5.0, "closing")
            except StorageError:
                pass  # closing is best effort; the error that got us here matters more

    # ---------------------------------------------------------------- the loop
    def _wait(self, until: Callable[[], bool], timeout: float, what: str) -> None:
        if self._error is None and not until():
            self._until, self._timed_out = until, False
            timer = self._conn.ioloop.call_later(timeout, self._time_out)
            self._conn.ioloop.start()  # returns when _wake() stops it
            self._conn.ioloop.remove_timeout(timer)
            self._until = lambda: False
        if self._error is not None:
            raise self._error
        if self._timed_out and not until():
            raise StreamPublishError(f"rabbitmq: no answer from {self._shown} within {timeout:g} s while {what}")

    def _wake(self) -> None:
        if self._error is not None or self._timed_out or self._until():
            self._conn.ioloop.stop()

    def _time_out(self) -> None:
        self._timed_out = True
        self._wake()

    # ---------------------------------------------------------------- callbacks
    def _opened(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._channel_opened)

    def _channel_opened(self, channel: Any) -> None:
        channel.add_on_close_callback(self._channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _f: self._ready(channel))

    def _ready(self, channel: Any) -> None:
        self._channel = channel
        self._wake()

    def _open_failed(self, _conn: Any, exc: BaseException) -> None:
        self._error = StreamUnreachableError(f"rabbitmq: cannot connect to {self._shown}: {_cause(exc)}")
        self._wake()

    def _closed(self, _conn: Any, reason: BaseException) -> None:
        if not self._closing and self._error is None:
            self._error = StreamPublishError(f"rabbitmq: {self._shown} closed the connection: {_cause(reason)}")
        self._wake()

    def _channel_closed(self, _channel: Any, reason: BaseException) -> None:
        if not self._closing and self._error is None:
            code, text = getattr(reason, "reply_code", "?"), getattr(reason, "reply_text", str(reason))
            self._error = StorageError(f"rabbitmq: the broker closed the channel: {code} {text}")
        self._wake()

    def _on_return(self, *_args: Any) -> None:
        self.returned += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        done = {t for t in self._pending if t <= tag} if method.multiple else {tag} & self._pending
        self._pending -= done
        if isinstance(method, Basic.Nack):
            self.nacked += len(done)
        self._wake()

    # ---------------------------------------------------------------- operations
    def declare_exchange(self, name: str) -> None:
        done: list[object] = []

        def declared(frame: object) -> None:
            done.append(frame)
            self._wake()

        self._channel.exchange_declare(name, exchange_type="topic", durable=True, callback=declared)
        self._wait(lambda: bool(done), self._timeout, f"declaring exchange {name}")

    def publish(self, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties) -> None:
        if self._error is not None:
            raise self._error
        self._channel.basic_publish(exchange, routing_key, body, properties=props, mandatory=True)
        self._tag += 1
        self._pending.add(self._tag)

    def wait_for_confirms(self) -> None:
        self._wait(lambda: not self._pending, self._timeout, "waiting for publisher confirms")
        if self.nacked:
            raise StreamPublishError(
                f"rabbitmq: the broker refused {self.nacked} message(s) (negative confirm, e.g. a full queue "
                "with overflow reject-publish); nothing after that batch was sent, a retry may succeed"
            )


def _cause(exc: BaseException) -> str:
    """What went wrong, in words, without pika's reprs (which can be long and carry parameters)."""
    text = f"{type(exc).__name__} {exc!r} {exc.args!r}"
    for needle, cause in (
        ("ProbableAuthentication", "the broker refused the credentials (password not shown)"),
        ("ACCESS_REFUSED", "the broker refused the credentials (password not shown)"),
        ("ProbableAccessDenied", "access to the virtual host was denied"),
        ("NOT_ALLOWED", "access to the virtual host was denied"),
        ("refused", "connection refused"),
        ("gaierror", "name does not resolve"),
        ("Name or service not known", "name does not resolve"),
        ("imed out", "timed out"),
        ("Timeout", "timed out"),
    ):
        if needle in text:
            return cause
    return type(exc).__name__
