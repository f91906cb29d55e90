"""`wastecls prepare`: turn a raw dataset into OUT/{train,val,test}/<class>/ and OUT/pseudolabel/.

Steps: list the source images (class folders or COCO boxes) of every source, decode and
validate every one on all cores (taking each photo's near-duplicate fingerprint from the same
pixels), group copies (exact and near, across sources; all crops of one photo go with it), make
a stratified seeded split by group, then move the encoded images into place. Everything is
built in a temporary folder that is renamed to OUT only when complete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
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
from waste_cli.data.duplicates import copy_groups, find_copies
from waste_cli.data.origins import Origin, read_origins
from waste_cli.data.relabel import apply_relabels, read_relabels
from waste_cli.data.scan import (
    DATASET_FORMAT,
    DATASET_JSON,
    IMAGE_EXTENSIONS,
    MANIFEST_CSV,
    PSEUDO_SPLIT,
    REPORT_JSON,
    SPLITS,
    TRUTH_CSV,
    list_images,
    read_dataset_json,
)
from waste_cli.data.sources import SourceImage, SourceResult, folder_sources, process_source
from waste_cli.data.split import split_groups
from waste_cli.data.taxonomy import choose_class_map
from waste_cli.options import PrepareOptions, write_config

__all__ = ["PrepareResult", "prepare"]



@dataclass
class PrepareResult:
    out: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    skipped: list[dict[str, Any]] = field(default_factory=list)
    copies: CopyReport = field(default_factory=lambda: CopyReport())
    warnings: list[str] = field(default_factory=list)  # what a user must know about the data
    sources: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> split -> images
    relabels: dict[str, Any] | None = None  # what --relabel changed (relabel.apply_relabels)

    @property
    def imbalance(self) -> float:
        """Largest over smallest training class (1.0 = balanced)."""
        train = [n for n in self.counts.get("train", {}).values() if n]
        return max(train) / min(train) if train else 0.0


def _collect_sources(
    options: PrepareOptions, origins: list[Origin]
) -> tuple[list[SourceImage], list[dict[str, Any]], dict[str, str]]:
    """Every source image of every origin, tagged with its origin's name; what was skipped;
    each origin's kind (folders, coco)."""
    images: list[SourceImage] = []
    skipped: list[dict[str, Any]] = []
    kinds: dict[str, str] = {}
    for origin in origins:
        found, dropped, kinds[origin.name] = _collect_origin(options, origin)
        if not found and not dropped:
            raise _no_images(origin.path)
        images += [replace(image, origin=origin.name) for image in found]
        skipped += [entry | {"source": origin.name} for entry in dropped] \
            if len(origins) > 1 else dropped
    return images, skipped, kinds


