"""The engine's options: one plain, validated pydantic model per command.

The engine takes them and may build them; they never read the environment (cli/sources.py adds
the sources on top). Field descriptions double as the CLI's help text. A checkpoint stores its
run's options as a versioned record (`options_record`), read back through `options_from_record`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from waste_cli.core.files import atomic_write_text
from waste_cli.core.policy import DEFAULT_FAMILIAR_SHARE, DEFAULT_MIN_CONFIDENCE
from waste_cli.model.builtin import BUILTIN_MODEL, named_file

__all__ = [
    "COMMAND_OPTIONS",
    "AuditOptions",
    "BoxFields",
    "CalibrateOptions",
    "CheckpointFile",
    "ClassMapFields",
    "EvaluateOptions",
    "ExportOptions",
    "FitFields",
    "FlagFields",
    "InferenceOptions",
    "ModelRunOptions",
    "OnnxOrCheckpoint",
    "Options",
    "PredictOptions",
    "PrepareOptions",
    "PseudolabelOptions",
    "ReviewOptions",
    "ServeOptions",
    "TrainOptions",
    "flag_name",
    "write_config",
]

# A model or weights file, where the built-in model's name stands for its file of that kind.
OnnxOrCheckpoint = Annotated[Path | None, AfterValidator(partial(named_file, suffix=".onnx"))]


CheckpointFile = Annotated[Path | None, AfterValidator(partial(named_file, suffix=".pt"))]


class Options(BaseModel):
    """Fields shared by every command. A plain value: building one reads no environment."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)
    command: ClassVar[str] = ""
    arguments: ClassVar[tuple[str, ...]] = ()  # fields given as positional CLI arguments

    quiet: bool = Field(False, description="Print only warnings, errors and the final summary.")


class ClassMapFields(BaseModel):
    """A class mapping for annotation categories: a file or a built-in taxonomy, not both."""

    map: Path | None = Field(
        None, description="YAML/JSON class mapping: target class -> list of source names."
    )
    taxonomy: Literal["detect-waste"] | None = Field(
        None, description="Built-in class mapping (detect-waste: TACO's 60 categories -> 7)."
    )

    @model_validator(mode="after")
    def _one_class_map(self) -> ClassMapFields:
        if self.map is not None and self.taxonomy is not None:
            raise ValueError("use either map or taxonomy, not both")
        return self


class BoxFields(BaseModel):
    """Boxes on photos: an annotation or detections file (`boxes`) and the photos' folder."""

    boxes: Path | None = None
    images: Path | None = Field(None, description="Image folder the --boxes refer to.")

    @model_validator(mode="after")
    def _boxes_need_images(self) -> BoxFields:
        if self.boxes is not None and self.images is None:
            raise ValueError("--boxes needs --images DIR, the folder of the annotated photos")
        return self


class FitFields(BaseModel):
    """How a model's calibration is fitted (at the end of train, and by calibrate)."""

    familiar_share: float = Field(
        DEFAULT_FAMILIAR_SHARE, gt=0, lt=1, description="Share of validation photos that must "
        "pass unflagged: sets the unfamiliarity threshold."
    )
    min_confidence: float = Field(
        DEFAULT_MIN_CONFIDENCE, ge=0, le=1, description="Calibrated probability under which an "
        "answer is flagged low-confidence: the model's default, stored in it."
    )


class FlagFields(BaseModel):
    """How answers are flagged where a model is run."""

    min_confidence: float | None = Field(
        None, ge=0, le=1, description="Flag answers whose calibrated probability is below this "
        "(default: the model's own, 0.4 unless calibrated otherwise)."
    )


