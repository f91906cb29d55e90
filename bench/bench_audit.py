"""How well `audit` finds label errors, and which review order teaches a model fastest.

1. Label errors. TrashNet is prepared (seed 0) and 5% of its training labels are flipped to
   another class at random (seed S). audit's own functions read features that never saw any
   label (plain ImageNet weights, `--arch/--weights`), fit out-of-fold heads and ask cleanlab.
   Reported per flip seed: how many flips it finds (recall) and how many of its reports are
   flips (precision), against cleanlab's default filter on the same probabilities. The
   variants (input size, mirror averaging, filter) are chosen on flip seed 0 and reported on
   seeds 1 and 2.
   The reports that are not flips are drawn on a contact sheet, to be looked at: some are
   TrashNet's own mistakes.
2. Review order. From 10% of the training labels, 5 rounds add 60 labels each, picked by margin
   (review's default), diverse (review --order diverse) or at random; a logistic head on the
   same features is scored on the test split after each round; 3 seeds.

Usage: python bench/bench_audit.py --data ../shared/data/trashnet \
    --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
from common import add_data_arguments

from waste_cli.core.console import Reporter
from waste_cli.data.scan import class_folders, class_samples
from waste_cli.review import labels as audit_labels
from waste_cli.review.features import FeatureSource, read_features
from waste_cli.review.queue import Item, order_items, pixel_vectors

OUT = Path(__file__).resolve().parent / "out" / "audit"
FLIP_SHARE = 0.05
ROUNDS, PER_ROUND, START_SHARE = 5, 60, 0.10


def prepared(data: Path) -> Path:
    root = OUT / "data"
    if not (root / "dataset.json").is_file():
        subprocess.run(["wastecls", "prepare", str(data), "--out", str(root), "-q"], check=True)
    return root


def samples(folder: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    classes = class_folders(folder)
    found = class_samples(folder, {c: k for k, c in enumerate(classes)})
    return [p for p, _ in found], np.array([k for _, k in found]), classes


def features_of(paths: list[Path], name: str, source: FeatureSource) -> np.ndarray:
    cache = OUT / f"features-{name}.npy"
    if cache.is_file():
        return np.load(cache)
    read = read_features([(p, 0) for p in paths], source, Reporter())
    np.save(cache, read.features)
    return read.features


def flips(labels: np.ndarray, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(labels), size=round(FLIP_SHARE * len(labels)), replace=False)
    given = labels.copy()
    given[chosen] = (labels[chosen] + rng.integers(1, classes, len(chosen))) % classes
    return given


def score(reported: list[int], flipped: set[int]) -> dict[str, float]:
    hits = len(set(reported) & flipped)
    return {"reported": len(reported), "found": hits, "recall": hits / len(flipped),
            "precision": hits / max(len(reported), 1)}


def label_errors(features: np.ndarray, labels: np.ndarray, classes: int) -> dict:
    results = {}
    for seed in (0, 1, 2):
        given = flips(labels, classes, seed)
        flipped = set(np.flatnonzero(given != labels).tolist())
        start = time.perf_counter()
        check = audit_labels.check_labels(features, given, classes, folds=5, seed=0)
        seconds = time.perf_counter() - start
        from cleanlab.filter import find_label_issues

        default = np.flatnonzero(find_label_issues(given, check.probs, n_jobs=1)).tolist()
        misses = [k for k in check.issues if k not in flipped]
        results[seed] = {"audit": score(check.issues, flipped),
                         "cleanlab_default_filter": score(default, flipped),
                         "out_of_fold_accuracy_vs_truth": float(
                             (check.probs.argmax(1) == labels).mean()),
                         "seconds": round(seconds, 1), "not_flips": misses}
        print(f"flip seed {seed}: audit {results[seed]['audit']}, cleanlab's default filter "
              f"{results[seed]['cleanlab_default_filter']}")
    return results


def contact_sheet(paths: list[Path], rows: list[int], given: np.ndarray,
                  suggested: np.ndarray, classes: list[str], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    columns = 8
    lines = max(1, -(-len(rows) // columns))
    figure, axes = plt.subplots(lines, columns, figsize=(columns * 2, lines * 2.3))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, k in zip(np.atleast_1d(axes).ravel(), rows, strict=False):
        ax.imshow(Image.open(paths[k]).convert("RGB"))
        ax.set_title(f"{k}: {classes[given[k]]}\n-> {classes[suggested[k]]}", fontsize=7)
    figure.tight_layout()
    figure.savefig(target, dpi=80)
    plt.close(figure)


def review_order(features: np.ndarray, labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, vectors: np.ndarray, classes: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    reduced_all = audit_labels.principal_components(np.vstack([features, test_features]))
    pool, test = reduced_all[:len(features)], reduced_all[len(features):]
    results: dict[str, list[list[float]]] = {}
    for order in ("margin", "diverse", "random"):
        runs = []
        for seed in (0, 1, 2):
            rng = np.random.default_rng(seed)
            labelled = list(rng.choice(len(labels), size=round(START_SHARE * len(labels)),
                                       replace=False))
            curve = []
            for round_ in range(ROUNDS + 1):
                scaler = StandardScaler().fit(pool[labelled])
                head = LogisticRegression(C=0.05, max_iter=500).fit(
                    scaler.transform(pool[labelled]), labels[labelled])
                curve.append(float((head.predict(scaler.transform(test)) == test_labels).mean()))
                if round_ == ROUNDS:
                    break
                left = np.setdiff1d(np.arange(len(labels)), labelled)
                if order == "random":
                    picks = rng.choice(left, size=PER_ROUND, replace=False).tolist()
                else:
                    probs = head.predict_proba(scaler.transform(pool[left]))
                    top = np.argsort(-probs, axis=1)[:, :3]
                    items = [Item(str(k), Path(str(k)), guesses=[
                        (str(c), float(probs[r, c])) for c in top[r]])
                        for r, k in enumerate(left.tolist())]
                    ordered = order_items(items, order, vectors[left])
                    picks = [int(i.key) for i in ordered[:PER_ROUND]]
                labelled += picks
            runs.append(curve)
            print(f"{order} seed {seed}: " + " ".join(f"{a:.3f}" for a in curve))
        results[order] = runs
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=288)
    parser.add_argument("--tta", action="store_true", help="mirror-averaged features")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    root = prepared(args.data)
    train_paths, train_labels, classes = samples(root / "train")
    test_paths, test_labels, _ = samples(root / "test")
    source = FeatureSource(arch=args.arch, weights=args.weights, img_size=args.img_size,
                           flip=args.tta)
    tag = f"{args.arch}-{args.img_size}" + ("-flip" if args.tta else "")
    start = time.perf_counter()
    train_features = features_of(train_paths, f"{tag}-train", source)
    test_features = features_of(test_paths, f"{tag}-test", source)
    feature_seconds = time.perf_counter() - start
    errors = label_errors(train_features, train_labels, len(classes))
    check = audit_labels.check_labels(train_features, flips(train_labels, len(classes), 1),
                                      len(classes), folds=5, seed=0)
    not_flips = errors[1]["not_flips"]
    contact_sheet(train_paths, not_flips, flips(train_labels, len(classes), 1),
                  check.probs.argmax(1), classes, OUT / "not-flips-seed1.png")
    vectors = pixel_vectors(train_paths, 2, Reporter())
    order = review_order(train_features, train_labels, test_features, test_labels, vectors,
                         len(classes))
    summary = {"features": tag, "feature_seconds": round(feature_seconds, 1),
               "train_photos": len(train_paths), "test_photos": len(test_paths),
               "flip_share": FLIP_SHARE, "label_errors": errors,
               "review_order": {k: {"mean": np.mean(v, axis=0).round(4).tolist(),
                                    "std": np.std(v, axis=0).round(4).tolist(),
                                    "labels": [round(START_SHARE * len(train_paths))
                                               + PER_ROUND * r for r in range(ROUNDS + 1)]}
                                for k, v in order.items()}}
    (OUT / f"audit-{tag}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "label_errors"}, indent=1))
    print(f"contact sheet of seed 1's reports that are not flips: {OUT / 'not-flips-seed1.png'}")


if __name__ == "__main__":
    main()
