"""The recipe of the embedded default model (`kcdp-infer` with no --model).

    python -m kcdp_core.train.default_model --data $DATA/emoji --avatars $DATA/avatars \
        --avatar-test $DATA/avatars_test

`mini` KCDP in the UC setting on every openly licensed style of the emoji benchmark pooled
(Twemoji, OpenMoji colour + black, Noto v1, EmojiOne v1 + monotone, the four Fluent styles) and the
five avatar styles of `kcdp-data avatars` (the first --avatar-per-class seeds of every class); the
proprietary emoji styles (Apple, Facebook, JoyPixels, EmojiOne 4) are never used. The checkpoint is
selected on a stratified validation split of that same pooled source (macro-F1). The model card
scores the unseen proprietary emoji styles, with --avatar-test avatars rendered from seeds the
model never saw (`kcdp-data avatars --seed-start N`), and with --avatar-heldout the held-out avatar
styles it never saw at all (`kcdp-data avatars --styles heldout`; scored, never selected on).
--extra-avatars adds the labelled corpus styles (`--styles extra`) to the training data,
--labelled-avatars the styles labelled by eye (`--styles labelled`; the lowest --labelled-per-class
seeds, the others scored on the card), --procedural the faces of `kcdp-data procedural`, and
--style-augment redraws source images in other styles (kcdp_core/train/style_augment.py). Every
avatar style must be on kcdp_core/data/training_styles.csv. --leave-out-families keeps art families
out of training and scores them on the card: how a recipe change is chosen without ever looking at
the held-out styles. Only the trained tensors (LoRA, image tail, FPN, head, CLIEA; fp16) and
config.json are copied into kcdp_core/assets/default_model/, the foundation is referenced as
`kcdp:foundation/mini`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

from kcdp_core.config import KCDPConfig, mini

OPEN_DOMAINS: dict[str, str] = {
    "twitter": "CC-BY-4.0 (Twemoji)",
    "openmoji": "CC-BY-SA-4.0 (OpenMoji)",
    "openmoji_black": "CC-BY-SA-4.0 (OpenMoji)",
    "noto_v1": "Apache-2.0 (Noto Emoji, old design)",
    "emojione_v1": "CC-BY-SA-4.0 (EmojiOne v1)",
    "emojione_mono": "CC-BY-4.0 (EmojiOne monotone)",
    "fluent_color": "MIT (Microsoft Fluent Emoji)",
    "fluent_flat": "MIT (Microsoft Fluent Emoji)",
    "fluent_mono": "MIT (Microsoft Fluent Emoji)",
    "fluent3d": "MIT (Microsoft Fluent Emoji)",
}
# The proprietary styles (never trained on, never committed): what the card reports as unseen styles.
UNSEEN_FAMILY = "glossy"  # Apple, Google, Facebook, JoyPixels, EmojiOne 4
ASSET = Path(__file__).resolve().parent.parent / "assets" / "default_model"


def _seed_number(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


def _avatar_rows(
    avatars: Path, styles: tuple[str, ...], per_class: int, unseen: bool = False
) -> dict[str, list[Path]]:
    """style -> its lowest-seed `per_class` images per class (the rest stay unseen seeds), or with
    `unseen` those other seeds."""
    out = {}
    for style in styles:
        folder = avatars / "domains" / style
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing (build it with `kcdp-data avatars --out {avatars}`)")
        out[style] = []
        for label in sorted(d for d in folder.iterdir() if d.is_dir()):
            seeds = sorted(label.glob("*.png"), key=_seed_number)
            out[style] += seeds[per_class:] if unseen else seeds[:per_class]
    return out


def kept_styles(styles: tuple[str, ...], leave_out_families: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`styles` less those whose art family (training_styles.csv) is left out."""
    from kcdp_core.data.avatar_key import load_training_styles

    table = load_training_styles()
    return tuple(s for s in styles if s not in table or table[s].family not in leave_out_families)


