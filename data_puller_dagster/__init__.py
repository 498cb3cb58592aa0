"""data-puller-dagster: orchestrated market-data ETL on Dagster.

Stages, in the order data flows: sources -> transform -> assets -> io -> automation;
`config` reads data_puller.yaml and `definitions` assembles the Dagster code location.

Without Dagster: `from data_puller_dagster import pull, DataPipeline, ...` (see `data_puller_dagster.api`)
and the `data-puller` command (`data_puller_dagster.cli`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The library API, imported on first use (PEP 562) so that `import data_puller_dagster.<module>` (the
# Dagster code location, the sensors, plug-ins) does not pay for it.
_API = (
    "BinanceAdapter", "DataNormalizer", "DataPipeline", "DataRouter", "PullResult", "Route",
    "TwelveDataAdapter", "build_llm_dataset", "enrich", "infer_source", "pull",
)  # fmt: skip
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from data_puller_dagster import api

        return getattr(api, name)
    raise AttributeError(f"module 'data_puller_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
