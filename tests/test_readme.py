"""The README's quick start is what the commands print: it runs on the bundled sample, and
every line it shows must come out (numbers, durations and hashes may differ)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE

README = Path(__file__).resolve().parents[1] / "README.md"


def _quick_start() -> list[tuple[str, list[str]]]:
    """(command, the lines the README shows for it) of the quick start's console block."""
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip():
            steps[-1][1].append(line)
    return steps


def _normal(line: str) -> str:
    """A line with what varies between runs and machines masked: hashes, then numbers."""
    line = re.sub(r"\b[0-9a-f]{16}\b", "#", line)
    line = re.sub(r"\d+(?:[.,]\d+)*", "#", line)
    return " ".join(line.split())


@pytest.mark.subprocess
def test_the_readme_quick_start_is_what_the_commands_print(tmp_path):
    steps = _quick_start()
    assert [command.split()[:2] for command, _ in steps] == [
        ["wastecls", "predict"], ["wastecls", "prepare"], ["wastecls", "train"],
        ["wastecls", "predict"]]
    shutil.copytree(SAMPLE.parent, tmp_path / "samples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASTECLS_")}
    env |= {"COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    found = shutil.which("wastecls")
    launcher = [found] if found else [sys.executable, "-m", "waste_cli"]
    for command, shown in steps:
        done = subprocess.run([*launcher, *shlex.split(command)[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        printed = {_normal(line) for line in (done.stdout + done.stderr).splitlines()}
        missing = [line for line in shown if _normal(line) not in printed]
        assert not missing, f"`{command}` no longer prints:\n" + "\n".join(missing)
