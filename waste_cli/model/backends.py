"""Model runners: one interface over a PyTorch checkpoint and an ONNX file (Ultralytics'
AutoBackend). They only load and run; which one to use, and whether to export a checkpoint
first, is decided by the inference core (infer/core.py).

Every runner carries the class names, the data config it was trained with and its calibration,
so callers preprocess exactly as training did and never re-derive anything. Runners take numpy
arrays and return them by output name (`logits`, and `unfamiliarity` from a calibrated model),
and torch is imported only when a PyTorch model is run: an ONNX model starts without it.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from waste_cli.core.errors import ModelError
from waste_cli.model.metadata import META_KEY as ONNX_META_KEY
from waste_cli.model.metadata import Calibration, check_metadata

if TYPE_CHECKING:
    import torch

    from waste_cli.model.checkpoint import Checkpoint

__all__ = [
    "ONNX_META_KEY",
    "OPENVINO_META",
    "OPENVINO_SUFFIX",
    "OPENVINO_XML",
    "TFLITE_SUFFIX",
    "OnnxRunner",
    "OpenVinoRunner",
    "Outputs",
    "Runner",
    "TfliteRunner",
    "TorchRunner",
    "is_openvino",
    "open_runner",
]

Outputs = dict[str, np.ndarray]  # output name -> float32 array with one row per image


class Runner(Protocol):
    """Images (normalised float32 NCHW numpy array) in, float32 outputs by name out: `logits`
    always, `unfamiliarity` when the model is calibrated."""

    name: str  # the backend: "torch" or "onnxruntime"
    classes: list[str]
    data_config: dict[str, Any]
    crop: dict[str, Any]  # how the training images were cut from photos (boxes: square, zoom)
    calibration: Calibration | None  # None: an uncalibrated model (temperature 1, no flag)
    on_cpu: bool

    def __call__(self, images: np.ndarray) -> Outputs: ...

    def for_worker(self, threads: int) -> Runner:
        """The same model for a worker process that runs it with `threads` threads."""
        ...


class TorchRunner:
    """A PyTorch classifier in eval mode under torch.inference_mode."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, classes: list[str], data_config: dict[str, Any],
                 device: torch.device, channels_last: bool,
                 crop: dict[str, Any] | None = None,
                 calibration: dict[str, Any] | None = None) -> None:
        """Wrap a model already on `device` in the memory format `channels_last` says; a model
        with several outputs names them in its `output_names`."""
        self.classes, self.data_config, self.device = list(classes), dict(data_config), device
        self.crop = dict(crop or {})
        self.calibration = Calibration.model_validate(calibration) if calibration else None
        self.model, self.channels_last = model.eval(), channels_last
        self.output_names = tuple(getattr(model, "output_names", ("logits",)))
        self.on_cpu = device.type == "cpu"

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, device: torch.device) -> TorchRunner:
        """The checkpoint's model in channels_last, the faster layout end to end (BENCHMARKS.md)."""
        import torch

        from waste_cli.model.heads import deployable_model

        model = deployable_model(checkpoint).to(device, memory_format=torch.channels_last)
        return cls(model, checkpoint["classes"], checkpoint["data_config"], device, True,
                   checkpoint.get("crop"), checkpoint.get("calibration"))

    def __call__(self, images: np.ndarray) -> Outputs:
        import torch

        from waste_cli.core.runtime import to_device

        with torch.inference_mode():
            batch = to_device(torch.from_numpy(images), self.device, self.channels_last)
            outputs = self.model(batch)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {name: out.float().cpu().numpy()
                for name, out in zip(self.output_names, outputs, strict=True)}

    def for_worker(self, threads: int) -> TorchRunner:
        """Itself: a forked worker shares the weights; torch's threads are set per process."""
        return self


def _adopt(runner: Any, info: dict[str, Any]) -> None:
    """An exported model's metadata (already checked) as the runner's own fields."""
    runner.classes = list(info["classes"])
    runner.data_config = dict(info["data_config"])
    runner.crop = dict(info.get("crop") or {})
    runner.calibration = (Calibration.model_validate(info["calibration"])
                          if info.get("calibration") else None)
    runner.metadata = info


