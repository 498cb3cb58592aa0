"""The root model of data_puller.yaml and the cross-checks between its sections."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from data_puller_dagster import plugins
from data_puller_dagster.config.base import _Model
from data_puller_dagster.config.features import DatasetConfig, IndicatorsConfig
from data_puller_dagster.config.feeds import FeedConfig
from data_puller_dagster.config.routes import DestinationSpec, RouteConfig, _default_routes
from data_puller_dagster.config.runs import AutomationConfig, RunsConfig, StreamConfig, ValidationConfig
from data_puller_dagster.config.sources import SourcesConfig
from data_puller_dagster.config.storage import StorageConfig
from data_puller_dagster.symbols import check_name


# ---------------------------------------------------------------------------------------------- root
class AppConfig(_Model):
    """Root of data_puller.yaml."""

    version: Literal[1] = 1
    storage: StorageConfig = Field(default_factory=StorageConfig)
    sources: SourcesConfig = Field(default_factory=dict)  # validated: full key paths
    feeds: list[FeedConfig] = Field(min_length=1)
    indicators: IndicatorsConfig = Field(default_factory=IndicatorsConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    destinations: dict[str, DestinationSpec] = Field(
        default_factory=dict, description="Named destination instances with options; routes refer to them."
    )
    routes: list[RouteConfig] = Field(default_factory=_default_routes)
    runs: RunsConfig = Field(default_factory=RunsConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    automation: AutomationConfig = Field(default_factory=AutomationConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)

    @model_validator(mode="after")
    def _cross_refs(self) -> AppConfig:
        names = [f.name for f in self.feeds]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feed names must be unique; duplicated: {', '.join(dupes)}")
        ids = [r.id for r in self.routes]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"route ids must be unique; duplicated: {', '.join(dupes)}")
        for name in self.destinations:
            check_name(name, "destination name")
        for i, r in enumerate(self.routes):
            for f in r.match.feed or []:
                if f not in names:
                    raise ValueError(
                        f"routes[{i}].match.feed: {f!r} is not a feed; use one of {', '.join(names)}"
                    )
            for j, d in enumerate(r.destinations):
                self._check_destination_name(d, f"routes[{i}].destinations[{j}]")
            if r.enabled and self._postgres_without_url(r.destinations):
                raise ValueError(
                    f"routes[{i}] ({r.id}) sends to postgres but storage.postgres_url is not set; "
                    "set DATA_PULLER_POSTGRES_URL or storage.postgres_url (or url: on the destination)"
                )
        self._check_destination_name(self.storage.primary, "storage.primary")
        if self._postgres_without_url([self.storage.primary]):
            raise ValueError("storage.primary is 'postgres' but storage.postgres_url is not set")
        return self

    def _check_destination_name(self, name: str, where: str) -> None:
        if name in self.destinations or plugins.is_installed(plugins.DESTINATION_GROUP, name):
            return
        declared = ", ".join(self.destinations) or "none"
        raise ValueError(
            f"{where}: {name!r} is neither a destination declared under destinations: ({declared}) nor an "
            f"installed destination type ({plugins.describe_installed(plugins.DESTINATION_GROUP)})"
        )

    def _postgres_without_url(self, dests: list[str]) -> bool:
        return self.storage.postgres_url is None and any(
            self.destination_type(d) == "postgres"
            and not (d in self.destinations and self.destinations[d].options.get("url"))
            for d in dests
        )

    def destination_type(self, name: str) -> str:
        """The type of a destination instance (a name not declared under destinations: is its type)."""
        spec = self.destinations.get(name)
        return spec.type if spec is not None else name

    def destination_spec(self, name: str) -> DestinationSpec:
        return self.destinations.get(name) or DestinationSpec(type=name)

    def dataset_for(self, feed: FeedConfig) -> DatasetConfig:
        """Dataset options as they apply to one feed (its own split dates, if it has them)."""
        if feed.dataset_split is None:
            return self.dataset
        return self.dataset.model_copy(update={"split": feed.dataset_split})

    def feed(self, name: str) -> FeedConfig:
        for f in self.feeds:
            if f.name == name:
                return f
        raise KeyError(f"no feed named {name!r}; feeds: {', '.join(f.name for f in self.feeds)}")

    def fingerprint(self) -> str:
        """Stable hash of the effective config (secrets excluded) for manifests and code versions."""
        data = self.model_dump(mode="json", exclude={"storage": {"postgres_url"}, "sources": True})
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]



def missing_credentials(cfg: AppConfig, feed: FeedConfig) -> str | None:
    """Why a feed's source cannot authenticate (None when it can), e.g. 'TWELVEDATA_API_KEY not set'.

    Twelve Data over http(s) needs a key; a file:// base_url (recorded bodies, the demo) does not,
    and Binance's public market data needs none. Sensors and schedules skip such feeds instead of
    launching runs that can only fail on authentication."""
    td = cfg.sources.twelvedata
    if feed.source == "twelvedata" and td.api_key is None and not td.base_url.startswith("file://"):
        return "TWELVEDATA_API_KEY not set"
    return None
