"""The README's HTTP API examples run as written against a live `kcdp-serve` with the default model:
every curl command of the section, and each response the README shows beside one (same fields,
same label, caption and error text; scores and timings are left free). Edit the examples and
this test follows; let the API drift and it fails."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from live_server import live_server
from readme_sections import code_blocks, section

REPO = Path(__file__).resolve().parents[1]
SECTION = "HTTP API"
HOST = "localhost:8000"  # where the README's examples send their requests


def examples(text: str) -> list[tuple[str, Any]]:
    """(curl command, the JSON response shown right after its code block or None), in order."""
    blocks = code_blocks(text)
    out: list[tuple[str, Any]] = []
    for n, (lang, body) in enumerate(blocks):
        if lang != "bash":
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        commands = [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]
        shown = blocks[n + 1] if n + 1 < len(blocks) and blocks[n + 1][0] == "json" else None
        for k, command in enumerate(commands):
            last = k == len(commands) - 1
            out.append((command, json.loads(shown[1]) if shown and last else None))
    return out


@pytest.fixture(scope="module")
def server():
    with live_server(cwd=REPO) as (base, _):
        yield base.removeprefix("http://")


def _same_shape(got: Any, shown: Any, where: str) -> None:
    """Same keys all the way down; the same words where the README shows words (labels, captions,
    names, errors); numbers (scores, milliseconds, counts) may differ."""
    if isinstance(shown, dict):
        assert isinstance(got, dict) and set(got) == set(shown), (where, sorted(got), sorted(shown))
        for key in shown:
            if key in ("scores", "latency_ms"):  # the same labels and stages, other numbers
                assert set(got[key]) == set(shown[key]), (where, key, got[key])
            else:
                _same_shape(got[key], shown[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), (where, got)
        for i, (g, s) in enumerate(zip(got, shown, strict=True)):
            _same_shape(g, s, f"{where}[{i}]")
    elif isinstance(shown, str):
        assert got == shown, (where, got, shown)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples_run_against_kcdp_serve(server):
    text = section((REPO / "README.md").read_text(), SECTION)
    for path in ("/v1/classify", "/v1/batch", "/health", "/metrics", "/openapi.json", "/docs", "413", "415", "422"):
        assert path in text, f"the HTTP API section does not mention {path}"
    found = examples(text)
    assert len(found) >= 6 and sum(shown is not None for _, shown in found) >= 3, found
    for command, shown in found:
        assert HOST in command, command
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command.replace(HOST, server)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0 and proc.stdout.strip(), (command, proc.returncode, proc.stderr)
        if shown is not None:
            _same_shape(json.loads(proc.stdout), shown, command)
        elif proc.stdout.lstrip().startswith("{"):
            json.loads(proc.stdout)  # every JSON answer parses
