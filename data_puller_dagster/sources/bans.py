"""Provider bans every process of the deployment sees: `<storage.data_dir>/.state/bans.json`.

Why a file and not only the in-process limiter: Dagster's RetryPolicy re-runs a failed step in a new
process, the daemon starts a process per run, and an operator's `dagster asset materialize` is another
one. None of them shares memory, so a Binance 418 remembered only in memory is forgotten by the very
next attempt - which then knocks on a banned IP, and Binance lengthens bans for every such request.

Layout: `{"<provider> <host[:port]>": {"until": <epoch seconds>, "reason": "..."}}` - Binance bans an IP,
so the key is the REST host the IP talks to. Writes take an exclusive lock (read-merge-write, keeping
the later end) and replace the file atomically (tmp + os.replace), so concurrent processes never see a
half-written file or lose each other's ban. Reads happen before every request and cost one `stat` when
the file has not changed (its parsed content is cached by mtime/size/inode). Expired entries are
dropped on the next write; deleting the file lifts every ban recorded by this deployment (do it only
when the provider has lifted the ban).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import orjson

from data_puller_dagster.sources.errors import SourceError

STATE_DIR = ".state"
BANS_FILE = "bans.json"


class BanStateError(SourceError):
    """The ban state file cannot be read: unsafe to send (we might be banned), so stop and say how to fix."""


def ban_key(provider: str, base_url: str) -> str:
    """`binance api.binance.com`: bans are per IP, i.e. per host the adapter talks to."""
    return f"{provider} {urlparse(base_url).netloc or base_url}"


class BanStore:
    """A JSON file of ban end times shared by every process that uses the same data_dir."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._cache: dict[str, dict[str, object]] = {}

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> BanStore:
        return cls(Path(data_dir).expanduser().absolute() / STATE_DIR / BANS_FILE)

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if stamp == self._stamp:
                return self._cache
        try:
            data = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as e:
            raise BanStateError(
                f"ban state file {self.path} cannot be read ({e}); no request is sent while it is unknown "
                "whether the provider banned this IP. Delete the file if no ban is active, then retry."
            ) from None
        if not isinstance(data, dict):
            raise BanStateError(
                f"ban state file {self.path} is not a JSON object; delete it if no ban is active, then retry"
            )
        with self._lock:
            self._stamp, self._cache = stamp, data
        return data

    def until(self, key: str) -> float | None:
        """End (epoch seconds) of the ban on `key` if it is still running, else None."""
        entry = self._load().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            end = float(entry.get("until", 0))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return end if end > time.time() else None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Cross-process lock for read-merge-write (a no-op where fcntl does not exist)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as fh:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows
                yield
                return
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def record(self, key: str, until: float, reason: str) -> None:
        """Persist a ban on `key` ending at `until` (epoch seconds); a later end already recorded wins."""
        with self._exclusive():
            try:
                current = dict(self._load())
            except BanStateError:
                current = {}  # an unreadable file is replaced by the ban we know about now
            now = time.time()
            data = {
                k: v for k, v in current.items()
                if isinstance(v, dict) and float(v.get("until", 0) or 0) > now  # type: ignore[arg-type]
            }  # fmt: skip
            old = data.get(key)
            if old is None or float(old.get("until", 0) or 0) < until:  # type: ignore[arg-type]
                data[key] = {"until": until, "reason": reason[:500]}
            fd, tmp = tempfile.mkstemp(prefix=BANS_FILE + ".", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise


class InstanceBanMirror:
    """Bans mirrored in the orchestrator's key-value storage (Dagster's run storage cursors), so a
    deployment whose processes do not share `data_dir` (workers on other hosts, one Postgres-backed
    Dagster instance) still sees every ban. Duck-typed on `get_cursor_values` / `set_cursor_values`,
    so this module knows nothing of Dagster.
    """

    PREFIX = "data_puller/ban/"

    def __init__(self, kv: object, key: str):
        self.kv = kv
        self.name = self.PREFIX + key
        self.key = key

    def until(self) -> float | None:
        """End of the mirrored ban (epoch seconds) while it runs, else None."""
        raw = self.kv.get_cursor_values({self.name}).get(self.name)  # type: ignore[attr-defined]
        try:
            end = float(raw) if raw else 0.0
        except ValueError:
            return None
        return end if end > time.time() else None

    def record(self, until: float) -> None:
        """Mirror a ban ending at `until`, unless a later end is already recorded."""
        current = self.until()
        if current is None or current < until:
            self.kv.set_cursor_values({self.name: repr(float(until))})  # type: ignore[attr-defined]

    def seed(self, store: BanStore) -> float | None:
        """Copy a running mirrored ban into the local file store (the adapter checks that one before every
        request); returns its end."""
        end = self.until()
        if end is not None and (store.until(self.key) or 0) < end:
            store.record(self.key, end, "ban recorded in the Dagster instance by another process")
        return end
