"""Issue 14: config errors name the key path and the problem, never a secret's value; impossible and
future dates, and route mistakes shared by many tables, get the same one-line `path: problem` form; and
`dagster definitions validate` prints our message first, without a traceback through our code."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from data_puller_dagster.assets.feed import tables_read_downstream
from data_puller_dagster.config import ConfigError, load_config, parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster.io.errors import RoutingError

REPO = Path(__file__).resolve().parents[1]
SECRET = "424242424242"

FOREX = {
    "name": "forex",
    "source": "twelvedata",
    "asset_class": "forex",
    "timeframe": "1h",
    "symbols": ["EUR/USD"],
    "start_date": "2024-01-01",
}


def _problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, env={})
    assert SECRET not in str(exc.value)
    return exc.value.problems


@pytest.mark.parametrize(
    ("where", "value", "problem"),
    [
        ("api_key", int(SECRET), "a number is invalid: a secret must be a string"),
        ("api_key", {"key": SECRET}, "a mapping is invalid: a secret must be a string"),
        ("api_key", [SECRET], "a list is invalid: a secret must be a string"),
        ("api_key", "4242", "is too short (under 8 characters)"),
        ("api_key", f"{SECRET} {SECRET}", "contains whitespace"),
        ("postgres_url", {"url": f"postgresql://u:{SECRET}@h/db"}, "a mapping is invalid"),
    ],
)
def test_secret_fields_name_the_path_and_the_problem_never_the_value(where, value, problem) -> None:
    if where == "api_key":
        data, path = {"sources": {"twelvedata": {"api_key": value}}}, "sources.twelvedata.api_key"
    else:
        data, path = {"storage": {"postgres_url": value}}, "storage.postgres_url"
    (msg,) = _problems({**data, "feeds": [FOREX]})
    assert msg.startswith(f"{path}: (secret, not shown) {problem}"), msg
    assert SECRET not in msg and "4242" not in msg


def test_a_secret_in_a_file_is_not_echoed_either(tmp_path: Path) -> None:
    p = tmp_path / "cfg.yaml"
    p.write_text(f"sources:\n  twelvedata:\n    api_key: {SECRET}\nfeeds:\n  - {yaml.safe_dump(FOREX, default_flow_style=True)}")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert SECRET not in str(exc.value) and "sources.twelvedata.api_key" in str(exc.value)


def test_demo_key_and_real_length_keys_are_accepted() -> None:
    for key in ("demo", "td-test-key-0123456789"):
        cfg = parse_config({"sources": {"twelvedata": {"api_key": key}}, "feeds": [FOREX]}, env={})
        assert cfg.sources.twelvedata.api_key.get_secret_value() == key


def test_impossible_date_in_a_file_names_file_key_and_value(tmp_path: Path) -> None:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"feeds": [FOREX]}).replace("'2024-01-01'", "2024-02-30"))
    assert "start_date: 2024-02-30" in p.read_text()  # unquoted: a YAML timestamp that does not exist
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(p) in str(exc.value)
    (msg,) = exc.value.problems
    assert msg.startswith("feeds[0].start_date: '2024-02-30' is invalid"), msg
    assert msg.endswith("write a real calendar day as YYYY-MM-DD")


def test_valid_unquoted_dates_still_load(tmp_path: Path) -> None:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"feeds": [FOREX]}).replace("'2024-01-01'", "2024-02-29"))
    assert str(load_config(p).feed("forex").start_date) == "2024-02-29"


def test_future_start_date_is_an_error() -> None:
    today = datetime.now(UTC).date()
    future = today + timedelta(days=2)
    (msg,) = _problems({"feeds": [{**FOREX, "start_date": future.isoformat()}]})
    assert msg == f"feeds[0].start_date: {future} is in the future; use a day up to today ({today}, UTC)"
    assert parse_config({"feeds": [{**FOREX, "start_date": today.isoformat()}]}, env={})  # today is fine


def _crypto(**extra) -> dict:
    return {
        "feeds": [
            {
                "name": "crypto",
                "source": "binance",
                "asset_class": "crypto",
                "timeframe": "1m",
                "derived_timeframes": ["1h", "4h", "1d"],
                "symbols": ["BTCUSDT"],
                "start_date": "2024-01-01",
            }
        ],
        **extra,
    }


def test_routing_error_is_said_once_with_the_list_of_tables() -> None:
    cfg = parse_config(_crypto(routes=[{"id": "only_duck", "destinations": ["duckdb"]}]), env={})
    with pytest.raises(RoutingError) as exc:
        build_definitions(cfg)
    lines = [line for line in str(exc.value).splitlines() if line.startswith("  - ")]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith("  - tables ") and "no enabled route sends them to the primary store 'parquet'" in line
    starved = [t.qualified for t in tables_read_downstream(cfg)]
    assert len(starved) >= 5
    assert line.startswith(f"  - tables {', '.join(starved)} are read by downstream assets")


def test_duplicate_destination_is_said_once_per_route_pair() -> None:
    routes = [{"id": "a", "destinations": ["parquet"]}, {"id": "b", "destinations": ["parquet", "duckdb"]}]
    with pytest.raises(RoutingError) as exc:
        build_definitions(parse_config(_crypto(routes=routes), env={}))
    lines = [line for line in str(exc.value).splitlines() if line.startswith("  - ")]
    assert len(lines) == 1, lines
    assert "are sent to 'parquet' by routes 'a' and 'b'" in lines[0]


def _validate(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: the package of this checkout, whatever the venv's editable install points at.
    env = {**os.environ, "DATA_PULLER_CONFIG": str(config), "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
    env.pop("TWELVEDATA_API_KEY", None)
    dagster = Path(sys.executable).with_name("dagster")
    return subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "data_puller_dagster.definitions"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order a terminal shows it
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("kind", ["config", "routes"])
def test_definitions_validate_prints_our_message_first_and_no_traceback_of_ours(tmp_path: Path, kind) -> None:
    p = tmp_path / "bad.yaml"
    if kind == "config":
        p.write_text(
            f"sources:\n  twelvedata:\n    api_key: {SECRET}\n"
            f"feeds:\n  - {yaml.safe_dump(FOREX, default_flow_style=True)}".replace("'2024-01-01'", "2024-02-30")
        )
        first = f"data-puller-dagster: invalid {p} (2 problem(s)):"
    else:
        p.write_text(yaml.safe_dump(_crypto(routes=[{"id": "only_duck", "destinations": ["duckdb"]}])))
        first = "data-puller-dagster: routes in the configuration cannot serve the assets:"
    proc = _validate(p, tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out
    assert SECRET not in out
    # Our paragraph is the first error text, before Dagster's own report of the load failure.
    assert first in out, out
    assert out.index(first) < out.index("Validation failed for code location"), out
    assert "Traceback (most recent call last)" not in out
    our_frames = [
        line for line in out.splitlines() if line.strip().startswith("File ") and "data_puller_dagster" in line
    ]
    # At most Dagster's pointer at the code location's module line; never config/router/yaml internals.
    assert all("definitions.py" in f and "<module>" in f for f in our_frames), our_frames
    assert "yaml/constructor.py" not in out and "pydantic" not in out and "router.py" not in out
    if kind == "config":
        assert "feeds[0].start_date: '2024-02-30' is invalid" in out
        assert "sources.twelvedata.api_key: (secret, not shown)" in out


def test_bad_key_from_the_environment_names_its_full_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWELVEDATA_API_KEY", "4242")
    with pytest.raises(ConfigError) as exc:
        parse_config({"feeds": [FOREX]})
    (msg,) = exc.value.problems
    assert msg.startswith("sources.twelvedata.api_key: (secret, not shown) is too short"), msg
    assert "4242" not in msg
