"""kcdp-adapt TARGET_DIR --out EXPORT: adapt a trained model to unlabelled images and export it.

Exit status: 0 adapted and exported; 1 failed (bad input, export refused); 2 usage error;
3 the source check set lost more than --max-drop points (nothing exported unless --force: the
adapted checkpoint and its report stay in the work folder, and `--force --resume` exports them
without training again)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kcdp_core.extras import names_missing_extra
from kcdp_core.process_group import leave

EXIT_DROP = 3

EPILOG = """\
How --minutes is kept: the first pass of the starting model over the target and the source check
set measures the seconds per image on this machine; a training step (one source and one target
batch) is priced from it, a reserve is kept for AdaBN, the head refit, the after-diagnostics and
the export, and the run trains the fixed number of epochs (4, --epochs) on the most source images
per class and style that fit what is left. The plan is printed, saved in the work folder (a
--resume trains exactly it) and recorded in adaptation.json. --per-class skips the budget.

Exit status: 0 exported; 1 failed; 2 usage error; 3 the source check set lost more than --max-drop
points (nothing exported; --force --resume exports the finished run without training again).

On a GPU, run the same command under `accelerate launch -m kcdp_export.adapt ...`.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kcdp-adapt",
        description="Adapt a trained KCDP model (default: the shipped one) to a folder of unlabelled "
        "images (any layout; labels and names are never read) in the DA setting, then export it for "
        "kcdp-infer / kcdp-serve --model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", type=Path, help="folder of unlabelled images (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="export folder to write")
    p.add_argument("--model", default=None, help="starting checkpoint folder (default: the shipped model)")
    p.add_argument(
        "--source",
        action="append",
        type=Path,
        default=[],
        help="labelled source DIR/<label>/<image> or CSV path,label (repeatable); default: the starting "
        "model's recipe, built by kcdp-data into $KCDP_CACHE/adapt/sources on first use",
    )
    p.add_argument("--minutes", type=float, default=15.0, help="time budget of the whole run (default 15)")
    p.add_argument("--no-budget", action="store_true", help="no time budget: every source image")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    p.add_argument("--epochs", type=int, help="epochs per round (default 4)")
    p.add_argument("--per-class", type=int, help="source images per class and style (default: the budget's)")
    p.add_argument("--rounds", type=int, default=1, help="self-training rounds (each restarts from the last)")
    p.add_argument(
        "--consistency", type=float, default=0.0, help="weight of the two-view consistency term (0 off)"
    )
    p.add_argument(
        "--pseudo-select",
        choices=("class_quota", "class_fraction", "all"),
        default="class_quota",
        help="which pseudo-labels train: per class the most confident share, no class above an equal "
        "share (class_quota, default), in the predicted proportions (class_fraction), or all",
    )
    p.add_argument("--lr", type=float, help="learning rate of the pretrained parts (default 5e-6)")
    p.add_argument("--head-lr", type=float, help="learning rate of the heads (default 2.5e-5)")
    p.add_argument(
        "--target-weight", type=float, default=0.3, help="weight of the pseudo-labelled target loss (lambda2; default 0.3)"
    )
    p.add_argument(
        "--classes",
        nargs="+",
        metavar="LABEL",
        help="the labels the target's images can show, if you know them (e.g. a sticker set drawn with four "
        "expressions): pseudo-labels and the export answer these alone (default: every label)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-drop",
        type=float,
        default=5.0,
        help="source check-set points (accuracy or macro-F1) the adaptation may lose (default 5)",
    )
    p.add_argument("--force", action="store_true", help="export even past --max-drop")
    p.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="last, refit the head on the target's class centroids beside the source sample (default: on; "
        "--no-refit exports the adapted head as it is)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the killed (or finished) run of these arguments"
    )
    p.add_argument(
        "--work", type=Path, help="work folder (default $KCDP_CACHE/adapt/runs/<key of the arguments>)"
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@names_missing_extra("kcdp-adapt")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or (args.epochs is not None and args.epochs < 1) or args.minutes <= 0:
        print("kcdp-adapt: --rounds, --epochs and --minutes must be positive", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from accelerate import PartialState

    from kcdp_core.train.adapt import DEFAULT_MODEL, AdaptError, AdaptOptions, adapt, format_report
    from kcdp_export.exporter import ExportError, ExportOptions, export_checkpoint
    from kcdp_export.validate import ParityError

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    options = AdaptOptions(
        target=args.target,
        model=args.model or DEFAULT_MODEL,
        sources=list(args.source),
        minutes=None if args.no_budget else args.minutes,
        epochs=args.epochs,
        per_class=args.per_class,
        rounds=args.rounds,
        consistency=args.consistency,
        classes=tuple(args.classes) if args.classes else None,
        pseudo_select=args.pseudo_select,
        lr=args.lr,
        head_lr=args.head_lr,
        target_weight=args.target_weight,
        seed=args.seed,
        max_drop=args.max_drop,
        refit=args.refit,
        work=args.work,
        resume=args.resume,
        progress=not args.quiet,
    )
    t0 = time.time()
    try:
        result = adapt(options, log=log)
    except (AdaptError, ValueError, FileNotFoundError) as exc:
        print(f"kcdp-adapt: {exc}", file=sys.stderr)
        return 1
    if not PartialState().is_main_process:  # under `accelerate launch`, the first process exports
        return leave(0, PartialState().num_processes)
    report = result.report
    log(format_report(report))
    if result.dropped and not args.force:
        drop = report["diagnostics"]["source_check_drop_points"]
        print(
            f"kcdp-adapt: WARNING: the source check set lost {max(drop.values()):.1f} points "
            f"(more than --max-drop {args.max_drop}): the adapted model forgot what it knew. Nothing was "
            f"exported; the checkpoint and adaptation.json are in {result.work}. Rerun the same command "
            "with --force --resume to export it anyway (no training again).",
            file=sys.stderr,
        )
        return EXIT_DROP
    out = args.out
    export_options = ExportOptions(
        precision=args.precision,
        calibration=result.calibration,
        max_images=0,  # the calibration folder is the sample: all of it
        calibration_images=64,
        overwrite=(out / "adaptation.json").is_file(),  # replaces an earlier kcdp-adapt export only
        seed=args.seed,
        classes=options.classes,
    )
    tic = time.time()
    try:
        manifest = export_checkpoint(result.checkpoint, out, export_options)
    except (ExportError, ParityError, ValueError) as exc:
        print(f"kcdp-adapt: export refused: {exc}", file=sys.stderr)
        return 1
    report["export"] = {
        "precision": args.precision,
        "seconds": round(time.time() - tic, 1),
        "end_to_end": manifest.get("end_to_end"),
    }
    report["time_s"]["total"] = round(time.time() - t0, 1)
    if result.dropped:
        report["forced_past_drop"] = True
    (out / "adaptation.json").write_text(json.dumps(report, indent=1) + "\n")
    log(
        f"exported {out} ({args.precision}) in {report['time_s']['total']:.0f} s; "
        f"report {out / 'adaptation.json'}"
    )
    print(
        json.dumps({"export": str(out), "report": str(out / "adaptation.json"), "time_s": report["time_s"]})
    )
    return leave(0, PartialState().num_processes)  # everything is written


if __name__ == "__main__":
    raise SystemExit(main())
