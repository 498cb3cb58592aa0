"""Webhook destination: candles POSTed to an HTTP(S) endpoint as signed JSON batches.

Wire format (one request per batch of `batch_size` candles, in the stream order of stream_base):

    POST <url>
    Content-Type: application/json
    Idempotency-Key: <batch_id>
    X-Signature-SHA256: <hex HMAC-SHA256 of the exact body bytes, keyed with `secret`>
    {"batch_id": "<64 hex>", "table": "<feed>.<table>", "count": 2,
     "ids": ["forex.ohlcv_1h.EURUSD.1704412800000", ...],
     "candles": [{<the candle's canonical JSON, as every stream sends it>}, ...]}

Why one JSON document rather than NDJSON: the batch is the unit a receiver accepts or refuses (one
status code, one idempotency key), and a single document cannot be half-parsed. `ids[i]` is the
deterministic id of `candles[i]`.

**Idempotency key** (= `batch_id`): SHA-256 of the batch's message ids (`<feed>.<table>.<symbol_key>.
<ts ms>`, joined by newlines). A retried request, a retried Dagster step (which may re-fetch, so
`fetched_at` differs) and a re-publish of the same slice with the same batch size all send the same key,
so a receiver that stores the keys it has processed processes each batch once. For candles still in
progress (`is_final` false) the key also covers the candle's JSON, so each distinct update of a live
candle is a new batch. Consequence: a receiver that honours the key also drops a later batch of
corrected values for final candles it already has (same ids, same key): corrections are not re-delivered.
Keys depend on the batch boundaries, so a re-publish with another batch_size sends new keys (the
per-candle `ids` still let a receiver drop candles it has).

**Signature**: `X-Signature-SHA256` is the lower-case hex HMAC-SHA256 of the raw body with the UTF-8
`secret`. Verify it on the bytes received, before parsing, with a constant-time comparison:

    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, request.headers["X-Signature-SHA256"])

The body carries no timestamp: a replayed request is only as harmful as its idempotency key lets it be.
Without `secret` no signature header is sent (for receivers on a trusted network only).

**Retries**: connection errors, timeouts, HTTP 408, 429 and 5xx (except 501 and 505) are retried up to
`max_retries` times with exponential backoff (`backoff_seconds` doubling up to `max_backoff_seconds`,
with jitter: each wait is 50-100 % of its step), honouring `Retry-After` (seconds or an HTTP date), and
never beyond `max_retry_seconds` per batch. Everything else (other 4xx, redirects, TLS failures, a host
that does not resolve) fails at once (WebhookRejectedError / StreamUnreachableError): a retry cannot fix
it. Errors name the URL redacted (`shown_webhook_url`: scheme, host and port) and the status; neither the
secret nor header values appear in errors or metadata. Batches go out one after another; a failure
midway leaves the earlier batches delivered, and the retried step re-sends them under the same keys.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
import requests
from pydantic import Field, SecretStr, field_validator, model_validator

from data_puller_dagster.io.destinations.stream_base import (
    Messages,
    StreamBase,
    StreamOptions,
    StreamPublishError,
    StreamUnreachableError,
    batches,
    split_url,
)
from data_puller_dagster.io.errors import StorageError
from data_puller_dagster.io.tables import TableRef

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "idempotency-key", "x-signature-sha256", "transfer-encoding",
     "connection", "content-encoding"}
)
_IN_PROGRESS = b'"is_final":false'  # only the key can match: quotes inside JSON strings are escaped
_NOT_RETRIED_5XX = (501, 505)  # "not implemented", "HTTP version not supported": a retry cannot fix them


class WebhookRejectedError(StorageError):
    """The receiver refused a batch with an answer a retry cannot change (4xx, redirect): not retried."""

    retryable = False


def shown_webhook_url(url: str) -> str:
    """The URL fit for errors and metadata: scheme, host and port only.

    Webhook URLs are often capabilities (a token anywhere in the path or query, user-info), so the
    path, the query and the user-info are each shown as `***`; errors from the router also name the
    destination instance, which tells two webhooks on one host apart."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    path = "/***" if parts.path.strip("/") else "/"
    user = "***@" if "@" in parts.netloc else ""
    return f"{parts.scheme}://{user}{host}{port}{path}" + ("?***" if parts.query else "")


class WebhookOptions(StreamOptions):
    url: SecretStr = Field(
        description="http(s)://host[:port]/path the batches are POSTed to; shown only as "
        "scheme://host:port/*** since webhook URLs often hold a token"
    )
    secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key of the X-Signature-SHA256 header (>= 16 characters); none: unsigned"
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra request headers (e.g. Authorization); values never shown"
    )
    max_retries: int = Field(5, ge=0, le=20, description="Retries per batch after the first attempt")
    backoff_seconds: float = Field(0.5, ge=0, le=60, description="First retry wait; doubles per retry")
    max_backoff_seconds: float = Field(30.0, gt=0, le=600, description="Longest wait between two attempts")
    max_retry_seconds: float = Field(
        120.0, gt=0, le=3600, description="Give up on a batch after this long (a Retry-After beyond it fails at once)"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value()
        shown = shown_webhook_url(url)
        parts = split_url(url, shown, "URL", "https://host/path")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {shown!r} is not an http(s) URL; use https://host[:port]/path")
        if parts.fragment or any(c.isspace() for c in url):
            raise ValueError(f"url {shown!r} must have no #fragment and no spaces")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("secret must be at least 16 characters (e.g. the output of `openssl rand -hex 32`)")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, value in v.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the webhook destination itself; remove it")
            if re.search(r"[\r\n\x00]", value.get_secret_value()):
                raise ValueError(f"header {name!r}: the value must not contain line breaks or NUL")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> WebhookOptions:
        if self.backoff_seconds > self.max_backoff_seconds:
            raise ValueError("backoff_seconds must not exceed max_backoff_seconds")
        return self


def idempotency_key(ids: list[str], payloads: list[bytes]) -> str:
    """SHA-256 hex of the batch's message ids (and of the JSON of its in-progress candles)."""
    h = hashlib.sha256("\n".join(ids).encode())
    for p in payloads:
        if _IN_PROGRESS in p:
            h.update(b"\n")
            h.update(p)
    return h.hexdigest()


def batch_body(key: str, table: TableRef, ids: list[str], payloads: list[bytes]) -> bytes:
    """The request body, glued from the ready-made candle payloads (no re-encoding per candle)."""
    head = b'{"batch_id":"%s","table":%s,"count":%d,"ids":' % (key.encode(), orjson.dumps(table.qualified), len(ids))
    return b"".join((head, orjson.dumps(ids), b',"candles":[', b",".join(payloads), b"]}"))


def retry_after(resp: requests.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class WebhookDestination(StreamBase):
    """POSTs candles as signed JSON batches with a deterministic idempotency key per batch."""

    name: ClassVar[str] = "webhook"
    Options: ClassVar[type[WebhookOptions]] = WebhookOptions
    options: WebhookOptions

    def __init__(self, options: WebhookOptions):
        super().__init__(options)
        self._url = options.url.get_secret_value()
        self._shown = shown_webhook_url(self._url)
        self._key = options.secret.get_secret_value().encode() if options.secret else None
        self._hidden = [s for s in (options.secret, *options.headers.values()) if s is not None]
        self._session: requests.Session | None = None

    def __repr__(self) -> str:
        return f"WebhookDestination(url={self._shown!r}, signed={self._key is not None})"

    def _http(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
            self._session.headers.update({k: v.get_secret_value() for k, v in self.options.headers.items()})
            self._session.headers.update({"Content-Type": "application/json", "User-Agent": "data-puller-dagster"})
        return self._session

    def _send(self, table: TableRef, messages: Messages, batch_size: int) -> dict[str, Any]:
        md: dict[str, Any] = {"location": self._shown, "signed": self._key is not None}
        stats = {"requests": 0, "retries": 0, "retried": {}}
        published = n_batches = 0
        started = time.monotonic()
        for rows in batches(range(len(messages)), batch_size):
            ids, payloads = messages.ids[rows.start : rows.stop], messages.payloads[rows.start : rows.stop]
            key = idempotency_key(ids, payloads)
            body = batch_body(key, table, ids, payloads)
            headers = {"Idempotency-Key": key}
            if self._key is not None:
                headers["X-Signature-SHA256"] = hmac.new(self._key, body, hashlib.sha256).hexdigest()
            try:
                self._post(body, headers, f"batch {key[:16]} ({len(ids)} candles of {table.qualified})", stats)
            except StorageError as e:
                done = f"{published} of {len(messages)} candles ({n_batches} batches) were delivered before"
                raise type(e)(f"{e}; {done}; re-publishing re-sends them under the same idempotency keys") from None
            published += len(ids)
            n_batches += 1
        return {**md, "published": published, "batches": n_batches, **stats,
                "seconds": round(time.monotonic() - started, 3)}  # fmt: skip

    def _post(self, body: bytes, headers: dict[str, str], what: str, stats: dict[str, Any]) -> None:
        """One batch until accepted: retry what a retry can fix, within the attempt and time budgets."""
        o = self.options
        deadline = time.monotonic() + o.max_retry_seconds
        where = f"webhook: POST {self._shown}, {what}"
        for attempt in range(o.max_retries + 1):
            stats["requests"] += 1
            wait: float | None = None
            try:
                resp = self._http().post(self._url, data=body, headers=headers, allow_redirects=False,
                                         timeout=(o.connect_timeout_seconds, o.timeout_seconds))  # fmt: skip
            except requests.exceptions.SSLError:
                raise StreamUnreachableError(f"{where}: TLS handshake failed; check the receiver's certificate") from None
            except requests.exceptions.Timeout as e:
                kind = "connect" if isinstance(e, requests.exceptions.ConnectTimeout) else "read"
                problem, error = f"{kind} timed out", StreamUnreachableError if kind == "connect" else StreamPublishError
            except requests.exceptions.ConnectionError as e:
                text = str(e)
                if "NameResolution" in text or "Name or service not known" in text or "nodename" in text:
                    raise StreamUnreachableError(f"{where}: the host does not resolve; fix the url") from None
                problem = "connection refused" if "refused" in text.lower() else "connection failed"
                error = StreamUnreachableError
            except requests.exceptions.RequestException as e:
                raise StreamPublishError(f"{where}: {type(e).__name__}") from None
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    return
                problem, error = f"HTTP {status} {resp.reason or ''}".rstrip(), StreamPublishError
                if not (status in (408, 429) or (500 <= status < 600 and status not in _NOT_RETRIED_5XX)):
                    detail = f": {self._scrub(resp.text)}" if resp.text.strip() else ""
                    fix = "set url to the final address" if 300 <= status < 400 else "fix the receiver or the options"
                    raise WebhookRejectedError(
                        f"{where}: the receiver answered {problem}{detail}; not retried (a retry cannot fix a "
                        f"{status}); {fix}"
                    )
                wait = retry_after(resp)
            stats["retried"][problem] = stats["retried"].get(problem, 0) + 1
            if attempt == o.max_retries:
                break
            if wait is None:
                wait = min(o.max_backoff_seconds, o.backoff_seconds * 2**attempt) * random.uniform(0.5, 1.0)
            elif wait > deadline - time.monotonic():
                raise error(
                    f"{where}: {problem} asked to retry after {wait:.0f} s, beyond what is left of "
                    f"max_retry_seconds ({o.max_retry_seconds:g} s); not waiting"
                )
            if time.monotonic() + wait > deadline:
                raise error(f"{where}: still {problem} after {attempt + 1} attempts and max_retry_seconds "
                            f"({o.max_retry_seconds:g} s)")  # fmt: skip
            stats["retries"] += 1
            time.sleep(wait)
        raise error(f"{where}: still {problem} after {o.max_retries + 1} attempts (max_retries {o.max_retries}); "
                    "check the receiver")  # fmt: skip

    def _scrub(self, text: str) -> str:
        """A receiver's error body, short and without anything secret it might echo back."""
        for s in self._hidden:  # before shortening, so that no cut-off secret is left behind
            text = text.replace(s.get_secret_value(), "***")
        return " ".join(text.replace(self._url, self._shown).split())[:200]

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
