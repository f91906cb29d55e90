"""audit's index.html: thumbnails grouped by issue, the given label beside the suggested one.

One self-contained file (thumbnails inlined as JPEG data), so it opens offline and can be
mailed. Every text from the data (file, class and folder names) is escaped: it is shown as
the characters it is, never read as HTML.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from string import Template
from typing import Any

from waste_cli.core.assets import asset_path
from waste_cli.core.console import Reporter
from waste_cli.core.files import atomic_write_text
from waste_cli.data.sources import DECODE_ERRORS, decode_image

__all__ = ["PAGE_ROWS", "thumbnail_data", "write_audit_page"]

PAGE_ROWS = 60  # cards per issue on the page; issues.csv has them all
THUMBNAIL = 136


def thumbnail_data(path: Path, side: int = THUMBNAIL) -> str:
    """A data: URL of a small JPEG of the photo, or "" when it cannot be read."""
    try:
        image, _ = decode_image(path.read_bytes(), side)
    except (OSError, *DECODE_ERRORS):
        return ""
    image.thumbnail((side, side))
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(encoded.getvalue()).decode("ascii")


def _card(row: dict[str, Any]) -> str:
    e = html.escape
    source = thumbnail_data(Path(row["path"]))
    picture = f'<img alt="" src="{source}">' if source else "<div>(unreadable)</div>"
    suggested = (f'<div>suggested: <span class="suggested">{e(row["suggested"])}</span></div>'
                 if row["suggested"] else "")
    split = f" ({e(row['split'])})" if row["split"] else ""
    return (f'<div class="card">{picture}<div>given: <span class="given">{e(row["label"])}'
            f'</span>{split}</div>{suggested}<div>{e(row["detail"])}</div>'
            f'<div class="path">{e(Path(row["path"]).name)}</div></div>')


def write_audit_page(path: Path, report: dict[str, Any], reporter: Reporter) -> None:
    e = html.escape
    rows = report["rows"]
    sections, summary = [], []
    shown = [(kind, [r for r in rows if r["issue"] == kind][:PAGE_ROWS])
             for kind, count in report["issues"].items() if count]
    with reporter.bar("audit page", sum(len(r) for _, r in shown)) as bar:
        for kind, kept in shown:
            count = report["issues"][kind]
            more = (f'<p class="note">The first {PAGE_ROWS} of {count}; issues.csv lists them '
                    "all.</p>" if count > PAGE_ROWS else "")
            cards = []
            for row in kept:
                cards.append(_card(row))
                bar.advance()
            sections.append(f'<h2 id="{kind}">{kind} ({count})</h2><p class="note">'
                            f'{e(report["what_to_do"][kind])}</p>{more}'
                            f'<div class="cards">{"".join(cards)}</div>')
    for kind, count in report["issues"].items():
        summary.append(f'<tr><td><a href="#{kind}">{kind}</a></td><td>{count}</td>'
                       f'<td>{e(report["what_to_do"][kind])}</td></tr>')
    balance = "".join(f"<tr><td>{e(name)}</td><td>{count}</td></tr>"
                      for name, count in report["balance"]["per_class"].items())
    check = report["label_check"]
    page = Template(asset_path("review/audit.html").read_text(encoding="utf-8")).substitute(
        title=e(Path(report["root"]).name), photos=report["photos"],
        classes=len(report["classes"]), features=e(report["features"]["model"]),
        label_check=e(f"{check['folds']}-fold, the out-of-fold answer agrees with "
                      f"{check['out_of_fold_agreement']:.1%} of the labels"),
        out_name=e(path.parent.name), summary="".join(summary), balance=balance,
        sections="".join(sections))
    atomic_write_text(path, page)
