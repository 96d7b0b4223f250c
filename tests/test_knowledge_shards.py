"""kcdp-knowledge over several processes: one cache file per process, read together; a killed process
loses only its batch in flight; a rerun (any number of processes) captions only what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kcdp_core.knowledge.cache import KnowledgeCache
from kcdp_core.knowledge.captioners import CSVCaptioner
from kcdp_core.knowledge.cli import Shard


class CountingCaptioner(CSVCaptioner):
    calls = 0

    def __call__(self, images, paths=None):
        type(self).calls += len(images)
        return super().__call__(images, paths)


class _Parser:
    version = "test-parser"

    def parse_many(self, texts):
        return [[("face", "is", t.split()[-1])] for t in texts]


def _dataset(folder: Path, n: int) -> tuple[list[Path], Path]:
    rows = []
    for i in range(n):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        path = folder / f"c{i % 2}" / f"{i}.png"
        Image.new("RGB", (8, 8), (i * 20 % 256, i * 7 % 256, 90)).save(path)
        rows.append(f"{path},face {i}")
    csv_file = folder / "captions.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    return sorted(folder.rglob("*.png")), csv_file


def test_shard_files_are_read_together_and_a_rerun_does_only_the_missing(tmp_path):
    paths, csv_file = _dataset(tmp_path / "data", 9)
    cap, parser = CountingCaptioner(csv_file), _Parser()
    shards = [KnowledgeCache(tmp_path / "kc", shard=f"rank{i}") for i in range(2)]
    assert shards[0].fill(paths[:5], cap, parser, progress=False).added == 5
    assert shards[1].fill(paths[5:], cap, parser, batch_size=2, progress=False).added == 4
    assert sorted(p.name for p in (tmp_path / "kc").iterdir()) == [
        "knowledge.rank0.jsonl",
        "knowledge.rank1.jsonl",
    ]
    reader = KnowledgeCache(tmp_path / "kc", cap.id, parser.version)
    assert len(reader) == 9 and all(reader.get(p)["caption"] == f"face {int(p.stem)}" for p in paths)

    # rank1 killed mid-write: its last line torn. The rerun, now one process, redoes just that image.
    f = tmp_path / "kc" / "knowledge.rank1.jsonl"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 20])
    CountingCaptioner.calls = 0
    report = KnowledgeCache(tmp_path / "kc").fill(paths, cap, parser, progress=False)
    assert (report.added, report.skipped, CountingCaptioner.calls) == (1, 8, 1)
    assert len(KnowledgeCache(tmp_path / "kc", cap.id, parser.version)) == 9


def test_single_process_shard_is_everything():
    shard = Shard()
    assert shard.name is None and shard.split([Path("a"), Path("b")]) == [Path("a"), Path("b")]
    assert shard.total([1, 2, 3]) == [1, 2, 3]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_with_instructblip(tmp_path):
    """`accelerate launch` over 2 CPU processes, the sd15 preset's InstructBLIP (small, random, filed
    under its hub id): each process captions its share into its own file."""
    pytest.importorskip("accelerate")
    from kcdp_core.config import INSTRUCTBLIP
    from kcdp_core.model.random_sd15 import build_instructblip, install_in_hub_cache

    install_in_hub_cache(build_instructblip(tmp_path / "blip"), INSTRUCTBLIP, tmp_path / "hub")
    rng = np.random.default_rng(0)
    for i in range(6):
        (tmp_path / "data" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / "data" / f"c{i % 2}" / f"{i}.png"
        )
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
        "KCDP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    cli = ["-m", "kcdp_core.knowledge.cli", str(tmp_path / "data"), "--preset", "sd15", "--no-progress"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    proc = subprocess.run([*launch, *cli], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "6 images: 6 captioned, 0 already cached, 0 failed" in proc.stderr and "(2 processes)" in proc.stderr
    )
    folder = tmp_path / "cache" / "knowledge"
    counts = {f.name: len(f.read_text().splitlines()) for f in folder.iterdir()}
    assert counts == {"knowledge.rank0.jsonl": 3, "knowledge.rank1.jsonl": 3}
    entries = [json.loads(line) for f in folder.iterdir() for line in f.read_text().splitlines()]
    assert all(e["captioner"].startswith("instructblip:") and e["caption"] for e in entries)
    # A rerun in one process finds everything.
    again = subprocess.run([sys.executable, *cli], env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0 and "0 captioned, 6 already cached" in again.stderr
