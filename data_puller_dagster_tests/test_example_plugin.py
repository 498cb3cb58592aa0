"""A third-party destination plug-in, installed as a package and routed to through the user's command.

The example package under examples/sqlite_destination is pip-installed (into a temporary target, not
this venv) and found only through its entry point: no code of this repository names it. A real
`dagster asset materialize` run then routes the normalized layer to it next to Parquet and DuckDB.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "sqlite_destination"
DAGSTER = str(Path(sys.executable).with_name("dagster"))


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    # Built from a copy: setuptools leaves build/ and *.egg-info next to the sources it builds.
    src = shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("src") / EXAMPLE.name)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert list(site.glob("data_puller_sqlite-*.dist-info/entry_points.txt"))
    return site


def _env(tmp_path: Path, site: Path | None, config: dict) -> dict[str, str]:
    cfg = tmp_path / "data_puller.yaml"
    cfg.write_text(yaml.safe_dump(config))
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "DATA_PULLER_CONFIG": str(cfg), "DAGSTER_HOME": str(home)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site) if site else "", env.get("PYTHONPATH", "")) if p)
    return env


def _config(tmp_path: Path, binance_url: str) -> dict:
    return {
        "storage": {"data_dir": str(tmp_path / "data")},
        "sources": {"binance": {"base_url": binance_url, "use_archive": False, "max_retries": 1}},
        "feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                   "symbols": ["BTCUSDT"], "start_date": "2024-01-01", "end_date": "2024-01-03"}],
        "destinations": {"lite": {"type": "sqlite", "path": str(tmp_path / "mirror.sqlite")}},
        "routes": [
            {"id": "warehouse", "destinations": ["parquet", "duckdb"]},
            {"id": "mirror", "match": {"layer": ["normalized"]}, "destinations": ["lite"]},
        ],
        "automation": {"schedule": {"enabled": False}, "gap_sensor": {"enabled": False}},
    }  # fmt: skip


def test_installed_plugin_is_found_by_its_entry_point_and_routed_to(tmp_path, plugin_site) -> None:
    series = generate_klines("2024-01-01", 3 * 1440, "1m", seed=11)
    with FakeBinance({("BTCUSDT", "1m"): series}) as fake:
        env = _env(tmp_path, plugin_site, _config(tmp_path, fake.url))
        run = subprocess.run(
            [DAGSTER, "asset", "materialize", "-m", "data_puller_dagster.definitions",
             "--select", "crypto/raw_ohlcv_1m,crypto/normalized_ohlcv_1m,crypto/quarantine_ohlcv_1m", "--partition", "2024-01-02|BTCUSDT"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    with sqlite3.connect(tmp_path / "mirror.sqlite") as con:
        mirror = pd.read_sql_query('SELECT ts, close FROM "crypto__normalized_ohlcv_1m" ORDER BY ts', con)
    day = series[(series["open_time"] >= 1704153600000) & (series["open_time"] < 1704240000000)]
    assert len(mirror) == 1440
    assert mirror["ts"].iloc[0] == pd.Timestamp("2024-01-02", tz="UTC").value
    assert (mirror["close"].to_numpy() == day["close"].astype(float).to_numpy()).all()
    # The plug-in's own read path returns what the pipeline stored in Parquet, dtypes included.
    probe = subprocess.run(
        [sys.executable, "-c", (
            "from datetime import date\n"
            "import pandas as pd\n"
            "from data_puller_dagster.config import load_config\n"
            "from data_puller_dagster.io.router import Router\n"
            "from data_puller_dagster.io.tables import PartitionSlice\n"
            "from data_puller_dagster.assets.naming import table_ref\n"
            "cfg = load_config(); r = Router(cfg); t = table_ref(cfg.feed('crypto'), 'normalized', '1m')\n"
            "p = PartitionSlice({'BTCUSDT': 'BTCUSDT'}, date(2024, 1, 2), date(2024, 1, 2))\n"
            "pd.testing.assert_frame_equal(r.store('lite').read(t, p), r.read(t, p))\n"
            "print('same', type(r.destination('lite')).__module__)\n"
        )],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.split() == ["same", "data_puller_sqlite"]


def test_without_the_package_the_config_names_the_installed_types(tmp_path) -> None:
    env = _env(tmp_path, None, _config(tmp_path, "http://127.0.0.1:9"))
    run = subprocess.run(
        [DAGSTER, "definitions", "validate", "-m", "data_puller_dagster.definitions"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0
    assert "destinations.lite.type: 'sqlite' is not an installed destination type; installed: csv, duckdb" in (
        run.stdout + run.stderr
    )


def test_plugin_options_are_validated_by_its_own_model(tmp_path, plugin_site) -> None:
    config = _config(tmp_path, "http://127.0.0.1:9")
    config["destinations"]["lite"] = {"type": "sqlite", "pth": "x.sqlite"}
    env = _env(tmp_path, plugin_site, config)
    run = subprocess.run(
        [sys.executable, "-c", "from data_puller_dagster.config import load_config; load_config()"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert "destinations.lite.pth: unknown key (check its spelling); allowed keys here: path" in run.stderr


def test_installed_source_plugin_feeds_the_pipeline(tmp_path, plugin_site, fixtures_dir) -> None:
    """The example's `csv_files` source (found by its entry point) feeds raw -> normalized for real."""
    real = pd.read_csv(fixtures_dir / "backtesting_py" / "EURUSD.csv").head(48)  # 2017-04-19 .. 04-20
    exports = tmp_path / "exports"
    exports.mkdir()
    real.rename(columns={"Unnamed: 0": "datetime", "Open": "open", "High": "high", "Low": "low",
                         "Close": "close", "Volume": "volume"}).to_csv(exports / "EURUSD_1h.csv", index=False)  # fmt: skip
    day = str(pd.Timestamp(real.iloc[30, 0]).date())
    config = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "sources": {"csv_files": {"dir": str(exports)}},
        "feeds": [{"name": "fx", "source": "csv_files", "asset_class": "forex", "timeframe": "1h",
                   "symbols": ["EUR/USD"], "start_date": "2017-04-01", "end_date": "2017-04-30"}],
        "automation": {"schedule": {"enabled": False}, "gap_sensor": {"enabled": False}},
    }  # fmt: skip
    env = _env(tmp_path, plugin_site, config)
    run = subprocess.run(
        [DAGSTER, "asset", "materialize", "-m", "data_puller_dagster.definitions",
         "--select", "fx/raw_ohlcv_1h,fx/normalized_ohlcv_1h,fx/quarantine_ohlcv_1h", "--partition", f"{day}|EURUSD"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    import duckdb

    glob = f"{tmp_path}/data/parquet/fx/normalized_ohlcv_1h/**/*.parquet"
    got = duckdb.execute(
        "SELECT ts, close, source FROM read_parquet(?, hive_partitioning=true) ORDER BY ts", [glob]
    ).df()
    want = real[pd.to_datetime(real.iloc[:, 0]).dt.date.astype(str) == day]
    assert len(got) == len(want) > 0
    assert (got["close"].to_numpy() == want["Close"].to_numpy()).all()
    assert set(got["source"]) == {"csv_files"}
    bad = dict(config, sources={"csv_files": {"folder": "x"}})
    check = subprocess.run(
        [sys.executable, "-c", "from data_puller_dagster.config import load_config; load_config()"],
        env=_env(tmp_path, plugin_site, bad), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "sources.csv_files.dir: required key is missing" in check.stderr
    assert "sources.csv_files.folder: unknown key (check its spelling); allowed keys here: dir" in check.stderr
