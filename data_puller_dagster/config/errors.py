"""Rendering validation errors as `path: value: what is allowed`, never showing a secret."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    SecretStr,
    ValidationError,
)

from data_puller_dagster.config.base import _join


# ----------------------------------------------------------------------------------- error rendering
def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue
        else:
            out = _join(out, part)
    return out or "<root>"


def _unwrap(tp: Any) -> list[Any]:
    """Candidate inner types of an annotation (through Optional, list, dict, Annotated)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    if origin in (list, tuple, set):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    if origin is dict:
        return _unwrap(typing.get_args(tp)[1])
    return [tp]


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    if root is None:
        from data_puller_dagster.config.app import AppConfig  # the root model imports this module

        root = AppConfig
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        inner = [t for t in _unwrap(model.model_fields[part].annotation) if isinstance(t, type)]
        models = [t for t in inner if issubclass(t, BaseModel)]
        model = models[0] if models else None
    return model


def _is_secret(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> bool:
    """Is this location (or a key above it) a SecretStr field? Its value must never be printed."""
    for i, part in enumerate(loc):
        model = _model_at(loc[:i], root)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            if SecretStr in _unwrap(model.model_fields[part].annotation):
                return True
    return False


_KINDS = {bool: "a boolean", int: "a number", float: "a number", dict: "a mapping", list: "a list"}


def _secret_problem(path: str, e: Any, msg: str) -> str:
    """`path: problem` for a secret field: the kind of value, never the value itself."""
    if e["type"] == "value_error":  # our own validators, which never echo the key
        return f"{path}: (secret, not shown) {msg}"
    kind = _KINDS.get(type(e.get("input")), f"a {type(e.get('input')).__name__}")
    return (
        f"{path}: (secret, not shown) {kind} is invalid: a secret must be a string; quote it in YAML, "
        "or better, take it from the environment with ${VAR}"
    )


def render_errors(
    err: ValidationError, root: type[BaseModel] | None = None, prefix: tuple[Any, ...] = ()
) -> list[str]:
    """`path: problem` lines for a validation error of AppConfig, or of `root` (a plug-in's options
    model) found at `prefix` in the file (e.g. ("destinations", "live"))."""
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = _loc_path(prefix + loc)
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] not in ("extra_forbidden", "missing") and _is_secret(loc, root):
            problems.append(_secret_problem(path, e, msg))
        elif e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1], root)
            allowed = f"; allowed keys here: {', '.join(parent.model_fields)}" if parent else ""
            problems.append(f"{path}: unknown key (check its spelling){allowed}")
        elif e["type"] == "missing":
            problems.append(f"{path}: required key is missing")
        elif e["type"] == "value_error":
            problems.append(msg if path == "<root>" else f"{path}: {msg}")
        elif e["type"].startswith("date_"):
            problems.append(f"{path}: {e.get('input')!r} is invalid: {msg}; write a real calendar day as YYYY-MM-DD")
        else:
            problems.append(f"{path}: {e.get('input')!r} is invalid: {msg}")
    return problems
