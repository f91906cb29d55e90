"""docs/review.png: the review page on an audit of the bundled sample, in headless Chromium.

Usage: python bench/review_screenshot.py   (needs Debian's chromium and playwright)
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from common import review_in_chromium
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp) / "audit"
        subprocess.run(["wastecls", "audit", str(ROOT / "samples" / "trashnet-mini"), "--out",
                        str(audit), "-q"], check=True)
        with review_in_chromium(audit, 8767, viewport={"width": 1000, "height": 560}) as (
                page, _):
            expect(page.locator("#guesses li")).to_have_count(3)
            page.keyboard.press("Enter")
            expect(page.locator("#count")).to_contain_text("1 of")
            page.wait_for_timeout(800)
            page.screenshot(path=str(ROOT / "docs" / "review.png"))
    print(ROOT / "docs" / "review.png")


if __name__ == "__main__":
    main()
