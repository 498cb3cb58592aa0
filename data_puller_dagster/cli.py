"""`data-puller`: candles from the shell, without Dagster, into the layout the pipeline uses.

Exit codes: 0 done; 1 failed (one line on stderr naming the cause and the fix; `--debug` adds the
traceback); 2 bad arguments or an invalid configuration (every problem listed); 3 not available yet
(unused); 130 interrupted. `stream` is data_puller_dagster/stream/command.py (0 clean stop, 1 failure no
retry fixes, 2 configuration error).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from data_puller_dagster import timeframes

PULL_EXAMPLES = """examples:
  data-puller pull BTCUSDT ETHUSDT --timeframe 1m --start 2024-01-01 --end 2024-12-31 --out data/
  data-puller pull EUR/USD AAPL --timeframe 1h --start 2024-06-01 --format duckdb --out data/
  data-puller pull BTCUSDT --timeframe 1h --config data_puller.yaml     # the config's feed, routes and storage

Symbols: Binance pairs (BTCUSDT, ETHBTC) come from Binance; EUR/USD-style pairs (forex) and tickers (AAPL)
from Twelve Data (export TWELVEDATA_API_KEY). A symbol listed in a --config feed uses that feed.
--start/--end are UTC days, both included (default: the last 30 days). Each day is replaced as a whole,
so running the same command again leaves the same files. Stored: the raw, normalized and quarantine
tables of the symbol's feed (crypto, forex or equity without a config), e.g.
<out>/parquet/crypto/normalized_ohlcv_1m/symbol_key=BTCUSDT/date=2024-01-01/part-0.parquet;
a Dagster config with that feed and data_dir picks them up.
Base URLs: BINANCE_BASE_URL, BINANCE_ARCHIVE_URL, TWELVEDATA_BASE_URL (or sources: in --config)."""
VALIDATE_EXAMPLES = """examples:
  data-puller validate-config                      # $DATA_PULLER_CONFIG or ./data_puller.yaml
  data-puller validate-config deploy/prod.yaml

Prints one line for a valid file (exit 0), or every problem as `key.path: value: what is allowed`
(exit 2). Routes are checked as the Dagster code location checks them when it loads."""
GAPS_EXAMPLES = """examples:
  data-puller gaps crypto --config data_puller.yaml
  data-puller gaps forex --symbol EUR/USD --start 2024-01-01 --json
  data-puller gaps crypto --symbol BTCUSDT --timeframe 1m --start 2024-01-01 --out data/   # after a config-less pull

