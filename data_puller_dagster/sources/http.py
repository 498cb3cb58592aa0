"""The one HTTP client every adapter uses: session reuse, timeouts, bounded retries, budgets, redaction.

Why in one place: retry/backoff rules, 429/418 handling and secret redaction are where adapters
usually diverge and leak. Each provider only supplies `classify(response) -> Decision` (its error
format differs); everything else - backoff with jitter, honouring Retry-After, giving up with a typed
error that names what was requested - is shared.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from data_puller_dagster.sources.errors import RateLimitedError, SourceError, TransientSourceError
from data_puller_dagster.sources.ratelimit import MinuteBudget

log = logging.getLogger("data_puller_dagster.sources")

REDACTED = "***"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every secret in `text` (secrets shorter than 4 chars are ignored: they'd mangle text)."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, REDACTED)
    return text



W = TypeVar("W")
R = TypeVar("R")


class PageCancelledError(SourceError):
    """A page that was not fetched because a sibling page of the same fetch failed first."""


def fetch_pages(
    page: Callable[[W, threading.Event], R], windows: Sequence[W], max_concurrency: int, name: str
) -> list[R]:
    """Fetch every page window concurrently, all or nothing.

    Paging a provider is latency bound, so pages run on a thread pool (sharing the adapter's session and
    rate-limit budget). The first failure cancels the pages not yet sent and is raised as the root cause
    (never a cancelled sibling), so a request never succeeds with a hole in it.
    """
    cancelled = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, min(max_concurrency, len(windows))), thread_name_prefix=name) as ex:
        futures = [ex.submit(page, w, cancelled) for w in windows]
        wait(futures, return_when=FIRST_EXCEPTION)
        errs = [f.exception() for f in futures if f.done() and f.exception() is not None]
        if errs:
            cancelled.set()
            for f in futures:
                f.cancel()
            raise next((e for e in errs if not isinstance(e, PageCancelledError)), errs[0])  # type: ignore[misc]
        return [f.result() for f in futures]

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

    `backoff_base`/`backoff_max` are constructor arguments so tests run with millisecond waits.
    """

    def __init__(
        self,
        provider: str,
        *,
        timeout: float,
        max_retries: int,
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
        self.max_retries = max_retries
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
            try:
                resp = self.session.get(url, params=params, timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError) as e:
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
            if decision.rate_limited and self.budget is not None:
                self.budget.pause(wait)
            with self._lock:
                self.retries += 1
            log.warning("%s: %s; retry %d/%d in %.2fs", what, last, attempt + 1, self.max_retries, wait)
            self.sleep(wait)
        kind = RateLimitedError if rate_limited else TransientSourceError
        raise kind(
            self.redact(
                f"{what}: gave up after {self.max_retries + 1} attempt(s); last cause: {last}. "
                "The partition can be retried later (Dagster retries it per the run retry policy)."
            ),
            provider=self.provider,
        )

    def close(self) -> None:
        self.session.close()


def retry_after_seconds(resp: requests.Response, default: float) -> float:
    """Retry-After as seconds (integer or float); `default` when absent or unparseable."""
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default