class PrepareOptions(Options, ClassMapFields):
    """`wastecls prepare`: raw class folders or COCO annotations -> train/val/test layout."""

    command: ClassVar[str] = "prepare"
    arguments: ClassVar[tuple[str, ...]] = ("source",)

    seed: int = Field(0, description="Random seed of the split; the same seed, the same split.")
    source: list[Path] = Field(
        default_factory=list, description="Class-folder datasets (SRC/<class>/*.jpg) and COCO "
        "annotation .json files; several are merged into one dataset."
    )
    sources: Path | None = Field(
        None, description="YAML/JSON list of sources, each with its own path and, where "
        "needed, images folder, map, taxonomy and name (see docs/data.md)."
    )
    out: Path = Field(description="Output folder for the prepared dataset.")
    images: Path | None = Field(
        None, description="Image folder that the COCO file names are relative to."
    )
    val_frac: float = Field(0.1, ge=0, lt=1, description="Share of each class for validation.")
    test_frac: float = Field(0.2, ge=0, lt=1, description="Share of each class for testing.")
    unlabeled_frac: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the training images moved, without labels, to OUT/pseudolabel/.",
    )
    size: int = Field(256, ge=0, description="Shorter side of the saved images (0 keeps it).")
    min_size: int = Field(32, ge=1, description="Skip images (and crops) smaller than this.")
    quality: int = Field(90, ge=50, le=100, description="JPEG quality of the saved images.")
    square: bool = Field(False, description="COCO: grow each box to a square around its centre.")
    zoom: float = Field(1.0, gt=0, description="COCO: scale each box around its centre.")
    background: int = Field(
        0, ge=0, description="COCO: crops per image that overlap no box, as class 'background'."
    )
    near_duplicates: bool = Field(
        True, description="Find copies that were resized, recompressed, flipped, turned, "
        "letterboxed or cropped, across all sources, and keep each group in one split "
        "(--no-near-duplicates: exact copies only)."
    )
    drop_duplicates: bool = Field(
        False, description="Keep one photo of each group of copies (the largest), not all."
    )
    relabel: Path | None = Field(
        None, description="Apply corrections (a `review --export` manifest): photos change "
        "class or leave; prepare_report.json lists both."
    )
    workers: int = Field(0, ge=0, description="Decoding processes (0 = all cores).")
    overwrite: bool = Field(False, description="Replace a non-empty output folder.")

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_several(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value  # a config from before

    @model_validator(mode="after")
    def _check_fractions(self) -> PrepareOptions:
        if not self.source and self.sources is None:
            raise ValueError("give SOURCE (one or more) or --sources FILE")
        if self.val_frac + self.test_frac >= 1:
            raise ValueError("val_frac + test_frac must be below 1 to leave training images")
        return self


class ModelRunOptions(Options):
    """Fields of every command that runs a model."""

    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    workers: int | None = Field(
        None, ge=0, description="Data-loader processes (default: all cores but one, at most 8; "
        "none on a CPU with --cache ram)."
    )
    batch_size: int = Field(32, ge=1, description="Images per batch.")


class TrainOptions(ModelRunOptions, FitFields):
    """`wastecls train`: fine-tune a timm backbone on a prepared dataset."""

    command: ClassVar[str] = "train"

    seed: int = Field(0, description="Random seed; the same seed gives the same run.")
    data: Path | None = Field(
        None, description="Dataset root from `wastecls prepare` (ROOT/train, ROOT/val); "
        "required unless --resume."
    )
    arch: str = Field(
        "efficientnet-lite0",
        description="timm model name, or efficientnet-b0..b7 / efficientnet-lite0..4.",
    )
    pretrained: bool = Field(True, description="Start from timm's pretrained weights (Hub).")
    weights: CheckpointFile = Field(
        None, description=f"Local weights to start from (.pth/.safetensors/wastecls .pt), or "
        f"{BUILTIN_MODEL}: the built-in waste model."
    )
    img_size: Annotated[int, Field(ge=16)] | Literal["auto"] | None = Field(
        "auto", description="Square input size. auto: a wastecls --weights checkpoint's size, "
        "else timm's test size or 1.3x the pretraining size (FixRes: 224 -> 288)."
    )
    aug: Literal["auto", "none", "light", "strong"] = Field(
        "auto", description="Augmentation level. auto: light on a CPU, strong on a GPU."
    )
    cache: Literal["auto", "none", "ram"] = Field(
        "auto", description="ram: keep decoded, resized images in memory. auto: ram when they "
        "take at most a quarter of the free memory."
    )
    val_frac: float = Field(
        0.1, gt=0, lt=1, description="Share of train held out for validation when there is no val."
    )
    sampler: Literal["random", "weighted"] = Field(
        "random", description="weighted: draw classes equally often (inverse frequency)."
    )
    class_weights: bool = Field(False, description="Class-weighted cross-entropy loss.")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the loss.")
    opt: str = Field("adamw", description="Optimizer (any name timm's create_optimizer_v2 knows).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.05, ge=0, description="Weight decay.")
    sched: Literal["cosine", "step", "exp", "none"] = Field(
        "cosine", description="Learning-rate schedule (timm); exp decays by --lr-decay per epoch."
    )
    warmup_epochs: int = Field(1, ge=0, description="Linear warm-up epochs.")
    lr_decay: float | None = Field(
        None, gt=0, le=1, description="Decay factor for step (default 0.1) and exp (0.99)."
    )
    decay_epochs: int | None = Field(
        None, ge=1, description="step: epochs between decays (default: a third of the run)."
    )
    epochs: int = Field(12, ge=1, description="Training epochs.")
    patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without improvement."
    )
    monitor: Literal["val_loss", "val_acc", "val_macro_f1"] = Field(
        "val_acc", description="Metric that picks best.pt and drives early stopping."
    )
    freeze_backbone: bool = Field(False, description="Train only the classifier head.")
    freeze_epochs: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="Train only the head for this many first epochs, then fine-tune "
        "(LP-FT: holds up better on photos unlike the training set). auto: a quarter of the "
        "epochs from pretrained weights, else 0."
    )
    wise_ft: float = Field(
        1.0, gt=0, le=1, description="WiSE-FT: best.pt becomes this share of the fine-tuned "
        "weights plus the rest of the weights before fine-tuning (after the --freeze-epochs "
        "head fit; else the start). Holds up better on other photos. 1: off."
    )
    freeze_layers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="Never train the first N of timm's layer groups (stem, stages): "
        "faster steps, early features stay pretrained (Ultralytics' freeze). auto: on a CPU "
        "all but the last two stages and the head, on a GPU none.",
    )
    layer_decay: float | None = Field(
        0.7, gt=0, le=1, description="Layer-wise lr decay: earlier layers learn slower (timm)."
    )
    drop_rate: float | None = Field(
        None, ge=0, lt=1, description="Dropout before the classifier (default: timm's)."
    )
    ema: bool = Field(True, description="Validate and keep an exponential moving average.")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay per step.")
    amp: bool | None = Field(
        None, description="Mixed precision (bf16 on CPU, fp16/bf16 on CUDA). Default: on CUDA."
    )
    channels_last: bool = Field(True, description="channels_last memory format (faster).")
    nproc: int = Field(
        1, ge=1, description="Training processes on this machine (DDP, launched via torchrun)."
    )
    project: Path = Field(Path("runs/train"), description="Folder that holds the run folders.")
    name: str = Field("exp", description="Run folder name (exp, exp2, ... if it exists).")
    resume: Path | None = Field(
        None, description="Continue the run in this folder (or of this last.pt) from its "
        "last.pt."
    )
    _resume_folder = field_validator("resume")(  # `--resume runs/train/exp/last.pt` works too
        lambda path: path.parent if path is not None and path.is_file() else path)
    pseudolabel: Literal["none", "per-batch", "per-epoch"] = Field(
        "none", description="Train on confident pseudo-labels of unlabelled images."
    )
    pseudo_data: Path | None = Field(
        None, description="Unlabelled images for --pseudolabel (default: ROOT/pseudolabel)."
    )
    pseudo_start: int = Field(5, ge=1, description="First epoch (1-based) using pseudo-labels.")
    pseudo_threshold: float = Field(
        0.9, gt=0, le=1, description="Calibrated probability an image needs to be used (as "
        "pseudolabel --threshold); unfamiliar images are never used."
    )
    pseudo_weight: float = Field(1.0, ge=0, description="Weight of the pseudo-label loss.")
    pseudo_ramp: int = Field(
        2, ge=0, description="Epochs over which that weight ramps up linearly (Lee 2013)."
    )
    extra_labels: list[Path] = Field(
        default_factory=list,
        description="Manifest CSV (path,label) from `wastecls pseudolabel` to add to training.",
    )
    neptune: bool = Field(
        False, description="Also log to Neptune (pip install 'wastecls\\[neptune]').")
    neptune_mode: Literal["async", "offline", "debug"] = Field(
        "async", description="Neptune connection mode."
    )
    neptune_project: str | None = Field(
        None, description="Neptune project (default: $NEPTUNE_PROJECT)."
    )


    @model_validator(mode="after")
    def _check(self) -> TrainOptions:
        if self.data is None and self.resume is None:
            raise ValueError("--data is required (the dataset root made by `wastecls prepare`)")
        if self.weights is not None and not self.weights.is_file():
            raise ValueError(f"weights file {self.weights} does not exist")
        return self


