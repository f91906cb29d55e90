"""docs/review.png: the review page on an audit of the bundled sample, in headless Chromium.

Usage: python bench/review_screenshot.py   (needs Debian's chromium and playwright)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp) / "audit"
        subprocess.run(["wastecls", "audit", str(ROOT / "samples" / "trashnet-mini"), "--out",
                        str(audit), "-q"], check=True)
        server = subprocess.Popen([sys.executable, "-m", "waste_cli", "review", str(audit),
                                   "--port", "8767"])
        try:
            for _ in range(100):
                try:
                    httpx.get("http://127.0.0.1:8767/api/state")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            with sync_playwright() as driver:
                browser = driver.chromium.launch(
                    executable_path=shutil.which("chromium"),
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                page = browser.new_page(viewport={"width": 1000, "height": 560})
                page.goto("http://127.0.0.1:8767/")
                expect(page.locator("#guesses li")).to_have_count(3)
                page.keyboard.press("Enter")
                expect(page.locator("#count")).to_contain_text("1 of")
                page.wait_for_timeout(800)
                page.screenshot(path=str(ROOT / "docs" / "review.png"))
                browser.close()
        finally:
            server.terminate()
            server.wait()
    print(ROOT / "docs" / "review.png")


if __name__ == "__main__":
    main()
