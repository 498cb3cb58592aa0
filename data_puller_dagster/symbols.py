"""Instrument symbols and their path-safe partition keys.

A symbol ends up as a Dagster partition key, a directory name (`symbol=EURUSD`), and an SQL value, so
it is validated against one strict pattern before it is used anywhere. The display form (`EUR/USD`)
stays in the data; the key (`EURUSD`) is what paths and partitions use.
"""

from __future__ import annotations

import re

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{1,15}([/.\-][A-Z0-9]{1,15})?$")
KEY_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,31}$")
# Names that become schema/table/route identifiers (feeds, route ids, asset names).
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class InvalidSymbolError(ValueError):
    """A symbol that cannot safely become a partition key, a path or an SQL value."""


def check_symbol(symbol: str) -> str:
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise InvalidSymbolError(
            f"{symbol!r} is not a valid symbol; use upper-case letters and digits, optionally one "
            "'/', '.' or '-' separator (e.g. BTCUSDT, EUR/USD, BRK.B)"
        )
    return symbol


def partition_key(symbol: str) -> str:
    """Path-safe partition key of a display symbol: `EUR/USD` -> `EURUSD`, `BTCUSDT` -> `BTCUSDT`."""
    key = check_symbol(symbol).replace("/", "")
    if not KEY_PATTERN.match(key):  # pragma: no cover - implied by SYMBOL_PATTERN
        raise InvalidSymbolError(f"symbol {symbol!r} yields an unsafe partition key {key!r}")
    return key


def check_key(key: str) -> str:
    """Validate a partition key that arrives from outside (a run tag, a CLI argument, a path)."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise InvalidSymbolError(f"{key!r} is not a valid symbol partition key (expected e.g. EURUSD)")
    return key


def check_name(name: str, what: str = "name") -> str:
    """Validate a feed name, route id or other identifier that becomes a path or SQL identifier."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"{name!r} is not a valid {what}; use lower-case letters, digits and '_', starting with a "
            "letter, at most 40 characters"
        )
    return name
