"""The inference core (Ultralytics' AutoBackend and predictor loop): find and open a model on
the right backend, expand the inputs, run images or boxes through it in batches, and
post-process the logits.

predict, evaluate, the detector's second stage and pseudolabel all go through here, each with
plain options; none of them opens a model or a backend on its own. A checkpoint that is to run
on onnxruntime is first exported, once, to a verified ONNX twin (`exporter.onnx_twin`).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from waste_cli.backends import OnnxRunner, Runner, open_runner
from waste_cli.batching import EvalImages, Speed, iterate_batches
from waste_cli.builtin import BUILTIN_MODEL, builtin_file
from waste_cli.console import Reporter
from waste_cli.data.scan import is_image_path, list_images
from waste_cli.errors import ConfigError, ModelError
from waste_cli.policy import default_batch_size

__all__ = ["BROKEN_OUTPUT", "Classified", "ClassifyOptions", "FlipAveraged", "Prediction",
           "choose_backend", "classify", "excluded_indices", "expand_inputs", "find_model",
           "open_model", "predict_stream", "softmax", "top_k"]

BROKEN_OUTPUT = ("the model's output is not a finite number (NaN or inf): the model is broken; "
                 "train or export it again")


def find_model(model: Path | None, reporter: Reporter) -> Path:
    """The model to use: the one given, else the newest runs/train/*/best.pt here, else the
    built-in one."""
    if model is not None:
        if not model.is_file():
            what = "is a folder" if model.is_dir() else "does not exist"
            raise ModelError(f"Model {model} {what}. Give a best.pt from `wastecls train` or an "
                             ".onnx from `wastecls export`.")
        return model
    candidates = sorted(Path("runs/train").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    builtin = builtin_file(".onnx")
    if not candidates and builtin is not None:
        classes = OnnxRunner(builtin).classes
        reporter.info(f"model: built-in {BUILTIN_MODEL} ({len(classes)} classes: "
                      f"{', '.join(classes)}); give --model to use your own")
        return builtin
    if not candidates:
        raise ModelError(
            "No model given and no runs/train/*/best.pt under the current folder. Pass "
            "--model FILE (a best.pt or an exported .onnx) or set WASTECLS_MODEL."
        )
    reporter.info(f"using the newest trained model: {candidates[-1]}")
    return candidates[-1]


def choose_backend(model: Path, device_type: str, backend: str) -> str:
    """`torch` or `onnxruntime` for `model` on a device of `device_type`.

    `auto` runs checkpoints on a CPU through onnxruntime (faster than eager PyTorch there, and
    the ONNX file is checked against the checkpoint before use), and on GPUs through torch.
    """
    if model.suffix.lower() == ".onnx":
        if backend == "torch":
            raise ConfigError(f"{model} is an ONNX file: use --backend onnxruntime or auto.")
        return "onnxruntime"
    if backend == "auto":
        return "onnxruntime" if device_type == "cpu" else "torch"
    return backend


def open_model(path: Path, device: str, backend: str, reporter: Reporter) -> Runner:
    """A runner for model file `path` on `device` (auto, cpu, cuda[:N], mps) and `backend`
    (auto, torch, onnxruntime).

    If the ONNX twin of a checkpoint cannot be written under `auto`, PyTorch runs it instead and
    the user is told why; under `onnxruntime` that is an error.
    """
    torch_device = None
    if path.suffix.lower() != ".onnx" or device not in ("auto", "cpu"):
        from waste_cli.runtime import resolve_device

        torch_device = resolve_device(device)  # an absent device is an error, even for ONNX
    chosen = choose_backend(path, torch_device.type if torch_device else "cpu", backend)
    if chosen == "onnxruntime" and path.suffix.lower() != ".onnx":
        from waste_cli.exporter import TwinExportError, onnx_twin

        try:
            return onnx_twin(path, reporter)
        except TwinExportError as exc:
            if backend == "onnxruntime":
                raise
            reporter.warn(f"{exc} Running PyTorch instead.")
    return open_runner(path, torch_device)


@dataclass(frozen=True)
class ClassifyOptions:
    """How images are classified: labels kept, classes never predicted, flip averaging, and
    how the batches run (None: the backend's fastest)."""

    top_k: int = 1
    exclude_class: tuple[str, ...] = ()
    tta: bool = False
    batch_size: int | None = None
    workers: int | None = None


