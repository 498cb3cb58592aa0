"""Issue 14: a Twelve Data feed without TWELVEDATA_API_KEY is reported once at load, and its sensors and
schedule skip with that reason instead of launching runs that can only fail on authentication (and be
retried); the Binance feed beside it keeps running. Ticked on the REAL definitions with a real instance."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import dagster as dg
import pytest

from data_puller_dagster.config import AppConfig, parse_config
from data_puller_dagster.definitions import build_definitions

TODAY = datetime.now(UTC).date()
START = TODAY - timedelta(days=3)
REASON = "TWELVEDATA_API_KEY not set"


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWELVEDATA_API_KEY", raising=False)
    monkeypatch.delenv("TWELVEDATA_BASE_URL", raising=False)


def _cfg(tmp_path: Path, twelvedata: dict | None = None) -> AppConfig:
    def feed(name: str, source: str, asset_class: str) -> dict:
        return {
            "name": name,
            "source": source,
            "asset_class": asset_class,
            "timeframe": "1h",
            "symbols": ["BTCUSDT"] if source == "binance" else ["EUR/USD", "GBP/USD"],
            "start_date": START.isoformat(),
        }

    return parse_config(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "sources": {"twelvedata": twelvedata or {}},
            "feeds": [feed("crypto", "binance", "crypto"), feed("forex", "twelvedata", "forex")],
        },
        env={},
    )


def _tick_sensors(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, dg.SensorExecutionData]:
    repo = defs.get_repository_def()
    out = {}
    for sensor in repo.sensor_defs:
        with dg.build_sensor_context(instance=instance, repository_def=repo) as ctx:
            out[sensor.name] = sensor.evaluate_tick(ctx)
    return out


def _tick_schedule(defs: dg.Definitions, instance: dg.DagsterInstance, name: str):
    repo = defs.get_repository_def()
    when = datetime.combine(TODAY, time(0, 15), tzinfo=UTC)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when, repository_def=repo) as ctx:
        return repo.get_schedule_def(name).evaluate_tick(ctx)


def _load_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dagster" and r.levelno == logging.WARNING]


def test_feed_without_key_is_reported_once_and_skips_while_crypto_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dagster"):
        defs = build_definitions(cfg)
    messages = _load_warnings(caplog)
    assert len(messages) == 1 and messages[0].startswith(f"{REASON}: feed(s) forex cannot fetch"), messages

    with dg.instance_for_test() as instance:
        ticks = _tick_sensors(defs, instance)
        # The live-progress sensor reads only the store: it needs no key, so it is not expected to skip.
        forex = {n: t for n, t in ticks.items() if n.startswith("forex_") and n != "forex__live_progress"}
        assert set(forex) == {"forex_gap_filler", "forex_dataset_filler", "forex_dataset_files"}
        for name, tick in forex.items():
            assert not tick.run_requests, name
            assert tick.skip_message and tick.skip_message.startswith(REASON), (name, tick.skip_message)
        crypto = ticks["crypto_gap_filler"]
        assert crypto.run_requests and crypto.skip_message is None  # missing days are requested

        fx_daily = _tick_schedule(defs, instance, "forex_daily")
        assert not fx_daily.run_requests and fx_daily.skip_message.startswith(REASON)
        assert _tick_schedule(defs, instance, "crypto_daily").run_requests
        assert instance.get_runs() == []  # nothing was launched for the feed that cannot authenticate


@pytest.mark.parametrize(
    "twelvedata",
    [{"api_key": "td-test-key-0123456789"}, {"base_url": "file:///recorded/twelvedata"}],
    ids=["key_set", "recorded_bodies_need_no_key"],
)
def test_feed_that_can_authenticate_is_not_skipped(
    tmp_path: Path, twelvedata: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dagster"):
        defs = build_definitions(_cfg(tmp_path, twelvedata))
    assert not [m for m in _load_warnings(caplog) if REASON in m]
    with dg.instance_for_test() as instance:
        tick = _tick_sensors(defs, instance)["forex_gap_filler"]
        assert tick.run_requests and tick.skip_message is None
        assert _tick_schedule(defs, instance, "forex_daily").run_requests
