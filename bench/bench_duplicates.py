"""Near-duplicates in a merge: planted copies found, false pairs, and the time of the merge.

Plants copies of TrashNet photos as a third source (seeded): resized, recompressed, mirrored,
turned by 90/180/270 degrees, letterboxed (black, white or grey bars), cropped to 80-95% of
each side, and two combinations (crop + mirror + shrink + recompress, crop + turn). Then runs
`wastecls prepare SOURCES... planted --out` and reads prepare_report.json:
- each planted copy is found when it lands in one group with its original;
- every other group is written to a contact sheet (`--sheet`) to be looked at: a pair there
  is a copy the sources already held, a re-shoot, or a false pair.
The plain merge (without the planted source) is timed too: the target is under 60 s.

Usage: python bench/bench_duplicates.py [--data ../shared/data] [--copies 240]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

KINDS = ("resize", "jpeg", "mirror", "turn", "letterbox", "crop", "crop+mirror+shrink",
         "crop+turn")


def _crop(image: Image.Image, rng: random.Random) -> Image.Image:
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.8, 0.95)), int(h * rng.uniform(0.8, 0.95))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch))


def plant(original: Path, kind: str, seed: int) -> bytes:
    """One copy of `original`, made as `kind` copying does."""
    rng = random.Random(seed)
    with Image.open(original) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    w, h = image.size
    quality = 90
    if kind == "resize":
        image = image.resize((int(w * rng.uniform(0.3, 0.7)), int(h * rng.uniform(0.3, 0.7))))
    elif kind == "jpeg":
        quality = rng.randint(30, 60)
    elif kind == "mirror":
        image = ImageOps.mirror(image)
    elif kind == "turn":
        image = image.rotate(rng.choice([90, 180, 270]), expand=True)
    elif kind == "letterbox":
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), rng.choice([(0, 0, 0), (255, 255, 255),
                                                            (114, 114, 114)]))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image, quality = canvas.resize((320, 320)), rng.randint(40, 80)
    elif kind == "crop":
        image = _crop(image, rng)
    elif kind == "crop+mirror+shrink":
        image = ImageOps.mirror(_crop(image, rng)).resize((300, int(300 * h / w)))
        quality = rng.randint(40, 80)
    elif kind == "crop+turn":
        image = _crop(image, rng).rotate(90, expand=True)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _prepare(sources: list[Path], out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["wastecls", "prepare", *map(str, sources), "--out", str(out), "-q"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _sheet(groups: list[dict], path: Path, per_row: int = 4) -> None:
    """A contact sheet of groups, `per_row` to a row: each cell the first three photos of a
    group, with its number and classes."""
    cell_w, cell_h = 3 * 100 + 20, 115
    rows = (len(groups) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * cell_w, cell_h * max(1, rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for g, group in enumerate(groups):
        x0, y0 = (g % per_row) * cell_w, (g // per_row) * cell_h
        for c, photo in enumerate(group["photos"][:3]):
            with Image.open(photo["file"]) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                image.thumbnail((96, 96))
                sheet.paste(image, (x0 + c * 100, y0))
        draw.text((x0 + 2, y0 + 100), f"{g}: {' / '.join(group['classes'])}", fill="black")
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sources", nargs="+", default=["trashnet", "garbage-v2"])
    parser.add_argument("--copies", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", type=Path, default=Path("bench/out/duplicates-sheet.png"))
    args = parser.parse_args()
    sources = [args.data / name for name in args.sources]
    photos = sorted(p for p in sources[0].rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    rng = random.Random(args.seed)
    picks = rng.sample(photos, args.copies)
    print(f"# near-duplicate benchmark: {', '.join(args.sources)} + {args.copies} planted "
          f"copies of {args.sources[0]}; {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, {date.today()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        merge_seconds = _prepare(sources, tmp_path / "merge")
        count = sum(1 for _ in (tmp_path / "merge").rglob("*.jpg"))
        print(f"plain merge: {count} photos prepared in {merge_seconds:.1f} s")
        planted_dir = tmp_path / "planted"
        truth: dict[str, tuple[str, str]] = {}
        for k, original in enumerate(picks):
            kind = KINDS[k % len(KINDS)]
            folder = planted_dir / original.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{k:04d}-{kind}.jpg"
            (folder / name).write_bytes(plant(original, kind, args.seed * 100_000 + k))
            truth[str(folder / name)] = (str(original), kind)
        seconds = _prepare([*sources, planted_dir], tmp_path / "out")
        report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    group_of = {photo["file"]: g for g, group in enumerate(report["copy_groups"])
                for photo in group["photos"]}
    found, total = Counter(), Counter()
    for copy, (original, kind) in truth.items():
        total[kind] += 1
        found[kind] += copy in group_of and group_of.get(original) == group_of[copy]
    print(f"with the planted copies: prepared in {seconds:.1f} s")
    print("\n| copy made by | found |\n|---|---|")
    for kind in KINDS:
        print(f"| {kind} | {found[kind]} / {total[kind]} |")
    print(f"| **all** | **{sum(found.values())} / {sum(total.values())}** |")
    planted_files = set(truth) | {original for original, _ in truth.values()}
    others = [g for g in report["copy_groups"]
              if not {p["file"] for p in g["photos"]} <= planted_files]
    strays = [g for g in report["copy_groups"] if {p["file"] for p in g["photos"]} & set(truth)
              and len(g["photos"]) > 2]
    pairs = sum(len(g["photos"]) - 1 for g in others)
    print(f"\nGroups among the sources' own photos: {len(others)} ({pairs} photos beyond the "
          f"first of each); planted groups with a third photo: {len(strays)}. Contact sheet "
          f"of the former: {args.sheet} (look at it: copy, re-shoot or false pair).")
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    _sheet(others, args.sheet)


if __name__ == "__main__":
    main()
