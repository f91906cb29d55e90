"""The automatic defaults: what `auto` resolves to on a CPU and (mocked) on a GPU, that each
choice is printed once and written to config.yaml, and that explicit values win."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import TINY, run_cli, tiny_train

from waste_cli.model.weights import load_weights
from waste_cli.options import TrainOptions
from waste_cli.train import recipe
from waste_cli.train.recipe import resolve_auto

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")


def _resolve(data, device=CPU, **fields):
    options = TrainOptions(data=data, **fields)
    paths = [p for split in ("train", "val") for p in (data / split).rglob("*.jpg")]
    resolved, choices = resolve_auto(options, device, paths)
    return resolved, {c.name: c for c in choices}


def test_cpu_defaults_are_the_measured_recipe(prepared):
    options, choices = _resolve(prepared)
    assert (options.img_size, options.freeze_layers, options.aug, options.cache,
            options.amp, options.freeze_epochs) == (288, 6, "light", "ram", False, 3)
    assert set(choices) == {"img_size", "freeze_layers", "freeze_epochs", "aug", "cache", "amp"}
    assert str(choices["freeze_layers"]).startswith("freeze-layers auto -> 6 (cpu")
    assert "LP-FT" in str(choices["freeze_epochs"])  # a quarter of the 12 epochs: 3
    assert str(choices["amp"]).startswith("amp auto -> off")


def test_the_head_first_only_where_there_are_features_and_one_process(prepared, monkeypatch):
    assert _resolve(prepared, pretrained=False)[0].freeze_epochs == 0
    assert _resolve(prepared, freeze_backbone=True)[0].freeze_epochs == 0
    assert _resolve(prepared, epochs=20)[0].freeze_epochs == 5
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _resolve(prepared)[0].freeze_epochs == 0


@pytest.mark.parametrize("device", [CUDA, MPS])
def test_gpu_defaults_train_every_layer(prepared, device):
    """Resolution needs no GPU: the device decides, so a mocked one is enough."""
    options, choices = _resolve(prepared, device)
    assert (options.img_size, options.freeze_layers, options.aug) == (288, 0, "strong")
    assert options.amp is (device.type == "cuda")
    assert str(choices["freeze_layers"]) == f"freeze-layers auto -> 0 ({device.type}: every " \
                                            "layer trains)"


@pytest.mark.parametrize(("arch", "img_size", "frozen"), [
    ("resnet50", 288, 3),           # timm's own test size; stem + 2 of 4 stages
    ("efficientnet-b2", 352, 6),    # 1.3 x 260, rounded to 32
    ("vit_small_patch16_224", 224, 11),  # fixed input size
])
def test_rules_follow_the_architecture(prepared, arch, img_size, frozen):
    options, _ = _resolve(prepared, arch=arch)
    assert (options.img_size, options.freeze_layers) == (img_size, frozen)


def test_random_weights_train_everything_at_the_models_size(prepared):
    options, choices = _resolve(prepared, pretrained=False)
    assert (options.img_size, options.freeze_layers) == (224, 0)
    assert "random weights" in choices["freeze_layers"].reason


def test_cache_stays_off_when_memory_is_short(prepared, monkeypatch):
    monkeypatch.setattr(recipe, "available_memory", lambda: 2**20)
    options, choices = _resolve(prepared)
    assert options.cache == "none" and "too large" in choices["cache"].reason


def test_explicit_values_win(prepared):
    options, choices = _resolve(prepared, img_size=64, freeze_layers=2, aug="strong",
                                 cache="none", amp=True, freeze_epochs=0)
    assert choices == {}
    assert (options.img_size, options.freeze_layers, options.aug, options.cache,
            options.amp) == (64, 2, "strong", "none", True)


def test_a_wastecls_checkpoint_keeps_its_size(prepared, trained):
    options, choices = _resolve(prepared, weights=trained.run_dir / "best.pt")
    assert options.img_size == 32 and "trained at" in choices["img_size"].reason


def test_choices_are_printed_once_and_written_to_config(prepared, tmp_path):
    result = run_cli("train", "--data", prepared, "--arch", "test_efficientnet",
                     "--no-pretrained", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                     "--project", tmp_path)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if " auto -> " in line]
    assert [line.split()[0] for line in lines] == ["img-size", "freeze-layers", "freeze-epochs",
                                                    "aug", "amp", "cache"]
    config = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())["train"]
    assert (config["img_size"], config["freeze_layers"], config["aug"], config["amp"],
            config["cache"]) == (160, 0, "light", False, "ram")
    again = run_cli("train", "--config", tmp_path / "exp" / "config.yaml", "--project",
                    tmp_path, "--name", "again")
    assert again.exit_code == 0 and " auto -> " not in again.output


@pytest.mark.parametrize(("value", "ok"), [("auto", True), ("40", True), ("big", False),
                                           ("8", False)])
def test_number_or_auto_flags_parse(prepared, tmp_path, value, ok):
    result = run_cli("train", "--data", prepared, "--img-size", value, "--project", tmp_path,
                     "--arch", TINY["arch"], "--no-pretrained", "--epochs", "1", "--workers",
                     "0", "--batch-size", "8", "-q")
    assert (result.exit_code == 0) is ok, result.output
    if not ok:
        assert "img_size (--img-size" in result.output and "Traceback" not in result.output


def test_help_lists_the_choices():
    text = " ".join(run_cli("train", "--help", env={"COLUMNS": "200"}).output.split())
    for shown in ("<int|auto>", "<auto|none|light|strong>", "<auto|none|ram>",
                  "<val_loss|val_acc|val_macro_f1>", "<cosine|step|exp|none>"):
        assert shown in text, shown
    assert "<bool>" not in text.replace("--help -h <bool>", "")


def test_fine_tuning_keeps_the_rows_of_known_classes(prepared, tmp_path):
    """A wastecls checkpoint's classifier is matched by class name, not by position."""
    import timm

    source = tiny_train(prepared, tmp_path, epochs=1)
    checkpoint = torch.load(source.run_dir / "best.pt", weights_only=True)
    classes = checkpoint["classes"]
    target = [classes[2], "bio", classes[0]]
    model = timm.create_model("test_efficientnet", num_classes=3)
    load_weights(model, source.run_dir / "best.pt", target)
    head = checkpoint["model"]["classifier.weight"]
    weight = model.get_classifier().weight.detach()
    assert torch.equal(weight[0], head[2]) and torch.equal(weight[2], head[0])
    assert not weight[1].any()
