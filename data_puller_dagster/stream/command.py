"""`data-puller stream [--feed NAME ...] [--config PATH] [--duration S] [--log-interval S]`.

Reads the same data_puller.yaml as Dagster and runs until SIGTERM/SIGINT (or `--duration`), exiting 0
after flushing everything it received. Exit 2: configuration error; 1: a failure no retry can fix (a
refused websocket handshake, an invalid symbol, a route that cannot take the live table).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from data_puller_dagster.config import AppConfig, ConfigError, FeedConfig, load_config

log = logging.getLogger("data_puller_dagster.stream")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="data-puller stream",
        description="Stream live candles (Binance websockets, Twelve Data polling) through the configured "
        "routes into the live tables, until SIGTERM/SIGINT.",
    )
    ap.add_argument("--feed", action="append", metavar="NAME",
                    help="a feed to stream (repeatable); default: every feed with a live source")  # fmt: skip
    ap.add_argument("--config", metavar="PATH", help="data_puller.yaml (default: $DATA_PULLER_CONFIG or ./data_puller.yaml)")
    ap.add_argument("--duration", type=float, metavar="SECONDS", help="stop (cleanly) after this long")
    ap.add_argument("--log-interval", type=float, metavar="SECONDS",
                    help="seconds between progress lines (default: stream.log_interval_seconds, 60)")  # fmt: skip
    return ap


def select_feeds(cfg: AppConfig, names: list[str] | None) -> list[FeedConfig]:
    from data_puller_dagster.stream.runner import LIVE_SOURCES

    by_name = {f.name: f for f in cfg.feeds}
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError([f"--feed {n}: no such feed; feeds: {', '.join(by_name)}" for n in unknown])
        chosen = [by_name[n] for n in dict.fromkeys(names)]
        bad = [f for f in chosen if f.source not in LIVE_SOURCES]
        if bad:
            raise ConfigError([f"--feed {f.name}: source {f.source!r} has no live mode (live sources: "
                               f"{', '.join(LIVE_SOURCES)})" for f in bad])  # fmt: skip
        return chosen
    chosen = [f for f in cfg.feeds if f.source in LIVE_SOURCES]
    for f in cfg.feeds:
        if f.source not in LIVE_SOURCES:
            log.warning("feed %s: source %r has no live mode; not streamed", f.name, f.source)
    if not chosen:
        raise ConfigError([f"feeds: none has a live source ({', '.join(LIVE_SOURCES)})"])
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s data-puller stream: %(message)s", stream=sys.stderr)
    for noisy in ("websockets", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.duration is not None and args.duration <= 0:
        print("data-puller stream: --duration must be > 0", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        feeds = select_feeds(cfg, args.feed)
    except ConfigError as e:
        print(f"data-puller stream: {e}", file=sys.stderr)
        return 2
    from data_puller_dagster.io.errors import StorageError
    from data_puller_dagster.sources.errors import SourceError
    from data_puller_dagster.stream.runner import run_async

    try:
        asyncio.run(run_async(cfg, feeds, duration=args.duration, log_interval=args.log_interval))
    except (SourceError, StorageError, ValueError) as e:
        print(f"data-puller stream: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
