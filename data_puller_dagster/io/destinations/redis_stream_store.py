"""Redis streams destination: one stream per (feed, table, symbol), one entry per candle.

Entry id `<ts ms>-0` (the candle's open time), fields `id` (the deterministic message id, see
stream_base) and `data` (the candle's JSON). Why explicit ids: Redis itself then refuses a second
copy of a candle (XADD rejects an id at or below the stream's last id), so a retried Dagster step
cannot make a consumer see a candle twice. Publishing reads each stream's last id once (XINFO STREAM,
one round trip for all streams of the slice) and sends only the newer candles; an XADD that is
refused all the same (another publisher got there first) counts as already published.

The consequence, by Redis' design: a stream only grows forward in time. Candles at or before the
stream's last entry are never added later (a backfill of older days, a re-fetched day with corrected
values); they are counted in `skipped_rows`. Delete the stream (or use another template) to republish
history.

**Live tables** (`data-puller stream`): final candles go to `stream` exactly as above (candle-time ids,
exactly once, in time order: the stream runner routes each symbol's finals in order). In-progress updates
(`is_final` false, only sent by routes with `in_progress: true`) all share their candle's id, so they
never enter `stream` (the first would take the id its final candle needs); with `updates_stream` set,
every row of such a route (updates and finals) is also added there with a Redis-generated id (`*`): the
full life of each candle, at least once (a re-published batch appears again; dedupe on `id` +
`data`). Without it, in-progress rows are counted in `skipped_in_progress`.

A live micro-batch goes out as one server-side script per `batch_size` entries (finals and update rows
together): the script checks every key's type before writing anything, then XADDs; Redis refuses a
final candle at or below its stream's last id (a re-sent row: counted in `refused_as_duplicate` and
`skipped_rows`), so no last-id read is needed first. Why a script: redis-py packing and parsing one XADD
per candle plus that read was most of a 200-symbol burst's time (the latency target of issue 18). A user
who may not run scripts (ACL) gets the MULTI/EXEC path below instead, with the same result.

Otherwise each batch of `batch_size` XADDs is one MULTI/EXEC pipeline: one round trip. Either way a
consumer never sees half a batch. `maxlen` trims each stream approximately (`MAXLEN ~`), cheap for Redis.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, ClassVar

import numpy as np
import redis
from pydantic import Field, SecretStr, field_validator
from redis.backoff import NoBackoff
from redis.retry import Retry

from data_puller_dagster.io.destinations.redis_scripts import LAST_IDS, LIVE_XADD, SCRIPTING_REFUSED
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
    split_url,
)
from data_puller_dagster.io.errors import StorageError
from data_puller_dagster.io.tables import TableRef

STREAM_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")
_PLACEHOLDERS = ("feed", "table", "symbol_key", "timeframe")
_ID_TOO_SMALL = "equal or smaller than the target stream top item"
_IN_PROGRESS = b'"is_final":false'  # only the key can match: quotes inside JSON strings are escaped
class RedisStreamOptions(StreamOptions):
    url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="redis://[:password@]host:port/db or rediss:// (TLS); the password is never shown",
    )
    stream: str = Field(
        "{feed}:{table}:{symbol_key}",
        description="Stream key template: {feed}, {table}, {symbol_key} (required), {timeframe}",
    )
    updates_stream: str | None = Field(
        None,
        description="Live tables, routes with in_progress: true: stream key template that also gets every row, "
        "in-progress updates included, with Redis-generated ids (at least once); {symbol_key} required",
    )
    maxlen: int | None = Field(
        None, gt=0, description="Trim each stream to about this many entries (MAXLEN ~); none: keep all"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value()
        shown = shown_url(url)
        parts = split_url(url, shown, "Redis URL", "redis://host:6379/0")
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"url {shown!r} is not a Redis URL; use redis://host:6379/0 or rediss://host:6380/0")
        if parts.path.strip("/") and not parts.path.strip("/").isdigit():
            raise ValueError(f"url {shown!r}: the path must be a database number, e.g. /0")
        return v

    @field_validator("updates_stream")
    @classmethod
    def _updates_stream(cls, v: str | None) -> str | None:
        return None if v is None else check_template(v, _PLACEHOLDERS, "updates_stream name", STREAM_NAME,
                                                      required=("symbol_key",))  # fmt: skip

    @field_validator("stream")
    @classmethod
    def _stream(cls, v: str) -> str:
        # Entry ids are candle times, so two symbols in one stream would collide: {symbol_key} is required.
        return check_template(v, _PLACEHOLDERS, "stream name", STREAM_NAME, required=("symbol_key",))


class RedisStreamDestination(StreamBase):
    """Publishes candles to Redis streams with candle-time entry ids (no duplicates on re-publish)."""

    name: ClassVar[str] = "redis_stream"
    Options: ClassVar[type[RedisStreamOptions]] = RedisStreamOptions
    options: RedisStreamOptions

    def __init__(self, options: RedisStreamOptions):
        super().__init__(options)
        self._shown = shown_url(options.url.get_secret_value())
        self._client: redis.Redis | None = None
        self._scripting = True  # false once the server refused the live script (ACL): MULTI/EXEC from then on

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.options.url.get_secret_value(),
                socket_connect_timeout=self.options.connect_timeout_seconds,
                socket_timeout=self.options.timeout_seconds,
                retry=Retry(NoBackoff(), 0),  # fail fast: Dagster's retry policy decides about retries
                client_name="data-puller-dagster",
            )
        return self._client

    def stream_name(self, table: TableRef, key: str) -> str:
        return render_name(self.options.stream, name_values(table, key), "stream name", STREAM_NAME)

    def updates_stream_name(self, table: TableRef, key: str) -> str:
        """The `updates_stream` of a symbol (called only when the option is set)."""
        template = self.options.updates_stream
        if template is None:
            raise ValueError("redis_stream: updates_stream is not set; set it to publish in-progress updates")
        return render_name(template, name_values(table, key), "updates_stream name", STREAM_NAME)

    def _send(self, table: TableRef, messages: Messages, batch_size: int) -> dict[str, Any]:
        streams = [self.stream_name(table, key) for key, _, _, _ in messages.runs]
        md: dict[str, Any] = {"location": f"{self._shown} {self.options.stream}", "streams": streams}
        if not len(messages):
            return {**md, "published": 0, "skipped_rows": 0, "batches": 0}
        try:
            return {**md, **self._xadd(messages, streams, batch_size, table)}
        except redis.AuthenticationError:
            raise StreamUnreachableError(
                f"redis_stream: {self._shown} refused the credentials (password not shown); fix the url"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StreamUnreachableError(
                f"redis_stream: cannot reach {self._shown}: {self._cause(e)}; check the destination's url "
                "or start Redis"
            ) from None

    def _xadd(self, messages: Messages, streams: list[str], batch_size: int, table: TableRef) -> dict[str, Any]:
        r = self._redis()
        if table.layer == "live":  # see the module docstring: updates never take a candle's id
            in_progress = np.fromiter((_IN_PROGRESS in p for p in messages.payloads), bool, len(messages))
            live = self._xadd_live(r, table, messages, streams, batch_size, in_progress) if self._scripting else None
            if live is not None:
                return live
            live_md = self._xadd_updates(r, table, messages, batch_size, in_progress)
        else:
            in_progress, live_md = None, {}
        last = self._last_ms(r, streams)
        # Rows newer than their stream's last entry, found per symbol by one binary search (ts sorted).
        send = np.concatenate(
            [
                np.arange(a + int(np.searchsorted(messages.ts_ms[a:b], top, side="right")), b)
                for (_, _, a, b), top in zip(messages.runs, last, strict=True)
            ]
        )
        if in_progress is not None and in_progress.any():
            send = send[~in_progress[send]]
        stream_of = self._stream_of(messages)
        maxlen = self.options.maxlen
        published = refused = n_batches = 0
        for rows in batches(send, batch_size):
            pipe = r.pipeline(transaction=True)
            for i in rows.tolist():
                pipe.xadd(
                    streams[stream_of[i]],
                    {"id": messages.ids[i], "data": messages.payloads[i]},
                    id=f"{messages.ts_ms[i]}-0",
                    maxlen=maxlen,
                    approximate=True,
                )
            results = pipe.execute(raise_on_error=False)
            n_batches += 1
            for res in results:
                if isinstance(res, redis.ResponseError):
                    if _ID_TOO_SMALL not in str(res):
                        raise StreamPublishError(f"redis_stream: XADD failed: {res}")
                    refused += 1  # another publisher added this candle first
                elif isinstance(res, Exception):
                    raise res
                else:
                    published += 1
        return {
            "published": published,
            "skipped_rows": len(messages) - published,
            "refused_as_duplicate": refused,
            "batches": n_batches,
            **live_md,
        }

    @staticmethod
    def _stream_of(messages: Messages) -> np.ndarray:
        """Per row, the index of its stream (one stream per symbol run)."""
        return np.repeat(np.arange(len(messages.runs)), [b - a for _, _, a, b in messages.runs])

    def _xadd_live(
        self, r: redis.Redis, table: TableRef, messages: Messages, streams: list[str], batch_size: int,
        in_progress: np.ndarray,
    ) -> dict[str, Any] | None:
        """A live micro-batch in one server-side script per `batch_size` rows (None: scripting refused).

        Why: the live path's latency target. redis-py packing and parsing one XADD per candle in a
        MULTI/EXEC, plus a round trip for the streams' last ids, was most of a burst's time. The script
        adds the final candles with their candle-time ids (Redis refuses one at or below a stream's last
        id: counted in `refused_as_duplicate`, as a re-sent candle is) and, with `updates_stream`, every row
        with a generated id; it checks every key's type before writing anything, and runs atomically (a
        consumer never sees half a chunk).
        """
        template = self.options.updates_stream
        stream_of = self._stream_of(messages)
        rows = np.flatnonzero(~in_progress)  # finals -> `stream`, candle-time ids
        keys = list(streams)
        targets = [stream_of[rows]]
        ids = [np.char.add(messages.ts_ms[rows].astype(str), "-0")]
        picks = [rows]
        if template is not None:  # every row -> `updates_stream`, generated ids
            keys += [self.updates_stream_name(table, key) for key, _, _, _ in messages.runs]
            every = np.arange(len(messages))
            targets.append(stream_of + len(streams))
            ids.append(np.full(len(messages), "*", dtype=object))
            picks.append(every)
        target = np.concatenate(targets)
        entry_id = np.concatenate([np.asarray(i, dtype=object) for i in ids])
        pick = np.concatenate(picks)
        maxlen = "" if self.options.maxlen is None else str(self.options.maxlen)
        msg_ids = np.asarray(messages.ids, dtype=object)[pick]
        payloads = np.empty(len(messages), dtype=object)
        payloads[:] = messages.payloads
        payloads = payloads[pick]
        script = r.register_script(LIVE_XADD)
        published = refused = generated = n_batches = 0
        for chunk in batches(np.arange(len(pick)), batch_size):
            used = np.unique(target[chunk])  # the keys this chunk touches, declared to the script
            local = np.searchsorted(used, target[chunk]) + 1  # Lua's 1-based KEYS index
            # ARGV: maxlen, then (key index, entry id, message id, payload) per entry, interleaved in C
            fields = (local.tolist(), entry_id[chunk].tolist(), msg_ids[chunk].tolist(), payloads[chunk].tolist())
            args: list[Any] = [maxlen, *itertools.chain.from_iterable(zip(*fields, strict=True))]
            try:
                reply = script(keys=[keys[u] for u in used.tolist()], args=args)
            except redis.ResponseError as e:
                text = str(e)
                if "DPWRONGTYPE" in text:
                    key, kind = text.split("DPWRONGTYPE ", 1)[1].rsplit(" ", 1)
                    raise StorageError(f"redis_stream: key {key!r} is not a stream (a {kind}); delete it or change "
                                       "`stream`/`updates_stream`") from None  # fmt: skip
                if "DPXADD" in text:
                    raise StreamPublishError(f"redis_stream: XADD failed: {text.split('DPXADD ', 1)[1]}") from None
                refused_here = isinstance(e, redis.exceptions.NoPermissionError) or SCRIPTING_REFUSED.search(text)
                if n_batches == 0 and refused_here:
                    self._scripting = False
                    return None  # nothing written yet: the pipeline path does it without scripting
                raise StreamPublishError(f"redis_stream: the live XADD script failed: {text}") from None
            n_batches += 1
            published, refused, generated = published + reply[0], refused + reply[1], generated + reply[2]
        md: dict[str, Any] = {
            "published": published,
            "skipped_rows": len(messages) - published,
            "refused_as_duplicate": refused,
            "batches": n_batches,
            "skipped_in_progress": int(in_progress.sum()),
        }
        if template is not None:
            md["updates_published"] = generated
        return md

    def _xadd_updates(
        self, r: redis.Redis, table: TableRef, messages: Messages, batch_size: int, in_progress: np.ndarray
    ) -> dict[str, Any]:
        """Live rows to `updates_stream` with Redis-generated ids (or count the in-progress ones skipped)."""
        template = self.options.updates_stream
        if template is None:
            return {"skipped_in_progress": int(in_progress.sum())}
        names = {key: self.updates_stream_name(table, key) for key, _, _, _ in messages.runs}
        for rows in batches(range(len(messages)), batch_size):
            pipe = r.pipeline(transaction=True)
            for i in rows:
                pipe.xadd(names[messages.keys[i]], {"id": messages.ids[i], "data": messages.payloads[i]},
                          maxlen=self.options.maxlen, approximate=True)  # fmt: skip
            for res in pipe.execute(raise_on_error=False):
                if isinstance(res, Exception):
                    raise StreamPublishError(f"redis_stream: XADD to the updates stream failed: {res}")
        return {"updates_published": len(messages), "skipped_in_progress": int(in_progress.sum())}

    @staticmethod
    def _last_ms(r: redis.Redis, streams: list[str]) -> list[int]:
        """Each stream's last id's millisecond part (-1 for a stream that does not exist yet).

        XINFO's `last-generated-id` rather than the last entry: it stays put when entries are trimmed
        or deleted, and it is what XADD compares a new id with. Read by a server-side script that returns
        only that id per stream: XINFO's whole reply (first and last entry included) parsed by redis-py
        cost ~0.15 ms per stream, most of a live micro-batch's time at 200 symbols."""
        out = []
        script = r.register_script(LAST_IDS)  # EVALSHA: the script's text is sent once per server
        try:
            lasts = script(keys=streams)
        except redis.ResponseError:  # scripting not allowed for this user (ACL) or server: XINFO per stream
            return RedisStreamDestination._last_ms_xinfo(r, streams)
        for s, last in zip(streams, lasts, strict=True):
            text = last.decode() if isinstance(last, bytes) else str(last)
            if text == "":
                out.append(-1)
            elif text.startswith("type:"):
                raise StorageError(f"redis_stream: key {s!r} is not a stream (a {text[5:]}); delete it or change `stream`")
            else:
                out.append(int(text.split("-")[0]))
        return out

    @staticmethod
    def _last_ms_xinfo(r: redis.Redis, streams: list[str]) -> list[int]:
        """`_last_ms` without scripting: one XINFO STREAM per stream, in one pipeline."""
        pipe = r.pipeline(transaction=False)
        for s in streams:
            pipe.xinfo_stream(s)
        out = []
        for s, res in zip(streams, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(res, redis.ResponseError):
                if "no such key" in str(res).lower():
                    out.append(-1)
                    continue
                raise StorageError(f"redis_stream: key {s!r} is not a stream ({res}); delete it or change `stream`")
            if isinstance(res, Exception):
                raise res
            last = res["last-generated-id"]
            out.append(int((last.decode() if isinstance(last, bytes) else str(last)).split("-")[0]))
        return out

    @staticmethod
    def _cause(e: Exception) -> str:
        text = str(e)
        for needle, cause in (("refused", "connection refused"), ("timed out", "timed out"),
                              ("Name or service not known", "name does not resolve")):
            if needle in text:
                return cause
        return type(e).__name__

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
