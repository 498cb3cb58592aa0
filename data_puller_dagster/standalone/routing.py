"""Routes in library use: `Route(route_id, condition, destination, ...)` and `DataRouter([...])`.

Why a thin layer over io/router.py and not a router of its own: writing a slice (contract check,
atomic per partition, idempotent replace, stream batching, `on_error`) is the router's and the
destinations' job, and a notebook must store exactly as the pipeline does. What library use adds is
what a YAML file cannot hold: a Python callable as the row condition (or transform) and a destination
object built in the notebook. A DataRouter therefore keeps one `Router` per route, over a copy of the
configuration whose `routes:` is that route alone (declarative filters and named transforms go into
it unchanged), and applies a callable condition or transform to the frame before handing it over.
Config files stay declarative: nothing here is ever read from YAML.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from data_puller_dagster.config import LAYERS, ConfigError, RouteConfig, RowFilter, render_errors
from data_puller_dagster.io.registry import build_destination
from data_puller_dagster.io.router import Router, WriteSummary
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.standalone.resolve import ConfigLike, base_config

Condition = Callable[[pd.DataFrame], Any] | RowFilter | Mapping[str, Any] | Sequence[Any] | None


@dataclass(frozen=True)
class Route:
    """Where rows go: `destination` gets the rows of each written table that pass `condition`.

    - `condition`: a callable over the frame returning a boolean mask (a Series aligned with the frame,
      an array of its length, or one bool for all rows), e.g. `lambda df: df["volume"] > 0`; or a
      declarative filter as in data_puller.yaml: `{"column": "volume", "op": "gt", "value": 0}` (or a
      RowFilter, or a list of them, all of which must pass); None takes every row.
    - `destination`: a destination object (anything with `write(table, df, part)` or `publish(...)`,
      e.g. `ParquetDestination("out/parquet")`), or a name resolved through the registry: a type
      (`"parquet"`, `"duckdb"`, `"csv"`, ...) with its defaults from `storage:`, or an instance declared
      under `destinations:` of the DataRouter's config.
    - `transform`: a registered transform (`"backtest_ohlcv"`, `{"type": "columns", "keep": [...]}`) or
      a callable frame -> frame; `batch_size`: rows per message for stream destinations; `enabled`.
    - `layers`: the tables this route takes (default the canonical `normalized` table; add `"raw"`
      and `"quarantine"` to keep them too). A callable condition sees the frame of that layer.
    """

    route_id: str
    condition: Condition = None
    destination: Any = "parquet"
    transform: str | Mapping[str, Any] | Callable[[pd.DataFrame], pd.DataFrame] | None = None
    batch_size: int | None = None
    enabled: bool = True
    layers: Sequence[str] = ("normalized",)

    def mask(self, df: pd.DataFrame) -> np.ndarray:
        """The callable condition's boolean mask over `df` (NA counts as False)."""
        assert callable(self.condition)
        out = self.condition(df)
        if isinstance(out, bool | np.bool_):
            return np.full(len(df), bool(out))
        if isinstance(out, pd.Series):
            if not out.index.equals(df.index):
                raise ValueError(f"Route {self.route_id!r}: the condition's Series is not aligned with the frame")
            out = out.fillna(False) if out.dtype == object or isinstance(out.dtype, pd.BooleanDtype) else out
            return out.to_numpy(dtype=bool, na_value=False)
        arr = np.asarray(out)
        if arr.shape != (len(df),) or arr.dtype != bool:
            raise ValueError(
                f"Route {self.route_id!r}: the condition must return a boolean mask of {len(df)} rows "
                f"(got {type(out).__name__} of shape {arr.shape}, dtype {arr.dtype})"
            )
        return arr


def _filters(condition: Condition) -> list[Any]:
    if condition is None or callable(condition):
        return []
    if isinstance(condition, RowFilter | Mapping):
        return [condition]
    return list(condition)


