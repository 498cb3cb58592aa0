"""The `data-puller` command as a subprocess against the local provider stand-ins (real HTTP), its
output files read back with DuckDB: pull (Parquet / DuckDB / CSV, idempotent, progress on a terminal,
failure in one line), validate-config, gaps on a store with a real gap, stream, --help."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

START_MS = 1704067200000  # 2024-01-01 00:00 UTC
MIN = 60_000
HOLE = (START_MS + (1440 + 600) * MIN, START_MS + (1440 + 607) * MIN)  # 2024-01-02 10:00 .. 10:07 missing


@pytest.fixture(scope="module")
def series():
    s = generate_klines("2024-01-01", 3 * 1440, "1m", seed=9)
    return s[(s["open_time"] < HOLE[0]) | (s["open_time"] >= HOLE[1])].reset_index(drop=True)


@pytest.fixture(scope="module")
def fake(series):
    with FakeBinance({("BTCUSDT", "1m"): series, ("ETHUSDT", "1m"): series}) as fb:
        yield fb


def env_for(tmp_path: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATA_PULLER_", "BINANCE_", "TWELVEDATA_"))}
    (tmp_path / "archive").mkdir(exist_ok=True)
    env.update(BINANCE_BASE_URL=url, BINANCE_ARCHIVE_URL=(tmp_path / "archive").as_uri(),
               DATA_PULLER_HOME=str(tmp_path / "home"))  # fmt: skip
    return env


def cli(tmp_path: Path, env: dict[str, str], *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_puller_dagster.cli", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, **kw,
    )  # fmt: skip


def one(sql: str, *params: object, database: str = ":memory:") -> tuple:
    with duckdb.connect(database, read_only=database != ":memory:") as con:
        return con.execute(sql, [str(p) for p in params]).fetchone()


def parquet_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def test_pull_writes_the_pipeline_layout_and_is_idempotent(tmp_path, fake, series):
    env = env_for(tmp_path, fake.url)
    args = ("pull", "BTCUSDT", "ETHUSDT", "--timeframe", "1m", "--start", "2024-01-01", "--end", "2024-01-03",
            "--out", "out")  # fmt: skip
    first = cli(tmp_path, env, *args)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("BTCUSDT 1m 2024-01-01..2024-01-03: 4313 candle(s) stored")
    assert "7 missing" in lines[0] and "out/parquet/crypto/normalized_ohlcv_1m" in lines[0]
    assert first.stderr == ""  # not a terminal: no progress bar

    out = tmp_path / "out" / "parquet"
    files = parquet_files(out)
    assert "crypto/normalized_ohlcv_1m/symbol_key=BTCUSDT/date=2024-01-02/part-0.parquet" in files
    assert {f.split("/")[1] for f in files} == {"raw_ohlcv_1m", "normalized_ohlcv_1m"}  # nothing quarantined
    glob = out / "crypto/normalized_ohlcv_1m/**/*.parquet"
    q = ("SELECT symbol, count(*), sum(close), min(ts), max(ts), count(DISTINCT date) "
         "FROM read_parquet(?, hive_partitioning=true) WHERE symbol_key = 'BTCUSDT' GROUP BY symbol")  # fmt: skip
    symbol, n, total, lo, hi, days = one(q, glob)
    assert (symbol, n, days) == ("BTCUSDT", len(series), 3)
    assert total == pytest.approx(series["close"].sum(), rel=1e-12)
    assert lo.isoformat().startswith("2024-01-01T00:00") and hi.isoformat().startswith("2024-01-03T23:59")
    rows = "SELECT * EXCLUDE (fetched_at) FROM read_parquet(?, hive_partitioning=true) ORDER BY symbol, ts"
    with duckdb.connect() as con:
        before = con.execute(rows, [str(glob)]).fetchall()

    again = cli(tmp_path, env, *args)  # the same command again: the same files, the same rows
    assert again.returncode == 0, again.stderr
    assert parquet_files(out) == files
    with duckdb.connect() as con:
        assert con.execute(rows, [str(glob)]).fetchall() == before


@pytest.mark.parametrize("fmt", ["duckdb", "csv"])
def test_pull_to_duckdb_and_csv(tmp_path, fake, series, fmt):
    env = env_for(tmp_path, fake.url)
    res = cli(tmp_path, env, "pull", "BTCUSDT", "--start", "2024-01-02", "--end", "2024-01-02", "--out", "o",
              "--format", fmt, "--quiet")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # --quiet
    day = series[(series["open_time"] >= START_MS + 1440 * MIN) & (series["open_time"] < START_MS + 2880 * MIN)]
    if fmt == "duckdb":
        got = one("SELECT count(*), sum(close) FROM crypto.normalized_ohlcv_1m", database=str(tmp_path / "o/warehouse.duckdb"))
    else:
        csvs = sorted((tmp_path / "o/csv").rglob("*.csv"))
        assert csvs and all("normalized_ohlcv_1m" in str(p) or "ohlcv_1m" in str(p) for p in csvs)
        norm = [p for p in csvs if "normalized_ohlcv_1m" in str(p)]
        assert len(norm) == 1 and norm[0].name == "2024-01-02.csv"
        got = one("SELECT count(*), sum(close) FROM read_csv(?)", norm[0])
    assert got[0] == len(day) and got[1] == pytest.approx(day["close"].sum(), rel=1e-12)


def test_progress_bar_on_a_terminal(tmp_path, fake):
    env = env_for(tmp_path, fake.url)
    master, slave = pty.openpty()  # stderr is a terminal (of unknown width, as under some CI runners)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_puller_dagster.cli", "pull", "BTCUSDT", "--start", "2024-01-01",
         "--end", "2024-01-03", "--out", "o"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=slave, text=True,
    )  # fmt: skip
    os.close(slave)
    out, _ = proc.communicate(timeout=120)
    reader.join(10)
    os.close(master)
    bar = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0 and out.startswith("BTCUSDT 1m")
    assert "BTCUSDT 1m" in bar and "3/3" in bar and "day" in bar, bar
    assert "pages=5" in bar and "rate-limit wait=0s" in bar, bar


def test_an_unreachable_host_fails_in_one_line(tmp_path):
    env = env_for(tmp_path, "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    res = cli(tmp_path, env, "pull", "BTCUSDT", "--start", "2024-01-01", "--end", "2024-01-02", "--out", "o")
    assert time.monotonic() - started < 10
    assert res.returncode == 1 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert "cannot reach 127.0.0.1:9: connection refused" in res.stderr and "BINANCE_BASE_URL" in res.stderr
    assert not list((tmp_path / "o").rglob("*.parquet")) if (tmp_path / "o").exists() else True


def test_an_invalid_symbol_is_reported_and_the_others_pulled(tmp_path, fake):
    res = cli(tmp_path, env_for(tmp_path, fake.url), "pull", "NOPEUSDT", "BTCUSDT", "--start", "2024-01-01",
              "--end", "2024-01-01", "--out", "o")  # fmt: skip
    assert res.returncode == 1 and res.stdout.startswith("BTCUSDT 1m 2024-01-01: 1440 candle(s) stored")
    assert "NOPEUSDT" in res.stderr and "does not exist on Binance spot" in res.stderr


CONFIG = """\
version: 1
storage: {data_dir: ./store}
sources:
  binance: {base_url: "${BINANCE_BASE_URL}", archive_url: "${BINANCE_ARCHIVE_URL}", max_retries: 1}
