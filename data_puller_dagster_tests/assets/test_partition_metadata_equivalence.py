"""The vectorized per-partition metadata equals, key for key and value for value, what the straightforward
per-partition code computed before (copied here as the reference: strftime day keys + groupby,
`find_gaps` per day, `frame_metadata` per partition, one `add_asset_metadata` call per partition).

Real candles from the fixtures (Binance BTCUSDT 1h with its real gaps, EUR/USD 1h across weekends and the
Christmas / New Year closures, GOOG 1d on the NYSE calendar), run through normalize and the day judge as
the asset does, plus what makes partitions awkward: days with gaps, a rejected day, rows with NaT ts,
several symbols in one window, rows out of order, a window that ends before `now`'s last closed candle.
"""

from __future__ import annotations

from datetime import date

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from data_puller_dagster import timeframes
from data_puller_dagster.assets import normalized as normalized_mod
from data_puller_dagster.assets.catalog import COLUMN_DESCRIPTIONS
from data_puller_dagster.assets.metadata import PREVIEW_ROWS, frame_metadata, slices_metadata
from data_puller_dagster.assets.normalized_metadata import partition_figures, window_grid
from data_puller_dagster.assets.partition_metadata import (
    add_partition_metadata,
    partition_groups,
    partition_key_of,
    partition_layout,
    window_partition_keys,
)
from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.config import parse_config
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.transform import partition_layout as partition_layout_mod
from data_puller_dagster.transform.acceptance import drop_rejected, judge_days
from data_puller_dagster.transform.gaps import find_gaps
from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster.transform.quality import data_quality_score
from data_puller_dagster_tests.transform import rawframes


# ----------------------------------------------------------------------------- the reference (old code)
def ref_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no rows)"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    body = df.astype(str).to_numpy().tolist()
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def ref_frame_metadata(df: pd.DataFrame) -> dict:
    md: dict = {"dagster/row_count": dg.MetadataValue.int(len(df))}
    if "ts" in df.columns and len(df) and df["ts"].notna().any():
        md["first_candle"] = dg.MetadataValue.text(df["ts"].min().isoformat())
        md["last_candle"] = dg.MetadataValue.text(df["ts"].max().isoformat())
    md["dagster/column_schema"] = dg.TableSchema(
        columns=[
            dg.TableColumn(name=str(c), type=str(t), description=COLUMN_DESCRIPTIONS.get(str(c)))
            for c, t in df.dtypes.items()
        ]
    )
    md["preview"] = dg.MetadataValue.md(ref_markdown(df.head(PREVIEW_ROWS)))
    return md


def ref_partition_groups(df: pd.DataFrame, window: PartitionSlice) -> dict[str, pd.DataFrame]:
    empty = df.iloc[0:0]
    groups: dict[str, pd.DataFrame] = {}
    if len(df) and "ts" in df.columns and "symbol" in df.columns:
        key_of = {display: key for key, display in window.symbols.items()}
        ts = pd.to_datetime(df["ts"], utc=True, errors="coerce")
        day = ts.dt.strftime("%Y-%m-%d")
        sym = df["symbol"].astype("string").map(key_of)
        for (d, s), g in df.groupby([day, sym], sort=False, dropna=True):
            groups[partition_key_of(d, s)] = g
    return {k: groups.get(k, empty) for k in window_partition_keys(window)}


