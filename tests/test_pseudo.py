"""Pseudo-labelling: labels stay attached, per-epoch and per-batch training, the command."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE, run_cli, tiny_train
from PIL import Image

from waste_cli.core.console import Reporter
from waste_cli.core.errors import DataError
from waste_cli.data.batching import run_labelled
from waste_cli.data.loading import weighted_sampler
from waste_cli.train.self_training import (
    MixedSampler,
    TeacherCalibration,
    label_pool,
    load_pool,
    pseudo_weight,
)

COLOURS = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}


class ColourModel:
    """A stand-in model whose answer is the dominant colour of the image."""

    name = "colour"
    on_cpu = True
    calibration = None

    def __init__(self) -> None:
        self.classes = list(COLOURS)
        self.data_config = {"input_size": [3, 32, 32], "interpolation": "bilinear",
                            "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0,
                            "crop_mode": "center"}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        colour = images.mean(axis=(2, 3))
        return {"logits": colour * 10, "features": colour}

    def for_worker(self, threads: int) -> ColourModel:
        return self


def test_labels_stay_attached_on_a_shuffled_pool(tmp_path):
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    truth = {}
    for i in range(30):
        colour = random.Random(i).choice(list(COLOURS))
        Image.new("RGB", (40, 40), COLOURS[colour]).save(pool_dir / f"img{i:02}.png")
        truth[f"img{i:02}.png"] = colour
    pool = load_pool(pool_dir, [])
    random.Random(1).shuffle(pool.paths)
    pool.truth = truth
    outputs, bad = run_labelled(ColourModel(), [(p, -1) for p in pool.paths], 4, 2,
                                Reporter(quiet=True), "label")
    logits, features = (torch.from_numpy(outputs[k]) for k in ("logits", "features"))
    anything = TeacherCalibration(1.0, np.eye(3, dtype=np.float16), 1, float("inf"))
    accepted, stats = label_pool(logits, features, pool, list(COLOURS), 0.5, anything)
    assert not bad and len(accepted) == 30
    for index, label in accepted:
        assert list(COLOURS)[label] == truth[pool.paths[index].name]
    assert stats.correct == stats.with_truth == 30


def test_unfamiliar_pool_images_are_never_accepted(tmp_path):
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    for i, colour in enumerate(["red", "blue"] * 4):
        Image.new("RGB", (40, 40), COLOURS[colour]).save(pool_dir / f"{colour}{i}.png")
    pool = load_pool(pool_dir, [])
    outputs, _ = run_labelled(ColourModel(), [(p, -1) for p in pool.paths], 4, 0,
                              Reporter(quiet=True), "label")
    red = outputs["features"][[p.name.startswith("red") for p in pool.paths]]
    # The teacher validated on red images only: blue ones are unfamiliar, however confident.
    teacher = TeacherCalibration.fit(outputs["logits"][:0], np.array([], int), red, 0.95)
    accepted, _ = label_pool(*(torch.from_numpy(outputs[k]) for k in ("logits", "features")),
                             pool, list(COLOURS), 0.5, teacher)
    assert sorted(pool.paths[i].name[:3] for i, _ in accepted) == ["red"] * 4


def test_pseudo_weight_ramps_up_linearly():
    weights = [pseudo_weight(2.0, start=3, ramp=2, epoch=e) for e in range(6)]
    assert weights == [0.0, 0.0, 1.0, 2.0, 2.0, 2.0]
    assert pseudo_weight(1.0, start=1, ramp=0, epoch=0) == 1.0


def test_mixed_sampler_keeps_the_weighted_labelled_draws():
    labels = [0] * 30 + [1] * 6
    generator = torch.Generator().manual_seed(0)
    sampler = MixedSampler(weighted_sampler(labels, 2, generator), 36, 10, generator)
    draws = list(sampler)
    assert len(draws) == len(sampler) == 46
    assert sorted(i for i in draws if i >= 36) == list(range(36, 46))  # each pseudo image once
    labelled = Counter(labels[i] for i in draws if i < 36)
    assert labelled[1] > 6  # the rare class is oversampled


@pytest.fixture(scope="module")
def with_pool(tmp_path_factory) -> Path:
    from waste_cli.data.prepare import prepare
    from waste_cli.options import PrepareOptions

    out = tmp_path_factory.mktemp("pool") / "data"
    prepare(PrepareOptions(source=SAMPLE, out=out, size=40, workers=1, unlabeled_frac=0.5),
            Reporter(quiet=True))
    return out


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("mode", ["per-epoch", "per-batch"])
def test_training_with_pseudo_labels_logs_the_pool(with_pool, tmp_path, mode):
    run = tiny_train(with_pool, tmp_path, pseudolabel=mode, pseudo_start=2, epochs=3,
                     pseudo_threshold=0.01, pseudo_ramp=0, sampler="weighted")
    rows = _rows(run.run_dir)
    pool = len(list((with_pool / "pseudolabel").glob("*.jpg")))
    assert float(rows[0]["pseudo_accepted"]) == 0
    for row in rows[1:]:
        assert 0 < float(row["pseudo_accepted"]) <= float(row["pseudo_pool"]) <= pool
        if mode == "per-epoch":  # a threshold below 1/6 accepts every familiar image
            assert float(row["pseudo_accepted"]) + float(row["pseudo_unfamiliar"]) == pool
        assert 0 <= float(row["pseudo_precision"]) <= 1  # prepare recorded the pool's truth
        per_class = sum(float(row[f"pseudo_{c}"]) for c in (
            "cardboard", "glass", "metal", "paper", "plastic", "trash"))
        assert per_class == float(row["pseudo_accepted"])


def test_validation_and_test_images_never_enter_the_pool(with_pool, tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        tiny_train(with_pool, tmp_path, pseudolabel="per-epoch", pseudo_data=with_pool / "val")
    pool = load_pool(with_pool, [*(with_pool / "val").rglob("*.jpg"),
                                 *(with_pool / "test").rglob("*.jpg")])
    assert not any(p.parent.parent.name in ("val", "test") for p in pool.paths)


def test_pseudolabel_command_and_extra_labels_round(trained, with_pool, tmp_path):
    manifest = tmp_path / "manifest.csv"
    result = run_cli("pseudolabel", "-m", trained.run_dir / "best.pt", "--data",
                     with_pool / "pseudolabel", "--threshold", "0.01", "--out", manifest,
                     "--copy-to", tmp_path / "sorted", "--exclude-class", "trash",
                     "--backend", "torch")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(manifest.read_text())))
    assert set(rows[0]) == {"path", "label", "confidence", "margin", "flag", "accepted"}
    assert all(r["accepted"] == "0" for r in rows if r["flag"] == "unfamiliar")
    assert len(rows) == len(list((with_pool / "pseudolabel").glob("*.jpg")))
    assert all(r["label"] != "trash" and float(r["margin"]) >= 0 for r in rows)
    copied = list((tmp_path / "sorted").rglob("*.jpg"))
    assert len(copied) == sum(r["accepted"] == "1" for r in rows) > 0
    base = tiny_train(with_pool, tmp_path, epochs=1, name="base")
    extra = tiny_train(with_pool, tmp_path, epochs=1, name="extra", extra_labels=[manifest])
    summaries = [json.loads((r.run_dir / "summary.json").read_text()) for r in (base, extra)]
    assert summaries[1]["train_images"] == summaries[0]["train_images"] + len(copied)
