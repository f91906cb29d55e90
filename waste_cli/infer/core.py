"""The inference core (Ultralytics' AutoBackend and predictor loop): find and open a model on
the right backend, expand the inputs, run images or boxes through it in batches, and
post-process the outputs: calibrated probabilities (the model's temperature) and a flag for
answers not to trust (`confidence.fit.flag_of`).

predict, evaluate, the detector's second stage and pseudolabel all go through here, each with
plain options; none of them opens a model or a backend on its own. A checkpoint that is to run
on onnxruntime is first exported, once, to a verified ONNX twin (`export.formats.onnx_twin`).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from waste_cli.confidence.fit import flag_of
from waste_cli.confidence.measures import scaled_softmax
from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError
from waste_cli.core.policy import default_batch_size
from waste_cli.data.batching import EvalImages, Speed, iterate_batches
from waste_cli.data.scan import is_image_path, list_images
from waste_cli.data.taxonomy import ClassMap
from waste_cli.model.backends import (
    TFLITE_SUFFIX,
    Outputs,
    Runner,
    is_openvino,
    open_runner,
)
from waste_cli.model.builtin import builtin_file, is_builtin

__all__ = [
    "ABSTAIN_LABEL",
    "BROKEN_OUTPUT",
    "Classified",
    "ClassifyOptions",
    "FlipAveraged",
    "Prediction",
    "choose_backend",
    "classify",
    "excluded_indices",
    "expand_inputs",
    "open_model",
    "predict_stream",
    "temperature",
    "top_k",
]

BROKEN_OUTPUT = ("the model's output is not a finite number (NaN or inf): the model is broken; "
                 "train or export it again")


ABSTAIN_LABEL = "unknown"  # --abstain's answer for a flagged photo (detect-waste's category)


def choose_backend(model: Path, device_type: str, backend: str) -> str:
    """`torch` or `onnxruntime` for `model` on a device of `device_type`.

    `auto` runs checkpoints on a CPU through onnxruntime (faster than eager PyTorch there, and
    the ONNX file is checked against the checkpoint before use), and on GPUs through torch.
    """
    if model.suffix.lower() == ".onnx":
        if backend not in ("auto", "onnxruntime"):
            raise ConfigError(f"{model} is an ONNX file: use --backend onnxruntime or auto.")
        return "onnxruntime"
    exported = ("openvino" if is_openvino(model) else
                "tflite" if model.suffix.lower() == TFLITE_SUFFIX else None)
    if exported is not None:
        if backend not in ("auto", exported):
            raise ConfigError(f"{model} is a {exported} export: use --backend {exported} or "
                              "auto.")
        return exported
    if backend in ("openvino", "tflite"):
        raise ConfigError(f"--backend {backend} runs a model exported with `wastecls export "
                          f"--{backend}`; {model} is not one.")
    if backend == "auto":
        return "onnxruntime" if device_type == "cpu" else "torch"
    return backend


def open_model(path: Path, device: str, backend: str, reporter: Reporter) -> Runner:
    """A runner for model file `path` on `device` (auto, cpu, cuda[:N], mps) and `backend`
    (auto, torch, onnxruntime).

    If the ONNX twin of a checkpoint cannot be written under `auto`, PyTorch runs it instead and
    the user is told why; under `onnxruntime` that is an error.
    """
    if backend == "torch" and path.suffix.lower() == ".onnx" and is_builtin(path):
        path = builtin_file(".pt") or path  # the built-in model's checkpoint runs on PyTorch
    torch_device = None
    exported = path.suffix.lower() in (".onnx", TFLITE_SUFFIX) or is_openvino(path)
    if not exported or device not in ("auto", "cpu"):
        from waste_cli.core.runtime import resolve_device

        torch_device = resolve_device(device)  # an absent device is an error, even for ONNX
    chosen = choose_backend(path, torch_device.type if torch_device else "cpu", backend)
    if chosen == "onnxruntime" and path.suffix.lower() != ".onnx":
        from waste_cli.export.formats import TwinExportError, onnx_twin

        try:
            twin = onnx_twin(path, reporter)
            _say_if_uncalibrated(twin, path, reporter)
            return twin
        except TwinExportError as exc:
            if backend == "onnxruntime":
                raise
            reporter.warn(f"{exc} Running PyTorch instead.")
    runner = open_runner(path, torch_device)
    _say_if_uncalibrated(runner, path, reporter)
    return runner


def _say_if_uncalibrated(runner: Runner, path: Path, reporter: Reporter) -> None:
    if runner.calibration is None:
        reporter.info(f"{path} is not calibrated: probabilities are the raw softmax "
                      "(temperature 1) and no photo is flagged unfamiliar; `wastecls calibrate "
                      f"{path} --data ROOT` fits both")


def temperature(runner: Runner) -> float:
    """The model's calibration temperature; 1 for an uncalibrated model."""
    return runner.calibration.temperature if runner.calibration is not None else 1.0


