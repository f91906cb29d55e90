"""How many training features the built-in model should carry for its unfamiliar flag.

The built-in model's features (its ONNX file with a features output) for its training,
validation and test photos (the merged dataset `make model` prepared, copied from its temporary
folder while the build ran) and for the photos of other things (bench/other_photos.py). For
banks of several sizes (evenly spaced training photos, as `choose_bank` picks them), the
threshold is fitted as `fit_calibration` fits it (95% of validation photos pass both checks);
reported: the share of test photos flagged and of other photos flagged, and the AUROC.

Usage: python bench/bench_flag_bank.py --data bench/out/flag_bank/data --other bench/out/other
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from waste_cli.confidence.calibrate import write_features_copy
from waste_cli.confidence.fit import choose_bank, familiar_threshold, knn_distance
from waste_cli.confidence.graph import FEATURES
from waste_cli.confidence.measures import auroc, scaled_softmax
from waste_cli.core.console import Reporter
from waste_cli.data.batching import run_labelled
from waste_cli.data.scan import class_folders, class_samples, list_images
from waste_cli.model.backends import OnnxRunner
from waste_cli.model.builtin import builtin_file

OUT = Path(__file__).resolve().parent / "out" / "flag_bank"


def features(runner: OnnxRunner, paths: list[Path], name: str) -> dict[str, np.ndarray]:
    cache = OUT / f"{name}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    outputs, bad = run_labelled(runner, [(p, 0) for p in paths], 2, 2, Reporter(), name)
    keep = np.setdiff1d(np.arange(len(paths)), bad)
    kept = {k: v[keep] for k, v in outputs.items()}
    np.savez(cache, **kept)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the merged prepare root")
    parser.add_argument("--other", type=Path, required=True)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    model = builtin_file(".onnx")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "features.onnx"
        write_features_copy(model, probe)
        runner = OnnxRunner(probe)
        temperature = OnnxRunner(model).calibration.temperature
        parts = {}
        for split in ("train", "val", "test"):
            folder = args.data / split
            index = {c: k for k, c in enumerate(class_folders(folder))}
            parts[split] = features(runner, [p for p, _ in class_samples(folder, index)], split)
        parts["other"] = features(runner, list_images(args.other), "other")
    confident = {k: scaled_softmax(v["logits"] / temperature).max(1) for k, v in parts.items()}
    results = []
    train = parts["train"][FEATURES]
    for budget in (950_000, 1_900_000, 3_800_000, 7_600_000, len(train) * train.shape[1] * 2):
        bank = choose_bank(train, budget)
        for k in (5, 10, 20):
            scores = {name: knn_distance(part[FEATURES], bank, k) for name, part in parts.items()}
            threshold = familiar_threshold(scores["val"], confident["val"] >= 0.4, 0.95)

            def flagged(name: str, threshold: float = threshold, scores: dict = scores) -> float:
                return float(((scores[name] > threshold) | (confident[name] < 0.4)).mean())

            row = {"bank_rows": len(bank), "megabytes": round(bank.nbytes / 1e6, 2),
                   "k": k, "test_flagged": flagged("test"), "other_flagged": flagged("other"),
                   "auroc": auroc(scores["test"], scores["other"])}
            results.append(row)
            print(row)
    (OUT / "flag_bank.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
