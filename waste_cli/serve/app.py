"""`wastecls serve`'s HTTP app (FastAPI): POST /predict, GET /health, GET /model, the OpenAPI
docs, and a page to drop photos on.

Images that arrive together are run together: each decoded upload waits up to
`batch_wait_ms` for others, up to `max_batch`, and the model runs once for all of them on its
own thread, so the event loop keeps accepting requests. Answers are what `predict --format
json` writes. A bad upload (not an image, truncated, a decompression bomb, too large, a wrong
field, an empty body) is a 4xx with a JSON error naming it, and the server goes on.
"""

from __future__ import annotations

import asyncio
import hmac
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from waste_cli.core.assets import asset_path
from waste_cli.data.batching import eval_short_side
from waste_cli.data.sources import DECODE_ERRORS, decode_image
from waste_cli.data.transforms import eval_transform
from waste_cli.infer.answers import answer_fields
from waste_cli.infer.core import Answerer, Classified, ClassifyOptions, FlipAveraged
from waste_cli.model.backends import Runner

__all__ = ["Batcher", "ServeLimits", "create_app"]


@dataclass(frozen=True)
class ServeLimits:
    max_bytes: int
    max_batch: int
    batch_wait_ms: float
    token: str | None


class Batcher:
    """Runs the images of concurrent requests through the model together."""

    def __init__(self, runner: Runner, options: ClassifyOptions, limits: ServeLimits) -> None:
        self.model = FlipAveraged(runner) if options.tta else runner
        self.answer = Answerer(runner, options)
        self.limits = limits
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[Classified]]] | None = None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="wastecls-model")
        self.batches = 0  # how many times the model ran (for /health and the tests)
        self.worker: asyncio.Task[None] | None = None

    async def classify(self, image: np.ndarray) -> Classified:
        loop = asyncio.get_running_loop()
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = loop.create_task(self._run())
        done: asyncio.Future[Classified] = loop.create_future()
        await self.queue.put((image, done))
        return await done

    async def _run(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            deadline = loop.time() + self.limits.batch_wait_ms / 1000
            while len(waiting) < self.limits.max_batch:
                left = deadline - loop.time()
                try:
                    waiting.append(self.queue.get_nowait() if left <= 0 else
                                   await asyncio.wait_for(self.queue.get(), left))
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            images = np.stack([image for image, _ in waiting])
            try:
                outputs = await loop.run_in_executor(self.thread, self.model, images)
                answers = self.answer(outputs)
            except Exception as exc:  # a model that fails fails these requests, not the server
                for _, done in waiting:
                    if not done.done():
                        done.set_exception(exc)
                continue
            self.batches += 1
            for (_, done), answer in zip(waiting, answers, strict=True):
                if not done.done():
                    done.set_result(answer)


def create_app(runner: Runner, options: ClassifyOptions, limits: ServeLimits,
               model_name: str) -> FastAPI:
    app = FastAPI(title="wastecls serve", version="1",
                  description=f"Waste classification with {model_name}.")
    batcher = Batcher(runner, options, limits)
    transform = eval_transform(runner.data_config)
    short = eval_short_side(runner.data_config)
    shape = tuple(runner.data_config["input_size"])
    decoding = ThreadPoolExecutor(2, thread_name_prefix="wastecls-decode")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_bytes + 65536:
            return JSONResponse({"error": f"the request is larger than --max-bytes "
                                 f"({limits.max_bytes} bytes)"}, status_code=413)
        public = ("/health", "/", "/static/serve.js")  # the page asks for the token itself
        if limits.token is not None and request.url.path not in public:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), limits.token.encode()):
                return JSONResponse({"error": "send the server's token as `Authorization: "
                                     "Bearer TOKEN`"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def as_json(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    def prepared(name: str, data: bytes) -> np.ndarray:
        if not data:
            raise HTTPException(422, f"{name}: the file is empty")
        try:
            image, _ = decode_image(data, short)
            array = np.empty(shape, np.float32)
            transform(image, out=array)
        except DECODE_ERRORS as exc:
            raise HTTPException(422, f"{name}: not a readable image ({exc})") from None
        return array

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "batches": batcher.batches}

    @app.get("/model")
    def model() -> dict[str, Any]:
        calibration = runner.calibration.model_dump() if runner.calibration else None
        return {"name": model_name, "backend": runner.name, "classes": runner.classes,
                "preprocessing": runner.data_config, "calibration": calibration}

    @app.post("/predict")
    async def predict(file: list[UploadFile] = File(...)) -> list[dict[str, Any]]:
        """Classify one or more images (multipart field `file`, repeated): what `predict
        --format json` writes for them, in order."""
        loop = asyncio.get_running_loop()
        arrays = []
        for upload in file:
            name = upload.filename or "upload"
            data = await upload.read(limits.max_bytes + 1)
            if len(data) > limits.max_bytes:
                raise HTTPException(413, f"{name}: larger than --max-bytes "
                                         f"({limits.max_bytes} bytes)")
            arrays.append(await loop.run_in_executor(decoding, prepared, name, data))
        answers = await asyncio.gather(*(batcher.classify(a) for a in arrays))
        return [{"path": upload.filename or "upload", **answer_fields(answer, False),
                 "labels": answer.labels, "probs": [round(p, 6) for p in answer.probs]}
                for upload, answer in zip(file, answers, strict=True)]

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(asset_path("serve/index.html").read_bytes(), media_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'none'; script-src "
                                 "'self'; style-src 'self' 'unsafe-inline'; img-src 'self' "
                                 "blob:; connect-src 'self'"})

    @app.get("/static/serve.js", include_in_schema=False)
    def script() -> Response:
        return Response(asset_path("serve/serve.js").read_bytes(),
                        media_type="text/javascript")

    return app
