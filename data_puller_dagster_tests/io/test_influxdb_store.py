"""The InfluxDB store beyond the shared contract, against a real influxd (servers/influxdb.py): line
protocol escaping, batching counted by the server's own statistics, the InfluxQL an analyst runs,
tables without primary key (duplicates, NaT), credentials kept out of errors, and which failures are
retried."""

from __future__ import annotations

import socket
import threading
import time
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from data_puller_dagster.io.destinations.influxdb_store import InfluxDBDestination, InfluxDBOptions
from data_puller_dagster.io.destinations.influxdb_wire import (
    InfluxDBError,
    encode_lines,
    field_values_of,
    tag_values_of,
)
from data_puller_dagster.io.errors import FrameContractError
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io.conftest import candles, sort_rows
from data_puller_dagster_tests.servers.influxdb import running_influxd

TABLE = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
QUARANTINE = TableRef("forex", "quarantine_ohlcv_1h", "quarantine", "forex", "1h", None)
EUR = {"EURUSD": "EUR/USD"}
D1, D3 = date(2024, 1, 1), date(2024, 1, 3)


@pytest.fixture
def dest(influxdb_destination: InfluxDBDestination) -> InfluxDBDestination:
    return influxdb_destination


def destination(server, database: str, **options) -> InfluxDBDestination:
    return InfluxDBDestination(
        url=server.url, database=database, username=server.username, password=server.password, **options
    )


def rows_of(server, db: str, q: str) -> list[list]:
    series = server.query(q, db)["results"][0].get("series", [])
    return [row for s in series for row in s["values"]]


def test_line_protocol_escapes_tags_and_strings_and_omits_missing_fields() -> None:
    where = "test"
    tags = {
        "feed": "forex",
        "source": tag_values_of(pa.array(["twelve data, inc=1", None]), "source", where),
        "symbol": tag_values_of(pa.array(["EUR/USD", "EUR/USD"]), "symbol", where),
    }
    fields = {
        "close": field_values_of(pa.chunked_array([[1.1, None]], pa.float64()), "float", "close", where),
        "trades": field_values_of(pa.chunked_array([[7, None]], pa.int64()), "int", "trades", where),
        "note": field_values_of(pa.chunked_array([['say "hi" \\ bye', None]]), "str", "note", where),
        "ok": field_values_of(pa.chunked_array([[True, None]], pa.bool_()), "bool", "ok", where),
    }
    lines = encode_lines("m", tags, fields, np.array([1704067200000000000, 5]))
    assert lines.to_pylist() == [
        'm,feed=forex,source=twelve\\ data\\,\\ inc\\=1,symbol=EUR/USD close=1.1,trades=7i,'
        'note="say \\"hi\\" \\\\ bye",ok=t 1704067200000000000\n',
        "m,feed=forex,symbol=EUR/USD dp_empty=t 5\n",  # no tag for the missing source, no null fields
    ]
    x = np.array([0.1, 1 / 3, 1e-300, 123456789.12345679, 5e-324, 1e16])
    text = field_values_of(pa.chunked_array([x]), "float", "f", where).to_pylist()
    assert [float(t) for t in text] == x.tolist() and "1e+16" in text  # shortest round-trip, no i suffix
    for bad in (["a\nb"], [""], ["back\\slash"]):
        with pytest.raises(FrameContractError, match="line protocol cannot carry"):
            tag_values_of(pa.array(bad), "source", where)


def test_odd_tag_and_string_values_round_trip_and_are_stored_unescaped(dest, influxdb_server) -> None:
    df = candles("EUR/USD", D1, 2)
    n = len(df)
    df["source"] = pd.array(["twelve data, inc=1"] * n, dtype="string")
    df["note"] = pd.array(['quote " back\\slash\nnew line, = é'] * (n - 1) + [None], dtype="string")
    part = PartitionSlice(EUR, D1, date(2024, 1, 2))
    dest.write(TABLE, df, part)
    pd.testing.assert_frame_equal(sort_rows(dest.read(TABLE, part)), sort_rows(df), check_exact=True)
    tags = rows_of(influxdb_server, dest.database, 'SHOW TAG VALUES FROM "normalized_ohlcv_1h" WITH KEY IN ("source", "symbol")')
    assert sorted(v for _, v in tags) == ["EUR/USD", "twelve data, inc=1"]


