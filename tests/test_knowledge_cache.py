"""The knowledge cache: keys, skipping, bad images, torn lines, and resuming after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from kcdp_core.knowledge.cache import FILENAME, KnowledgeCache
from kcdp_core.knowledge.captioners import CSVCaptioner
from kcdp_core.knowledge.cli import main as cli_main
from kcdp_core.portable.triplets import TripletParser

CAPTIONS = [
    "a man is hugging a woman",
    "grinning face",
    "the man is thrilled",
    "face with tears of joy",
    "pouting face",
    "the woman is not smiling",
    "a crying baby",
]


@pytest.fixture(scope="module")
def parser() -> TripletParser:
    return TripletParser()


def make_dataset(folder: Path, n: int) -> Path:
    """n distinct small PNGs in class subfolders and a captions CSV (relative paths)."""
    rows = ["path,caption"]
    for i in range(n):
        sub = folder / f"c{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(sub / f"img{i:03d}.png")
        rows.append(f"c{i % 3}/img{i:03d}.png,{CAPTIONS[i % len(CAPTIONS)]} {i}")
    csv_file = folder.parent / f"{folder.name}.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    return csv_file


def lines(cache_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (cache_dir / FILENAME).read_text().splitlines()]


def test_fill_get_skip_and_keys(tmp_path: Path, parser: TripletParser) -> None:
    csv_file = make_dataset(tmp_path / "data", 6)
    paths = sorted((tmp_path / "data").rglob("*.png"))
    cap = CSVCaptioner(csv_file)
    cache = KnowledgeCache(tmp_path / "cache")
    assert cache.get(paths[0]) is None  # captioner unknown yet: nothing to match
    report = cache.fill(paths, cap, parser, batch_size=4, progress=False)
    assert (report.added, report.skipped, report.errors) == (6, 0, [])
    entry = cache.get(paths[0])
    assert set(entry) >= {"key", "image", "caption", "triplets"}
    assert entry["caption"] == "a man is hugging a woman 0"
    assert ["man", "hugging", "woman"] in entry["triplets"]
    # Second run: everything skipped, nothing appended.
    again = cache.fill(paths, cap, parser, progress=False)
    assert (again.added, again.skipped) == (0, 6) and len(lines(tmp_path / "cache")) == 6
    # A fresh cache object on the same folder, told the captioner and parser, finds the entries.
    other = KnowledgeCache(tmp_path / "cache", captioner_id=cap.id, parser_version=parser.version)
    assert other.get(paths[3]) == cache.get(paths[3])
    # Keyed by content: a copy under another name reuses the entry; another captioner or parser does not.
    copy = tmp_path / "copy.png"
    shutil.copy(paths[2], copy)
    assert cache.get(copy)["key"] == cache.get(paths[2])["key"]
    assert cache.get(paths[2], captioner_id="csv:other") is None
    assert cache.get(paths[2], parser_version="spacy-rules-0") is None


def test_bad_images_are_reported_rest_runs(tmp_path: Path, parser: TripletParser) -> None:
    csv_file = make_dataset(tmp_path / "data", 4)
    paths = sorted((tmp_path / "data").rglob("*.png"))
    broken = tmp_path / "data" / "broken.png"
    broken.write_bytes(b"not a png")
    uncaptioned = tmp_path / "data" / "nocap.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(uncaptioned)
    cache = KnowledgeCache(tmp_path / "cache")
    report = cache.fill(
        [*paths[:2], broken, uncaptioned, tmp_path / "missing.png", *paths[2:]],
        CSVCaptioner(csv_file),
        parser,
        progress=False,
    )
    assert report.added == 4
    errors = dict(report.errors)
    assert set(errors) == {str(broken), str(uncaptioned), str(tmp_path / "missing.png")}
    assert "not an image" in errors[str(broken)] and "no caption" in errors[str(uncaptioned)]
    assert all(cache.get(p) is not None for p in paths)


def test_torn_last_line_is_ignored_and_repaired(tmp_path: Path, parser: TripletParser) -> None:
    csv_file = make_dataset(tmp_path / "data", 5)
    paths = sorted((tmp_path / "data").rglob("*.png"))
    cap = CSVCaptioner(csv_file)
    cache = KnowledgeCache(tmp_path / "cache")
    cache.fill(paths[:3], cap, parser, progress=False)
    full = (tmp_path / "cache" / FILENAME).read_bytes()
    last = full.splitlines(keepends=True)[-1]
    # Simulate a kill mid-write: the third entry is cut in half.
    (tmp_path / "cache" / FILENAME).write_bytes(full[: len(full) - len(last) // 2])
    reopened = KnowledgeCache(tmp_path / "cache", cap.id, parser.version)
    assert len(reopened) == 2 and reopened.get(paths[2]) is None
    report = reopened.fill(paths, cap, parser, progress=False)
    assert (report.added, report.skipped) == (3, 2)
    assert (tmp_path / "cache" / FILENAME).read_bytes().startswith(full)
    assert [e["image"] for e in lines(tmp_path / "cache")] == [str(p) for p in paths]


def test_cli_parse_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["parse", "a man is hugging a woman", "grinning face", "--json"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert out == [
        {"text": "a man is hugging a woman", "triplets": [["man", "hugging", "woman"]]},
        {"text": "grinning face", "triplets": [["face", "is", "grinning"]]},
    ]


def test_cli_usage_errors(tmp_path: Path) -> None:
    assert cli_main([str(tmp_path / "nope")]) == 2
    assert cli_main([str(tmp_path)]) == 2  # no images


def _args(data: Path, csv_file: Path, cache: Path) -> list[str]:
    flags = ["--preset", "tiny", "--captions-csv", str(csv_file), "--batch-size", "1", "--no-progress"]
    return [str(data), *flags, "--cache", str(cache)]


def _cli(data: Path, csv_file: Path, cache: Path) -> list[str]:
    # The installed console script, as users run it (module fallback for a non-installed checkout).
    script = Path(sys.executable).parent / "kcdp-knowledge"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "kcdp_core.knowledge.cli"]
    return [*command, *_args(data, csv_file, cache)]


def test_sigkill_halfway_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    n = 200
    data = tmp_path / "data"
    csv_file = make_dataset(data, n)
    reference = tmp_path / "reference"
    # The uninterrupted reference runs in-process (same main() as the script) to save a startup.
    assert cli_main(_args(data, csv_file, reference)) == 0
    expected = lines(reference)
    assert len(expected) == n

    for attempt in range(3):  # the child may outrun the poll on a loaded machine: retry, never pass vacuously
        cache = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen(
            _cli(data, csv_file, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        target = cache / FILENAME
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if target.exists() and target.read_bytes().count(b"\n") >= n // 2:
                break
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    assert proc.returncode == -signal.SIGKILL, "could not kill the filler halfway"
    done = target.read_bytes().count(b"\n")
    assert 0 < done < n
    result = subprocess.run(_cli(data, csv_file, cache), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{n - done} captioned, {done} already cached" in result.stderr
    entries = lines(cache)
    assert len(entries) == n and len({e["key"] for e in entries}) == n
    assert entries == expected  # same entries, same order as the uninterrupted run
