"""Inference policy, decided in one place: in what batches a model runs, and how the work is
spread over processes. predict, evaluate, pseudolabel and the pseudo-label pass of
training all ask here; the numbers behind each default are in BENCHMARKS.md.
"""

from __future__ import annotations

import math
import os

__all__ = [
    "DEFAULT_FAMILIAR_SHARE",
    "DEFAULT_MIN_CONFIDENCE",
    "MAX_PROCESSES",
    "TASK_IMAGES",
    "default_batch_size",
    "default_workers",
    "plan_workers",
]

DEFAULT_FAMILIAR_SHARE = 0.95  # share of validation photos a calibrated model lets pass
DEFAULT_MIN_CONFIDENCE = 0.4  # bench/bench_confidence.py: see BENCHMARKS.md
MAX_PROCESSES = 8  # each worker process holds a copy of the model
TASK_IMAGES = 16  # images per job sent to a worker: small batches without a round trip each


def default_batch_size(backend: str, on_cpu: bool) -> int:
    """The fastest batch end to end: on a CPU, small batches in one single-threaded worker per
    core beat large ones (workers get tasks of TASK_IMAGES, so small batches cost no round
    trips); a GPU wants large batches."""
    if not on_cpu:
        return 32
    return 2 if backend == "onnxruntime" else 4


def default_workers() -> int:
    """Loader processes beside a model that has its own threads: all cores but one, 1 to 8."""
    return max(1, min(MAX_PROCESSES, (os.cpu_count() or 2) - 1))


def plan_workers(on_cpu: bool, workers: int | None, images: int, batch_size: int,
                 spread_model: bool = True) -> tuple[int, bool]:
    """(worker processes, whether they run the model too) for `images` inputs.

    On a CPU, `workers` processes each decode and infer with one thread (default: one per core,
    at most eight; a single batch runs here, where the model is already loaded): decoding never
    competes with the model's threads, and a small model scales better over processes than over
    threads. Elsewhere, or without `spread_model` (a training process, whose forked copies
    would make its next steps pay copy-on-write faults), they only decode (default: all cores
    but one). 0 always means everything in this process.
    """
    if on_cpu and spread_model:
        batches = math.ceil(images / batch_size)
        wanted = min(os.cpu_count() or 1, MAX_PROCESSES) if workers is None else workers
        count = min(wanted, batches) if batches > 1 or workers is not None else 0
        return count, count > 0
    wanted = default_workers() if workers is None else workers
    return min(wanted, max(1, images // 8)), False
