"""The review page in a real browser (headless Chromium driven by Playwright): every key, undo,
a kill -9 of the server and a restart, export, a hostile class name shown as text, and a path
that leaves its root. Skipped, with the reason, where no Chromium is installed."""

from __future__ import annotations

import re
import shutil
import signal

import pytest
from conftest import HOSTILE_CLASS, run_cli
from reviewing import ReviewProcess, csv_rows

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.subprocess,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine "
                                 "(apt-get install chromium)"),
              pytest.mark.filterwarnings("ignore::ResourceWarning")]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def _count(page, decided: int) -> None:
    playwright.expect(page.locator("#count")).to_have_text(re.compile(rf"^{decided} of "))


def test_keys_undo_restart_and_export(tmp_path, audited, browser):
    _, _, audit = audited
    db = tmp_path / "r.sqlite"
    server = ReviewProcess(audit, "--db", db)
    dialogs: list[str] = []
    page = browser.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        classes = server.client.get("/api/state").json()["classes"]
        page.goto(server.base + "/")
        playwright.expect(page.locator("#classes li")).to_have_count(len(classes))
        shown = []

        def press(key: str, decided: int) -> None:
            item = server.client.get("/api/next").json()
            playwright.expect(page.locator("#name")).to_have_text(item["name"])
            shown.append(item)
            page.keyboard.press(key)
            _count(page, decided)

        press("1", 1)
        press("Enter", 2)
        press("s", 3)
        press("d", 4)
        page.keyboard.press("u")
        _count(page, 3)
        playwright.expect(page.locator("#name")).to_have_text(shown[3]["name"])
        decided = {k: (d["action"], d["label"]) for k, d in
                   ((i["key"], server.client.get(f"/api/item/{i['index']}").json()["decision"])
                    for i in shown) if d}
        assert decided == {shown[0]["key"]: ("label", classes[0]),
                           shown[1]["key"]: ("label", shown[1]["guesses"][0][0]),
                           shown[2]["key"]: ("skip", "")}
        # the hostile class name is text on the page, never markup
        names = page.locator("#classes li").all_text_contents()
        assert any(HOSTILE_CLASS in name for name in names)
        assert page.locator("img[src='x']").count() == 0 and not dialogs
        # a path that leaves the root is not served
        assert page.goto(server.base + "/image/..%2F..%2F..%2Fetc%2Fpasswd").status == 404
        server.stop(signal.SIGKILL)
        again = ReviewProcess(audit, "--db", db)
        try:
            page.goto(again.base + "/")
            _count(page, 3)  # resumed where it stopped: the undone item is next
            playwright.expect(page.locator("#name")).to_have_text(shown[3]["name"])
        finally:
            again.stop()
    finally:
        page.close()
        if server.proc.poll() is None:
            server.proc.kill()
    manifest = tmp_path / "fixes.csv"
    result = run_cli("review", audit, "--db", db, "--export", manifest)
    assert result.exit_code == 0, result.output
    rows = csv_rows(manifest)
    assert sorted(r["path"] for r in rows) == sorted(i["key"] for i in shown[:2])
