"""Shared fixtures: the bundled TrashNet sample and a COCO dataset composed from it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "trashnet-mini"
COCO_NAMES = {  # TrashNet folder -> a TACO category of the same material
    "cardboard": "Corrugated carton",
    "glass": "Glass bottle",
    "metal": "Drink can",
    "paper": "Normal paper",
    "plastic": "Clear plastic bottle",
    "trash": "Cigarette",
}


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    """A writable copy of the bundled sample (to add broken files to)."""
    dst = tmp_path / "raw"
    shutil.copytree(SAMPLE, dst, ignore=shutil.ignore_patterns("*.md"))
    return dst


def build_coco(root: Path, scenes: int = 6) -> tuple[Path, Path]:
    """Paste real sample photos onto 2x2 canvases and annotate where they went (COCO json)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    classes = sorted(COCO_NAMES)
    categories = [{"id": i + 1, "name": COCO_NAMES[c]} for i, c in enumerate(classes)]
    photos = {c: sorted((SAMPLE / c).glob("*.jpg")) for c in classes}
    images, annotations = [], []
    for s in range(scenes):
        canvas = Image.new("RGB", (256, 256), (200, 200, 200))
        for q in range(3):  # three objects; the fourth quadrant is left as background
            cls = classes[(s + q) % len(classes)]
            photo = Image.open(photos[cls][s % len(photos[cls])]).convert("RGB").resize((96, 96))
            x, y = (q % 2) * 128 + 16, (q // 2) * 128 + 16
            canvas.paste(photo, (x, y))
            annotations.append({"id": len(annotations) + 1, "image_id": s + 1,
                                "category_id": classes.index(cls) + 1, "bbox": [x, y, 96, 96]})
        canvas.save(images_dir / f"scene{s}.jpg", quality=90)
        images.append({"id": s + 1, "file_name": f"scene{s}.jpg", "width": 256, "height": 256})
    coco = {"images": images, "annotations": annotations, "categories": categories}
    ann = root / "annotations.json"
    ann.write_text(json.dumps(coco))
    return ann, images_dir


@pytest.fixture
def coco_dataset(tmp_path: Path) -> tuple[Path, Path]:
    return build_coco(tmp_path / "coco")


def run_cli(*args: str, env: dict[str, str] | None = None):
    """Invoke `wastecls ARGS` in-process; returns Typer's Result (exit_code, output)."""
    from typer.testing import CliRunner

    from waste_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample prepared at 40 px (train 9 / val 1 / test 2 per class). Read-only."""
    from waste_cli.core.console import Reporter
    from waste_cli.data.prepare import prepare
    from waste_cli.options import PrepareOptions

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(PrepareOptions(source=SAMPLE, out=out, size=40, workers=1), Reporter(quiet=True))
    return out


TINY = {"arch": "test_efficientnet", "pretrained": False, "img_size": 32, "batch_size": 8,
        "workers": 0, "epochs": 2, "quiet": True}


def tiny_trainer(data: Path, project: Path, **overrides):
    """A Trainer for the tiny timm test model on `data`, set up but not run (on the CPU)."""
    import torch

    from waste_cli.core.console import Reporter
    from waste_cli.options import TrainOptions
    from waste_cli.train.distributed import Distributed
    from waste_cli.train.run import build_trainer

    options = TrainOptions(data=data, project=project, **{**TINY, **overrides})
    return build_trainer(options, Reporter(quiet=True), Distributed(), torch.device("cpu"))


def tiny_train(data: Path, project: Path, **overrides):
    """Train the tiny timm test model on `data`; returns the TrainResult."""
    from waste_cli.core.console import Reporter
    from waste_cli.options import TrainOptions
    from waste_cli.train.run import train

    options = TrainOptions(data=data, project=project, **{**TINY, **overrides})
    return train(options, Reporter(quiet=True))


@pytest.fixture
def model(trained, tmp_path) -> Path:
    """A private copy of the trained checkpoint (export and the ONNX twin write beside it)."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(trained.run_dir / "best.pt", folder / "best.pt")
    return folder / "best.pt"


@pytest.fixture(scope="session")
def trained(prepared: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tiny training run shared by the evaluate/predict/export tests. Read-only."""
    return tiny_train(prepared, tmp_path_factory.mktemp("runs"), epochs=2)


HOSTILE_CLASS = "<img src=x onerror=alert(1)>"


def build_audit_root(root: Path) -> dict[str, Path]:
    """The sample as a train split plus planted problems; returns each planted file by name:
    a shrunk copy in test/ (a leak), a mirrored copy filed under another class (a conflict), a
    file that is no image, a tiny and a blank photo, and a class with a hostile name."""
    import numpy as np

    for cls in sorted(COCO_NAMES):
        shutil.copytree(SAMPLE / cls, root / "train" / cls)
    glass = sorted((root / "train" / "glass").glob("*.jpg"))
    planted = {"leak": root / "test" / "glass" / "leak.jpg",
               "conflict": root / "train" / "paper" / "conflict.jpg",
               "unreadable": root / "train" / "metal" / "broken.jpg",
               "tiny": root / "train" / "plastic" / "tiny.jpg",
               "blank": root / "train" / "trash" / "blank.jpg"}
    planted["leak"].parent.mkdir(parents=True)
    photo = Image.open(glass[0]).convert("RGB")
    photo.resize((photo.width * 4 // 5, photo.height * 4 // 5)).save(planted["leak"], quality=80)
    Image.open(glass[1]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(planted["conflict"])
    planted["unreadable"].write_bytes(b"this is not a JPEG")
    Image.new("RGB", (20, 20), (90, 60, 30)).save(planted["tiny"])
    Image.new("RGB", (120, 120), (128, 128, 128)).save(planted["blank"])
    hostile = root / "train" / HOSTILE_CLASS
    hostile.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        pixels = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(hostile / f"noise{k}.png")
    return planted


@pytest.fixture(scope="session")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], Path]:
    """(dataset root, planted files, audit folder): one `wastecls audit` run with the
    built-in model's features, shared by the audit and review tests. Read-only."""
    base = tmp_path_factory.mktemp("audit")
    planted = build_audit_root(base / "data")
    result = run_cli("audit", base / "data", "--out", base / "audit", "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    return base / "data", planted, base / "audit"
