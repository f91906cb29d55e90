"""predict on video: frames at --fps, smoothed answers, segments that match each photo's own
answer and catch a change within a second; CSV's segments file and JSON's segment records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, run_cli
from PIL import Image
from reviewing import csv_rows

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed")
FPS, HOLD = 10, 2.0  # the clip's frame rate, seconds each photo is held


def _clip(photos: list[Path], target: Path) -> None:
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (256, 192))
    assert writer.isOpened()
    for photo in photos:
        frame = np.asarray(Image.open(photo).convert("RGB").resize((256, 192)))
        for _ in range(round(FPS * HOLD)):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[str]]:
    """A clip of three photos the built-in model answers differently and surely, each held
    2 s, and those answers."""
    folder = tmp_path_factory.mktemp("video")
    candidates = sorted((SAMPLE.parent / "web").rglob("*.jpg")) + sorted(SAMPLE.rglob("*.jpg"))
    out = folder / "photos.json"
    assert run_cli("predict", *candidates, "--format", "json", "--output", out).exit_code == 0
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    chosen, labels = [], []
    for answer in sorted(answers, key=lambda a: -a["confidence"]):
        if answer["label"] not in labels and len(chosen) < 3:
            chosen.append(Path(answer["path"]))
            labels.append(answer["label"])
    # the resized frame must get the same answer as the photo: compare through the resize
    _clip(chosen, folder / "clip.mp4")
    return folder / "clip.mp4", labels


def test_segments_match_each_photo_and_changes_are_caught(clip, tmp_path):
    video, labels = clip
    out = tmp_path / "frames.csv"
    result = run_cli("predict", video, "--fps", "4", "--smooth", "1", "--output", out)
    assert result.exit_code == 0, result.output
    frames = csv_rows(out)
    assert len(frames) == pytest.approx(len(labels) * HOLD * 4, abs=2)
    assert frames[0]["path"].startswith(f"{video}#t=")
    segments = csv_rows(tmp_path / "frames.segments.csv")
    assert [s["label"] for s in segments] == labels
    for k, segment in enumerate(segments[1:], start=1):
        assert abs(float(segment["start"]) - k * HOLD) <= 1.0  # a change caught within 1 s
    assert all(float(s["confidence"]) > 0.5 for s in segments)


def test_json_lines_carry_segment_records(clip, tmp_path):
    video, labels = clip
    out = tmp_path / "frames.json"
    assert run_cli("predict", video, "--fps", "2", "--format", "json", "--output",
                   out).exit_code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    segments = [r["segment"] for r in records if "segment" in r]
    assert [s["label"] for s in segments] == labels
    assert sum("segment" not in r for r in records) == pytest.approx(len(labels) * HOLD * 2,
                                                                     abs=2)


def test_a_video_that_does_not_open_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    result = run_cli("predict", broken)
    assert result.exit_code == 1 and "Cannot open" in result.output
    result = run_cli("predict", tmp_path / "missing.mp4")
    assert result.exit_code == 1 and "does not exist" in result.output