class InferenceOptions(ModelRunOptions):
    """Fields of the commands that run a trained model: evaluate, predict, pseudolabel."""

    model: OnnxOrCheckpoint = Field(
        None, description=f"best.pt, .onnx or {BUILTIN_MODEL} (default: $WASTECLS_MODEL, else "
        "the newest runs/train/*/best.pt, else the built-in model)."
    )
    batch_size: int | None = Field(  # type: ignore[assignment]
        None, ge=1, description="Images per batch (default: the fastest for the backend)."
    )
    backend: Literal["auto", "torch", "onnxruntime", "openvino", "tflite"] = Field(
        "auto", description="auto: onnxruntime for .onnx (and for .pt on a CPU), openvino or "
        "tflite for those exports, else torch."
    )
    workers: int | None = Field(
        None, ge=0, description="On a CPU: processes that each decode and run the model on "
        "their own batches (default: one per core, at most 8); on a GPU: decoding processes "
        "(default: all cores but one). 0: all in this process."
    )


class EvaluateOptions(InferenceOptions, BoxFields, ClassMapFields, FlagFields):
    """`wastecls evaluate`: metrics, reports and pictures on a labelled split."""

    command: ClassVar[str] = "evaluate"
    arguments: ClassVar[tuple[str, ...]] = ("model",)

    data: Path | None = Field(
        None, description="A `prepare` root (with --split) or a class-folder directory."
    )
    split: Literal["test", "val", "train"] = Field("test", description="Split of a prepare root.")
    boxes: Path | None = Field(
        None, description="Evaluate on the boxes of a COCO annotation file instead (with "
        "--images): each box is cropped as prepare crops and scored against its category."
    )
    out: Path | None = Field(
        None, description="Write report.json, per_class.csv, predictions.csv and PNGs here."
    )
    json_output: bool = Field(False, description="Print report.json to stdout (for scripts).")
    allow_subset: bool = Field(
        False, description="Evaluate on the classes shared by model and data."
    )
    overwrite: bool = Field(
        False, description="Write into an --out folder holding files evaluate did not write."
    )
    top_k: int = Field(5, ge=1, description="k of the top-k accuracy.")
    top_losses: int = Field(16, ge=0, description="Images in top_losses.png.")
    unfamiliar: Path | None = Field(
        None, description="A folder of photos of other things: how well the unfamiliar flag "
        "finds them (AUROC, share flagged)."
    )

    @model_validator(mode="after")
    def _check(self) -> EvaluateOptions:
        if (self.data is None) == (self.boxes is None):
            raise ValueError("give --data (class folders) or --boxes (COCO annotations), "
                             "one of them")
        return self