def open_manifest(
    data: Path,
    out: Path,
    avatars: Path | None = None,
    avatar_per_class: int = 0,
    extra_avatars: Path | None = None,
    labelled_avatars: Path | None = None,
    procedural: Path | None = None,
    leave_out_families: tuple[str, ...] = (),
    labelled_per_class: int = 40,
) -> tuple[Path, dict[str, int]]:
    """The training manifest (path,label) and its image count per domain / style. Every avatar
    style must be on the list of training styles; `leave_out_families` drops every style of those
    art families (a close-up leaves with its base style) so that they can score a choice."""
    from kcdp_core.data.avatar_key import BENCHMARK_STYLES, EXTRA_STYLES, LABELLED_STYLES, check_trainable

    rows, counts = [], {}
    for domain in OPEN_DOMAINS:
        folder = data / "domains" / domain
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing (build it with `kcdp-data emoji --out {data}`)")
        images = sorted(folder.rglob("*.png"))
        counts[domain] = len(images)
        rows += [(str(p), p.parent.name) for p in images]
    wanted = [
        (avatars, BENCHMARK_STYLES, avatar_per_class),
        (extra_avatars, EXTRA_STYLES, avatar_per_class),
        (labelled_avatars, LABELLED_STYLES, labelled_per_class),
    ]
    styles: dict[str, list[Path]] = {}
    for root, names, per_class in wanted:
        if root is not None:
            kept = kept_styles(names, leave_out_families)
            check_trainable(kept)
            styles |= _avatar_rows(root, kept, per_class)
    if procedural is not None:
        check_trainable(("procedural",))
        styles["procedural"] = sorted(procedural.glob("*/*.png"))
        if not styles["procedural"]:
            raise FileNotFoundError(
                f"{procedural}: no faces (build them: `kcdp-data procedural --out {procedural}`)"
            )
    for style, images in styles.items():
        counts[style] = len(images)
        rows += [(str(p), p.parent.name) for p in images]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return out, counts


def score_styles(
    ckpt: Path, model, avatars: Path, styles: tuple[str, ...], skip_seeds: int = 0
) -> dict[str, dict]:
    """Accuracy / macro-F1 per style of a labelled avatar folder, and their mean over the styles;
    macro-F1 over the classes each style has, as the avatar tables of benchmarks/RESULTS.md.
    `skip_seeds`: leave out the lowest seeds per class (those a model trained on)."""
    import tempfile

    from kcdp_core.train.evaluate import evaluate_checkpoint

    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for style in styles:
            data = avatars / "domains" / style
            if skip_seeds:
                data = Path(tmp) / f"{style}.csv"
                paths = _avatar_rows(avatars, (style,), skip_seeds, unseen=True)[style]
                data.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in paths))
            scores[style] = evaluate_checkpoint(ckpt, data, model=model)
    for style, r in scores.items():
        scores[style] = {
            "accuracy": round(float(r["accuracy"]), 4),
            "macro_f1": round(float(r["macro_f1_truth"]), 4),
        }
        scores[style]["images"] = r["n"]
    scores["mean"] = {
        k: round(sum(scores[s][k] for s in styles) / len(styles), 4) for k in ("accuracy", "macro_f1")
    }
    return scores


def _licence(domain: str) -> str:
    if domain in OPEN_DOMAINS:
        return OPEN_DOMAINS[domain]
    if domain == "procedural":
        from kcdp_core.data.avatar_key import load_training_styles

        row = load_training_styles()[domain]
        return f"{row.license} (drawn by {row.source})"
    from kcdp_core.data.avatar_key import style_credit

    creator, licence = style_credit(domain)
    return f"{licence} ({creator}, DiceBear)"


