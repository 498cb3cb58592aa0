"""Destination instances and route transforms, built from the configuration through the plug-in registry.

A route names destination instances: either one declared under `destinations:` (a type plus that
type's options) or a bare type name (`parquet`, `duckdb`, ...), which is that type with default options
(the built-in stores then take their locations from `storage:`, as before instances existed).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from data_puller_dagster import plugins
from data_puller_dagster.config import AppConfig, TransformSpec, render_errors
from data_puller_dagster.io.destinations.base import Destination, StreamDestination
from data_puller_dagster.io.errors import RoutingError


def destination_class(cfg: AppConfig, name: str) -> Any:
    """The plug-in class of a destination instance (imports its module)."""
    return plugins.load(plugins.DESTINATION_GROUP, cfg.destination_type(name))


def destination_kind(cfg: AppConfig, name: str) -> str:
    return str(destination_class(cfg, name).kind)


def _options(model: type[BaseModel], data: dict[str, Any], where: tuple[Any, ...]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RoutingError("; ".join(render_errors(e, model, where))) from None


def build_destination(cfg: AppConfig, name: str) -> Destination | StreamDestination:
    """The destination object of an instance name, its options validated by its type's model."""
    try:
        cls = destination_class(cfg, name)
    except plugins.PluginError as e:
        raise RoutingError(f"destination {name!r}: {e}") from None
    options = _options(cls.Options, cfg.destination_spec(name).options, ("destinations", name))
    dest = cls.from_options(options, cfg.storage)
    if getattr(dest, "name", None) != name:
        try:
            dest.name = name  # results and errors name the instance the user wrote
        except AttributeError:
            pass
    return dest


def build_transform(spec: TransformSpec, where: tuple[Any, ...]) -> tuple[Any, BaseModel]:
    """The transform plug-in of a route and its validated options."""
    try:
        cls = plugins.load(plugins.TRANSFORM_GROUP, spec.type)
    except plugins.PluginError as e:
        raise RoutingError(str(e)) from None
    return cls, _options(cls.Options, spec.options, where)


def used_destinations(cfg: AppConfig) -> dict[str, str]:
    """Every destination instance the configuration uses -> where it is named first."""
    out: dict[str, str] = {n: f"destinations.{n}" for n in cfg.destinations}
    out.setdefault(cfg.storage.primary, "storage.primary")
    for i, r in enumerate(cfg.routes):
        for j, d in enumerate(r.destinations):
            out.setdefault(d, f"routes[{i}].destinations[{j}]")
    return out


def plugin_problems(cfg: AppConfig) -> list[str]:
    """Problems the plug-ins find in the configuration: unloadable types, bad options, a stream as the
    primary store. Empty when every used instance and transform can be built."""
    problems: list[str] = []
    for name, where in used_destinations(cfg).items():
        try:
            cls = destination_class(cfg, name)
        except plugins.PluginError as e:
            problems.append(f"{where}: {e}")
            continue
        try:
            cls.Options.model_validate(cfg.destination_spec(name).options)
        except ValidationError as e:
            problems += render_errors(e, cls.Options, ("destinations", name))
        if name == cfg.storage.primary and cls.kind != "store":
            problems.append(
                f"storage.primary: {name!r} is a {cls.kind} destination, which cannot be read back; "
                "name a store (parquet, duckdb, postgres, or an instance of a store type)"
            )
    problems += _source_problems(cfg)
    for i, r in enumerate(cfg.routes):
        if r.transform is not None:
            try:
                build_transform(r.transform, (f"routes[{i}]", "transform"))
            except RoutingError as e:
                problems.append(f"routes[{i}].transform: {e}" if "routes[" not in str(e) else str(e))
    return problems


def _source_problems(cfg: AppConfig) -> list[str]:
    """Plug-in sources: importable, options valid under sources.<type>, serving the feed's asset class
    with a raw layout the normalizer knows. (Built-in sources are validated by config.py itself.)"""
    from data_puller_dagster.sources.base import RAW_DTYPES, source_class

    problems: list[str] = []
    for i, feed in enumerate(cfg.feeds):
        if feed.source in type(cfg.sources).model_fields:
            continue
        try:
            cls = source_class(feed.source)
        except plugins.PluginError as e:
            problems.append(f"feeds[{i}].source: {e}")
            continue
        try:
            cls.Options.model_validate(cfg.sources.options_for(feed.source))
        except ValidationError as e:
            problems += render_errors(e, cls.Options, ("sources", feed.source))
        if feed.asset_class not in tuple(cls.asset_classes):
            problems.append(
                f"feeds[{i}].asset_class: {feed.asset_class!r} is not served by source {feed.source!r}; "
                f"use one of {', '.join(cls.asset_classes)}"
            )
        if cls.raw_layout not in RAW_DTYPES:
            problems.append(
                f"feeds[{i}].source: plug-in {feed.source!r} declares raw_layout {cls.raw_layout!r}; "
                f"the normalizer reads {', '.join(RAW_DTYPES)}"
            )
    return problems
