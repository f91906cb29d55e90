"""DDP through torchrun on the CPU (gloo, 2 processes): metrics, sampling, resume, failures."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli

from waste_cli.data.loading import ShardSampler, weighted_sampler

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc to find ranks")


def _args(data: Path, project: Path, name: str, epochs: int = 2) -> list[str]:
    return ["train", "--data", str(data), "--project", str(project), "--name", name,
            "--arch", TINY["arch"], "--no-pretrained", "--img-size", "32", "--batch-size", "4",
            "--workers", "0", "--epochs", str(epochs), "-q"]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.distributed
def test_two_rank_run_reports_the_whole_validation_set(prepared, tmp_path):
    """Also: 54 training images over 2 processes at the default batch of 32 (27 a rank, less
    than a batch) train a step each, not an empty epoch ended by an assertion."""
    args = _args(prepared, tmp_path, "ddp")
    args[args.index("--batch-size") + 1] = "32"
    done = subprocess.run(["wastecls", *args, "--nproc", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    run = tmp_path / "ddp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # one run folder, rank 0's
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    best = next(r for r in _rows(run) if int(r["epoch"]) == summary["best_epoch"])
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # unwrapped model
    report = json.loads(run_cli("evaluate", run / "best.pt", "--data", prepared, "--split",
                                "val", "--json", "--backend", "torch").stdout)
    assert report["images"] == 6
    assert float(best["val_acc"]) == pytest.approx(report["accuracy"])


def test_weighted_sampler_shards_keep_the_class_balance():
    labels = [0] * 90 + [1] * 10
    shards = []
    for rank in range(2):
        generator = torch.Generator().manual_seed(7)  # every rank seeds the same way
        shards.append(list(ShardSampler(weighted_sampler(labels, 2, generator), rank, 2)))
    assert len(shards[0]) == len(shards[1]) == 50
    union = Counter(labels[i] for shard in shards for i in shard)
    assert abs(union[1] / 100 - 0.5) < 0.15
    for shard in shards:  # each rank is balanced on its own, too
        assert abs(Counter(labels[i] for i in shard)[1] / 50 - 0.5) < 0.2


@pytest.mark.distributed
def test_resume_across_process_counts(prepared, tmp_path):
    done = subprocess.run(["wastecls", *_args(prepared, tmp_path, "a"), "--nproc", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = run_cli("train", "--resume", tmp_path / "a", "--epochs", "3", "-q")
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in _rows(tmp_path / "a")] == ["1", "2", "3"]
    single = run_cli(*_args(prepared, tmp_path, "b"))
    assert single.exit_code == 0, single.output
    done = subprocess.run(["wastecls", "train", "--resume", str(tmp_path / "b"), "--epochs", "3",
                           "--nproc", "2", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [r["epoch"] for r in _rows(tmp_path / "b")] == ["1", "2", "3"]


def _rank_pid(marker: str, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="ignore")
            environ = (proc / "environ").read_bytes().decode(errors="ignore").split("\0")
        except (OSError, ValueError):
            continue
        if marker in cmdline and f"RANK={rank}" in environ and "waste_cli" in cmdline:
            return int(proc.name)
    return None


def _kill_rank_after_first_epoch(run: Path, marker: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.csv").is_file():
            pid = _rank_pid(marker, 1)
            if pid:
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.05)
    pytest.fail("rank 1 was not found running")


@pytest.mark.distributed
def test_a_dead_rank_stops_the_job_with_a_message(prepared, tmp_path):
    proc = subprocess.Popen(["wastecls", *_args(prepared, tmp_path, "dies", epochs=40),
                             "--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    _kill_rank_after_first_epoch(tmp_path / "dies", str(tmp_path), proc)
    output = proc.communicate(timeout=120)[0]  # no hang
    assert proc.returncode != 0
    assert "a training process failed" in output


def test_newest_run_is_the_last_written(tmp_path):
    from waste_cli.train.distributed import newest_run

    assert newest_run(tmp_path, "exp") is None
    for name, age in (("exp2", 100), ("exp", 50), ("other", 0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "last.pt").write_bytes(b"x")
        os.utime(tmp_path / name / "last.pt", (1e9 - age, 1e9 - age))
    assert newest_run(tmp_path, "exp") == tmp_path / "exp"


@pytest.mark.distributed
def test_elastic_restart_resumes_from_last_checkpoint(prepared, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "--max-restarts=1", "-m", "waste_cli",
               *_args(prepared, tmp_path, "elastic", epochs=6)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _kill_rank_after_first_epoch(tmp_path / "elastic", str(tmp_path), proc)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output
    assert [p.name for p in tmp_path.iterdir()] == ["elastic"]  # resumed, no new run folder
    assert [r["epoch"] for r in _rows(tmp_path / "elastic")] == [str(e) for e in range(1, 7)]