def test_batches_are_counted_by_the_server(influxdb_server, influxdb_database) -> None:
    dest = destination(influxdb_server, influxdb_database, batch_size=7)
    df = candles("EUR/USD", D1, 3)
    part = PartitionSlice(EUR, D1, D3)
    before = influxdb_server.stats()
    md = dest.write(TABLE, df, part)
    after = influxdb_server.stats()
    batches = -(-len(df) // 7)
    assert md["write_requests"] == batches and batches > 5
    # Every data batch, plus one commit request (3 partition records), the table's dtype record and
    # the instance's one-time DELETE check (3 writes of 3 points).
    assert after["writeReq"] - before["writeReq"] == batches + 2 + 3
    assert after["pointsWrittenOK"] - before["pointsWrittenOK"] == len(df) + 3 + 1 + 9
    before = influxdb_server.stats()
    assert dest.write(TABLE, df, part)["write_requests"] == batches  # again: no dtype record, no check
    assert influxdb_server.stats()["writeReq"] - before["writeReq"] == batches + 1
    pd.testing.assert_frame_equal(sort_rows(dest.read(TABLE, part)), sort_rows(df), check_exact=True)


def test_an_analysts_influxql_sees_exactly_the_stored_candles(dest, influxdb_server) -> None:
    part = PartitionSlice({**EUR, "GBPUSD": "GBP/USD"}, D1, D3)
    df = pd.concat([candles("EUR/USD", D1, 3), candles("GBP/USD", D1, 3, seed_offset=3)], ignore_index=True)
    dest.write(TABLE, df, part)
    day2 = PartitionSlice(EUR, date(2024, 1, 2), date(2024, 1, 2))
    new = candles("EUR/USD", day2.start, 1, seed_offset=30)
    dest.write(TABLE, new, day2)  # replace one day: the old version's points must be gone

    q = (
        "SELECT close, volume FROM normalized_ohlcv_1h WHERE symbol = 'EUR/USD' AND feed = 'forex' "
        "AND time >= '2024-01-02T00:00:00Z' AND time < '2024-01-03T00:00:00Z'"
    )
    got = rows_of(influxdb_server, dest.database, q)
    assert [r[1] for r in got] == new["close"].tolist()  # exact floats, in time order, no stale rows
    counts = rows_of(influxdb_server, dest.database,
                     "SELECT count(close) FROM normalized_ohlcv_1h WHERE time >= '2024-01-01T00:00:00Z' GROUP BY symbol")  # fmt: skip
    old_eur = df[(df["symbol"] == "EUR/USD") & (df["ts"].dt.date != day2.start)]
    assert sorted(r[1] for r in counts) == sorted([len(old_eur) + len(new), int((df["symbol"] == "GBP/USD").sum())])
    daily = rows_of(influxdb_server, dest.database,
                    "SELECT max(high) FROM normalized_ohlcv_1h WHERE symbol = 'GBP/USD' AND "
                    "time >= '2024-01-01T00:00:00Z' AND time < '2024-01-04T00:00:00Z' GROUP BY time(1d) fill(none)")  # fmt: skip
    gbp = df[df["symbol"] == "GBP/USD"]
    assert [r[1] for r in daily] == gbp.groupby(gbp["ts"].dt.date)["high"].max().tolist()


def test_tables_without_primary_key_keep_duplicates_nat_rows_and_nulls(dest, influxdb_server) -> None:
    """Quarantine: repeated (symbol, ts) rows would merge into one InfluxDB point without `dp_n`, and
    rows without ts need a time; every dtype with nulls comes back as written."""
    base = candles("EUR/USD", D1, 1).head(4)
    df = pd.concat([base, base.iloc[[1, 1]].assign(close=[9.5, 9.75])], ignore_index=True)
    df.loc[[2, 3], "ts"] = pd.NaT
    df["rule"] = pd.array(["high_below_low", None, "unparseable_ts", "unparseable_ts", "x", "y"], dtype="string")
    df["raw_note"] = pd.array([None] * 6, dtype="string[pyarrow]")
    df["flag"] = pd.array([True, None, False, None, True, True], dtype="boolean")
    df["seen_local"] = pd.to_datetime(["2024-01-01 10:00:00.000001", None, None, "2024-01-01 00:00:00.000000", None, None])
    df["big"] = pd.array([2**62 + 1, None, -(2**63) + 1, 0, 1, 2], dtype="Int64")
    part = PartitionSlice(EUR, D1, D1)
    dest.write(QUARANTINE, df, part)
    got = dest.read(QUARANTINE, part)
    pd.testing.assert_frame_equal(sort_rows(got), sort_rows(df), check_exact=True)
    assert got["ts"].isna().sum() == 2 and list(got.dtypes.astype(str)) == list(df.dtypes.astype(str))
    dest.write(QUARANTINE, df.head(1), part)  # replaced by one row: the duplicates and NaT rows go too
    pd.testing.assert_frame_equal(dest.read(QUARANTINE, part), df.head(1), check_exact=True)
    assert len(rows_of(influxdb_server, dest.database, 'SELECT "open" FROM "quarantine_ohlcv_1h"')) == 1


def test_microsecond_precision_round_trips(influxdb_server, influxdb_database) -> None:
    dest = destination(influxdb_server, influxdb_database, precision="u")
    df = candles("EUR/USD", D1, 2)
    part = PartitionSlice(EUR, D1, date(2024, 1, 2))
    dest.write(TABLE, df, part)
    pd.testing.assert_frame_equal(sort_rows(dest.read(TABLE, part)), sort_rows(df), check_exact=True)


def test_bad_frames_are_refused_before_anything_is_written(dest) -> None:
    df = candles("EUR/USD", D1, 1)
    part = PartitionSlice(EUR, D1, D1)
    with pytest.raises(FrameContractError, match=r"\['dp_slot', 'feed'\] are reserved"):
        dest.write(TABLE, df.assign(feed="x", dp_slot="a"), part)
    with pytest.raises(FrameContractError, match="column 'close' holds \\+-inf"):
        dest.write(TABLE, df.assign(close=np.inf), part)
    with pytest.raises(FrameContractError, match="column 'source' is an InfluxDB tag"):
        dest.write(TABLE, df.assign(source=pd.array(["a\nb"] * len(df), dtype="string")), part)
    assert dest.read(TABLE, part).empty


def test_credentials_never_appear_in_errors_reprs_or_metadata(influxdb_server, influxdb_database) -> None:
    secret = "hunter2-" + "q" * 8
    wrong = InfluxDBDestination(url=influxdb_server.url, database=influxdb_database,
                                username=influxdb_server.username, password=secret, retries=3)  # fmt: skip
    df = candles("EUR/USD", D1, 1)
    part = PartitionSlice(EUR, D1, D1)
    with pytest.raises(InfluxDBError, match="HTTP 401.*check the username and password") as e:
        wrong.write(TABLE, df, part)
    assert secret not in str(e.value) and secret not in repr(wrong)

    port = _free_port()  # nothing listens there
    down = InfluxDBDestination(url=f"http://127.0.0.1:{port}", database="x", username="someone",
                               password=secret, retries=1, retry_backoff_seconds=0)  # fmt: skip
    with pytest.raises(InfluxDBError, match=r"cannot reach InfluxDB.*after 2 attempt") as e:
        down.read(TABLE, part)
    assert secret not in str(e.value)

    ok = destination(influxdb_server, influxdb_database)
    md = ok.write(TABLE, df, part)
    assert influxdb_server.password not in str(md) and influxdb_server.password not in repr(ok)
    with pytest.raises(InfluxDBError, match="field type conflict") as e:  # a 400 names the field, not the user
        ok._http.write("writing", b'normalized_ohlcv_1h,feed=forex,symbol=EUR/USD close="text" 1704067200000000000\n', "ns")
    assert influxdb_server.password not in str(e.value)

    with pytest.raises(ValidationError) as v:
        InfluxDBOptions(url=f"http://admin:{secret}@127.0.0.1:8086", database="x")
    assert "must not hold credentials" in str(v.value) and secret not in str(v.value)
    assert secret not in repr(InfluxDBOptions(password=secret)) and secret not in str(InfluxDBOptions(password=secret))


def test_4xx_answers_are_not_retried(influxdb_server, influxdb_database) -> None:
    wrong = InfluxDBDestination(url=influxdb_server.url, database=influxdb_database, username="nobody",
                                password="wrong-password", retries=3, retry_backoff_seconds=2)  # fmt: skip
    before = influxdb_server.stats()["authFail"]
    started = time.monotonic()
    with pytest.raises(InfluxDBError, match="HTTP 401"):
        wrong.write(TABLE, candles("EUR/USD", D1, 1), PartitionSlice(EUR, D1, D1))
    assert time.monotonic() - started < 2  # no backoff was slept
    assert influxdb_server.stats()["authFail"] - before == 1  # the server saw exactly one attempt


def test_connection_errors_are_retried_then_reported() -> None:
    """A real TCP peer that accepts and drops every connection: each attempt reaches it."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        server.settimeout(5)
        while len(accepted) < 3:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    dest = InfluxDBDestination(url=f"http://127.0.0.1:{server.getsockname()[1]}", database="x",
                               retries=2, retry_backoff_seconds=0.01)  # fmt: skip
    try:
        with pytest.raises(InfluxDBError, match=r"cannot reach InfluxDB.*after 3 attempt"):
            dest.read(TABLE, PartitionSlice(EUR, D1, D1))
    finally:
        thread.join(timeout=5)
        server.close()
    assert len(accepted) == 3


def test_a_server_whose_delete_loses_rewritten_series_is_refused_before_writing() -> None:
    """InfluxDB 1.6's default inmem index drops a deleted-then-rewritten series on the next DELETE
    (even a plain "DELETE symbol X's day, write it again" loses data there): the store checks the
    server once and refuses it, naming the fix, with nothing of the table written."""
    with running_influxd(index="inmem") as server:
        server.query('CREATE DATABASE "inmem"')
        dest = destination(server, "inmem")
        part = PartitionSlice(EUR, D1, D1)
        with pytest.raises(InfluxDBError, match=r'loses points on DELETE.*index-version = "tsi1".*Nothing was written'):
            dest.write(TABLE, candles("EUR/USD", D1, 1), part)
        assert rows_of(server, "inmem", "SHOW MEASUREMENTS") == []


def test_a_user_with_database_privileges_only_writes_and_reads(influxdb_server, influxdb_database) -> None:
    """No admin needed: DELETE, writes and reads take the database's ALL privilege (create_database off)."""
    influxdb_server.query(f"CREATE USER analyst_{influxdb_database} WITH PASSWORD 'not-an-admin'")
    influxdb_server.query(f'GRANT ALL ON "{influxdb_database}" TO "analyst_{influxdb_database}"')
    dest = InfluxDBDestination(url=influxdb_server.url, database=influxdb_database, create_database=False,
                               username=f"analyst_{influxdb_database}", password="not-an-admin")  # fmt: skip
    df = candles("EUR/USD", D1, 2)
    part = PartitionSlice(EUR, D1, date(2024, 1, 2))
    dest.write(TABLE, df, part)
    dest.write(TABLE, df, part)  # a replace: DELETEs included
    pd.testing.assert_frame_equal(sort_rows(dest.read(TABLE, part)), sort_rows(df), check_exact=True)
    influxdb_server.query(f'DROP USER "analyst_{influxdb_database}"')


def test_options_validate_names_and_build_the_destination() -> None:
    with pytest.raises(ValidationError, match="not a valid influxdb database name"):
        InfluxDBOptions(database="Bad-Name")
    with pytest.raises(ValidationError, match="http"):
        InfluxDBOptions(url="ftp://host")
    with pytest.raises(ValidationError, match="extra"):
        InfluxDBOptions(bucket="x")
    dest = InfluxDBDestination.from_options(InfluxDBOptions(url="http://127.0.0.1:8086/", batch_size=100), None)
    assert (dest.url, dest.database, dest.batch_size, dest.kind) == ("http://127.0.0.1:8086", "data_puller", 100, "store")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
