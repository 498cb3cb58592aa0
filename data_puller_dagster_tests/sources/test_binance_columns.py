"""Binance raw frames built straight from columns: identical to the row-object parser, in either text storage.

The reference below is the parser the adapter used before (every response decoded into a frame of Python
objects, then converted column by column). The column-wise parser must give the same frame for the same
wire bytes - values and dtypes - and the same errors for malformed responses; the archive's Arrow CSV
reader must agree with pandas' reader the same way.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from data_puller_dagster.sources import BINANCE_RAW_DTYPES, MalformedResponseError, raw_empty
from data_puller_dagster.sources import binance_archive as archive
from data_puller_dagster.sources.base import KLINE_FIELDS
from data_puller_dagster.sources.binance_klines import (
    columns_frame,
    kline_columns,
    klines_frame,
    parse_klines_body,
)
from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster.transform.schemas import validate_raw
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines, wire_strings
from data_puller_dagster_tests.sources.conftest import binance, utc

FETCHED = pd.Timestamp("2024-06-01 12:00:00.123456789", tz="UTC")
INTS = ("open_time", "close_time", "trades")
TEXT_COLUMNS = [c for c in BINANCE_RAW_DTYPES if c not in (*INTS, "ts", "fetched_at")]
DEFAULT_TEXT = BINANCE_RAW_DTYPES["open"]  # base.BINANCE_TEXT_DTYPE


@pytest.fixture(params=["string", "string[pyarrow]"])
def text_storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the raw text columns in Python storage and in Arrow storage."""
    for c in TEXT_COLUMNS:
        monkeypatch.setitem(BINANCE_RAW_DTYPES, c, request.param)
    return request.param


def wire_body(periods: int = 40, start: str = "2024-01-01") -> list[list[Any]]:
    """A decoded `/api/v3/klines` body exactly as FakeBinance serializes it."""
    rows = wire_strings(generate_klines(start, periods)).to_numpy(dtype=object).tolist()
    return orjson.loads(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY))


def reference_frame(body: list[list[Any]], fetched_at: pd.Timestamp) -> pd.DataFrame:
    """The raw frame of a well-formed body as the row-object parser built it (Python string storage)."""
    rows = pd.DataFrame(body, dtype=object)
    rows.columns = KLINE_FIELDS
    out = pd.DataFrame(index=pd.RangeIndex(len(rows)))
    for c in KLINE_FIELDS:
        if c in INTS:
            v = pd.to_numeric(rows[c], errors="raise").astype("int64").to_numpy()
            out[c] = np.where(v >= 10**14, v // 1000, v) if c != "trades" else v
        else:
            out[c] = rows[c].astype("string").array
    out["ts"] = pd.to_datetime(out["open_time"].to_numpy(), unit="ms", utc=True)
    out["symbol"] = pd.array(["BTCUSDT"] * len(out), dtype="string")
    out["timeframe"] = pd.array(["1m"] * len(out), dtype="string")
    out["source"] = pd.array(["binance"] * len(out), dtype="string")
    out["fetched_at"] = pd.Series(fetched_at, index=out.index, dtype="datetime64[ns, UTC]")
    return out


def assert_same_frame(got: pd.DataFrame, want: pd.DataFrame, storage: str = DEFAULT_TEXT) -> None:
    """Same columns, values and dtypes; text columns in `storage` (want is in Python storage)."""
    assert list(got.columns) == list(want.columns) == list(BINANCE_RAW_DTYPES)
    assert {c: str(t) for c, t in got.dtypes.items()} == {c: str(t) for c, t in want.dtypes.items()}
    for c in TEXT_COLUMNS:
        assert got[c].dtype == pd.api.types.pandas_dtype(storage), c
    as_python = got.astype({c: pd.StringDtype("python") for c in TEXT_COLUMNS})
    pd.testing.assert_frame_equal(as_python, want, check_exact=True)


def _set(body: list[list[Any]], row: int, field: str, value: Any) -> list[list[Any]]:
    out = copy.deepcopy(body)
    out[row][KLINE_FIELDS.index(field)] = value
    return out


def test_wire_body_parses_to_the_reference_frame(text_storage: str) -> None:
    body = wire_body()
    assert_same_frame(parse_klines_body(body, "BTCUSDT", "1m", FETCHED, "t"), reference_frame(body, FETCHED), text_storage)


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(lambda b: _set(b, 3, "trades", 5.0), id="integral float for an integer"),
        pytest.param(lambda b: _set(b, 3, "open_time", str(b[3][0])), id="integer sent as text"),
        pytest.param(lambda b: _set(b, 3, "ignore", 0), id="number where text is sent"),
        pytest.param(lambda b: _set(b, 3, "open", 1.5), id="float where text is sent"),
        pytest.param(lambda b: _set(b, 3, "ignore", 'é",\\'), id="non-ASCII text"),
        pytest.param(lambda b: [[r[0] * 1000, *r[1:6], r[6] * 1000 + 999, *r[7:]] for r in b], id="microsecond epochs"),
    ],
)
def test_unusual_but_valid_bodies_parse_as_before(odd: Any, text_storage: str) -> None:
    body = odd(wire_body(10))
    got = parse_klines_body(copy.deepcopy(body), "BTCUSDT", "1m", FETCHED, "t")
    assert_same_frame(got, reference_frame(body, FETCHED), text_storage)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"code": -1}, r"^t: expected a JSON array of klines, got dict$"),
        (None, r"^t: expected a JSON array of klines, got NoneType$"),
        (_set(wire_body(5), 2, "close", None), r"^t: 1 kline row\(s\) do not have the 12 non-null fields"),
        ([r[:11] if i == 1 else r for i, r in enumerate(wire_body(5))], r"^t: 1 kline row\(s\) do not have the 12"),
        ([[*r, "x"] for r in wire_body(5)], r"^t: 5 kline row\(s\) do not have the 12 non-null fields"),
        ([*wire_body(2), 7], r"^t: kline rows are not arrays \(object of type 'int' has no len\(\)\)$"),
        ([[], []], r"^t: 2 kline row\(s\) do not have the 12 non-null fields"),
        (_set(wire_body(5), 2, "trades", 5.5), r"^t: 1 row\(s\) have a non-integer trades \(first: 5\.5\); the response"),
        (_set(wire_body(5), 2, "close_time", "abc"), r"^t: 1 row\(s\) have a non-integer close_time \(first: 'abc'\)"),
    ],
)
def test_malformed_bodies_fail_with_the_same_messages(body: Any, message: str, text_storage: str) -> None:
    with pytest.raises(MalformedResponseError, match=message):
        parse_klines_body(body, "BTCUSDT", "1m", FETCHED, "t")