def _foundation_digest(config) -> str:
    """sha256 over the foundation folder the model was trained on (a retrained one will not match)."""
    import hashlib

    from kcdp_core.sources import resolve

    path, _ = resolve(config.foundation.unet)
    root, h = Path(path), hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def recipe_parser() -> argparse.ArgumentParser:
    """The recipe's options (kcdp-adapt reads a model card's recorded recipe with it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/emoji", help="kcdp-data emoji output")
    p.add_argument("--avatars", help="kcdp-data avatars output: its five styles join the training data")
    p.add_argument(
        "--avatar-per-class", type=int, default=40, help="avatars per class and style (lowest seeds)"
    )
    p.add_argument(
        "--extra-avatars",
        help="kcdp-data avatars --styles extra output: its three styles join the training data",
    )
    p.add_argument(
        "--labelled-avatars",
        help="kcdp-data avatars --styles labelled output: its styles join the training data "
        "(the lowest --labelled-per-class seeds; the other seeds are scored on the card)",
    )
    p.add_argument("--labelled-per-class", type=int, default=40)
    p.add_argument("--procedural", help="kcdp-data procedural output: every face joins the training data")
    p.add_argument(
        "--leave-out-families",
        nargs="*",
        default=[],
        help="art families (training_styles.csv) left out of training and scored on the card: "
        "how a training change is chosen without looking at the held-out styles",
    )
    p.add_argument(
        "--style-augment",
        type=float,
        default=0.0,
        help="probability of redrawing a source image in another style",
    )
    p.add_argument(
        "--face-box-jitter",
        type=float,
        default=0.0,
        help="with --face-view: move and scale the face box by up to this fraction of its side in training",
    )
    p.add_argument(
        "--style-consistency",
        type=float,
        default=0.0,
        help="weight of the consistency between each source image and itself redrawn in another style "
        "(train.style_consistency_weight)",
    )
    p.add_argument(
        "--hold-pretrained-epochs",
        type=int,
        default=0,
        help="first epochs that train only the new modules, the pretrained ones held (LP-FT)",
    )
    p.add_argument(
        "--image-tail",
        type=int,
        help="stages of the image encoder copied and trained (default: the preset's; more = more weights)",
    )
    p.add_argument(
        "--freeze-tail-statistics",
        action="store_true",
        help="the image tail's BatchNorm keeps the statistics it was copied with (perception.freeze_tail_statistics)",
    )
    p.add_argument(
        "--face-view",
        type=int,
        help="side in pixels of the face view the image branch also reads (perception.face_view; 0 off)",
    )
    p.add_argument(
        "--no-knowledge",
        action="store_true",
        help="train without knowledge (no caption, no triplets, the head on v alone): the comparison row",
    )
    p.add_argument(
        "--avatar-test", help="kcdp-data avatars output rendered from other seeds: scored on the card"
    )
    p.add_argument(
        "--avatar-heldout",
        help="kcdp-data avatars --styles heldout output: styles never trained on, scored on the card",
    )
    p.add_argument("--work", default="runs/default_model", help="training checkpoint folder")
    p.add_argument("--out", default=str(ASSET))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument(
        "--balance-styles", action="store_true", help="style-balanced batches (train.balance_styles)"
    )
    p.add_argument("--balanced", action="store_true", help="class-balanced batches (train.balanced_sampling)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--foundation", help="foundation folder instead of kcdp:foundation/mini (trials only)")
    return p


def recipe_config(args: argparse.Namespace) -> KCDPConfig:
    """The mini preset in the UC setting with the recipe's options."""
    config = mini().replace(
        train={
            "setting": "uc", "epochs": args.epochs, "seed": args.seed, "lr": args.lr,
            "head_lr": args.head_lr, "balanced_sampling": args.balanced, "style_augment": args.style_augment,
            "balance_styles": args.balance_styles, "face_box_jitter": args.face_box_jitter,
            "pretrained_hold_epochs": args.hold_pretrained_epochs,
            "style_consistency_weight": args.style_consistency,
        }
    )  # fmt: skip
    if args.image_tail is not None:
        config = config.replace(perception={"image_tail": args.image_tail})
    if args.face_view is not None:
        config = config.replace(perception={"face_view": args.face_view})
    if args.freeze_tail_statistics:
        config = config.replace(perception={"freeze_tail_statistics": True})
    if args.no_knowledge:
        config = config.replace(
            knowledge={"use_caption": False, "use_triplets": False}, head={"use_knowledge": False}
        )
    if args.foundation:
        config = config.with_foundation(args.foundation)
    return config


