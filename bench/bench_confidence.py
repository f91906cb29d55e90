"""Calibration and the unfamiliar flag, measured: which unfamiliarity score to ship, and what
the defaults give.

Leave one class out: for each TrashNet class C, a model trained (`wastecls train`) on the other
five classes of the default split; the photos of C are then things it never saw (near: same
white background, same camera). `--other` adds photos of other things (bench/other_photos.py).
Each score's threshold is chosen on the fold's validation split so that 95% of its photos
pass, the score alone; then, for the shipped score, the product's own fit
(`confidence.fit.fit_calibration`) at several --min-confidence values.

Build the folds (about 6 minutes each on 2 cores), then measure:

    bash bench/loco.sh /tmp/loco ../shared/data/trashnet \
        ../shared/weights/tf_efficientnet_lite0.in1k.safetensors cardboard glass metal
    python bench/other_photos.py --out bench/out/other
    python bench/bench_confidence.py --loco /tmp/loco --other bench/out/other
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path

import numpy as np
import torch

from waste_cli.confidence.fit import (
    NEIGHBOURS,
    choose_bank,
    fit_calibration,
    fit_temperature,
    flag_of,
    knn_distance,
    normalized,
)
from waste_cli.confidence.measures import auroc, calibration_report, scaled_softmax
from waste_cli.core.console import Reporter
from waste_cli.data.batching import run_labelled
from waste_cli.data.scan import class_folders, class_samples, list_images
from waste_cli.model.backends import TorchRunner
from waste_cli.model.checkpoint import load_checkpoint
from waste_cli.model.factory import model_from_checkpoint
from waste_cli.model.heads import FeatureClassifier

SHARE = 0.95
MIN_CONFIDENCES = (0.0, 0.3, 0.4, 0.5, 0.6)


def outputs_of(runner: TorchRunner, paths: list[Path]) -> dict[str, np.ndarray]:
    outputs, bad = run_labelled(runner, [(p, -1) for p in paths], 32, None, Reporter(True), "")
    keep = np.setdiff1d(np.arange(len(paths)), bad)
    return {k: v[keep] for k, v in outputs.items()}


def fold_outputs(run: Path, data: Path, whole: Path, held_out: str, other: Path | None,
                 cache: Path) -> dict[str, dict[str, np.ndarray]]:
    """Logits and pooled features of every split of a fold (cached as .npz)."""
    if cache.is_file():
        loaded = np.load(cache)
        parts: dict[str, dict[str, np.ndarray]] = {}
        for key in loaded.files:
            split, name = key.split("/")
            parts.setdefault(split, {})[name] = loaded[key]
        return parts
    checkpoint = load_checkpoint(run / "best.pt")
    classes = checkpoint["classes"]
    model = FeatureClassifier(model_from_checkpoint(checkpoint))
    runner = TorchRunner(model, classes, checkpoint["data_config"], torch.device("cpu"), True)
    parts = {}
    for split in ("train", "val", "test"):
        samples = class_samples(data / split, {c: classes.index(c)
                                               for c in class_folders(data / split)})
        parts[split] = outputs_of(runner, [p for p, _ in samples])
        parts[split]["targets"] = np.array([y for _, y in samples])
    parts["held_out"] = outputs_of(runner, [p for s in ("train", "val", "test")
                                            for p in list_images(whole / s / held_out)])
    if other is not None:
        parts["other"] = outputs_of(runner, list_images(other))
    np.savez(cache, **{f"{s}/{k}": v for s, d in parts.items() for k, v in d.items()})
    return parts


def mahalanobis(train: dict[str, np.ndarray]) -> callable:
    """Lee et al. 2018: distance to the nearest class mean under the shared covariance
    (shrunk towards its mean variance, as features outnumber photos per class)."""
    f, y = train["features"], train["targets"]
    means = np.stack([f[y == c].mean(axis=0) for c in np.unique(y)])
    centred = f - means[np.searchsorted(np.unique(y), y)]
    cov = centred.T @ centred / len(f)
    cov = 0.9 * cov + 0.1 * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)

    def score(features: np.ndarray) -> np.ndarray:
        d = features[:, None, :] - means[None]
        return np.einsum("nkd,de,nke->nk", d, precision, d).min(axis=1)

    return score


def methods(parts: dict[str, dict[str, np.ndarray]]) -> dict[str, callable]:
    """Unfamiliarity scores (higher: less familiar) of the compared methods."""
    temperature = fit_temperature(parts["val"]["logits"], parts["val"]["targets"])
    full = normalized(parts["train"]["features"]).astype(np.float16)
    carried = choose_bank(parts["train"]["features"])
    return {
        "top probability (calibrated)": lambda o: -scaled_softmax(o["logits"],
                                                                  temperature).max(axis=1),
        "energy": lambda o: -np.log(np.exp(o["logits"].astype(np.float64)).sum(axis=1)),
        "Mahalanobis (class means)": (lambda score: lambda o: score(o["features"]))(
            mahalanobis(parts["train"])),
        "kNN, all training photos": lambda o: knn_distance(o["features"], full, NEIGHBOURS),
        f"kNN, carried bank ({len(carried)} rows)": lambda o: knn_distance(o["features"],
                                                                         carried, NEIGHBOURS),
    }


def compare(parts: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    rows = {}
    for name, score in methods(parts).items():
        val, test, held = score(parts["val"]), score(parts["test"]), score(parts["held_out"])
        threshold = np.sort(val)[min(len(val), int(np.ceil(SHARE * (len(val) + 1)))) - 1]
        row = {"auroc_held_out": auroc(test, held), "held_out_flagged": float((held > threshold)
                                                                               .mean()),
               "test_flagged": float((test > threshold).mean())}
        if "other" in parts:
            other = score(parts["other"])
            row |= {"auroc_other": auroc(test, other),
                    "other_flagged": float((other > threshold).mean())}
        rows[name] = row
    return rows


def product(parts: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """What the shipped fit gives at each --min-confidence: flags on each set, accuracy."""
    val = parts["val"]
    rows = {}
    for floor in MIN_CONFIDENCES:
        fitted = fit_calibration(val["logits"], val["targets"], parts["train"]["features"],
                                 val["features"], familiar_share=SHARE, min_confidence=floor)
        calibration, row = fitted.calibration, {}
        for split in ("test", "held_out", "other"):
            if split not in parts:
                continue
            out = parts[split]
            probs = scaled_softmax(out["logits"], calibration.temperature)
            scores = knn_distance(out["features"], fitted.bank, calibration.neighbours)
            flags = np.array([bool(flag_of(p, s, calibration))
                              for p, s in zip(probs.max(axis=1), scores, strict=True)])
            row[f"{split}_flagged"] = float(flags.mean())
            if split == "test":
                correct = probs.argmax(axis=1) == out["targets"]
                row |= {"test_accuracy": float(correct.mean()),
                        "test_accuracy_unflagged": float(correct[~flags].mean()),
                        "ece_raw": calibration_report(scaled_softmax(out["logits"]),
                                                      out["targets"])["ece"],
                        "ece": calibration_report(probs, out["targets"])["ece"],
                        "temperature": calibration.temperature}
        rows[str(floor)] = row
    return rows


def mean_rows(folds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {name: {k: float(np.mean([f[name][k] for f in folds])) for k in folds[0][name]}
            for name in folds[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loco", type=Path, required=True,
                        help="all/ (the prepared split), data-C/ and runs/C/best.pt per class")
    parser.add_argument("--other", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/out/confidence.json"))
    args = parser.parse_args()
    print(f"# confidence benchmark, {date.today()}, {os.cpu_count()} cores "
          f"{platform.machine()}, torch {torch.__version__}")
    compared, shipped = {}, {}
    for run in sorted((args.loco / "runs").glob("*/summary.json")):  # finished runs only
        held_out = run.parent.name
        parts = fold_outputs(run.parent, args.loco / f"data-{held_out}", args.loco / "all",
                             held_out, args.other, args.loco / f"outputs-{held_out}.npz")
        compared[held_out], shipped[held_out] = compare(parts), product(parts)
        print(f"\n## without {held_out}\n")
        for name, row in compared[held_out].items():
            print(f"{name:40s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    summary = {"methods": mean_rows(list(compared.values())),
               "defaults": mean_rows(list(shipped.values())),
               "folds": {"methods": compared, "defaults": shipped}}
    print(f"\n## mean over {len(compared)} folds (thresholds: {SHARE:.0%} of val passes)\n")
    print("| score | AUROC held-out class | held-out flagged | test flagged"
          + (" | AUROC other | other flagged |" if args.other else " |"))
    print("|---|---|---|---|" + ("---|---|" if args.other else ""))
    for name, row in summary["methods"].items():
        cells = [f"{row['auroc_held_out']:.3f}", f"{row['held_out_flagged']:.1%}",
                 f"{row['test_flagged']:.1%}"]
        if args.other:
            cells += [f"{row['auroc_other']:.3f}", f"{row['other_flagged']:.1%}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| --min-confidence | test flagged | accuracy all -> unflagged | held-out flagged"
          + (" | other flagged" if args.other else "") + " | ECE raw -> calibrated |")
    print("|---|---|---|---|---|" + ("---|" if args.other else ""))
    for floor, row in summary["defaults"].items():
        print(f"| {floor} | {row['test_flagged']:.1%} | {row['test_accuracy']:.2%} -> "
              f"{row['test_accuracy_unflagged']:.2%} | {row['held_out_flagged']:.1%} | "
              + (f"{row['other_flagged']:.1%} | " if args.other else "")
              + f"{row['ece_raw']:.1%} -> {row['ece']:.1%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