class DataRouter:
    """Writes table slices through each enabled Route (see Route); `config` (AppConfig, path or None for
    the defaults) decides where named destinations keep their data (`storage:`, `destinations:`)."""

    def __init__(self, routes: Iterable[Route], config: ConfigLike = None):
        self.cfg = base_config(config)
        self.routes = list(routes)
        ids = [r.route_id for r in self.routes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"route ids must be unique; got {ids}")
        self._routers: dict[str, Router] = {}
        for r in self.routes:
            bad = [layer for layer in r.layers if layer not in LAYERS]
            if bad:
                raise ValueError(f"Route {r.route_id!r}: unknown layer(s) {bad}; use {', '.join(LAYERS)}")
            dest = r.destination
            name = dest if isinstance(dest, str) else str(getattr(dest, "name", None) or r.route_id)
            if isinstance(dest, str):
                dest = build_destination(self.cfg, dest)  # a type or a declared instance, options validated
            elif not (hasattr(dest, "write") or hasattr(dest, "publish")):
                raise TypeError(
                    f"Route {r.route_id!r}: destination {dest!r} has neither write() nor publish(); pass a "
                    "destination object or a type/instance name such as 'parquet'"
                )
            spec: dict[str, Any] = {
                "id": r.route_id, "destinations": [name], "filter": _filters(r.condition),
                "batch_size": r.batch_size, "enabled": r.enabled,
            }  # fmt: skip
            if r.transform is not None and not callable(r.transform):
                spec["transform"] = r.transform
            try:
                rc = RouteConfig.model_validate(spec)
            except ValidationError as e:
                raise ConfigError(render_errors(e, RouteConfig), f"Route {r.route_id!r}") from None
            cfg = self.cfg.model_copy(update={"routes": [rc]})
            self._routers[r.route_id] = Router(cfg, destinations={name: dest})

    def write(self, table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> list[WriteSummary]:
        """Send the slice to every enabled route that takes `table.layer` (each replaces `part` in its
        destination with the rows that pass its condition)."""
        out = []
        for r in self.routes:
            if not r.enabled or table.layer not in r.layers:
                continue
            sub = df[r.mask(df)] if callable(r.condition) else df
            if callable(r.transform):
                sub = r.transform(sub)
            out.append(self._routers[r.route_id].write(table, sub, part))
        return out

    def read(self, table: TableRef, part: PartitionSlice, route_id: str | None = None) -> pd.DataFrame:
        """The slice as stored by a route's store (the first route's by default)."""
        rid = route_id or self.routes[0].route_id
        router = self._routers[rid]
        return router.store(router.cfg.routes[0].destinations[0]).read(table, part)

    def close(self) -> None:
        for router in self._routers.values():
            router.close()


def store_window(writer: Any, feed: Any, window: PartitionSlice, raw: Any, normalized: Any) -> list[WriteSummary]:
    """Write one fetched and checked window the way the raw and normalized assets' outputs are written.

    `raw` is a sources.fetch.RawWindow, `normalized` a transform.normalize_window.NormalizedWindow. The raw
    rows and the quarantine replace the whole window; the canonical rows replace only the accepted
    (symbol, day) partitions, each contiguous run of days on its own, as the IO manager writes a
    PartialOutput (a rejected day keeps its stored version); nothing canonical is written when the window
    is not storable (schema failures, rows outside it, every day rejected).
    """
    from data_puller_dagster.assets.naming import table_ref

    tf = feed.timeframe
    out: list[WriteSummary] = []

    def send(layer: str, df: pd.DataFrame, part: PartitionSlice) -> None:
        result = writer.write(table_ref(feed, layer, tf), df, part)
        out.extend(result if isinstance(result, list) else [result])

    send("raw", raw.frame, window)
    if normalized.storable:
        data = normalized.data
        if normalized.keep:
            for sub in window.without(normalized.keep):
                ts = data["ts"]
                inside = data["symbol"].isin(sub.displays) & (ts >= sub.start_ts) & (ts < sub.end_ts)
                send("normalized", data[inside.to_numpy(dtype=bool)].reset_index(drop=True), sub)
        else:
            send("normalized", data, window)
    send("quarantine", normalized.quarantine, window)
    return out
