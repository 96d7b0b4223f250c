"""kcdp-serve: endpoints, micro-batching, limits, metrics; and a loopback load test on real uvicorn."""

from __future__ import annotations

import base64
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from live_server import live_server
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from runtime_export import build_fake_export
from runtime_images import BLUE, RED, png_bytes

from kcdp_runtime.pipeline import Pipeline
from kcdp_runtime.serve import ServeConfig, create_app

RED_PNG = png_bytes(Image.new("RGB", (24, 24), RED))
BLUE_PNG = png_bytes(Image.new("RGB", (24, 24), BLUE))


def resident_bytes(pid: int) -> int:
    """A process's current RSS from /proc (Linux); 0 where there is no /proc."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return build_fake_export(tmp_path_factory.mktemp("export") / "fake")


@pytest.fixture(scope="module")
def pipe(export):
    return Pipeline.from_pretrained(export)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics through prometheus-client's own parser: (sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_classify_batch_health_metrics_openapi(pipe):
    with TestClient(create_app(pipe)) as client:
        r = client.post("/v1/classify", files={"image": ("red.png", RED_PNG, "image/png")})
        assert r.status_code == 200 and r.json()["label"] == "anger" and r.json()["image"] == "red.png"
        r = client.post("/v1/classify", files={"image": ("junk.png", b"junk", "image/png")})
        assert r.status_code == 422 and r.json() == {
            "image": "junk.png",
            "error": "junk.png: not an image (unrecognised format)",
        }
        files = [("images", ("a.png", RED_PNG, "image/png")), ("images", ("b.png", b"", "image/png")),
                 ("images", ("c.png", BLUE_PNG, "image/png"))]  # fmt: skip
        r = client.post("/v1/batch", files=files)
        results = r.json()["results"]
        assert r.status_code == 200 and [x["image"] for x in results] == ["a.png", "b.png", "c.png"]
        assert (
            results[0]["label"] == "anger"
            and "empty file" in results[1]["error"]
            and results[2]["label"] == "sadness"
        )
        health = client.get("/health").json()
        assert (
            health["status"] == "ok"
            and health["labels"] == list(pipe.labels)
            and health["classes"] == list(pipe.labels)  # every label unless the export says fewer
            and "cpu" in health["providers"]
        )
        samples = parse_metrics(client.get("/metrics").text)
        assert samples[("kcdp_requests_total", (("code", "200"), ("endpoint", "/v1/classify")))] == 1
        assert samples[("kcdp_requests_total", (("code", "422"), ("endpoint", "/v1/classify")))] == 1
        assert samples[("kcdp_images_total", (("outcome", "ok"),))] == 3
        assert samples[("kcdp_images_total", (("outcome", "error"),))] == 2
        assert samples[("kcdp_batch_size_count", ())] >= 2
        assert samples[("kcdp_stage_milliseconds_total", (("stage", "perception"),))] > 0
        assert samples[("kcdp_stage_images_total", (("stage", "perception"),))] == 3
        # per-stage latency histogram: every timed image lands in the +Inf bucket
        assert samples[("kcdp_stage_seconds_bucket", (("le", "+Inf"), ("stage", "perception")))] == 3
        assert samples[("kcdp_stage_seconds_count", (("stage", "text_encoder"),))] == 3
        # request-size histogram: two single-image posts and one batch, sized by Content-Length
        assert samples[("kcdp_request_bytes_count", (("endpoint", "/v1/classify"),))] == 2
        batch_bytes = samples[("kcdp_request_bytes_sum", (("endpoint", "/v1/batch"),))]
        assert batch_bytes > len(RED_PNG) + len(BLUE_PNG)
        assert samples[("kcdp_request_seconds_count", (("endpoint", "/v1/batch"),))] == 1
        assert samples[("kcdp_queue_depth", ())] == 0
        assert samples[("process_resident_memory_bytes", ())] > 0
        schema = client.get("/openapi.json").json()
        assert {"/v1/classify", "/v1/batch", "/health", "/metrics"} <= set(schema["paths"])
        assert "Result" in schema["components"]["schemas"]


def test_pack_answers_one_style_together(pipe):
    from kcdp_runtime.packs import PACK_MIN

    shades = [png_bytes(Image.new("RGB", (24, 24), (230 - 4 * i, 20, 20 + 4 * i))) for i in range(PACK_MIN)]
    alone = pipe.run(shades)
    files = [("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(shades)]
    with TestClient(create_app(pipe)) as client:
        r = client.post("/v1/pack", files=[*files[:3], ("images", ("x.png", b"", "image/png")), *files[3:]])
        results = r.json()["results"]
        assert r.status_code == 200 and len(results) == PACK_MIN + 1 and "empty file" in results[3]["error"]
        del results[3]
        for got, ref in zip(results, alone, strict=True):
            assert got["pack"] == PACK_MIN and got["image_label"] == ref["label"]
            assert got["label"] in pipe.labels and got["scores"] == ref["scores"]
        body = {"images": [base64.b64encode(d).decode() for d in shades[:3]], "names": ["a", "b", "c"]}
        few = client.post("/v1/pack", json=body).json()["results"]  # too few: each answered alone
        assert [(x["image"], x["pack"], x["label"]) for x in few] == [
            (n, 0, ref["label"]) for n, ref in zip("abc", alone, strict=False)
        ]
        assert "/v1/pack" in client.get("/openapi.json").json()["paths"]
        samples = parse_metrics(client.get("/metrics").text)
        assert samples[("kcdp_images_total", (("outcome", "ok"),))] == PACK_MIN + 3
        assert samples[("kcdp_images_total", (("outcome", "error"),))] == 1


def test_request_size_limit_and_timeout(pipe):
    config = ServeConfig(max_body_bytes=2000, max_images=2, timeout_s=0.001, max_wait_ms=50)
    with TestClient(create_app(pipe, config)) as client:
        big = png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
        assert len(big) > 2000
        r = client.post("/v1/classify", files={"image": ("big.png", big, "image/png")})
        assert r.status_code == 413 and "exceeds 2000 bytes" in r.json()["detail"]
        r = client.post("/v1/batch", files=[("images", (f"{i}.png", RED_PNG, "image/png")) for i in range(3)])
        assert r.status_code == 413
        # 1 ms timeout but a 50 ms batching window: the request times out
        r = client.post("/v1/classify", files={"image": ("red.png", RED_PNG, "image/png")})
        assert r.status_code == 504


def test_micro_batching_batches_concurrent_requests(pipe):
    app = create_app(pipe, ServeConfig(max_batch=8, max_wait_ms=100))
    with TestClient(app) as client:

        def one(i: int) -> int:
            r = client.post("/v1/classify", files={"image": (f"{i}.png", RED_PNG, "image/png")})
            return r.status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(one, range(32)))
        assert codes == [200] * 32
        sizes = app.state.batcher.batch_sizes
        assert sum(sizes) == 32 and max(sizes) > 1 and len(sizes) < 32


def test_loopback_load_no_errors_no_memory_growth(export):
    with live_server("--model", str(export), "--max-wait-ms", "2") as (base, server):

        def run(n: int) -> list[int]:
            codes: list[int] = []

            def client(k: int) -> None:
                with httpx.Client(base_url=base, timeout=30) as c:
                    for i in range(k):
                        png = RED_PNG if i % 2 else BLUE_PNG
                        codes.append(
                            c.post("/v1/classify", files={"image": ("x.png", png, "image/png")}).status_code
                        )

            per = [n // 16 + (1 if i < n % 16 else 0) for i in range(16)]
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(client, per))
            return codes

        assert run(160) == [200] * 160  # warm-up: allocator arenas, caches, connection pools
        rss_warm = resident_bytes(server.pid)
        t0 = time.perf_counter()
        codes = run(500)
        elapsed = time.perf_counter() - t0
        rss_end = resident_bytes(server.pid)
        assert codes == [200] * 500
        growth = rss_end - rss_warm
        print(
            f"500 requests, 16 clients: {elapsed:.2f} s ({500 / elapsed:.0f} req/s); RSS {rss_warm / 2**20:.1f} -> {rss_end / 2**20:.1f} MiB"
        )
        assert rss_warm > 0 and growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB after warm-up"
        samples = parse_metrics(httpx.get(f"{base}/metrics").text)
        assert samples[("kcdp_requests_total", (("code", "200"), ("endpoint", "/v1/classify")))] == 660