@dataclass
class Classified:
    """One image's or box's answer: the top labels, best first, with their probabilities; or
    why it has none."""

    labels: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    error: str = ""

    def cells(self, top_k: int) -> list[str]:
        """label1, prob1, ... labelK, probK (empty where there are fewer): CSV columns."""
        cells = [c for label, p in zip(self.labels, self.probs, strict=True)
                 for c in (label, f"{p:.6f}")]
        return cells + [""] * (2 * top_k - len(cells))

    def shown(self) -> str:
        """`glass 92.4%  paper 3.3%`, or the error: a table cell."""
        return "  ".join(f"{label} {p:.1%}" for label, p in zip(self.labels, self.probs,
                                                                 strict=True)) or (
            "ERROR " + self.error)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (a -inf logit gets probability 0)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, excluded: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, class indices) of the top k classes, best first, per row; `excluded`
    classes get probability 0 and are never among them."""
    if excluded:
        logits = logits.copy()
        logits[:, excluded] = -np.inf
    probs = softmax(logits)
    k = min(k, logits.shape[1] - len(excluded))
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the lower class index
    return np.take_along_axis(probs, best, axis=1), best


class FlipAveraged:
    """--tta: the log of the mean softmax over an image and its mirror image."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.name, self.classes = runner, runner.name, runner.classes
        self.data_config, self.on_cpu, self.crop = runner.data_config, runner.on_cpu, runner.crop

    def __call__(self, images: np.ndarray) -> np.ndarray:
        mirrored = np.ascontiguousarray(images[..., ::-1])
        both = softmax(self.runner(images)) + softmax(self.runner(mirrored))
        with np.errstate(divide="ignore"):  # a probability that underflowed: -inf, as in torch
            return np.log(both / 2)

    def for_worker(self, threads: int) -> FlipAveraged:
        return FlipAveraged(self.runner.for_worker(threads))


def excluded_indices(runner: Runner, names: tuple[str, ...] | list[str]) -> list[int]:
    """The class indices of --exclude-class; an unknown name, or excluding every class, is an
    error."""
    unknown = sorted(set(names) - set(runner.classes))
    if unknown:
        raise ConfigError(f"--exclude-class {', '.join(unknown)}: the model has no such class "
                          f"(it knows {', '.join(runner.classes)}).")
    excluded = sorted({runner.classes.index(c) for c in names})
    if len(excluded) >= len(runner.classes):
        raise ConfigError("--exclude-class names every class of the model: nothing would be "
                          "left to predict. Exclude fewer classes.")
    return excluded


def classify(runner: Runner, images: EvalImages, options: ClassifyOptions, reporter: Reporter,
             speed: Speed | None = None, what: str = "predict"
             ) -> Iterator[tuple[int, Classified]]:
    """(sample index, its answer) for every sample of `images`, in sample order, batch by batch
    (memory does not grow with the number of samples)."""
    excluded = excluded_indices(runner, options.exclude_class)
    model = FlipAveraged(runner) if options.tta else runner
    batch_size = options.batch_size or default_batch_size(runner.name, runner.on_cpu)
    batches = iterate_batches(model, images, batch_size, options.workers, speed=speed)
    with reporter.bar(f"{what} ({runner.name})", len(images.samples)) as bar:
        for logits, _, indices, bad in batches:
            results = {i: Classified(error=images.reason(i)) for i in bad}
            if len(indices):
                probs, labels = top_k(logits, excluded, options.top_k)
                finite = np.isfinite(logits).all(axis=1).tolist()
                for i, p, y, ok in zip(indices.tolist(), probs.tolist(), labels.tolist(), finite,
                                       strict=True):
                    results[i] = (Classified([runner.classes[k] for k in y], p) if ok else
                                  Classified(error=BROKEN_OUTPUT))
            for i in sorted(results):
                yield i, results[i]
            bar.advance(len(results))


@dataclass
class Prediction(Classified):
    """The answer for one image file."""

    path: Path = field(default_factory=Path)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (recursive, image extensions in any case) and globs -> image paths.

    Inputs that match nothing are returned as failures with their reason.
    """
    paths: list[Path] = []
    failed: list[Prediction] = []
    for item in inputs:
        if item == "-" or "://" in item:
            failed.append(Prediction(path=Path(item), error="URLs and standard input are not "
                                     "supported: save the image to a file and give its path"))
            continue
        literal = Path(item).exists() or not glob.has_magic(item)  # `a[1].jpg` that exists
        matches = [Path(item)] if literal else [Path(m) for m in sorted(glob.glob(item,
                                                                               recursive=True))]
        if not matches or not matches[0].exists():
            failed.append(Prediction(path=Path(item),
                                     error="no such file, folder or glob match"))
            continue
        for match in matches:
            if match.is_dir():
                found = list_images(match)
                if not found:
                    failed.append(Prediction(path=match, error="folder holds no images"))
                paths += found
            elif match.is_file() and (is_image_path(match) or literal):
                paths.append(match)
            elif literal:  # a pipe, a device, a socket: nothing to decode
                failed.append(Prediction(path=match, error="not a regular file (a pipe or a "
                                         "device?): give an image file"))
    return paths, failed


def predict_stream(runner: Runner, paths: list[Path], options: ClassifyOptions,
                   reporter: Reporter, speed: Speed | None = None) -> Iterator[Prediction]:
    """Yield one Prediction per path, in input order, batch by batch."""
    images = EvalImages([(p, -1) for p in paths], runner.data_config)
    for i, answer in classify(runner, images, options, reporter, speed):
        yield Prediction(answer.labels, answer.probs, answer.error, paths[i])
