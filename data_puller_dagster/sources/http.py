"""The one HTTP client every adapter uses: session reuse, timeouts, bounded retries, budgets, redaction.

Why in one place: retry/backoff rules, 429/418 handling and secret redaction are where adapters
usually diverge and leak. Each provider only supplies `classify(response) -> Decision` (its error
format differs); everything else - backoff with jitter, honouring Retry-After, giving up with a typed
error that names what was requested - is shared.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NameResolutionError

from data_puller_dagster.sources.errors import (
    RateLimitedError,
    SourceError,
    TransientSourceError,
    UnreachableError,
)
from data_puller_dagster.sources.pages import PageCancelledError, fetch_pages
from data_puller_dagster.sources.ratelimit import MinuteBudget

log = logging.getLogger("data_puller_dagster.sources")

REDACTED = "***"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every secret in `text` (secrets shorter than 4 chars are ignored: they'd mangle text)."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, REDACTED)
    return text


def unreachable_cause(exc: BaseException) -> str | None:
    """'name does not resolve (...)' / 'connection refused' when that is what `exc` wraps, else None.

    requests wraps urllib3's MaxRetryError, whose `.reason` wraps the socket error (as `__context__`),
    so the chain is walked. Timeouts are deliberately not matched: a slow host may answer next time.
    """
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return f"name does not resolve ({e.strerror or e})"
        if isinstance(e, NameResolutionError) and e.__context__ is None:
            return "name does not resolve"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        todo.extend([*e.args, getattr(e, "reason", None), e.__cause__, e.__context__])
    return None


def host_of(url: str) -> str:
    """host[:port] of a URL, without any userinfo (never shown)."""
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


@dataclass(frozen=True)
class Done:
    """The response is final; `value` is what the caller gets (parsed body, or None for 'absent')."""

    value: Any


@dataclass(frozen=True)
class Retry:
    """Try again. `wait=None` -> exponential backoff with jitter; else wait exactly that long.

    `rate_limited` errors exhaust into RateLimitedError, others into TransientSourceError.
    """

    cause: str
    wait: float | None = None
    rate_limited: bool = False


@dataclass(frozen=True)
class Fail:
    """Stop now with this error (4xx, ban, bad auth): retrying cannot help."""

    error: SourceError


Decision = Done | Retry | Fail


class HttpClient:
    """A requests.Session with explicit timeouts and bounded, jittered retries.

    `timeout` is the read timeout, `connect_timeout` (default: `timeout`) the TCP connect one: a
    dead host is noticed in seconds while a big page may still take long to arrive. Retries of one
    request stop after `max_retries` or once `max_retry_seconds` of retrying (from the start of its
    first failed attempt) would be exceeded, whichever is first. A host that does not resolve or
    refuses connections fails at once with UnreachableError naming `url_setting` (the key to fix).
    `backoff_base`/`backoff_max` are constructor arguments so tests run with millisecond waits.
    """

    def __init__(
        self,
        provider: str,
        *,
        timeout: float,
        max_retries: int,
        connect_timeout: float | None = None,
        max_retry_seconds: float | None = None,
        url_setting: str = "the source's base_url",
        budget: MinuteBudget | None = None,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str | None] = (),
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        pool_size: int = 8,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.provider = provider
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.max_retries = max_retries
        self.max_retry_seconds = max_retry_seconds
        self.url_setting = url_setting
        self.budget = budget
        self.secrets = [s for s in secrets if s]
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.sleep = sleep
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool_size), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if headers:
            self.session.headers.update(headers)
        self._lock = threading.Lock()
        self.requests_sent = 0
        self.retries = 0

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random, capped."""
        d = min(self.backoff_max, self.backoff_base * (2**attempt))
        return d / 2 + random.uniform(0, d / 2)

    def get(
        self,
        url: str,
        params: Mapping[str, Any] | None,
        *,
        what: str,
        classify: Callable[[requests.Response], Decision],
        cost: int = 1,
        cancelled: threading.Event | None = None,
        guard: Callable[[], None] | None = None,
    ) -> Any:
        """GET with retries; `what` (provider, symbol, range) prefixes every error message.

        `guard` runs before every attempt and raises to stop before anything is sent (a persisted ban).
        """
        last = "no attempt made"
        rate_limited = False
        failing_since: float | None = None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if cancelled is not None and cancelled.is_set():
                raise PageCancelledError(
                    f"{what}: cancelled because another page of this fetch failed", provider=self.provider
                )
            if guard is not None:
                guard()
            if self.budget is not None:
                self.budget.acquire(cost)
            with self._lock:
                self.requests_sent += 1
            attempts += 1
            started = time.monotonic()
            try:
                resp = self.session.get(url, params=params, timeout=(self.connect_timeout, self.timeout))
            except (requests.Timeout, requests.ConnectionError) as e:
                cause = unreachable_cause(e)
                if cause is not None:
                    raise UnreachableError(
                        self.redact(
                            f"{what}: cannot reach {host_of(url)}: {cause}; check {self.url_setting} "
                            "or the network"
                        ),
                        provider=self.provider,
                    ) from None
                last = self.redact(f"{type(e).__name__}: {e}")
                decision: Decision = Retry(cause=last)
            else:
                if self.budget is not None:
                    self.budget.observe(resp.headers)
                decision = classify(resp)
            if isinstance(decision, Done):
                return decision.value
            if isinstance(decision, Fail):
                err = decision.error
                err.args = (self.redact(str(err)),)
                raise err
            last, rate_limited = self.redact(decision.cause), decision.rate_limited
            if attempt == self.max_retries:
                break
            wait = self.backoff(attempt) if decision.wait is None else decision.wait
            failing_since = started if failing_since is None else failing_since
            spent = time.monotonic() - failing_since
            if self.max_retry_seconds is not None and spent + wait > self.max_retry_seconds:
                last += (
                    f"; stopped after {spent:.1f}s of retrying (a retry in {wait:.1f}s would exceed "
                    f"max_retry_seconds={self.max_retry_seconds:g})"
                )
                break
            if decision.rate_limited and self.budget is not None:
                self.budget.pause(wait)
            with self._lock:
                self.retries += 1
            log.warning("%s: %s; retry %d/%d in %.2fs", what, last, attempt + 1, self.max_retries, wait)
            if cancelled is not None and self.sleep is time.sleep:
                cancelled.wait(wait)  # a failed sibling or an interrupt ends the backoff early
            else:
                self.sleep(wait)
        kind = RateLimitedError if rate_limited else TransientSourceError
        raise kind(
            self.redact(
                f"{what}: gave up after {attempts} attempt(s); last cause: {last}. "
                "The partition can be retried later (Dagster retries it per the run retry policy)."
            ),
            provider=self.provider,
        )

    def close(self) -> None:
        self.session.close()


__all__ = [
    "Decision",
    "Done",
    "Fail",
    "HttpClient",
    "PageCancelledError",
    "Retry",
    "fetch_pages",
    "host_of",
    "redact",
    "retry_after_seconds",
    "unreachable_cause",
]


def retry_after_seconds(resp: requests.Response, default: float) -> float:
    """Retry-After as seconds (integer or float); `default` when absent or unparseable."""
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default
