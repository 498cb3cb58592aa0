"""Destinations: Parquet (Hive layout, any fsspec root), DuckDB, Postgres, CSV and JSONL files."""

from data_puller_dagster.io.destinations.base import Destination

__all__ = ["Destination"]
