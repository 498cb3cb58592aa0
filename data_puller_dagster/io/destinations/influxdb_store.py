"""InfluxDB destination (kind "store"): candles as InfluxDB 1.x points, written as line protocol with
HTTP POST `/write`, read back with InfluxQL over `/query` (values as bound parameters).

What an analyst finds in the database:
- measurement = the table name (`normalized_ohlcv_1h`, `ohlcv_1d`, ...), not one `ohlcv` for all:
  InfluxDB fixes a field's type per measurement (per shard), and the layers disagree (raw `open` is a
  string, normalized `open` a float). Feeds sharing a table name share its measurement, told apart by
  the `feed` tag (they must agree on column types; the pipeline's layers do).
- tags: `feed`; `symbol` (display form, `EUR/USD`), `timeframe`, `source` when they are string
  columns; `dp_slot` (below); `dp_n` only on the 2nd, 3rd... row sharing a (symbol, ts) in tables
  without primary key (raw, quarantine keep such rows, and InfluxDB merges points of one series and
  time); `dp_nat` on quarantine rows without a timestamp (stored at the slice's first midnight).
- fields: every other column. floats print shortest-round-trip (exact), integers get `i`, booleans
  `t`/`f`, strings are quoted and escaped, datetimes are integer ns since the epoch. A missing value
  (NaN, NA, NaT) is left out of its point (InfluxDB has no null) and reads back as missing in the
  column's dtype; a row with no value at all gets the field `dp_empty=t`.
- time: `ts` (ns, or us with `precision: u`). Column dtypes: measurement `dp_tables`.

Replacing a partition, and what is atomic. InfluxDB has no transactions, and a point written at an
existing series+time is merged into the old one (a field the new row lacks keeps its old value), so an
in-place overwrite is wrong for rows with missing values. Each (symbol, day) therefore has two slots,
`dp_slot=a|b`, and a commit record in measurement `dp_partitions` (tags feed, table, symbol = partition
key; fields slot, rows; time = the day) naming the live one. A write reads the slice's records,
DELETEs whatever the other (target) slot holds, writes the new points there in batches, commits (one
point per partition, one request for the slice), then DELETEs every point of the partition not in the
target slot. `read` returns only committed slots, so a failure before the commit leaves every
partition's previous version in place (the new points are deleted again, best effort), and a reader
sees a partition's old or new version, never a mix. A direct InfluxQL query sees both versions
between the commit and the last DELETE (milliseconds; until the next write of the partition if that
DELETE fails, which fails the write). Two writers of one partition at once are not serialized.

Server requirement: InfluxDB 1.x with the `tsi1` index. With 1.6's default `inmem` index a DELETE
also removes points of a series that was deleted before and written again (measured: even a plain
"delete day D of X, write it again, then delete day D of Y" loses X), so before its first write each
instance checks this in a scratch measurement and refuses such a server, naming the fix.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ConfigDict, Field, SecretStr, field_validator

from data_puller_dagster.io.destinations.base import DestinationOptions
from data_puller_dagster.io.destinations.influxdb_wire import (
    EMPTY,
    SYMBOL,
    InfluxDBError,
    InfluxHTTP,
    Params,
    encode_lines,
    field_string,
    field_values_of,
    ident,
    request_bodies,
    tag_values_of,
)
from data_puller_dagster.io.errors import FrameContractError, SchemaDriftError
from data_puller_dagster.io.frames import (
    check_frame,
    drift_message,
    dtype_kind,
    dtype_map,
    empty_frame,
    restore_dtypes,
    to_arrow,
)
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.symbols import check_name, partition_key

NS_PER_DAY = 86_400 * 10**9
TAG_COLUMNS = ("source", "symbol", "timeframe")  # tags when present as string columns
FEED, SLOT, DUP, NAT = "feed", "dp_slot", "dp_n", "dp_nat"
RESERVED_COLUMNS = frozenset({"time", FEED, SLOT, DUP, NAT, EMPTY})
PARTITIONS, TABLES = "dp_partitions", "dp_tables"
SLOTS = ("a", "b")
ENCODE_ROWS = 1 << 16  # rows encoded at once (then cut into batch_size requests)
_NAT = np.iinfo(np.int64).min


class InfluxDBOptions(DestinationOptions):
    """Options of the `influxdb` destination type."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field("http://127.0.0.1:8086", description="InfluxDB HTTP API base URL, without credentials.")
    database: str = Field("data_puller", description="Database (lower-case name); created if missing.")
    username: SecretStr | None = Field(None, description="User for HTTP basic auth (when auth is enabled).")
    password: SecretStr | None = Field(None, description="Its password; use ${VAR}, never a literal.")
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="Rows (points) per /write request.")
    timeout_seconds: float = Field(30.0, gt=0, description="Read timeout per request (connect: min(5, this)).")
    retries: int = Field(3, ge=0, le=10, description="Retries of 5xx answers and connection errors (not 4xx).")
    retry_backoff_seconds: float = Field(0.5, ge=0, le=60, description="First retry delay; doubles each time.")
    precision: Literal["ns", "u"] = Field("ns", description="Timestamp unit of the data points.")
    create_database: bool = Field(True, description="CREATE DATABASE before the first write (needs admin).")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8086")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials (value not shown); set username and password instead")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment; give the API base URL only")
        return v.rstrip("/")

    @field_validator("database")
    @classmethod
    def _database(cls, v: str) -> str:
        return check_name(v, "influxdb database name")