def ref_partition_figures(feed, window, *, data, raw, quarantine, rejections, now) -> dict[str, dict]:
    tf = feed.timeframe
    closed = now.floor(timeframes.pandas_freq(tf))
    key_of = {d: k for k, d in window.symbols.items()}
    rejected = {partition_key_of(r.day, key_of[r.symbol]): r for r in rejections.itertuples()}
    data_g = ref_partition_groups(data, window)
    raw_g = ref_partition_groups(raw, window)
    quar_g = ref_partition_groups(quarantine, window)
    out: dict[str, dict] = {}
    for key, rows in data_g.items():
        day = key.split("|", 1)[0]
        start = pd.Timestamp(day, tz="UTC")
        end = min(start + pd.Timedelta(days=1), closed)
        missing = segments = 0
        completeness = 1.0
        if end > start:
            final = rows.loc[rows["is_final"].astype(bool), "ts"]
            gaps = find_gaps(final, feed.asset_class, tf, start, end)
            missing, segments, completeness = gaps.missing, len(gaps.segments), gaps.completeness
        rej = rejected.get(key)
        rows_in = int(rej.rows_in) if rej is not None else len(raw_g[key])
        quarantined = int(rej.quarantined) if rej is not None else len(quar_g[key])
        score = data_quality_score(
            completeness=min(float(completeness), 1.0), rows_in=max(rows_in, quarantined), quarantined=quarantined
        )
        out[key] = {
            "day": day, "symbol": key.split("|", 1)[1], "missing": int(missing), "segments": int(segments),
            "completeness": float(completeness), "rows_in": rows_in, "quarantined": quarantined,
            "score": float(score), "rejected": rej,
        }  # fmt: skip
    return out


def ref_completeness(feed, window, data, now) -> dict[str, dict]:
    end = min(pd.Timestamp(window.end_ts), now.floor(timeframes.pandas_freq(feed.timeframe)))
    start = pd.Timestamp(window.start_ts)
    final = data.loc[data["is_final"].astype(bool), ["symbol", "ts"]]
    out: dict[str, dict] = {}
    for key in window.keys:
        present = final.loc[final["symbol"] == feed.symbol_keys[key], "ts"]
        last_present = present.max() if len(present) else None
        if end <= start:
            out[key] = {"missing": 0, "segments": 0, "expected": 0, "present": 0, "by_day": {},
                        "segment_list": [], "last": None, "stale": None}  # fmt: skip
            continue
        gaps = find_gaps(present, feed.asset_class, feed.timeframe, start, end)
        last_missing = gaps.missing_index.max() if len(gaps.missing_index) else None
        stale = None
        if last_missing is not None and (last_present is None or last_missing > last_present):
            stale = {"last_expected": str(last_missing), "last_present": str(last_present)}
        out[key] = {
            "missing": int(gaps.missing), "segments": len(gaps.segments), "expected": int(gaps.expected),
            "present": int(gaps.present), "by_day": normalized_mod.missing_by_day(gaps.missing_index, key),
            "segment_list": [{"start": str(r.start), "end": str(r.end), "missing": int(r.missing)}
                             for r in gaps.segments.itertuples()],
            "last": str(last_present) if last_present is not None else None, "stale": stale,
        }  # fmt: skip
    return out


class Recorder:
    """Stands in for the asset context: what add_asset_metadata received, per partition key."""

    def __init__(self) -> None:
        self.md: dict[str, dict] = {}

    def add_asset_metadata(self, metadata, asset_key=None, partition_key=None) -> None:
        self.md.setdefault(partition_key, {}).update(metadata)


def ref_add_partition_metadata(groups, extra=None) -> dict[str, dict]:
    return {key: {**ref_frame_metadata(rows), **(extra(key, rows) if extra else {})} for key, rows in groups.items()}


# ----------------------------------------------------------------------------------------- scenarios
def _feed(asset_class: str, timeframe: str, symbols: list[str], start: date, end: date):
    source = "binance" if asset_class == "crypto" else "twelvedata"
    cfg = parse_config(
        {
            "storage": {"data_dir": "/tmp/unused"},
            "sources": {"twelvedata": {"api_key": "td-test-key-0123456789"}},
            "feeds": [{"name": "f", "source": source, "asset_class": asset_class, "timeframe": timeframe,
                       "symbols": symbols, "start_date": start.isoformat(), "end_date": end.isoformat()}],
        },
        env={},
    )  # fmt: skip
    return cfg.feed("f")


def _run(raw: pd.DataFrame, feed, window: PartitionSlice, now: pd.Timestamp, max_q: float = 0.5):
    """What the normalized asset computes before its metadata: normalize, judge the days, drop rejected."""
    result = normalize(raw, asset_class=feed.asset_class, timeframe=feed.timeframe, now=now)
    rejections = judge_days(
        raw, result, timeframe=feed.timeframe, symbols=window.displays, days=window.dates,
        max_quarantined_fraction=max_q,
    )  # fmt: skip
    return drop_rejected(result.data, rejections), result.quarantine, rejections