class OnnxRunner:
    """An exported model on onnxruntime; class names and preprocessing from its metadata."""

    name = "onnxruntime"
    on_cpu = True

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path, self.threads = path, threads
        # An unoptimised session checks the file and reads the metadata cheaply; the optimised
        # one, slow to build, opens where the model runs: with worker processes only in them.
        probe = self._open(optimize=False)
        try:
            info = json.loads(probe.get_modelmeta().custom_metadata_map[ONNX_META_KEY])
        except (KeyError, ValueError, RecursionError) as exc:
            raise ModelError(f"{path} has no wastecls metadata ({type(exc).__name__}). Export "
                             "it with `wastecls export --onnx`.") from None
        check_metadata(info, path)
        outputs = probe.get_outputs()[0].shape
        if len(outputs) != 2 or (isinstance(outputs[1], int) and outputs[1] != len(
                info["classes"])):
            raise ModelError(f"Cannot use the model {path}: its metadata names "
                             f"{len(info['classes'])} classes but the model outputs {outputs}. "
                             "Export it again with `wastecls export --onnx`.")
        # The first output is the logits whatever a foreign exporter called it.
        self.output_names = ("logits", *(o.name for o in probe.get_outputs()[1:]))
        if info.get("calibration") and "unfamiliarity" not in self.output_names:
            raise ModelError(f"Cannot use the model {path}: its metadata says it is calibrated "
                             "but it has no `unfamiliarity` output. Calibrate it again with "
                             "`wastecls calibrate`.")
        _adopt(self, info)
        self.input_name = probe.get_inputs()[0].name
        batch = probe.get_inputs()[0].shape[0]
        self.dynamic_batch = not isinstance(batch, int)
        # A file exported with a fixed batch (`export --batch N`) takes exactly N images: any
        # other count is run in chunks of N, the last one padded.
        self.fixed_batch: int | None = None if self.dynamic_batch else int(batch)
        self._session: Any = None

    def _open(self, optimize: bool = True) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or os.cpu_count() or 1
        options.log_severity_level = 3  # errors only: its warnings are notes for developers
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        # Idle intra-op threads must not spin: the workers decoding the next batch need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(self.path), options,
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for invalid graphs
            raise ModelError(
                f"Cannot load {self.path} as a wastecls ONNX model ({type(exc).__name__}: "
                f"{exc}). Export it again with `wastecls export --onnx`."
            ) from None

    def __call__(self, images: np.ndarray) -> Outputs:
        if self._session is None:
            self._session = self._open()
        array = np.ascontiguousarray(images, dtype=np.float32)
        if self.fixed_batch is None or len(array) == self.fixed_batch:
            return self._run(array)
        size, count = self.fixed_batch, len(array)
        padded = np.zeros((-(-count // size) * size, *array.shape[1:]), np.float32)
        padded[:count] = array
        chunks = [self._run(padded[i:i + size]) for i in range(0, len(padded), size)]
        return {name: np.concatenate([c[name] for c in chunks])[:count] for name in chunks[0]}

    def _run(self, array: np.ndarray) -> Outputs:
        outputs = self._session.run(None, {self.input_name: array})
        return {name: out.astype(np.float32, copy=False)
                for name, out in zip(self.output_names, outputs, strict=True)}

    def for_worker(self, threads: int) -> OnnxRunner:
        """A copy whose session opens in the worker on first use (sessions are not fork-safe:
        the forked copy of an open one has no thread pool behind it)."""
        worker = copy.copy(self)  # through __getstate__: without the session
        worker.threads = threads
        return worker

    def __getstate__(self) -> dict[str, Any]:  # spawned workers: the session stays here
        return {**self.__dict__, "_session": None}


OPENVINO_SUFFIX = ".openvino"  # an exported OpenVINO model: a folder of model.xml, model.bin
OPENVINO_XML = "model.xml"
OPENVINO_META = ("wastecls", "metadata")  # where the metadata JSON sits in the IR's rt_info


class OpenVinoRunner:
    """An exported OpenVINO model (`export --openvino`) on Intel's CPU runtime, in fp32 (its
    CPU plugin would otherwise pick bf16 where the CPU has it, and answer differently)."""

    name = "openvino"
    on_cpu = True

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino as ov

        self.path, self.threads = path, threads
        xml = path / OPENVINO_XML if path.is_dir() else path
        try:
            self._model = ov.Core().read_model(str(xml))
            info = json.loads(self._model.get_rt_info(list(OPENVINO_META)).astype(str))
        except Exception as exc:  # openvino raises its own types for a damaged file
            raise ModelError(f"Cannot read {path} as a wastecls OpenVINO model "
                             f"({type(exc).__name__}). Export it with `wastecls export "
                             "--openvino`.") from None
        check_metadata(info, path)
        _adopt(self, info)
        self.output_names = ("logits", *(o.get_any_name() for o in self._model.outputs[1:]))
        self._compiled: Any = None

    def __call__(self, images: np.ndarray) -> Outputs:
        if self._compiled is None:
            import openvino as ov

            self._compiled = ov.Core().compile_model(self._model, "CPU", {
                "INFERENCE_NUM_THREADS": self.threads or os.cpu_count() or 1,
                "INFERENCE_PRECISION_HINT": "f32"})
        results = self._compiled(np.ascontiguousarray(images, dtype=np.float32))
        return {name: np.asarray(results[port], dtype=np.float32)
                for name, port in zip(self.output_names, self._compiled.outputs, strict=True)}

    def for_worker(self, threads: int) -> OpenVinoRunner:
        """A copy that compiles in the worker on first use."""
        worker = copy.copy(self)
        worker.threads, worker._compiled = threads, None
        return worker

    def __getstate__(self) -> dict[str, Any]:  # spawned workers read the file themselves
        return {"path": self.path, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["threads"])  # type: ignore[misc]


TFLITE_SUFFIX = ".tflite"


class TfliteRunner:
    """An exported TFLite model (`export --tflite`) on LiteRT's interpreter (ai-edge-litert),
    one image at a time as exported (phones and small boards run batch 1). Class names and
    preprocessing come from the `.tflite.json` written beside it."""

    name = "tflite"
    on_cpu = True

    def __init__(self, path: Path, threads: int | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.path, self.threads = path, threads
        sidecar = path.with_name(path.name + ".json")
        try:
            info = metadata or json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path} needs its metadata file {sidecar.name} beside it (class "
                             f"names, preprocessing): {exc}. Keep the two together, or export "
                             "again with `wastecls export --tflite`.") from None
        check_metadata(info, sidecar)
        _adopt(self, info)
        self._interpreter: Any = None

    def _open(self) -> Any:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ModelError(f"Running {self.path} needs LiteRT: pip install "
                             "'wastecls[tflite]' (or ai-edge-litert).") from None
        try:
            interpreter = Interpreter(model_path=str(self.path),
                                      num_threads=self.threads or os.cpu_count() or 1)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"Cannot load {self.path} as a TFLite model: {exc}") from None
        return interpreter

    def __call__(self, images: np.ndarray) -> Outputs:
        if self._interpreter is None:
            self._interpreter = self._open()
        interpreter = self._interpreter
        given = interpreter.get_input_details()[0]
        rows: dict[str, list[np.ndarray]] = {"logits": [], "unfamiliarity": []}
        for image in np.ascontiguousarray(images, dtype=np.float32):
            interpreter.set_tensor(given["index"], image[None])
            interpreter.invoke()
            for detail in interpreter.get_output_details():
                value = interpreter.get_tensor(detail["index"]).astype(np.float32)
                # the logits are the output with a value per class
                name = "logits" if value.ndim == 2 and value.shape[1] == len(self.classes) \
                    else "unfamiliarity"
                rows[name].append(value.reshape(value.shape[1:] if name == "logits" else ()))
        return {name: np.stack(values).astype(np.float32)
                for name, values in rows.items() if values}

    def for_worker(self, threads: int) -> TfliteRunner:
        worker = copy.copy(self)
        worker.threads, worker._interpreter = threads, None
        return worker

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_interpreter": None}


def is_openvino(path: Path) -> bool:
    return path.suffix.lower() == OPENVINO_SUFFIX or (
        path.suffix.lower() == ".xml" and path.parent.suffix.lower() == OPENVINO_SUFFIX)


def open_runner(path: Path, device: torch.device | None) -> Runner:
    """A runner for an .onnx file (onnxruntime, CPU), an OpenVINO or TFLite export (CPU) or a
    .pt checkpoint (torch on `device`)."""
    if path.suffix.lower() == ".onnx":
        return OnnxRunner(path)
    if is_openvino(path):
        return OpenVinoRunner(path)
    if path.suffix.lower() == TFLITE_SUFFIX:
        return TfliteRunner(path)
    import torch

    from waste_cli.model.checkpoint import load_checkpoint

    return TorchRunner.from_checkpoint(load_checkpoint(path), device or torch.device("cpu"))
