"""kcdp-bench latency|accuracy: the latency and accuracy benchmarks of kcdp exports (the command line)."""

from __future__ import annotations

import argparse
import sys

from kcdp_bench.export_accuracy import accuracy
from kcdp_bench.latency import FIGURES, RESULTS, eager_time, latency
from kcdp_core.extras import names_missing_extra
from kcdp_runtime.manifest import ModelError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kcdp-bench", description="Latency and accuracy benchmarks of kcdp exports."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    lat = sub.add_parser("latency", help="per-stage latency: PyTorch eager vs ONNX fp32 vs ONNX int8")
    lat.add_argument("--model", required=True, help="fp32 export folder")
    lat.add_argument("--ckpt", help="the checkpoint it came from (enables torch-eager and calibrated int8)")
    lat.add_argument("--int8", help="an int8 export folder to use instead of making one")
    lat.add_argument("--no-int8", action="store_true", help="skip the int8 engine")
    lat.add_argument("--no-memo", action="store_true", help="skip the +memo engine")
    lat.add_argument("--baseline", help="an earlier export timed in turns with the others (before/after)")
    lat.add_argument("--images", required=True, help="folder of images (searched recursively)")
    lat.add_argument("--limit", type=int, default=64, help="distinct images used")
    lat.add_argument("--count", type=int, default=64, help="images timed per engine and batch size")
    lat.add_argument("--batch-sizes", default="1,8")
    lat.add_argument(
        "--threads", type=int, default=0, help="intra-op threads for onnxruntime and torch (0: default)"
    )
    lat.add_argument("--cold-repeats", type=int, default=3)
    lat.add_argument(
        "--results", default=str(RESULTS), help="markdown file the table is appended to ('-': none)"
    )
    lat.add_argument(
        "--figure", help=f"plot path (default {FIGURES}/latency_<preset>.png; none with --results -)"
    )
    lat.add_argument("--json", action="store_true", help="print the full report as JSON")
    acc = sub.add_parser("accuracy", help="accuracy and macro-F1 of an export on DIR/<label>/<image>")
    acc.add_argument("--model", required=True)
    acc.add_argument("--data", required=True)
    acc.add_argument("--batch-size", type=int, default=8)
    acc.add_argument(
        "--pack", metavar="SIZE|all", type=_pack_size,
        help="answer the images in seeded random packs of SIZE (or all as one), as kcdp-infer --pack; the "
        "answers alone are scored too (*_alone)",
    )  # fmt: skip
    # latency --ckpt times the PyTorch engine in a process of its own through this
    timing = sub.add_parser("_eager-time", help=argparse.SUPPRESS)
    timing.add_argument("--ckpt", required=True)
    timing.add_argument("--batch-sizes", default="1,8")
    timing.add_argument("--count", type=int, default=64)
    timing.add_argument("--threads", type=int, default=0)
    timing.add_argument("images", nargs="+")
    return parser


COMMANDS = {"latency": latency, "accuracy": accuracy, "_eager-time": eager_time}


@names_missing_extra("kcdp-bench")
def _pack_size(text: str) -> str | int:
    if text == "all" or (text.isdigit() and int(text) >= 1):
        return text if text == "all" else int(text)
    raise argparse.ArgumentTypeError(f"a pack size is a whole number of images or 'all', got {text!r}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except ModelError as exc:  # a model folder the runtime cannot load: what to do, not a traceback
        print(f"kcdp-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
