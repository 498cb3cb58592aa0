"""Exception types of the storage layer.

Each names the table, slice, route or destination involved and what to do, because a storage error is
usually read in the Dagster UI by someone who did not write the route that failed.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by the router and its destinations."""


class FrameContractError(StorageError, ValueError):
    """A frame handed to a destination breaks the write contract (missing `symbol`/`ts`, rows outside
    the slice, unsupported dtype)."""


class SchemaDriftError(StorageError):
    """The frame's columns or types differ from the table already in the store."""


class LockTimeoutError(StorageError):
    """The DuckDB file stayed locked by another process for longer than the configured timeout."""


class RoutingError(StorageError, ValueError):
    """The routes in data_puller.yaml cannot serve the asset graph (raised when definitions load)."""


class DestinationWriteError(StorageError):
    """A route's destination failed to write (raised for routes with `on_error: fail`)."""