def _collect_origin(
    options: PrepareOptions, origin: Origin
) -> tuple[list[SourceImage], list[dict[str, Any]], str]:
    src, class_map = origin.path, origin.class_map
    if src.is_file() and src.suffix.lower() == ".json":
        if origin.images is None:
            raise ConfigError(
                f"{src} is a COCO annotation file: say where its images are with --images DIR "
                "(or, for several COCO files, an `images:` per entry of --sources FILE)."
            )
        if not origin.images.is_dir():
            raise DataError(f"Image folder {origin.images} does not exist.")
        sources, skipped = coco_sources(
            src, origin.images, class_map, square=options.square, zoom=options.zoom,
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


def _origins(options: PrepareOptions) -> list[Origin]:
    return read_origins(options.source, options.images,
                        choose_class_map(options.map, options.taxonomy), options.sources)


def _process_all(
    sources: list[SourceImage], staging: Path, options: PrepareOptions, reporter: Reporter
) -> list[SourceResult]:
    """Decode and encode every source on all cores, in input order."""
    work = partial(process_source, staging=staging, size=options.size,
                   min_size=options.min_size, quality=options.quality,
                   fingerprints=options.near_duplicates)
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


@dataclass
class _Placed:
    """What `_place` did: counts per split and class, and per source and split; the crops it
    skipped; copies grouped; the pseudolabel truth and the manifest rows."""

    counts: dict[str, dict[str, int]]
    by_source: dict[str, dict[str, int]]
    skipped: list[dict[str, Any]]
    copies: CopyReport
    truth: list[list[str]]
    manifest: list[list[str]]


@dataclass
class CopyReport:
    """Copies among the source photos: exact ones (same bytes) and near-duplicates."""

    exact: int = 0  # photos that repeat another byte for byte
    near: int = 0  # further photos in a group of near-duplicates
    dropped: int = 0  # photos left out by --drop-duplicates
    groups: list[dict[str, Any]] = field(default_factory=list)  # for prepare_report.json
    conflicts: int = 0  # groups whose photos carry different classes


def _split(groups: dict[str, str], options: PrepareOptions) -> dict[str, str]:
    """Groups (-> their class) into test, val, train and, with --unlabeled-frac, pseudolabel."""
    split_of = split_groups(groups, {"test": options.test_frac, "val": options.val_frac},
                            options.seed)
    if options.unlabeled_frac:
        train = {g: label for g, label in groups.items() if split_of[g] == "train"}
        split_of.update(split_groups(train, {PSEUDO_SPLIT: options.unlabeled_frac},
                                     options.seed))
    return split_of


def _photo_groups(results: list[SourceResult], options: PrepareOptions,
                  reporter: Reporter) -> tuple[dict[int, int], list[list[int]], int]:
    """Which photos (indices into `results`) are copies of one another: result -> group id
    (the group's first result), the groups of two or more, and how many repeat exactly."""
    usable = [k for k, r in enumerate(results) if any(c.staged for c in r.crops)]
    first_of: dict[str, int] = {}
    for k in usable:
        first_of.setdefault(results[k].sha256, k)
    unique = list(first_of.values())
    parent = {k: first_of[results[k].sha256] for k in usable}
    if options.near_duplicates and len(unique) > 1:
        pairs = find_copies([results[k].fingerprint for k in unique],
                            options.workers or os.cpu_count() or 1, reporter)
        for group in copy_groups(len(unique), pairs):
            for member in group:
                parent[unique[member]] = unique[group[0]]
        parent = {k: parent[first_of[results[k].sha256]] for k in usable}
    members: dict[int, list[int]] = defaultdict(list)
    for k in usable:
        members[parent[k]].append(k)
    exact = len(usable) - len(unique)
    return parent, [m for m in members.values() if len(m) > 1], exact


def _largest(results: list[SourceResult], group: list[int]) -> int:
    """The photo --drop-duplicates keeps: the most pixels (a copy rarely has more), then the
    first given."""
    return max(group, key=lambda k: (results[k].size[0] * results[k].size[1], -k))


def _place(results: list[SourceResult], options: PrepareOptions, tmp: Path,
           merged: bool, reporter: Reporter) -> _Placed:
    """Split by group of copies and move each staged crop into tmp/<split>/<class>/. Groups
    are stratified by class; in a merge of several sources each source is split on its own (a
    group's source is its first photo's)."""
    skipped: list[dict[str, Any]] = []
    for result in results:
        for crop in result.crops:
            if crop.staged is None:
                skipped.append({"file": str(result.source.path), "crop": crop.job.name,
                                "reason": crop.reason})
    group_of, copy_sets, exact = _photo_groups(results, options, reporter)
    dropped = set()
    if options.drop_duplicates:
        for group in copy_sets:
            keep = _largest(results, group)
            dropped |= {k for k in group if k != keep}
    group_labels: dict[int, Counter[str]] = defaultdict(Counter)
    group_origin: dict[int, str] = {}
    for k, group in group_of.items():
        if k in dropped:
            continue
        result = results[k]
        group_labels[group].update(c.job.label for c in result.crops if c.staged is not None)
        group_origin.setdefault(group, result.source.origin)
    # A group is labelled by its most frequent class (ties by name) for stratification.
    groups = {g: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for g, c in group_labels.items()}
    # Each source is split on its own, by class, exactly as it would be alone: a model trained
    # on one source's split never saw the test photos of that source in a merge.
    split_of: dict[int, str] = {}
    for origin in sorted(set(group_origin.values())) if merged else [None]:
        # Keyed by the group's first photo's digest: the split depends only on the data.
        mine = {results[g].sha256: label for g, label in groups.items()
                if origin is None or group_origin[g] == origin}
        split_by_digest = _split(mine, options)
        split_of |= {g: split_by_digest[results[g].sha256] for g in groups
                     if results[g].sha256 in split_by_digest}

    counts: dict[str, dict[str, int]] = defaultdict(Counter)
    by_source: dict[str, dict[str, int]] = defaultdict(Counter)
    truth: list[list[str]] = []
    manifest: list[list[str]] = [["file", "split", "label", "source", "original"]]
    taken: set[Path] = set()
    written: dict[int, list[str]] = defaultdict(list)
    for index, result in enumerate(results):
        if index not in group_of or index in dropped:
            continue
        split = split_of[group_of[index]]
        for k, crop in enumerate(c for c in result.crops if c.staged is not None):
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
            by_source[result.source.origin][split] += 1
            written[index].append(target.relative_to(tmp).as_posix())
            manifest.append([written[index][-1], split, crop.job.label,
                             result.source.origin, str(result.source.path)])
    report = CopyReport(exact=exact, near=sum(len(g) - 1 for g in copy_sets) - exact,
                        dropped=len(dropped))
    for group in copy_sets:
        labels = {c.job.label for k in group for c in results[k].crops if c.staged}
        report.conflicts += len(labels) > 1
        report.groups.append({
            "split": split_of[group_of[group[0]]],
            "classes": sorted(labels),
            "photos": [{"file": str(results[k].source.path), "source": results[k].source.origin,
                        "size": list(results[k].size), "kept": written.get(k, [])}
                       for k in group]})
    return _Placed({s: dict(c) for s, c in counts.items()},
                   {o: dict(c) for o, c in by_source.items()}, skipped, report, truth,
                   manifest)


def _is_prepared_dataset(folder: Path) -> bool:
    """Whether `folder` is recognisably a dataset that `prepare` wrote (its dataset.json)."""
    try:
        meta = read_dataset_json(folder)
    except DataError:
        return False
    return bool(meta) and meta.get("format") == DATASET_FORMAT


def _prepare_output(options: PrepareOptions, origins: list[Origin]) -> Path:
    """A fresh staging folder beside OUT, after checking that OUT may be (re)written."""
    out = _real_out(options.out)
    check_no_overlap([("--out", out)], [*(("source", o.path) for o in origins),
                                        *(("images folder", o.images) for o in origins),
                                        ("--map file", options.map),
                                        ("--sources file", options.sources)])
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
_OWN_ENTRIES = {DATASET_JSON, REPORT_JSON, TRUTH_CSV, MANIFEST_CSV, "config.yaml", PSEUDO_SPLIT,
                *SPLITS}


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


def _write_metadata(tmp: Path, options: PrepareOptions, result: PrepareResult,
                    origins: list[Origin], kinds: dict[str, str], placed: _Placed) -> None:
    first = origins[0]
    dataset = {
        "format": DATASET_FORMAT,
        "version": 1,
        "classes": result.classes,
        "counts": result.counts,
        "source": ({"kind": kinds[first.name], "path": str(first.path)} if len(origins) == 1
                   else {"kind": "merged", "paths": [str(o.path) for o in origins]}),
        "sources": {o.name: {"kind": kinds[o.name], "path": str(o.path),
                             "images": result.sources.get(o.name, {})} for o in origins},
        "created_by": f"wastecls {__version__}",
        "settings": json.loads(options.model_dump_json()),
    }
    truth = placed.truth
    (tmp / DATASET_JSON).write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    copies = result.copies
    report = {"skipped": result.skipped, "duplicates_grouped": copies.exact,
              "near_duplicates_grouped": copies.near, "duplicates_dropped": copies.dropped,
              "copy_groups": copies.groups, "warnings": result.warnings}
    if result.relabels is not None:
        report["relabel"] = result.relabels
    (tmp / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_config(options, tmp / "config.yaml")
    if truth:
        buffer = io.StringIO()
        csv_writer(buffer).writerows([["file", "label"], *truth])
        (tmp / TRUTH_CSV).write_text(buffer.getvalue(), encoding="utf-8")
    buffer = io.StringIO()
    csv_writer(buffer).writerows(placed.manifest)
    (tmp / MANIFEST_CSV).write_text(buffer.getvalue(), encoding="utf-8")


def _conflicts(copies: CopyReport) -> list[str]:
    if not copies.conflicts:
        return []
    example = next(g for g in copies.groups if len(g["classes"]) > 1)
    return [f"{copies.conflicts} group(s) of copies carry different classes (e.g. "
            f"{example['photos'][0]['file']} as {' and '.join(example['classes'])}): each group "
            "is trained on under its most frequent class. They are listed under copy_groups in "
            f"{REPORT_JSON}; fix the labels at the source."]


def _nothing_usable(origins: list[Origin], skipped: list[dict[str, Any]]) -> DataError:
    """The error for sources whose every image or box was skipped, with the first reasons."""
    where = ", ".join(str(o.path) for o in origins)
    return DataError(f"No usable images in {where}: see the reasons below.\n"
                     + "\n".join(f"  {entry_text(s)}" for s in skipped[:10]))


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
    """Build the dataset layout that `train`, `evaluate` and `pseudolabel` read, from one
    source or several merged into one class list."""
    reporter = reporter or Reporter(options.quiet)
    origins = _origins(options)
    sources, skipped, kinds = _collect_sources(options, origins)
    relabels = None
    if options.relabel is not None:
        sources, relabels = apply_relabels(sources, read_relabels(options.relabel))
    if not sources:
        raise _nothing_usable(origins, skipped)
    tmp = _prepare_output(options, origins)
    lock = hold_lock(tmp)  # the staging folder is alive while this run is
    try:
        results = _process_all(sources, tmp / ".staging", options, reporter)
        placed = _place(results, options, tmp, len(origins) > 1, reporter)
        shutil.rmtree(tmp / ".staging")
        counts = placed.counts
        labelled = [s for s in SPLITS if s in counts]
        classes = sorted({c for s in labelled for c in counts[s]} | {
            c for c in counts.get(PSEUDO_SPLIT, {})})
        if not classes:
            raise _nothing_usable(origins, skipped + placed.skipped)
        for split in (*SPLITS, PSEUDO_SPLIT):
            counts.setdefault(split, {})
            counts[split] = {c: counts[split].get(c, 0) for c in classes}
        wanted = sorted({job.label for source in sources for job in source.jobs})
        result = PrepareResult(options.out, classes, counts, skipped + placed.skipped,
                               placed.copies, _degenerate(wanted, counts, options)
                               + _conflicts(placed.copies),
                               {o.name: placed.by_source.get(o.name, {}) for o in origins},
                               relabels)
        _write_metadata(tmp, options, result, origins, kinds, placed)
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