class PredictOptions(InferenceOptions, BoxFields, FlagFields, ClassMapFields):
    """`wastecls predict`: classify images, folders and globs."""

    command: ClassVar[str] = "predict"
    arguments: ClassVar[tuple[str, ...]] = ("inputs",)

    inputs: list[str] = Field(
        default_factory=list, description="Image files, folders (recursive) and globs; video "
        "files, a camera (0) or a stream (rtsp://...)."
    )
    map: Path | None = Field(
        None, description="Answer in coarser classes: a YAML/JSON map of target class -> the "
        "model's classes (e.g. a region's bins); their probabilities are summed."
    )
    fps: float = Field(4.0, gt=0, le=120, description="Video: frames classified per second.")
    smooth: float = Field(
        1.0, ge=0, description="Video: average the calibrated probabilities over the last "
        "SECONDS (0: each frame alone)."
    )
    duration: float | None = Field(
        None, gt=0, description="Video: stop each source after SECONDS (a camera or stream "
        "runs until then, or Ctrl-C)."
    )
    taxonomy: Literal["detect-waste"] | None = Field(
        None, description="Answer in a built-in taxonomy's classes (detect-waste: 7), "
        "probabilities summed; the model's own label is kept beside."
    )
    boxes: Path | None = Field(
        None, description="Classify a detector's boxes instead: a COCO annotation or results "
        "file, or a folder of YOLO label files (with --images)."
    )
    coco_images: Path | None = Field(
        None, description="COCO file whose 'images' list names the images of a COCO results file."
    )
    min_score: float = Field(0.0, ge=0, description="--boxes: skip detections scored below this.")
    save_images: Path | None = Field(
        None, description="--boxes: draw the labelled boxes on each photo into this folder."
    )
    overwrite: bool = Field(
        False, description="Replace an --output file, or write into a --save-images folder, "
        "that predict did not write."
    )
    top_k: int = Field(1, ge=1, description="Labels per image (or box).")
    format: Literal["table", "json", "csv", "geojson"] = Field(
        "table", description="table on screen; json (lines), csv, or geojson (a point per "
        "photo at its EXIF GPS position), also for --output."
    )
    output: Path | None = Field(
        None, description="Write results here (format from --format or the extension); - or "
        "a pipe: standard output or that pipe, as a stream."
    )
    _dash_is_stdout = field_validator("output")(
        lambda path: None if path is not None and str(path) == "-" else path)
    exclude_class: list[str] = Field(
        default_factory=list, description="Never predict this class (repeatable)."
    )
    tta: bool = Field(False, description="Average with the horizontally flipped image.")
    abstain: bool = Field(
        False, description="Answer `unknown` for flagged images (CSV/JSON keep the model's "
        "guess in its own column; COCO results get the `unknown` category)."
    )

    @model_validator(mode="after")
    def _check(self) -> PredictOptions:
        if bool(self.inputs) == (self.boxes is not None):
            raise ValueError("give images to classify, or --boxes DETECTIONS with --images DIR, "
                             "one of them")
        if self.save_images is not None and self.boxes is None:
            raise ValueError("--save-images draws boxes: it goes with --boxes")
        if self.boxes is not None and (self.format == "geojson" or (
                self.output is not None and self.output.suffix.lower() == ".geojson")):
            raise ValueError("--format geojson places whole photos on a map: it does not go "
                             "with --boxes")
        return self


