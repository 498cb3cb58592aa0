"""A Binance ban recorded by one process is honoured by processes that share only the Dagster instance
(other hosts with their own data_dir, e.g. workers of a Postgres-backed deployment): real runs of the raw
asset on one real instance, two data directories, a fake exchange that records requests while banned."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from data_puller_dagster.assets.raw import build_raw_asset
from data_puller_dagster.config import AppConfig
from data_puller_dagster.io.io_manager import build_io_manager
from data_puller_dagster.sources.bans import InstanceBanMirror, ban_key
from data_puller_dagster_tests.assets.test_raw_errors import config, crypto, not_retried
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines


def _run(cfg: AppConfig, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [build_raw_asset(cfg, cfg.feeds[0])],
        instance=instance,
        resources={"io_manager": build_io_manager(cfg)},
        partition_key="2024-03-02|BTCUSDT",
        raise_on_error=False,
    )


def test_ban_is_seen_through_the_instance_by_a_process_with_another_data_dir(tmp_path: Path) -> None:
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 3 * 1440)}) as fake:
        sources = {"binance": {"base_url": fake.url, "use_archive": False, "max_retries": 0, "max_concurrency": 1}}
        host_a = config(tmp_path / "a", crypto(), sources)
        host_b = config(tmp_path / "b", crypto(), sources)
        with dg.instance_for_test() as instance:
            fake.ban_for(60)
            first = _run(host_a, instance)
            assert "banned until" in not_retried(first)
            sent = fake.klines_requests
            assert sent == 1 and fake.requests_while_banned == []
            mirror = InstanceBanMirror(instance.run_storage, ban_key("binance", fake.url))
            assert mirror.until() is not None  # mirrored in the instance, not only in host A's file

            second = _run(host_b, instance)  # host B has no ban file of its own
            assert "banned until" in not_retried(second)
            assert fake.klines_requests == sent and fake.requests_while_banned == []
            assert not (tmp_path / "b" / "data" / ".state" / "bans.json").exists() or mirror.until()
