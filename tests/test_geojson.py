"""predict --format geojson: a Point per photo at its EXIF GPS position (south and west too,
to 1e-6), time taken, photos without a position listed; EXIF orientation applied first."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import piexif
import pytest
from conftest import SAMPLE, run_cli
from PIL import Image

from waste_cli.data.exif import photo_place

PLACES = {"oslo.jpg": (59.913868, 10.752245), "rio.jpg": (-22.906847, -43.172897),
          "lima.jpg": (-12.046374, -77.042793)}


def _rational(value: float) -> tuple[tuple[int, int], ...]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = Fraction((value - degrees - minutes / 60) * 3600).limit_denominator(1_000_000)
    return ((degrees, 1), (minutes, 1), (seconds.numerator, seconds.denominator))


def _tagged(source: Path, target: Path, place: tuple[float, float] | None,
            orientation: int = 1) -> None:
    exif = {"0th": {piexif.ImageIFD.Orientation: orientation},
            "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2026:05:04 13:14:15",
                     piexif.ExifIFD.OffsetTimeOriginal: b"+02:00"}}
    if place is not None:
        latitude, longitude = place
        exif["GPS"] = {piexif.GPSIFD.GPSLatitudeRef: b"S" if latitude < 0 else b"N",
                       piexif.GPSIFD.GPSLatitude: _rational(latitude),
                       piexif.GPSIFD.GPSLongitudeRef: b"W" if longitude < 0 else b"E",
                       piexif.GPSIFD.GPSLongitude: _rational(longitude)}
    Image.open(source).save(target, exif=piexif.dump(exif), quality=95)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "walk"
    folder.mkdir()
    sources = sorted(SAMPLE.rglob("*.jpg"))
    for (name, place), source in zip(PLACES.items(), sources[::20], strict=False):
        _tagged(source, folder / name, place)
    _tagged(sources[5], folder / "nowhere.jpg", None)
    return folder


def test_geojson_places_each_photo_and_lists_the_rest(photos, tmp_path):
    out = tmp_path / "litter.geojson"
    result = run_cli("predict", photos, "--output", out, "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "1 of 4 photos record no GPS position" in " ".join(result.output.split())
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection"
    assert [Path(p).name for p in collection["without_location"]] == ["nowhere.jpg"]
    assert len(collection["features"]) == 3
    for feature in collection["features"]:
        name = Path(feature["properties"]["path"]).name
        latitude, longitude = PLACES[name]
        assert feature["geometry"]["type"] == "Point"
        assert feature["geometry"]["coordinates"] == pytest.approx([longitude, latitude],
                                                                   abs=1e-6)
        assert feature["properties"]["taken"] == "2026-05-04T13:14:15+02:00"
        assert feature["properties"]["label"] == feature["properties"]["labels"][0]
        assert {"confidence", "flag", "probs"} <= set(feature["properties"])


def test_a_rotated_copy_gets_the_upright_photos_answer(tmp_path):
    upright = next((SAMPLE.parent / "web").rglob("shoes_*.jpg"))  # a confident answer
    turned = tmp_path / "turned.jpg"
    # the pixels stored turned 90 degrees, with the tag that turns them back (Orientation 6)
    image = Image.open(upright).transpose(Image.Transpose.ROTATE_90)
    image.save(tmp_path / "plain.jpg", quality=95)
    _tagged(tmp_path / "plain.jpg", turned, PLACES["oslo.jpg"], orientation=6)
    copy = tmp_path / "upright.jpg"
    Image.open(upright).save(copy, quality=95)
    out = tmp_path / "two.json"
    assert run_cli("predict", copy, turned, "--format", "json", "--output", out).exit_code == 0
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first["label"] == second["label"]
    assert first["confidence"] == pytest.approx(second["confidence"], abs=0.05)
    assert photo_place(turned).latitude == pytest.approx(PLACES["oslo.jpg"][0], abs=1e-6)


def test_broken_or_absent_gps_is_no_position(tmp_path):
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (40, 40)).save(plain)
    assert photo_place(plain) is None
    assert photo_place(tmp_path / "missing.jpg") is None
    result = run_cli("predict", "--boxes", plain, "--images", tmp_path, "--format", "geojson")
    assert result.exit_code == 2 and "geojson" in result.output
