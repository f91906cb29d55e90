"""review: the decisions store, every kind of source, the order, export and `prepare
--relabel` round trips, and the server over real HTTP (bad requests, roots, token, kill -9)."""

from __future__ import annotations

import csv
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, run_cli
from reviewing import ReviewProcess, csv_rows

from waste_cli.core.console import Reporter
from waste_cli.review.queue import Item, load_queue, order_items
from waste_cli.review.store import DecisionStore

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _no_model(items: list[Item]) -> list[str]:
    raise AssertionError("this source carries its guesses: no model should run")


def test_store_keeps_decisions_across_reopening(tmp_path):
    store = DecisionStore(tmp_path / "r.sqlite")
    store.decide("a", "label", "glass", "paper")
    store.decide("b", "drop")
    store.decide("a", "label", "metal", "paper")  # a second thought replaces the first
    assert store.undo("b") and not store.undo("b")
    store.close()
    again = DecisionStore(tmp_path / "r.sqlite")
    assert {k: (d["action"], d["label"], d["given"]) for k, d in again.decided().items()} == {
        "a": ("label", "metal", "paper")}
    with pytest.raises(ValueError):
        again.decide("c", "burn")


def test_store_refuses_a_file_that_is_not_sqlite(tmp_path):
    from waste_cli.core.errors import DataError

    bad = tmp_path / "r.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataError, match="Cannot use"):
        DecisionStore(bad)


def _predict_csv(tmp_path: Path) -> Path:
    photos = sorted(SAMPLE.rglob("*.jpg"))[:3]
    table = tmp_path / "preds.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "confidence", "flag", "unfamiliarity", "label1",
                         "prob1", "label2", "prob2", "error"])
        writer.writerow([photos[0], "glass", "0.9", "", "", "glass", "0.9", "paper", "0.05", ""])
        writer.writerow([photos[1], "paper", "0.5", "low-confidence", "", "paper", "0.5",
                         "glass", "0.4", ""])
        writer.writerow([photos[2], "metal", "0.6", "", "", "metal", "0.6", "trash", "0.3", ""])
        writer.writerow(["/etc/passwd", "glass", "0.9", "", "", "glass", "0.9", "", "", ""])
        writer.writerow(["gone.jpg", "", "", "", "", "", "", "", "", "unreadable image"])
    return table


def test_predict_csv_queue_flagged_first_and_files_outside_its_root_left_out(tmp_path):
    table = _predict_csv(tmp_path)
    queue = load_queue(table, SAMPLE, [], [], _no_model, Reporter(quiet=True))
    assert queue.kind == "predict" and len(queue.items) == 3  # /etc/passwd and the error out
    ordered = order_items(queue.items, "margin")
    assert ordered[0].flagged and [round(i.margin, 2) for i in ordered[1:]] == [0.3, 0.85]
    assert all(i.label == "" for i in queue.items)  # predictions are guesses, not labels


def test_json_lines_pseudolabel_and_folder_sources(tmp_path):
    photos = sorted(SAMPLE.rglob("*.jpg"))[:2]
    lines = tmp_path / "preds.json"
    lines.write_text("".join(json.dumps({"path": str(p), "label": "glass", "confidence": 0.7,
                                         "flag": "", "labels": ["glass", "paper"],
                                         "probs": [0.7, 0.2]}) + "\n" for p in photos))
    queue = load_queue(lines, SAMPLE, [], [], _no_model, Reporter(quiet=True))
    assert queue.kind == "predict" and queue.items[0].guesses == [("glass", 0.7), ("paper", 0.2)]
    manifest = tmp_path / "pseudo.csv"
    manifest.write_text("path,label,confidence,margin,flag,accepted\n"
                        + "".join(f"{p},paper,0.8,0.5,,1\n" for p in photos))
    queue = load_queue(manifest, SAMPLE, [], [], _no_model, Reporter(quiet=True))
    assert queue.kind == "pseudolabel" and queue.items[0].label == "paper"
    guessed: list[int] = []

    def model(items: list[Item]) -> list[str]:
        guessed.append(len(items))
        for item in items:
            item.guesses = [("metal", 0.6), ("glass", 0.3)]
        return ["glass", "metal"]

    queue = load_queue(SAMPLE, None, [], [], model, Reporter(quiet=True))
    assert queue.kind == "folder" and guessed == [72] and queue.items[0].label in queue.classes
    assert queue.classes[:6] == sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())


