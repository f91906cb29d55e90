"""The features `audit` reads: a model's pooled features for every photo, from a model that
did not learn the labels being checked where possible.

Three kinds of model give them:
- an exported `.onnx` (the built-in model by default): a copy that also outputs its features,
  on onnxruntime (the fastest on a CPU);
- a `best.pt` checkpoint, on torch;
- `--arch A --weights FILE`: plain ImageNet weights, which never saw any label of the data.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from waste_cli.confidence.calibrate import write_features_copy
from waste_cli.confidence.graph import FEATURES
from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError
from waste_cli.core.policy import default_batch_size
from waste_cli.data.batching import EvalImages, run_labelled
from waste_cli.model.backends import OnnxRunner, Runner
from waste_cli.model.builtin import find_model, model_name

__all__ = ["FeatureSource", "FeaturesRead", "MirrorAveraged", "read_features"]


@dataclass(frozen=True)
class FeatureSource:
    """Which model gives the features, and how it runs."""

    model: Path | None = None  # .onnx or .pt; None with no arch: the built-in model
    arch: str | None = None  # with `weights`: ImageNet features of this timm architecture
    weights: Path | None = None
    img_size: int | None = None  # torch models only: the input size (default: the model's)
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    flip: bool = False  # the mean of the photo's and its mirror image's features


class MirrorAveraged:
    """A runner whose `features` are the mean of an image's and its mirror image's (twice the
    time, steadier features: bench/bench_audit.py)."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.name, self.classes = runner, runner.name, runner.classes
        self.data_config, self.on_cpu, self.crop = runner.data_config, runner.on_cpu, runner.crop
        self.calibration = runner.calibration

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.runner(images)
        mirrored = self.runner(np.ascontiguousarray(images[..., ::-1]))[FEATURES]
        return {**outputs, FEATURES: (outputs[FEATURES] + mirrored) / 2}

    def for_worker(self, threads: int) -> MirrorAveraged:
        return MirrorAveraged(self.runner.for_worker(threads))


@dataclass
class FeaturesRead:
    features: np.ndarray  # float32 [images, dims], rows of unit length; NaN rows: unreadable
    unreadable: list[int]
    described: str  # which model, for the report
    input_size: int


def _torch_runner(source: FeatureSource, reporter: Reporter) -> tuple[Runner, str]:
    import torch

    from waste_cli.core.runtime import resolve_device
    from waste_cli.data.transforms import data_config
    from waste_cli.model.backends import TorchRunner
    from waste_cli.model.checkpoint import load_checkpoint
    from waste_cli.model.factory import create_model, model_from_checkpoint
    from waste_cli.model.heads import FeatureClassifier

    device = resolve_device(source.device)
    if source.arch is not None:
        model = create_model(source.arch, 2, pretrained=source.weights is None,
                             weights=source.weights)
        config = data_config(model, source.img_size)
        described = f"{source.arch} ({source.weights.name if source.weights else 'pretrained'})"
    else:
        assert source.model is not None
        checkpoint = load_checkpoint(source.model)
        model = model_from_checkpoint(checkpoint)
        config = dict(checkpoint["data_config"])
        if source.img_size:
            config["input_size"] = [3, source.img_size, source.img_size]
        described = model_name(source.model)
    network = FeatureClassifier(model).to(device, memory_format=torch.channels_last)
    reporter.info(f"features: {described} at {config['input_size'][-1]} px on {device}")
    return TorchRunner(network, ["?", "?"] if source.arch else checkpoint["classes"], config,
                       device, True), described


def read_features(samples: list[tuple[Path, int]], source: FeatureSource,
                  reporter: Reporter) -> FeaturesRead:
    """Every sample's features (evaluation preprocessing), NaN rows for unreadable ones."""
    if source.arch is None and source.weights is not None:
        raise ConfigError("--weights gives ImageNet weights for --arch; give --arch too (or "
                          "--model for a trained model).")
    with tempfile.TemporaryDirectory(prefix="wastecls-audit-") as tmp:
        if source.arch is None:
            model = find_model(source.model, reporter, ".onnx")
        if source.arch is None and model.suffix.lower() == ".onnx":
            if source.img_size:
                raise ConfigError("--img-size applies to a .pt model or --arch; an .onnx "
                                  "file runs at the size it was exported at.")
            probe = Path(tmp) / "features.onnx"
            write_features_copy(model, probe)
            runner: Runner = OnnxRunner(probe)
            described = model_name(model)
            reporter.info(f"features: {described} at {runner.data_config['input_size'][-1]} "
                          "px (onnxruntime)")
        else:
            runner, described = _torch_runner(
                source if source.arch else FeatureSource(**{**source.__dict__, "model": model}),
                reporter)
        if source.flip:
            runner = MirrorAveraged(runner)
        batch = source.batch_size or default_batch_size(runner.name, runner.on_cpu)
        outputs, bad = run_labelled(runner, EvalImages(samples, runner.data_config), batch,
                                    source.workers, reporter, f"features ({runner.name})")
    features = outputs[FEATURES].astype(np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return FeaturesRead(features / np.maximum(norms, 1e-12), sorted(bad), described,
                        int(runner.data_config["input_size"][-1]))
