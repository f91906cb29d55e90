"""Video files, webcams and network streams for `predict`: frames sampled at --fps, their
calibrated probabilities averaged over the last --smooth seconds, and segments (a label held,
from when to when, with its mean confidence).

Frames are read with OpenCV (the `video` extra: opencv-python-headless); frames between the
sampled ones are grabbed but not decoded. A file's times are its own timestamps; a live
source's are seconds since it opened.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from waste_cli.confidence.fit import flag_of
from waste_cli.confidence.measures import scaled_softmax
from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError, DataError
from waste_cli.core.extras import require
from waste_cli.data.transforms import eval_transform
from waste_cli.infer.core import Prediction, temperature
from waste_cli.model.backends import Runner

__all__ = ["SEGMENT_COLUMNS", "VIDEO_SUFFIXES", "Segment", "VideoOptions", "classify_video",
           "is_video_input"]

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "udp://", "srt://")
BATCH = 8  # frames run together
SEGMENT_COLUMNS = ("source", "label", "start", "end", "confidence")


def is_video_input(text: str) -> bool:
    """A video file, a camera index (`0`) or a stream address (`rtsp://...`)."""
    return (text.isdigit() or text.lower().startswith(STREAM_SCHEMES)
            or Path(text).suffix.lower() in VIDEO_SUFFIXES)


@dataclass(frozen=True)
class VideoOptions:
    fps: float  # frames classified per second of video
    smooth: float  # seconds of the moving average (0: each frame on its own)
    duration: float | None  # stop a source after this many seconds of it
    top_k: int
    min_confidence: float | None


@dataclass
class Segment:
    """A stretch of a source during which the smoothed answer stayed one label."""

    source: str
    label: str
    start: float
    end: float
    confidences: list[float] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        return float(np.mean(self.confidences)) if self.confidences else 0.0

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "label": self.label, "start": round(self.start, 3),
                "end": round(self.end, 3), "confidence": round(self.confidence, 6)}


def _open(source: str) -> Any:
    require("predict on video", "video", "cv2")
    import cv2

    if not source.isdigit() and "://" not in source and not Path(source).is_file():
        raise DataError(f"Video {source} does not exist.")
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise DataError(f"Cannot open {source} as a video (a file OpenCV's FFmpeg cannot "
                        "read, a camera that is absent or busy, or a stream that does not "
                        "answer).")
    return capture


def _expected_frames(source: str, options: VideoOptions) -> int:
    """How many frames will be classified (for the progress bar): from a file's length, or
    --duration for a live source; 0 when unknown."""
    import cv2

    seconds = options.duration or 0.0
    if not source.isdigit() and "://" not in source:
        capture = _open(source)
        rate = capture.get(cv2.CAP_PROP_FPS) or 0.0
        length = capture.get(cv2.CAP_PROP_FRAME_COUNT) / rate if rate > 0 else 0.0
        capture.release()
        seconds = min(seconds, length) if seconds else length
    return max(0, round(seconds * options.fps))


def _frames(source: str, fps: float, duration: float | None
            ) -> Iterator[tuple[float, Image.Image]]:
    """(seconds, RGB frame) at `fps`, decoding only the frames kept."""
    import cv2

    capture = _open(source)
    live = source.isdigit() or "://" in source
    started, next_time = time.monotonic(), 0.0
    try:
        while True:
            if not capture.grab():
                return
            at = (time.monotonic() - started if live
                  else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000)
            if duration is not None and at > duration:
                return
            if at + 1e-6 < next_time:
                continue
            ok, frame = capture.retrieve()
            if not ok:
                return
            next_time = max(next_time + 1 / fps, at)
            yield at, Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()


def classify_video(runner: Runner, source: str, options: VideoOptions, reporter: Reporter
                   ) -> tuple[list[Prediction], list[Segment]]:
    """Every sampled frame's answer (smoothed) and the segments of one source."""
    if options.fps <= 0:
        raise ConfigError("--fps must be above 0.")
    transform = eval_transform(runner.data_config)
    shape = tuple(runner.data_config["input_size"])
    scale = temperature(runner)
    window: deque[tuple[float, np.ndarray]] = deque()
    answers: list[Prediction] = []
    segments: list[Segment] = []
    pending: list[tuple[float, np.ndarray]] = []

    def run_pending() -> None:
        images = np.stack([array for _, array in pending])
        outputs = runner(images)
        probs = scaled_softmax(outputs["logits"] / scale)
        scores = outputs.get("unfamiliarity", np.full(len(pending), np.nan))
        for (at, _), row, score in zip(pending, probs, scores, strict=True):
            window.append((at, row))
            while window and window[0][0] < at - options.smooth + 1e-9:
                window.popleft()
            mean = np.mean([p for _, p in window], axis=0)
            best = np.argsort(-mean, kind="stable")[:options.top_k]
            labels = [runner.classes[k] for k in best]
            confidence = float(mean[best[0]])
            answers.append(Prediction(
                labels, [float(mean[k]) for k in best],
                unfamiliarity=None if np.isnan(score) else float(score),
                flag=flag_of(confidence, float(score), runner.calibration,
                             options.min_confidence),
                path=Path(source), given=f"{source}#t={at:.2f}"))
            if segments and segments[-1].label == labels[0]:
                segments[-1].end = at + 1 / options.fps
                segments[-1].confidences.append(confidence)
            else:
                if segments:
                    segments[-1].end = at
                segments.append(Segment(source, labels[0], at, at + 1 / options.fps,
                                        [confidence]))
        pending.clear()

    with reporter.bar(f"video {re.sub(r'//[^@/]*@', '//', source)}",
                      _expected_frames(source, options)) as bar:
        for at, frame in _frames(source, options.fps, options.duration):
            array = np.empty(shape, np.float32)
            transform(frame, out=array)
            pending.append((at, array))
            if len(pending) == BATCH:
                run_pending()
                bar.advance(BATCH)
        if pending:
            count = len(pending)
            run_pending()
            bar.advance(count)
    if not answers:
        raise DataError(f"No frame could be read from {source}.")
    return answers, segments
