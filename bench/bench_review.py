"""How fast the review page answers a key, in headless Chromium: from the key press until the
page shows the next item (its count changed), for 60 decisions on an audit of the bundled
sample. The time includes Playwright's own round trips, so it is an upper bound.

Usage: python bench/bench_review.py   (needs Debian's chromium and playwright)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import review_in_chromium
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["1", "2", "Enter", "s", "d", "3"] * 10


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp) / "audit"
        subprocess.run(["wastecls", "audit", str(ROOT / "samples" / "trashnet-mini"), "--out",
                        str(audit), "-q"], check=True)
        with review_in_chromium(audit, 8768, "--order", "given") as (page, state):
            expect(page.locator("#count")).to_contain_text("0 of")
            times = []
            for decided, key in enumerate(KEYS[:state["total"]], start=1):
                start = time.perf_counter()
                page.keyboard.press(key)
                expect(page.locator("#count")).to_contain_text(f"{decided} of", timeout=5000)
                times.append(time.perf_counter() - start)
    result = {"keys": len(times), "median_ms": 1000 * statistics.median(times),
              "p95_ms": 1000 * sorted(times)[int(0.95 * (len(times) - 1))],
              "max_ms": 1000 * max(times)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
