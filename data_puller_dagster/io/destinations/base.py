"""The destination contracts every plug-in implements, and the shape of a plug-in.

Two kinds, because a store and a stream promise different things:

- a **store** (`kind = "store"`: Parquet, DuckDB, Postgres, CSV/JSONL, InfluxDB, ...) replaces whole
  partitions (symbol x UTC day) and reads a slice back in one query or one dataset scan; the router
  reads inputs from the primary store;
- a **stream** (`kind = "stream"`: Redis streams, RabbitMQ, Kafka, ...) publishes candles to readers
  elsewhere; it is never read back by the pipeline, so it only needs `publish`.

A plug-in is a class registered under the entry-point group `data_puller_dagster.destinations`
(see registry.py) that carries its own pydantic `Options` model and builds itself with
`from_options(options, storage)`. Keeping the contract this small lets the router treat very different
stores alike and lets a third-party package add one without changing this repository.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import pandas as pd
from pydantic import BaseModel, ConfigDict

from data_puller_dagster.io.tables import PartitionSlice, TableRef

if TYPE_CHECKING:
    from data_puller_dagster.config import StorageConfig

DestinationKind = Literal["store", "stream"]


class DestinationOptions(BaseModel):
    """Base of every destination type's options: unknown keys are config errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(DestinationOptions):
    """For types configured entirely by `storage:` (or needing nothing)."""


@runtime_checkable
class Destination(Protocol):
    """A store the router can write a table slice to and read it back from."""

    name: str

    def write(self, table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> dict[str, Any]:
        """Replace every partition of `part` with the rows of `df` (partitions without rows end up empty).

        Atomic per partition and idempotent. Returns metadata: at least `rows` and `location`.
        """
        ...

    def read(self, table: TableRef, part: PartitionSlice) -> pd.DataFrame:
        """All rows of the slice with the dtypes they were written with; an empty frame when none."""
        ...


@runtime_checkable
class StreamDestination(Protocol):
    """A stream the router publishes table slices to (never read back by the pipeline)."""

    name: str

    def publish(
        self, table: TableRef, df: pd.DataFrame, part: PartitionSlice, batch_size: int | None = None
    ) -> dict[str, Any]:
        """Publish every row of `df` (already checked against the table's contract), in batches of
        `batch_size` rows where the transport batches (None: the type's default).

        Publishing the same slice again must not make a consumer see a candle twice (each type says
        how: deterministic message ids, keys, or stream ids). Returns metadata: at least `rows` and
        `location` (no secrets).
        """
        ...

    def close(self) -> None:
        """Release connections (called when the router is done)."""
        ...


class DestinationPlugin(Protocol):
    """What an entry point of group `data_puller_dagster.destinations` must load to."""

    kind: ClassVar[DestinationKind]
    Options: ClassVar[type[DestinationOptions]]

    @classmethod
    def from_options(cls, options: Any, storage: StorageConfig) -> Destination | StreamDestination: ...