class ExportOptions(Options):
    """`wastecls export`: ONNX / TorchScript files verified against the checkpoint."""

    command: ClassVar[str] = "export"

    model: CheckpointFile = Field(
        None, description=f"best.pt or {BUILTIN_MODEL} to export (default: as in predict)."
    )
    onnx: bool | None = Field(
        None, description="Write an ONNX model (onnxruntime, web, mobile); the default format."
    )
    torchscript: bool = Field(False, description="Write a traced TorchScript module.")
    openvino: bool = Field(
        False, description="Write an OpenVINO model (Intel CPUs, edge boxes): a .openvino "
        "folder (pip install 'wastecls[openvino]')."
    )
    tflite: bool = Field(
        False, description="Write a TFLite model (Android, Raspberry Pi; batch 1), fp32 or "
        "--int8 weights (pip install 'wastecls[tflite]')."
    )
    out: Path | None = Field(
        None, description="Output file (ending in the format's suffix: .onnx, .torchscript, "
        ".openvino), or an existing folder to write into (default: beside the checkpoint, "
        "e.g. best.onnx)."
    )
    overwrite: bool = Field(
        False, description="Replace an exported file that export did not write."
    )
    opset: int = Field(18, ge=1, description="ONNX opset version (18 up to the newest the "
                       "installed torch exports).")
    batch: str = Field("dynamic", description="Batch axis: dynamic, or a fixed size N.")
    half: bool = Field(False, description="fp16 weights (float32 input and output).")
    int8: bool = Field(
        False, description="int8 ONNX via onnxruntime quantization (static when calibrated)."
    )
    calib_data: Path | None = Field(
        None, description="Calibration images for --int8 (default: the training data)."
    )
    verify: bool = Field(True, description="Check the export against the checkpoint.")
    verify_data: Path | None = Field(
        None, description="Images for verification (default: the model's val data)."
    )
    max_drop: float = Field(
        1.0, ge=0, description="--half/--int8: largest accuracy drop allowed, in points."
    )

    @model_validator(mode="after")
    def _check(self) -> ExportOptions:
        if self.onnx is None:  # no format named: ONNX, unless another was asked for alone
            self.onnx = not (self.torchscript or self.openvino or self.tflite)
        if not (self.onnx or self.torchscript or self.openvino or self.tflite):
            raise ValueError("choose a format: --onnx, --torchscript, --openvino or --tflite")
        if self.half and self.tflite:
            raise ValueError("--half is for ONNX and OpenVINO; TFLite is fp32 or --int8")
        if self.half and self.int8:
            raise ValueError("--half and --int8 exclude each other; pick one")
        if self.int8 and not (self.onnx or self.tflite):
            raise ValueError("--int8 quantizes an ONNX or TFLite export: add --onnx or --tflite")
        if self.int8 and self.openvino:
            raise ValueError("--int8 quantizes an ONNX or TFLite export: export OpenVINO in "
                             "its own command")
        if self.batch != "dynamic" and not (self.batch.isdigit() and int(self.batch) > 0):
            raise ValueError("batch must be 'dynamic' or a positive whole number")
        return self