def test_empty_body_and_empty_pages_give_the_typed_empty_frame(text_storage: str) -> None:
    empty = parse_klines_body([], "BTCUSDT", "1m", FETCHED, "t")
    assert empty.empty and {c: str(t) for c, t in empty.dtypes.items()} == dict(raw_empty("binance").dtypes.astype(str))
    for c in TEXT_COLUMNS:
        assert empty[c].dtype == raw_empty("binance")[c].dtype == pd.api.types.pandas_dtype(text_storage)


def test_pages_are_assembled_once_in_order_with_their_own_fetch_times(text_storage: str) -> None:
    bodies = [wire_body(30, "2024-01-01"), [], wire_body(20, "2024-01-02")]
    fetched = [FETCHED, FETCHED + pd.Timedelta(seconds=1), FETCHED + pd.Timedelta(seconds=2)]
    got = columns_frame([(kline_columns(b, "t"), f) for b, f in zip(bodies, fetched, strict=True)], "BTCUSDT", "1m", "binance")
    want = pd.concat([reference_frame(b, f) for b, f in zip(bodies, fetched, strict=True) if b], ignore_index=True)
    assert_same_frame(got, want, text_storage)
    assert got["fetched_at"].value_counts().sort_index().tolist() == [30, 20]


def test_frame_path_matches_the_column_path(text_storage: str) -> None:
    """klines_frame (archive, benchmarks: any frame of 12 columns) builds the same frame as the wire path."""
    body = wire_body(25)
    via_frame = klines_frame(pd.DataFrame(copy.deepcopy(body), dtype=object), "BTCUSDT", "1m", "binance", FETCHED, "t")
    assert_same_frame(via_frame, reference_frame(body, FETCHED), text_storage)


def test_rest_fetch_in_arrow_storage_validates_and_normalizes_like_python_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    candles = generate_klines("2024-03-01", 2 * 1440)
    frames = {}
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        for storage in ("string", "string[pyarrow]"):
            for c in TEXT_COLUMNS:
                monkeypatch.setitem(BINANCE_RAW_DTYPES, c, storage)
            a = binance(fb.url, max_concurrency=4)
            try:
                frames[storage] = a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-03"))
            finally:
                a.close()
    py, arrow = frames["string"], frames["string[pyarrow]"]
    assert arrow["open"].dtype == pd.StringDtype("pyarrow") and py["open"].dtype == pd.StringDtype("python")
    assert validate_raw(py).ok and validate_raw(arrow).ok
    pd.testing.assert_frame_equal(
        arrow.astype({c: "string" for c in TEXT_COLUMNS}).drop(columns="fetched_at"), py.drop(columns="fetched_at")
    )
    now = utc("2024-03-04")
    a, b = (normalize(f.assign(fetched_at=now), asset_class="crypto", timeframe="1m", now=now) for f in (py, arrow))
    pd.testing.assert_frame_equal(a.data, b.data, check_exact=True)
    assert a.report == b.report
    assert arrow.memory_usage(deep=True).sum() < py.memory_usage(deep=True).sum() / 2


