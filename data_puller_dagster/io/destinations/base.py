"""The destination protocol every store implements.

A destination replaces whole partitions (symbol x UTC day) and reads a slice back in one query or one
dataset scan. Keeping the contract this small lets the router treat five very different stores alike.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import pandas as pd

from data_puller_dagster.io.tables import PartitionSlice, TableRef


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
