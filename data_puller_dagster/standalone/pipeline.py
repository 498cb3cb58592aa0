"""`DataNormalizer`, `DataPipeline` and the result of a pull: the pipeline's steps without an orchestrator.

Every step is the function the Dagster assets call: `sources.fetch.fetch_window` (the raw asset's loop),
`transform.normalize_window.normalize_window` (normalize, judge each day, validate, gap and quality
figures: the normalized asset), `standalone.routing.store_window` (the layers written as the IO
manager writes them). So a frame pulled in a notebook, a day stored by `data-puller pull` and the same
day materialized by Dagster are the same rows with the same verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from data_puller_dagster.config import AppConfig, FeedConfig, ValidationConfig
from data_puller_dagster.io.router import WriteSummary
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.sources.base import SourceAdapter, build_adapter, raw_layout
from data_puller_dagster.sources.fetch import RawWindow, fetch_window
from data_puller_dagster.standalone import resolve
from data_puller_dagster.standalone.resolve import ConfigLike
from data_puller_dagster.standalone.routing import DataRouter, store_window
from data_puller_dagster.transform.gap_figures import figures_frame, gap_segments
from data_puller_dagster.transform.normalize import NormalizeReport
from data_puller_dagster.transform.normalize_window import NormalizedWindow, normalize_window


@dataclass(frozen=True)
class PullResult:
    """What a pull returned and found.

    - `data`: the canonical candles (transform/canonical.py) of the accepted days, trimmed to the
      request ([start, end), at most `limit` rows per symbol);
    - `quarantine`: rows that broke a rule, with the rule (never dropped silently);
    - `gaps`: one row per run of missing candles against the market calendar (symbol, start, end,
      missing), over the whole UTC days fetched, candles that have not closed yet excepted;
    - `quality`: one row per (day, symbol): rows_in, quarantined, missing, gap_segments, completeness,
      quality_score (completeness x validity) and `rejected` (the reason a day was not accepted, else None);
    - `rejected`: the rejected days with the message naming what was wrong; `report`: normalize's counts;
      `score`: the quality score over the whole request; `writes`: what a router stored.
    """

    data: pd.DataFrame
    quarantine: pd.DataFrame
    gaps: pd.DataFrame
    quality: pd.DataFrame
    rejected: pd.DataFrame
    report: NormalizeReport
    score: float
    window: PartitionSlice
    writes: list[WriteSummary] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"PullResult({len(self.data)} candle(s) {self.window.describe()}, {len(self.quarantine)} "
            f"quarantined, {int(self.gaps['missing'].sum())} missing in {len(self.gaps)} gap(s), "
            f"{len(self.rejected)} rejected day(s), quality_score={self.score:.4g})"
        )


class DataNormalizer:
    """Raw provider frames -> canonical candles + quarantine, with the pipeline's rules.

    `asset_class` (crypto, forex, equity, commodity, index) decides the calendar and the checks; None
    takes it from the feed the pipeline builds for the symbol (see `pull`). `max_quarantined_fraction`
    (default: `validation.max_quarantined_fraction` of the config models, 0.5): a (symbol, day) with a
    larger share of quarantined rows is rejected, as in the pipeline. `now` fixes the clock (tests).
    """

    def __init__(
        self,
        asset_class: str | None = None,
        *,
        max_quarantined_fraction: float | None = None,
        now: pd.Timestamp | None = None,
    ):
        if max_quarantined_fraction is None:
            max_quarantined_fraction = ValidationConfig().max_quarantined_fraction
        self.validation = ValidationConfig(max_quarantined_fraction=max_quarantined_fraction)
        self.asset_class = asset_class
        self.now = now

    def process(self, raw: pd.DataFrame, feed: FeedConfig, window: PartitionSlice) -> NormalizedWindow:
        """Normalize, judge and measure one window (transform.normalize_window, the normalized asset's code)."""
        if self.asset_class is not None and self.asset_class != feed.asset_class:
            feed = feed.model_copy(update={"asset_class": self.asset_class})
        return normalize_window(
            raw, feed, window, max_quarantined_fraction=self.validation.max_quarantined_fraction, now=self.now
        )


def result_of(
    nw: NormalizedWindow, feed: FeedConfig, req: resolve.Request, writes: list[WriteSummary] | None = None
) -> PullResult:
    """The PullResult of a processed request: canonical rows cut to [lo, hi) and `limit`."""
    data = nw.data
    inside = ((data["ts"] >= req.lo) & (data["ts"] < req.hi)).to_numpy(dtype=bool)
    data = data[inside]
    if req.limit is not None:
        ordered = data.sort_values(["symbol", "ts"], kind="stable")
        data = ordered.groupby("symbol", sort=False).head(req.limit) if req.from_start else ordered.groupby(
            "symbol", sort=False
        ).tail(req.limit)
    return PullResult(
        data=data.reset_index(drop=True),
        quarantine=nw.quarantine,
        gaps=gap_segments(feed, req.window, nw.grid),
        quality=figures_frame(nw.figures, req.window),
        rejected=nw.rejections,
        report=nw.report,
        score=nw.score,
        window=req.window,
        writes=list(writes or []),
    )


class DataPipeline:
    """fetch -> normalize + validate -> (optionally) route to destinations, for one symbol at a time.

    `source`: an adapter (`BinanceAdapter(...)`, `TwelveDataAdapter(...)`, any object with
    `provider`, `fetch(symbol, timeframe, start, end)` and `close()`) or a source type name
    ("binance", "twelvedata") built from `config`; `normalizer`: a DataNormalizer (default one);
    `router`: a DataRouter (None: nothing is stored, results are only returned). `config`: AppConfig,
    path or None (defaults), for the feed a symbol belongs to and a named source's options; a
    DataRouter's own config is used when `config` is not given.
    """

    def __init__(
        self,
        source: SourceAdapter | str = "binance",
        normalizer: DataNormalizer | None = None,
        router: DataRouter | None = None,
        *,
        config: ConfigLike = None,
    ):
        self.cfg: AppConfig = resolve.base_config(config) if config is not None or router is None else router.cfg
        self.normalizer = normalizer or DataNormalizer(
            max_quarantined_fraction=self.cfg.validation.max_quarantined_fraction
        )
        self.router = router
        self._source_name = source if isinstance(source, str) else str(getattr(source, "provider", ""))
        self.source: SourceAdapter | None = None if isinstance(source, str) else source

    def _adapter(self, cfg: AppConfig, feed: FeedConfig) -> SourceAdapter:
        if self.source is None:
            self.source = build_adapter(cfg, feed)
        return self.source

    def fetch_and_process(
        self, symbol: str, timeframe: str, start: Any = None, end: Any = None, limit: int | None = None
    ) -> PullResult:
        """Fetch `symbol` at `timeframe` for the whole UTC days of [start, end) (or the last `limit`
        candles), normalize and validate them, write them through the router, and return the result.
        `start`/`end` as in `pull`."""
        source = self._source_name or None
        feed = resolve.feed_for(self.cfg, symbol, timeframe, source, self.normalizer.asset_class)
        cfg = resolve.with_feed(self.cfg, feed)
        req = resolve.request(symbol, feed.asset_class, timeframe, start, end, limit)
        raw = fetch_window(self._adapter(cfg, feed), req.window, timeframe, _layout(feed, self.source), close=False)
        nw = self.normalizer.process(raw.frame, feed, req.window)
        writes = store_window(self.router, feed, req.window, raw, nw) if self.router is not None else []
        return result_of(nw, feed, req, writes)

    def stream(self, symbol: str, timeframe: str = "1m", *, duration: float | None = None) -> Any:
        """Live candles of `symbol` (Binance websockets; Twelve Data polling) through the configuration's
        routes (`match: {realtime: true}` selects the live table), until SIGTERM/SIGINT or `duration`
        seconds; returns the stream's counters. The same runner as `data-puller stream`: normalized and
        validated per micro-batch, gaps after a reconnect filled over REST. Routes come from `config`
        (a DataRouter's Python routes apply to `fetch_and_process` only)."""
        import asyncio

        from data_puller_dagster.stream.runner import run_async

        feed = resolve.feed_for(self.cfg, symbol, timeframe, self._source_name or None, self.normalizer.asset_class)
        cfg = resolve.with_feed(self.cfg, feed)
        return asyncio.run(run_async(cfg, [cfg.feed(feed.name)], duration=duration))[0]

    def close(self) -> None:
        """Close the adapter's HTTP session and the router's stream connections."""
        if self.source is not None:
            self.source.close()
        if self.router is not None:
            self.router.close()

    def __enter__(self) -> DataPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layout(feed: FeedConfig, adapter: Any) -> str:
    """The raw layout of the adapter's frames (its `raw_layout`, else the feed's source's)."""
    return str(getattr(adapter, "raw_layout", None) or raw_layout(feed.source))


def pull_window(cfg: AppConfig, feed: FeedConfig, req: resolve.Request, normalizer: DataNormalizer) -> PullResult:
    """pull()'s steps for a request: the feed's adapter from the config, one window, nothing stored."""
    cfg = resolve.with_feed(cfg, feed)
    adapter = build_adapter(cfg, feed)
    raw: RawWindow = fetch_window(adapter, req.window, feed.timeframe, raw_layout(feed.source))
    return result_of(normalizer.process(raw.frame, feed, req.window), feed, req)
