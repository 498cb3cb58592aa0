# ---
# The pipeline without Dagster, notebook style: each `# %%` is a cell (VS Code, Jupytext, PyCharm run
# them one by one; `python examples/notebook_quickstart.py` runs them all).
#
# Providers: Binance needs no key; set BINANCE_BASE_URL / BINANCE_ARCHIVE_URL to use another endpoint
# (the test suite points them at its local stand-in). QUICKSTART_SYMBOL, QUICKSTART_START,
# QUICKSTART_END pick the candles; QUICKSTART_OUT where the routed copy goes (./quickstart_data).
# ---

# %% Imports and what to pull
import os
from pathlib import Path

import duckdb

from data_puller_dagster import (
    BinanceAdapter,
    DataNormalizer,
    DataPipeline,
    DataRouter,
    Route,
    build_llm_dataset,
    enrich,
    pull,
)
from data_puller_dagster.io.destinations.parquet_store import ParquetDestination

SYMBOL = os.environ.get("QUICKSTART_SYMBOL", "BTCUSDT")
START = os.environ.get("QUICKSTART_START", "2024-01-01")
END = os.environ.get("QUICKSTART_END", "2024-01-07")
OUT = Path(os.environ.get("QUICKSTART_OUT", "quickstart_data"))
print(f"{SYMBOL} 1h {START}..{END} from {os.environ.get('BINANCE_BASE_URL', 'https://api.binance.com')}")

# %% Candles as a DataFrame: fetched, normalized and validated as the pipeline does
candles = pull(SYMBOL, "1h", start=START, end=END)
print(candles[["ts", "open", "high", "low", "close", "volume", "is_final"]].tail(3).to_string(index=False))

# %% The same pull with its report: quarantined rows, gaps against the calendar, quality per day
report = pull(SYMBOL, "1h", start=START, end=END, report=True)
print(report)
print(report.quality[["day", "rows_in", "quarantined", "missing", "quality_score"]].to_string(index=False))
print("gaps:", "none" if report.gaps.empty else report.gaps.to_string(index=False))

# %% Indicators (RSI, MACD, Bollinger, EMAs, ATR, ...), each day from its own warm-up window
enriched = enrich(candles, {"warmup_candles": 48})
print(enriched[["ts", "close", "rsi_14", "macd_hist", "bb_pctb_20"]].dropna().tail(3).to_string(index=False))

# %% A pipeline with routes: liquid candles (a Python condition) to Parquet, everything to a second copy
routes = [
    Route("liquid", condition=lambda df: df["volume"] > 0, destination=ParquetDestination(str(OUT / "liquid"))),
    Route("archive", condition=None, destination=ParquetDestination(str(OUT / "all")),
          layers=("raw", "normalized", "quarantine")),
]  # fmt: skip
with DataPipeline(BinanceAdapter(), DataNormalizer(), DataRouter(routes)) as pipeline:
    result = pipeline.fetch_and_process(symbol=SYMBOL, timeframe="1h", start=START, end=END)
    # Live candles: pipeline.stream(symbol=SYMBOL, timeframe="1m", duration=60) runs the websocket stream
    # through the config's routes (BINANCE_WS_URL); not run here, it needs a live (or stand-in) server.
print(result)

# %% Read the routed copy back with DuckDB (the pipeline's Parquet layout, hive-partitioned)
glob = str(OUT / "liquid" / "crypto" / "normalized_ohlcv_1h" / "**" / "*.parquet")
with duckdb.connect() as con:
    n, first, last = con.execute(
        "SELECT count(*), min(ts), max(ts) FROM read_parquet(?, hive_partitioning=true)", [glob]
    ).fetchone()
print(f"stored {n} liquid candles, {first} .. {last}")

# %% LLM training examples (seed format) and the JSONL files with their manifest
examples = build_llm_dataset(
    enriched, dataset={"context_window": 24, "min_quality": 0.0}, out_dir=OUT / "dataset", name=f"{SYMBOL}_1h"
)
print(f"{len(examples)} examples; first: {examples['line'].iloc[0][:120]}...")
print("files:", sorted(p.name for p in (OUT / "dataset").iterdir()))
