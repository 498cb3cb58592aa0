"""The raw asset in real Dagster runs when the provider cannot be reached, and under SIGTERM.

A host that does not resolve or refuses connections fails the step once, within seconds, with one line
naming the host, the cause and the setting to fix (no in-step retry, no RetryPolicy retry). A host that
accepts and never answers is retried, but bounded by the read timeout and max_retry_seconds. A run
process that gets SIGTERM while its pages hang in reads stops promptly and stores nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from data_puller_dagster_tests.assets.test_raw_errors import KEY, config, crypto, materialize, not_retried
from data_puller_dagster_tests.fakes.silent import UNRESOLVABLE_URL, SilentServer, refused_url

FOREX = {"name": "forex", "source": "twelvedata", "asset_class": "forex", "timeframe": "1h",
         "symbols": ["EUR/USD"]}  # fmt: skip


def test_unresolvable_binance_host_fails_the_step_once_with_one_line(tmp_path: Path) -> None:
    cfg = config(tmp_path, crypto(), {"binance": {"base_url": UNRESOLVABLE_URL, "use_archive": False,
                                                  "max_retries": 5}})  # fmt: skip
    desc = not_retried(materialize(cfg, "2024-03-01", "2024-03-01", "BTCUSDT"))
    assert "\n" not in desc, desc
    assert "UnreachableError" in desc and "BTCUSDT" in desc and "2024-03-01" in desc
    assert "cannot reach no-such-host.invalid: name does not resolve" in desc
    assert "check sources.binance.base_url (BINANCE_BASE_URL) or the network" in desc


def test_refused_twelvedata_port_fails_the_step_once_without_the_key(tmp_path: Path) -> None:
    url = refused_url()
    cfg = config(tmp_path, FOREX, {"twelvedata": {"base_url": url, "api_key": KEY, "max_retries": 5}})
    desc = not_retried(materialize(cfg, "2024-03-01", "2024-03-01", "EURUSD"))
    assert "\n" not in desc, desc
    assert f"cannot reach {url.removeprefix('http://')}: connection refused" in desc
    assert "TWELVEDATA_BASE_URL" in desc and KEY not in desc


def test_silent_host_is_retried_within_the_bounds(tmp_path: Path) -> None:
    binance = {"base_url": "", "use_archive": False, "timeout_seconds": 0.2, "connect_timeout_seconds": 0.2,
               "max_retries": 20, "max_retry_seconds": 1.0}  # fmt: skip
    with SilentServer() as s:
        binance["base_url"] = s.url
        cfg = config(tmp_path, crypto(), {"binance": binance})
        result = materialize(cfg, "2024-03-01", "2024-03-01", "BTCUSDT")
        sent = s.requests
    assert not result.success
    types = [e.event_type_value for e in result.all_events]
    # Retryable: the RetryPolicy (retry_max 2) runs the step three times...
    assert types.count("STEP_START") == 1 and types.count("STEP_RESTARTED") == 2, types
    assert types.count("STEP_UP_FOR_RETRY") == 2, types
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    err = failure.step_failure_data.error
    text = err.message + "".join(c.message for c in [err.cause] if c)
    assert "TransientSourceError" in text and "max_retry_seconds=1" in text and "Read timed out" in text
    # ...and in each, a page gives up on its 1 s retry budget (0.2 s reads, 0.25-0.5 s first backoff:
    # two tries; its sibling may be cancelled after one), long before the 20 retries max_retries
    # allows (3 steps x 2 pages x 21 requests).
    assert 3 * 3 <= sent <= 3 * 2 * 3, sent


RUN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import dagster as dg
    from data_puller_dagster.assets.raw import build_raw_asset
    from data_puller_dagster.config import parse_config
    from data_puller_dagster.io.io_manager import build_io_manager

    cfg = parse_config(json.loads(sys.argv[1]), env={})
    feed = cfg.feeds[0]
    result = dg.materialize(
        [build_raw_asset(cfg, feed)],
        instance=dg.DagsterInstance.get(),
        resources={"io_manager": build_io_manager(cfg)},
        tags={"dagster/asset_partition_range_start": "2024-03-01|BTCUSDT",
              "dagster/asset_partition_range_end": "2024-03-02|BTCUSDT"},
        raise_on_error=False,
    )
    print("RUN_FINISHED", result.success, flush=True)
    """
)


def test_sigterm_mid_fetch_stops_the_run_promptly_and_stores_nothing(tmp_path: Path) -> None:
    """Pages hang in 60 s reads with 5 retries each; SIGTERM must end the process in seconds, not minutes.

    Before: the page threads kept their reads (and retries) going and the executor's shutdown waited
    for them, so the process outlived every read timeout."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    data = tmp_path / "data"
    with SilentServer() as s:
        raw_cfg = {
            "storage": {"data_dir": str(data)},
            "sources": {
                "binance": {
                    "base_url": s.url,
                    "use_archive": False,
                    "timeout_seconds": 60,
                    "max_retries": 5,
                    "max_concurrency": 4,
                }
            },  # fmt: skip
            "feeds": [{"start_date": "2024-03-01", "end_date": "2024-03-10", **crypto()}],
            "dataset": {"enabled": False},
            # Dagster retries an interrupted step per its RetryPolicy (for preempted pods); in one
            # in-process run that would restart the fetch, so the policy allows no retry here.
            "runs": {"retry_max": 0},
        }
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_SCRIPT, json.dumps(raw_cfg)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            s.wait_for_requests(3, timeout=60)  # 2 days of 1m = 3 pages, all hanging in their read
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)  # well below one 60 s read
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        sent = s.requests
    assert "RUN_FINISHED False" in out, out[-3000:]
    assert "DagsterExecutionInterruptedError" in out or "interrupt" in out.lower(), out[-3000:]
    assert sent == 3, sent  # no retry was sent after the interrupt
    stored = [p for p in data.rglob("*") if p.is_file() and ".state" not in p.parts]
    assert stored == [], stored
