"""The schema of what a model file says about itself (class names, preprocessing, crops, how far
its confidence can be trusted), checked
once when a checkpoint or an exported file is opened. A leaf: no torch, so an ONNX model opens
without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from waste_cli.core.errors import ModelError

__all__ = [
    "MAX_INPUT_SIDE",
    "META_KEY",
    "Calibration",
    "DataConfigSchema",
    "ModelMetadata",
    "check_metadata",
]

MAX_INPUT_SIDE = 4096  # pixels: a model file declaring more is refused, not allocated


META_KEY = "wastecls"  # the ONNX metadata entry that holds a model's description, as JSON


class DataConfigSchema(BaseModel):
    """The preprocessing a model was trained with (timm's data config), as a file declares it."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float = Field(gt=0, le=4)

    @field_validator("input_size")
    @classmethod
    def _sane_size(cls, size: tuple[int, int, int]) -> tuple[int, int, int]:
        if size[0] not in (1, 3) or not all(1 <= side <= MAX_INPUT_SIDE for side in size[1:]):
            raise ValueError(f"must be [channels 1 or 3, height, width] with sides from 1 to "
                             f"{MAX_INPUT_SIDE} px")
        return size

    @field_validator("std")
    @classmethod
    def _positive(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(std) <= 0:
            raise ValueError("must be positive")
        return std


class Calibration(BaseModel):
    """What a model knows about its own confidence, fitted on data it was not trained on
    (`train` at its end, or `wastecls calibrate`): probabilities are softmax(logits /
    temperature); a photo whose unfamiliarity score exceeds `unfamiliar_threshold` does not look
    like the training photos."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    temperature: float = Field(gt=0, le=1000)
    method: Literal["knn-cosine"]  # the unfamiliarity score (see confidence/fit.py)
    neighbours: int = Field(ge=1, le=4096)
    unfamiliar_threshold: float = Field(ge=0, le=2)  # a cosine distance
    familiar_share: float = Field(gt=0, le=1)  # of validation photos that pass unflagged
    min_confidence: float = Field(ge=0, le=1)  # the low-confidence flag's default


class ModelMetadata(BaseModel):
    """What every model file carries (a checkpoint, and the metadata of an exported file)."""

    model_config = ConfigDict(extra="allow")
    classes: list[str] = Field(min_length=1)
    data_config: DataConfigSchema
    crop: dict[str, Any] = Field(default_factory=dict)
    calibration: Calibration | None = None  # absent: an older model, temperature 1, no flag

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        twice = sorted({c for c in classes if classes.count(c) > 1})
        if twice:
            raise ValueError(f"names {', '.join(twice)} more than once")
        return classes


def check_metadata(data: Any, path: Path, schema: type[ModelMetadata] = ModelMetadata) -> None:
    """Refuse a model file whose self-description does not hold: one paragraph naming the file
    and the fields, never a crash later."""
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'the whole'}: "
                           f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()[:5])
        raise ModelError(f"Cannot use the model {path}: its description is not valid ({fields}). "
                         "Give a best.pt written by `wastecls train` or an .onnx file written "
                         "by `wastecls export`.") from None