def test_diverse_order_holds_back_near_identical_items():
    items = [Item(str(k), Path(f"{k}.jpg"), guesses=[("a", 0.5 + k / 100), ("b", 0.4)])
             for k in range(4)]
    same, other = np.eye(3)[0], np.eye(3)[1]
    vectors = np.stack([same, same, same, other])  # 0, 1, 2 look alike
    assert [i.key for i in order_items(items, "margin")] == ["0", "1", "2", "3"]
    assert [i.key for i in order_items(items, "diverse", vectors)] == ["0", "3", "1", "2"]
    assert [i.key for i in order_items(items, "given")] == ["0", "1", "2", "3"]


def test_export_then_relabel_and_extra_labels_round_trip(tmp_path, audited):
    root, _, audit = audited
    db = tmp_path / "decisions.sqlite"
    queue = load_queue(audit, None, [], [], _no_model, Reporter(quiet=True))
    store = DecisionStore(db)
    # photos prepare will place (not the planted unreadable, tiny or blank ones)
    placeable = [i for i in queue.items if not any(
        word in i.note for word in ("unreadable", "tiny", "blank"))]
    first, second, third = placeable[:3]
    store.decide(first.key, "label", "metal" if first.label != "metal" else "glass", first.label)
    store.decide(second.key, "drop", "", second.label)
    store.decide(third.key, "skip", "", third.label)
    store.close()
    manifest = tmp_path / "fixes.csv"
    result = run_cli("review", audit, "--db", db, "--export", manifest)
    assert result.exit_code == 0, result.output
    assert "1 photo relabelled, 0 confirmed, 1 dropped" in " ".join(result.output.split())
    rows = sorted(csv_rows(manifest), key=lambda r: r["decision"],
                  reverse=True)
    assert [r["decision"] for r in rows] == ["relabel", "drop"]
    assert [Path(r["path"]).name for r in rows] == [first.path.name, second.path.name]
    assert rows[1]["accepted"] == "0"
    # prepare applies it: the relabelled photo moves, the dropped one leaves
    out = tmp_path / "data"
    result = run_cli("prepare", root / "train", "--out", out, "--relabel", manifest, "--size",
                     "40", "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prepare_report.json").read_text())["relabel"]
    assert [Path(r["file"]).name for r in report["relabelled"]] == [first.path.name]
    assert [Path(p).name for p in report["dropped"]] == [second.path.name]
    assert report["unmatched"] == 0
    manifest_rows = csv_rows(out / "manifest.csv")
    moved = [r for r in manifest_rows if Path(r["original"]).name == first.path.name]
    assert moved[0]["label"] == rows[0]["label"]
    assert not any(Path(r["original"]).name == second.path.name for r in manifest_rows)
    # train --extra-labels reads the same file: drops are not training rows
    from waste_cli.train.self_training import read_manifests

    read = read_manifests([manifest], sorted({r["label"] for r in rows} | {"glass"}),
                          Reporter(quiet=True))
    assert [p.name for p, _ in read] == [first.path.name]
    # an export is never written over a file review did not write
    mine = tmp_path / "mine.csv"
    mine.write_text("keep")
    result = run_cli("review", audit, "--db", db, "--export", mine)
    assert result.exit_code == 2 and mine.read_text() == "keep"


def test_coco_source_shows_boxes_and_exports_corrected_categories(tmp_path, coco_dataset):
    annotations, images = coco_dataset
    db = tmp_path / "coco.sqlite"

    def model(items: list[Item]) -> list[str]:
        for item in items:
            item.guesses = [("glass", 0.8)]
        return ["glass", "paper"]

    queue = load_queue(annotations, images, ["Glass bottle"], [], model, Reporter(quiet=True))
    assert queue.kind == "coco" and all(i.box is not None for i in queue.items)
    assert {i.label for i in queue.items} == {"Glass bottle"}
    store = DecisionStore(db)
    store.decide(queue.items[0].key, "label", "glass", "Glass bottle")
    store.decide(queue.items[1].key, "drop", "", "Glass bottle")
    store.close()
    from waste_cli.review.command import export_decisions

    target = tmp_path / "fixed.json"
    counts = export_decisions(queue, DecisionStore(db), target, overwrite=False)
    assert counts == {"relabel": 1, "confirm": 0, "drop": 1}
    fixed = json.loads(target.read_text())
    before = json.loads(annotations.read_text())
    assert len(fixed["annotations"]) == len(before["annotations"]) - 1
    new = next(c for c in fixed["categories"] if c["name"] == "glass")
    changed = next(a for a in fixed["annotations"] if a["id"] == queue.items[0].annotation)
    assert changed["category_id"] == new["id"]


