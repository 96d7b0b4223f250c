"""kcdp-serve --model EXPORT [--host 127.0.0.1 --port 8000]: the emotion classifier over HTTP.

FastAPI on uvicorn. POST /v1/classify (one image) and POST /v1/batch (several) take a multipart
upload (fields `image` / `images`) or a JSON body with base64 images ({"image": "<base64>"} /
{"images": ["<base64>", ...]}), told apart by Content-Type; /v1/classify also takes the image file
itself as the body (Content-Type image/* or application/octet-stream, ?name= optional). Both feed
one queue; a micro-batcher collects up to --max-batch images or waits --max-wait-ms after the first,
then runs ONE pipeline call in a worker thread, so concurrent clients share batched ONNX runs while
the event loop keeps accepting requests. POST /v1/pack takes a batch's body and answers its images
together, as one style's (kcdp_runtime.packs), in one pipeline call on the same thread. Bodies over
--max-body-mb are refused with 413 by Content-Length or while they stream in (chunked uploads too);
an image not answered within --timeout seconds gets 504. Every response carries X-Request-ID (the
client's, or one made here), and so does every log line written while the request runs. GET /health,
GET /metrics (Prometheus), GET /openapi.json and /docs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import contextvars
import functools
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcdp_core.portable.images import MAX_FRAMES
from kcdp_runtime.cli import CLASSES_HELP, open_pipeline
from kcdp_runtime.manifest import ModelError
from kcdp_runtime.pipeline import Pipeline

log = logging.getLogger("kcdp_runtime")

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel
    from starlette.datastructures import UploadFile

    from kcdp_runtime.metrics import CONTENT_TYPE, Metrics
except ImportError:  # pragma: no cover - the message is the point
    FastAPI = None  # type: ignore[assignment,misc]
    BaseModel = object  # type: ignore[assignment,misc]

# The request a log line belongs to ("-" outside requests); RequestIdFilter writes it into records.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("kcdp_request_id", default="-")
# A client's X-Request-ID is echoed only if it is a plain token (it ends up in logs and headers).
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Frames(BaseModel):
    count: int
    classified: list[int]


class Result(BaseModel):
    """One classified image."""

    image: str
    label: str
    scores: dict[str, float]
    caption: str
    triplets: list[list[str]]
    latency_ms: dict[str, float]
    frames: Frames | None = None  # animated images only
    image_label: str | None = None  # /v1/pack only: the image's answer alone
    pack: int | None = None  # /v1/pack only: images answered together (0: too few, each alone)


class ErrorEntry(BaseModel):
    image: str
    error: str


class Problem(BaseModel):
    detail: str


class BatchResponse(BaseModel):
    results: list[Result | ErrorEntry]


class Health(BaseModel):
    status: str
    model: str
    preset: str
    precision: str
    labels: list[str]
    classes: list[str]  # the labels answered: all of them unless the export or --classes says fewer
    providers: str
    max_batch: int


class ClassifyJSON(BaseModel):
    """One image as JSON. image: base64 of the image file (standard or URL-safe alphabet, line breaks
    and a data:image/...;base64, prefix allowed); name: echoed as "image" in the result (default "image")."""

    image: str
    name: str | None = None


class BatchJSON(BaseModel):
    """Several images as JSON. images: base64 of each image file, as for /v1/classify; names: one per
    image, echoed in the results (default image0, image1, ...)."""

    images: list[str]
    names: list[str] | None = None


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
    request_id: str


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
        await self.queue.put(_Job(data, name, future, REQUEST_ID.get()))
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
                ids = ", ".join(sorted({j.request_id for j in jobs}))
                log.exception("pipeline failed on a batch of %d (requests %s)", len(jobs), ids)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batch_sizes = [*self.batch_sizes[-999:], len(jobs)]
            self.metrics.batch(results)
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    async def run_pack(self, images: list[bytes], names: list[str]) -> list[dict[str, Any]]:
        """One style's images answered together (Pipeline.run(pack=True)): one pipeline call on the
        worker thread, after the batches queued before it."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self.pipeline.run, images, names, self.config.max_batch, pack=True)
        results = await asyncio.wait_for(loop.run_in_executor(self.executor, call), self.config.timeout_s)
        self.metrics.batch(results)
        return results


