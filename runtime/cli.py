"""kcdp-infer IMAGE... [--model CKPT_OR_EXPORT] [--json] [--batch-size N]: classify images.

An export runs on onnxruntime without torch; a training checkpoint runs the same stages in PyTorch
(kcdp_export.checkpoint, found through the `kcdp.openers` entry point, so this package never imports
torch or kcdp_export) where the training install is present, else the message says to export it.

Arguments may be files, directories (searched recursively for images: PNG, JPEG, GIF, WebP, BMP,
TIFF, SVG) or glob patterns. With --json, one JSON object per image and line: {"image", "label",
"scores", "caption", "triplets", "latency_ms"} (and "frames" for an animation) or {"image",
"error"}. With --pack the images are answered together as one style's (kcdp_runtime.packs): each
result adds "image_label" (its answer alone) and "pack" (how many were answered together). Exit
status 0 if every image succeeded, 1 if any failed, 2 for usage errors (including a model that
cannot be loaded), 141 when the reader of the output went away (`| head -1`).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from kcdp_core.portable.constants import IMAGE_SUFFIXES
from kcdp_core.portable.images import MAX_FRAMES
from kcdp_runtime.manifest import ModelError, default_model, is_checkpoint
from kcdp_runtime.packs import PACK_MIN

# The shell's status for a writer whose reader closed the pipe (128 + SIGPIPE).
BROKEN_PIPE_STATUS = 141
# The image argument that stands for one image's bytes on standard input (`curl -s URL | kcdp-infer -`).
STDIN = "-"


def expand_inputs(args: list[str]) -> Iterator[tuple[str, str | None]]:
    """(name, error or None) per image: directories are walked, globs expanded, order kept; "-" is
    standard input."""
    for arg in args:
        path = Path(arg)
        if arg == STDIN:
            yield arg, None
        elif path.is_dir():
            yield from _walk(path)
        elif path.exists() or not glob.has_magic(arg):
            yield arg, None  # a missing plain path gets its "no such file" from the loader
        else:
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                yield arg, f"{arg}: no file matches this pattern"
            for match in matches:
                if Path(match).is_dir():
                    yield from _walk(Path(match))
                else:
                    yield match, None


def _source(name: str) -> str | bytes:
    """What the pipeline reads for an image argument: the file's name, or standard input's bytes."""
    return sys.stdin.buffer.read() if name == STDIN else name


def _walk(folder: Path) -> Iterator[tuple[str, str | None]]:
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        yield str(folder), f"{folder}: directory holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
    for p in found:
        yield str(p), None


CLASSES_HELP = (
    "answer only these labels (the expressions your images can show; default: the model's own list): "
    "the others score 0"
)


def open_pipeline(
    model: str | None, providers: str | None, threads: int, prog: str, classes: list[str] | None = None
):
    """The Pipeline of an export folder (the default model when None), answering only `classes` when
    given, or None after printing why."""
    from kcdp_runtime.pipeline import Pipeline  # after argparse: --help stays instant
    from kcdp_runtime.sessions import SessionConfig

    config = SessionConfig(providers=providers.split(",") if providers else None, intra_op_threads=threads)
    try:
        folder = resolve_model(model)
        opener = checkpoint_opener() if is_checkpoint(folder) else None
        if opener is not None:
            # A training checkpoint where the training install is present: the same stages, run eagerly.
            pipe = opener(folder, session_config=config)
        else:
            pipe = Pipeline.from_pretrained(folder, session_config=config)
        if classes:
            pipe.answer_only(classes)
        return pipe
    except ModelError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None


def checkpoint_opener():
    """kcdp_export's eager checkpoint pipeline, registered as an entry point; None without torch."""
    from importlib.metadata import entry_points

    if importlib.util.find_spec("torch") is None:
        return None
    found = entry_points(group="kcdp.openers", name="checkpoint")
    return next(iter(found)).load() if found else None


