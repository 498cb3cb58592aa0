"""`routes:` and `destinations:`: where each table goes (declarative: never code in YAML)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from data_puller_dagster import plugins
from data_puller_dagster.config.base import TF, AssetClass, Layer, _installed_type, _Model
from data_puller_dagster.symbols import check_name, check_symbol


# -------------------------------------------------------------------------------------------- routes
class RowFilter(_Model):
    """A declarative row condition (never evaluated as code)."""

    column: str
    op: Literal["eq", "ne", "gt", "ge", "lt", "le", "in", "not_in", "notnull", "isnull"]
    value: Any = None

    @field_validator("column")
    @classmethod
    def _col(cls, v: str) -> str:
        return check_name(v, "column name")

    @model_validator(mode="after")
    def _value(self) -> RowFilter:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value, got {self.value!r}")
        if self.op not in ("notnull", "isnull", "in", "not_in") and self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        return self


class RouteMatch(_Model):
    """Which asset outputs a route takes. Omitted fields match everything."""

    layer: list[Layer] | None = None
    feed: list[str] | None = None
    asset_class: list[AssetClass] | None = None
    timeframe: list[TF] | None = None
    symbol: list[str] | None = None
    realtime: bool | None = Field(
        None, description="true: only live (streamed) tables (layer live); false: only batch tables."
    )

    @field_validator("symbol")
    @classmethod
    def _symbols(cls, v: list[str] | None) -> list[str] | None:
        for s in v or []:
            check_symbol(s)
        return v


class TransformSpec(BaseModel):
    """A route's named transform (registered in `data_puller_dagster.transforms`) and its options.

    Written `transform: backtest_ohlcv` or `transform: {type: columns, keep: [open, close]}`; the
    options are validated by the transform type's own model (never code in YAML)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("type")
    @classmethod
    def _installed(cls, v: str) -> str:
        return _installed_type(plugins.TRANSFORM_GROUP, v)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RouteConfig(_Model):
    id: str
    match: RouteMatch = Field(default_factory=RouteMatch)
    destinations: list[str] = Field(
        min_length=1, description="Destination instances (names under destinations:) or type names."
    )
    filter: list[RowFilter] = Field(default_factory=list)
    transform: TransformSpec | None = Field(None, description="A registered transform applied before writing.")
    batch_size: int | None = Field(None, ge=1, description="Rows per message batch for stream destinations.")
    in_progress: bool = Field(
        False,
        description="Live tables only: also send in-progress (is_final false) candle updates to this route's "
        "stream destinations. Stores never get them.",
    )
    enabled: bool = True
    on_error: Literal["fail", "warn"] = "fail"

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_name(v, "route id")

    @field_validator("destinations")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return [check_name(d, "destination name") for d in v]


def _default_routes() -> list[RouteConfig]:
    return [RouteConfig(id="default", destinations=["parquet", "duckdb"])]



class DestinationSpec(BaseModel):
    """One named destination instance: its `type` and that type's options.

    The options are validated by the type's own pydantic model (see io/registry.py) once the type's
    module is imported, with the same `path: value: what is allowed` errors as the rest of the file."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @field_validator("type")
    @classmethod
    def _installed(cls, v: str) -> str:
        return _installed_type(plugins.DESTINATION_GROUP, v)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