def _in_days(raw: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    keep = raw["ts"].isna() | ((raw["ts"] >= pd.Timestamp(start, tz="UTC")) & (raw["ts"] < pd.Timestamp(end, tz="UTC")))
    return raw[keep].reset_index(drop=True)


def btc_two_symbols() -> tuple:
    """BTCUSDT 1h Dec 2020 - Jan 2021 (real gaps) + an 'ETHUSDT' copy with other holes, a rejected day
    (most candles broken), rows with NaT ts, and a window ending before `now`'s last closed candle."""
    btc = _in_days(rawframes.btcusdt_1h(), "2020-12-01", "2021-02-01")
    eth = btc.copy()
    eth["symbol"] = pd.Series("ETHUSDT", index=eth.index, dtype="string")
    eth = eth[~eth["ts"].between(pd.Timestamp("2020-12-10 03:00", tz="UTC"), pd.Timestamp("2020-12-11 02:00", tz="UTC"))]
    eth = eth[eth["ts"].dt.hour != 7]  # a hole every day, one segment each
    bad_day = btc["ts"].dt.strftime("%Y-%m-%d") == "2020-12-15"
    btc.loc[bad_day, ["high", "low"]] = btc.loc[bad_day, ["low", "high"]].to_numpy()  # high < low: quarantined
    btc.loc[[5, 900], "ts"] = pd.NaT  # a raw row without ts: in no raw partition
    raw = pd.concat([btc, eth], ignore_index=True)
    feed = _feed("crypto", "1h", ["BTCUSDT", "ETHUSDT"], date(2020, 12, 1), date(2021, 1, 31))
    window = PartitionSlice(dict(feed.symbol_keys), date(2020, 12, 1), date(2021, 1, 31))
    now = pd.Timestamp("2021-01-30 13:27", tz="UTC")  # the last day and a half are not closed yet
    return raw, feed, window, now


def eurusd_weekends() -> tuple:
    """EUR/USD 1h over Dec 2017 - Jan 2018: weekends, the Dec 25 / Jan 1 closures, real gaps; two rows
    whose datetime does not parse (quarantined with NaT ts, in no partition)."""
    raw = _in_days(rawframes.eurusd_1h(), "2017-12-01", "2018-01-20")
    raw.loc[[10, 400], "datetime"] = "not a time"
    raw.loc[[10, 400], "ts"] = pd.NaT
    feed = _feed("forex", "1h", ["EUR/USD"], date(2017, 12, 1), date(2018, 1, 19))
    window = PartitionSlice(dict(feed.symbol_keys), date(2017, 12, 1), date(2018, 1, 19))
    return raw, feed, window, pd.Timestamp("2026-01-01", tz="UTC")


def goog_sessions() -> tuple:
    """GOOG 1d on the NYSE calendar across a year (and decade) end: holidays, weekends, three sessions
    taken out."""
    raw = _in_days(rawframes.goog_1d(), "2009-12-01", "2010-02-01")
    raw = raw[~raw["datetime"].isin(["2009-12-15", "2010-01-05", "2010-01-06"])].reset_index(drop=True)
    feed = _feed("equity", "1d", ["GOOG"], date(2009, 12, 1), date(2010, 1, 31))
    window = PartitionSlice(dict(feed.symbol_keys), date(2009, 12, 1), date(2010, 1, 31))
    return raw, feed, window, pd.Timestamp("2026-01-01", tz="UTC")


SCENARIOS = {"btc_two_symbols": btc_two_symbols, "eurusd_weekends": eurusd_weekends, "goog_sessions": goog_sessions}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request):
    raw, feed, window, now = SCENARIOS[request.param]()
    data, quarantine, rejections = _run(raw, feed, window, now)
    return request.param, raw, feed, window, now, data, quarantine, rejections


def _assert_groups_equal(new: dict, ref: dict) -> None:
    assert list(new) == list(ref)
    for key in ref:
        pd.testing.assert_frame_equal(new[key], ref[key], check_exact=True, obj=key)


