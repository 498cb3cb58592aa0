"""`storage:`: where the built-in destinations keep their data by default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    SecretStr,
    field_validator,
)

from data_puller_dagster.config.base import _Model
from data_puller_dagster.symbols import check_name


# ------------------------------------------------------------------------------------------- storage
class StorageConfig(_Model):
    """Where each destination keeps its data. Relative paths are relative to the working directory."""

    data_dir: Path = Field(default_factory=lambda: Path(os.environ.get("DATA_PULLER_HOME") or "data"))
    parquet_root: str | None = Field(None, description="Local path or fsspec URL; default <data_dir>/parquet")
    duckdb_path: Path | None = Field(None, description="Default <data_dir>/warehouse.duckdb")
    postgres_url: SecretStr | None = Field(
        default_factory=lambda: SecretStr(os.environ["DATA_PULLER_POSTGRES_URL"])
        if os.environ.get("DATA_PULLER_POSTGRES_URL")
        else None
    )
    postgres_schema_prefix: str = Field("", description="Prefix for Postgres schema names (one per feed).")
    csv_dir: Path | None = Field(None, description="Default <data_dir>/csv")
    jsonl_dir: Path | None = Field(None, description="Default <data_dir>/jsonl")
    datasets_dir: Path | None = Field(None, description="Default <data_dir>/datasets")
    primary: str = Field(
        "parquet", description="The store inputs are read from: a destination instance or store type name."
    )

    @field_validator("postgres_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, v: Any) -> Any:
        return None if v in ("", None) else v

    @field_validator("postgres_schema_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_name(v, "postgres_schema_prefix") if v else v

    def _under(self, p: Path | None, default: str) -> Path:
        return (p if p is not None else self.data_dir / default).expanduser().absolute()

    @property
    def parquet_location(self) -> str:
        if self.parquet_root and "://" in self.parquet_root:
            return self.parquet_root.rstrip("/")
        return str(self._under(Path(self.parquet_root) if self.parquet_root else None, "parquet"))

    @property
    def duckdb_file(self) -> Path:
        return self._under(self.duckdb_path, "warehouse.duckdb")

    @property
    def csv_location(self) -> Path:
        return self._under(self.csv_dir, "csv")

    @property
    def jsonl_location(self) -> Path:
        return self._under(self.jsonl_dir, "jsonl")

    @property
    def datasets_location(self) -> Path:
        return self._under(self.datasets_dir, "datasets")
