"""kcdp-export --ckpt CKPT --out EXPORT [--precision fp32|fp16|int8] [--calibration DIR] [--tensorrt] [--triton]

Exit status: 0 exported, 1 refused (parity or accuracy figures printed) or failed, 2 usage error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kcdp_core.extras import names_missing_extra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kcdp-export",
        description="Merge LoRA, export a KCDP checkpoint to validated ONNX graphs (+ TensorRT, Triton).",
    )
    p.add_argument(
        "--ckpt", required=True, type=Path, help="checkpoint folder (uses CKPT/best/ when present)"
    )
    p.add_argument("--out", required=True, type=Path, help="export folder to write")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="folder of real images (searched recursively) for parity and int8 calibration; "
        "images under <label>/ subfolders also give the int8 accuracy change. Required for int8.",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=256,
        help="real images used for parity and accuracy (default 256; 0: all)",
    )
    p.add_argument(
        "--calibration-images", type=int, default=64, help="of those, how many calibrate int8 (default 64)"
    )
    p.add_argument(
        "--captions-csv", default=None, help="path,caption CSV for the real images (non-retrieval captioners)"
    )
    p.add_argument("--last", action="store_true", help="export CKPT itself even if CKPT/best/ exists")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--min-agreement", type=float, default=0.9, help="fp16/int8: label agreement floor vs PyTorch"
    )
    p.add_argument(
        "--int8-max-drop", type=float, default=1.0, help="int8: accuracy points it may lose (labelled images)"
    )
    p.add_argument(
        "--tensorrt", action="store_true", help="also build TensorRT engines (CUDA GPU + tensorrt needed)"
    )
    p.add_argument(
        "--triton", action="store_true", help="also write a Triton model repository under EXPORT/triton"
    )
    p.add_argument("--max-batch", type=int, default=32, help="largest batch for TensorRT profiles / Triton")
    p.add_argument(
        "--no-bank-knowledge",
        action="store_true",
        help="do not precompute the caption bank's knowledge (top-1 retrieval models; the runtime then "
        "runs the text encoder per image)",
    )
    p.add_argument(
        "--keep-text-encoder",
        action="store_true",
        help="ship the text encoder beside the bank knowledge, for captions outside the bank",
    )
    p.add_argument(
        "--classes",
        nargs="+",
        metavar="LABEL",
        help="answer only these labels (the expressions the images can show); the others score 0",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty EXPORT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json", action="store_true", help="print the manifest's parity summary as JSON on stdout"
    )
    return p


@names_missing_extra("kcdp-export")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kcdp_export.exporter import ExportError, ExportOptions, export_checkpoint
    from kcdp_export.validate import ParityError

    options = ExportOptions(
        precision=args.precision,
        calibration=args.calibration,
        max_images=args.max_images,
        calibration_images=args.calibration_images,
        captions_csv=args.captions_csv,
        opset=args.opset,
        use_last=args.last,
        min_agreement=args.min_agreement,
        int8_max_drop=args.int8_max_drop,
        tensorrt=args.tensorrt,
        triton=args.triton,
        max_batch=args.max_batch,
        overwrite=args.overwrite,
        seed=args.seed,
        bank_knowledge=not args.no_bank_knowledge,
        keep_text_encoder=args.keep_text_encoder,
        classes=tuple(args.classes) if args.classes else None,
    )
    try:
        manifest = export_checkpoint(args.ckpt, args.out, options)
    except ParityError as exc:
        print(f"kcdp-export: {exc}", file=sys.stderr)
        return 1
    except (ExportError, FileNotFoundError, ValueError) as exc:
        print(f"kcdp-export: error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "out": str(args.out),
        "precision": manifest["precision"],
        "parity": manifest["parity"],
        "end_to_end": manifest["end_to_end"],
        "int8_accuracy_change": manifest["int8_accuracy_change"],
        "timings_s": manifest["timings_s"],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for name, figures in manifest["parity"].items():
            agree = figures.get("label_agreement")
            agree = "" if agree is None else f", label agreement {agree:.4f}"
            print(f"{name}: max abs diff {figures['max_abs_diff']:.3g}{agree} ({figures['inputs']})")
        print(f"exported to {args.out} in {sum(manifest['timings_s'].values()):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
