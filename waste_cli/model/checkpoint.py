"""The checkpoint format, defined once: what `train` writes and every other command reads.

A checkpoint is one plain dict of tensors, numbers, strings and lists, so that it loads with
`torch.load(path, weights_only=True)`: no pickled code is ever executed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import torch
from pydantic import Field, field_validator, model_validator

from waste_cli.core.errors import ModelError, WasteclsError
from waste_cli.core.files import atomic_path
from waste_cli.model.metadata import ModelMetadata, check_metadata

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "ResumeCheckpoint", "TrainState",
           "is_wastecls_checkpoint", "load_checkpoint", "load_tensors", "peek_checkpoint",
           "save_checkpoint"]

CHECKPOINT_FORMAT = "wastecls-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointSchema(ModelMetadata):
    arch: str = Field(min_length=1)
    model: dict[str, Any]
    familiar_features: Any = None

    @field_validator("familiar_features")
    @classmethod
    def _bank(cls, bank: Any) -> Any:
        if bank is not None and not (isinstance(bank, torch.Tensor) and bank.ndim == 2
                                     and bank.is_floating_point()
                                     and bool(torch.isfinite(bank).all())):
            raise ValueError("must be a finite 2-D float tensor")
        return bank

    @model_validator(mode="after")
    def _calibrated_whole(self) -> CheckpointSchema:
        if (self.calibration is None) != (self.familiar_features is None):
            raise ValueError("calibration and familiar_features come together")
        return self

    @field_validator("model")
    @classmethod
    def _tensors(cls, model: dict[str, Any]) -> dict[str, Any]:
        if not model or not all(isinstance(v, torch.Tensor) for v in model.values()):
            raise ValueError("must be a state dict of tensors")
        return model


class TrainState(TypedDict):
    """Where training stands after an epoch: enough to continue exactly."""

    epoch: int  # epochs finished
    updates: int  # optimizer steps taken
    best: float | None  # best value of --monitor so far
    best_val_loss: NotRequired[float]  # its validation loss (breaks ties)
    best_epoch: int
    bad_epochs: int  # epochs since the last improvement (early stopping)
    skipped: list[str]  # unreadable training images found so far


class Checkpoint(TypedDict):
    """best.pt: everything evaluate, predict and export need, and nothing else."""

    format: NotRequired[str]  # CHECKPOINT_FORMAT, set by save_checkpoint
    version: NotRequired[int]
    arch: str  # timm model name
    classes: list[str]  # index order of the logits
    data_config: dict[str, Any]  # input size, mean, std, interpolation, crop: the preprocessing
    crop: NotRequired[dict[str, Any]]  # how prepare cut the training images: square, zoom, size
    model: dict[str, torch.Tensor]  # state dict (the EMA weights when --ema)
    calibration: NotRequired[dict[str, Any]]  # metadata.Calibration: temperature, threshold...
    familiar_features: NotRequired[torch.Tensor]  # float16 [rows, features]: confidence/fit.py
    metrics: dict[str, Any]  # the epoch's metrics.csv row
    epoch: int
    options: dict[str, Any]  # options.options_record: the run's resolved TrainOptions
    wastecls_version: str


class ResumeCheckpoint(Checkpoint):
    """last.pt: a checkpoint plus what it takes to continue training exactly."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]  # absent after --epochs changed: the schedule is re-planned
    ema: dict[str, Any]
    scaler: dict[str, Any]
    train_state: TrainState
    wise_anchor: dict[str, Any]  # --wise-ft: the weights before fine-tuning (absent without)


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temp file + rename): a crash never leaves half a file."""
    checkpoint = {**checkpoint, "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
    try:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
    except RuntimeError as exc:  # torch reports a failed write (a full disk) as RuntimeError
        raise WasteclsError(
            f"Cannot write the checkpoint {path} ({exc}). The disk is probably full or "
            "read-only: free some space or write elsewhere. The previous version of the file, if "
            "any, was kept."
        ) from None


def load_tensors(path: Path, mmap: bool = False) -> Any:
    """`torch.load` with weights_only=True (tensors and plain data, never code) and quiet:
    torch warns about the pickle protocol of files it then refuses, which callers report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def is_wastecls_checkpoint(data: Any) -> bool:
    """Whether what a file held is a checkpoint `wastecls train` wrote (the one test)."""
    return isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT


def peek_checkpoint(path: Path) -> dict[str, Any] | None:
    """A wastecls checkpoint's contents, memory-mapped (reading a field costs no full load), or
    None for any other file: what `--weights` looks into before the weights are loaded."""
    if path.suffix == ".safetensors":  # plain weights: never a checkpoint
        return None
    try:
        data = load_tensors(path, mmap=True)
    except Exception:  # not a zip file torch reads: the weights loader says what it is
        return None
    return data if is_wastecls_checkpoint(data) else None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a wastecls checkpoint safely (weights_only: tensors and plain data, never code)."""
    if not path.is_file():
        raise ModelError(f"Checkpoint {path} does not exist or is not a file.")
    try:
        data = load_tensors(path)
    except Exception as exc:  # truncated zip, pickle that needs code, not a torch file ...
        raise ModelError(f"Cannot read {path} as a wastecls checkpoint ({type(exc).__name__}). "
                         "Give a best.pt or last.pt written by `wastecls train`, or an .onnx "
                         "file written by `wastecls export`.") from None
    if not is_wastecls_checkpoint(data):
        raise ModelError(f"{path} is not a wastecls checkpoint (train writes best.pt/last.pt).")
    if not isinstance(data.get("version", 0), int) or data.get("version", 0) > CHECKPOINT_VERSION:
        raise ModelError(f"{path} was written by a newer wastecls; upgrade to read it.")
    check_metadata(data, path, CheckpointSchema)
    return data  # type: ignore[return-value]
