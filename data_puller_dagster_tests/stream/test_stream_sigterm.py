"""`python -m data_puller_dagster.stream` as a subprocess: SIGTERM during a burst of events exits 0
within a few seconds, and every final candle it received is in Redis and in the stores, without a hole."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import yaml

from data_puller_dagster_tests.io.test_stream_destinations import REDIS_URL
from data_puller_dagster_tests.stream.conftest import DAY, fake_binance, stored

SYMBOLS = [f"S{i:02d}USDT" for i in range(12)]


def _config(tmp_path, fake, prefix) -> str:
    cfg = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "sources": {"binance": {"base_url": fake.rest.url, "ws_url": fake.url, "use_archive": False,
                                "ws_reconnect_base_seconds": 0.05}},
        "feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                   "symbols": SYMBOLS, "start_date": "2024-01-01"}],
        "destinations": {"live": {"type": "redis_stream", "url": REDIS_URL,
                                  "stream": prefix + ":{feed}:{table}:{symbol_key}"}},
        "routes": [{"id": "stores", "destinations": ["parquet", "duckdb"]},
                   {"id": "live_redis", "match": {"realtime": True}, "destinations": ["live"]}],
        "stream": {"store_flush_seconds": 60},  # the stores get the day only at the final flush
    }  # fmt: skip
    path = tmp_path / "data_puller.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_sigterm_during_a_burst_loses_nothing_received(tmp_path, prefix) -> None:
    with fake_binance(SYMBOLS, speed=3000.0, updates_per_candle=4, ping_interval=5.0) as fake:
        path = _config(tmp_path, fake, prefix)
        env = {**os.environ, "DATA_PULLER_CONFIG": path}
        # The user's command: the data-puller console script's `stream` subcommand.
        proc = subprocess.Popen([str(Path(sys.executable).with_name("data-puller")), "stream", "--config", path,
                                 "--log-interval", "0.5"], env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert fake.wait_for(lambda: sum(len(c.sent_final) for c in fake.conns.values()) > 1500, 30)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        took = time.monotonic() - t0
        sent = sum(len(c.sent_final) for c in fake.closed_conns + list(fake.conns.values()))
    assert proc.returncode == 0, err[-3000:]
    assert took < 5.0, (took, err[-2000:])
    assert re.search(r"stream crypto ws#0 \[12 symbol\(s\)", err)  # the progress lines
    m = re.search(r"(\d+) events received, (\d+) final candles routed \((\d+) over REST\).* (\d+) lost", err)
    assert m, err[-2000:]
    received, routed, rest, lost = map(int, m.groups())
    assert lost == 0 and received > 2000 and sent > 1500 and routed - rest >= 0.95 * sent, (received, routed, rest, sent)
    r = redis.Redis.from_url(REDIS_URL)
    in_redis = 0
    for sym in SYMBOLS:
        ids = [int(i.decode().split("-")[0]) for i, _ in r.xrange(f"{prefix}:crypto:live_ohlcv_1m:{sym}")]
        in_redis += len(ids)
        assert ids[0] == DAY.value // 10**6 and all(b - a == 60_000 for a, b in zip(ids, ids[1:], strict=False))
    assert in_redis == routed
    from data_puller_dagster.config import load_config

    cfg = load_config(path)
    for store in ("parquet", "duckdb"):
        df = stored(cfg, store, SYMBOLS)
        assert len(df) == routed and df["is_final"].all() and not df.duplicated(["symbol", "ts"]).any()