class PseudolabelOptions(InferenceOptions):
    """`wastecls pseudolabel`: label an unlabelled folder with a trained model."""

    command: ClassVar[str] = "pseudolabel"

    data: Path | None = Field(
        None, description="Unlabelled images (default: the model's ROOT/pseudolabel)."
    )
    threshold: float = Field(
        0.9, gt=0, le=1, description="Calibrated probability needed to accept; unfamiliar "
        "images are never accepted."
    )
    out: Path = Field(Path("pseudolabels.csv"), description="Manifest CSV to write.")
    overwrite: bool = Field(
        False, description="Replace an --out file that pseudolabel did not write."
    )
    copy_to: Path | None = Field(
        None, description="Copy accepted images into DIR/<label>/."
    )
    exclude_class: list[str] = Field(
        default_factory=list, description="Never assign this class (e.g. unknown)."
    )


class CalibrateOptions(ModelRunOptions, FitFields):
    """`wastecls calibrate`: fit a model's temperature and unfamiliarity threshold."""

    command: ClassVar[str] = "calibrate"
    arguments: ClassVar[tuple[str, ...]] = ("model",)

    model: OnnxOrCheckpoint = Field(
        None, description="best.pt, or an .onnx written by `wastecls export`."
    )
    data: Path | None = Field(
        None, description="A `prepare` root: the fit runs on its train and val splits."
    )
    out: Path | None = Field(
        None, description="The calibrated copy (default: beside the model, e.g. "
        "best.calibrated.pt); never the model itself."
    )
    overwrite: bool = Field(
        False, description="Replace an --out file that calibrate did not write."
    )
    batch_size: int | None = Field(  # type: ignore[assignment]
        None, ge=1, description="Images per batch (default: the fastest for the backend)."
    )

    @model_validator(mode="after")
    def _check(self) -> CalibrateOptions:
        if self.model is None:
            raise ValueError("give the model to calibrate (a best.pt or an exported .onnx)")
        if self.data is None:
            raise ValueError("--data is required (a dataset root made by `wastecls prepare`)")
        return self


