"""kcdp-train and kcdp-eval command lines."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kcdp_core.config import KCDPConfig, preset
from kcdp_core.extras import names_missing_extra
from kcdp_core.process_group import leave


def _config_from_args(args: argparse.Namespace) -> KCDPConfig:
    from kcdp_core.portable.labels import resolve_labels

    kwargs = {}
    if args.labels:
        kwargs["labels"] = resolve_labels(args.labels)
    if args.foundation and args.preset == "tiny":
        kwargs["foundation"] = args.foundation
    config = KCDPConfig.load(args.config) if args.config else preset(args.preset, **kwargs)
    if args.foundation and args.preset != "tiny":
        config = config.with_foundation(args.foundation)
    train: dict = {"setting": args.setting}
    for flag, key in (
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("head_lr", "head_lr"),
        ("seed", "seed"),
        ("grad_accum", "grad_accum"),
        ("val_fraction", "val_fraction"),
        ("lambda1", "lambda1"),
        ("lambda2", "lambda2"),
        ("pseudo_labels", "pseudo_labels"),
        ("pseudo_select", "pseudo_select"),
        ("pseudo_fraction", "pseudo_fraction"),
        ("pseudo_fraction_end", "pseudo_fraction_end"),
        ("pseudo_warmup_epochs", "pseudo_warmup_epochs"),
        ("warmup_ratio", "warmup_ratio"),
        ("weight_decay", "weight_decay"),
        ("num_workers", "num_workers"),
    ):
        value = getattr(args, flag)
        if value is not None:
            train[key] = value
    if args.pseudo_labels == "batch" and args.pseudo_select is None:
        train["pseudo_select"] = "all"  # a selection needs the whole target: per batch keeps all
    if args.pseudo_agreement:
        train["pseudo_agreement"] = True
    # Switches and choices outside the plain train fields: (section, key, value when given).
    extra = (
        ("train", "augment", False if args.no_augment else None),
        ("train", "balanced_sampling", True if args.balanced else None),
        ("train", "balance_styles", True if args.balance_styles else None),
        ("train", "target_bn", args.target_bn),
        ("perception", "finetune", args.finetune or None),
        ("perception", "mix_style", args.mix_style),
        ("perception", "face_view", args.face_view),
        ("head", "classifier", args.classifier or None),
        ("head", "use_knowledge", False if args.no_knowledge_head else None),
        ("knowledge", "use_triplets", False if args.no_triplets else None),
        ("knowledge", "use_caption", False if args.no_caption else None),
        ("cliea", "threshold", args.threshold),
        ("cliea", "ccl", args.ccl or None),
        ("cliea", "enabled", False if args.no_cliea else None),
    )
    train["mixed_precision"] = _mixed_precision(args.mixed_precision)
    sections: dict[str, dict] = {"train": train}
    for section, key, value in extra:
        if value is not None:
            sections.setdefault(section, {})[key] = value
    return config.replace(**sections)


def _mixed_precision(choice: str) -> str:
    """auto: bf16 on GPUs that support it, else fp16 on CUDA, else none (CPU)."""
    if choice != "auto":
        return choice
    import torch

    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kcdp-train",
        description="Train KCDP: DA (labelled source + unlabelled target) or UC (source only).",
    )
    p.add_argument("--preset", default="mini", choices=["tiny", "mini", "sd15"])
    p.add_argument("--config", help="start from this config.json instead of the preset")
    p.add_argument("--source", required=True, help="labelled source: DIR/<label>/<image> or CSV path,label")
    p.add_argument("--target", help="unlabelled target (DA): folder or CSV; its labels are never read")
    p.add_argument("--setting", choices=["da", "uc"], default=None, help="default: da with --target, else uc")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--foundation", help="foundation folder (overrides the preset's)")
    p.add_argument("--labels", help="label set: emoji7, official6, mikels8 or a comma list")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--head-lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-ratio", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--lambda1", type=float)
    p.add_argument("--lambda2", type=float)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "fp16", "bf16"])
    p.add_argument("--finetune", choices=["frozen", "kv", "lora", "full"])
    p.add_argument("--classifier", choices=["moe", "linear"])
    p.add_argument(
        "--mix-style",
        type=float,
        help="MixStyle in the image tail while training: probability per batch (0 off)",
    )
    p.add_argument(
        "--face-view",
        type=int,
        help="with an image tail: side in pixels of the face view it also reads (0 off; mini's default 0)",
    )
    p.add_argument("--no-knowledge-head", action="store_true", help="the head sees v alone, not v + pool(k)")
    p.add_argument("--no-triplets", action="store_true", help="k from the caption alone")
    p.add_argument("--no-caption", action="store_true", help="k from the triplets alone")
    p.add_argument("--pseudo-labels", choices=["batch", "epoch", "zeroshot"])
    p.add_argument("--threshold", type=float, help="keep target pseudo-labels with confidence >= this")
    p.add_argument(
        "--pseudo-select",
        choices=["all", "class_fraction", "class_quota"],
        help="which of an epoch's pseudo-labels train: all, or per class the most confident fraction",
    )
    p.add_argument("--pseudo-fraction", type=float, help="class_fraction: kept share per class (first epoch)")
    p.add_argument("--pseudo-fraction-end", type=float, help="class_fraction: kept share in the last epoch")
    p.add_argument("--pseudo-agreement", action="store_true", help="keep only labels the head agrees with")
    p.add_argument("--pseudo-warmup-epochs", type=int, help="source-only epochs before the target loss")
    p.add_argument("--ccl", choices=["ce", "paper"])
    p.add_argument("--no-cliea", action="store_true")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--balanced", action="store_true", help="class-balanced source batches")
    p.add_argument(
        "--balance-styles",
        action="store_true",
        help="style-balanced source batches (with --balanced: every style and class equally often)",
    )
    p.add_argument(
        "--target-bn",
        action=argparse.BooleanOptionalAction,
        help="DA (AdaBN): recompute best/'s BatchNorm statistics on the unlabelled target "
        "(default: the preset's; on for mini)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest on a busy machine)")
    return p


@names_missing_extra("kcdp-train")
def train_main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    if args.setting is None:
        args.setting = "da" if args.target else "uc"
    out = Path(args.out)
    try:
        if args.resume and (out / "train_state.json").exists():
            config = KCDPConfig.load(out)
            print(f"--resume: using the config saved in {out / 'config.json'}", file=sys.stderr)
        else:
            config = _config_from_args(args)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        print(f"kcdp-train: {exc}", file=sys.stderr)
        return 2
    # Under `accelerate launch` / torchrun every process runs this: the first one speaks.
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        print(config.to_json(), flush=True)
    _set_threads(args.threads)

    from kcdp_core.train.trainer import Trainer

    try:
        trainer = Trainer(
            config,
            args.source,
            out,
            target=args.target,
            progress=not args.quiet,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
        result = trainer.run(resume=args.resume)
    except (ValueError, FileNotFoundError) as exc:
        print(f"kcdp-train: {exc}", file=sys.stderr)
        return 1
    if main_process:
        print(
            json.dumps(
                {
                    "checkpoint": str(result.out),
                    "best": str(result.out / "best"),
                    "best_epoch": result.best_epoch,
                    "best_source_val_macro_f1": result.best_val_macro_f1,
                }
            )
        )
    return leave(0, trainer.accelerator.num_processes)  # everything is written


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kcdp-eval", description="Evaluate a KCDP checkpoint on labelled data.")
    p.add_argument("--ckpt", required=True, help="checkpoint folder (its best/ is used when present)")
    p.add_argument("--last", action="store_true", help="evaluate the last epoch, not best/")
    p.add_argument("--data", required=True, help="labelled data: DIR/<label>/<image> or CSV path,label")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--confusion", help="write a confusion-matrix plot (PNG)")
    p.add_argument("--tsne", help="write a t-SNE plot of --source vs --data features (PNG)")
    p.add_argument("--source", help="source-domain data for --tsne")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    return p


def checkpoint_model_dir(ckpt: Path, last: bool = False) -> Path:
    best = ckpt / "best"
    return best if not last and (best / "model.safetensors").exists() else ckpt


@names_missing_extra("kcdp-eval")
def eval_main(argv: list[str] | None = None) -> int:
    args = eval_parser().parse_args(argv)
    if args.tsne and not args.source:
        print("kcdp-eval: --tsne needs --source (the source-domain data)", file=sys.stderr)
        return 2
    _set_threads(args.threads)
    from kcdp_core.train.evaluate import evaluate_checkpoint

    try:
        report = evaluate_checkpoint(
            checkpoint_model_dir(Path(args.ckpt), args.last),
            args.data,
            batch_size=args.batch_size,
            confusion=args.confusion,
            tsne=args.tsne,
            tsne_source=args.source,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"kcdp-eval: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['data']}  ({report['n']} images, checkpoint {report['checkpoint']})")
        print(f"accuracy  {report['accuracy']:.4f}")
        print(f"macro-F1  {report['macro_f1']:.4f} (classes in the data or the predictions)")
        print(f"macro-F1  {report['macro_f1_truth']:.4f} (classes in the data only)")
        for name, value in report["per_class_recall"].items():
            print(f"  recall {name:<12} {'-' if value is None else f'{value:.3f}'}")
        for key in ("confusion_png", "tsne_png"):
            if key in report:
                print(f"wrote {report[key]}")
    return 0
