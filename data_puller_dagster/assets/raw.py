"""`<feed>/raw_ohlcv_<tf>`: exactly what the provider returned, for audit and replay.

Errors a retry cannot fix (a Binance ban, a refused key, an invalid symbol, an archive day that fails
verification and that REST cannot replace, ...) become `dg.Failure(allow_retries=False)` naming the
feed, symbol, range and the fix: the RetryPolicy would otherwise re-run the step in a new process that
hits the provider again - for a 418, lengthening the ban. Timeouts, 5xx and exhausted 429s are
re-raised as they are, so the policy retries them.
"""

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from data_puller_dagster.assets.catalog import catalog_metadata, catalog_tags, storage_kinds
from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.assets.partition_metadata import add_partition_metadata, partition_groups
from data_puller_dagster.assets.partitions import backfill_policy, context_window, feed_partitions
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.io.io_manager import release_freed_memory
from data_puller_dagster.sources import (
    AuthenticationError,
    ChecksumMismatchError,
    InvalidRequestError,
    IpBannedError,
    SourceError,
    UnreachableError,
    build_adapter,
    raw_layout,
)
from data_puller_dagster.sources.bans import BanStore, InstanceBanMirror, ban_key
from data_puller_dagster.sources.fetch import fetch_window

CODE_VERSION = "raw-1"


def provider_of(feed: FeedConfig) -> str:
    """Pool and run-tag value that bounds concurrent calls to one provider."""
    return feed.source


_NOT_RETRIED = {
    IpBannedError: "the provider banned this IP; retrying would only lengthen the ban",
    AuthenticationError: "the API key was refused; retrying sends the same key",
    InvalidRequestError: "the provider rejects this request the same way every time",
    ChecksumMismatchError: "the archive file fails verification and REST could not replace the day",
    UnreachableError: "the host does not resolve or refuses connections; fix the URL or the network",
}


def source_failure(feed: FeedConfig, symbol: str, start: object, end: object, err: SourceError) -> dg.Failure:
    """A non-retryable source error as a Failure that names feed, symbol, range, cause and fix."""
    why = next(
        (text for cls, text in _NOT_RETRIED.items() if isinstance(err, cls)),
        "retrying the same request cannot succeed",
    )
    md: dict[str, dg.RawMetadataValue] = {
        "feed": feed.name,
        "source": feed.source,
        "symbol": symbol,
        "timeframe": feed.timeframe,
        "range": f"{start} .. {end}",
        "error_type": type(err).__name__,
    }
    until = getattr(err, "until", None)
    if until is not None:
        md["banned_until"] = until.isoformat()
    return dg.Failure(
        description=(
            f"feed {feed.name!r}: fetching {symbol} {feed.timeframe} {start} .. {end} from {feed.source} "
            f"failed with {type(err).__name__} (not retried: {why}): {err}"
        ),
        metadata=md,
        allow_retries=False,
    )


def _ban_mirror(context: AssetExecutionContext, cfg: AppConfig, feed: FeedConfig) -> InstanceBanMirror | None:
    """Binance bans are per IP for the whole deployment: besides `<data_dir>/.state/bans.json` they are
    mirrored in the Dagster instance's storage, and a running ban found there is copied into the local
    file before the adapter sends anything."""
    if feed.source != "binance":
        return None
    mirror = InstanceBanMirror(context.instance.run_storage, ban_key("binance", cfg.sources.binance.base_url))
    mirror.seed(BanStore.for_data_dir(cfg.storage.data_dir))
    return mirror


def build_raw_asset(cfg: AppConfig, feed: FeedConfig) -> dg.AssetsDefinition:
    tf = feed.timeframe
    key = asset_key(feed, "raw", tf)

    @dg.asset(
        key=key,
        partitions_def=feed_partitions(feed),
        group_name=feed.name,
        kinds={"python", "pandas", feed.source, *storage_kinds(cfg, feed, "raw", tf)},
        tags=catalog_tags(feed, "raw", tf),
        code_version=CODE_VERSION,
        description=(
            f"{feed.asset_class} {tf} candles from {feed.source} for the partition's UTC day(s), exactly "
            "as the provider sent them plus provenance columns (ts, symbol, timeframe, source, fetched_at)."
        ),
        metadata=catalog_metadata(cfg, feed, "raw", tf),
        pool=provider_of(feed),
        retry_policy=dg.RetryPolicy(
            max_retries=cfg.runs.retry_max,
            delay=cfg.runs.retry_delay_seconds,
            backoff=dg.Backoff.EXPONENTIAL,
            jitter=dg.Jitter.PLUS_MINUS,
        ),
        backfill_policy=backfill_policy(cfg),
    )
    def raw(context: AssetExecutionContext) -> dg.Output[pd.DataFrame]:
        window = context_window(context, cfg, feed)
        mirror = _ban_mirror(context, cfg, feed)

        def on_symbol(symbol: str) -> None:
            context.log.info(
                f"fetching {symbol} {tf} {window.start_ts:%Y-%m-%d} .. {window.end:%Y-%m-%d} from {feed.source}"
            )

        def on_error(symbol: str, err: SourceError) -> None:
            until = getattr(err, "until", None)
            if mirror is not None and isinstance(err, IpBannedError) and until is not None:
                mirror.record(until.timestamp())
            if err.retryable:
                return  # re-raised as it is: the RetryPolicy retries it (timeouts, 5xx, exhausted 429)
            raise source_failure(feed, symbol, window.start, window.end, err) from err

        # The fetch loop is sources/fetch.py's, shared with the library and `data-puller pull`.
        fetched = fetch_window(
            build_adapter(cfg, feed), window, tf, raw_layout(feed.source), on_symbol=on_symbol, on_error=on_error
        )
        df, outside, fallbacks = fetched.frame, fetched.outside, fetched.fallbacks
        release_freed_memory()  # the pages' buffers, freed once concatenated (~125 MB for a year of 1m)
        for fb in fallbacks:
            context.log.warning(
                f"{fb.symbol} {fb.timeframe} {fb.day}: archive file not used ({fb.reason}); the day was "
                "fetched over REST instead"
            )
        # A day partition can only hold its own candles. Rows the provider sent for other times are
        # counted and logged (they mean the response did not match the request), not stored here.
        if outside:
            context.log.warning(
                f"{feed.source} returned {outside} row(s) outside {window.start}..{window.end} for "
                f"{', '.join(window.keys)}; kept out of the raw partition"
            )
        # Each partition gets its own rows and time range; the Output keeps only what belongs to the
        # request as a whole (rows the provider sent outside it, archive days replaced over REST).
        add_partition_metadata(context, key, partition_groups(df, window))
        md: dict[str, dg.MetadataValue] = {"rows_outside_window": dg.MetadataValue.int(outside)}
        if feed.source == "binance":
            md["archive_checksum_fallback_days"] = dg.MetadataValue.int(len(fallbacks))
        context.log.info(f"raw {feed.name} {tf} {window.describe()}: {len(df)} row(s) in the run")
        return dg.Output(df, metadata=md)

    return raw
