"""BatchedSqliteEventLogStorage: Dagster's SQLite event log, writing a range run's events in batches.

Why: on the embedded default every Dagster event is its own SQLite transaction on a fresh engine, and an
asset event is two (the run's shard and the cross-run index shard), each ending in an fsync. A range run
over a year of day partitions writes one ASSET_MATERIALIZATION_PLANNED event per partition per asset
before its first step starts and one ASSET_MATERIALIZATION per partition per output after it: about 1,100
events for raw + normalized + quarantine of one symbol-year, which took ~20 s of a ~58 s run (~18 ms an
event). Dagster already groups those events into batches (`DagsterEventBatchMetadata`) and hands a batch
to `EventLogStorage.store_event_batch` when DAGSTER_EVENT_BATCH_SIZE is set, but the SQLite storage's
batch method stores the events one by one.

What this class changes, and nothing else (same files, schema and layout as SqliteEventLogStorage, so an
instance can switch between the two at any time):
- `store_event_batch` writes a batch's asset events in one transaction per shard (executemany on the
  run shard, one index transaction for the event rows, asset keys and tags), serializing each event
  once and each asset's `asset_keys` row once per batch; other events of a batch (asset-check planned
  events) go through `store_event` as before.
- The instance enables Dagster's batching when this storage is created (DAGSTER_EVENT_BATCH_SIZE,
  `setdefault`, so an explicit value wins; 0 turns batching off).
- Engines are created once per shard and process (NullPool: still a new SQLite connection per
  transaction, so no connection crosses a fork or a thread), and every connection uses
  `PRAGMA synchronous=NORMAL`. The shards are in WAL mode (Dagster sets it), where NORMAL keeps every
  committed transaction across a crash of the process; only a power loss or OS crash may lose the last
  transactions before a checkpoint. For an embedded, single-machine instance that trade is right; the
  production instance is Postgres (deploy/dagster.postgres.yaml).
- `has_table` remembers tables it found (the stock storage opens an engine to ask on every asset event).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Self

import sqlalchemy as db
from dagster import Field, StringSource
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import AssetKeyTable, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy import exc as db_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

# Events per batch: a batch is one step output's materializations or one run's planned events; a year of
# day partitions is 366 events, so a batch rarely splits.
DEFAULT_EVENT_BATCH_SIZE = "1000"
# Engines kept per process (one per run shard used recently + the index shard); NullPool engines hold no
# connection, so dropping one costs nothing but its re-creation.
MAX_CACHED_ENGINES = 64


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event log storage (run-sharded, as Dagster's default) that stores event batches in bulk."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        """Without `base_dir`, the storage lives where Dagster's default one does, under the instance's
        own directory (`<instance root>/history/runs`), known once the instance registers itself."""
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", DEFAULT_EVENT_BATCH_SIZE)
        self._engines: OrderedDict[tuple[int, str], Engine] = OrderedDict()
        self._known_tables: set[str] = set()
        self._deferred = base_dir is None
        if self._deferred:
            self._inst_data = inst_data
        else:
            super().__init__(base_dir, inst_data=inst_data)

    def register_instance(self, instance: Any) -> None:
        if self._deferred:
            self._deferred = False
            base_dir = os.path.join(instance.root_directory, "history", "runs")
            SqliteEventLogStorage.__init__(self, base_dir, inst_data=self._inst_data)
        super().register_instance(instance)

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(inst_data=inst_data, **dict(config_value or {}))

    # ------------------------------------------------------------------ connections
    def _engine(self, shard: str) -> Engine:
        key = (os.getpid(), shard)
        engine = self._engines.get(key)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                poolclass=NullPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
            db.event.listen(engine, "connect", _set_pragmas)
            self._engines[key] = engine
            while len(self._engines) > MAX_CACHED_ENGINES:
                self._engines.popitem(last=False)[1].dispose()
        else:
            self._engines.move_to_end(key)
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    def has_table(self, table_name: str) -> bool:
        if table_name in self._known_tables:
            return True
        found = super().has_table(table_name)
        if found:
            self._known_tables.add(table_name)
        return found

    # ------------------------------------------------------------------ batches
    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Asset events of the batch in one transaction per shard; any other event one by one.

        Each event is serialized once (the stock path serializes it for the run shard, again for the
        index shard and a third time for the asset's row), the index rows are inserted in one statement
        returning their ids in order, and each asset's row in `asset_keys` is written once, with the
        values the events would have left there one after another (see `_asset_entry_values`).
        """
        asset = [e for e in events if e.is_dagster_event and e.dagster_event_type in ASSET_EVENTS
                 and e.get_dagster_event().asset_key]  # fmt: skip
        batched = {id(e) for e in asset}
        others = [e for e in events if id(e) not in batched]
        rows = [self._event_to_row(e) for e in asset]
        by_run: dict[str, list[dict[str, Any]]] = {}
        for e, r in zip(asset, rows, strict=True):
            by_run.setdefault(e.run_id, []).append(r)
        for run_id, run_rows in by_run.items():
            with self.run_connection(run_id) as conn:
                conn.execute(SqlEventLogStorageTable.insert(), run_rows)
        if asset:
            # Mirrored in the cross-run index shard, as SqliteEventLogStorage.store_event does one at a time.
            with self.index_transaction() as conn:
                insert = SqlEventLogStorageTable.insert().returning(
                    SqlEventLogStorageTable.c.id, sort_by_parameter_order=True
                )
                ids = [r[0] for r in conn.execute(insert, rows)]
                if len(ids) != len(asset) or any(i is None for i in ids):
                    raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
                self._store_asset_event_tags(conn, asset, ids)
                has_cols = self._has_asset_key_index_cols_on_connection(conn)
                for key, values in _asset_entry_values(self, asset, ids, has_cols).items():
                    try:
                        conn.execute(AssetKeyTable.insert().values(asset_key=key, **values))
                    except db_exc.IntegrityError:
                        conn.execute(AssetKeyTable.update().values(**values).where(AssetKeyTable.c.asset_key == key))
        for e in others:
            self.store_event(e)


def _asset_entry_values(
    storage: BatchedSqliteEventLogStorage, events: Sequence[EventLogEntry], ids: Sequence[int], has_cols: bool
) -> dict[str, dict[str, Any]]:
    """Per asset key, the `asset_keys` values the events leave when applied one after another.

    Applied in order, each column ends with the value of the last event that sets it; which columns an
    event sets depends only on its type (materialization, planned, observation). So only the last event
    of each type per asset matters, and applying those in their original order gives the same row - while
    serializing one materialization record per asset instead of one per partition.
    """
    last: dict[tuple[str, Any], int] = {}
    for i, e in enumerate(events):
        last[(e.get_dagster_event().asset_key.to_string(), e.dagster_event_type)] = i
    out: dict[str, dict[str, Any]] = {}
    for (key, _type), i in sorted(last.items(), key=lambda kv: kv[1]):
        values = storage._get_asset_entry_values(events[i], ids[i], has_cols)
        if values:
            out.setdefault(key, {}).update(values)
    return out


def _set_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()
