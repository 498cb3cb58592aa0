"""One weight/credit budget and one ban state for every process of a deployment, kept in Redis.

Why: providers limit the deployment, not the process. Binance counts request weight per IP (6000 per
minute) and bans the IP; Twelve Data counts credits per API key. `MinuteBudget` (ratelimit.py) counts
what one process spent, so N celery workers (or N concurrent runs) on one IP would spend N budgets and
earn a 429, then a 418. With `sources.<provider>.shared_budget: redis://...` every process reserves its
weight from one counter instead.

How (each step one atomic Lua script, so no two processes can both take the last units of a window):
- keys are `data_puller:budget:<provider>:<host[:port] of base_url>[:<sha256(api key)[:16]>]:<window>s`
  plus `:w:<window id>` (the weight reserved in that window, expires after two windows), `:pause` (a
  429's Retry-After: every process holds) and `:ban` (a 418's end: every process refuses to send).
  Twelve Data's scope is per key, and only a hash of the key is ever stored or shown.
- the window is Redis's own clock (`TIME`), so processes on hosts whose clocks drift still agree on
  where a window starts.
- `acquire(cost)` reserves `cost` before the request is sent (reservations count, so requests in
  flight are never forgotten); within `edge_seconds` of a window's end it reserves in the next window
  too, since the provider counts the request where it lands (ratelimit.WindowLimits says why);
  `observe(headers)` raises the window's count to the provider's own figure (`X-MBX-USED-WEIGHT-1M`,
  which also counts clients outside this deployment) - for the window the request was reserved in, so
  a reply arriving just after a window turned does not charge the new window with the old one's weight.
- a store that cannot be reached fails the request as retryable (TransientSourceError): sending
  without knowing what the other workers spent is how an IP gets banned.

The class has MinuteBudget's interface (acquire, observe, pause, ban, used, waited_seconds), so
HttpClient uses either unchanged.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from data_puller_dagster.sources.errors import IpBannedError, TransientSourceError
from data_puller_dagster.sources.ratelimit import WindowLimits

KEY_PREFIX = "data_puller:budget"

# -> {"ban", until, now} | {"wait", seconds, now} | {"ok", window id, used}
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ban = tonumber(redis.call('GET', KEYS[1]) or '0')
if ban > now then return {'ban', tostring(ban), tostring(now)} end
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return {'wait', tostring(pause - now), tostring(now)} end
local window = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local wid = math.floor(now / window)
local key = KEYS[3] .. string.format('%d', wid)
local left = (wid + 1) * window - now
local used = tonumber(redis.call('GET', key) or '0')
if used > 0 and used + cost > threshold then
  return {'wait', tostring(left), tostring(now)}
end
local nextkey = nil
if left < tonumber(ARGV[4]) then  -- the window's edge: the request may land in the next one
  nextkey = KEYS[3] .. string.format('%d', wid + 1)
  local nused = tonumber(redis.call('GET', nextkey) or '0')
  if nused > 0 and nused + cost > threshold then
    return {'wait', tostring(left), tostring(now)}
  end
end
used = redis.call('INCRBY', key, cost)
redis.call('PEXPIRE', key, math.ceil(window * 2000))
if nextkey then
  redis.call('INCRBY', nextkey, cost)
  redis.call('PEXPIRE', nextkey, math.ceil(window * 3000))
end
return {'ok', string.format('%d', wid), tostring(used)}
"""

# KEYS[1] window key; ARGV used (from the provider), ttl ms -> the count before
_OBSERVE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return tostring(cur)
"""

# KEYS[1] pause or ban key; ARGV[1] seconds from now (relative=1) or an epoch (relative=0), ARGV[2]
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local untl = tonumber(ARGV[1])
if ARGV[2] == '1' then untl = now + untl end
if untl <= now then return '0' end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > cur then
  redis.call('SET', KEYS[1], tostring(untl), 'PX', math.ceil((untl - now) * 1000) + 1000)
end
return tostring(math.max(untl, cur))
"""

# KEYS[1] window key prefix; ARGV[1] window -> used in the current window
_USED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local wid = math.floor(now / tonumber(ARGV[1]))
return redis.call('GET', KEYS[1] .. string.format('%d', wid)) or '0'
"""


def scope_of(provider: str, base_url: str, secret: str | None = None, window_seconds: float = 60.0) -> str:
    """The key scope: provider, host[:port] of the base URL, a hash of the API key (never the key)."""
    parts = urlsplit(base_url)
    host = (parts.hostname or base_url).lower()
    host = f"{host}:{parts.port}" if parts.port else host
    scope = f"{KEY_PREFIX}:{provider}:{host}"
    if secret:
        scope += ":" + hashlib.sha256(secret.encode()).hexdigest()[:16]
    return f"{scope}:{window_seconds:g}s"


def redacted(url: str) -> str:
    """host:port/db of a Redis URL, for messages (no user, no password)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname or '?'}{f':{p.port}' if p.port else ''}{p.path or ''}"