feeds:
  - {name: crypto, source: binance, asset_class: crypto, timeframe: 1m, symbols: [BTCUSDT],
     start_date: 2024-01-01, end_date: 2024-01-03}
"""


def test_validate_config(tmp_path, fake):
    env = env_for(tmp_path, fake.url)
    (tmp_path / "good.yaml").write_text(CONFIG)
    good = cli(tmp_path, env, "validate-config", "good.yaml")
    assert good.returncode == 0 and good.stderr == ""
    assert good.stdout.count("\n") == 1 and "good.yaml: valid: 1 feed(s) (crypto: binance crypto 1m x 1" in good.stdout
    (tmp_path / "bad.yaml").write_text(CONFIG.replace("timeframe: 1m", "timeframe: 7m").replace("storage:", "storge:"))
    bad = cli(tmp_path, env, "validate-config", "bad.yaml")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "invalid bad.yaml (2 problem(s))" in bad.stderr
    assert "feeds[0].timeframe: '7m' is not a supported timeframe" in bad.stderr
    assert "storge: unknown key" in bad.stderr
    missing = cli(tmp_path, env, "validate-config", "nope.yaml")
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_gaps_reports_what_is_stored(tmp_path, fake):
    env = env_for(tmp_path, fake.url)
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    pulled = cli(tmp_path, env, "pull", "BTCUSDT", "--config", "cfg.yaml", "--start", "2024-01-01", "--end", "2024-01-03")
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "store/parquet/crypto/normalized_ohlcv_1m").is_dir()  # the config's data_dir and routes
    table = cli(tmp_path, env, "gaps", "crypto", "--config", "cfg.yaml")
    assert table.returncode == 0, table.stderr
    assert "BTCUSDT" in table.stdout and "4320" in table.stdout and "4313" in table.stdout
    [segment] = [line.split() for line in table.stdout.splitlines() if "2024-01-02T10:00:00+00:00" in line]
    assert segment == ["BTCUSDT", "2024-01-02T10:00:00+00:00", "2024-01-02T10:07:00+00:00", "7"]
    js = json.loads(cli(tmp_path, env, "gaps", "crypto", "--config", "cfg.yaml", "--json").stdout)
    [sym] = js["symbols"]
    assert (sym["expected"], sym["present"], sym["missing"], sym["gap_segments"]) == (4320, 4313, 7, 1)
    assert sym["segments"] == [{"start": "2024-01-02T10:00:00+00:00", "end": "2024-01-02T10:07:00+00:00", "missing": 7}]
    # Without a config: what a config-less pull stored, named by feed, symbol and timeframe.
    assert cli(tmp_path, env, "pull", "BTCUSDT", "--start", "2024-01-02", "--end", "2024-01-02", "--out", "o").returncode == 0
    bare = cli(tmp_path, env, "gaps", "crypto", "--symbol", "BTCUSDT", "--timeframe", "1m", "--start", "2024-01-02",
               "--end", "2024-01-02", "--out", "o", "--json")  # fmt: skip
    assert json.loads(bare.stdout)["symbols"][0]["missing"] == 7
    unknown = cli(tmp_path, env, "gaps", "equity", "--config", "cfg.yaml")
    assert unknown.returncode == 1 and "not in the configuration (feeds: crypto)" in unknown.stderr


def test_stream_is_the_live_command_and_reports_bad_feeds(tmp_path):
    shipped = str(Path(__file__).parents[1] / "data_puller.yaml")
    res = cli(tmp_path, env_for(tmp_path, "http://127.0.0.1:9"), "stream", "--config", shipped, "--feed", "nope",
              "--duration", "1")  # fmt: skip
    assert res.returncode == 2 and "--feed nope: no such feed" in res.stderr, res.stderr


@pytest.mark.parametrize("command", ["pull", "validate-config", "gaps", "stream"])
def test_help_has_examples(tmp_path, command):
    res = cli(tmp_path, env_for(tmp_path, "http://127.0.0.1:9"), command, "--help")
    assert res.returncode == 0 and f"usage: data-puller {command}" in res.stdout
    assert "examples:" in res.stdout or (command == "stream" and "--feed" in res.stdout)


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "data-puller"
    assert script.exists(), "pip install -e . installs the data-puller console script ([project.scripts])"
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "pull" in res.stdout and "gaps" in res.stdout
