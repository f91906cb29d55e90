"""`wastecls prepare`: turn a raw dataset into OUT/{train,val,test}/<class>/ and OUT/pseudolabel/.

Steps: list the source images (class folders or COCO boxes), decode and validate every one on all
cores, group exact duplicates (and all crops of one photo), make a stratified seeded split by
group, then move the encoded images into place. Everything is built in a temporary folder that
is renamed to OUT only when complete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from waste_cli import __version__
from waste_cli.core.console import Reporter, entry_text
from waste_cli.core.errors import ConfigError, DataError
from waste_cli.core.files import (
    check_no_overlap,
    ensure_writable,
    hold_lock,
    remove_stale_temporaries,
    temporary_name,
    write_error,
)
from waste_cli.core.formats import csv_writer
from waste_cli.core.names import NAME_MAX
from waste_cli.core.processes import die_with_parent
from waste_cli.data.coco import coco_sources
from waste_cli.data.scan import (
    DATASET_FORMAT,
    DATASET_JSON,
    IMAGE_EXTENSIONS,
    PSEUDO_SPLIT,
    REPORT_JSON,
    SPLITS,
    TRUTH_CSV,
    list_images,
    read_dataset_json,
)
from waste_cli.data.sources import SourceImage, SourceResult, folder_sources, process_source
from waste_cli.data.split import split_groups
from waste_cli.data.taxonomy import ClassMap, choose_class_map
from waste_cli.options import PrepareOptions, write_config

__all__ = ["PrepareResult", "prepare"]



@dataclass
class PrepareResult:
    out: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    skipped: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    warnings: list[str] = field(default_factory=list)  # what a user must know about the data

    @property
    def imbalance(self) -> float:
        """Largest over smallest training class (1.0 = balanced)."""
        train = [n for n in self.counts.get("train", {}).values() if n]
        return max(train) / min(train) if train else 0.0


def _collect_sources(
    options: PrepareOptions, class_map: ClassMap
) -> tuple[list[SourceImage], list[dict[str, Any]], str]:
    src = options.source
    if src.is_file() and src.suffix.lower() == ".json":
        if options.images is None:
            raise ConfigError(
                f"{src} is a COCO annotation file: say where its images are with --images DIR."
            )
        if not options.images.is_dir():
            raise DataError(f"Image folder {options.images} does not exist.")
        sources, skipped = coco_sources(
            src, options.images, class_map, square=options.square, zoom=options.zoom,
            background=options.background, min_size=options.min_size, seed=options.seed,
        )
        return sources, skipped, "coco"
    if not src.is_dir():
        raise DataError(
            f"Source {src} is neither a folder of class folders nor a COCO .json file."
        )
    sources, dropped = folder_sources(src, class_map)
    skipped = [{"class_folder": name, "reason": "dropped by the class map"} for name in dropped]
    empty = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and not list_images(d))
    skipped += [{"class_folder": name, "reason": "holds no images: not a class of the dataset"}
                for name in empty]
    return sources, skipped, "folders"


def _process_all(
    sources: list[SourceImage], staging: Path, options: PrepareOptions, reporter: Reporter
) -> list[SourceResult]:
    """Decode and encode every source on all cores, in input order."""
    work = partial(process_source, staging=staging, size=options.size,
                   min_size=options.min_size, quality=options.quality)
    workers = options.workers or os.cpu_count() or 1
    results = []
    with reporter.bar("decode + resize", len(sources)) as bar:
        if workers == 1:
            mapped = map(work, sources, range(len(sources)))
            for result in mapped:
                results.append(result)
                bar.advance()
        else:
            with ProcessPoolExecutor(workers, initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                chunk = max(1, min(32, len(sources) // (workers * 8)))
                for result in pool.map(work, sources, range(len(sources)), chunksize=chunk):
                    results.append(result)
                    bar.advance()
    return results


def _unique_name(folder: Path, stem: str, digest: str, taken: set[Path]) -> Path:
    """folder/stem.jpg, or with the image's digest when taken; the stem shortened so that the
    name fits NAME_MAX whatever is added to it."""
    room = NAME_MAX - len("-12345678-999.jpg")
    stem = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    path = folder / f"{stem}.jpg"
    counter = 0
    while path in taken:
        counter += 1
        path = folder / f"{stem}-{digest[:8]}{'-' + str(counter) if counter > 1 else ''}.jpg"
    taken.add(path)
    return path


def _place(
    results: list[SourceResult], options: PrepareOptions, tmp: Path
) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]], int, list[list[str]]]:
    """Split by group and move each staged crop into tmp/<split>/<class>/."""
    skipped: list[dict[str, Any]] = []
    group_labels: dict[str, Counter[str]] = defaultdict(Counter)
    members: Counter[str] = Counter()
    for result in results:
        kept = [c for c in result.crops if c.staged is not None]
        for crop in result.crops:
            if crop.staged is None:
                skipped.append({"file": str(result.source.path), "crop": crop.job.name,
                                "reason": crop.reason})
        if kept:
            members[result.sha256] += 1
            group_labels[result.sha256].update(c.job.label for c in kept)
    # A group is labelled by its most frequent class (ties by name) for stratification.
    groups = {g: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for g, c in group_labels.items()}
    split_of = split_groups(groups, {"test": options.test_frac, "val": options.val_frac},
                            options.seed)
    if options.unlabeled_frac:
        train = {g: label for g, label in groups.items() if split_of[g] == "train"}
        moved = split_groups(train, {PSEUDO_SPLIT: options.unlabeled_frac}, options.seed)
        split_of.update(moved)

    counts: dict[str, dict[str, int]] = defaultdict(Counter)
    truth: list[list[str]] = []
    taken: set[Path] = set()
    for result in results:
        for k, crop in enumerate(c for c in result.crops if c.staged is not None):
            split = split_of[result.sha256]
            if split == PSEUDO_SPLIT:
                target = _unique_name(tmp / PSEUDO_SPLIT, f"{result.sha256[:16]}_{k}",
                                      result.sha256, taken)
                truth.append([target.name, crop.job.label])
            else:
                target = _unique_name(tmp / split / crop.job.label, crop.job.name,
                                      result.sha256, taken)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(crop.staged, target)
            counts[split][crop.job.label] += 1
    duplicates = sum(n - 1 for n in members.values() if n > 1)
    return {s: dict(c) for s, c in counts.items()}, skipped, duplicates, truth


def _is_prepared_dataset(folder: Path) -> bool:
    """Whether `folder` is recognisably a dataset that `prepare` wrote (its dataset.json)."""
    try:
        meta = read_dataset_json(folder)
    except DataError:
        return False
    return bool(meta) and meta.get("format") == DATASET_FORMAT


def _prepare_output(options: PrepareOptions) -> Path:
    """A fresh staging folder beside OUT, after checking that OUT may be (re)written."""
    out = _real_out(options.out)
    check_no_overlap([("--out", out)], [("source", options.source),
                                        ("--images folder", options.images),
                                        ("--map file", options.map)])
    if out.exists() and not out.is_dir():
        raise DataError(f"Output {out} exists and is not a folder. Choose another --out.")
    if out.is_dir() and any(out.iterdir()):
        if not options.overwrite:
            raise DataError(f"Output folder {out} is not empty. Choose another --out or add "
                            "--overwrite to replace it.")
        if not _is_prepared_dataset(out):
            raise DataError(f"--overwrite replaces only a dataset that `wastecls prepare` "
                            f"wrote, and {out} has no such {DATASET_JSON}: it was left as it "
                            "is. Choose another --out, or empty that folder yourself.")
    ensure_writable(out.parent, "output folder")
    remove_stale_temporaries(out)
    tmp = temporary_name(out, "tmp")
    (tmp / ".staging").mkdir(parents=True)
    return tmp


# What a prepared dataset consists of: the only entries --overwrite replaces.
_OWN_ENTRIES = {DATASET_JSON, REPORT_JSON, TRUTH_CSV, "config.yaml", PSEUDO_SPLIT, *SPLITS}


def _real_out(out: Path) -> Path:
    """The folder --out names: through a symbolic link, so the link itself is kept."""
    return out.resolve() if out.is_symlink() else out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out`. Of an old `out`, only what a prepared dataset
    consists of is removed, after that: anything else found there (a user's notes, files that
    appeared while this run worked) is moved into the new folder as it was."""
    old = temporary_name(out, "old")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if not old.exists():
        return
    lock = hold_lock(old)
    try:
        for entry in old.iterdir():
            if entry.name not in _OWN_ENTRIES and not (out / entry.name).exists():
                os.replace(entry, out / entry.name)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(lock)