@pytest.mark.subprocess
def test_server_survives_bad_requests_and_kill_9(tmp_path, audited):
    _, _, audit = audited
    db = tmp_path / "r.sqlite"
    server = ReviewProcess(audit, "--db", db)
    try:
        client = server.client
        state = client.get("/api/state").json()
        item = client.get("/api/next").json()
        assert item["label"] and len(item["guesses"]) == 3 and state["decided"] == 0
        photo = client.get(f"/image/{item['index']}")
        assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
        assert "script-src 'self'" in client.get("/").headers["content-security-policy"]
        bad = [client.post("/api/decide", content=b"{not json"),
               client.post("/api/decide", json={"key": item["key"], "action": "burn"}),
               client.post("/api/decide", json={"key": item["key"], "action": "label",
                                                "label": "no such class"}),
               client.post("/api/decide", json={"key": "/etc/passwd", "action": "drop"}),
               client.post("/api/undo", json={"key": item["key"]}),
               client.get("/image/99999"), client.get("/image/-1"),
               client.get("/image/..%2F..%2Fetc%2Fpasswd"), client.get("/static/../../x"),
               client.get("/api/item/abc")]
        assert [r.status_code for r in bad] == [422, 422, 422, 404, 409, 404, 404, 404, 404, 422]
        label = state["classes"][0]
        ok = client.post("/api/decide", json={"key": item["key"], "action": "label",
                                              "label": label})
        assert ok.status_code == 200 and ok.json()["decided"] == 1
        after = client.get("/api/next").json()
        assert after["key"] != item["key"]
        code, _ = server.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    again = ReviewProcess(audit, "--db", db)
    try:
        resumed = again.client.get("/api/next").json()
        assert resumed["key"] == after["key"] and resumed["decided"] == 1
        kept = again.client.get(f"/api/item/{item['index']}").json()["decision"]
        assert kept["action"] == "label" and kept["label"] == label
        code, err = again.stop(signal.SIGINT)
        assert code == 130 and "Traceback" not in err
    finally:
        if again.proc.poll() is None:
            again.proc.kill()


@pytest.mark.subprocess
def test_other_hosts_need_the_token(tmp_path, audited):
    _, _, audit = audited
    token = "a-long-enough-test-token"
    server = ReviewProcess(audit, "--db", tmp_path / "r.sqlite", host="0.0.0.0", token=token)
    try:
        import httpx

        bare = httpx.get(f"{server.base}/api/state")
        assert bare.status_code == 401 and "token" in bare.json()["error"]
        assert httpx.get(f"{server.base}/api/state?token=wrong").status_code == 401
        page = httpx.get(f"{server.base}/?token={token}")
        assert page.status_code == 200 and page.cookies.get("wastecls_review") == token
        assert server.client.get("/api/state").status_code == 200  # the header
    finally:
        server.stop()
    result = run_cli("review", audit, "--db", tmp_path / "r.sqlite", "--host", "0.0.0.0",
                     "--token", "short")
    assert result.exit_code == 2 and "16 characters" in result.output


@pytest.mark.subprocess
def test_folder_of_photos_gets_the_models_guesses_and_a_link_out_is_not_served(tmp_path):
    from reviewing import photo_folder

    folder = photo_folder(tmp_path / "photos", SAMPLE, count=3)
    server = ReviewProcess(folder)
    try:
        item = server.client.get("/api/next").json()
        assert item["label"] == "" and len(item["guesses"]) == 3  # the built-in model's top 3
        assert server.client.get(f"/image/{item['index']}").status_code == 200
        secret = tmp_path / "secret.jpg"
        shutil.copy(folder / item["name"], secret)
        (folder / item["name"]).unlink()
        (folder / item["name"]).symlink_to(secret)  # now it leads out of the folder
        assert server.client.get(f"/image/{item['index']}").status_code == 404
        assert server.client.get("/api/state").status_code == 200  # still serving
    finally:
        server.stop()
    assert (folder / "review.sqlite").is_file()