class AuditOptions(ModelRunOptions):
    """`wastecls audit`: likely label errors, copies, outliers and bad photos of a dataset."""

    command: ClassVar[str] = "audit"
    arguments: ClassVar[tuple[str, ...]] = ("root",)

    root: Path = Field(description="A `prepare` root (every split) or a folder of class folders.")
    model: OnnxOrCheckpoint = Field(
        None, description=f"Whose features to read: best.pt, .onnx or {BUILTIN_MODEL} (the "
        "default). A model trained on these labels has learnt their mistakes: prefer "
        "--arch/--weights or a model of other data."
    )
    arch: str | None = Field(
        None, description="Read plain ImageNet features of this timm architecture instead "
        "(with --weights FILE offline)."
    )
    weights: Path | None = Field(None, description="The --arch weights file (.safetensors/.pth).")
    img_size: int | None = Field(
        None, ge=32, le=1024, description="Input size for --arch or a .pt model (default: the "
        "model's own)."
    )
    out: Path | None = Field(
        None, description="Write issues.csv, report.json and index.html here (default: "
        "runs/audit/ROOT-NAME)."
    )
    overwrite: bool = Field(
        False, description="Write into an --out folder holding files audit did not write."
    )
    folds: int = Field(5, ge=2, le=20, description="Folds of the out-of-fold label check.")
    tta: bool = Field(
        False, description="Average each photo's features with its mirror image's (twice the "
        "time; finds more label errors)."
    )
    near_duplicates: bool = Field(
        True, description="Look for copies within and across splits (--no-near-duplicates: "
        "skip, for very large sets)."
    )
    seed: int = Field(0, description="Seed of the folds.")
    batch_size: int | None = Field(  # type: ignore[assignment]
        None, ge=1, description="Images per batch (default: the fastest for the backend)."
    )

    @model_validator(mode="after")
    def _check(self) -> AuditOptions:
        if self.weights is not None and self.arch is None:
            raise ValueError("--weights needs --arch (the architecture of those weights)")
        if self.arch is not None and self.model is not None:
            raise ValueError("give --model or --arch, not both")
        return self


class ReviewOptions(Options):
    """`wastecls review`: go through a queue of photos in a local web page; decisions are kept
    in SQLite."""

    command: ClassVar[str] = "review"
    arguments: ClassVar[tuple[str, ...]] = ("source",)

    source: Path = Field(
        description="An audit folder, a predict CSV/JSON, a pseudolabel manifest, a folder of "
        "photos, or a COCO file (with --images)."
    )
    images: Path | None = Field(None, description="A COCO source's image folder.")
    category: list[str] = Field(
        default_factory=list, description="Review only a COCO source's boxes of this category "
        "(repeat for several)."
    )
    model: OnnxOrCheckpoint = Field(
        None, description=f"Model for the guesses on photos or boxes without them (default: "
        f"{BUILTIN_MODEL})."
    )
    classes: list[str] = Field(
        default_factory=list, description="The classes to choose from (default: the model's, "
        "or those of the source)."
    )
    db: Path | None = Field(
        None, description="The decisions' SQLite file (default: review.sqlite beside SOURCE)."
    )
    order: Literal["margin", "diverse", "given"] = Field(
        "margin", description="margin: most uncertain first; diverse: the same, skipping items "
        "much like those just shown; given: the source's own order."
    )
    host: str = Field("127.0.0.1", description="Address to serve on; another than loopback "
                      "needs a token (printed once).")
    port: int = Field(8765, ge=0, le=65535, description="Port (0: any free port).")
    token: str | None = Field(
        None, description="The token another --host requires (default: a random one)."
    )
    open_browser: bool = Field(False, description="Open the page in the default browser.")
    export: Path | None = Field(
        None, description="Write the decisions instead of serving: a path,label CSV manifest "
        "(train --extra-labels, prepare --relabel) or, for a COCO source, a COCO .json."
    )
    overwrite: bool = Field(False, description="Replace an --export file review did not write.")


