"""What the benchmark scripts share: where the real data and weights are, and the model-only
training rate that end-to-end figures are compared with."""

from __future__ import annotations

import argparse
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.optim import create_optimizer_v2

from waste_cli.model.factory import freeze_layers
from waste_cli.options import TrainOptions
from waste_cli.train.recipe import resolve_auto


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data (TrashNet-style class folders) and --weights (local pretrained weights)."""
    parser.add_argument("--data", type=Path, default=Path("../shared/data/trashnet"))
    parser.add_argument("--weights", type=Path,
                        default=Path("../shared/weights/tf_efficientnet_lite0.in1k.safetensors"))


def default_settings(data: Path, weights: Path | None) -> TrainOptions:
    """What `wastecls train --data DATA --weights W` resolves its `auto` settings to on this
    CPU (a `prepare` root: its train and val images decide the cache)."""
    paths = [p for split in ("train", "val") for p in (data / split).rglob("*.jpg")]
    return resolve_auto(TrainOptions(data=data, weights=weights), torch.device("cpu"),
                        paths)[0]


def model_only_rate(arch: str, size: int, batch: int, amp: bool, frozen_layers: int,
                    seconds: float = 30.0) -> float:
    """Images/s of forward+backward+AdamW step on tensors already in memory (bf16 autocast
    when `amp`, as `wastecls train --amp` on a CPU; the first `frozen_layers` layer groups
    fixed and in eval mode, as `--freeze-layers`)."""
    model = timm.create_model(arch, num_classes=6).to(memory_format=torch.channels_last).train()
    for module in freeze_layers(model, frozen_layers):
        module.eval()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += batch
    return done / (time.perf_counter() - start)


def split_and_onnx(data: Path, model: Path, root: Path) -> tuple[Path, Path]:
    """`wastecls prepare DATA` (the default split) into root/data, and MODEL exported to ONNX
    as root/model.onnx: the held-out photos and the model the inference benchmarks use."""
    subprocess.run(["wastecls", "prepare", str(data), "--out", str(root / "data"), "-q"],
                   check=True, capture_output=True)
    onnx = root / "model.onnx"
    subprocess.run(["wastecls", "export", "-m", str(model), "--onnx", "--out", str(onnx), "-q"],
                   check=True, capture_output=True)
    return root / "data", onnx


def runner_rate(runner: Callable[[np.ndarray], object], batch: np.ndarray,
                seconds: float = 4.0) -> float:
    """Images/s of a model runner (a wastecls OnnxRunner, say) on one fixed batch, after a
    first call that is not counted (session start, memory)."""
    runner(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def wait_until_up(url: str, seconds: float = 60.0) -> dict:
    """The JSON of `url` once a server just started answers it."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            return httpx.get(url).json()
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def review_in_chromium(audit: Path, port: int, *args: str,
                       viewport: dict | None = None) -> Iterator[tuple[Any, dict]]:
    """`wastecls review AUDIT` on `port` and its page open in headless Chromium: (page,
    the review's /api/state)."""
    import shutil
    import sys

    from playwright.sync_api import sync_playwright

    server = subprocess.Popen([sys.executable, "-m", "waste_cli", "review", str(audit),
                               "--port", str(port), *args])
    try:
        state = wait_until_up(f"http://127.0.0.1:{port}/api/state")
        with sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(**({"viewport": viewport} if viewport else {}))
            page.goto(f"http://127.0.0.1:{port}/")
            yield page, state
            browser.close()
    finally:
        server.terminate()
        server.wait()
