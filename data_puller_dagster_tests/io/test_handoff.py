"""The in-memory handoff of the router IO manager, in real Dagster runs on real stores.

When a step writes a slice and a later step of the same run (in-process executor) reads exactly that
slice, load_input returns the written frame instead of reading Parquet back. These tests hold it to
"what the read would have returned": the real raw -> normalize assets against the fake Binance server
(frames compared with a re-read: values, dtypes, row order, index), the writes in pieces of whole days,
and every case where it must not be used (DuckDB primary, another slice, a partial output, a route that
failed with on_error: warn, rows not in partition order). The slot is empty after every run.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from data_puller_dagster.assets.feed import build_all_assets
from data_puller_dagster.assets.naming import asset_key, table_metadata, table_ref
from data_puller_dagster.assets.partitions import context_window, feed_partitions, window_mapping
from data_puller_dagster.config import AppConfig, parse_config
from data_puller_dagster.io.frames import dtype_name
from data_puller_dagster.io.io_manager import RouterIOManager, owned_input, release_input
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartialOutput, PartitionSlice
from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines
from data_puller_dagster_tests.io.conftest import candles

RANGE = {"dagster/asset_partition_range_start": "2024-01-01|EURUSD",
         "dagster/asset_partition_range_end": "2024-01-05|EURUSD"}  # fmt: skip
EUR = PartitionSlice({"EURUSD": "EUR/USD"}, date(2024, 1, 1), date(2024, 1, 5))


class RecordingIOManager(RouterIOManager):
    """The real IO manager; keeps a copy of every frame load_input returned."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.loaded: list[pd.DataFrame] = []

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        df = super().load_input(context)
        self.loaded.append(df.copy(deep=True))
        return df


def assert_same_as_read(got: pd.DataFrame, read: pd.DataFrame) -> None:
    """Equal values, the very same dtypes (string storage included) and a 0..n-1 RangeIndex."""
    pd.testing.assert_frame_equal(got, read, check_exact=True)
    assert [dtype_name(t) for t in got.dtypes] == [dtype_name(t) for t in read.dtypes]
    assert got.index.equals(pd.RangeIndex(len(read))) and isinstance(got.index, pd.RangeIndex)


def forex_cfg(tmp_path: Path, primary: str = "parquet", warn_route: bool = False) -> AppConfig:
    routes = [{"id": "warehouse", "destinations": ["parquet", "duckdb"]}]
    storage = {"data_dir": str(tmp_path / "data"), "primary": primary}
    if warn_route:  # a real failing write: the CSV directory is a file
        (tmp_path / "not_a_dir").write_text("")
        storage["csv_dir"] = str(tmp_path / "not_a_dir")
        routes.append({"id": "mirror", "destinations": ["csv"], "on_error": "warn"})
    return parse_config({
        "storage": storage,
        "feeds": [{"name": "forex", "source": "twelvedata", "asset_class": "forex", "timeframe": "1h",
                   "symbols": ["EUR/USD", "GBP/USD"], "start_date": "2024-01-01", "end_date": "2024-01-31"}],
        "routes": routes,
    }, env={})  # fmt: skip


def pair(cfg: AppConfig, *, partial: bool = False, reverse: bool = False, window: int = 0):
    """An upstream normalized asset and a downstream reading it (identity or a `window`-day mapping)."""
    feed = cfg.feed("forex")
    parts = feed_partitions(feed)
    seen: dict = {}

    @dg.asset(key=["forex", "normalized_ohlcv_1h"], partitions_def=parts,
              metadata=table_metadata(feed, "normalized", "1h"))  # fmt: skip
    def up(context) -> object:  # noqa: ANN001
        w = context_window(context, cfg, feed)
        df = pd.concat([candles(feed.symbol_keys[k], w.start, w.days) for k in w.keys], ignore_index=True)
        if reverse:
            df = df.iloc[::-1].reset_index(drop=True)
        # partial: the run's third day keeps its stored version (here: none), the others are replaced
        return PartialOutput(df, frozenset({("EURUSD", date(2024, 1, 3))})) if partial else df

    mapping = {"partition_mapping": window_mapping(window)} if window else {}

    @dg.asset(key=["forex", "enriched_ohlcv_1h"], partitions_def=parts,
              metadata=table_metadata(feed, "enriched", "1h"),
              ins={"src": dg.AssetIn(key=["forex", "normalized_ohlcv_1h"], **mapping)})  # fmt: skip
    def down(context, src: pd.DataFrame) -> pd.DataFrame:  # noqa: ANN001
        w = context_window(context, cfg, feed)
        seen["owned"] = owned_input(src)
        out = src[(src["ts"] >= pd.Timestamp(w.start_ts)) & (src["ts"] < pd.Timestamp(w.end_ts))]
        return out.reset_index(drop=True)

    return up, down, seen