# ----------------------------------------------------------------------------------------------- tests
def test_scenarios_hold_what_they_claim(scenario):
    name, raw, feed, window, now, data, quarantine, rejections = scenario
    figures = ref_partition_figures(feed, window, data=data, raw=raw, quarantine=quarantine, rejections=rejections,
                                    now=now)  # fmt: skip
    assert any(f["missing"] for f in figures.values()), "days with gaps"
    if name == "btc_two_symbols":
        # 2020-12-15: most candles broken; 2021-01-31: after `now`, every row is quarantined (future_ts).
        rejected = sorted(zip(rejections["day"].astype(str), rejections["symbol"], strict=True))
        assert rejected == [("2020-12-15", "BTCUSDT"), ("2021-01-31", "BTCUSDT"), ("2021-01-31", "ETHUSDT")]
        assert raw["ts"].isna().sum() == 2
        assert len(window.keys) == 2
        assert figures["2021-01-31|BTCUSDT"]["completeness"] == 1.0  # not closed yet: nothing expected
        # A hole across midnight is one segment on each day; 07:00 is missing every day.
        assert (figures["2020-12-10|ETHUSDT"]["segments"], figures["2020-12-10|ETHUSDT"]["missing"]) == (1, 21)
        assert (figures["2020-12-11|ETHUSDT"]["segments"], figures["2020-12-11|ETHUSDT"]["missing"]) == (2, 4)
    if name == "eurusd_weekends":
        assert figures["2017-12-02|EURUSD"]["completeness"] == 1.0  # Saturday: closed, complete
        assert figures["2017-12-25|EURUSD"]["missing"] == 0
        assert quarantine["ts"].isna().sum() == 2 and raw["ts"].isna().sum() == 2
    if name == "goog_sessions":
        assert [k for k, f in figures.items() if f["missing"]] == ["2009-12-15|GOOG", "2010-01-05|GOOG", "2010-01-06|GOOG"]
        assert figures["2009-12-25|GOOG"]["completeness"] == 1.0  # a holiday


@pytest.mark.parametrize("which", ["data", "raw", "quarantine"])
def test_partition_groups_equal_the_groupby(scenario, which):
    _, raw, _, window, _, data, quarantine, _ = scenario
    frame = {"data": data, "raw": raw, "quarantine": quarantine}[which]
    _assert_groups_equal(partition_groups(frame, window), ref_partition_groups(frame, window))
    shuffled = frame.sample(frac=1.0, random_state=7)  # out of order: sorted once, order kept within a day
    _assert_groups_equal(partition_groups(shuffled, window), ref_partition_groups(shuffled, window))


@pytest.mark.parametrize("dtype", ["string", "object", "category"])
@pytest.mark.parametrize("few", [4, 0])
def test_partition_groups_with_odd_symbols(scenario, dtype, few, monkeypatch):
    """Rows without a symbol or of a symbol outside the window belong to no partition, whatever the
    column's dtype and however the rows are matched to the window's symbols (compared or factorized)."""
    monkeypatch.setattr(partition_layout_mod, "FEW_SYMBOLS", few)  # where symbol_index reads it
    _, raw, _, window, _, data, _, _ = scenario
    frame = data.copy()
    symbol = frame["symbol"].astype(object)
    symbol.iloc[3::50] = None
    symbol.iloc[7::60] = "OTHER"
    frame["symbol"] = symbol.astype(dtype)
    _assert_groups_equal(partition_groups(frame, window), ref_partition_groups(frame, window))


def test_partition_figures_equal_find_gaps_per_day(scenario):
    _, raw, feed, window, now, data, quarantine, rejections = scenario
    kw = dict(data=data, raw=raw, quarantine=quarantine, rejections=rejections)
    ref = ref_partition_figures(feed, window, now=now, **kw)
    assert list(partition_figures(feed, window, now=now, **kw)) == list(ref)
    assert partition_figures(feed, window, now=now, **kw) == ref
    groups = partition_groups(data, window)
    grid = window_grid(feed, window, groups.layout, now)
    assert partition_figures(feed, window, now=now, groups=groups, grid=grid, **kw) == ref
    for early in (pd.Timestamp(window.start_ts) - pd.Timedelta(days=3), pd.Timestamp(window.start_ts)):
        assert partition_figures(feed, window, now=early, **kw) == ref_partition_figures(feed, window, now=early, **kw)


