"""review's web page and its small JSON API (FastAPI, served by uvicorn).

- Decisions go to SQLite and are on disk before the answer leaves (store.py); the page waits
  for that answer before it shows the next item.
- Images are addressed by their place in the queue, never by a path from the request, and a
  queued file is served only while it resolves inside the source's roots (else 404). They are
  decoded and re-encoded as JPEG (EXIF orientation applied, HEIC readable, a COCO box drawn).
- Text from the data (class, file and category names) reaches the page as JSON and is shown
  with textContent: as characters, never as HTML. The page allows only its own script.
- With a token (any host but loopback), every request needs it: once in the page's URL, then
  in a cookie.
"""

from __future__ import annotations

import hmac
import io
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from waste_cli.core.assets import asset_path
from waste_cli.data.sources import DECODE_ERRORS, decode_image
from waste_cli.review.queue import Queue
from waste_cli.review.store import ACTIONS, DecisionStore

__all__ = ["TOKEN_COOKIE", "create_app"]

TOKEN_COOKIE = "wastecls_review"
SHOWN_SIDE = 1024  # the longer side of a photo as the page gets it
STATIC = {"review.js": "text/javascript", "review.css": "text/css"}
HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; "
           "style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; "
           "form-action 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}


class Decide(BaseModel):
    """POST /api/decide: the item, and what was decided."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(max_length=4096)
    action: str = Field(max_length=16)
    label: str = Field("", max_length=1024)


class Undo(BaseModel):
    """POST /api/undo: the item whose decision is withdrawn."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(max_length=4096)


def _shown_photo(path: Path, box: tuple[float, float, float, float] | None) -> bytes:
    from PIL import ImageDraw

    image, full = decode_image(path.read_bytes(), SHOWN_SIDE)
    scale = image.width / full[0]
    if max(image.size) > SHOWN_SIDE:
        shrink = SHOWN_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * shrink)),
                              max(1, round(image.height * shrink))))
        scale *= shrink
    if box is not None:
        x, y, w, h = (v * scale for v in box)
        width = max(2, round(max(image.size) / 200))
        ImageDraw.Draw(image).rectangle([x, y, x + w, y + h], outline=(255, 32, 32),
                                        width=width)
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=88)
    return encoded.getvalue()


def create_app(queue: Queue, store: DecisionStore, token: str | None = None) -> Any:
    """The review app over `queue`, recording into `store`; `token` required when given."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="wastecls review", docs_url=None, redoc_url=None, openapi_url=None)
    index = {item.key: k for k, item in enumerate(queue.items)}
    classes = queue.classes

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        given = (request.headers.get("x-review-token") or request.cookies.get(TOKEN_COOKIE)
                 or request.query_params.get("token") or "")
        if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
            response: Any = JSONResponse({"error": "this review page needs its token: open the "
                                          "address `wastecls review` printed"}, status_code=401)
        else:
            response = await call_next(request)
            if token is not None and request.query_params.get("token") == token:
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def counts() -> dict[str, int]:
        decided = store.decided()
        return {"total": len(queue.items),
                "decided": sum(1 for item in queue.items if item.key in decided)}

    def described(k: int) -> dict[str, Any]:
        item = queue.items[k]
        decision = store.decided().get(item.key)
        return {"index": k, "key": item.key, "name": item.path.name, "label": item.label,
                "guesses": [[c, round(p, 4)] for c, p in item.guesses], "note": item.note,
                "box": item.box is not None, "decision": decision, **counts()}

    @app.get("/")
    def page() -> Response:
        return Response(asset_path("review/review.html").read_bytes(), media_type="text/html")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response(asset_path(f"review/{name}").read_bytes(), media_type=STATIC[name])

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return {"classes": classes, "source": queue.source.name, "kind": queue.kind,
                **counts()}

    @app.get("/api/next")
    def next_item() -> dict[str, Any]:
        decided = store.decided()
        for k, item in enumerate(queue.items):
            if item.key not in decided:
                return described(k)
        return {"done": True, **counts()}

    @app.get("/api/item/{k}")
    def item(k: int) -> dict[str, Any]:
        if not 0 <= k < len(queue.items):
            raise HTTPException(404, "no such item")
        return described(k)

    @app.get("/image/{k}")
    def image(k: int) -> Response:
        if not 0 <= k < len(queue.items) or not queue.inside(queue.items[k].path):
            raise HTTPException(404, "no such image")
        item = queue.items[k]
        try:
            data = _shown_photo(item.path, item.box)
        except (OSError, *DECODE_ERRORS):
            raise HTTPException(404, f"{item.path.name} cannot be read as an image") from None
        return Response(data, media_type="image/jpeg")

    @app.post("/api/decide")
    def decide(body: Decide) -> dict[str, Any]:
        if body.key not in index:
            raise HTTPException(404, "no such item in this review")
        if body.action not in ACTIONS:
            raise HTTPException(422, f"action must be one of {', '.join(ACTIONS)}")
        if body.action == "label" and body.label not in classes:
            raise HTTPException(422, "label must be one of the page's classes")
        item = queue.items[index[body.key]]
        store.decide(item.key, body.action, body.label if body.action == "label" else "",
                     item.label)
        return {"ok": True, **counts()}

    @app.post("/api/undo")
    def undo(body: Undo) -> dict[str, Any]:
        if body.key not in index:
            raise HTTPException(404, "no such item in this review")
        if not store.undo(body.key):
            raise HTTPException(409, "that item has no decision to undo")
        return described(index[body.key])

    @app.exception_handler(HTTPException)
    async def as_json(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return app
