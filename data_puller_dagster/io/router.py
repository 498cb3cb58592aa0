"""The declarative router: which destinations each asset output goes to, and where inputs come from.

Routes are data (config.RouteConfig): a match on table properties, destinations, row filters made of
a column, an operator and a value, an enable switch and an error policy. Nothing in the config is ever
evaluated as code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from data_puller_dagster.config import AppConfig, RouteConfig, RowFilter
from data_puller_dagster.io.destinations.base import Destination, StreamDestination
from data_puller_dagster.io.errors import DestinationWriteError, RoutingError, StorageError
from data_puller_dagster.io.frames import CheckedFrame, check_frame
from data_puller_dagster.io.registry import build_destination, build_transform
from data_puller_dagster.io.tables import PartitionSlice, TableRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DestinationResult:
    """Outcome of one route's write to one destination."""

    route: str
    destination: str
    ok: bool
    rows: int
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class WriteSummary:
    """What a routed write did, for output metadata and logs."""

    table: TableRef
    part: PartitionSlice
    rows_in: int
    results: list[DestinationResult] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [f"{r.route}/{r.destination}: {r.error}" for r in self.results if not r.ok]

    @property
    def rows_by_destination(self) -> dict[str, int]:
        return {f"{r.route}/{r.destination}": r.rows for r in self.results if r.ok}


def route_matches(route: RouteConfig, table: TableRef) -> bool:
    """Does the route take this table? (Symbols are matched per row, not here.)"""
    m = route.match
    return (
        (m.layer is None or table.layer in m.layer)
        and (m.feed is None or table.feed in m.feed)
        and (m.asset_class is None or table.asset_class in m.asset_class)
        and (m.timeframe is None or (table.timeframe is not None and table.timeframe in m.timeframe))
        and (m.realtime is None or m.realtime == (table.layer == "live"))
    )


def filter_mask(df: pd.DataFrame, filters: list[RowFilter], where: str = "") -> pd.Series:
    """Rows passing every filter (AND), vectorized. Missing values never pass a comparison."""
    mask = pd.Series(True, index=df.index)
    for f in filters:
        if f.column not in df.columns:
            raise RoutingError(
                f"{where}: filter column {f.column!r} is not in the table (columns: {', '.join(map(str, df.columns))}); "
                "fix the route's filter"
            )
        col = df[f.column]
        value = f.value
        if pd.api.types.is_datetime64_any_dtype(col.dtype) and f.op not in ("isnull", "notnull"):
            value = (
                [pd.Timestamp(v, tz="UTC") for v in value]
                if isinstance(value, list)
                else pd.Timestamp(value, tz="UTC")
            )
        if f.op == "isnull":
            m = col.isna()
        elif f.op == "notnull":
            m = col.notna()
        elif f.op == "in":
            m = col.isin(value)
        elif f.op == "not_in":
            m = ~col.isin(value) & col.notna()
        else:
            try:
                m = {
                    "eq": col.__eq__,
                    "ne": col.__ne__,
                    "gt": col.__gt__,
                    "ge": col.__ge__,
                    "lt": col.__lt__,
                    "le": col.__le__,
                }[f.op](value)
            except TypeError as e:
                raise RoutingError(
                    f"{where}: filter {f.column} {f.op} {value!r} cannot compare with column dtype {col.dtype}: {e}"
                ) from None
            m = m & col.notna()
        mask &= m.fillna(False).astype(bool)
    return mask


