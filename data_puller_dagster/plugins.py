"""The plug-in registry: source, destination and route-transform types found through Python entry points.

Why entry points: a third-party package adds a destination (or a source, or a transform) by declaring
one in its own `pyproject.toml`, e.g.

    [project.entry-points."data_puller_dagster.destinations"]
    sqlite = "my_package.sqlite_store:SQLiteDestination"

and `pip install`-ing it; nothing in this repository changes. The built-ins are registered the same way
in this project's `pyproject.toml`, so there is one mechanism and no list of names in the core.

Listing names reads only the installed distributions' metadata; a type's module is imported when a
configuration uses it (so an unused plug-in with a missing client library costs nothing).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

DESTINATION_GROUP = "data_puller_dagster.destinations"
SOURCE_GROUP = "data_puller_dagster.sources"
TRANSFORM_GROUP = "data_puller_dagster.transforms"

_KIND_WORD = {DESTINATION_GROUP: "destination", SOURCE_GROUP: "source", TRANSFORM_GROUP: "route transform"}
# What each group's loaded object must carry (checked on load, so a broken plug-in is named at once).
_REQUIRED = {
    DESTINATION_GROUP: ("kind", "Options", "from_options"),
    SOURCE_GROUP: ("Options", "from_options", "asset_classes", "raw_layout"),
    TRANSFORM_GROUP: ("Options", "apply"),
}


class PluginError(ValueError):
    """A plug-in type is unknown, ambiguous or broken. The message names it and the installed types."""


@dataclass(frozen=True)
class _Registered:
    name: str
    value: str  # "module:attr"
    dist: str  # the distribution that declared it


@functools.cache
def _registered(group: str) -> dict[str, tuple[_Registered, ...]]:
    out: dict[str, list[_Registered]] = {}
    for ep in entry_points(group=group):
        reg = _Registered(ep.name, ep.value, ep.dist.name if ep.dist is not None else "?")
        if reg not in out.setdefault(ep.name, []):
            out[ep.name].append(reg)
    return {k: tuple(v) for k, v in sorted(out.items())}


def installed(group: str) -> list[str]:
    """Names of the installed types of a group, sorted (no module is imported)."""
    return list(_registered(group))


def describe_installed(group: str) -> str:
    names = installed(group)
    return ", ".join(names) if names else "none (is the package installed? `pip install -e .`)"


def is_installed(group: str, name: str) -> bool:
    return name in _registered(group)


@functools.cache
def load(group: str, name: str) -> Any:
    """The class (or object) registered as `name` in `group`, imported and checked."""
    word = _KIND_WORD[group]
    regs = _registered(group).get(name)
    if not regs:
        raise PluginError(f"{name!r} is not an installed {word} type; installed: {describe_installed(group)}")
    values = {r.value for r in regs}
    if len(values) > 1:
        who = "; ".join(f"{r.value} (from {r.dist})" for r in regs)
        raise PluginError(
            f"{word} type {name!r} is registered twice with different code: {who}; uninstall one of the packages"
        )
    reg = regs[0]
    try:
        obj = EntryPoint(reg.name, reg.value, group).load()
    except Exception as e:  # noqa: BLE001 - any import failure of a plug-in is reported the same way
        raise PluginError(
            f"{word} type {name!r} ({reg.value}, from {reg.dist}) cannot be imported: "
            f"{type(e).__name__}: {e}; install what it needs or uninstall {reg.dist}"
        ) from None
    missing = [a for a in _REQUIRED[group] if not hasattr(obj, a)]
    if missing:
        raise PluginError(
            f"{word} type {name!r} ({reg.value}, from {reg.dist}) lacks {', '.join(missing)}; "
            "see README.md#plug-ins for the contract"
        )
    return obj


def clear_cache() -> None:
    """Forget what was found (after installing a plug-in into a running interpreter, e.g. in tests)."""
    _registered.cache_clear()
    load.cache_clear()