@dataclass(frozen=True)
class Grouping:
    """The model's classes summed into coarser target classes (`predict --taxonomy`, `--map`):
    a target's calibrated probability is the sum of its model classes'; a model class mapped to
    `ignore` is never answered, like --exclude-class."""

    classes: tuple[str, ...]  # the target classes, in the order the map first names them
    members: np.ndarray  # [model classes, target classes], 1 where a class belongs to a target
    dropped: tuple[int, ...]  # model classes mapped to `ignore`

    @classmethod
    def of(cls, model_classes: list[str], class_map: ClassMap, where: str) -> Grouping:
        targets = [class_map.target(name, where) for name in model_classes]
        classes = tuple(dict.fromkeys(t for t in targets if t is not None))
        if not classes:
            raise ConfigError(f"{where} maps every class of the model to ignore: nothing is "
                              "left to answer.")
        members = np.zeros((len(model_classes), len(classes)), np.float32)
        for i, target in enumerate(targets):
            if target is not None:
                members[i, classes.index(target)] = 1.0
        return cls(classes, members,
                   tuple(i for i, t in enumerate(targets) if t is None))


@dataclass(frozen=True)
class ClassifyOptions:
    """How images are classified: labels kept, classes never predicted, flip averaging, the
    confidence under which an answer is flagged (None: the model's own), and how the batches
    run (None: the backend's fastest)."""

    top_k: int = 1
    exclude_class: tuple[str, ...] = ()
    tta: bool = False
    min_confidence: float | None = None
    batch_size: int | None = None
    workers: int | None = None
    grouping: Grouping | None = None  # answer in coarser classes (the flag stays the model's)


@dataclass
class Classified:
    """One image's or box's answer: the top labels, best first, with their calibrated
    probabilities, how unfamiliar the photo looks (None: the model cannot say) and the flag
    (`confidence.fit.flag_of`); or why it has none."""

    labels: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    error: str = ""
    unfamiliarity: float | None = None
    flag: str = ""
    fine_label: str = ""  # with a grouping: the model's own top class and its probability
    fine_confidence: float | None = None

    @property
    def confidence(self) -> float:
        """The calibrated probability of the top label."""
        return self.probs[0] if self.probs else 0.0

    def answer(self, abstain: bool) -> str:
        """The label to act on: the top label, or `unknown` for a flagged answer when
        abstaining."""
        if not self.labels:
            return ""
        return ABSTAIN_LABEL if abstain and self.flag else self.labels[0]

    def cells(self, top_k: int) -> list[str]:
        """label1, prob1, ... labelK, probK (empty where there are fewer): CSV columns."""
        cells = [c for label, p in zip(self.labels, self.probs, strict=True)
                 for c in (label, f"{p:.6f}")]
        return cells + [""] * (2 * top_k - len(cells))

    def shown(self, abstain: bool = False) -> str:
        """`glass 92.4%  paper 3.3%`, flagged `[unfamiliar]` (and led by `unknown` when
        abstaining), or the error: a table cell."""
        if self.error:
            return "ERROR " + self.error
        text = "  ".join(f"{label} {p:.1%}" for label, p in zip(self.labels, self.probs,
                                                                 strict=True))
        if self.fine_confidence is not None:  # answered in coarser classes: the model's own
            text += f"  ({self.fine_label} {self.fine_confidence:.1%})"
        if self.flag:
            text = (f"{ABSTAIN_LABEL} (guess: {text})" if abstain else text) + f"  [{self.flag}]"
        return text


def top_k(logits: np.ndarray, excluded: list[int], k: int, grouping: Grouping | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, class indices) of the top k classes, best first, per row; `excluded`
    classes get probability 0 and are never among them. With a grouping, the classes are its
    targets and each probability the sum of its members'."""
    if excluded:
        logits = logits.copy()
        logits[:, excluded] = -np.inf
    probs = scaled_softmax(logits, dtype=np.float32)
    if grouping is not None:
        probs = probs @ grouping.members
    k = min(k, probs.shape[1] - (0 if grouping is not None else len(excluded)))
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the lower class index
    return np.take_along_axis(probs, best, axis=1), best


