"""Model runners: one interface over a PyTorch checkpoint and an ONNX file.

Every runner carries the class names and the data config it was trained with, so callers
preprocess exactly as training did and never re-derive anything. Runners take and return numpy
arrays, and torch is imported only when a PyTorch model is run: an ONNX model starts without it.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from waste_cli.console import Reporter
from waste_cli.errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = ["OnnxRunner", "Runner", "TorchRunner", "find_model", "load_runner"]

ONNX_META_KEY = "wastecls"


class Runner(Protocol):
    """Images (normalised float32 NCHW numpy array) in, float32 logits (numpy) out."""

    name: str
    classes: list[str]
    data_config: dict[str, Any]
    default_batch_size: int
    on_cpu: bool

    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def for_worker(self, threads: int) -> Runner:
        """The same model for a worker process that runs it with `threads` threads."""
        ...


class TorchRunner:
    """A PyTorch classifier in eval mode under torch.inference_mode."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, classes: list[str], data_config: dict[str, Any],
                 device: torch.device, channels_last: bool) -> None:
        """Wrap a model already on `device` in the memory format `channels_last` says."""
        self.classes, self.data_config, self.device = list(classes), dict(data_config), device
        self.model, self.channels_last = model.eval(), channels_last
        self.on_cpu = device.type == "cpu"
        self.default_batch_size = 4 if self.on_cpu else 32

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], device: torch.device) -> TorchRunner:
        """channels_last, in batches of 4 on a CPU: the fastest end to end on a 2-core CPU
        (BENCHMARKS.md), although contiguous tensors win model-only timings there."""
        import torch

        from waste_cli.models import model_from_checkpoint

        model = model_from_checkpoint(checkpoint).to(device, memory_format=torch.channels_last)
        return cls(model, checkpoint["classes"], checkpoint["data_config"], device, True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        from waste_cli.runtime import to_device

        with torch.inference_mode():
            batch = to_device(torch.from_numpy(images), self.device, self.channels_last)
            return self.model(batch).float().cpu().numpy()

    def for_worker(self, threads: int) -> TorchRunner:
        """Itself: a forked worker shares the weights; torch's threads are set per process."""
        return self


class OnnxRunner:
    """An exported model on onnxruntime; class names and preprocessing from its metadata."""

    name = "onnxruntime"
    # One single-threaded session per core runs small batches fastest, end to end (fp32 and
    # int8 measured at batch 1-16 on 2,527 photos, BENCHMARKS.md); workers get them in tasks
    # of 16 images (inference.TASK_IMAGES), so small batches cost no extra round trips.
    default_batch_size = 2
    on_cpu = True

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path, self.threads = path, threads
        # An unoptimised session checks the file and reads the metadata in a few ms; the
        # optimised one (100+ ms to build) opens where the model runs, which with worker
        # processes is only in them.
        probe = self._open(optimize=False)
        try:
            info = json.loads(probe.get_modelmeta().custom_metadata_map[ONNX_META_KEY])
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{path} has no wastecls metadata ({exc}). Export it with "
                             "`wastecls export --onnx`.") from None
        self.classes = list(info["classes"])
        self.data_config = dict(info["data_config"])
        self.metadata = info
        self.input_name = probe.get_inputs()[0].name
        self._session: Any = None

    def _open(self, optimize: bool = True) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or os.cpu_count() or 1
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        # Idle intra-op threads must not spin: the loader workers decoding the next batch
        # need those cores (measured in BENCHMARKS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(self.path), options,
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for invalid graphs
            raise ModelError(
                f"Cannot load {self.path} as a wastecls ONNX model ({type(exc).__name__}: "
                f"{exc}). Export it again with `wastecls export --onnx`."
            ) from None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self._session is None:
            self._session = self._open()
        array = np.ascontiguousarray(images, dtype=np.float32)
        return self._session.run(None, {self.input_name: array})[0].astype(np.float32, copy=False)

    def for_worker(self, threads: int) -> OnnxRunner:
        """A copy whose session opens in the worker on first use (sessions are not fork-safe:
        the forked copy of an open one has no thread pool behind it)."""
        worker = copy.copy(self)  # through __getstate__: without the session
        worker.threads = threads
        return worker

    def __getstate__(self) -> dict[str, Any]:  # spawned workers: the session stays here
        return {**self.__dict__, "_session": None}


def find_model(model: Path | None, reporter: Reporter) -> Path:
    """The model to use: the one given, else the newest runs/train/*/best.pt here."""
    if model is not None:
        if not model.is_file():
            raise ModelError(f"Model file {model} does not exist.")
        return model
    candidates = sorted(Path("runs/train").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ModelError(
            "No model given and no runs/train/*/best.pt under the current folder. Pass "
            "--model FILE (a best.pt or an exported .onnx) or set WASTECLS_MODEL."
        )
    reporter.info(f"using the newest trained model: {candidates[-1]}")
    return candidates[-1]


def load_runner(path: Path, device: str, backend: str, reporter: Reporter) -> Runner:
    """A runner for a .pt checkpoint or an .onnx file on the requested backend and device
    (`--device`; an ONNX model runs on the CPU and only checks that a named device exists)."""
    if path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise ModelError(f"{path} is an ONNX file: use --backend onnxruntime or auto.")
        if device not in ("auto", "cpu"):
            from waste_cli.runtime import resolve_device

            resolve_device(device)
        return OnnxRunner(path)
    from waste_cli.models import load_checkpoint
    from waste_cli.runtime import resolve_device

    torch_device = resolve_device(device)
    if backend == "onnxruntime" or (backend == "auto" and torch_device.type == "cpu"):
        from waste_cli.export import cached_onnx

        onnx_path = cached_onnx(path, reporter, required=backend == "onnxruntime")
        if onnx_path is not None:
            return OnnxRunner(onnx_path)
    return TorchRunner.from_checkpoint(load_checkpoint(path), torch_device)
