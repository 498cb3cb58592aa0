"""Reading data_puller.yaml: `${VAR}` interpolation, the YAML loader, parse_config and load_config."""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from data_puller_dagster.config.app import AppConfig
from data_puller_dagster.config.base import DEFAULT_CONFIG_PATH, ConfigError, _join
from data_puller_dagster.config.errors import render_errors

# ------------------------------------------------------------------------------------- interpolation
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, env: typing.Mapping[str, str] | None = None, path: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string of a parsed YAML tree."""
    env = os.environ if env is None else env
    if isinstance(node, dict):
        return {k: interpolate(v, env, _join(path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value not in (None, ""):
            return value
        if default is not None:
            return default
        raise ConfigError(
            [f"{path or '<root>'}: environment variable {name} is not set; export it or write ${{{name}:-default}}"]
        )

    return _VAR.sub(repl, node)





# -------------------------------------------------------------------------------------------- loading
class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader whose impossible dates (2024-02-30) stay strings, so validation reports them with
    their key path like any other bad value, instead of PyYAML raising a bare ValueError."""


def _timestamp_or_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        return loader.construct_scalar(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


def config_path() -> Path:
    return Path(os.environ.get("DATA_PULLER_CONFIG") or DEFAULT_CONFIG_PATH)


def parse_config(data: Any, source: str = "configuration", env: typing.Mapping[str, str] | None = None) -> AppConfig:
    """Validate an already-parsed YAML mapping. Raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of keys, got {type(data).__name__}"], source)
    try:
        data = interpolate(data, env)
    except ConfigError as e:
        raise ConfigError(e.problems, source) from None
    try:
        cfg = AppConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(render_errors(e), source) from None
    # Plug-in options are validated by each type's own model, which needs its module imported.
    from data_puller_dagster.io.registry import plugin_problems
    from data_puller_dagster.transform.llm_features import feature_problems

    problems = plugin_problems(cfg) + feature_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_config(path: str | Path | None = None) -> AppConfig:
    """Read and validate the config file (DATA_PULLER_CONFIG or ./data_puller.yaml)."""
    p = Path(path) if path is not None else config_path()
    if not p.exists():
        raise ConfigError(
            [f"{p}: file not found; create it (see README) or point DATA_PULLER_CONFIG at your config"],
            str(p),
        )
    try:
        data = yaml.load(p.read_text(), Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(p)) from None
    return parse_config(data, str(p))
