"""kcdp-serve --model EXPORT [--host 127.0.0.1 --port 8000]: the emotion classifier over HTTP.

FastAPI on uvicorn. POST /v1/classify (one image) and POST /v1/batch (several) feed one queue; a
micro-batcher collects up to --max-batch images or waits --max-wait-ms after the first, then runs
ONE pipeline call in a worker thread, so concurrent clients share batched ONNX runs while the event
loop keeps accepting requests. Bodies over --max-body-mb are refused with 413 while streaming in;
an image not answered within --timeout seconds gets 504. GET /health, GET /metrics (Prometheus),
GET /openapi.json and /docs (FastAPI).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from kcdp_runtime.manifest import ModelError
from kcdp_runtime.pipeline import Pipeline

log = logging.getLogger("kcdp_runtime")

try:
    from fastapi import FastAPI, File, HTTPException, Request, UploadFile
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel

    from kcdp_runtime.metrics import CONTENT_TYPE, Metrics
except ImportError:  # pragma: no cover - the message is the point
    FastAPI = None  # type: ignore[assignment,misc]
    BaseModel = object  # type: ignore[assignment,misc]


class Result(BaseModel):
    """One classified image (DESIGN.md section 4)."""

    image: str
    label: str
    scores: dict[str, float]
    caption: str
    triplets: list[list[str]]
    latency_ms: dict[str, float]


class ErrorEntry(BaseModel):
    image: str
    error: str


class BatchResponse(BaseModel):
    results: list[Result | ErrorEntry]


class Health(BaseModel):
    status: str
    model: str
    preset: str
    precision: str
    labels: list[str]
    providers: str
    max_batch: int


@dataclass
class ServeConfig:
    max_batch: int = 8  # images per pipeline call
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for company
    max_body_bytes: int = 10 * 1024 * 1024
    max_images: int = 64  # per /v1/batch request
    timeout_s: float = 30.0


@dataclass
class _Job:
    data: bytes
    name: str
    future: asyncio.Future


class MicroBatcher:
    """An asyncio queue drained in batches; each batch is one Pipeline.run in a worker thread."""

    def __init__(self, pipeline: Pipeline, config: ServeConfig, metrics: Metrics):
        self.pipeline = pipeline
        self.config = config
        self.metrics = metrics
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        # One worker thread: onnxruntime already uses every core inside a run.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kcdp-pipeline")
        self.task: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and /health

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, data: bytes, name: str) -> dict[str, Any]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(data, name, future))
        self.metrics.queue_depth = self.queue.qsize()
        return await asyncio.wait_for(future, self.config.timeout_s)  # cancels the job on timeout

    async def _collect(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.max_wait_ms / 1000.0
        while len(jobs) < self.config.max_batch:
            if not self.queue.empty():
                jobs.append(self.queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [j for j in jobs if not j.future.done()]  # timed-out requests are not computed

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            self.metrics.queue_depth = self.queue.qsize()
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(
                    self.executor,
                    functools.partial(
                        self.pipeline.run, [j.data for j in jobs], [j.name for j in jobs], len(jobs)
                    ),
                )
            except Exception as exc:  # noqa: BLE001 - a failing batch must fail its requests, not the server
                log.exception("pipeline failed on a batch of %d", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batch_sizes = [*self.batch_sizes[-999:], len(jobs)]
            self.metrics.batch(results)
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)


class BodyLimit:
    """ASGI middleware: 413 for a body over the limit, by Content-Length or while it streams in."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = f'{{"detail": "request body exceeds {self.max_bytes} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(pipeline: Pipeline, config: ServeConfig | None = None) -> Any:
    """The FastAPI app around a loaded pipeline (tests use it with TestClient)."""
    if FastAPI is None:
        raise ModelError("kcdp-serve needs the serve extra: pip install 'kcdp[serve]'")
    config = config or ServeConfig()
    metrics = Metrics()
    batcher = MicroBatcher(pipeline, config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="kcdp-serve",
        version=pipeline.manifest.package_version or "0.1.0",
        description="KCDP visual emotion recognition (onnxruntime, micro-batched).",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")  # the route template: unknown paths do not add label values
        length = request.headers.get("content-length")
        size = int(length) if length is not None and length.isdigit() else None
        metrics.request(getattr(route, "path", "other"), response.status_code, time.perf_counter() - t0, size)
        return response

    async def classify_bytes(data: bytes, name: str) -> dict[str, Any]:
        try:
            return await batcher.submit(data, name)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"{name}: not classified within {config.timeout_s} s") from None

    @app.post(
        "/v1/classify",
        response_model=Result,
        responses={422: {"model": ErrorEntry, "description": "the upload is not a usable image"}},
        summary="Classify one image (multipart field `image`)",
    )
    async def classify(image: Annotated[UploadFile, File(description="the image file")]) -> Any:
        result = await classify_bytes(await image.read(), image.filename or "image")
        if "error" in result:
            return JSONResponse(result, status_code=422)
        return result

    @app.post(
        "/v1/batch",
        response_model=BatchResponse,
        summary="Classify several images (multipart field `images`)",
    )
    async def batch(images: Annotated[list[UploadFile], File(description="image files")]) -> Any:
        if len(images) > config.max_images:
            raise HTTPException(413, f"{len(images)} images in one request; the limit is {config.max_images}")
        payloads = [(await f.read(), f.filename or f"image{i}") for i, f in enumerate(images)]
        results = await asyncio.gather(*(classify_bytes(d, n) for d, n in payloads))
        return {"results": list(results)}

    @app.get("/health", response_model=Health)
    async def health() -> Any:
        m = pipeline.manifest
        return {"status": "ok", "model": str(m.folder), "preset": m.preset, "precision": m.precision,
                "labels": list(pipeline.labels), "providers": pipeline.provider_line, "max_batch": config.max_batch}  # fmt: skip

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Any:
        metrics.queue_depth = batcher.queue.qsize()
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kcdp-serve", description="Serve a kcdp export over HTTP (FastAPI + uvicorn)."
    )
    p.add_argument("--model", help="export folder (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="images per pipeline call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="wait for more images after the first")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="request size limit")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before an image gets 504")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: auto)")
    p.add_argument("--providers", help="comma list of execution providers (tensorrt,cuda,cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="kcdp-serve: %(message)s", stream=sys.stderr)
    try:
        import uvicorn
    except ImportError:
        print("kcdp-serve: error: needs the serve extra: pip install 'kcdp[serve]'", file=sys.stderr)
        return 2
    from kcdp_runtime.cli import open_pipeline

    pipeline = open_pipeline(args.model, args.providers, args.threads, "kcdp-serve")
    if pipeline is None:
        return 2
    pipeline.warmup()
    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        timeout_s=args.timeout,
    )
    app = create_app(pipeline, config)
    log.info(
        "serving %s on http://%s:%d (docs at /docs)",
        Path(pipeline.manifest.folder).name,
        args.host,
        args.port,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
