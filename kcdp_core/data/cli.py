"""`kcdp-data`: build the benchmarks and pretraining corpora.

    kcdp-data emoji --out DIR [--size 64] [--domains apple,google,...] [--cache DIR] [--no-corpus]
                    [--workers N] [--offline]
    kcdp-data avatars --out DIR [--per-class 200] [--size 128] [--workers N] [--corpus-per-style 1500]
                      [--seed-start 0] [--emoji EMOJI_DIR] [--key CSV]
                      [--styles benchmark|extra|labelled|heldout] [--contact-sheet PNG]
    kcdp-data procedural --out DIR [--per-class 300] [--size 128] [--seed-start 0] [--workers N]
                         [--contact-sheet PNG] [--styles K [--style-start 0]]

Exit status: 0 built, 1 a package could not be fetched/verified or images failed, 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kcdp_core.data.avatar_key import STYLE_SETS
from kcdp_core.data.emoji_sources import DOMAINS
from kcdp_core.data.npm_cache import FetchError
from kcdp_core.data.tarball import TarballError
from kcdp_core.extras import EXIT_USAGE, names_missing_extra


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kcdp-data", description="Build KCDP datasets from npm emoji packages.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("emoji", help="the emoji cross-style benchmark + pretraining corpus")
    e.add_argument("--out", required=True, type=Path, help="output folder")
    e.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    e.add_argument(
        "--domains",
        default=None,
        help=f"comma list of domains (default all): {','.join(DOMAINS)}",
    )
    e.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="tarball cache (default $KCDP_CACHE/npm or ~/.cache/kcdp/npm)",
    )
    e.add_argument("--no-corpus", action="store_true", help="build the benchmark only")
    e.add_argument("--workers", type=int, default=None, help="render processes (default min(2, cores))")
    e.add_argument("--offline", action="store_true", help="never run npm; use the cache only")
    a = sub.add_parser("avatars", help="the drawn-faces benchmark + avatar corpus (DiceBear)")
    a.add_argument("--out", required=True, type=Path, help="output folder")
    a.add_argument("--per-class", type=int, default=200, help="benchmark images per class and style (200)")
    a.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    a.add_argument("--workers", type=int, default=None, help="render processes (default min(2, cores))")
    a.add_argument(
        "--corpus-per-style", type=int, default=1500, help="corpus images per corpus style (1500; 0: none)"
    )
    a.add_argument(
        "--seed-start", type=int, default=0, help="first seed number: fresh avatars for a held-out test set"
    )
    a.add_argument(
        "--emoji", type=Path, default=None, help="kcdp-data emoji output: adds it to the task sources"
    )
    a.add_argument("--key", type=Path, default=None, help="label key CSV (default: the package's)")
    a.add_argument(
        "--styles",
        choices=sorted(STYLE_SETS),
        default="benchmark",
        help="benchmark: the five styles + corpus + tasks (default); extra: labelled corpus styles for "
        "training; labelled: further styles labelled by eye for training (training_styles.csv lists "
        "every training style); heldout: test-only styles never trained or tuned on (these three: no "
        "corpus, no tasks)",
    )
    a.add_argument(
        "--contact-sheet", type=Path, default=None, help="also write a PNG: one row per style and class"
    )
    f = sub.add_parser(
        "procedural", help="procedurally drawn faces: FACS-like expression geometry, everything else random"
    )
    f.add_argument("--out", required=True, type=Path, help="output folder: DIR/<label>/<n>.png")
    f.add_argument("--per-class", type=int, default=300, help="faces per class (300)")
    f.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    f.add_argument("--seed-start", type=int, default=0, help="first face number: fresh faces for a test set")
    f.add_argument("--workers", type=int, default=None, help="render processes (default min(2, cores))")
    f.add_argument(
        "--styles",
        type=int,
        default=None,
        help="draw K styles, each face of one sharing its look: DIR/domains/procedural-<n>/<label>/ (targets "
        "for label-free adaptation that no model has seen)",
    )
    f.add_argument("--style-start", type=int, default=0, help="number of the first style (0)")
    f.add_argument(
        "--contact-sheet",
        type=Path,
        default=None,
        help="also write a PNG, one row per class (outside --out: a PNG there would be read as a face)",
    )
    return p


@names_missing_extra("kcdp-data")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "avatars":
        return _avatars(args)
    if args.command == "procedural":
        return _procedural(args)
    from kcdp_core.data.emoji_build import build_emoji  # heavy imports only once arguments are valid

    domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    t0 = time.perf_counter()
    try:
        res = build_emoji(
            args.out,
            domains=domains,
            size=args.size,
            cache_dir=args.cache,
            corpus=not args.no_corpus,
            workers=args.workers,
            offline=args.offline,
        )
    except (TarballError, FetchError, RuntimeError, OSError) as e:
        # A package that cannot be fetched/verified/read, a missing renderer, a disk problem.
        print(f"kcdp-data: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # bad arguments (unknown domain, size)
        print(f"kcdp-data: error: {e}", file=sys.stderr)
        return 2
    for d, n in res.domain_counts.items():
        miss = res.missing.get(d) or []
        extra = f" (missing {len(miss)}: {' '.join(miss)})" if miss else ""
        print(f"{d:15s} {n:3d} benchmark images{extra}")
    print(f"corpus: {res.corpus_size} captioned images from {len(res.corpus_counts)} domains")
    if res.reused:
        print(f"reused from the previous build: {', '.join(res.reused)}")
    for skip in res.skipped:
        print(f"skipped: {skip}")
    for err in res.errors:
        print(f"error: {err}", file=sys.stderr)
    print(f"built {args.out} in {time.perf_counter() - t0:.1f} s")
    return 1 if res.errors else 0


def _avatars(args: argparse.Namespace) -> int:
    from kcdp_core.data.avatar_build import build_avatars, contact_sheet

    try:
        res = build_avatars(
            args.out,
            per_class=args.per_class,
            size=args.size,
            workers=args.workers,
            corpus_per_style=args.corpus_per_style if args.styles == "benchmark" else 0,
            seed_start=args.seed_start,
            emoji=args.emoji,
            key_path=args.key,
            style_set=args.styles,
        )
    except (RuntimeError, OSError) as e:
        print(f"kcdp-data: error: {e}", file=sys.stderr)
        # a library of the train extra missing is a usage error (exit 2), as for every command
        return EXIT_USAGE if isinstance(e.__cause__, ModuleNotFoundError) else 1
    except ValueError as e:  # a bad key row or argument: nothing was written
        print(f"kcdp-data: error: {e}", file=sys.stderr)
        return 2
    for style, counts in res.counts.items():
        print(
            f"{style:12s} {sum(counts.values()):5d} images  "
            + " ".join(f"{k} {v}" for k, v in counts.items())
        )
    if res.corpus_counts:
        print(
            f"corpus: {sum(res.corpus_counts.values())} captioned avatars from {len(res.corpus_counts)} styles"
        )
    for err in res.errors:
        print(f"error: {err}", file=sys.stderr)
    if args.contact_sheet:
        print(f"contact sheet: {contact_sheet(args.out, args.contact_sheet)}")
    print(f"built {args.out} in {res.seconds:.1f} s")
    return 1 if res.errors else 0


def _procedural(args: argparse.Namespace) -> int:
    from kcdp_core.data.procedural_faces import (
        build_procedural,
        build_styles,
        contact_sheet,
        styles_contact_sheet,
    )

    if args.contact_sheet and args.contact_sheet.resolve().is_relative_to(args.out.resolve()):
        print("kcdp-data: error: --contact-sheet must lie outside --out", file=sys.stderr)
        return 2
    options = {
        "per_class": args.per_class,
        "size": args.size,
        "seed_start": args.seed_start,
        "workers": args.workers,
    }
    try:
        if args.styles is None:
            results = [build_procedural(args.out, **options)]
        else:
            results = build_styles(args.out, args.styles, args.style_start, **options)
    except OSError as e:
        print(f"kcdp-data: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"kcdp-data: error: {e}", file=sys.stderr)
        return 2
    for res in results:
        print(f"{res.out.name}: " + " ".join(f"{label} {n}" for label, n in res.counts.items()))
    if args.contact_sheet:
        sheet = contact_sheet if args.styles is None else styles_contact_sheet
        print(f"contact sheet: {sheet(args.out, args.contact_sheet)}")
    print(f"built {args.out} in {sum(res.seconds for res in results):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