# ---------------------------------------------------------------------------------- destination
class InfluxDBDestination:
    """Tables as InfluxDB measurements; partitions replaced through two slots and a commit record."""

    name = "influxdb"
    kind: ClassVar[Literal["store"]] = "store"
    Options: ClassVar[type[DestinationOptions]] = InfluxDBOptions

    def __init__(self, url: str = "http://127.0.0.1:8086", database: str = "data_puller", **options: Any):
        opts = InfluxDBOptions(url=url, database=database, **options)
        self.url, self.database = opts.url, opts.database
        self.batch_size, self.precision = opts.batch_size, opts.precision  # batch_size may be changed later
        user = opts.username.get_secret_value() if opts.username else None
        password = opts.password.get_secret_value() if opts.password else ""
        auth = (user, password) if user is not None else None
        self._http = InfluxHTTP(self.url, self.database, auth, opts.timeout_seconds, opts.retries,
                                 opts.retry_backoff_seconds)  # fmt: skip
        self._database_ready = not opts.create_database
        self._delete_checked = False

    @classmethod
    def from_options(cls, options: InfluxDBOptions, storage: Any = None) -> InfluxDBDestination:
        return cls(**options.model_dump())

    def __repr__(self) -> str:
        return f"InfluxDBDestination(url={self.url!r}, database={self.database!r})"

    def location(self, table: TableRef) -> str:
        return f"{self.url}#{self.database}/{table.name}?feed={table.feed}"

    # ------------------------------------------------------------------------------------- write
    def write(self, table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> dict[str, Any]:
        df = check_frame(table, df, part)
        where = f"influxdb {table.qualified}, slice {part.describe()}"
        _check_table(table)
        reserved = sorted(RESERVED_COLUMNS & {str(c) for c in df.columns})
        if reserved:
            raise FrameContractError(f"{where}: column(s) {reserved} are reserved by the InfluxDB store; rename them")
        dtypes = dtype_map(df)
        kinds = {c: dtype_kind(t) for c, t in dtypes.items()}
        tags = [c for c in TAG_COLUMNS if kinds.get(c) == "str"]
        arrow = to_arrow(df)  # shared with the other destinations of a routed write
        tag_values: dict[str, Any] = {c: tag_values_of(arrow.column(c).combine_chunks(), c, where) for c in tags}
        fields = {c: field_values_of(arrow.column(c), kinds[c], c, where) for c in dtypes if c != "ts" and c not in tags}

        self._ensure_database()
        old = self._dtypes(table)
        if old is not None and (have := {c: dtype_kind(t) for c, t in old.items()}) != kinds:
            raise SchemaDriftError(drift_message(f"influxdb (database {self.database})", table, have, kinds))
        if old != dtypes:  # first write, or the same kinds in another pandas flavour: the latest wins
            line = f"{TABLES},{FEED}={table.feed},table={table.name} dtypes={field_string(json.dumps(dtypes))}"
            self._http.write(f"recording the dtypes of {where}", f"{line} {time.time_ns()}\n".encode(), "ns")

        target = (self._live_slots(table, part) == 0).astype(np.int8)  # b after a; a after b or nothing
        ts = df["ts"].array.asi8
        nat = ts == _NAT
        start_ns = pd.Timestamp(part.start_ts).value
        stamps = np.where(nat, start_ns, ts)
        day = (stamps - start_ns) // NS_PER_DAY
        codes, displays = pd.factorize(df["symbol"])
        key_index = np.array([part.keys.index(partition_key(d)) for d in displays], dtype=np.int64)[codes]
        tag_values[FEED] = table.feed
        tag_values[SLOT] = pc.take(pa.array(SLOTS), pa.array(target[key_index, day]))
        if not table.primary_key or not set(table.primary_key) <= {"symbol", "ts"}:
            n = df.groupby([df["symbol"], df["ts"]], sort=False, dropna=False).cumcount().to_numpy()
            tag_values[DUP] = pc.if_else(pa.array(n == 0), pa.scalar(None, pa.string()), pc.cast(pa.array(n), pa.string()))
        if nat.any():
            tag_values[NAT] = pc.if_else(pa.array(nat), "1", pa.scalar(None, pa.string()))
        if self.precision == "u":
            stamps = stamps // 1000

        sent, total = 0, sum(-(-min(ENCODE_ROWS, len(df) - a) // self.batch_size) for a in range(0, len(df), ENCODE_ROWS))
        try:
            self._delete(table, part, target, "=", where)  # debris of an earlier failed write
            for a in range(0, len(df), ENCODE_ROWS):
                k = min(ENCODE_ROWS, len(df) - a)
                lines = encode_lines(
                    table.name,
                    {c: v if isinstance(v, str) else v.slice(a, k) for c, v in tag_values.items()},
                    {c: v.slice(a, k) for c, v in fields.items()},
                    stamps[a : a + k],
                )
                for body in request_bodies(lines, self.batch_size):
                    self._http.write(f"writing {where}", body, self.precision)
                    sent += 1
        except Exception as e:
            try:
                self._delete(table, part, target, "=", where)
                undone = "its new points were deleted again"
            except InfluxDBError:
                undone = "its new points stay (invisible to read) until the next write of those partitions"
            raise InfluxDBError(
                f"{e} (after {sent} of {total} write requests); nothing was committed: the previous "
                f"version of every partition is intact, and {undone}"
            ) from None

        rows = np.bincount(key_index * part.days + day, minlength=len(part.keys) * part.days)
        commit = "".join(
            f"{PARTITIONS},{FEED}={table.feed},symbol={key},table={table.name} "
            f'rows={int(rows[i * part.days + j])}i,slot="{SLOTS[target[i, j]]}" {start_ns + j * NS_PER_DAY}\n'
            for i, key in enumerate(part.keys)
            for j in range(part.days)
        )
        self._http.write(f"committing {where} (if the server failed midway, some partitions of the slice are "
                    "replaced, each whole; rerun the write)", commit.encode(), "ns")  # fmt: skip
        try:
            self._delete(table, part, target, "!=", where)
        except InfluxDBError as e:
            raise InfluxDBError(
                f"{e}; the new rows are committed (read returns them) but the previous version's points "
                "were not deleted, so direct InfluxQL queries see both until this write is rerun"
            ) from None
        return {"rows": len(df), "write_requests": sent, "partitions": part.days * len(part.keys),
                "location": self.location(table)}  # fmt: skip

    def _delete(self, table: TableRef, part: PartitionSlice, target: np.ndarray, op: str, where: str) -> None:
        """DELETE the slice's points whose slot is `op` ("=" / "!=") the partition's target slot: one
        statement per symbol and run of consecutive days with the same target."""
        start_ns = pd.Timestamp(part.start_ts).value
        p, statements = Params(), []
        for i, display in enumerate(part.displays):
            j = 0
            while j < part.days:
                k = j
                while k + 1 < part.days and target[i, k + 1] == target[i, j]:
                    k += 1
                statements.append(
                    f"DELETE FROM {ident(table.name)} WHERE {ident(FEED)} = {p(table.feed)} AND "  # noqa: S608 - values are bound parameters
                    f"{SYMBOL} = {p(display)} AND {ident(SLOT)} {op} {p(SLOTS[target[i, j]])} AND "
                    f"time >= {p(start_ns + j * NS_PER_DAY)} AND time < {p(start_ns + (k + 1) * NS_PER_DAY)}"
                )
                j = k + 1
        self._http.query(f"deleting points of {where}", ";\n".join(statements), p)

    # -------------------------------------------------------------------------------------- read
    def read(self, table: TableRef, part: PartitionSlice) -> pd.DataFrame:
        """One InfluxQL SELECT of the slice's symbols and days; rows of uncommitted slots are dropped."""
        _check_table(table)
        dtypes = self._dtypes(table)
        if dtypes is None:
            return pd.DataFrame()
        live = self._live_slots(table, part)
        if (live < 0).all():
            return empty_frame(dtypes)
        kinds = {c: dtype_kind(t) for c, t in dtypes.items()}
        tags = [c for c in TAG_COLUMNS if kinds.get(c) == "str"]
        fields = [c for c in dtypes if c != "ts" and c not in tags]
        select = [f"{ident(c)}::field" for c in [*fields, EMPTY]] + [f"{ident(c)}::tag" for c in [*tags, SLOT, DUP, NAT]]
        p = Params()
        used = set(live[live >= 0].tolist())
        only = f" AND {ident(SLOT)} = {p(SLOTS[used.pop()])}" if len(used) == 1 else ""
        start_ns = pd.Timestamp(part.start_ts).value
        q = (
            f"SELECT {', '.join(select)} FROM {ident(table.name)} WHERE {ident(FEED)} = {p(table.feed)} AND "  # noqa: S608 - values are bound parameters
            f"({' OR '.join(f'{SYMBOL} = {p(d)}' for d in part.displays)}){only} AND "
            f"time >= {p(start_ns)} AND time < {p(pd.Timestamp(part.end_ts).value)}"
        )
        names, values = self._http.select(f"reading influxdb {table.qualified}, slice {part.describe()}", q, p)
        if not values:
            return empty_frame(dtypes)
        cols = dict(zip(names, zip(*values, strict=True), strict=True))  # JSON rows -> columns
        stamps = np.array(cols["time"], dtype=np.int64)
        symbol_codes, symbols = pd.factorize(pd.Series(cols["symbol"], dtype=object), sort=True)
        key_index = np.array([part.displays.index(s) for s in symbols], dtype=np.int64)[symbol_codes]
        slot = pd.Series(cols[SLOT], dtype=object).map({s: i for i, s in enumerate(SLOTS)}).fillna(-2)
        keep = slot.to_numpy(dtype=np.int64) == live[key_index, (stamps - start_ns) // NS_PER_DAY]
        dup = pd.Series(cols[DUP], dtype=object).fillna("0").astype(np.int64).to_numpy()
        order = np.lexsort((dup, stamps, symbol_codes))
        order = order[keep[order]]
        if not len(order):
            return empty_frame(dtypes)
        nat = pd.Series(cols[NAT], dtype=object).notna().to_numpy()
        out = {"ts": pd.Series(np.where(nat, _NAT, stamps).view("datetime64[ns]")).dt.tz_localize("UTC")}
        out.update({c: pd.Series(_column(cols[c], kinds[c])) for c in dtypes if c != "ts"})
        frame = pd.DataFrame({c: out[c].take(order).reset_index(drop=True) for c in dtypes})
        return restore_dtypes(frame, dtypes)

    # ------------------------------------------------------------------------------- bookkeeping
    def _dtypes(self, table: TableRef) -> dict[str, str] | None:
        """The table's recorded column dtypes (the latest record), None when never written."""
        p = Params()
        q = (
            f"SELECT last({ident('dtypes')}) FROM {ident(TABLES)} WHERE {ident(FEED)} = {p(table.feed)} "  # noqa: S608 - values are bound parameters
            f"AND {ident('table')} = {p(table.name)}"
        )
        _, values = self._http.select(f"reading the dtypes of influxdb {table.qualified}", q, p)
        return json.loads(values[-1][1]) if values else None

    def _live_slots(self, table: TableRef, part: PartitionSlice) -> np.ndarray:
        """[symbol key index, day index] -> committed slot (0 = a, 1 = b; -1: no version yet)."""
        live = np.full((len(part.keys), part.days), -1, dtype=np.int8)
        p = Params()
        start_ns = pd.Timestamp(part.start_ts).value
        q = (
            f"SELECT {ident('slot')}, {SYMBOL}::tag FROM {ident(PARTITIONS)} WHERE "  # noqa: S608 - values are bound parameters
            f"{ident(FEED)} = {p(table.feed)} AND {ident('table')} = {p(table.name)} AND "
            f"({' OR '.join(f'{SYMBOL} = {p(k)}' for k in part.keys)}) AND "
            f"time >= {p(start_ns)} AND time < {p(pd.Timestamp(part.end_ts).value)}"
        )
        names, values = self._http.select(f"reading the commit records of influxdb {table.qualified}", q, p)
        at = {n: i for i, n in enumerate(names)}
        for row in values:  # one per partition, not per candle
            day = (row[at["time"]] - start_ns) // NS_PER_DAY
            live[part.keys.index(row[at["symbol"]]), day] = SLOTS.index(row[at["slot"]])
        return live

    def _ensure_database(self) -> None:
        """Before this instance's first write: create the database (if asked), then check the server's
        DELETE once (see _check_delete)."""
        if not self._database_ready:
            self._http.query("creating the database (set create_database: false if it exists and the user may not "
                        "create databases)", f"CREATE DATABASE {ident(self.database)}", db=False)  # fmt: skip
            self._database_ready = True
        if not self._delete_checked:
            self._check_delete()
            self._delete_checked = True

    def _check_delete(self) -> None:
        """Refuse a server whose DELETE loses points of a series that was deleted and written again.

        Why: InfluxDB 1.6 with its default `inmem` index does exactly that (measured: write X and Y,
        DELETE X's range, write X again, DELETE Y's range: X's new points are gone too, every time),
        and every replace of a partition deletes and rewrites series. The `tsi1` index does not.
        The check runs in a fresh measurement of its own, near now (inside any retention policy).
        """
        m, t0 = f"dp_check_{os.urandom(4).hex()}", (time.time_ns() // 10**9 - 60) * 10**9
        what = "checking that the server's DELETE keeps re-written series"
        for sym, delete in (("X", False), ("Y", False), ("X", True), ("X", False), ("Y", True)):
            if delete:
                p = Params()
                q = f"DELETE FROM {ident(m)} WHERE {SYMBOL} = {p(sym)} AND time >= {p(t0)} AND time < {p(t0 + 10**10)}"  # noqa: S608 - bound
                self._http.query(what, q, p)
            else:
                self._http.write(what, "".join(f"{m},symbol={sym} f={i}i {t0 + i * 10**9}\n" for i in range(3)).encode(), "ns")
        _, values = self._http.select(what, f"SELECT count({ident('f')}) FROM {ident(m)}", {})  # noqa: S608 - no values
        self._http.query(what, f"DELETE FROM {ident(m)}")  # noqa: S608 - no values
        if not values or values[0][1] != 3:
            raise InfluxDBError(
                f"InfluxDB at {self.url} loses points on DELETE (its inmem index drops a series that was deleted "
                "and written again; InfluxDB 1.6 does this), so partitions cannot be replaced safely; set "
                '[data] index-version = "tsi1" on the server (convert existing shards with influx_inspect '
                "buildtsi) or use another store. Nothing was written."
            )


def _check_table(table: TableRef) -> None:
    if table.name in (PARTITIONS, TABLES):
        raise FrameContractError(f"table name {table.name!r} is reserved by the InfluxDB store; rename the asset")


def _column(values: tuple[Any, ...], kind: str) -> Any:
    """One column of JSON values (None where the point had no such field) in its storage kind."""
    if kind == "float":
        return np.array(values, dtype=np.float64)  # None -> NaN; JSON ints (100 for 100.0) are exact
    if kind == "int":
        return pd.array(values, dtype="Int64")
    if kind == "bool":
        return pd.array(values, dtype="boolean")
    if kind in ("tz", "naive"):
        ns = pd.array(values, dtype="Int64").to_numpy(dtype=np.int64, na_value=_NAT).view("datetime64[ns]")
        return pd.Series(ns).dt.tz_localize("UTC") if kind == "tz" else ns
    return pd.array(values, dtype="string")
