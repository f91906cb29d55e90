"""serve: over real HTTP in a child process: the answers are predict's, requests that arrive
together run as one batch, every hostile upload is a 4xx and the server goes on, the token
rule, Ctrl-C drains what is in flight; the drop-photos page in headless Chromium."""

from __future__ import annotations

import json
import shutil
import signal
import struct
import threading
import zlib
from pathlib import Path

import pytest
from conftest import SAMPLE, run_cli
from reviewing import ServerProcess

pytestmark = [pytest.mark.subprocess, pytest.mark.filterwarnings("ignore::ResourceWarning")]
PHOTOS = sorted(SAMPLE.rglob("*.jpg"))[::12][:6]


def _bomb() -> bytes:
    """A small PNG that declares 50,000 x 50,000 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def server():
    process = ServerProcess("--max-bytes", "200000", "--batch-wait-ms", "150")
    yield process
    process.stop()


def test_answers_are_predicts_and_concurrent_requests_share_a_batch(server, tmp_path):
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in PHOTOS[:2]]
    answer = server.client.post("/predict", files=files)
    assert answer.status_code == 200
    out = tmp_path / "preds.json"
    assert run_cli("predict", *PHOTOS[:2], "--top-k", "3", "--format", "json", "--output",
                   out, "-q").exit_code == 0
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    for got, want in zip(answer.json(), expected, strict=True):
        assert got["path"] == Path(want["path"]).name
        assert (got["label"], got["flag"], got["labels"]) == (want["label"], want["flag"],
                                                              want["labels"])
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-4)
    before = server.client.get("/health").json()["batches"]
    results = []

    def one(path: Path) -> None:
        results.append(server.client.post("/predict", files=[("file", (path.name,
                                                                        path.read_bytes()))]))

    threads = [threading.Thread(target=one, args=(p,)) for p in PHOTOS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in results] == [200] * len(PHOTOS)
    assert server.client.get("/health").json()["batches"] - before < len(PHOTOS)


def test_every_hostile_upload_is_a_4xx_and_the_server_goes_on(server):
    photo = PHOTOS[0].read_bytes()
    hostile = {
        "not an image": ([("file", ("x.jpg", b"hello, not a photo"))], 422),
        "truncated JPEG": ([("file", ("t.jpg", photo[: len(photo) // 2]))], 422),
        "empty file": ([("file", ("e.jpg", b""))], 422),
        "decompression bomb": ([("file", ("bomb.png", _bomb()))], 422),
        "over --max-bytes": ([("file", ("big.jpg", photo + b"\0" * 300000))], 413),
        "wrong field": ([("photo", ("p.jpg", photo))], 422),
    }
    for what, (files, status) in hostile.items():
        answer = server.client.post("/predict", files=files)
        assert answer.status_code == status, (what, answer.text)
        assert answer.json()["error" if status != 422 or what != "wrong field" else "detail"]
    assert server.client.post("/predict").status_code == 422  # an empty body
    assert server.client.post("/predict", content=b"junk", headers={
        "content-type": "multipart/form-data; boundary=x"}).status_code in (400, 422)
    assert server.client.get("/health").json()["status"] == "ok"
    model = server.client.get("/model").json()
    assert len(model["classes"]) == 10 and model["preprocessing"]["input_size"][-1] == 288
    assert "/predict" in server.client.get("/openapi.json").json()["paths"]


def test_other_hosts_need_a_token():
    result = run_cli("serve", "--host", "0.0.0.0")
    assert result.exit_code == 2 and "--token" in result.output
    token = "a-long-enough-test-token"
    process = ServerProcess(host="0.0.0.0", token=token)
    try:
        import httpx

        photo = [("file", (PHOTOS[0].name, PHOTOS[0].read_bytes()))]
        assert httpx.post(f"{process.base}/predict", files=photo).status_code == 401
        assert httpx.get(f"{process.base}/health").status_code == 200
        assert process.client.post("/predict", files=photo).status_code == 200
    finally:
        process.stop()


def test_ctrl_c_drains_requests_in_flight():
    process = ServerProcess("--batch-wait-ms", "1000")
    done = []

    def slow() -> None:
        done.append(process.client.post("/predict", files=[
            ("file", (PHOTOS[0].name, PHOTOS[0].read_bytes()))]))

    thread = threading.Thread(target=slow)
    thread.start()
    import time

    time.sleep(0.5)  # the request now waits for its batch
    process.proc.send_signal(signal.SIGINT)
    thread.join(timeout=30)
    code, err = process.proc.wait(timeout=30), process.proc.stderr.read()
    assert done and done[0].status_code == 200
    assert code == 130 and "Traceback" not in err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on this machine")
def test_drop_photos_page_in_a_browser(server):
    sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=shutil.which("chromium"),
                                         args=["--no-sandbox", "--disable-gpu",
                                               "--disable-background-networking"])
        page = browser.new_page()
        page.goto(server.base + "/")
        page.set_input_files("#files", [str(p) for p in PHOTOS[:2]])
        sync.expect(page.locator("#results tr")).to_have_count(2)
        sync.expect(page.locator("#model")).to_contain_text("waste-lite0")
        browser.close()
