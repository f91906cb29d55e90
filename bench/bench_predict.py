"""Inference benchmark for issues 4 and 5, measured in one run on one machine.

1. Model-only forward throughput (tensors already in memory): PyTorch eager over batch sizes
   and memory formats, and onnxruntime fp32 / int8 over batch sizes; each in this process with
   all threads, and spread over one single-threaded process per core (what `predict` does on a
   CPU). The end-to-end ratios are taken against the best of all of them.
2. End to end `wastecls predict DIR --format csv --output F` (process start included) with
   --backend torch, onnxruntime (fp32 .onnx), onnxruntime (int8 .onnx) and the default (a .pt
   with --backend auto: its first run exports the ONNX twin, the second finds it), the accuracy
   of each against the folder labels, and the rate the model ran at inside each run (predict's
   `Speed:` line). onnxruntime fp32's best model-only rate is measured again just before and
   after its run, as the machine's speed drifts.
3. The seed project's way: a per-image loop (open, transform, model, next).
4. Peak memory of `wastecls predict` on 250 images and on all images: the peak of the summed
   RSS of its whole process tree (an upper bound: pages the processes share count once each).

Usage: python bench/bench_predict.py --model runs/train/exp/best.pt --data ../shared/data/trashnet
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import psutil
import torch

from waste_cli.data.scan import list_images
from waste_cli.data.sources import load_rgb
from waste_cli.data.transforms import eval_transform
from waste_cli.model.backends import OnnxRunner
from waste_cli.model.checkpoint import load_checkpoint
from waste_cli.model.factory import model_from_checkpoint


def _rate(run, batch: torch.Tensor, seconds: float) -> float:
    run(batch)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def _rate_in_child(make_run, batch, seconds, barrier, results) -> None:
    torch.set_num_threads(1)
    run = make_run(1)
    run(batch)
    barrier.wait()  # all processes measure at the same time
    results.put(_rate(run, batch, seconds))


def _spread_rate(make_run, batch: torch.Tensor, processes: int, seconds: float) -> float:
    """Summed img/s of `processes` single-threaded processes running the model at once."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(processes), context.Queue()
    children = [context.Process(target=_rate_in_child,
                                args=(make_run, batch, seconds, barrier, results))
                for _ in range(processes)]
    for child in children:
        child.start()
    total = sum(results.get() for _ in children)
    for child in children:
        child.join()
    return total


def _onnx_run(path: Path):
    def make_run(threads: int | None):
        runner = OnnxRunner(path, threads)
        return lambda x: runner(x.numpy())
    return make_run


def best_spread_rate(path: Path, shape: list[int], seconds: float = 4.0) -> float:
    """onnxruntime's best model-only rate right now: one single-threaded process per core, at
    batch 1 and 4 (the best configurations in the table)."""
    processes = os.cpu_count() or 1
    return max(_spread_rate(_onnx_run(path), torch.randn(b, *shape), processes, seconds)
               for b in (1, 4))


def model_only(model_path: Path, onnx_paths: dict[str, Path], sizes: list[int],
               seconds: float = 4.0) -> dict[str, dict[int, float]]:
    """img/s per configuration and batch size; `make_run(threads)` builds a forward call."""
    checkpoint = load_checkpoint(model_path)
    shape = checkpoint["data_config"]["input_size"]
    batches = {b: torch.randn(b, *shape) for b in sizes}

    def torch_run(memory: torch.memory_format):
        model = model_from_checkpoint(checkpoint).to(memory_format=memory).eval()

        def make_run(threads: int):
            @torch.inference_mode()
            def run(x: torch.Tensor) -> torch.Tensor:
                return model(x.contiguous(memory_format=memory))
            return run
        return make_run

    configs = {"torch channels_last": torch_run(torch.channels_last),
               "torch contiguous": torch_run(torch.contiguous_format)}
    for name, path in onnx_paths.items():
        configs[f"onnxruntime {name}"] = _onnx_run(path)
    processes = os.cpu_count() or 1
    results = {}
    for name, make_run in configs.items():
        run = make_run(None)
        results[name] = {b: _rate(run, x, seconds) for b, x in batches.items()}
        results[f"{name}, {processes} processes x 1 thread"] = {
            b: _spread_rate(make_run, x, processes, seconds) for b, x in batches.items()}
    return results