class BodyLimit:
    """ASGI middleware: 413 for a body over the limit, by Content-Length or while it streams in.

    A body found too large while streaming (chunked, no Content-Length) stops the app's read with
    an exception that the body parsers may catch and answer themselves (Starlette's form parser
    answered 400 "There was an error parsing the body"): whatever the app sends after that is
    dropped and the 413 goes out instead."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, f"{int(length)} bytes (Content-Length)")
        seen = 0
        exceeded = False
        started = False

        async def limited_receive() -> dict:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                scope["kcdp.body_bytes"] = seen
                if seen > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if exceeded:
                return  # the app's own answer to the interrupted read
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if exceeded and not started:
            await self._refuse(send, f"{seen} bytes received so far (no Content-Length)")

    async def _refuse(self, send: Any, what: str) -> None:
        detail = f"request body exceeds {self.max_bytes} bytes (the limit, --max-body-mb): {what}"
        log.warning("413 %s", detail)
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to every log record (`%(request_id)s` in the format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


# The Content-Type of a body that is one image file itself (image/* is taken too).
RAW_TYPE = "application/octet-stream"


def _problem(status: int, detail: str) -> HTTPException:
    """A request-level refusal, logged with the request's id (the body is {"detail": ...})."""
    log.warning("%d %s", status, detail)
    return HTTPException(status, detail)


