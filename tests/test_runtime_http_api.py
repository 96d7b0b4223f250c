"""kcdp-serve's HTTP API for an integrator: JSON bodies with base64 images beside multipart, errors that
name the problem, size limits on streamed bodies, request ids, SVG and animated uploads."""

from __future__ import annotations

import base64
import json
import logging

import httpx
import pytest
from fastapi.testclient import TestClient
from live_server import live_server
from PIL import Image
from runtime_export import build_fake_export
from runtime_images import BLUE, RED, animation, blues, gif_bytes, png_bytes, svg_bytes

from kcdp_runtime.pipeline import Pipeline
from kcdp_runtime.serve import RequestIdFilter, ServeConfig, create_app

RED_PNG = png_bytes(Image.new("RGB", (24, 24), RED))
BLUE_PNG = png_bytes(Image.new("RGB", (24, 24), BLUE))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return Pipeline.from_pretrained(build_fake_export(tmp_path_factory.mktemp("api") / "fake"))


@pytest.fixture(scope="module")
def client(pipe):
    with TestClient(create_app(pipe, ServeConfig(max_body_bytes=4000, max_images=3))) as c:
        yield c


def metric(client: TestClient, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def test_json_base64_matches_multipart(client):
    multipart = client.post("/v1/classify", files={"image": ("red.png", RED_PNG, "image/png")}).json()
    r = client.post("/v1/classify", json={"image": b64(RED_PNG), "name": "red.png"})
    assert r.status_code == 200
    assert r.json()["scores"] == multipart["scores"] and r.json()["image"] == "red.png"
    # a data: URI, line breaks (MIME base64) and no name are fine too
    wrapped = "\n".join(b64(BLUE_PNG)[i : i + 76] for i in range(0, len(b64(BLUE_PNG)), 76))
    r = client.post("/v1/classify", json={"image": "data:image/png;base64," + wrapped})
    assert r.status_code == 200 and r.json()["label"] == "sadness" and r.json()["image"] == "image"
    r = client.post("/v1/batch", json={"images": [b64(RED_PNG), "not base64!", b64(BLUE_PNG)]})
    assert r.status_code == 200
    a, bad, c = r.json()["results"]
    assert (a["image"], a["label"], c["image"], c["label"]) == ("image0", "anger", "image2", "sadness")
    assert bad == {"image": "image1", "error": bad["error"]} and "image1: not valid base64" in bad["error"]
    r = client.post("/v1/batch", json={"images": [b64(RED_PNG)], "names": ["mine.png"]})
    assert r.json()["results"][0]["image"] == "mine.png"



def test_one_image_file_as_the_body(client):
    r = client.post("/v1/classify", content=RED_PNG, headers={"content-type": "image/png"})
    assert r.status_code == 200 and (r.json()["image"], r.json()["label"]) == ("image", "anger")
    r = client.post(
        "/v1/classify?name=blue.png", content=BLUE_PNG, headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 200 and (r.json()["image"], r.json()["label"]) == ("blue.png", "sadness")
    r = client.post("/v1/classify?name=junk.webp", content=b"junk", headers={"content-type": "image/webp"})
    assert r.status_code == 422 and r.json() == {"image": "junk.webp", "error": "junk.webp: not an image (unrecognised format)"}
    big = png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))  # over the fixture's 4000 bytes
    r = client.post("/v1/classify", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "request body exceeds 4000 bytes" in r.json()["detail"]
    body = client.get("/openapi.json").json()["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "application/octet-stream", "image/*"} == set(body)

@pytest.mark.parametrize(
    ("path", "kwargs", "status", "says"),
    [
        ("/v1/classify", {"json": {"img": "x"}}, 422, '"image": "<base64'),
        ("/v1/classify", {"json": {"image": "@@@"}}, 422, "image: not valid base64"),
        ("/v1/classify", {"json": {"image": 5}}, 422, "expected a base64 string, got int"),
        ("/v1/classify", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ("/v1/batch", {"content": RED_PNG, "headers": {"content-type": "image/png"}}, 415, "multipart/form-data"),
        ("/v1/classify", {"content": b"hi", "headers": {"content-type": "text/plain"}}, 415, "the image file itself as the body"),
        ("/v1/classify", {"files": {"file": ("a.png", RED_PNG, "image/png")}}, 422, "field 'image' is missing (fields sent: 'file')"),
        ("/v1/classify", {"data": {"image": "abc"}, "files": {"x": ("x", b"x")}}, 422, "must be a file upload"),
        ("/v1/batch", {"files": {"image": ("a.png", RED_PNG, "image/png")}}, 422, "field 'images' is missing"),
        ("/v1/batch", {"json": {"images": []}}, 422, "a non-empty list"),
        ("/v1/batch", {"json": {"images": ["a", "b"], "names": ["x"]}}, 422, "a list of 2 strings"),
        ("/v1/batch", {"json": {"images": [b64(RED_PNG)] * 4}}, 413, "4 images in one request; the limit is 3"),
    ],
    ids=["json-no-image", "json-bad-b64", "json-not-str", "json-invalid", "batch-raw-png", "classify-text", "multipart-wrong-field",
         "multipart-text-field", "batch-wrong-field", "batch-empty", "batch-names", "batch-too-many"],
)  # fmt: skip
def test_errors_name_the_problem(client, path, kwargs, status, says):
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    text = body.get("detail") or body.get("error")
    assert says in text and "Field required" not in r.text, body


def test_streamed_body_over_the_limit_is_413_under_its_endpoint(client):
    big = b64(png_bytes(Image.effect_noise((64, 64), 50).convert("RGB")))
    before = metric(client, "kcdp_requests_total", endpoint="/v1/classify", code="413")

    def chunks():  # no Content-Length: the body arrives chunked and is counted as it streams in
        body = ('{"image": "' + big + '"}').encode()
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body exceeds 4000 bytes" in r.json()["detail"]
    files = {"image": ("big.png", base64.b64decode(big), "image/png")}
    request = httpx.Request("POST", "http://x/v1/classify", files=files)
    body = request.read()
    r = client.post(
        "/v1/classify",
        content=(body[i : i + 1000] for i in range(0, len(body), 1000)),
        headers={"content-type": request.headers["content-type"]},
    )
    assert r.status_code == 413 and "exceeds 4000 bytes" in r.json()["detail"]  # multipart, chunked
    r = client.post("/v1/classify", files=files)  # with Content-Length: refused before reading
    assert r.status_code == 413 and "Content-Length" in r.json()["detail"]
    assert metric(client, "kcdp_requests_total", endpoint="/v1/classify", code="413") == before + 3
    assert metric(client, "kcdp_requests_total", endpoint="other", code="413") == 0
    # a chunked body under the limit runs, and its size is what it sent
    small = json.dumps({"images": [b64(RED_PNG)]}).encode()
    sent = metric(client, "kcdp_request_bytes_sum", endpoint="/v1/batch")
    r = client.post("/v1/batch", content=iter([small[:50], small[50:]]), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "anger"
    assert metric(client, "kcdp_request_bytes_sum", endpoint="/v1/batch") == sent + len(small)


def test_request_id_echoed_generated_and_logged(client, caplog):
    caplog.handler.addFilter(RequestIdFilter())  # what kcdp-serve's log handler carries
    r = client.post("/v1/classify", json={"img": "x"}, headers={"X-Request-ID": "client-42"})
    assert r.headers["x-request-id"] == "client-42"
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32 and generated != client.get("/health").headers["x-request-id"]
    # a header that is not a plain token is replaced, not echoed into logs
    assert client.get("/health", headers={"X-Request-ID": "a b\tc"}).headers["x-request-id"] != "a b\tc"
    with caplog.at_level(logging.INFO, logger="kcdp_runtime"):
        client.post("/v1/classify", json={"img": "x"}, headers={"X-Request-ID": "rid-7"})
        client.post("/v1/classify", files={"image": ("junk.png", b"junk", "image/png")}, headers={"X-Request-ID": "rid-8"})  # fmt: skip
    lines = [(r.request_id, r.getMessage()) for r in caplog.records]
    assert ("rid-7", '422 the JSON body needs "image": "<base64 of the image file>"') in lines
    assert ("rid-8", "422 junk.png: not an image (unrecognised format)") in lines


def test_svg_and_animated_uploads(client):
    r = client.post("/v1/classify", files={"image": ("red.svg", svg_bytes(RED), "image/svg+xml")})
    assert r.status_code == 200 and r.json()["label"] == "anger" and "frames" not in r.json()
    r = client.post("/v1/classify", json={"image": b64(svg_bytes(BLUE))})
    assert r.status_code == 200 and r.json()["label"] == "sadness"
    outside = svg_bytes(RED, extra='<image href="/etc/hostname" width="4" height="4"/>')
    r = client.post("/v1/classify", files={"image": ("x.svg", outside, "image/svg+xml")})
    assert r.status_code == 422 and "SVG references an outside resource" in r.json()["error"]
    gif = gif_bytes(animation([RED, *blues(7)]))  # 8 frames: 0, 2, 4, 6 classified (one red, three blue)
    r = client.post("/v1/classify", files={"image": ("anim.gif", gif, "image/gif")})
    assert r.status_code == 200 and r.json()["frames"] == {"count": 8, "classified": [0, 2, 4, 6]}
    assert r.json()["label"] == "sadness"


def test_live_server_chunked_413_and_request_id_in_its_log(tmp_path_factory):
    """On uvicorn itself: a chunked upload over --max-body-mb gets 413, and kcdp-serve's log line for
    it starts with the request's id."""
    export = build_fake_export(tmp_path_factory.mktemp("live") / "fake")
    with live_server("--model", str(export), "--max-body-mb", "0.01") as (base, server):
        body = json.dumps({"image": "A" * 40000}).encode()
        r = httpx.post(
            f"{base}/v1/classify",
            content=(body[i : i + 4096] for i in range(0, len(body), 4096)),  # chunked: no Content-Length
            headers={"content-type": "application/json", "x-request-id": "chunk-1"},
            timeout=30,
        )
        assert r.status_code == 413 and r.headers["x-request-id"] == "chunk-1"
        assert "request body exceeds 10485 bytes" in r.json()["detail"]
        ok = httpx.post(f"{base}/v1/classify", json={"image": b64(RED_PNG)}, timeout=30)
        assert ok.status_code == 200 and ok.json()["label"] == "anger"
    log = server.stderr.read().decode()
    assert "kcdp-serve: [chunk-1] 413 request body exceeds 10485 bytes" in log, log
