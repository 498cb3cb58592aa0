"""The Dagster code location: everything assembled from data_puller.yaml in one place."""

from __future__ import annotations

import logging
import sys
import warnings
from types import SimpleNamespace

import dagster as dg

from data_puller_dagster.assets.feed import build_all_assets, routed_tables, tables_read_downstream
from data_puller_dagster.automation.jobs import build_jobs
from data_puller_dagster.config import AppConfig, ConfigError, load_config, missing_credentials
from data_puller_dagster.io.errors import RoutingError
from data_puller_dagster.io.io_manager import build_io_manager
from data_puller_dagster.io.router import Router

# Backfill policies, pools and multi-partition mappings are beta/preview APIs in Dagster 1.13; we rely
# on them deliberately, so their warnings would only bury real ones.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


# The "dagster" logger: the one `dagster dev`, the code server and `dagster definitions validate`
# print, so the warning shows up in their output (a Python warning would not in all of them).
log = logging.getLogger("dagster")


def warn_missing_credentials(cfg: AppConfig) -> None:
    """Say once, at load, which feeds cannot authenticate (their sensors/schedules skip with the reason)."""
    by_reason: dict[str, list[str]] = {}
    for feed in cfg.feeds:
        reason = missing_credentials(cfg, feed)
        if reason:
            by_reason.setdefault(reason, []).append(feed.name)
    for reason, feeds in by_reason.items():
        log.warning(
            "%s: feed(s) %s cannot fetch; their schedules and sensors skip until you export it (or set "
            "sources.twelvedata.api_key) and reload the code location",
            reason,
            ", ".join(feeds),
        )


# Why in_process is the default: a candle run is a chain of steps (raw -> normalized -> derived -> enriched)
# that mostly wait for each other, and on the multiprocess executor each step pays a process start and a
# re-import of this code location (~1.5-2.5 s) - most of a daily single-partition run. "multiprocess" is
# Dagster's own default executor, whose run config can still pick `execution: config: in_process: {}`.
# "celery": each step is a task on dagster-celery workers (deploy/dagster.celery.yaml). Settings the
# workers must be started with too (deploy/celery_worker.yaml): dagster-celery acks a step's task when a
# worker takes it, so a worker killed mid-step loses it and the run waits for it forever; acked once the
# step ends instead, the broker hands it to another worker as soon as the dead one's connection drops.
CELERY_CONFIG_SOURCE = {"task_acks_late": True, "task_reject_on_worker_lost": True, "worker_prefetch_multiplier": 1}


def celery_executor(broker: str | None = None, backend: str | None = None) -> dg.ExecutorDefinition:
    """dagster-celery's `celery_executor` with this deployment's broker and worker-loss settings.

    The broker and backend are resolved when a run starts: the run config's `execution.config.broker` /
    `backend` if given, else the arguments, else `runs.celery_broker` / `runs.celery_backend` of the code
    location's config file (DATA_PULLER_CONFIG), so the broker URL (it may hold a password) is never
    stored in a run's config.
    """
    from dagster_celery import celery_executor as upstream
    from dagster_celery.executor import CELERY_CONFIG

    @dg.executor(
        name="celery", config_schema=CELERY_CONFIG, requirements=dg.multiple_process_executor_requirements()
    )
    def data_puller_celery(init_context: dg.InitExecutorContext) -> dg.Executor:
        given = dict(init_context.executor_config)
        runs = load_config().runs if not (given.get("broker") or broker) else None
        resolved = {
            **given,
            "broker": given.get("broker") or broker or runs.celery_broker.get_secret_value(),  # type: ignore[union-attr]
            "backend": (given.get("backend") if given.get("backend") not in (None, "rpc://") else None)
            or backend or (runs.celery_backend.get_secret_value() if runs is not None else "rpc://"),
            "config_source": {**CELERY_CONFIG_SOURCE, **(given.get("config_source") or {})},
        }  # fmt: skip
        return upstream.executor_creation_fn(SimpleNamespace(executor_config=resolved))  # type: ignore[misc]

    return data_puller_celery


EXECUTORS = {
    "in_process": dg.in_process_executor,
    "multiprocess": dg.multi_or_in_process_executor,
    "celery": celery_executor(),
}


def build_definitions(cfg: AppConfig) -> dg.Definitions:
    """Assets (with their checks), jobs, schedules, sensors and the routed IO manager for a config."""
    from data_puller_dagster.assets.live import build_live_assets
    from data_puller_dagster.automation.live_sensor import build_live_sensors
    from data_puller_dagster.automation.schedules import build_schedules
    from data_puller_dagster.automation.sensors import build_sensors

    Router(cfg).validate(routed_tables(cfg), read_downstream=tables_read_downstream(cfg))
    warn_missing_credentials(cfg)
    return dg.Definitions(
        assets=[*build_all_assets(cfg), *build_live_assets(cfg)],
        jobs=build_jobs(cfg),
        schedules=build_schedules(cfg),
        sensors=[*build_sensors(cfg), *build_live_sensors(cfg)],
        resources={"io_manager": build_io_manager(cfg)},
        executor=celery_executor(
            cfg.runs.celery_broker.get_secret_value(), cfg.runs.celery_backend.get_secret_value()
        )
        if cfg.runs.executor == "celery"
        else EXECUTORS[cfg.runs.executor],
    )


try:
    defs = build_definitions(load_config())
except (ConfigError, RoutingError) as _err:
    # Our message goes first, as one paragraph, before whatever the loading tool prints about it; the
    # error is re-raised without our frames (they would only say where the config was read).
    print(f"data-puller-dagster: {_err}", file=sys.stderr, flush=True)
    raise _err.with_traceback(None) from None
