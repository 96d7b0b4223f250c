"""kcdp-knowledge: fill the knowledge cache for a folder of images, or parse sentences into triplets.

    kcdp-knowledge parse TEXT... [--json]
    kcdp-knowledge DIR [--preset P | --ckpt CKPT] [--captions-csv F] [--cache DIR] [--batch-size N]

Exit status: 0 on success, 1 if any image failed (the others are still cached), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def default_cache_dir() -> Path:
    """$KCDP_CACHE/knowledge (default ~/.cache/kcdp/knowledge), where training reads it."""
    return Path(os.environ.get("KCDP_CACHE", Path.home() / ".cache" / "kcdp")) / "knowledge"


def list_images(folder: Path) -> list[Path]:
    """Image files under a folder (recursively: DIR/<label>/<image> datasets), in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def parse_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="kcdp-knowledge parse", description="Knowledge triplets of sentences.")
    ap.add_argument("texts", nargs="+", metavar="TEXT")
    ap.add_argument("--json", action="store_true", help="one JSON object per sentence and line")
    ap.add_argument("--model", default="en_core_web_sm", help="spaCy model (default: en_core_web_sm)")
    args = ap.parse_args(argv)
    from kcdp_core.knowledge.triplets import TripletParser

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
    from kcdp_core.knowledge.triplets import TripletParser

    try:
        config = KCDPConfig.load(args.ckpt) if args.ckpt else preset(args.preset or "mini")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"kcdp-knowledge: {exc}", file=sys.stderr)
        return 2
    paths = list_images(args.dir)
    if not paths:
        print(f"kcdp-knowledge: {args.dir}: no images found", file=sys.stderr)
        return 2
    try:
        captioner = build_captioner(config, captions_csv=args.captions_csv, device=args.device)
        parser = TripletParser(config.knowledge.parser_model)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        print(f"kcdp-knowledge: {exc}", file=sys.stderr)
        return 2
    cache = KnowledgeCache(args.cache or default_cache_dir())
    report = cache.fill(paths, captioner, parser, batch_size=args.batch_size, progress=not args.no_progress)
    for _, message in report.errors:
        print(f"error: {message}", file=sys.stderr)
    print(
        f"{len(paths)} images: {report.added} captioned, {report.skipped} already cached, "
        f"{len(report.errors)} failed -> {cache.path}",
        file=sys.stderr,
    )
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "parse":
        return parse_main(argv[1:])
    return fill_main(argv)


if __name__ == "__main__":
    sys.exit(main())