def test_completeness_equals_find_gaps_over_the_window(scenario):
    _, _, feed, window, now, data, _, _ = scenario
    ref = ref_completeness(feed, window, data, now)
    assert normalized_mod._completeness(feed, window, data, now) == ref
    grid = window_grid(feed, window, partition_layout(data, window), now)
    assert normalized_mod._completeness(feed, window, data, now, grid) == ref
    early = pd.Timestamp(window.start_ts)
    assert normalized_mod._completeness(feed, window, data, early) == ref_completeness(feed, window, data, early)


@pytest.mark.parametrize("which", ["data", "raw", "quarantine"])
def test_partition_frame_metadata_equals_frame_metadata_per_partition(scenario, which):
    _, raw, feed, window, now, data, quarantine, rejections = scenario
    frame = {"data": data, "raw": raw, "quarantine": quarantine}[which]
    for f in (frame, frame.sample(frac=1.0, random_state=3)):
        rec = Recorder()
        extra = (lambda _k, rows: {"n_final": dg.MetadataValue.int(int(rows["is_final"].sum()))}) if which == "data" else None
        add_partition_metadata(rec, dg.AssetKey("x"), partition_groups(f, window), extra)
        ref = ref_add_partition_metadata(ref_partition_groups(f, window), extra)
        assert list(rec.md) == list(ref)
        for key in ref:
            assert list(rec.md[key]) == list(ref[key]), key
            assert rec.md[key] == ref[key], key


def test_slices_metadata_where_string_forms_depend_on_the_whole_column():
    """Naive datetimes print as dates when all of a slice's values are midnights, timedeltas drop the time
    when all are whole days: previews of such frames are formatted slice by slice. Also: a ts column in
    another unit, NaT inside a slice, an all-NaT slice, empty slices."""
    ts = pd.Series(pd.to_datetime(["2024-01-01", "2024-01-01 00:00:00.5", None, "2024-01-02", None, "2024-01-03 01:00"],
                                  format="ISO8601"), dtype="datetime64[us]").dt.tz_localize("UTC")  # fmt: skip
    df = pd.DataFrame({
        "ts": ts,
        "naive": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04 06:00", "2024-01-05", "2024-01-06"],
                                format="ISO8601"),
        "dt": pd.to_timedelta(["1D", "2D", "1D", "1h", "1D", "3D"]),
        "x": [0.1 + 0.2, 1.0, np.nan, 2.5, 1e-20, 3.0],
        "n": pd.array([1, None, 3, 4, 5, 6], dtype="Int64"),
    })  # fmt: skip
    starts, counts = np.array([0, 3, 3, 4, 5, 6]), np.array([3, 0, 1, 1, 1, 0])
    for frame in (df, df[["ts", "x", "n"]], df[["x"]]):
        got = slices_metadata(frame, starts, counts)
        want = [frame_metadata(frame.iloc[s : s + c]) for s, c in zip(starts, counts, strict=True)]
        assert got == want
        assert got == [ref_frame_metadata(frame.iloc[s : s + c]) for s, c in zip(starts, counts, strict=True)]
        order = np.array([5, 2, 0, 1, 4, 3])  # the slices of a reordering of the frame
        got = slices_metadata(frame, starts, counts, order)
        moved = frame.iloc[order]
        assert got == [ref_frame_metadata(moved.iloc[s : s + c]) for s, c in zip(starts, counts, strict=True)]


