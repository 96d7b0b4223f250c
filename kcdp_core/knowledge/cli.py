"""kcdp-knowledge: fill the knowledge cache for a folder of images, or parse sentences into triplets.

    kcdp-knowledge parse TEXT... [--json]
    kcdp-knowledge DIR [--preset P | --ckpt CKPT] [--captions-csv F] [--cache DIR] [--batch-size N]
    accelerate launch [--num_processes N] -m kcdp_core.knowledge.cli DIR --preset sd15

Under `accelerate launch` (or torchrun) the images are split over the processes; each captions its
share on its own device and appends to its own cache file (knowledge.rank<i>.jsonl), and every
reader reads all the files together. A killed process loses at most its batch in flight; a rerun,
with any number of processes, captions only what no file holds yet.

Exit status: 0 on success, 1 if any image failed (the others are still cached), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from kcdp_core.extras import names_missing_extra
from kcdp_core.portable.constants import IMAGE_SUFFIXES, cache_root
from kcdp_core.process_group import leave


def default_cache_dir() -> Path:
    """$KCDP_CACHE/knowledge (default ~/.cache/kcdp/knowledge), where training reads it."""
    return cache_root() / "knowledge"


def list_images(folder: Path) -> list[Path]:
    """Image files under a folder (recursively: DIR/<label>/<image> datasets), in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def parse_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="kcdp-knowledge parse", description="Knowledge triplets of sentences.")
    ap.add_argument("texts", nargs="+", metavar="TEXT")
    ap.add_argument("--json", action="store_true", help="one JSON object per sentence and line")
    ap.add_argument("--model", default="en_core_web_sm", help="spaCy model (default: en_core_web_sm)")
    args = ap.parse_args(argv)
    from kcdp_core.portable.triplets import TripletParser

    try:
        parser = TripletParser(args.model)
    except RuntimeError as exc:
        print(f"kcdp-knowledge: {exc}", file=sys.stderr)
        return 2
    for text, triplets in zip(args.texts, parser.parse_many(args.texts), strict=True):
        if args.json:
            print(json.dumps({"text": text, "triplets": [list(t) for t in triplets]}, ensure_ascii=False))
        else:
            print(text)
            for s, v, o in triplets:
                print(f"  {s} - {v} - {o}")
    return 0


def fill_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="kcdp-knowledge",
        description="Caption every image of DIR, parse its triplets and store both in the knowledge cache "
        "(resumable: what is cached is skipped). `kcdp-knowledge parse TEXT...` parses sentences.",
    )
    ap.add_argument("dir", type=Path, metavar="DIR", help="a folder of images (searched recursively)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--preset", default=None, help="sd15 | mini | tiny (default: mini)")
    which.add_argument("--ckpt", type=Path, default=None, help="a checkpoint folder: its config's captioner")
    ap.add_argument("--captions-csv", type=Path, default=None, help="path,caption CSV: use these captions")
    ap.add_argument("--cache", type=Path, default=None, help=f"cache folder (default {default_cache_dir()})")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument(
        "--device", default=None, help="torch device for the captioner (default: cuda if available)"
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    if not args.dir.is_dir():
        print(f"kcdp-knowledge: {args.dir}: not a folder", file=sys.stderr)
        return 2
    from kcdp_core.config import KCDPConfig, preset
    from kcdp_core.knowledge.cache import KnowledgeCache
    from kcdp_core.knowledge.captioners import build_captioner
    from kcdp_core.portable.triplets import TripletParser

    try:
        config = KCDPConfig.load(args.ckpt) if args.ckpt else preset(args.preset or "mini")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"kcdp-knowledge: {exc}", file=sys.stderr)
        return 2
    paths = list_images(args.dir)
    if not paths:
        print(f"kcdp-knowledge: {args.dir}: no images found", file=sys.stderr)
        return 2
    shard = Shard.from_environment()
    mine = shard.split(paths)
    try:
        device = args.device or shard.device
        captioner = build_captioner(config, captions_csv=args.captions_csv, device=device)
        parser = TripletParser(config.knowledge.parser_model)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        print(f"kcdp-knowledge: {exc}", file=sys.stderr)
        return 2
    cache = KnowledgeCache(args.cache or default_cache_dir(), shard=shard.name)
    progress = not args.no_progress and shard.index == 0
    report = cache.fill(mine, captioner, parser, batch_size=args.batch_size, progress=progress)
    for _, message in report.errors:
        print(f"error: {message}", file=sys.stderr)
    added, skipped, failed = shard.total([report.added, report.skipped, len(report.errors)])
    if shard.index == 0:  # one voice: the totals over every process
        where = cache.folder if shard.count > 1 else cache.path
        print(
            f"{len(paths)} images: {added} captioned, {skipped} already cached, {failed} failed -> {where}"
            + (f" ({shard.count} processes)" if shard.count > 1 else ""),
            file=sys.stderr,
        )
    return leave(0 if report.ok else 1, shard.count)  # every batch is written and closed


class Shard:
    """This process's share of the images: everything when alone, a contiguous slice (accelerate's
    split_between_processes) under `accelerate launch` / torchrun."""

    def __init__(self, index: int = 0, count: int = 1, device: str | None = None, state: Any = None):
        self.index, self.count, self.device, self.state = index, count, device, state

    @classmethod
    def from_environment(cls) -> Shard:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState  # training extra: only distributed runs need it

        # Without cpu=True accelerate ignores the process group on a machine with no GPU.
        state = PartialState(cpu=not torch.cuda.is_available())
        device = str(state.device) if state.device.type != "cpu" else "cpu"
        return cls(state.process_index, state.num_processes, device, state)

    @property
    def name(self) -> str | None:
        """The cache file suffix: None (knowledge.jsonl) for a single process."""
        return None if self.count == 1 else f"rank{self.index}"

    def split(self, paths: list[Path]) -> list[Path]:
        if self.state is None:
            return paths
        with self.state.split_between_processes(paths) as mine:
            return list(mine)

    def total(self, counts: list[int]) -> list[int]:
        """Counts summed over the processes (after all of them finished)."""
        if self.state is None:
            return counts
        from accelerate.utils import gather_object

        self.state.wait_for_everyone()
        gathered = gather_object([counts])
        return [sum(c[i] for c in gathered) for i in range(len(counts))]


@names_missing_extra("kcdp-knowledge")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "parse":
        return parse_main(argv[1:])
    return fill_main(argv)


if __name__ == "__main__":
    sys.exit(main())