@pytest.mark.parametrize("chunk_rows", [1_000_000, 30])
def test_a_whole_write_is_handed_over_as_the_read_would_return_it(tmp_path: Path, chunk_rows: int) -> None:
    cfg = forex_cfg(tmp_path)
    up, down, seen = pair(cfg)
    io = RecordingIOManager(cfg, write_chunk_rows=chunk_rows)  # 30 rows: ~5 writes of one day
    res = dg.materialize([up, down], resources={"io_manager": io}, tags=RANGE)
    assert res.success
    assert io.inputs_served == {"memory": 1, "storage": 0}
    assert io._handoff is None  # taken out by its consumer
    assert seen["owned"] is False  # materialize's output capture still holds it: never emptied
    assert_same_as_read(io.loaded[0], Router(cfg).read(table_ref(cfg.feed("forex"), "normalized", "1h"), EUR))


@pytest.mark.parametrize(
    ("case", "cfg_kw", "pair_kw"),
    [
        ("duckdb primary (no defined row order)", {"primary": "duckdb"}, {}),
        ("another slice (a 2-day window)", {}, {"window": 2}),
        ("a partial output", {}, {"partial": True}),
        ("a route failed with on_error: warn", {"warn_route": True}, {}),
        ("rows not in (symbol, day) order", {}, {"reverse": True}),
    ],
)
def test_not_handed_over(tmp_path: Path, case: str, cfg_kw: dict, pair_kw: dict) -> None:
    cfg = forex_cfg(tmp_path, **cfg_kw)
    up, down, seen = pair(cfg, **pair_kw)
    io = RecordingIOManager(cfg)
    tags = RANGE
    if pair_kw.get("window"):  # written 01-03..01-05; read 01-01..01-05 (two days before the first)
        tags = {**RANGE, "dagster/asset_partition_range_start": "2024-01-03|EURUSD"}
    res = dg.materialize([up, down], resources={"io_manager": io}, tags=tags)
    assert res.success, case
    assert io.inputs_served == {"memory": 0, "storage": 1}, case
    assert io._handoff is None, case
    assert seen["owned"] is True  # read for this step alone: the step may empty it
    assert_same_as_read(io.loaded[0], Router(cfg).read(table_ref(cfg.feed("forex"), "normalized", "1h"), EUR))


def test_nothing_is_held_when_no_step_of_the_run_reads_the_output(tmp_path: Path) -> None:
    cfg = forex_cfg(tmp_path)
    up, down, _ = pair(cfg)
    io = RecordingIOManager(cfg)
    assert dg.materialize([up, down], selection=[up], resources={"io_manager": io}, tags=RANGE).success
    assert io._handoff is None  # the slot never keeps a frame past a run that does not read it


def test_release_input_empties_only_frames_the_io_manager_owns() -> None:
    mine = pd.DataFrame({"a": [1, 2]})
    assert not owned_input(mine) and release_input(mine) is False
    assert list(mine.columns) == ["a"]


def test_raw_year_slice_handed_to_normalize_in_a_real_run(tmp_path: Path) -> None:
    """The real raw and normalize assets on Parquet + DuckDB, a 3-day range against the fake Binance
    server, written in one-day pieces: normalize's input is the raw frame itself, equal to a re-read,
    and the stored normalized rows are what normalize() of the re-read gives."""
    days = 3
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-01-01", days * 1440, "1m", seed=9)}) as fake:
        cfg = parse_config({
            "storage": {"data_dir": str(tmp_path / "data"), "primary": "parquet"},
            "sources": {"binance": {"base_url": fake.url, "use_archive": False, "max_retries": 0}},
            "feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                       "symbols": ["BTCUSDT"], "start_date": "2024-01-01", "end_date": "2024-01-03"}],
            "routes": [{"id": "warehouse", "destinations": ["parquet", "duckdb"]}],
            "runs": {"backfill_policy": "single_run", "retry_max": 0},
        }, env={})  # fmt: skip
        feed = cfg.feed("crypto")
        io = RecordingIOManager(cfg, write_chunk_rows=1440)
        res = dg.materialize(
            build_all_assets(cfg),
            selection=[asset_key(feed, layer, "1m") for layer in ("raw", "normalized", "quarantine")],
            resources={"io_manager": io},
            tags={"dagster/asset_partition_range_start": "2024-01-01|BTCUSDT",
                  "dagster/asset_partition_range_end": "2024-01-03|BTCUSDT"},
        )  # fmt: skip
    assert res.success
    assert io.inputs_served == {"memory": 1, "storage": 0} and io._handoff is None
    part = PartitionSlice({"BTCUSDT": "BTCUSDT"}, date(2024, 1, 1), date(2024, 1, 3))
    router = Router(cfg)
    reread = router.read(table_ref(feed, "raw", "1m"), part)
    assert len(reread) == days * 1440
    assert_same_as_read(io.loaded[0], reread)
    for store in ("parquet", "duckdb"):
        stored = router.store(store).read(table_ref(feed, "normalized", "1m"), part)
        stored = stored.sort_values("ts", ignore_index=True)
        pd.testing.assert_frame_equal(stored, normalize(reread, asset_class="crypto", timeframe="1m").data,
                                      check_exact=True)  # fmt: skip
