"""Config parsing: interpolation, defaults, env overrides and specific messages for bad configs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from data_puller_dagster import config as cfgmod
from data_puller_dagster.config import ConfigError, interpolate, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]

MINIMAL = {
    "feeds": [
        {
            "name": "crypto",
            "source": "binance",
            "asset_class": "crypto",
            "timeframe": "1m",
            "derived_timeframes": ["1h"],
            "symbols": ["BTCUSDT"],
            "start_date": "2024-01-01",
        },
        {
            "name": "forex",
            "source": "twelvedata",
            "asset_class": "forex",
            "timeframe": "1h",
            "symbols": ["EUR/USD"],
            "start_date": "2024-01-01",
        },
    ]
}


def _with(path: str, value, base=None) -> dict:
    """Copy MINIMAL and set a dotted/indexed path, e.g. 'feeds.1.timeframe'."""
    data = copy.deepcopy(base or MINIMAL)
    node = data
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


def _problems(data: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, env=env or {})
    return exc.value.problems


def test_shipped_config_loads():
    cfg = load_config(REPO / "data_puller.yaml")
    assert [f.name for f in cfg.feeds] == ["crypto", "forex", "equity"]
    assert cfg.feed("forex").symbol_keys == {"EURUSD": "EUR/USD", "GBPUSD": "GBP/USD"}


def test_defaults(monkeypatch):
    for var in (
        "DATA_PULLER_HOME",
        "BINANCE_BASE_URL",
        "BINANCE_ARCHIVE_URL",
        "TWELVEDATA_BASE_URL",
        "TWELVEDATA_API_KEY",
        "DATA_PULLER_POSTGRES_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    cfg = parse_config(MINIMAL, env={})
    assert cfg.sources.binance.base_url == "https://api.binance.com"
    assert cfg.sources.binance.archive_url == "https://data.binance.vision"
    assert cfg.sources.twelvedata.base_url == "https://api.twelvedata.com"
    assert cfg.sources.twelvedata.api_key is None
    assert cfg.storage.postgres_url is None
    assert cfg.storage.duckdb_file == (Path.cwd() / "data" / "warehouse.duckdb")
    assert cfg.storage.parquet_location == str(Path.cwd() / "data" / "parquet")
    assert [r.id for r in cfg.routes] == ["default"]
    assert cfg.routes[0].destinations == ["parquet", "duckdb"]
    assert cfg.dataset.context_window == 100
    forex = cfg.feed("forex")
    assert forex.enriched_timeframes == ["1h"] and forex.llm_timeframe == "1h" and forex.decimals == 5


def test_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_PULLER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BINANCE_BASE_URL", "http://127.0.0.1:9001")
    monkeypatch.setenv("BINANCE_ARCHIVE_URL", "http://127.0.0.1:9002/")
    monkeypatch.setenv("TWELVEDATA_BASE_URL", "http://127.0.0.1:9003")
    monkeypatch.setenv("TWELVEDATA_API_KEY", "k-12345678")
    monkeypatch.setenv("DATA_PULLER_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    cfg = parse_config(MINIMAL)
    assert cfg.sources.binance.base_url == "http://127.0.0.1:9001"
    assert cfg.sources.binance.archive_url == "http://127.0.0.1:9002"  # trailing slash stripped
    assert cfg.sources.twelvedata.base_url == "http://127.0.0.1:9003"
    assert cfg.sources.twelvedata.api_key.get_secret_value() == "k-12345678"
    assert "k-12345678" not in repr(cfg) and "k-12345678" not in str(cfg.model_dump())
    assert cfg.storage.duckdb_file == tmp_path / "home" / "warehouse.duckdb"
    assert cfg.storage.postgres_url.get_secret_value().startswith("postgresql://")


def test_config_path_env_override(monkeypatch, tmp_path):
    p = tmp_path / "other.yaml"
    p.write_text(yaml.safe_dump(MINIMAL))
    monkeypatch.setenv("DATA_PULLER_CONFIG", str(p))
    assert cfgmod.config_path() == p
    assert [f.name for f in load_config().feeds] == ["crypto", "forex"]
    monkeypatch.delenv("DATA_PULLER_CONFIG")
    assert cfgmod.config_path() == Path("data_puller.yaml")


def test_interpolation_forms():
    env = {"A": "alpha", "EMPTY": ""}
    tree = {"x": "${A}", "y": "pre-${A}-post", "z": "${MISSING:-fallback}", "e": "${EMPTY:-dflt}",
            "lit": "$${A}", "n": 3, "l": ["${A}", {"k": "${B:-}"}]}
    out = interpolate(tree, env)
    assert out == {"x": "alpha", "y": "pre-alpha-post", "z": "fallback", "e": "dflt", "lit": "${A}",
                   "n": 3, "l": ["alpha", {"k": ""}]}


def test_interpolation_into_typed_fields():
    data = _with("sources", {"binance": {"weight_budget_per_minute": "${W:-1200}", "base_url": "${U}"}})
    cfg = parse_config(data, env={"U": "http://localhost:1234"})
    assert cfg.sources.binance.weight_budget_per_minute == 1200
    assert cfg.sources.binance.base_url == "http://localhost:1234"


def test_missing_required_variable_names_it_and_the_key():
    data = _with("sources", {"twelvedata": {"api_key": "${TD_KEY}"}})
    (msg,) = _problems(data)
    assert msg.startswith("sources.twelvedata.api_key: environment variable TD_KEY is not set")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("feeds.1.timeframe", "7m",
         "feeds[1].timeframe: '7m' is not a supported timeframe; use one of 1m, 5m, 15m, 30m, 1h, 4h, 1d"),
        ("feeds.0.symbols", ["BTC USDT"], "feeds[0].symbols: 'BTC USDT' is not a valid symbol"),
        ("feeds.0.symbols", ["btc/../x"], "feeds[0].symbols: 'btc/../x' is not a valid symbol"),
        ("feeds.1.symbols", ["EUR/USD", "EURUSD"],
         "feeds[1].symbols: symbols 'EUR/USD' and 'EURUSD' share the partition key 'EURUSD'"),
        ("feeds.0.asset_class", "forex",
         "feeds[0]: asset_class 'forex' is not served by source 'binance'; use one of crypto"),
        ("feeds.0.derived_timeframes", ["1h", "30m", "1m"],
         "feeds[0]: derived timeframe '1m' cannot be built from base '1m'"),
        ("feeds.0.source", "kraken", "feeds[0].source: 'kraken' is not an installed source type; installed: binance, twelvedata"),
        ("feeds.0.name", "Crypto Feed", "feeds[0].name: 'Crypto Feed' is not a valid feed name"),
        ("feeds.0.start_date", "yesterday", "feeds[0].start_date: 'yesterday' is invalid"),
        ("feeds.0.colour", "blue", "feeds[0].colour: unknown key (check its spelling); allowed keys here: name, source"),
        ("storge", {}, "storge: unknown key (check its spelling); allowed keys here: version, storage, sources"),
        ("routes", [{"id": "pg", "destinations": ["postgres"]}],
         "routes[0] (pg) sends to postgres but storage.postgres_url is not set; set DATA_PULLER_POSTGRES_URL"),
        ("routes", [{"id": "x", "destinations": ["s3"]}],
             "routes[0].destinations[0]: 's3' is neither a destination declared under destinations: (none) nor an "
             "installed destination type (csv, duckdb"),
        ("routes", [{"id": "x", "destinations": ["csv"], "match": {"feed": ["stocks"]}}],
         "routes[0].match.feed: 'stocks' is not a feed; use one of crypto, forex"),
        ("routes", [{"id": "x", "destinations": ["csv"], "filter": [{"column": "volume", "op": "gt"}]}],
         "routes[0].filter[0]: op 'gt' needs a value"),
        ("sources", {"binance": {"base_url": "api.binance.com"}},
         "sources.binance.base_url: 'api.binance.com' is not a URL; use http(s)://host[:port][/path]"),
        ("feeds", [], "feeds: [] is invalid: List should have at least 1 item"),
        ("dataset", {"split": {"validation_start": "2025-03-01", "test_start": "2025-01-01"}},
         "dataset.split: test_start 2025-01-01 must be after validation_start 2025-03-01"),
    ],
)
def test_bad_configs_give_specific_messages(path, value, expected):
    problems = _problems(_with(path, value))
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_reported_at_once():
    data = _with("feeds.1.timeframe", "7m")
    data["feeds"][0]["symbols"] = ["bad symbol"]
    data["unknown"] = 1
    problems = _problems(data)
    assert len(problems) == 3, problems


def test_load_config_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="file not found; create it"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("feeds: [\n")
    with pytest.raises(ConfigError, match="not valid YAML") as exc:
        load_config(broken)
    assert str(broken) in str(exc.value)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)
