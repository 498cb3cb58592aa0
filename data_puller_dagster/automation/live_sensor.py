"""`<feed>__live_progress`: what `data-puller stream` has written to `<feed>/live_ohlcv_<tf>` today.

Why a sensor: the stream runs outside Dagster, so nothing materializes its table. Each tick reads the
current UTC day's live rows back from storage.primary (the store the stream flushes to every
`stream.store_flush_seconds`) and, when they changed since the last tick (the cursor holds the last
candle and row count per symbol), records an AssetObservation on the live asset: rows today, last
candle and lag per symbol, and `dagster/last_updated_timestamp` (the last candle's close, about when
the stream stored it), so the catalog shows the table's freshness. It requests no runs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg
import pandas as pd
from dagster._time import get_current_datetime

from data_puller_dagster import timeframes
from data_puller_dagster.assets.live import live_feeds, live_sensor_name
from data_puller_dagster.assets.naming import asset_key, table_ref
from data_puller_dagster.automation.jobs import FEED_TAG
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice


def live_progress(cfg: AppConfig, feed: FeedConfig, now: datetime) -> pd.DataFrame:
    """Per symbol of today's live rows: rows, last candle open, its close and the lag (seconds)."""
    today = now.astimezone(UTC).date()
    part = PartitionSlice(symbols=dict(feed.symbol_keys), start=today, end=today)
    live = Router(cfg).read(table_ref(feed, "live", feed.timeframe), part)
    if live.empty:  # a table never written has no columns either
        live = pd.DataFrame(
            {"symbol": pd.Series(dtype="string"), "ts": pd.Series(dtype="datetime64[ns, UTC]")}
        )
    g = (
        live.groupby("symbol", observed=True)["ts"]
        .agg(["size", "max"])
        .rename(columns={"size": "rows", "max": "last_ts"})
    )
    g["close_at"] = g["last_ts"] + pd.Timedelta(seconds=timeframes.seconds(feed.timeframe))
    g["lag"] = (pd.Timestamp(now).tz_convert("UTC") - g["close_at"]).dt.total_seconds().clip(lower=0)
    return g.sort_index()


def evaluate_live_progress(
    cfg: AppConfig, feed: FeedConfig, cursor: str | None, now: datetime
) -> tuple[dg.AssetObservation | None, str]:
    """(observation or None when nothing changed, new cursor) for one tick."""
    g = live_progress(cfg, feed, now)
    day = now.astimezone(UTC).date().isoformat()
    state = {
        "day": day,
        "symbols": {
            str(s): [t.isoformat(), int(n)] for s, t, n in zip(g.index, g["last_ts"], g["rows"], strict=True)
        },
    }
    new_cursor = json.dumps(state, sort_keys=True)
    if g.empty or new_cursor == (cursor or ""):
        return None, new_cursor
    last_close = g["close_at"].max()
    obs = dg.AssetObservation(
        asset_key=asset_key(feed, "live", feed.timeframe),
        description=f"{int(g['rows'].sum())} live candle(s) of {day} in {cfg.storage.primary!r}",
        metadata={
            "day": dg.MetadataValue.text(day),
            "rows_today": dg.MetadataValue.json({str(s): int(v) for s, v in g["rows"].items()}),
            "last_candle_ts": dg.MetadataValue.json({str(s): v.isoformat() for s, v in g["last_ts"].items()}),
            "lag_seconds": dg.MetadataValue.json({str(s): round(float(v), 3) for s, v in g["lag"].items()}),
            "max_lag_seconds": dg.MetadataValue.float(round(float(g["lag"].max()), 3)),
            "last_updated": dg.MetadataValue.timestamp(last_close.to_pydatetime()),
            "dagster/last_updated_timestamp": dg.MetadataValue.timestamp(last_close.to_pydatetime()),
        },
    )
    return obs, new_cursor


def build_live_sensors(cfg: AppConfig) -> list[dg.SensorDefinition]:
    """One progress sensor per live feed: RUNNING by default only when automation.live_sensor.enabled."""
    ls = cfg.automation.live_sensor
    status = dg.DefaultSensorStatus.RUNNING if ls.enabled else dg.DefaultSensorStatus.STOPPED
    return [_make(cfg, feed, ls.interval_seconds, status) for feed in live_feeds(cfg)]


def _make(
    cfg: AppConfig, feed: FeedConfig, interval: int, status: dg.DefaultSensorStatus
) -> dg.SensorDefinition:
    @dg.sensor(
        name=live_sensor_name(feed),
        minimum_interval_seconds=interval,
        default_status=status,
        description=f"Records what `data-puller stream` wrote to {feed.name}/live_ohlcv_{feed.timeframe} today.",
        tags={FEED_TAG: feed.name},
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        obs, cursor = evaluate_live_progress(cfg, feed, context.cursor, get_current_datetime())
        if obs is None:
            return dg.SensorResult(skip_reason="no new live candles since the last tick", cursor=cursor)
        return dg.SensorResult(asset_events=[obs], cursor=cursor)

    return _sensor
