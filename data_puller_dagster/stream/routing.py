"""The routes of data_puller.yaml, split for the live tables: streams get every micro-batch, stores
get the day's closed candles.

Why two routers over the same routes: a store's `write` replaces whole (symbol x day) partitions, so
it must receive the whole day of a symbol each time (the stream keeps the day in memory, see
daystore.py), while a stream destination must receive each candle once, as it arrives. Each router
keeps the routes' matches, symbol restrictions, row filters, transforms, `in_progress` and `on_error`;
a route only loses the destinations of the other kind. The two share no destination instance, so the
micro-batch thread and the store-flush thread never use one connection at once.
"""

from __future__ import annotations

from data_puller_dagster.config import AppConfig
from data_puller_dagster.io.router import Router, route_matches
from data_puller_dagster.io.tables import TableRef


class LiveRouters:
    def __init__(self, cfg: AppConfig, tables: list[TableRef]):
        self.cfg = cfg
        probe = Router(cfg)
        used = [r for r in cfg.routes if r.enabled and any(route_matches(r, t) for t in tables)]
        names = sorted({d for r in used for d in r.destinations})
        instances = {n: probe.destination(n) for n in names}  # built once (connections open lazily)
        is_stream = {n: hasattr(d, "publish") for n, d in instances.items()}

        def router(stream: bool) -> Router:
            routes = []
            for r in used:
                keep = [d for d in r.destinations if is_stream[d] == stream]
                if keep:
                    routes.append(r.model_copy(update={"destinations": keep}))
            sub = cfg.model_copy(update={"routes": routes})
            return Router(sub, {n: d for n, d in instances.items() if is_stream[n] == stream})

        self.streams = router(True)
        self.stores = router(False)
        self.stream_names = [n for n in names if is_stream[n]]
        self.store_names = [n for n in names if not is_stream[n]]

    def has_streams(self, table: TableRef) -> bool:
        return bool(self.streams.routes_for(table))

    def has_stores(self, table: TableRef) -> bool:
        return bool(self.stores.routes_for(table))

    def restorable(self, table: TableRef) -> bool:
        """Whether storage.primary holds the table unfiltered (then a restart resumes from it)."""
        primary = self.cfg.storage.primary
        return any(
            primary in r.destinations and not r.filter and r.match.symbol is None and r.transform is None
            for r in self.stores.routes_for(table)
        )

    def close(self) -> None:
        self.streams.close()
        self.stores.close()