def _body_kind(request: Request, fields: str, raw: bool = False) -> str:
    """'multipart', 'json' or (where one image is sent, `raw`) 'raw' by Content-Type; 415 naming the
    forms otherwise."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return "multipart"
    if content_type == "application/json" or content_type.endswith("+json"):
        return "json"
    if raw and (content_type == RAW_TYPE or content_type.startswith("image/")):
        return "raw"
    also = f", or the image file itself as the body ({RAW_TYPE} or image/*)" if raw else ""
    raise _problem(
        415,
        f"Content-Type {content_type or '(none)'} is not accepted: send multipart/form-data with file "
        f"field {fields}, or application/json with base64 images{also}",
    )


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _problem(400, f"the body is not valid JSON ({exc})") from None


def decode_base64(text: Any, name: str) -> bytes | str:
    """The bytes of a base64 image (standard or URL-safe alphabet, an optional data: URI prefix), or
    the error text naming the image."""
    if not isinstance(text, str):
        return f"{name}: expected a base64 string, got {type(text).__name__}"
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            return f"{name}: a data: URI must be base64 (data:image/png;base64,...)"
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        return f"{name}: not valid base64 ({exc})"


def _upload_error(value: Any, field: str) -> str | None:
    if isinstance(value, UploadFile):
        return None
    return f"multipart field {field!r} must be a file upload (curl -F '{field}=@face.png'), not a text value"


def _openapi_body(field: str, many: bool, model: type) -> dict[str, Any]:
    item = {"type": "string", "format": "binary"}
    files = {"type": "array", "items": item} if many else item
    content = {
        "multipart/form-data": {"schema": {"type": "object", "required": [field], "properties": {field: files}}},
        "application/json": {"schema": model.model_json_schema()},
    }
    if not many:  # one image: its file as the body too
        content |= {RAW_TYPE: {"schema": item}, "image/*": {"schema": item}}
    return {"requestBody": {"required": True, "content": content}}


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
        description=(
            "KCDP visual emotion recognition (onnxruntime, micro-batched). Images: PNG, JPEG, WebP, GIF, "
            "BMP, TIFF, SVG; animated GIF/WebP/PNG are scored over up to 4 frames. Bodies: multipart "
            "uploads or JSON with base64 images."
        ),
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    endpoints: set[str] = set()  # the app's route paths: the /metrics label of a request

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Any:
        given = request.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID_OK.match(given) else uuid.uuid4().hex
        REQUEST_ID.set(request_id)  # the app below runs in a task that inherits it
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-ID"] = request_id
        path = request.url.path
        length = request.headers.get("content-length")
        size = int(length) if length is not None and length.isdigit() else request.scope.get("kcdp.body_bytes")
        metrics.request(path if path in endpoints else "other", response.status_code, time.perf_counter() - t0, size)  # fmt: skip
        if response.status_code >= 400:
            log.info("%s %s -> %d", request.method, path, response.status_code)
        return response

    async def classify_bytes(data: bytes | str, name: str) -> dict[str, Any]:
        if isinstance(data, str):  # the upload could not be read as bytes: its error entry
            metrics.images.labels(outcome="error").inc()
            return {"image": name, "error": data}
        try:
            return await batcher.submit(data, name)
        except asyncio.TimeoutError:
            raise _problem(504, f"{name}: not classified within {config.timeout_s} s") from None

    errors = {
        400: {"model": Problem, "description": "a body that cannot be parsed (invalid JSON, broken multipart)"},
        413: {"model": Problem, "description": f"body over the size limit (default {ServeConfig.max_body_bytes} bytes)"},
        415: {"model": Problem, "description": "neither multipart/form-data nor application/json"},
        504: {"model": Problem, "description": "not classified within the timeout"},
    }  # fmt: skip

    @app.post(
        "/v1/classify",
        response_model=Result,
        response_model_exclude_none=True,
        responses={
            **errors,
            422: {"model": ErrorEntry, "description": 'not a usable image ({"detail"}: a field missing)'},
        },
        summary="Classify one image: multipart field `image`, JSON {\"image\": \"<base64>\"}, or the file as the body",
        openapi_extra=_openapi_body("image", False, ClassifyJSON),
    )
    async def classify(request: Request) -> Any:
        kind = _body_kind(request, "'image'", raw=True)
        if kind == "raw":
            name = request.query_params.get("name") or "image"
            data = await request.body()
        elif kind == "json":
            body = await _json_body(request)
            if not isinstance(body, dict) or "image" not in body:
                raise _problem(422, 'the JSON body needs "image": "<base64 of the image file>"')
            name = str(body.get("name") or "image")
            data = decode_base64(body["image"], name)
        else:
            async with request.form() as form:  # closes the spooled upload files
                if "image" not in form:
                    sent = ", ".join(repr(k) for k in form) or "none"
                    raise _problem(422, f"multipart field 'image' is missing (fields sent: {sent}); /v1/batch takes 'images'")  # fmt: skip
                upload = form["image"]
                if (problem := _upload_error(upload, "image")) is not None:
                    raise _problem(422, problem)
                name = upload.filename or "image"
                data = await upload.read()
        result = await classify_bytes(data, name)
        if "error" in result:
            log.info("422 %s", result["error"])
            return JSONResponse(result, status_code=422)
        return result

    several = {  # /v1/batch and /v1/pack: the same body, the same answer
        "response_model": BatchResponse,
        "response_model_exclude_none": True,
        "responses": {**errors, 422: {"model": Problem, "description": "a field missing or of the wrong type"}},
        "openapi_extra": _openapi_body("images", True, BatchJSON),
    }

    @app.post(
        "/v1/batch",
        summary="Classify several images: multipart fields `images`, or JSON {\"images\": [\"<base64>\", ...]}",
        **several,
    )
    async def batch(request: Request) -> Any:
        payloads = await _batch_payloads(request, config)
        results = await asyncio.gather(*(classify_bytes(d, n) for d, n in payloads))
        return {"results": list(results)}

    @app.post(
        "/v1/pack",
        summary="Classify one style's images together (kcdp-infer --pack): the body of /v1/batch, 16 images or more",
        **several,
    )
    async def pack(request: Request) -> Any:
        payloads = await _batch_payloads(request, config)
        readable = [(d, n) for d, n in payloads if isinstance(d, bytes)]
        try:
            answered = iter(await batcher.run_pack([d for d, _ in readable], [n for _, n in readable]))
        except asyncio.TimeoutError:
            raise _problem(504, f"{len(readable)} images not classified within {config.timeout_s} s") from None
        results = [next(answered) if isinstance(d, bytes) else {"image": n, "error": d} for d, n in payloads]
        metrics.images.labels(outcome="error").inc(len(payloads) - len(readable))
        return {"results": results}

    @app.get("/health", response_model=Health)
    async def health() -> Any:
        m = pipeline.manifest
        return {"status": "ok", "model": str(m.folder), "preset": m.preset, "precision": m.precision,
                "labels": list(pipeline.labels), "classes": list(pipeline.classes or pipeline.labels),
                "providers": pipeline.provider_line, "max_batch": config.max_batch}  # fmt: skip

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Any:
        metrics.queue_depth = batcher.queue.qsize()
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    endpoints.update(route.path for route in app.routes)
    return app


async def _batch_payloads(request: Request, config: ServeConfig) -> list[tuple[bytes | str, str]]:
    """(image bytes, or the error of an upload that could not be read; name) per image of a /v1/batch
    or /v1/pack body."""
    if _body_kind(request, "'images' (repeated)") == "json":
        body = await _json_body(request)
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list) or not images:
            raise _problem(422, 'the JSON body needs "images": ["<base64>", ...] (a non-empty list)')
        names = body.get("names") or [f"image{i}" for i in range(len(images))]
        if not isinstance(names, list) or len(names) != len(images):
            raise _problem(422, f'"names" must be a list of {len(images)} strings, one per image')
        _check_count(len(images), config)
        return [(decode_base64(b, str(n)), str(n)) for b, n in zip(images, names, strict=True)]
    async with request.form() as form:
        uploads = form.getlist("images")
        if not uploads:
            sent = ", ".join(repr(k) for k in form) or "none"
            raise _problem(422, f"multipart field 'images' is missing (fields sent: {sent}); /v1/classify takes 'image'")  # fmt: skip
        _check_count(len(uploads), config)
        payloads: list[tuple[bytes | str, str]] = []
        for i, upload in enumerate(uploads):
            if (problem := _upload_error(upload, "images")) is not None:
                payloads.append((f"images[{i}]: {problem}", f"images[{i}]"))
            else:
                payloads.append((await upload.read(), upload.filename or f"image{i}"))
        return payloads


def _check_count(n: int, config: ServeConfig) -> None:
    if n > config.max_images:
        raise _problem(413, f"{n} images in one request; the limit is {config.max_images}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kcdp-serve", description="Serve a kcdp export over HTTP (FastAPI + uvicorn)."
    )
    p.add_argument("--model", help="export folder (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="images per pipeline call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="wait for more images after the first")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="request size limit (MiB)")
    p.add_argument("--max-images", type=int, default=64, help="images per /v1/batch or /v1/pack request")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before an image gets 504")
    p.add_argument(
        "--max-frames", type=int, default=MAX_FRAMES,
        help="frames classified per animated GIF/WebP/PNG, spread through it (1: the first frame only)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: auto)")
    p.add_argument("--providers", help="comma list of execution providers (tensorrt,cuda,cpu)")
    p.add_argument("--classes", nargs="+", metavar="LABEL", help=CLASSES_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="kcdp-serve: [%(request_id)s] %(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    try:
        import uvicorn
    except ImportError:
        print("kcdp-serve: error: needs the serve extra: pip install 'kcdp[serve]'", file=sys.stderr)
        return 2
    pipeline = open_pipeline(args.model, args.providers, args.threads, "kcdp-serve", args.classes)
    if pipeline is None:
        return 2
    pipeline.max_frames = max(1, args.max_frames)
    pipeline.warmup()
    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_images=args.max_images,
        timeout_s=args.timeout,
    )
    app = create_app(pipeline, config)
    log.info(
        "serving %s on http://%s:%d (docs at /docs)",
        Path(pipeline.manifest.folder).name,
        args.host,
        args.port,
    )
    # log_config=None: uvicorn's own records (an exception in a request) reach the handler above,
    # with the request id, instead of uvicorn's formatter
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