def end_to_end(args: list[str], data: Path, out: Path,
               held_out: set[str] | None = None) -> tuple[float, float, int, float]:
    """(images/s, accuracy on the held-out images, peak MiB, in-run model-only images/s) of one
    predict process tree. The last is from predict's own "Speed:" line: the rate its model
    processes ran at during this run, so comparing with it is immune to the machine's drift."""
    start = time.perf_counter()
    proc = psutil.Popen(["wastecls", "predict", str(data), "--format", "csv", "--output",
                         str(out), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.NoSuchProcess:  # a worker ended between listing and reading
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode()
    if proc.returncode:
        raise SystemExit(f"predict failed: {stderr}")
    speed = re.search(r"([\d.]+) ms inference per image, in (\d+) process", stderr)
    in_run = int(speed[2]) * 1000 / float(speed[1]) if speed else float("nan")
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    scored = [r for r in rows if held_out is None or Path(r["path"]).stem in held_out]
    correct = sum(Path(r["path"]).parent.name == r["label1"] for r in scored)
    return len(rows) / seconds, correct / max(len(scored), 1), peak // 2**20, in_run


def per_image_loop(model_path: Path, paths: list[Path]) -> float:
    checkpoint = load_checkpoint(model_path)
    model = model_from_checkpoint(checkpoint)
    transform = eval_transform(checkpoint["data_config"])
    start = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            model(torch.from_numpy(transform(load_rgb(path))).unsqueeze(0)).argmax(1)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a trained best.pt")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/trashnet"))
    parser.add_argument("--sizes", default="1,4,8,16,32")
    parser.add_argument("--calib-data", type=Path, help="int8 calibration images")
    parser.add_argument("--test-split", type=Path,
                        help="a prepared ROOT/test: accuracy is counted on these images only")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    held_out = ({p.stem for p in args.test_split.rglob("*.jpg")} if args.test_split else None)
    paths = list_images(args.data)
    print(f"# predict benchmark, {date.today()}, {os.cpu_count()} cores "
          f"{platform.machine()}, torch {torch.__version__}, {len(paths)} images, {args.model}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "best.pt"
        shutil.copy(args.model, model)
        onnx = {"fp32": tmp / "fp32.onnx", "int8": tmp / "int8.onnx"}
        calib = ["--calib-data", str(args.calib_data)] if args.calib_data else []
        subprocess.run(["wastecls", "export", "-m", str(model), "--onnx", "--out",
                        str(onnx["fp32"]), "-q"], check=True)
        subprocess.run(["wastecls", "export", "-m", str(model), "--onnx", "--int8", "--out",
                        str(onnx["int8"]), "--max-drop", "100", *calib], check=True)

        print("\n## model-only forward throughput (img/s), tensors in memory\n")
        rates = model_only(model, onnx, sizes)
        best_torch = max(max(r.values()) for name, r in rates.items()
                         if name.startswith("torch"))
        best_ort = max(max(r.values()) for name, r in rates.items()
                       if name.startswith("onnxruntime fp32"))
        print("| backend | " + " | ".join(f"batch {b}" for b in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        for name, by_size in rates.items():
            print(f"| {name} | " + " | ".join(f"{by_size[b]:.1f}" for b in sizes) + " |")
        print(f"\nbest: torch {best_torch:.1f}, onnxruntime fp32 {best_ort:.1f} img/s")

        print("\n## end to end `wastecls predict DIR --format csv --output F`\n")
        scope = f"{len(held_out)} held-out test images" if held_out else "all images"
        e2e = {}
        # The onnxruntime fp32 ratio's model-only rate is measured again right before and
        # after its end-to-end run: the machine's speed drifts over the minutes in between.
        shape = load_checkpoint(model)["data_config"]["input_size"]
        around = [best_spread_rate(onnx["fp32"], shape)]
        e2e["onnxruntime fp32"] = end_to_end(["-m", str(onnx["fp32"])], args.data,
                                             tmp / "out.csv", held_out)
        around.append(best_spread_rate(onnx["fp32"], shape))
        # The default backend (auto) runs a .pt on a CPU through a cached ONNX twin: the first
        # run exports and verifies it, later runs find it.
        for name, extra in (("torch (.pt)", ["-m", str(model), "--backend", "torch"]),
                            ("onnxruntime int8", ["-m", str(onnx["int8"])]),
                            ("default (.pt, auto), first run: exports", ["-m", str(model)]),
                            ("default (.pt, auto), cached", ["-m", str(model)])):
            e2e[name] = end_to_end(extra, args.data, tmp / "out.csv", held_out)
        print(f"| backend | img/s | accuracy ({scope}) | peak MiB (process tree) | model alone "
              "in this run, img/s |\n|---|---|---|---|---|")
        for name, (rate, accuracy, peak, in_run) in e2e.items():
            print(f"| {name} | {rate:.1f} | {accuracy:.2%} | {peak} | {in_run:.1f} |")
        loop = per_image_loop(model, paths[:: max(1, len(paths) // 250)])
        print(f"| per-image loop (seed style, torch) | {loop:.1f} | | | |")

        small = tmp / "small"
        for path in paths[:: max(1, len(paths) // 250)][:250]:
            target = small / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
        rss_small = end_to_end(["-m", str(onnx["fp32"])], small, tmp / "small.csv")[2]
        rss_torch_small = end_to_end(["-m", str(model), "--backend", "torch"], small,
                                     tmp / "small.csv")[2]

        ort_e2e, torch_e2e, int8_e2e, first_e2e, auto_e2e = (e2e[k][0] for k in e2e)
        ort_in_run = e2e["onnxruntime fp32"][3]
        print("\n## ratios (targets in brackets)\n")
        for name, rate in (("default (auto, cached ONNX)", auto_e2e),
                           ("default (auto), first run", first_e2e),
                           ("--backend torch", torch_e2e)):
            print(f"- {name} end to end / best torch model-only: {rate / best_torch:.2f} "
                  f"[>= 0.85]; / per-image loop: {rate / loop:.2f} [>= 1.5]")
        print(f"- onnxruntime fp32 end to end / torch end to end: {ort_e2e / torch_e2e:.2f} "
              "[>= 2]")
        print(f"- onnxruntime fp32 end to end / its model-only best measured just before and "
              f"after ({around[0]:.1f}, {around[1]:.1f}): {2 * ort_e2e / sum(around):.2f} "
              f"[>= 0.8]; / the table's best ({best_ort:.1f}): {ort_e2e / best_ort:.2f}; / its "
              f"model alone in the same run ({ort_in_run:.1f}): {ort_e2e / ort_in_run:.2f}")
        print(f"- int8 / fp32 end to end: {int8_e2e / ort_e2e:.2f} [>= 1.5], accuracy "
              f"{e2e['onnxruntime int8'][1]:.2%} vs {e2e['onnxruntime fp32'][1]:.2%}")
        print(f"- peak RSS all / 250 images: onnxruntime {e2e['onnxruntime fp32'][2]} / "
              f"{rss_small} MiB = {e2e['onnxruntime fp32'][2] / rss_small:.2f}; torch "
              f"{e2e['torch (.pt)'][2]} / {rss_torch_small} MiB = "
              f"{e2e['torch (.pt)'][2] / rss_torch_small:.2f} [<= 1.2]")


if __name__ == "__main__":
    main()
