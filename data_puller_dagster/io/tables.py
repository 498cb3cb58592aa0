"""What the router writes and reads: a table of a feed, and a slice of its (symbol x UTC day) partitions.

The IO manager builds these from asset metadata and partition keys; destinations only ever see these
two values plus a frame, so every store agrees on what "replace this partition" means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from data_puller_dagster.config import LAYERS
from data_puller_dagster.symbols import check_key, check_name, check_symbol, partition_key


@dataclass(frozen=True)
class TableRef:
    """One asset's table: schema `feed`, table `name`.

    `primary_key` is ("symbol", "ts") for layers with one row per candle (normalized, derived,
    enriched); None where duplicates are legitimate (raw, quarantine) or meaningless (dataset).
    """

    feed: str
    name: str
    layer: str
    asset_class: str
    timeframe: str | None
    primary_key: tuple[str, ...] | None

    def __post_init__(self) -> None:
        check_name(self.feed, "feed name")
        check_name(self.name, "table name")
        if self.layer not in LAYERS:
            raise ValueError(f"layer {self.layer!r} of table {self.name!r} is not one of {', '.join(LAYERS)}")
        if self.primary_key is not None:
            for c in self.primary_key:
                check_name(c, "primary key column")

    @property
    def qualified(self) -> str:
        return f"{self.feed}.{self.name}"


@dataclass(frozen=True)
class PartitionSlice:
    """Every symbol in `symbols` x every UTC day in [start, end]: the unit a write replaces."""

    symbols: Mapping[str, str]  # partition key -> display symbol
    start: date
    end: date
    _frozen: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("a partition slice needs at least one symbol")
        for key, display in self.symbols.items():
            check_key(key)
            if partition_key(check_symbol(display)) != key:
                raise ValueError(
                    f"symbol {display!r} has partition key {partition_key(display)!r}, not {key!r}; "
                    "build slices from FeedConfig.symbol_keys"
                )
        if self.end < self.start:
            raise ValueError(f"slice end {self.end} is before its start {self.start}")
        # A plain dict is mutable and unhashable; keep an immutable copy so the slice is a value.
        object.__setattr__(self, "_frozen", tuple(sorted(self.symbols.items())))
        object.__setattr__(self, "symbols", dict(self._frozen))

    def __hash__(self) -> int:
        return hash((self._frozen, self.start, self.end))

    @property
    def keys(self) -> list[str]:
        return sorted(self.symbols)

    @property
    def displays(self) -> list[str]:
        return [self.symbols[k] for k in self.keys]

    @property
    def dates(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def start_ts(self) -> datetime:
        return datetime.combine(self.start, time(0), tzinfo=UTC)

    @property
    def end_ts(self) -> datetime:
        """Exclusive end: midnight after the last day."""
        return datetime.combine(self.end + timedelta(days=1), time(0), tzinfo=UTC)

    def restrict(self, displays: list[str]) -> PartitionSlice | None:
        """The same days for only the given display symbols (None if none of them is in the slice)."""
        keep = {k: d for k, d in self.symbols.items() if d in set(displays)}
        return PartitionSlice(keep, self.start, self.end) if keep else None

    def describe(self) -> str:
        days = str(self.start) if self.start == self.end else f"{self.start}..{self.end}"
        return f"{','.join(self.keys)} x {days}"

    def without(self, keep: frozenset[tuple[str, date]]) -> list[PartitionSlice]:
        """The slice minus the (symbol key, day) partitions in `keep`, as one slice per symbol and
        contiguous run of remaining days (each is then a unit the stores replace atomically)."""
        out: list[PartitionSlice] = []
        for key in self.keys:
            run: list[date] = []
            for d in [*self.dates, None]:
                if d is not None and (key, d) not in keep:
                    run.append(d)
                    continue
                if run:
                    out.append(PartitionSlice({key: self.symbols[key]}, run[0], run[-1]))
                    run = []
        return out


@dataclass(frozen=True)
class PartialOutput:
    """An asset output that replaces only some partitions of its run's slice.

    Why: a run covers a range of days, but a day whose provider answer was rejected (see
    transform.acceptance) must keep its stored version while the good days of the same run are stored.
    `frame` holds the new rows; the (symbol key, day) partitions in `keep` are left exactly as stored.
    """

    frame: Any
    keep: frozenset[tuple[str, date]]