def _write_metadata(tmp: Path, options: PrepareOptions, result: PrepareResult, kind: str,
                    truth: list[list[str]]) -> None:
    dataset = {
        "format": DATASET_FORMAT,
        "version": 1,
        "classes": result.classes,
        "counts": result.counts,
        "source": {"kind": kind, "path": str(options.source)},
        "created_by": f"wastecls {__version__}",
        "settings": json.loads(options.model_dump_json()),
    }
    (tmp / DATASET_JSON).write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    report = {"skipped": result.skipped, "duplicates_grouped": result.duplicates,
              "warnings": result.warnings}
    (tmp / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_config(options, tmp / "config.yaml")
    if truth:
        buffer = io.StringIO()
        csv_writer(buffer).writerows([["file", "label"], *truth])
        (tmp / TRUTH_CSV).write_text(buffer.getvalue(), encoding="utf-8")


def _nothing_usable(options: PrepareOptions, skipped: list[dict[str, Any]]) -> DataError:
    """The error for a source whose every image or box was skipped, with the first reasons."""
    return DataError(f"No usable images in {options.source}: see the reasons below.\n"
                     + "\n".join(f"  {s}" for s in skipped[:10]))


def _no_images(source: Path) -> DataError:
    loose = list_images(source, recursive=False) if source.is_dir() else []
    if loose:
        return DataError(
            f"{source} holds {len(loose)} images but no class folders: prepare learns each "
            f"image's class from its folder. Sort them into one subfolder per class "
            f"({source}/glass/1.jpg, {source}/metal/2.jpg, ...), or give a COCO annotation "
            "file with --images.")
    return DataError(f"No images found in {source} (looked for "
                     f"{', '.join(sorted(IMAGE_EXTENSIONS))} files in its class folders).")


def prepare(options: PrepareOptions, reporter: Reporter | None = None) -> PrepareResult:
    """Build the dataset layout that `train`, `evaluate` and `pseudolabel` read."""
    reporter = reporter or Reporter(options.quiet)
    class_map = choose_class_map(options.map, options.taxonomy)
    sources, skipped, kind = _collect_sources(options, class_map)
    if not sources:
        raise _nothing_usable(options, skipped) if skipped else _no_images(options.source)
    tmp = _prepare_output(options)
    lock = hold_lock(tmp)  # the staging folder is alive while this run is
    try:
        results = _process_all(sources, tmp / ".staging", options, reporter)
        counts, bad, duplicates, truth = _place(results, options, tmp)
        shutil.rmtree(tmp / ".staging")
        labelled = [s for s in SPLITS if s in counts]
        classes = sorted({c for s in labelled for c in counts[s]} | {
            c for c in counts.get(PSEUDO_SPLIT, {})})
        if not classes:
            raise _nothing_usable(options, skipped + bad)
        for split in (*SPLITS, PSEUDO_SPLIT):
            counts.setdefault(split, {})
            counts[split] = {c: counts[split].get(c, 0) for c in classes}
        wanted = sorted({job.label for source in sources for job in source.jobs})
        result = PrepareResult(options.out, classes, counts, skipped + bad, duplicates,
                               _degenerate(wanted, counts, options))
        _write_metadata(tmp, options, result, kind, truth)
        _swap_into_place(tmp, _real_out(options.out))
    except OSError as exc:
        raise write_error(exc, exc.filename, "dataset file", kept=(
            f"Nothing was written: the dataset is built in a temporary folder beside "
            f"{options.out} and takes that name only when complete, so {options.out} is as it "
            "was.")) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(lock)
    reporter.warn_some([f"skipped {entry_text(item)}" for item in result.skipped])
    for message in result.warnings:
        reporter.warn(message)
    return result


def _degenerate(wanted: list[str], counts: dict[str, dict[str, int]],
                options: PrepareOptions) -> list[str]:
    """What makes this dataset a poor one to train or test on, said rather than hidden."""
    found = set(counts.get("train", {})) | set(counts.get(PSEUDO_SPLIT, {}))
    notes = [f"class '{name}' has no usable images (all were skipped, see {REPORT_JSON}); it "
             "is not in the dataset" for name in wanted if name not in found]
    if len(found) < 2:
        notes.append(f"only {len(found)} class: a classifier needs at least two, and `wastecls "
                     "train` will refuse this dataset")
    for split, share in (("val", options.val_frac), ("test", options.test_frac),
                         ("train", 1.0)):
        if not share:
            continue
        few = [f"{name} ({count})" for name, count in counts.get(split, {}).items()
               if count <= 1]
        if few:
            notes.append(f"{split} holds at most one image of {', '.join(few)}: per-class "
                         f"{split} numbers will mean little; add images or change the split "
                         "fractions")
    return notes
