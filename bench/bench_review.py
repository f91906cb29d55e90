"""How fast the review page answers a key, in headless Chromium: from the key press until the
page shows the next item (its count changed), for 60 decisions on an audit of the bundled
sample. The time includes Playwright's own round trips, so it is an upper bound.

Usage: python bench/bench_review.py   (needs Debian's chromium and playwright)
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["1", "2", "Enter", "s", "d", "3"] * 10


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp) / "audit"
        subprocess.run(["wastecls", "audit", str(ROOT / "samples" / "trashnet-mini"), "--out",
                        str(audit), "-q"], check=True)
        server = subprocess.Popen([sys.executable, "-m", "waste_cli", "review", str(audit),
                                   "--port", "8768", "--order", "given"])
        try:
            for _ in range(200):
                try:
                    total = httpx.get("http://127.0.0.1:8768/api/state").json()["total"]
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            with sync_playwright() as driver:
                browser = driver.chromium.launch(
                    executable_path=shutil.which("chromium"),
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                page = browser.new_page()
                page.goto("http://127.0.0.1:8768/")
                expect(page.locator("#count")).to_contain_text("0 of")
                times = []
                for decided, key in enumerate(KEYS[:total], start=1):
                    start = time.perf_counter()
                    page.keyboard.press(key)
                    expect(page.locator("#count")).to_contain_text(f"{decided} of", timeout=5000)
                    times.append(time.perf_counter() - start)
                browser.close()
        finally:
            server.terminate()
            server.wait()
    result = {"keys": len(times), "median_ms": 1000 * statistics.median(times),
              "p95_ms": 1000 * sorted(times)[int(0.95 * (len(times) - 1))],
              "max_ms": 1000 * max(times)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
