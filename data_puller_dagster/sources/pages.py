"""`fetch_pages`: a provider's page windows fetched concurrently, all or nothing, and interruptible.

Why its own small pool of daemon threads rather than a ThreadPoolExecutor: when the run process gets
SIGTERM (Ctrl-C on `dagster dev`, a k8s pod stop), Dagster raises DagsterExecutionInterruptedError in
the main thread. An executor's `with` block (and its atexit hook) then joins every worker, and a worker
blocked in a read of a host that never answers holds the process for the read timeout - and, with the
retry loop, for every further attempt. Here the main thread sets the shared `cancelled` event and
leaves at once: no page starts or retries after that (HttpClient checks the event before each attempt
and wakes from backoff sleeps), and a read still in flight ends with its timeout in a daemon thread
that cannot keep the process alive. Its result is discarded, so nothing partial reaches a store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from data_puller_dagster.sources.errors import SourceError

W = TypeVar("W")
R = TypeVar("R")


class PageCancelledError(SourceError):
    """A page that was not fetched because a sibling page of the same fetch failed first."""


def fetch_pages(
    page: Callable[[W, threading.Event], R], windows: Sequence[W], max_concurrency: int, name: str
) -> list[R]:
    """Fetch every page window concurrently (results in window order), all or nothing.

    Paging a provider is latency bound, so pages run on up to `max_concurrency` threads (sharing the
    adapter's session and rate-limit budget). The first failure stops pages not yet sent; pages in
    flight finish their current attempt (they see `cancelled` before the next one) and the first real
    failure is raised as the root cause (never a cancelled sibling), so a fetch never succeeds with a
    hole in it. An exception in the calling thread itself (an interrupt) cancels and returns at once.
    """
    n = len(windows)
    if n == 0:
        return []
    cancelled = threading.Event()
    cond = threading.Condition()
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    pending = list(range(n - 1, -1, -1))  # popped from the end: windows start in order
    state = {"done": 0, "running": 0}

    def worker() -> None:
        while True:
            with cond:
                if cancelled.is_set() or not pending:
                    return
                i = pending.pop()
                state["running"] += 1
            err: BaseException | None = None
            try:
                value = page(windows[i], cancelled)
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                err = e
            with cond:
                state["running"] -= 1
                if err is None:
                    results[i] = value
                    state["done"] += 1
                else:
                    errors.append(err)
                    cancelled.set()
                # Wake the caller only when it has something to do (a GIL hand-off per page otherwise).
                if state["done"] == n or errors:
                    cond.notify_all()

    for k in range(max(1, min(max_concurrency, n))):
        threading.Thread(target=worker, name=f"{name}-{k}", daemon=True).start()
    try:
        with cond:
            # A timed wait keeps the calling thread responsive to signal handlers on every platform.
            while state["done"] < n and not (errors and state["running"] == 0):
                cond.wait(0.25)
    except BaseException:
        cancelled.set()
        raise
    if errors:
        raise next((e for e in errors if not isinstance(e, PageCancelledError)), errors[0])
    return results