# ------------------------------------------------------------------------------------------- archive
def _csv(frame: pd.DataFrame, header: bool = False) -> str:
    return frame.to_csv(header=header, index=False, lineterminator="\n")


_WIRE = wire_strings(generate_klines("2024-01-01", 30))
_PLAIN = _csv(_WIRE)
_LINES = _PLAIN.splitlines()
_MICROS = _WIRE.assign(open_time=_WIRE["open_time"] * 1000, close_time=_WIRE["close_time"] * 1000 + 999)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_PLAIN, id="plain"),
        pytest.param(_csv(_WIRE, header=True), id="header row"),
        pytest.param(_LINES[0].replace("1704067200000", "open_time") + "\n", id="header only"),
        pytest.param(_csv(_MICROS), id="microsecond epochs"),
        pytest.param(_PLAIN.replace(",0\n", ",\n", 1), id="empty text field"),
        pytest.param(_PLAIN.replace("\n", "\n\n", 3), id="blank lines"),
        pytest.param(_PLAIN.rstrip("\n"), id="no final newline"),
        pytest.param(_PLAIN.replace(",", ", ", 2), id="spaces in text"),
        pytest.param(_PLAIN.replace(",0\n", ",é\n", 1), id="non-ASCII text"),
        pytest.param("0" + _PLAIN, id="leading zero in an epoch"),
        pytest.param(_PLAIN.replace("\n", "\r\n"), id="CRLF (pandas reads it)"),
        pytest.param("\ufeff" + _PLAIN, id="byte-order mark (pandas reads it)"),
        pytest.param(_PLAIN.replace("30001.89000000", '"30001.89000000"'), id="quoted field (pandas reads it)"),
        pytest.param("\n".join([*_LINES[:3], ",".join(_LINES[3].split(",")[:11]), *_LINES[4:]]), id="short line"),
        pytest.param(_PLAIN.replace(",0,", ",-1,", 1), id="negative integer"),
        pytest.param(_PLAIN.replace("1704067200000", "1704067200000.0", 1), id="float epoch on the first line"),
    ],
)
def test_archive_csv_reads_like_pandas(data: str, monkeypatch: pytest.MonkeyPatch, text_storage: str) -> None:
    raw = data.encode()
    got = archive.parse_archive_csv(raw, "BTCUSDT", "1m", FETCHED, "t")
    monkeypatch.setattr(archive, "_csv_columns", lambda _data: None)  # the pandas reader alone
    want = archive.parse_archive_csv(raw, "BTCUSDT", "1m", FETCHED, "t")
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert all(got[c].dtype == pd.api.types.pandas_dtype(text_storage) for c in TEXT_COLUMNS)
    assert (got["source"] == "binance_archive").all()


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ("\n".join(",".join(line.split(",")[:11]) for line in _LINES), MalformedResponseError, "CSV has 11 columns"),
        (_PLAIN.replace(_LINES[3], _LINES[3] + ",x"), pd.errors.ParserError, "Expected 12 fields in line 4, saw 13"),
        ("", pd.errors.EmptyDataError, "No columns to parse"),
        ("\n\n", pd.errors.EmptyDataError, "No columns to parse"),
    ],
)
def test_archive_csv_errors_are_pandas_errors_as_before(data: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        archive.parse_archive_csv(data.encode(), "BTCUSDT", "1m", FETCHED, "t")


def test_archive_csv_frame_equals_the_row_object_reference() -> None:
    rows = pd.read_csv(io.StringIO(_PLAIN), header=None, dtype=str)
    got = archive.parse_archive_csv(_PLAIN.encode(), "BTCUSDT", "1m", FETCHED, "t")
    body = [[int(v) if i in (0, 6, 8) else v for i, v in enumerate(r)] for r in rows.to_numpy().tolist()]
    assert_same_frame(got, reference_frame(body, FETCHED).assign(source=pd.array(["binance_archive"] * 30, dtype="string")))