def test_real_context_gets_the_same_metadata_as_one_call_per_partition(monkeypatch):
    """In a Dagster run the metadata goes to the step in one batch; the materializations carry exactly what
    one add_asset_metadata call per partition gave (merged over earlier calls, over the Output's keys)."""
    feed = _feed("crypto", "1h", ["BTCUSDT", "ETHUSDT"], date(2020, 12, 1), date(2020, 12, 31))
    raw, *_ = btc_two_symbols()
    raw = _in_days(raw, "2020-12-01", "2020-12-04")
    data = normalize(raw, asset_class="crypto", timeframe="1h", now=pd.Timestamp("2026-01-01", tz="UTC")).data
    keys = (dg.AssetKey("a"), dg.AssetKey("b"))

    def materialize(batched: bool) -> dict:
        @dg.multi_asset(outs={k.path[0]: dg.AssetOut(key=k) for k in keys}, partitions_def=feed_partitions(feed))
        def both(context):  # AssetExecutionContext (a string annotation would be refused)
            window = PartitionSlice(dict(feed.symbol_keys), date(2020, 12, 1), date(2020, 12, 3))
            context.add_asset_metadata({"earlier": 1, "rows": 0}, asset_key=keys[0], partition_key="2020-12-02|BTCUSDT")
            groups = partition_groups(data, window)
            extra = lambda k, rows: {"rows": dg.MetadataValue.int(len(rows))}  # noqa: E731
            if batched:
                add_partition_metadata(context, keys[0], groups, extra)
            else:
                for key, md in ref_add_partition_metadata(groups, extra).items():
                    context.add_asset_metadata(md, asset_key=keys[0], partition_key=key)
            add_partition_metadata(context, keys[1], partition_groups(raw.iloc[0:0], window))
            yield dg.Output(None, output_name="a", metadata={"rows": -1, "run": "x"})
            yield dg.Output(None, output_name="b")

        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize(
            [both], instance=instance, resources={"io_manager": dg.mem_io_manager},
            tags={"dagster/asset_partition_range_start": "2020-12-01|BTCUSDT",
                  "dagster/asset_partition_range_end": "2020-12-03|ETHUSDT"},
        )  # fmt: skip
        assert result.success
        return {
            (m.asset_key.path[0], m.partition): dict(m.metadata)
            for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())
        }

    want = materialize(batched=False)
    calls: list[str] = []
    original = dg.AssetExecutionContext.add_asset_metadata

    def counting(self, metadata, asset_key=None, partition_key=None):
        calls.append(partition_key)
        return original(self, metadata, asset_key=asset_key, partition_key=partition_key)

    monkeypatch.setattr(dg.AssetExecutionContext, "add_asset_metadata", counting)
    got = materialize(batched=True)
    assert calls == ["2020-12-02|BTCUSDT"]  # only the asset's own call: the partitions went in one batch
    assert len(want) == 12 and got == want
    assert want[("a", "2020-12-02|BTCUSDT")]["earlier"].value == 1
    assert want[("a", "2020-12-02|BTCUSDT")]["run"].value == "x"
    assert want[("a", "2020-12-02|BTCUSDT")]["rows"].value == 24


@pytest.mark.parametrize(
    ("asset_class", "timeframe", "start", "end"),
    [
        ("crypto", "1m", "2024-02-27", "2024-03-03"),
        ("crypto", "4h", "2024-02-27", "2024-03-03"),
        ("crypto", "1d", "2024-02-27", "2024-03-03"),
        ("forex", "1h", "2023-12-20", "2024-01-04"),  # weekends, Dec 25 / Jan 1
        ("forex", "4h", "2024-03-06", "2024-03-14"),  # the US DST switch moves the weekly open
        ("forex", "1d", "2023-12-20", "2024-01-04"),
        ("equity", "30m", "2019-12-20", "2020-01-06"),  # a decade boundary, holidays, an early close
        ("equity", "1h", "2024-03-06", "2024-03-14"),
        ("equity", "1d", "2019-12-20", "2020-01-06"),
    ],
)
def test_a_days_calendar_grid_is_the_windows_grid_cut_at_midnight(asset_class, timeframe, start, end):
    """What computing every day's figures from one window grid rests on."""
    from data_puller_dagster.transform.calendars import expected_grid

    days = pd.date_range(start, end, freq="D", tz="UTC", inclusive="left")
    per_day = [expected_grid(asset_class, timeframe, d, d + pd.Timedelta(days=1)) for d in days]
    whole = expected_grid(asset_class, timeframe, days[0], days[-1] + pd.Timedelta(days=1))
    assert whole.equals(per_day[0].append(per_day[1:]))
    assert len(whole) > 0
