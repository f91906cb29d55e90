"""Where a model runs (issue: serve, exports, video), measured in one run on one machine.

1. OpenVINO against onnxruntime, end to end: `wastecls predict` of the same photos with the
   .onnx and the .openvino export of one checkpoint (two processes each, as predict runs on a
   CPU): images per second, and the share of answers that agree.
2. `wastecls serve` (a child process on loopback, the .onnx model):
   - p50 and p95 latency of one photo per request at concurrency 1, against one photo's time
     in this process (onnxruntime, all threads): the model alone on a preprocessed image, and
     the photo's whole way (decode, resize, model);
   - throughput at concurrency 8 against `predict`'s end-to-end rate on the same photos;
   - 1,000 requests of which 10% hostile (not an image, truncated, empty, a decompression bomb,
     too large, a wrong field): every good answer equal to predict's, every hostile one a 4xx;
   - the server's resident memory at request 100 and at request 1,000.
3. Video: a clip of photos each held 2 s (10 fps), `predict clip.mp4 --fps 4`: frames per
   second end to end.
4. With --labelled SPLIT: TFLite fp32 and int8 files of the checkpoint against its ONNX file,
   accuracy on that held-out split (needs litert-torch).

Usage: python bench/bench_deploy.py --model waste-lite0 --data ../shared/data/trashnet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import psutil
from common import wait_until_up
from PIL import Image

from waste_cli.core.network import free_port
from waste_cli.data.scan import list_images
from waste_cli.data.sources import load_rgb
from waste_cli.data.transforms import eval_transform
from waste_cli.model.backends import OnnxRunner

OUT = Path(__file__).resolve().parent / "out" / "deploy"
WASTECLS = [sys.executable, "-m", "waste_cli"]  # this Python's (the one with litert-torch)


def _predict(model: Path, photos: Path, output: Path) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    subprocess.run([*WASTECLS, "predict", str(photos), "--model", str(model), "--format",
                    "json", "--output", str(output), "--overwrite", "-q"], check=True)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return len(rows) / seconds, rows


def _bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def _hostile(photo: bytes, k: int) -> tuple[list, int]:
    kinds = [([("file", ("x.jpg", b"not an image"))], 422),
             ([("file", ("t.jpg", photo[: len(photo) // 2]))], 422),
             ([("file", ("e.jpg", b""))], 422),
             ([("file", ("b.png", _bomb()))], 422),
             ([("file", ("big.jpg", photo + b"\0" * 2_100_000))], 413),
             ([("other", ("p.jpg", photo))], 422)]
    return kinds[k % len(kinds)]


def bench_serve(model: Path, photos: list[Path], expected: dict[str, str]) -> dict:
    port = free_port("127.0.0.1")
    server = subprocess.Popen([*WASTECLS, "serve", str(model), "--port", str(port),
                               "--max-bytes", "2000000", "-q"], stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base}/health")
    client = httpx.Client(base_url=base, timeout=60)
    data = {p: p.read_bytes() for p in photos}
    process = psutil.Process(server.pid)

    def one(path: Path) -> tuple[float, str]:
        start = time.perf_counter()
        answer = client.post("/predict", files=[("file", (path.name, data[path]))])
        answer.raise_for_status()
        return time.perf_counter() - start, answer.json()[0]["label"]

    for path in photos[:10]:
        one(path)  # warm-up
    latencies = [one(path)[0] for path in photos[:200]]
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, photos))
    throughput = len(photos) / (time.perf_counter() - start)
    # 1,000 requests, every tenth hostile
    right = wrong = hostile_ok = hostile_bad = 0
    memory = {}
    for k in range(1000):
        if k % 10 == 9:
            files, status = _hostile(data[photos[0]], k // 10)
            answer = client.post("/predict", files=files)
            hostile_ok += answer.status_code == status
            hostile_bad += answer.status_code != status
        else:
            path = photos[k % len(photos)]
            answer = client.post("/predict", files=[("file", (path.name, data[path]))])
            good = answer.status_code == 200 and answer.json()[0]["label"] == expected[path.name]
            right += good
            wrong += not good
        if k + 1 in (100, 1000):
            memory[k + 1] = process.memory_info().rss / 2**20
    server.send_signal(signal.SIGINT)
    code = server.wait(timeout=30)
    return {"p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * float(np.percentile(latencies, 95)),
            "throughput_c8": throughput,
            "c8_answers_equal_predict": sum(label == expected[p.name] for p, (_, label)
                                            in zip(photos, answers, strict=True)) / len(photos),
            "mixed_good_right": right, "mixed_good_wrong": wrong,
            "mixed_hostile_4xx": hostile_ok, "mixed_hostile_other": hostile_bad,
            "rss_mb_at_100": memory[100], "rss_mb_at_1000": memory[1000],
            "exit_code_after_ctrl_c": code}


def model_single_ms(model: Path, photos: list[Path]) -> dict[str, float]:
    """Median milliseconds for one photo in this process (onnxruntime, all threads): the model
    alone on a preprocessed image, and the photo's whole way (read, decode, resize, model)."""
    from waste_cli.data.batching import eval_short_side
    from waste_cli.data.sources import decode_image

    runner = OnnxRunner(model)
    transform = eval_transform(runner.data_config)
    short = eval_short_side(runner.data_config)
    images = [transform(load_rgb(p))[None] for p in photos[:50]]
    runner(images[0])
    alone, whole = [], []
    for path, image in zip(photos[:50], images, strict=True):
        start = time.perf_counter()
        runner(image)
        alone.append(time.perf_counter() - start)
        start = time.perf_counter()
        runner(transform(decode_image(path.read_bytes(), short)[0])[None])
        whole.append(time.perf_counter() - start)
    return {"model_ms": 1000 * statistics.median(alone),
            "photo_ms": 1000 * statistics.median(whole)}