def resolve_model(model: str | None) -> Path:
    return Path(model) if model is not None else default_model()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kcdp-infer", description="Classify the emotion of images (torch-free, onnxruntime)."
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, directories, glob patterns, or - for one image read from standard input",
    )
    parser.add_argument(
        "--model",
        help="export folder (default: the embedded model), or a training checkpoint (run eagerly; needs torch)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per image and line")
    parser.add_argument("--batch-size", type=_positive, default=8, help="images per batch in every stage")
    parser.add_argument(
        "--providers", help="comma list of execution providers (tensorrt,cuda,cpu); default: best"
    )
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: auto)")
    parser.add_argument(
        "--max-frames", type=_positive, default=MAX_FRAMES,
        help="frames classified per animated GIF/WebP/PNG, spread through it (1: the first frame only)",
    )  # fmt: skip
    parser.add_argument("--classes", nargs="+", metavar="LABEL", help=CLASSES_HELP)
    parser.add_argument(
        "--pack", action="store_true",
        help=f"the images are one style's (a sticker pack, an avatar set): answer them together "
        f"(at least {PACK_MIN} readable images; the results come after all of them ran)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no log line on stderr")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _classify(args)
    except BrokenPipeError:
        # The reader went away (`kcdp-infer DIR --json | head -1`): stop quietly. stdout goes to
        # /dev/null so that the interpreter's flush at exit does not report the broken pipe again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_STATUS


def _classify(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="kcdp-infer: %(message)s",
        stream=sys.stderr,
    )
    pipe = open_pipeline(args.model, args.providers, args.threads, "kcdp-infer", args.classes)
    if pipe is None:
        return 2
    pipe.max_frames = args.max_frames
    # a retrieval captioner's caption is the bank's nearest, not a description of the image: say so
    caption_is = "nearest bank caption" if getattr(pipe.captioner, "name", "") == "retrieval" else "caption"
    if args.pack:
        return _classify_pack(pipe, args, caption_is)
    failed = False
    pending: list[str] = []

    def flush() -> None:
        nonlocal failed
        if pending:
            sources = [_source(name) for name in pending]
            for result in pipe.run(sources, names=pending, batch_size=args.batch_size):
                failed |= _emit(result, args.json, caption_is)
            pending.clear()

    for name, error in expand_inputs(args.images):
        if error is not None:
            flush()  # keep output in argument order
            failed |= _emit({"image": name, "error": error}, args.json, caption_is)
        else:
            pending.append(name)
            if len(pending) >= args.batch_size:
                flush()
    flush()
    return 1 if failed else 0


def _classify_pack(pipe, args: argparse.Namespace, caption_is: str) -> int:
    """Every image named, run as one pack; the results printed in argument order."""
    entries = list(expand_inputs(args.images))
    names = [n for n, e in entries if e is None]
    sources = [_source(n) for n in names]
    results = iter(pipe.run(sources, names=names, batch_size=args.batch_size, pack=True))
    failed = alone = False
    for name, error in entries:
        result = {"image": name, "error": error} if error is not None else next(results)
        failed |= _emit(result, args.json, caption_is)
        alone |= result.get("pack") == 0
    if alone:
        print(f"kcdp-infer: --pack: fewer than {PACK_MIN} readable images, each was answered alone", file=sys.stderr)
    return 1 if failed else 0


def _emit(result: dict, as_json: bool, caption_is: str = "caption") -> bool:
    """Print one result; True if it is an error."""
    if as_json:
        print(json.dumps(result, ensure_ascii=False), flush=True)
    elif "error" in result:
        print(f"error: {result['error']}", file=sys.stderr, flush=True)
    else:
        alone = result.get("image_label", result["label"])
        answer = f"{alone} ({result['scores'][alone]:.2f})"
        if result.get("pack"):  # the pack's answer, then the image's own
            answer = f"{result['label']} (pack of {result['pack']}; alone {answer})"
        frames = result.get("frames")
        seen = f"  ({len(frames['classified'])} of {frames['count']} frames)" if frames else ""
        print(
            f"{result['image']}: {answer}{seen}  "
            f"{caption_is}: {result['caption']!r}  {result['latency_ms']['total']:.1f} ms",
            flush=True,
        )
    return "error" in result


if __name__ == "__main__":
    sys.exit(main())