class Router:
    """Sends each table slice to every matching enabled route's destinations; reads from the primary."""

    def __init__(
        self, cfg: AppConfig, destinations: dict[str, Destination | StreamDestination] | None = None
    ):
        self.cfg = cfg
        self._destinations: dict[str, Destination | StreamDestination] = dict(destinations or {})
        self._transforms: dict[str, tuple[Any, Any]] = {}

    def destination(self, name: str) -> Destination | StreamDestination:
        """The instance named `name` (declared under destinations:, or a bare type), built once."""
        if name not in self._destinations:
            self._destinations[name] = build_destination(self.cfg, name)
        return self._destinations[name]

    def store(self, name: str) -> Destination:
        dest = self.destination(name)
        if not hasattr(dest, "read"):
            raise RoutingError(f"destination {name!r} is a stream; only stores can be read back")
        return dest  # type: ignore[return-value]

    def close(self) -> None:
        """Close the stream destinations' connections (stores hold none between calls)."""
        for dest in self._destinations.values():
            close = getattr(dest, "close", None)
            if callable(close):
                close()

    def _transformed(self, route: RouteConfig, df: pd.DataFrame, table: TableRef) -> pd.DataFrame:
        if route.transform is None:
            return df
        if route.id not in self._transforms:
            i = self.cfg.routes.index(route)
            self._transforms[route.id] = build_transform(route.transform, (f"routes[{i}]", "transform"))
        cls, options = self._transforms[route.id]
        try:
            return cls.apply(df, table, options)
        except (KeyError, ValueError, TypeError) as e:
            raise RoutingError(f"transform {route.transform.type!r} failed: {type(e).__name__}: {e}") from None

    def _send(
        self, route: RouteConfig, name: str, table: TableRef, df: pd.DataFrame, part: PartitionSlice
    ) -> dict[str, Any]:
        dest = self.destination(name)
        stream = hasattr(dest, "publish")
        if table.layer == "live" and "is_final" in df.columns and not (stream and route.in_progress):
            # In-progress live updates reach only the stream destinations of routes that ask for them.
            final = df["is_final"].fillna(False).astype(bool).to_numpy()
            if not final.all():
                df = df[final]
        if stream:
            return dest.publish(table, df, part, route.batch_size)  # type: ignore[union-attr]
        return dest.write(table, df, part)  # type: ignore[union-attr]

    def routes_for(self, table: TableRef) -> list[RouteConfig]:
        """Enabled routes whose match takes this table, in config order."""
        return [r for r in self.cfg.routes if r.enabled and route_matches(r, table)]

    def write(self, table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> WriteSummary:
        """Write the slice to every route's destinations (after its symbol match and row filter)."""
        df = check_frame(table, df, part)  # fail once, early, for contract errors (never a warning)
        summary = WriteSummary(table, part, len(df))
        # Every destination gets the checked frame (or a row subset of it for a route's symbols and
        # filter, still valid for its slice): inside `active()` the destinations skip checking it again
        # and share one pandas -> Arrow conversion per distinct frame.
        checked: dict[tuple[int, PartitionSlice], CheckedFrame] = {}
        for route in self.routes_for(table):
            sub_part = part.restrict(route.match.symbol) if route.match.symbol is not None else part
            if sub_part is None:
                continue
            where = f"route {route.id!r}, table {table.qualified}, slice {sub_part.describe()}"
            try:
                sub = df
                if route.match.symbol is not None:
                    sub = sub[sub["symbol"].isin(route.match.symbol)]
                if route.filter:
                    sub = sub[filter_mask(sub, route.filter, where)]
                if route.transform is not None:  # a new frame: checked again against the contract
                    sub = check_frame(table, self._transformed(route, sub, table), sub_part)
            except StorageError as e:
                self._fail_or_warn(summary, route, "*", where, e)
                continue
            frame = checked.setdefault((id(sub), sub_part), CheckedFrame(table, sub, sub_part))
            for name in route.destinations:
                try:
                    with frame.active():
                        md = self._send(route, name, table, sub, sub_part)
                except Exception as e:  # noqa: BLE001 - policy decides; fail re-raises below
                    self._fail_or_warn(summary, route, name, where, e)
                    continue
                summary.results.append(
                    DestinationResult(route.id, name, True, int(md.get("rows", len(sub))), md)
                )
            if sub is not df:  # a route's own subset: no later route gets this very frame
                del checked[(id(sub), sub_part)]
        return summary

    def _fail_or_warn(
        self, summary: WriteSummary, route: RouteConfig, dest: str, where: str, e: Exception
    ) -> None:
        message = f"{type(e).__name__}: {e}"  # destination errors are already scrubbed of secrets
        if route.on_error == "fail":
            raise DestinationWriteError(
                f"{where}: writing to destination {dest!r} failed: {message} "
                "(set on_error: warn on the route to let runs continue without this destination)"
            ) from e
        log.warning("%s: destination %r failed (on_error: warn): %s", where, dest, message)
        summary.results.append(DestinationResult(route.id, dest, False, 0, {}, message))

    def read(self, table: TableRef, part: PartitionSlice) -> pd.DataFrame:
        """The slice from storage.primary, in one query or dataset scan."""
        return self.store(self.cfg.storage.primary).read(table, part)

    def validate(self, tables: list[TableRef], read_downstream: list[TableRef] | None = None) -> None:
        """Raise RoutingError listing every table the routes cannot serve.

        `tables` are all routed outputs; `read_downstream` (default: all of them) are the tables some
        asset loads as an input, which must reach storage.primary unfiltered for every symbol.
        """
        primary = self.cfg.storage.primary
        # problem -> tables: the same route mistake hits every table of a layer, so it is said once
        # with the list of tables rather than once per table.
        problems: dict[str, list[str]] = {}
        starved = [
            t
            for t in (read_downstream if read_downstream is not None else tables)
            if not any(
                primary in r.destinations and not r.filter and r.match.symbol is None and r.transform is None
                for r in self.routes_for(t)
            )
        ]
        if starved:
            layers = ", ".join(dict.fromkeys(t.layer for t in starved))
            problems[
                "read by downstream assets but no enabled route sends them to the primary store "
                f"{primary!r} unfiltered for all symbols; add {primary!r} to a route matching layer(s) "
                f"{layers} without filter/symbol restrictions or transform"
            ] = [t.qualified for t in starved]
        for t in tables:
            seen: dict[str, str] = {}
            for r in self.routes_for(t):
                for d in r.destinations:
                    if d in seen:
                        problems.setdefault(
                            f"sent to {d!r} by routes {seen[d]!r} and {r.id!r}; each would replace the "
                            "other's partitions; narrow one route's match or drop the destination",
                            [],
                        ).append(t.qualified)
                    seen.setdefault(d, r.id)
        if problems:
            raise RoutingError(
                "routes in the configuration cannot serve the assets:\n"
                + "\n".join(f"  - {_tables(names)} {p}" for p, names in problems.items())
            )


def _tables(names: list[str]) -> str:
    return f"table {names[0]} is" if len(names) == 1 else f"tables {', '.join(names)} are"