class SharedBudget(WindowLimits):
    """At most `budget * safety_fraction` units per window for every process using the same Redis and
    scope. Same interface as ratelimit.MinuteBudget."""

    def __init__(
        self,
        url: str,
        scope: str,
        budget: int,
        safety_fraction: float = 1.0,
        *,
        used_header: str | None = None,
        window_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        provider: str = "",
        setting: str = "",
        client: Any = None,
    ):
        super().__init__(
            budget, safety_fraction, used_header=used_header, window_seconds=window_seconds, sleep=sleep,
            provider=provider,
        )  # fmt: skip
        import redis

        self.scope = scope
        self.where = redacted(url)
        self.setting = setting or f"sources.{provider}.shared_budget"
        self._redis_errors = (redis.ConnectionError, redis.TimeoutError)
        self.client = client or redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        self._acquire = self.client.register_script(_ACQUIRE)
        self._observe = self.client.register_script(_OBSERVE)
        self._hold = self.client.register_script(_HOLD)
        self._used = self.client.register_script(_USED)
        self._local = threading.local()  # the window this thread's last request was reserved in

    @classmethod
    def like(
        cls, local: Any, url: str, base_url: str, *, secret: str | None = None, setting: str = ""
    ) -> SharedBudget:
        """The shared twin of a MinuteBudget built from the same config (same limit, header, window)."""
        return cls(
            url, scope_of(local.provider, base_url, secret, local.window), local.budget,
            local.threshold / local.budget, used_header=local.used_header, window_seconds=local.window,
            sleep=local.sleep, provider=local.provider, setting=setting,
        )  # fmt: skip

    @property
    def keys(self) -> list[str]:
        """The key pattern of this scope (tests and operators delete them with it)."""
        return [f"{self.scope}:*"]

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except self._redis_errors as e:
            raise TransientSourceError(
                f"{self.provider}: the shared budget store {self.where} is unreachable ({type(e).__name__}); "
                f"no request is sent without it (the other workers' usage is unknown). Start Redis or fix "
                f"{self.setting}; the partition is retried later",
                provider=self.provider,
            ) from None

    def acquire(self, cost: int = 1) -> None:
        """Block until `cost` units fit in the deployment's current window; raise while banned."""
        while True:
            reply = self._run(
                self._acquire,
                [f"{self.scope}:ban", f"{self.scope}:pause", f"{self.scope}:w:"],
                [repr(float(self.window)), int(cost), self.threshold, repr(float(self.edge_seconds))],
            )
            kind, a, _ = (x.decode() if isinstance(x, bytes) else str(x) for x in reply)
            if kind == "ok":
                self._local.wid = int(a)
                return
            if kind == "ban":
                until = datetime.fromtimestamp(float(a), UTC)
                raise IpBannedError(
                    f"{self.provider}: banned until {until.isoformat()} (recorded in the shared budget store "
                    f"{self.where} by a process of this deployment); not sending requests before then",
                    until=until, provider=self.provider,
                )  # fmt: skip
            wait = max(0.0, float(a)) + random.uniform(0.001, 0.02)  # spread the wake-ups a little
            with self._lock:
                self.waited_seconds += wait
            self.sleep(wait)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Raise the count of the window this thread's request was reserved in to the provider's figure."""
        used = self.reported_used(headers)
        wid = getattr(self._local, "wid", None)
        if used is None or wid is None:
            return
        self._run(self._observe, [f"{self.scope}:w:{wid}"], [used, math.ceil(self.window * 2000)])

    def pause(self, seconds: float) -> None:
        """Hold every process for `seconds` (a 429's Retry-After applies to the IP or key)."""
        if seconds > 0:
            self._run(self._hold, [f"{self.scope}:pause"], [repr(float(seconds)), "1"])

    def ban(self, until_epoch: float) -> None:
        """Refuse every request of every process until `until_epoch` (a 418)."""
        self._run(self._hold, [f"{self.scope}:ban"], [repr(float(until_epoch)), "0"])

    @property
    def used(self) -> int:
        """Units reserved (or reported by the provider) in the current window, by every process."""
        raw = self._run(self._used, [f"{self.scope}:w:"], [repr(float(self.window))])
        return int(raw.decode() if isinstance(raw, bytes) else raw)

    def banned_until(self) -> float | None:
        """End of a running ban (epoch seconds), else None."""
        try:
            raw = self.client.get(f"{self.scope}:ban")
        except self._redis_errors:
            return None
        end = float(raw) if raw else 0.0
        return end if end > time.time() else None

    def reset(self) -> int:
        """Delete this scope's keys (counts, pause, ban): lift a ban only once the provider has."""
        keys = list(self.client.scan_iter(match=f"{self.scope}:*", count=500))
        return int(self.client.delete(*keys)) if keys else 0
