"""Batched inference: the forward loop of evaluate, predict and pseudo-labelling.

Images are decoded into numpy arrays and runners take and return numpy arrays, so predicting
with an ONNX model never imports torch (a second or more of every start).

How the work is spread (whole batches in worker processes on a CPU, decoding-only workers
elsewhere) is `policy.plan_workers`'s decision; this module carries it out. Results always
come back in input order, with at most two tasks per worker in flight, so memory does not grow
with the number of inputs.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from waste_cli.core.console import Reporter
from waste_cli.core.errors import WasteclsError
from waste_cli.core.policy import TASK_IMAGES, plan_workers
from waste_cli.core.processes import die_with_parent, interrupts_held
from waste_cli.data.detections import Region
from waste_cli.data.sources import DECODE_ERRORS, box_reduction, cut_box, decode_image
from waste_cli.data.transforms import eval_transform

if TYPE_CHECKING:
    from waste_cli.model.backends import Outputs, Runner

__all__ = ["ArrayBatch", "EvalImages", "Region", "Speed", "eval_short_side", "iterate_batches",
           "run_labelled"]

# (images, or the model's outputs by name; labels; sample indices of those rows; sample indices
# that were unreadable)
ArrayBatch = tuple[Any, np.ndarray, np.ndarray, list[int]]
# A finished batch: (batch, (decode seconds, resize seconds), model seconds).
Done = tuple[ArrayBatch, tuple[float, float], float]


@dataclass
class Speed:
    """Where a run's time went, per image (Ultralytics' "Speed:" line), summed over processes.

    `inference` per image, times the images, over the processes that ran the model, is how long
    the model alone would have needed: the end-to-end rate can be compared with it inside one
    run, whatever the machine's speed was doing meanwhile.
    """

    images: int = 0
    decode: float = 0.0  # seconds: read and decode (and crop a box)
    resize: float = 0.0  # seconds: resize, centre crop, normalise
    inference: float = 0.0  # seconds in the model
    processes: int = 1  # that ran the model

    def add(self, images: int, preprocess: tuple[float, float], inference: float) -> None:
        self.images += images
        self.decode += preprocess[0]
        self.resize += preprocess[1]
        self.inference += inference

    def per_image_ms(self) -> dict[str, float]:
        each = 1000 / max(self.images, 1)
        return {"decode": round(self.decode * each, 3), "resize": round(self.resize * each, 3),
                "preprocess": round((self.decode + self.resize) * each, 3),
                "inference": round(self.inference * each, 3), "processes": self.processes}

    def summary(self) -> str:
        ms = self.per_image_ms()
        return (f"Speed: {ms['decode']:.1f} ms decode, {ms['resize']:.1f} ms resize, "
                f"{ms['inference']:.1f} ms inference per image, in {self.processes} process"
                + ("es" if self.processes > 1 else ""))


def eval_short_side(data_config: dict[str, Any]) -> int:
    """The shorter side the evaluation transform resizes to: all a decoder needs to keep."""
    size = max(data_config["input_size"][1:])
    return math.floor(size / min(1.0, data_config["crop_pct"]))


class EvalImages:
    """Samples (path, class index), or boxes on them, -> batches preprocessed exactly as the
    model was evaluated.

    Each image is decoded once however many of its boxes follow one another, and only at the
    size its use needs (a reduced JPEG decode: `decode_image`). A box is cropped as `prepare`
    cropped the training boxes, with the crop settings the model carries (`crop`: square, zoom,
    size)."""

    def __init__(self, samples: list[tuple[Path, int]], data_config: dict[str, Any],
                 regions: list[Region | None] | None = None,
                 crop: dict[str, Any] | None = None) -> None:
        self.samples, self.transform = samples, eval_transform(data_config)
        self.shape = tuple(data_config["input_size"])
        self.short = eval_short_side(data_config)
        self.regions = regions
        crop = crop or {}
        self.square, self.zoom = bool(crop.get("square", False)), float(crop.get("zoom", 1.0))
        self.crop_size = int(crop.get("size", 0))
        self._by_path: dict[Path, list[Region]] = {}
        for (path, _), region in zip(samples, regions or [], strict=False):
            if region is not None:
                self._by_path.setdefault(path, []).append(region)
        self._last: tuple[Path, Image.Image, tuple[int, int]] | None = None
        self.decode_seconds = 0.0  # of the last batch

    def image(self, i: int) -> Image.Image:
        """Sample `i` as the picture the transform gets; raises one of DECODE_ERRORS."""
        path = self.samples[i][0]
        region = self.regions[i] if self.regions else None
        if region is None:
            return decode_image(path.read_bytes(), self.short)[0]
        if self._last is None or self._last[0] != path:
            regions = self._by_path[path]
            target = self.crop_size or self.short

            def reduction(width: int, height: int) -> float:
                corners = [r.corners((width, height), self.square, self.zoom) for r in regions]
                return box_reduction(corners, target)(width, height)

            self._last = (path, *decode_image(path.read_bytes(), reduction))
        _, image, full_size = self._last
        crop = cut_box(image, full_size, region.corners(full_size, self.square, self.zoom),
                       size=self.crop_size)
        if isinstance(crop, str):
            raise ValueError(crop)
        return crop

    def reason(self, i: int) -> str:
        """Why sample `i` could not be used, for the report."""
        try:
            self.transform(self.image(i))
        except DECODE_ERRORS as exc:
            return f"unreadable image: {exc}" if self.regions is None or \
                self.regions[i] is None else str(exc)
        except OSError as exc:  # a folder or a permission problem
            return f"cannot read: {exc.strerror or exc}"
        return "unreadable image"

    def batch(self, indices: list[int]) -> ArrayBatch:
        """Decode and preprocess `indices`; unreadable images are listed, not raised."""
        images = np.empty((len(indices), *self.shape), np.float32)
        readable, bad = [], []
        self.decode_seconds = 0.0
        for i in indices:
            start = time.perf_counter()
            try:
                picture = self.image(i)
            except DECODE_ERRORS:
                bad.append(i)
                continue
            finally:  # a file that fails to decode took decoding time too
                self.decode_seconds += time.perf_counter() - start
            try:
                self.transform(picture, out=images[len(readable)])
                readable.append(i)
            except DECODE_ERRORS:
                bad.append(i)
        labels = np.array([self.samples[i][1] for i in readable], dtype=np.int64)
        return images[: len(readable)], labels, np.array(readable, dtype=np.int64), bad


def _infer(runner: Runner, batch: ArrayBatch) -> tuple[ArrayBatch, float]:
    """(the batch with the model's outputs instead of images, seconds in the model); a batch
    without readable images has no outputs."""
    images, labels, indices, bad = batch
    start = time.perf_counter()
    outputs = runner(images) if len(indices) else {}
    return (outputs, labels, indices, bad), time.perf_counter() - start


def _preprocess(images: EvalImages, indices: list[int]
                ) -> tuple[ArrayBatch, tuple[float, float]]:
    """The batch, and (seconds decoding, seconds resizing and normalising)."""
    start = time.perf_counter()
    batch = images.batch(indices)
    total = time.perf_counter() - start
    return batch, (images.decode_seconds, total - images.decode_seconds)


_WORKER: tuple[EvalImages, Runner | None] | None = None  # this worker process's job


def _start_worker(images: EvalImages, runner: Runner | None, threads: int, parent: int) -> None:
    global _WORKER
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if "torch" in sys.modules:  # forked from a process that uses torch: share the cores
        sys.modules["torch"].set_num_threads(threads)
    _WORKER = images, runner


def _run_task(images: EvalImages, runner: Runner | None,
              task: list[list[int]]) -> Iterator[Done]:
    """(batch, preprocess seconds, model seconds) for each batch of a task; without a runner
    the batch keeps its images and the model seconds are 0."""
    for indices in task:
        batch, preprocess = _preprocess(images, indices)
        batch, inference = _infer(runner, batch) if runner is not None else (batch, 0.0)
        yield batch, preprocess, inference


def _infer_here(runner: Runner, decoded: Iterable[Done]) -> Iterator[Done]:
    """Run the model in this process on batches decoded elsewhere."""
    for pixels, preprocess, _ in decoded:
        batch, inference = _infer(runner, pixels)
        yield batch, preprocess, inference


def _work(task: list[list[int]]) -> list[Done]:
    """`_run_task` in a worker process, on the job its initializer gave it."""
    assert _WORKER is not None
    return list(_run_task(*_WORKER, task))


def _in_processes(count: int, threads: int, images: EvalImages, runner: Runner | None,
                  tasks: Iterable[list[list[int]]]) -> Iterator[Done]:
    """Run `_work` on `tasks` in `count` processes; results in order, two tasks per worker
    ahead."""
    pending: deque[Future[list[Done]]] = deque()
    pool = ProcessPoolExecutor(count, initializer=_start_worker,
                               initargs=(images, runner, threads, os.getpid()))
    finished = False
    try:
        for task in tasks:
            with interrupts_held():  # the first submit forks the workers
                pending.append(pool.submit(_work, task))
            if len(pending) >= 2 * count:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
        finished = True
    except BrokenProcessPool:
        raise WasteclsError(
            "An inference worker process died (out of memory?). Try a smaller --batch-size, "
            "fewer --workers, or --workers 0 to run in one process."
        ) from None
    finally:
        with interrupts_held():  # a second Ctrl-C must not cut the clean-up in two
            _close(pool, abandon=not finished)


def _close(pool: ProcessPoolExecutor, abandon: bool) -> None:
    """Shut the pool down; when its work is abandoned (Ctrl-C, an error, a reader that left),
    without waiting: its workers are killed, since one blocked writing a result nobody reads
    would hold the shutdown, and the interpreter's exit, forever."""
    if not abandon:
        pool.shutdown(wait=True)
        return
    kill = getattr(pool, "kill_workers", None)  # Python 3.14+
    if kill is not None:
        kill()
    else:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def batch_tasks(images: int, batch_size: int, workers: int) -> Iterator[list[list[int]]]:
    """Consecutive batches grouped into tasks of about TASK_IMAGES images, fewer when that
    would leave a worker without one."""
    batches = math.ceil(images / batch_size)
    per_task = max(1, min(TASK_IMAGES // batch_size, batches // workers)) * batch_size
    for start in range(0, images, per_task):
        end = min(start + per_task, images)
        yield [list(range(i, min(i + batch_size, end))) for i in range(start, end, batch_size)]


def iterate_batches(
    runner: Runner, samples: list[tuple[Path, int]] | EvalImages, batch_size: int,
    workers: int | None, *, spread_model: bool = True, speed: Speed | None = None,
) -> Iterator[ArrayBatch]:
    """Yield (the model's outputs by name, labels, sample indices, unreadable indices) per
    batch, in sample order. `samples` may come as EvalImages (boxes on images);
    `spread_model=False` keeps the model in this process whatever the device; `speed` collects
    where the time went."""
    images = samples if isinstance(samples, EvalImages) else EvalImages(
        samples, runner.data_config)
    samples = images.samples
    count, in_workers = plan_workers(runner.on_cpu, workers, len(samples), batch_size, spread_model)
    threads = max(1, (os.cpu_count() or 1) // max(1, count))
    tasks = batch_tasks(len(samples), batch_size, max(1, count))
    speed = speed or Speed()
    speed.processes = count if in_workers else 1
    if in_workers:
        done = _in_processes(count, threads, images, runner.for_worker(threads), tasks)
    elif count:  # worker processes decode, the model runs here
        done = _infer_here(runner, _in_processes(count, threads, images, None, tasks))
    else:
        done = (item for task in tasks for item in _run_task(images, runner, task))
    for batch, preprocess, inference in done:
        speed.add(len(batch[2]), preprocess, inference)
        yield batch


def run_labelled(
    runner: Runner, samples: list[tuple[Path, int]] | EvalImages, batch_size: int,
    workers: int | None, reporter: Reporter, description: str, *, spread_model: bool = True,
    speed: Speed | None = None,
) -> tuple[Outputs, list[int]]:
    """Every output of the model for every sample (float32, NaN rows for unreadable images;
    `logits` always present), and the unreadable indices."""
    count = len(samples.samples if isinstance(samples, EvalImages) else samples)
    outputs: Outputs = {"logits": np.full((count, len(runner.classes)), np.nan, np.float32)}
    bad: list[int] = []
    with reporter.bar(description, count) as bar:
        for batch, _, indices, unreadable in iterate_batches(
                runner, samples, batch_size, workers, spread_model=spread_model, speed=speed):
            bad += unreadable
            for name, values in batch.items():
                if name not in outputs:
                    outputs[name] = np.full((count, *values.shape[1:]), np.nan, np.float32)
                outputs[name][indices] = values
            bar.advance(len(indices) + len(unreadable))
    return outputs, bad