def bench_video(model: Path, photos: list[Path]) -> dict:
    import cv2

    clip = OUT / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (512, 384))
    for photo in photos[:20]:
        frame = cv2.cvtColor(np.asarray(Image.open(photo).convert("RGB").resize((512, 384))),
                             cv2.COLOR_RGB2BGR)
        for _ in range(20):
            writer.write(frame)
    writer.release()
    out = OUT / "frames.csv"
    start = time.perf_counter()
    subprocess.run([*WASTECLS, "predict", str(clip), "--model", str(model), "--fps", "4",
                    "--output", str(out), "--overwrite", "-q"], check=True)
    seconds = time.perf_counter() - start
    frames = len(out.read_text().splitlines()) - 1
    return {"video_seconds": 40.0, "frames": frames, "seconds": seconds,
            "frames_per_second": frames / seconds}


def _accuracy(model: Path, labelled: Path) -> float:
    report = subprocess.run([*WASTECLS, "evaluate", str(model), "--data", str(labelled),
                             "--json", "--allow-subset", "-q"], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(report)["accuracy"]


def bench_tflite(source: str, labelled: Path, onnx_model: Path) -> dict:
    """fp32 and int8 TFLite files of one checkpoint against its ONNX file on a held-out,
    labelled split (needs litert-torch)."""
    results: dict = {"onnx_accuracy": _accuracy(onnx_model, labelled)}
    for name, extra in (("fp32", []), ("int8", ["--int8"])):
        target = OUT / f"model-{name}.tflite"
        subprocess.run([*WASTECLS, "export", "--model", source, "--tflite", *extra, "--out",
                        str(target), "--overwrite", "--verify-data", str(labelled),
                        "--max-drop", "100", "-q"], check=True)
        results[name] = {"accuracy": _accuracy(target, labelled),
                         "megabytes": target.stat().st_size / 1e6}
    results["int8_drop_points"] = 100 * (results["fp32"]["accuracy"]
                                         - results["int8"]["accuracy"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="waste-lite0", help="a .pt checkpoint to export")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/trashnet"))
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--labelled", type=Path, default=None,
                        help="a held-out labelled split for the TFLite accuracy (needs "
                        "litert-torch: run with the Python that has it)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        every = list_images(args.data)
        photos = every[:: max(1, len(every) // args.photos)][: args.photos]
        for k, path in enumerate(photos):
            os.symlink(path.resolve(), folder / f"{k:04d}-{path.name}")
        subprocess.run([*WASTECLS, "export", "--model", args.model, "--onnx", "--openvino",
                        "--out", str(OUT), "--overwrite", "-q"], check=True)
        stem = Path(args.model).stem if args.model.endswith(".pt") else args.model
        onnx_model, openvino_model = OUT / f"{stem}.onnx", OUT / f"{stem}.openvino"
        linked = sorted(folder.iterdir())
        results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                         "date": str(date.today()), "photos": len(linked)}
        ort_rate, ort_rows = _predict(onnx_model, folder, OUT / "ort.json")
        ov_rate, ov_rows = _predict(openvino_model, folder, OUT / "ov.json")
        ort_rate_again, _ = _predict(onnx_model, folder, OUT / "ort.json")
        agree = sum(a["label"] == b["label"] for a, b in zip(ort_rows, ov_rows, strict=True))
        results["openvino"] = {"onnxruntime_img_s": [ort_rate, ort_rate_again],
                               "openvino_img_s": ov_rate,
                               "speedup": ov_rate / statistics.mean([ort_rate, ort_rate_again]),
                               "agreement": agree / len(ort_rows)}
        print(results["openvino"])
        expected = {Path(r["path"]).name: r["label"] for r in ort_rows}
        results["single_image"] = model_single_ms(onnx_model, linked)
        results["serve"] = bench_serve(onnx_model, linked, expected)
        results["serve"]["predict_img_s"] = ort_rate
        for what in ("model_ms", "photo_ms"):
            results["serve"][f"p50_over_{what}"] = (results["serve"]["p50_ms"]
                                                    / results["single_image"][what])
        results["serve"]["c8_over_predict"] = results["serve"]["throughput_c8"] / ort_rate
        results["serve"]["rss_growth"] = (results["serve"]["rss_mb_at_1000"]
                                          / results["serve"]["rss_mb_at_100"] - 1)
        print(results["serve"])
        results["video"] = bench_video(onnx_model, linked)
        print(results["video"])
        if args.labelled is not None:
            results["tflite"] = bench_tflite(args.model, args.labelled, onnx_model)
            print(results["tflite"])
    (OUT / "deploy.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