class ServeOptions(InferenceOptions, FlagFields, ClassMapFields):
    """`wastecls serve`: the model behind an HTTP endpoint."""

    command: ClassVar[str] = "serve"
    arguments: ClassVar[tuple[str, ...]] = ("model",)

    host: str = Field("127.0.0.1", description="Address to listen on; any other than loopback "
                      "needs --token.")
    port: int = Field(8000, ge=0, le=65535, description="Port (0: any free port).")
    token: str | None = Field(
        None, description="Required as `Authorization: Bearer TOKEN` on every request but "
        "/health (at least 16 characters)."
    )
    max_bytes: int = Field(20_000_000, ge=1, description="Largest upload accepted (bytes).")
    max_batch: int = Field(16, ge=1, description="Images run together at most.")
    batch_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="How long the first image of a batch waits for others "
        "(0: none; images that arrive while the model runs still make the next batch)."
    )
    top_k: int = Field(3, ge=1, description="Labels per image in the answer.")
    exclude_class: list[str] = Field(
        default_factory=list, description="Never answer this class."
    )
    tta: bool = Field(False, description="Average each image with its mirror image.")


COMMAND_OPTIONS: dict[str, type[Options]] = {
    options.command: options
    for options in (PrepareOptions, TrainOptions, EvaluateOptions, PredictOptions, ExportOptions,
                    PseudolabelOptions, CalibrateOptions, AuditOptions, ReviewOptions,
                    ServeOptions)
}


def flag_name(field: str) -> str:
    """The CLI flag of a settings field (`val_frac` -> `--val-frac`)."""
    return "--" + field.replace("_", "-")


def write_config(options: Options, path: Path) -> None:
    """Save the fully resolved options as a config file that repeats the run (`--config`)."""
    body = {options.command: json.loads(options.model_dump_json())}
    atomic_write_text(path, yaml.safe_dump(body, sort_keys=False))


OPTIONS_VERSION = 1  # the version of the field names a checkpoint's options record uses
# How an older record's fields become this version's: for each version, the fields it renamed
# (old -> new name) or removed (old -> None). A record of version v goes through every step
# after v in turn. Renaming or removing a TrainOptions field means a step here.
OPTION_MIGRATIONS: dict[int, dict[str, str | None]] = {}


def options_record(options: Options) -> dict[str, Any]:
    """What a checkpoint stores of its run's options: versioned, so that a later release with
    renamed fields can still read (and resume) it."""
    return {"version": OPTIONS_VERSION, "command": options.command,
            "values": json.loads(options.model_dump_json())}


def stored_options(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The options a checkpoint was trained with, migrated to this version's field names.

    Checkpoints from before versioned records hold the plain dump under `settings` (the field
    names of version 1). A record from a newer release than this one is returned as stored;
    `unknown_options` tells what this release cannot use.
    """
    record = checkpoint.get("options")
    if not isinstance(record, Mapping):
        legacy = checkpoint.get("settings")
        return dict(legacy) if isinstance(legacy, Mapping) else {}
    values = dict(record.get("values") or {})
    version = record.get("version", OPTIONS_VERSION)
    for step in sorted(v for v in OPTION_MIGRATIONS if isinstance(version, int) and v > version):
        for old, new in OPTION_MIGRATIONS[step].items():
            if old in values:
                value = values.pop(old)
                if new is not None:
                    values.setdefault(new, value)
    return values


def unknown_options(values: Mapping[str, Any], cls: type[Options]) -> list[str]:
    """Stored fields that `cls` does not have (after migration): written by another release."""
    return sorted(set(values) - set(cls.model_fields))
