"""What the `data-puller` subcommands do (cli.py parses the arguments and maps errors to exit codes).

`pull` writes through io/router.py's Router with the layout the pipeline uses (raw, normalized and
quarantine tables of the symbol's feed; Parquet under `<out>/parquet/<feed>/<table>/symbol_key=../date=..`),
so the Dagster code location over the same config and data_dir reads them as its own. `gaps` computes
the gap report of what is stored with the normalized asset's figures (transform/gap_figures.py).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from data_puller_dagster.config import AppConfig, RouteConfig, config_path, load_config
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.sources.base import build_adapter, raw_layout
from data_puller_dagster.sources.errors import InvalidRequestError
from data_puller_dagster.sources.fetch import fetch_window
from data_puller_dagster.standalone import resolve
from data_puller_dagster.standalone.progress import SymbolProgress
from data_puller_dagster.standalone.routing import store_window
from data_puller_dagster.symbols import partition_key
from data_puller_dagster.transform.gap_figures import gap_segments, symbol_completeness, window_grid
from data_puller_dagster.transform.normalize_window import normalize_window
from data_puller_dagster.transform.partition_layout import partition_layout

CHUNK_CANDLES = 50_000  # candles fetched, checked and stored at a time (memory and progress granularity)
DEFAULT_DAYS = 30


def one_line(err: BaseException | str) -> str:
    """An error message on one line (multi-line messages joined with '; ')."""
    text = str(err).strip() or type(err).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def cli_config(config: str | None, out: str | None, fmt: str | None) -> AppConfig:
    """The configuration a command runs with: the file (or the models' defaults), its storage moved
    under `out` when given, and, with `fmt` (or without a file), one route of every table to that store
    type, which is then also the primary store `gaps` and Dagster read from."""
    cfg = resolve.base_config(config)
    storage = cfg.storage
    if out is not None:
        storage = storage.model_copy(update={"data_dir": Path(out), "parquet_root": None, "duckdb_path": None,
                                             "csv_dir": None, "jsonl_dir": None, "datasets_dir": None})  # fmt: skip
    routes = cfg.routes
    if fmt is not None or config is None:
        fmt = fmt or "parquet"
        routes = [RouteConfig(id="cli", destinations=[fmt])]
        storage = storage.model_copy(update={"primary": fmt})
    return cfg.model_copy(update={"storage": storage, "routes": routes})


def day_range(start: str | None, end: str | None) -> tuple[date, date]:
    """Inclusive UTC days from --start/--end (end defaults to today, start to DEFAULT_DAYS before end)."""
    last = resolve.utc(end, "--end")[0].date() if end else resolve.today()
    first = resolve.utc(start, "--start")[0].date() if start else last - timedelta(days=DEFAULT_DAYS - 1)
    if last < first:
        raise ValueError(f"--end {last} is before --start {first}")
    if first > resolve.today():
        raise ValueError(f"--start {first} is in the future")
    return first, last


@dataclass
class SymbolPull:
    """What one symbol's pull did, for its summary line."""

    symbol: str
    timeframe: str
    first: date
    last: date
    candles: int = 0
    quarantined: int = 0
    missing: int = 0
    rejected: list[str] = field(default_factory=list)
    not_stored: list[str] = field(default_factory=list)
    location: str = ""
    pages: int = 0
    waited: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.not_stored

    def line(self) -> str:
        days = f"{self.first}..{self.last}" if self.first != self.last else str(self.first)
        text = (
            f"{self.symbol} {self.timeframe} {days}: {self.candles} candle(s) stored, {self.quarantined} "
            f"quarantined, {self.missing} missing, {len(self.rejected)} rejected day(s); {self.pages} "
            f"page(s), {self.waited:.0f}s rate-limit wait, {self.seconds:.1f}s -> {self.location}"
        )
        for r in self.rejected + self.not_stored:
            text += f"\n  {r}"
        return text


def pull_symbol(cfg: AppConfig, symbol: str, timeframe: str, first: date, last: date, *,
                source: str | None, progress: bool) -> SymbolPull:  # fmt: skip
    """Fetch, check and store one symbol's days, a chunk at a time (see resolve.day_chunks)."""
    started = time.monotonic()
    feed = resolve.feed_for(cfg, symbol, timeframe, source, start_date=first)
    fcfg = resolve.with_feed(cfg, feed)
    router = Router(fcfg)
    window = PartitionSlice({partition_key(symbol): symbol}, first, last)
    adapter = build_adapter(fcfg, feed)
    result = SymbolPull(symbol, timeframe, first, last)
    bar = SymbolProgress(f"{symbol} {timeframe}", window.days, adapter, enabled=progress)
    try:
        for chunk in resolve.day_chunks(window, timeframe, CHUNK_CANDLES):
            raw = fetch_window(adapter, chunk, timeframe, raw_layout(feed.source), close=False)
            nw = normalize_window(raw.frame, feed, chunk,
                                  max_quarantined_fraction=fcfg.validation.max_quarantined_fraction)  # fmt: skip
            writes = store_window(router, feed, chunk, raw, nw)
            result.quarantined += len(nw.quarantine)
            result.missing += nw.missing
            result.rejected += [f"rejected {r.day} {r.symbol}: {r.detail}" for r in nw.rejections.itertuples()]
            if nw.storable:
                result.candles += len(nw.data)
            else:
                result.not_stored.append(
                    f"{chunk.describe()}: canonical candles not stored (schema failures: {nw.summary.failures}; "
                    f"rows outside the days: {len(nw.outside)})"
                )
            for w in writes:
                if w.table.layer == "normalized":
                    locs = [str(r.metadata["location"]) for r in w.results if r.ok and "location" in r.metadata]
                    result.location = result.location or ", ".join(locs)
            bar.advance(chunk.days)
    finally:
        result.pages, result.waited = bar.stats()
        bar.close()
        adapter.close()
        router.close()
    result.seconds = time.monotonic() - started
    return result


def pull(cfg: AppConfig, symbols: list[str], timeframe: str, first: date, last: date, *,
         source: str | None, progress: bool, quiet: bool) -> int:  # fmt: skip
    """Every symbol in turn; an invalid symbol is reported and skipped, other errors stop the command."""
    status = 0
    for symbol in symbols:
        try:
            res = pull_symbol(cfg, symbol, timeframe, first, last, source=source, progress=progress)
        except InvalidRequestError as err:
            print(f"data-puller: error: {one_line(err)}", file=sys.stderr)
            status = 1
            continue
        if not quiet:
            print(res.line(), flush=True)
        status = status or (0 if res.ok else 1)
    return status


def gaps(cfg: AppConfig, feed_name: str, symbols: list[str] | None, timeframe: str | None,
         start: str | None, end: str | None, as_json: bool) -> int:  # fmt: skip
    """Print the gap report of the stored canonical candles of a feed (a table, or JSON)."""
    feed = next((f for f in cfg.feeds if f.name == feed_name), None)
    if feed is None:
        names = ", ".join(f.name for f in cfg.feeds if f.name != resolve.PLACEHOLDER_FEED) or "none"
        if not symbols or not timeframe:
            raise ValueError(
                f"feed {feed_name!r} is not in the configuration (feeds: {names}); pass --config, or --symbol "
                "and --timeframe for what `data-puller pull` stored without one"
            )
        feed = resolve.feed_for(cfg, symbols[0], timeframe)
        if feed.name != feed_name:
            raise ValueError(f"{symbols[0]} is pulled as feed {feed.name!r}, not {feed_name!r}")
        feed = feed.model_copy(update={"symbols": list(symbols)})
    if timeframe is not None and timeframe != feed.timeframe:
        feed = feed.model_copy(update={"timeframe": timeframe})
    wanted = symbols or feed.symbols
    unknown = [s for s in wanted if s not in feed.symbols]
    if unknown:
        raise ValueError(f"symbol(s) {unknown} are not in feed {feed.name!r} ({', '.join(feed.symbols)})")
    first = resolve.utc(start, "--start")[0].date() if start else feed.start_date
    last = resolve.utc(end, "--end")[0].date() if end else (feed.end_date or resolve.today())
    from data_puller_dagster.assets.naming import table_ref

    fcfg = resolve.with_feed(cfg, feed)
    router, table = Router(fcfg), table_ref(feed, "normalized", feed.timeframe)
    now = pd.Timestamp.now(tz="UTC")
    report: list[dict[str, Any]] = []
    for symbol in wanted:
        window = PartitionSlice({partition_key(symbol): symbol}, first, last)
        data = router.read(table, window)
        grid = window_grid(feed, window, partition_layout(data, window), now)
        fig = symbol_completeness(feed, window, data, now, grid)[window.keys[0]]
        segs = gap_segments(feed, window, grid)
        report.append({
            "symbol": symbol, "timeframe": feed.timeframe, "expected": fig["expected"], "present": fig["present"],
            "missing": fig["missing"], "gap_segments": fig["segments"],
            "completeness": round(fig["present"] / fig["expected"], 6) if fig["expected"] else 1.0,
            "last_candle": fig["last"], "stale": fig["stale"] is not None,
            "segments": [{"start": r.start.isoformat(), "end": r.end.isoformat(), "missing": int(r.missing)}
                         for r in segs.itertuples()],
        })  # fmt: skip
    if as_json:
        out = {"feed": feed.name, "table": table.qualified, "start": str(first), "end": str(last), "symbols": report}
        print(json.dumps(out, indent=2))
        return 0
    summary = pd.DataFrame([{k: v for k, v in r.items() if k != "segments"} for r in report])
    print(f"gaps in {table.qualified} {first}..{last} (stored in {fcfg.storage.primary}):")
    print(summary.to_string(index=False))
    rows = [{"symbol": r["symbol"], **s} for r in report for s in r["segments"]]
    if rows:
        print("\ngap segments (start inclusive, end exclusive):")
        print(pd.DataFrame(rows).to_string(index=False))
    return 0


def validate_config(path: str | None) -> str:
    """The one-line summary of a valid config; raises ConfigError / RoutingError with every problem.

    The routes are checked as the Dagster code location checks them when it loads (which imports the
    asset definitions, hence Dagster, for this command only)."""
    p = Path(path) if path else config_path()
    cfg = load_config(p)
    from data_puller_dagster.assets.feed import routed_tables, tables_read_downstream

    Router(cfg).validate(routed_tables(cfg), read_downstream=tables_read_downstream(cfg))
    feeds = "; ".join(f"{f.name}: {f.source} {f.asset_class} {f.timeframe} x {len(f.symbols)} symbol(s)" for f in cfg.feeds)
    return (
        f"{p}: valid: {len(cfg.feeds)} feed(s) ({feeds}), {len(cfg.routes)} route(s), primary store "
        f"{cfg.storage.primary!r}, data_dir {cfg.storage.data_dir}"
    )