def main(argv: list[str] | None = None) -> int:
    p = recipe_parser()
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import load_file, save_file

    from kcdp_core.model.kcdp import WEIGHTS_NAME, KCDPModel
    from kcdp_core.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    avatars = Path(args.avatars) if args.avatars else None
    extra = Path(args.extra_avatars) if args.extra_avatars else None
    labelled = Path(args.labelled_avatars) if args.labelled_avatars else None
    left_out = tuple(args.leave_out_families)
    manifest, counts = open_manifest(
        Path(args.data), work / "training_data.csv", avatars, args.avatar_per_class, extra, labelled,
        Path(args.procedural) if args.procedural else None, left_out, args.labelled_per_class,
    )  # fmt: skip
    config = recipe_config(args)
    print(config.to_json(), flush=True)
    result = Trainer(
        config, manifest, work / "ckpt", progress=False, log=lambda m: print(m, file=sys.stderr, flush=True)
    ).run(resume=True)
    from kcdp_core.data.avatar_key import BENCHMARK_STYLES, HELDOUT_STYLES, LABELLED_STYLES
    from kcdp_core.train.evaluate import evaluate_checkpoint

    best = work / "ckpt" / "best"
    model = KCDPModel.from_pretrained(best)  # loaded once for every scored set
    unseen = evaluate_checkpoint(best, Path(args.data) / "families" / UNSEEN_FAMILY, model=model)
    avatar_test = (
        score_styles(best, model, Path(args.avatar_test), BENCHMARK_STYLES) if args.avatar_test else {}
    )
    heldout = (
        score_styles(best, model, Path(args.avatar_heldout), HELDOUT_STYLES) if args.avatar_heldout else {}
    )
    trained_labelled = kept_styles(LABELLED_STYLES, left_out)
    labelled_seeds = labelled and score_styles(
        best, model, labelled, trained_labelled, args.labelled_per_class
    )
    left_out_styles = tuple(s for s in LABELLED_STYLES if s not in trained_labelled)
    left_out_scores = labelled and left_out_styles and score_styles(best, model, labelled, left_out_styles)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "ckpt" / "best" / "config.json", out / "config.json")
    # fp16 on disk (loading casts back to fp32): half the committed bytes, predictions unchanged
    # at the card's precision (the export is validated against the loaded model either way).
    state = load_file(str(work / "ckpt" / "best" / WEIGHTS_NAME))
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(out / WEIGHTS_NAME)
    )
    card = {
        "model": "KCDP mini, UC setting",
        "recipe": "python -m kcdp_core.train.default_model "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "trained": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "training_data": {d: {"images": n, "licence": _licence(d)} for d, n in counts.items()},
        "selection": "best epoch by macro-F1 on a stratified validation split of the pooled source",
        "best_epoch": result.best_epoch,
        "source_val_macro_f1": result.best_val_macro_f1,
        # Same 44 emojis as the training styles, drawn by other artists: style transfer, not new emojis.
        "unseen_styles": {
            "data": f"families/{UNSEEN_FAMILY} (Apple, Google, Facebook, JoyPixels, EmojiOne 4)",
            "images": unseen["n"],
            "accuracy": round(float(unseen["accuracy"]), 4),
            "macro_f1": round(float(unseen["macro_f1"]), 4),
        },
        "unseen_avatar_seeds": avatar_test
        and {
            "data": f"{args.avatar_test}: kcdp-data avatars rendered from seeds never trained on",
            "styles": avatar_test,
        },
        "unseen_labelled_seeds": labelled_seeds
        and {
            "data": f"{args.labelled_avatars}: seeds above the lowest {args.labelled_per_class} per class, "
            "never trained on",
            "styles": labelled_seeds,
        },
        "left_out_families": left_out_scores
        and {
            "data": f"{args.labelled_avatars}: the styles of the families {list(left_out)}, left out of "
            "training to score a training choice",
            "styles": left_out_scores,
        },
        "unseen_avatar_styles": heldout
        and {
            "data": f"{args.avatar_heldout}: kcdp-data avatars --styles heldout, "
            "styles never trained or tuned on",
            "styles": heldout,
        },
        "foundation": config.foundation.unet.path,
        "foundation_sha256": _foundation_digest(config),
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps(card, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