Missing candles of the stored canonical table against the market calendar (crypto 24/7, forex Sunday
17:00 to Friday 17:00 New York, NYSE sessions): market closures are not gaps, candles not closed yet
are not counted. Window: the feed's start_date .. end_date (or today) unless --start/--end narrow it."""
STREAM_EXAMPLES = """examples:
  data-puller stream                      # every feed with a live source, routes from data_puller.yaml
  data-puller stream --feed crypto --log-interval 30

Runs until SIGTERM/SIGINT (flushes what it received, exit 0). See `data-puller stream --help`."""


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="data-puller", formatter_class=fmt,
        description="Market candles without an orchestrator: the data-puller-dagster pipeline's own fetch, "
        "normalize, validate and store steps, as commands.",
        epilog="run `data-puller COMMAND --help` for a command's options and examples",
    )  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pull = sub.add_parser("pull", help="download candles into Parquet/CSV/DuckDB", epilog=PULL_EXAMPLES,
                          formatter_class=fmt)  # fmt: skip
    pull.add_argument("symbols", nargs="+", metavar="SYMBOL", help="e.g. BTCUSDT, EUR/USD, AAPL")
    pull.add_argument("--timeframe", "-t", default="1m", choices=timeframes.TIMEFRAMES, help="default 1m")
    pull.add_argument("--start", help="first UTC day, YYYY-MM-DD (default: 30 days before --end)")
    pull.add_argument("--end", help="last UTC day, included (default: today)")
    pull.add_argument("--out", metavar="DIR", help="data directory (default: the config's data_dir, ./data)")
    pull.add_argument("--format", choices=("parquet", "csv", "duckdb"),
                      help="store (default parquet; with --config and no --format: the config's routes)")  # fmt: skip
    pull.add_argument("--source", help="binance or twelvedata (default: inferred from the symbol)")
    pull.add_argument("--config", metavar="PATH", help="a data_puller.yaml (default: built-in defaults)")
    pull.add_argument("--quiet", "-q", action="store_true", help="no progress bars, no summary lines")

    val = sub.add_parser("validate-config", help="check a data_puller.yaml", epilog=VALIDATE_EXAMPLES,
                         formatter_class=fmt)  # fmt: skip
    val.add_argument("path", nargs="?", metavar="PATH")

    gaps = sub.add_parser("gaps", help="gap report of the stored candles of a feed", epilog=GAPS_EXAMPLES,
                          formatter_class=fmt)  # fmt: skip
    gaps.add_argument("feed", metavar="FEED")
    gaps.add_argument("--symbol", action="append", metavar="S", help="only this symbol (repeatable)")
    gaps.add_argument("--timeframe", choices=timeframes.TIMEFRAMES, help="default: the feed's")
    gaps.add_argument("--start", help="first UTC day (default: the feed's start_date)")
    gaps.add_argument("--end", help="last UTC day, included (default: the feed's end_date or today)")
    gaps.add_argument("--config", metavar="PATH", help="default: $DATA_PULLER_CONFIG or ./data_puller.yaml")
    gaps.add_argument("--out", metavar="DIR", help="data directory (overrides the config's data_dir)")
    gaps.add_argument("--json", action="store_true", help="JSON instead of tables")

    sub.add_parser("stream", help="live candles through the routes (websockets, polling)", epilog=STREAM_EXAMPLES,
                   formatter_class=fmt, add_help=False)  # fmt: skip
    return p


def _run(args: argparse.Namespace) -> int:
    from data_puller_dagster.standalone import commands

    if args.command == "pull":
        cfg = commands.cli_config(args.config, args.out, args.format)
        first, last = commands.day_range(args.start, args.end)
        progress = not args.quiet and sys.stderr.isatty()
        if not progress:
            return commands.pull(cfg, args.symbols, args.timeframe, first, last, source=args.source,
                                 progress=False, quiet=args.quiet)  # fmt: skip
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():  # retry warnings above the bars, not through them
            return commands.pull(cfg, args.symbols, args.timeframe, first, last, source=args.source,
                                 progress=True, quiet=args.quiet)  # fmt: skip
    if args.command == "validate-config":
        print(commands.validate_config(args.path))
        return 0
    if args.command == "gaps":
        from data_puller_dagster.config import config_path

        path = args.config or (str(config_path()) if config_path().exists() else None)
        cfg = commands.cli_config(path, args.out, None if path else "parquet")
        return commands.gaps(cfg, args.feed, args.symbol, args.timeframe, args.start, args.end, args.json)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover - argparse restricts it


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `data-puller` console script (returns the exit code)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "stream":  # the long-lived command has its own options (stream/command.py)
        from data_puller_dagster.stream.command import main as stream_main

        return stream_main(argv[1:])
    args = _parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="data-puller: %(message)s")
    from data_puller_dagster.config import ConfigError
    from data_puller_dagster.io.errors import RoutingError
    from data_puller_dagster.standalone.commands import one_line

    try:
        return _run(args)
    except (ConfigError, RoutingError) as err:
        print(f"data-puller: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data-puller: interrupted; days stored before the interrupt are complete", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one line per failure is the contract; --debug shows more
        if args.debug:
            traceback.print_exc()
        name = type(err).__name__
        print(f"data-puller: error: {name}: {one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
