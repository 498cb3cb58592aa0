"""Per-minute budgets shared by every page request of a process (and by every thread fetching pages).

Why a budget and not a fixed sleep: providers count usage per wall-clock minute (Binance request weight,
Twelve Data credits). Sleeping a fixed time per request either wastes the budget or overruns it when
several pages run at once. `MinuteBudget` counts what this process spent in the current minute, raises
the count to what the provider says was used (Binance `X-MBX-USED-WEIGHT-1M`, which also counts other
processes on the same IP), and makes callers wait for the next minute before the safety threshold
would be crossed. A 429's Retry-After or a 418 ban is recorded here too, so every thread backs off,
not only the one that got the answer.

That is per process. `sources.<provider>.shared_budget: redis://...` swaps in `SharedBudget`
(shared_budget.py, same interface) so every process and worker of a deployment spends one budget;
`shared_budget()` below picks one or the other from the adapter's config.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from data_puller_dagster.sources.errors import IpBannedError


class WindowLimits:
    """What both budgets share (this per-process one and the Redis-backed SharedBudget): the limit and
    its safety threshold, the provider's used-weight header, the window, and the edge margin.

    Why an edge margin: the provider counts a request in the window it *arrives* in, the budget in the
    window it was *reserved* in. A request reserved in a window's last moments can land in the next one,
    which then holds it plus a full window of new reservations: at 0.7 x the limit and a few requests in
    flight, that is a 429 at the turn (and, repeated, a ban). So a reservation made within
    `edge_seconds` of the window's end is charged to both windows: wherever it lands, it is counted.
    """

    def __init__(
        self,
        budget: int,
        safety_fraction: float = 1.0,
        *,
        used_header: str | None = None,
        window_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        provider: str = "",
    ):
        if budget < 1 or not 0 < safety_fraction <= 1:
            raise ValueError(
                f"budget must be >= 1 and 0 < safety_fraction <= 1, got {budget}, {safety_fraction}"
            )
        self.budget = budget
        self.threshold = max(1, int(budget * safety_fraction))
        self.used_header = used_header
        self.window = window_seconds
        self.sleep = sleep
        self.provider = provider
        self._lock = threading.Lock()
        self.waited_seconds = 0.0  # total time callers were held back (run metadata, tests)

    @property
    def edge_seconds(self) -> float:
        """The window's last seconds in which a reservation counts in the next window too: 5 % of the
        window, at least 0.25 s (a loaded host's request latency), at most a quarter of the window."""
        return min(self.window * 0.25, max(0.25, self.window * 0.05))

    def reported_used(self, headers: Mapping[str, str]) -> int | None:
        """The provider's own count from the used-weight header, or None (no header, not a number)."""
        if not self.used_header:
            return None
        value = headers.get(self.used_header)
        if value is None:
            return None
        try:
            return int(str(value).strip())
        except ValueError:
            return None


class MinuteBudget(WindowLimits):
    """At most `budget * safety_fraction` units per window (a wall-clock minute by default).

    `clock` and `sleep` are injectable and `window_seconds` shrinkable so tests run in milliseconds.
    """

    def __init__(
        self, budget: int, safety_fraction: float = 1.0, *, clock: Callable[[], float] = time.time, **limits: Any
    ):
        """`limits`: WindowLimits' keywords (used_header, window_seconds, sleep, provider)."""
        super().__init__(budget, safety_fraction, **limits)
        self.clock = clock
        self._window_id = -1
        self._used = 0
        self._next_used = 0  # charged to the next window by reservations made at this one's edge
        self._paused_until = 0.0
        self._banned_until: float | None = None

    def _roll(self, now: float) -> None:
        wid = int(now // self.window)
        if wid != self._window_id:
            carried = self._next_used if wid == self._window_id + 1 else 0
            self._window_id, self._used, self._next_used = wid, carried, 0

    def acquire(self, cost: int = 1) -> None:
        """Block until `cost` units fit in the current window (and, at its edge, in the next one too);
        raise if the provider banned us."""
        while True:
            with self._lock:
                now = self.clock()
                if self._banned_until is not None and now < self._banned_until:
                    until = datetime.fromtimestamp(self._banned_until, UTC)
                    raise IpBannedError(
                        f"{self.provider}: IP banned until {until.isoformat()}; not sending requests before then",
                        until=until,
                        provider=self.provider,
                    )
                self._roll(now)
                wait, edge = self._paused_until - now, False
                if wait <= 0:
                    left = (self._window_id + 1) * self.window - now
                    edge = left < self.edge_seconds
                    if self._used + cost > self.threshold or (edge and self._next_used + cost > self.threshold):
                        wait = left
                if wait <= 0:
                    self._used += cost
                    if edge:
                        self._next_used += cost
                    return
                self.waited_seconds += wait
            self.sleep(wait + 0.001)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Raise this window's count to what the provider reports (it also counts other clients)."""
        used = self.reported_used(headers)
        if used is None:
            return
        with self._lock:
            self._roll(self.clock())
            self._used = max(self._used, used)

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` (a 429's Retry-After applies to the IP, not one thread)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self.clock() + max(0.0, seconds))

    def ban(self, until_epoch: float) -> None:
        """Refuse every request until `until_epoch` (a 418: more requests would lengthen the ban)."""
        with self._lock:
            self._banned_until = max(self._banned_until or 0.0, until_epoch)

    @property
    def used(self) -> int:
        with self._lock:
            self._roll(self.clock())
            return self._used


_SHARED: dict[tuple[Any, ...], Any] = {}
_SHARED_LOCK = threading.Lock()


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def shared_budget(
    provider: str, base_url: str, factory: Callable[[], MinuteBudget], *, options: Any = None
) -> Any:
    """One budget per (provider, base URL) per process: adapters are short-lived, quotas are not.

    With `sources.<provider>.shared_budget: redis://...` in `options` (the adapter's source config) the budget is a `SharedBudget` (sources/shared_budget.py) with the factory's limits:
    one count for every process of the deployment, per base-URL host (Binance: per IP) and, for Twelve
    Data, per API key. `budget_window_seconds` (when the config has it) sets the window of either kind.
    """
    url = _secret(getattr(options, "shared_budget", None))
    secret = _secret(getattr(options, "api_key", None)) if url else None
    window = getattr(options, "budget_window_seconds", None)
    digest = hashlib.sha256(secret.encode()).hexdigest() if secret else None  # never the key itself
    key = (provider, base_url, url, digest, window)
    with _SHARED_LOCK:
        if key not in _SHARED:
            local = factory()
            if window:
                local.window = float(window)
            if url:
                from data_puller_dagster.sources.shared_budget import SharedBudget

                _SHARED[key] = SharedBudget.like(
                    local, url, base_url, secret=secret, setting=f"sources.{provider}.shared_budget"
                )
            else:
                _SHARED[key] = local
        return _SHARED[key]
