"""Typed final-pipeline config: which sweeps feed which table rows, how many seeds, where outputs go."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from robust_core.config import ConfigError, _format_errors, read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackingSpec(_Strict):
    uri: str
    experiment: str = "robust-sweep"


class RowSpec(_Strict):
    label: str
    sweep: str  # name of the sweep (its MLflow parent run) the best configuration is taken from


class ColumnSpec(_Strict):
    label: str
    metric: str = "test_acc"  # a final metric of the retrain runs
    scale: float = 100.0  # accuracy fraction -> percent


class TableSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    title: str
    rows: list[RowSpec] = Field(min_length=1)
    columns: list[ColumnSpec] = Field(default_factory=lambda: [ColumnSpec(label="test accuracy (%)")])
    higher_is_better: bool = True
    decimals: int = Field(2, ge=0, le=6)


class ResourcesSpec(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class PipelineSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = "results"
    tracking: TrackingSpec
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)  # 5, as the papers do
    vary: list[Literal["train.seed", "data.split_seed"]] = Field(
        default_factory=lambda: ["train.seed", "data.split_seed"])  # what each seed changes
    selection_metric: str = "val_acc"  # read from the sweep's trials; never a test metric
    selection_mode: Literal["max", "min"] = "max"
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tables: list[TableSpec] = Field(min_length=1)

    @field_validator("selection_metric")
    @classmethod
    def _no_test_selection(cls, v: str) -> str:
        if "test" in v:
            raise ValueError(f"{v!r} is a test-set metric; select on a validation metric such as val_acc")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _unique_tables(self) -> "PipelineSpec":
        names = [t.name for t in self.tables]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"table names must be unique; repeated: {', '.join(sorted(dup))}")
        return self


def _absolutise(raw: dict[str, Any]) -> dict[str, Any]:
    from sweeps.spec import resolve_sqlite

    raw = dict(raw)
    tr = dict(raw.get("tracking") or {})
    if isinstance(tr.get("uri"), str):
        tr["uri"] = resolve_sqlite(tr["uri"], Path.cwd())
        raw["tracking"] = tr
    if isinstance(raw.get("output_dir"), str):
        raw["output_dir"] = str(Path(raw["output_dir"]).expanduser().resolve())
    return raw


def load_pipeline_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineSpec:
    from robust_core.config import deep_merge

    raw = deep_merge(read_yaml(path), overrides or {})
    try:
        return PipelineSpec.model_validate(_absolutise(raw))
    except ValidationError as e:
        raise ConfigError(_format_errors(e), str(path)) from None
