"""Helpers of the review and serve tests: a `wastecls review` or `wastecls serve` server in a
child process on a free loopback port, and a real HTTP client to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`wastecls COMMAND ARGS --port P` until stop(); `client` talks to it."""

    command = "serve"
    ready = "/health"
    token_header = "authorization"

    def __init__(self, *args: object, host: str = "127.0.0.1", token: str | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "waste_cli", self.command, *map(str, args),
                   "--port", str(self.port), "--host", host]
        if token is not None:
            command += ["--token", token]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        value = (f"Bearer {token}" if self.token_header == "authorization" else token)
        self.client = httpx.Client(base_url=self.base, timeout=30,
                                   headers={self.token_header: value} if token else {})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.command} exited {self.proc.returncode}: "
                                     f"{self.proc.stderr.read()}")
            try:
                self.client.get(self.ready)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"{self.command} did not start")

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


class ReviewProcess(ServerProcess):
    command = "review"
    ready = "/api/state"
    token_header = "x-review-token"


def photo_folder(root: Path, source: Path, count: int = 4) -> Path:
    """A folder of `count` sample photos (no class folders): unlabelled photos."""
    import shutil

    root.mkdir(parents=True)
    for path in sorted(source.rglob("*.jpg"))[:count]:
        shutil.copy(path, root / path.name)
    return root


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
