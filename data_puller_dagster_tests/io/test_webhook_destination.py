"""The webhook destination against a real HTTP receiver (http.server in a thread on a free port).

The receiver does what a production receiver should: verifies `X-Signature-SHA256` on the raw body
before parsing, and processes a batch only if its `Idempotency-Key` is new (answering 200 to a
repeat). It can be told to fail requests in order: 500/503 before processing, 500 *after* processing
(the answer is lost, the sender must retry), 429 with Retry-After, a dropped connection, any 4xx.

What is proven: every candle arrives exactly, in order, signed; injected failures are retried with
backoff, Retry-After is honoured; the receiver processes each batch once per key despite retries and
despite a full re-publish (and a re-fetched slice, whose fetched_at differs, reuses the keys); 4xx,
redirects and a wrong signature are not retried and fail with the redacted URL and the status; the
secret and header values appear in no error, metadata or repr.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pandas as pd
import pytest
from pydantic import ValidationError

from data_puller_dagster.io.destinations.stream_base import StreamPublishError, StreamUnreachableError
from data_puller_dagster.io.destinations.webhook_store import (
    WebhookDestination,
    WebhookRejectedError,
    idempotency_key,
    shown_webhook_url,
)
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.transform.canonical import CANONICAL_DTYPES
from data_puller_dagster_tests.io.conftest import candles
from data_puller_dagster_tests.servers.kafka import free_port

SECRET = "whsec-0123456789abcdef-S3CRET"
TOKEN = "tok-Hidden-42"
SYMBOLS = {"EURUSD": "EUR/USD", "GBPUSD": "GBP/USD"}
D1, DAYS = date(2024, 1, 4), 5
TABLE = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
PART = PartitionSlice(SYMBOLS, D1, date(2024, 1, D1.day + DAYS - 1))


def frame(final: bool = False, fetched: str | None = None) -> pd.DataFrame:
    df = pd.concat([candles("EUR/USD", D1, DAYS), candles("GBP/USD", D1, DAYS, seed_offset=40)], ignore_index=True)
    if final:
        df["is_final"] = True
    if fetched:
        df["fetched_at"] = pd.Timestamp(fetched, tz="UTC")
    return df


class Receiver:
    """A webhook receiver on 127.0.0.1:<free port>. `plan` holds what to do with the next requests:
    an int status (before processing), ("after", status) (processed, then the answer fails),
    (status, {headers}), or "drop" (close the connection without answering); then 200."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret.encode()
        self.plan: deque[Any] = deque()
        self.requests: list[dict[str, Any]] = []  # every request: key, time, signature ok, answer
        self.processed: dict[str, dict[str, Any]] = {}  # idempotency key -> the batch processed for it
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                receiver.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers["Content-Length"]))
        key = h.headers.get("Idempotency-Key")
        expected = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(expected, h.headers.get("X-Signature-SHA256", ""))
        with self.lock:
            action = self.plan.popleft() if self.plan else 200
            self.requests.append({"key": key, "at": time.monotonic(), "signed": signed, "action": action,
                                  "path": h.path, "headers": dict(h.headers)})  # fmt: skip
            if action == "drop":
                h.close_connection = True
                h.connection.shutdown(2)
                return
            if not signed:
                return self.answer(h, 401, b'{"error": "bad signature"}')
            if isinstance(action, int) and action != 200:
                return self.answer(h, action, f'{{"error": "injected", "echo": "{h.headers.get("Authorization")}"}}'.encode())
            if isinstance(action, tuple) and isinstance(action[1], dict):
                return self.answer(h, action[0], b"", action[1])
            batch = orjson.loads(body)  # parsed only once the signature is verified
            assert batch["batch_id"] == key
            if key not in self.processed:
                self.processed[key] = batch
            if isinstance(action, tuple):  # processed, but the answer is an error: the sender retries
                return self.answer(h, action[1], b'{"error": "answer lost"}')
            self.answer(h, 200, b'{"ok": true}')

    @staticmethod
    def answer(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def candles(self) -> pd.DataFrame:
        """Every candle processed (once per key), in processing order, as a canonical frame."""
        rows = [c for b in self.processed.values() for c in b["candles"]]
        df = pd.DataFrame(rows)
        for c in ("ts", "fetched_at"):
            df[c] = pd.to_datetime(df[c], utc=True)
        return df.astype(CANONICAL_DTYPES)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


class WebhookBroker:
    """The webhook as a broker of the streaming contract (io/test_stream_destinations.py): a receiver
    that processes each idempotency key once; consume() returns what it processed."""

    kind = "webhook"

    def __init__(self) -> None:
        self.feed = f"t{uuid.uuid4().hex[:10]}"
        self.table = TableRef(self.feed, "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
        self.part = PART
        self.receiver = Receiver()

    def destination(self, **options: Any) -> WebhookDestination:
        return destination(self.receiver.url, **options)

    def consume(self, expected: int) -> list[dict[str, Any]]:
        return [{"id": i, "candle": c, "batch_id": key} for key, batch in self.receiver.processed.items()
                for i, c in zip(batch["ids"], batch["candles"], strict=True)]  # fmt: skip

    def cleanup(self) -> None:
        self.receiver.stop()


def destination(url: str, **options: Any) -> WebhookDestination:
    options = {"secret": SECRET, "backoff_seconds": 0.05, "max_backoff_seconds": 0.2, **options}
    return WebhookDestination.from_options(WebhookDestination.Options(url=url, **options), None)


def test_batches_arrive_signed_and_are_processed_once_per_key_despite_retries(receiver: Receiver) -> None:
    df = frame()
    # request 1: 500 before processing; 3: processed but answered 500; 4: dropped connection;
    # 6: 429 with Retry-After 1; 7: 503. Every other request is accepted.
    receiver.plan.extend([500, 200, ("after", 500), "drop", 200, (429, {"Retry-After": "1"}), 503])
    dest = destination(receiver.url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        md = dest.publish(TABLE, df.sample(frac=1.0, random_state=3), PART, batch_size=50)
        n_batches = -(-len(df) // 50)
        assert (md["rows"], md["published"], md["batches"]) == (len(df), len(df), n_batches)
        assert (md["requests"], md["retries"]) == (n_batches + 5, 5)
        assert md["retried"] == {"HTTP 500 Internal Server Error": 2, "connection failed": 1,
                                 "HTTP 429 Too Many Requests": 1, "HTTP 503 Service Unavailable": 1}  # fmt: skip
        first_keys = [r["key"] for r in receiver.requests]
        assert all(r["signed"] for r in receiver.requests)
        assert all(r["headers"]["Authorization"] == f"Bearer {TOKEN}" for r in receiver.requests)
        assert {r["headers"]["Content-Type"] for r in receiver.requests} == {"application/json"}
        # A retried request re-sends the same key; the batch answered 500 after processing is not redone.
        assert first_keys[0] == first_keys[1] and first_keys[2] == first_keys[3] == first_keys[4]
        assert len(receiver.processed) == n_batches == len(set(first_keys))
        # Retry-After was honoured: the retry of the 429 came at least 1 s later.
        i429 = next(i for i, r in enumerate(receiver.requests) if r["action"] == (429, {"Retry-After": "1"}))
        assert receiver.requests[i429 + 1]["at"] - receiver.requests[i429]["at"] >= 1.0

        # Every candle exactly once, exact values, in ts order per symbol, with the stream ids.
        want = df.sort_values(["symbol", "ts"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(receiver.candles(), want, check_exact=True)
        batches = list(receiver.processed.values())
        ids = [i for b in batches for i in b["ids"]]
        assert ids == [f"forex.normalized_ohlcv_1h.{s.replace('/', '')}.{t.value // 10**6}"
                       for s, t in zip(want["symbol"], want["ts"], strict=True)]  # fmt: skip
        assert [b["count"] for b in batches] == [len(b["candles"]) for b in batches] == [50] * (n_batches - 1) + [
            len(df) - 50 * (n_batches - 1)
        ]
        assert {b["table"] for b in batches} == {"forex.normalized_ohlcv_1h"}

        # A full re-publish (a retried step) sends the same keys; the receiver processes nothing new.
        before = len(receiver.requests)
        again = dest.publish(TABLE, df, PART, batch_size=50)
        assert again["requests"] == n_batches and again["retries"] == 0
        assert [r["key"] for r in receiver.requests[before:]] == list(receiver.processed)
        assert len(receiver.processed) == n_batches
        pd.testing.assert_frame_equal(receiver.candles(), want, check_exact=True)
        text = repr(md) + repr(again) + repr(dest)
        assert SECRET not in text and TOKEN not in text
    finally:
        dest.close()


def test_keys_follow_candle_ids_so_a_refetched_slice_reuses_them(receiver: Receiver) -> None:
    dest = destination(receiver.url)
    try:
        dest.publish(TABLE, frame(final=True, fetched="2024-06-01 12:00"), PART, batch_size=80)
        keys = list(receiver.processed)
        # The same candles fetched again later (a retried step re-runs the fetch): same keys.
        dest.publish(TABLE, frame(final=True, fetched="2024-06-02 08:30"), PART, batch_size=80)
        assert [r["key"] for r in receiver.requests] == keys * 2 and len(receiver.processed) == len(keys)
    finally:
        dest.close()
    # In-progress candles: each distinct update of a live candle is a new batch, a repeat is not.
    ids, final, live = ["forex.live.EURUSD.1"], [b'{"c":1,"is_final":true}'], [b'{"c":1,"is_final":false}']
    assert idempotency_key(ids, final) == idempotency_key(ids, [b'{"c":2,"is_final":true}'])
    assert idempotency_key(ids, live) == idempotency_key(ids, list(live)) != idempotency_key(ids, [b'{"c":2,"is_final":false}'])
    assert idempotency_key(ids, live) != idempotency_key(ids, final)


@pytest.mark.parametrize(
    ("status", "extra"),
    [(422, {}), (400, {}), (404, {}), (302, {"Location": "http://127.0.0.1:1/elsewhere"}), (501, {})],
)
def test_answers_a_retry_cannot_fix_are_not_retried(receiver: Receiver, status: int, extra: dict[str, str]) -> None:
    receiver.plan.append((status, extra) if extra else status)
    url = f"{receiver.url}/{TOKEN}?api_key={TOKEN}"
    dest = destination(url, headers={"Authorization": f"Bearer {SECRET}"}, max_retries=5)
    try:
        with pytest.raises(WebhookRejectedError) as info:
            dest.publish(TABLE, frame(), PART, batch_size=60)
    finally:
        dest.close()
    text = str(info.value)
    assert len(receiver.requests) == 1  # not retried
    assert f"http://127.0.0.1:{receiver.port}/***?***" in text and f"HTTP {status}" in text
    assert "not retried" in text and f"0 of {len(frame())} candles" in text
    assert SECRET not in text and TOKEN not in text  # the 422 body echoes the Authorization header


def test_wrong_secret_is_refused_by_the_receiver_and_not_retried(receiver: Receiver) -> None:
    dest = destination(receiver.url, secret="another-secret-of-16+")
    try:
        with pytest.raises(WebhookRejectedError, match="HTTP 401 Unauthorized: .*bad signature"):
            dest.publish(TABLE, frame(), PART)
    finally:
        dest.close()
    assert [r["signed"] for r in receiver.requests] == [False] and not receiver.processed


def test_retries_are_bounded_and_fail_with_a_clear_error(receiver: Receiver) -> None:
    receiver.plan.extend([503] * 3)
    dest = destination(receiver.url, max_retries=2, backoff_seconds=0.2, max_backoff_seconds=1)
    try:
        with pytest.raises(StreamPublishError, match=r"still HTTP 503 Service Unavailable after 3 attempts") as info:
            dest.publish(TABLE, frame(), PART)
        assert len(receiver.requests) == 3 and f"http://127.0.0.1:{receiver.port}/***" in str(info.value)
        # Exponential backoff with jitter: the waits are 50-100 % of 0.2 s, then of 0.4 s.
        t = [r["at"] for r in receiver.requests]
        assert 0.1 <= t[1] - t[0] < 0.35 and 0.2 <= t[2] - t[1] < 0.6, t
        # A Retry-After beyond max_retry_seconds fails at once rather than sleeping through the step.
        receiver.plan.append((429, {"Retry-After": "3600"}))
        dest = destination(receiver.url, max_retry_seconds=10)
        started = time.monotonic()
        with pytest.raises(StreamPublishError, match="asked to retry after 3600 s, beyond"):
            dest.publish(TABLE, frame(), PART)
        assert time.monotonic() - started < 2
    finally:
        dest.close()


def test_unreachable_receiver_is_retried_then_named() -> None:
    port = free_port()  # nothing listens there
    dest = destination(f"http://user:{SECRET}@127.0.0.1:{port}/in/{TOKEN}", max_retries=2)
    started = time.monotonic()
    with pytest.raises(StreamUnreachableError) as info:
        dest.publish(TABLE, frame(), PART)
    assert time.monotonic() - started < 3
    text = str(info.value)
    assert f"http://***@127.0.0.1:{port}/***" in text and "connection refused after 3 attempts" in text
    assert SECRET not in text and TOKEN not in text
    dest.close()
    # A host that does not resolve (.invalid never does, RFC 6761) is a configuration error: not retried.
    dest = destination(f"http://no-such-host.invalid/{TOKEN}", max_retries=5, backoff_seconds=1, max_backoff_seconds=1)
    started = time.monotonic()
    with pytest.raises(StreamUnreachableError, match=r"POST http://no-such-host.invalid/\*\*\*, .*does not resolve"):
        dest.publish(TABLE, frame(), PART)
    assert time.monotonic() - started < 1
    dest.close()


BAD = [
    ({"url": f"ftp://h/{TOKEN}"}, "not an http(s) URL"),
    ({"url": f"http://h:port/{TOKEN}"}, "not a valid URL"),
    ({"url": f"https://h/x#{TOKEN}"}, "no #fragment"),
    ({"url": "https://h/x", "secret": "short"}, "at least 16 characters"),
    ({"url": "https://h/x", "headers": {"Idempotency-Key": TOKEN}}, "set by the webhook destination itself"),
    ({"url": "https://h/x", "headers": {"X-Token": f"{TOKEN}\r\nX-Evil: 1"}}, "must not contain line breaks"),
    ({"url": "https://h/x", "headers": {"Bad Header": TOKEN}}, "not a valid HTTP header name"),
    ({"url": "https://h/x", "backoff_seconds": 5, "max_backoff_seconds": 1}, "must not exceed max_backoff_seconds"),
    ({"url": "https://h/x", "max_retries": -1}, "greater than or equal to 0"),
    ({"url": "https://h/x", "passwd": TOKEN}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_options_name_the_option_and_hide_secrets(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        WebhookDestination.Options(**options)
    text = str(info.value)
    assert message in text and TOKEN not in text and SECRET not in text


def test_plugin_shape_and_shown_url() -> None:
    assert (WebhookDestination.name, WebhookDestination.kind) == ("webhook", "stream")
    with pytest.raises(ValidationError, match="url"):
        WebhookDestination.Options()  # no default receiver: the URL is required
    assert shown_webhook_url("https://u:p@hooks.example.com:8443/services/T0/B0/XYZ?sig=1") == (
        "https://***@hooks.example.com:8443/***?***"
    )
    assert shown_webhook_url("http://[::1]:9000") == "http://[::1]:9000/"
    dest = destination("https://hooks.example.com/in")
    assert repr(dest) == "WebhookDestination(url='https://hooks.example.com/***', signed=True)"
