"""Devices, seeding and mixed precision: the few facts about the machine every mode needs."""

from __future__ import annotations

import contextlib
import ctypes
import platform
import random
from collections.abc import Iterator

import numpy as np
import torch

from waste_cli.core.errors import DeviceError

__all__ = ["amp_dtype", "autocast", "keep_freed_memory", "memory_format", "resolve_device",
           "seed_everything", "to_device"]


def _available() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(spec: str) -> torch.device:
    """`auto|cpu|cuda|cuda:N|mps` -> a device that exists; an absent one is an error.

    `auto` picks CUDA, then MPS, then the CPU. Asking for a device by name never falls back
    silently: a run meant for a GPU that lands on the CPU would only look slow.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(
            f"Unknown device '{spec}'. Use auto, cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda":
        index = 0 if device.index is None else device.index
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise DeviceError(
                f"Device '{spec}' was asked for but this machine has no such CUDA device "
                f"(available: {', '.join(_available())}). Use --device cpu or --device auto."
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(
            f"Device 'mps' was asked for but is not available here (available: "
            f"{', '.join(_available())})."
        )
    if device.type not in {"cpu", "cuda", "mps"}:
        raise DeviceError(f"Unsupported device '{spec}'. Use auto, cpu, cuda, cuda:N or mps.")
    return device


def seed_everything(seed: int, accelerators: bool = True) -> None:
    """Seed Python, NumPy and torch so that a CPU run repeats exactly; with `accelerators`,
    every device's generator too. Per-image augmentation seeds leave them out: it runs on the
    CPU, and seeding every device costs more than the augmentation's random draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if accelerators:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory() -> bool:
    """Keep freed memory in the process instead of handing it back to the kernel (glibc only).

    A training step on the CPU frees and re-allocates the same large activation buffers. By
    default glibc serves blocks of that size with mmap and unmaps them when freed, so every
    step page-faults its activations in again, a large share of a CPU step (BENCHMARKS.md).
    Turning mmap off and raising the trim threshold keeps the pages, at a higher peak memory.
    Returns whether the setting took effect; elsewhere (musl, macOS, Windows) it does nothing.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware supports it (CPU, Ampere+), else fp16 (older CUDA GPUs)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool) -> Iterator[None]:
    """Mixed precision for the forward pass when enabled; a no-op otherwise."""
    if not enabled:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=amp_dtype(device)):
        yield


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of the model's weights and of every batch fed to it."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move a batch to `device` in the memory format the model was set up with."""
    return images.to(device, non_blocking=True, memory_format=memory_format(channels_last))
