"""Decode for size: camera-sized photos are decoded only as large as their use needs, and the
model sees (nearly) the same picture as from a full decode; HEIC photos read like any other."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, run_cli
from PIL import Image

from waste_cli.data import sources
from waste_cli.data.batching import EvalImages, eval_short_side
from waste_cli.data.detections import Region
from waste_cli.data.sources import box_reduction, decode_image
from waste_cli.data.transforms import eval_transform

CONFIG = {"input_size": [3, 288, 288], "interpolation": "bicubic", "mean": [0.5] * 3,
          "std": [0.5] * 3, "crop_pct": 0.875, "crop_mode": "center"}


def _camera_photo(path: Path, size=(4032, 3024), orientation: int | None = None,
                  fmt: str = "JPEG") -> Image.Image:
    """A real sample photo saved at camera size (with an EXIF orientation if asked)."""
    upright = Image.open(next((SAMPLE / "metal").glob("*.jpg"))).convert("RGB").resize(
        size, Image.Resampling.BICUBIC)
    stored, options = upright, {}
    if orientation == 6:  # stored lying down, shown upright
        stored = upright.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
        options["exif"] = exif
    stored.save(path, fmt, **({"quality": 92} if fmt == "JPEG" else {}), **options)
    return upright


def test_the_decoder_keeps_what_the_resize_needs(tmp_path):
    path = tmp_path / "camera.jpg"
    _camera_photo(path)
    data = path.read_bytes()
    short = eval_short_side(CONFIG)  # 329
    image, full = decode_image(data, short)
    assert full == (4032, 3024) and image.size == (504, 378)  # 1/8: still >= 329 px
    assert decode_image(data, 1000)[0].size == (2016, 1512)  # 1/2 keeps 1000 px
    assert decode_image(data, 0)[0].size == (4032, 3024)
    png = tmp_path / "camera.png"
    _camera_photo(png, size=(1200, 900), fmt="PNG")
    assert decode_image(png.read_bytes(), short)[0].size == (1200, 900)  # never reduced
    # Boxes: the smallest box (200 px) keeps at least the 64 px its crop is resized to.
    reduce = box_reduction([(0, 0, 400, 400), (100, 100, 300, 300)], 64)
    assert decode_image(data, reduce)[0].size == (2016, 1512)  # 1/4 would leave it 50 px
    assert decode_image(data, box_reduction([(0, 0, 4000, 3000)], 64))[0].size == (504, 378)
    # A box counts as cut to the image: 800 px of which 150 px lie inside keep 150 px, and a
    # box wholly outside (skipped later) does not stop the others from being reduced.
    assert box_reduction([(3882, 0, 4682, 800)], 64)(4032, 3024) == 150 / 64
    assert box_reduction([(5000, 5000, 5100, 5100), (0, 0, 4000, 3000)], 64)(4032, 3024) > 8


def test_the_bomb_limit_counts_the_pixels_decoded_not_declared(tmp_path, monkeypatch):
    """A photo far larger than the limit is fine when decoded reduced (a panorama for a 288 px
    model); decoded in full, or as a PNG that cannot be reduced, it is refused with a reason."""
    monkeypatch.setattr(sources, "MAX_DECODED_PIXELS", 1_000_000)  # as 89 MP is to a 700 MP
    jpeg, png = tmp_path / "big.jpg", tmp_path / "big.png"
    _camera_photo(jpeg, size=(2000, 1500))
    _camera_photo(png, size=(2000, 1500), fmt="PNG")
    assert decode_image(jpeg.read_bytes(), 329)[0].size == (500, 375)
    for data, reduce in ((jpeg.read_bytes(), 0), (png.read_bytes(), 329)):
        with pytest.raises(Image.DecompressionBombError, match="2000x1500 would decode to"):
            decode_image(data, reduce)


@pytest.mark.parametrize("case", ["large", "rotated", "small", "png"])
def test_reduced_decode_shows_the_model_the_same_picture(tmp_path, case):
    """Against a full decode then the same resize: equal but for the JPEG decoder's own DCT
    scaling (a fraction of one grey level on average)."""
    path = tmp_path / f"photo.{'png' if case == 'png' else 'jpg'}"
    size = {"small": (340, 256), "png": (1600, 1200)}.get(case, (4032, 3024))
    upright = _camera_photo(path, size, orientation=6 if case == "rotated" else None,
                            fmt="PNG" if case == "png" else "JPEG")
    transform = eval_transform(CONFIG)
    fast = transform(EvalImages([(path, 0)], CONFIG).image(0))
    full = transform(decode_image(path.read_bytes())[0])
    assert fast.shape == full.shape == (3, 288, 288)
    difference = np.abs(fast - full) * 0.5 * 255  # normalised (std 0.5) -> grey levels
    assert difference.mean() < 1.5 and np.percentile(difference, 99) < 12, case
    if case == "rotated":  # upright, as the photo is shown
        assert decode_image(path.read_bytes())[0].size == upright.size


def test_every_consumer_decodes_for_its_size(tmp_path):
    """predict, evaluate, pseudolabel, export's verification and the training pool all read
    through EvalImages (the whole image at the eval resize); boxes at their crop size."""
    path = tmp_path / "camera.jpg"
    _camera_photo(path)
    seen = []
    import waste_cli.data.batching as batching

    original = batching.decode_image

    def spy(data, reduce=0):
        image, full = original(data, reduce)
        seen.append(image.size)
        return image, full

    batching.decode_image = spy
    try:
        EvalImages([(path, 0)], CONFIG).batch([0])
        EvalImages([(path, 0)] * 2, CONFIG, [Region((0, 0, 2000, 2000)),
                                             Region((100, 100, 200, 200))],
                   {"size": 64}).batch([0, 1])
    finally:
        batching.decode_image = original
    assert seen == [(504, 378), (2016, 1512)]  # one decode for both boxes, at the small one's


def test_heic_photos_are_read_by_every_command(trained, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    raw = tmp_path / "raw"
    for name in ("glass", "metal"):
        (raw / name).mkdir(parents=True)
        for k, photo in enumerate(sorted((SAMPLE / name).glob("*.jpg"))[:4]):
            Image.open(photo).convert("RGB").save(raw / name / f"phone{k}.heic", "HEIF")
    result = run_cli("prepare", raw, "--out", tmp_path / "data", "--size", "40", "-q")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "data").rglob("*.jpg"))) == 8
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", raw, "--format", "csv",
                     "--backend", "torch")
    assert result.exit_code == 0 and result.stdout.count(".heic") == 8


@pytest.mark.subprocess
def test_heic_without_the_plugin_says_what_to_install(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "phone.heic"
    Image.open(next((SAMPLE / "glass").glob("*.jpg"))).convert("RGB").save(path, "HEIF")
    script = ("import sys; sys.modules['pillow_heif'] = None\n"
              "from waste_cli.data.sources import open_image\n"
              f"open_image(open({str(path)!r}, 'rb').read())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode != 0 and "pip install 'wastecls[heif]'" in done.stderr


def test_the_speed_line_says_where_the_time_went(trained, tmp_path):
    _camera_photo(tmp_path / "camera.jpg")
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", tmp_path, "--backend",
                     "torch")
    assert result.exit_code == 0
    line = " ".join(result.output.split())
    found = re.search(r"Speed: ([\d.]+) ms decode, ([\d.]+) ms resize, ([\d.]+) ms inference "
                      r"per image", line)
    assert found, line
    assert all(float(ms) > 0 for ms in found.groups())  # each stage was timed