class FlipAveraged:
    """--tta: the mean calibrated softmax over an image and its mirror image, returned as logits
    that `classify` turns back into exactly those probabilities (the log, times the
    temperature it divides by); the other outputs are the image's own."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.name, self.classes = runner, runner.name, runner.classes
        self.data_config, self.on_cpu, self.crop = runner.data_config, runner.on_cpu, runner.crop
        self.calibration = runner.calibration

    def __call__(self, images: np.ndarray) -> Outputs:
        outputs = self.runner(images)
        mirrored = self.runner(np.ascontiguousarray(images[..., ::-1]))["logits"]
        scale = temperature(self.runner)
        both = (scaled_softmax(outputs["logits"] / scale, dtype=np.float32)
                + scaled_softmax(mirrored / scale, dtype=np.float32))
        with np.errstate(divide="ignore"):  # a probability that underflowed: -inf, as in torch
            return {**outputs, "logits": np.log(both / 2) * scale}

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
    model = FlipAveraged(runner) if options.tta else runner
    batch_size = options.batch_size or default_batch_size(runner.name, runner.on_cpu)
    batches = iterate_batches(model, images, batch_size, options.workers, speed=speed)
    answer = Answerer(runner, options)
    with reporter.bar(f"{what} ({runner.name})", len(images.samples)) as bar:
        for outputs, _, indices, bad in batches:
            results = {i: Classified(error=images.reason(i)) for i in bad}
            if len(indices):
                results.update(zip(indices.tolist(), answer(outputs), strict=True))
            for i in sorted(results):
                yield i, results[i]
            bar.advance(len(results))


class Answerer:
    """A model's outputs for a batch -> one answer per row (top k, calibrated, flagged), as
    every command that classifies words them (predict, evaluate's boxes, serve)."""

    def __init__(self, runner: Runner, options: ClassifyOptions) -> None:
        self.runner, self.options, grouping = runner, options, options.grouping
        self.excluded = sorted({*excluded_indices(runner, options.exclude_class),
                                *(grouping.dropped if grouping is not None else ())})
        self.answers = list(grouping.classes) if grouping is not None else runner.classes
        self.scale = temperature(runner)

    def __call__(self, outputs: Outputs) -> list[Classified]:
        grouping, options = self.options.grouping, self.options
        logits = outputs["logits"]
        probs, labels = top_k(logits / self.scale, self.excluded, options.top_k, grouping)
        fine_probs, fine_labels = (top_k(logits / self.scale, self.excluded, 1)
                                   if grouping is not None else (probs, labels))
        finite = np.isfinite(logits).all(axis=1).tolist()
        scores = outputs.get("unfamiliarity", np.full(len(logits), np.nan)).tolist()
        results = []
        for row, (score, ok) in enumerate(zip(scores, finite, strict=True)):
            fine = (self.runner.classes[int(fine_labels[row, 0])], float(fine_probs[row, 0]))
            results.append(_answer(self.runner, [self.answers[k] for k in labels[row].tolist()],
                                   probs[row].tolist(), fine, score, options)
                           if ok else Classified(error=BROKEN_OUTPUT))
        return results


def _answer(runner: Runner, labels: list[str], probs: list[float], fine: tuple[str, float],
            score: float, options: ClassifyOptions) -> Classified:
    """The answer; its flag is the model's own (from its top class), grouped or not."""
    flag = flag_of(fine[1], score, runner.calibration, options.min_confidence)
    answer = Classified(labels, probs, unfamiliarity=None if np.isnan(score) else score,
                        flag=flag)
    if options.grouping is not None:
        answer.fine_label, answer.fine_confidence = fine
    return answer


@dataclass
class Prediction(Classified):
    """The answer for one image file."""

    path: Path = field(default_factory=Path)
    given: str | None = None  # the input as typed, where it is no path (a URL keeps its //)

    @property
    def where(self) -> str:
        """The input as the user knows it: in outputs and messages."""
        return self.given if self.given is not None else str(self.path)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (recursive, image extensions in any case) and globs -> image paths.

    Inputs that match nothing are returned as failures with their reason.
    """
    paths: list[Path] = []
    failed: list[Prediction] = []
    for item in inputs:
        if item == "-" or "://" in item:
            failed.append(Prediction(path=Path(item), given=item,
                                     error="URLs and standard input are not supported: save "
                                     "the image to a file and give its path"))
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
        yield Prediction(**vars(answer), path=paths[i])
