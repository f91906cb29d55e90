"""Loader processes or not, when training from a RAM cache (issue 3's throughput target).

Trains the same short run three times on a class-balanced subset of a prepared dataset, in one
process, alternating with model-only forward+backward measurements:
  in-process   augmentation in the training process (the default with --cache ram)
  train-worker one persistent loader process for training, validation in-process
  both-workers one persistent loader process for training and one for validation
and prints images/s per epoch. Usage:
    python bench/bench_train_loader.py --prepared bench/out/data --weights WEIGHTS
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from bench_train import model_only_rate
from common import add_data_arguments

import waste_cli.train as train_module
from waste_cli.console import Reporter
from waste_cli.settings import TrainSettings

VARIANTS = ("in-process", "train-worker", "both-workers")


def subset(prepared: Path, out: Path, per_class: int) -> None:
    """Symlink the first `per_class` train and per_class // 8 val images of every class."""
    for split, count in (("train", per_class), ("val", max(1, per_class // 8))):
        for folder in sorted(p for p in (prepared / split).iterdir() if p.is_dir()):
            (out / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                (out / split / folder.name / image.name).symlink_to(image.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--prepared", type=Path, required=True, help="a `prepare` output")
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    build_loader = train_module.build_loader

    def validation_in_process(dataset, batch_size, **options):
        if options.get("generator") is None:  # the validation loader
            options["workers"] = 0
        return build_loader(dataset, batch_size, **options)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subset(args.prepared, data, args.per_class)
        print("| variant | model-only before | images/s per epoch |\n|---|---|---|")
        for variant in VARIANTS:
            before = model_only_rate("tf_efficientnet_lite0", 224, 32, False, 0, seconds=10)
            train_module.build_loader = (validation_in_process if variant == "train-worker"
                                         else build_loader)
            settings = TrainSettings(
                data=data, arch="efficientnet-lite0", weights=args.weights, img_size=224,
                epochs=args.epochs, ema=True, lr=1e-3, layer_decay=0.7, aug="light",
                cache="ram", batch_size=32, workers=0 if variant == "in-process" else 1,
                project=Path(tmp) / "runs", name=variant, quiet=True)
            result = train_module.train(settings, Reporter(quiet=True))
            with open(result.run_dir / "metrics.csv", newline="") as handle:
                rates = [f"{float(r['images_per_s']):.1f}" for r in csv.DictReader(handle)]
            print(f"| {variant} | {before:.1f} | {', '.join(rates)} |", flush=True)


if __name__ == "__main__":
    main()
