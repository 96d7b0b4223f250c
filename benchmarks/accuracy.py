"""Accuracy tables on the emoji cross-style benchmark (issue 6), one command per table.

    python benchmarks/accuracy.py main        # majority, zero-shot, source only, KCDP (UC), KCDP (DA)
    python benchmarks/accuracy.py pseudo      # Table 3: CLIEA vs plain zero-shot pseudo-labels (DA)
    python benchmarks/accuracy.py finetune    # Figure 4: frozen / kv / LoRA / full (DA)
    python benchmarks/accuracy.py components  # Table 4: caption / triplets / global classifier / MoE (DA)
    python benchmarks/accuracy.py disjoint    # emoji-disjoint folds: source on fold A emojis, target fold B

Options: --seeds 0 1 2, --epochs N, --tasks glossy:line ..., --data /work/data/emoji, --preset mini,
--runs DIR (one checkpoint per run; finished runs are reused), --threads 1, --set section.field=value
(config overrides, part of the run folder's name). Every table is written
into benchmarks/RESULTS.md between its own markers, with the command, date and machine. Target
labels are read only here, for scoring; training never sees them.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

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

# name -> (setting, config sections); every variant is the mini preset plus these changes.
VARIANTS: dict[str, tuple[str, dict]] = {
    "source_only": (
        "uc",
        {
            "knowledge": {"use_caption": False, "use_triplets": False},
            "head": {"use_knowledge": False},
            "cliea": {"enabled": False},
        },
    ),
    "kcdp_uc": ("uc", {}),
    "kcdp_da": ("da", {}),
    "da_pseudo_epoch": ("da", {"train": {"pseudo_labels": "epoch"}}),
    "da_pseudo_zeroshot": ("da", {"train": {"pseudo_labels": "zeroshot"}}),
    "da_frozen": ("da", {"perception": {"finetune": "frozen"}}),
    "da_kv": ("da", {"perception": {"finetune": "kv"}}),
    "da_full": ("da", {"perception": {"finetune": "full"}}),
    "da_caption_global": ("da", {"knowledge": {"use_triplets": False}, "head": {"classifier": "linear"}}),
    "da_triplets_global": ("da", {"knowledge": {"use_caption": False}, "head": {"classifier": "linear"}}),
    "da_both_global": ("da", {"head": {"classifier": "linear"}}),
    "da_moe_v": ("da", {"head": {"use_knowledge": False}}),
    "da_caption_moe": ("da", {"knowledge": {"use_triplets": False}}),
    "da_triplets_moe": ("da", {"knowledge": {"use_caption": False}}),
}

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
            ("kcdp_da", "KCDP (DA): + unlabelled target, CLIEA pseudo-labels per batch"),
        ],
    ),
    "pseudo": (
        "Table 3 (pseudo-labels, DA): CLIEA vs plain zero-shot",
        [
            ("kcdp_da", "CLIEA pseudo-labels, per batch (authors)"),
            ("da_pseudo_epoch", "CLIEA pseudo-labels, refreshed per epoch"),
            ("da_pseudo_zeroshot", "plain zero-shot pseudo-labels (aligned encoder, 'vanilla CLIP')"),
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


# -- runs -----------------------------------------------------------------------------------------


def config_for(variant: str, args: argparse.Namespace, seed: int):
    from kcdp_core.config import preset

    setting, sections = VARIANTS[variant]
    config = preset(args.preset)
    train = {"setting": setting, "seed": seed, "epochs": args.epochs, **sections.get("train", {})}
    if args.batch_size:
        train["batch_size"] = args.batch_size
    if args.lr:
        train["lr"] = args.lr
    if args.head_lr:
        train["head_lr"] = args.head_lr
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


def run_one(
    variant: str, source: Path, target: Path, eval_data: Path, run_dir: Path, seed: int, args
) -> dict:
    """Train (or reuse) one run and score its best checkpoint on the labelled target."""
    from kcdp_core.train.evaluate import evaluate_checkpoint
    from kcdp_core.train.trainer import Trainer

    # One training run can be scored on several targets (UC): one result file per scored set.
    result_file = run_dir / f"result-{Path(eval_data).stem}.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    config = config_for(variant, args, seed)
    t0 = time.time()
    trainer = Trainer(
        config, source, run_dir, target=target if config.train.setting == "da" else None,
        progress=False, log=lambda m: print(f"    {m}", file=sys.stderr, flush=True),
    )  # fmt: skip
    res = trainer.run(resume=True)
    seconds = time.time() - t0
    report = evaluate_checkpoint(run_dir / "best", eval_data)
    result = {
        "variant": variant, "seed": seed, "source": str(source), "target": str(eval_data),
        "accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "n": report["n"],
        "per_class_recall": report["per_class_recall"], "best_epoch": res.best_epoch,
        "best_source_val_macro_f1": res.best_val_macro_f1, "train_seconds": round(seconds, 1),
    }  # fmt: skip
    result_file.write_text(json.dumps(result, indent=1) + "\n")
    return result


def majority(source: Path, eval_data: Path, labels) -> dict:
    from kcdp_core.train.datasets import load_records
    from kcdp_core.train.evaluate import classification_metrics

    src = [r.label for r in load_records(source, labels)]
    tgt = [r.label for r in load_records(eval_data, labels)]
    top = int(np.bincount(src, minlength=len(labels)).argmax())
    m = classification_metrics(tgt, [top] * len(tgt), labels)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


_ZS: dict = {}


def zeroshot(eval_data: Path, args) -> dict:
    import torch

    from kcdp_core.train.datasets import ImageKnowledgeDataset, load_records
    from kcdp_core.train.evaluate import classification_metrics
    from kcdp_core.train.zeroshot import ZeroShotClassifier

    config = config_for("kcdp_uc", args, 0)
    if "clf" not in _ZS:
        _ZS["clf"] = ZeroShotClassifier.from_config(config)
    records = load_records(eval_data, config.labels)
    n, size = len(records), config.foundation.image_size
    ds = ImageKnowledgeDataset(records, np.zeros((n, 1, 1)), np.zeros((n, 1)), size, None)
    probs, labels = _ZS["clf"].predict(torch.utils.data.DataLoader(ds, batch_size=64))
    m = classification_metrics(labels, probs.argmax(1), config.labels)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


# -- tables ---------------------------------------------------------------------------------------


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def build_table(table: str, args: argparse.Namespace) -> str:
    from kcdp_core.config import preset

    labels = preset(args.preset).labels
    data, runs = Path(args.data), Path(args.runs)
    title, rows = TABLES[table]
    if args.variants:
        rows = [r for r in rows if r[0] in args.variants]
    tasks = [tuple(t.split(":")) for t in args.tasks]
    # (task key, source, target for training, labelled target for scoring)
    jobs: list[tuple[str, Path, Path, Path]] = []
    for src, tgt in tasks:
        if table == "disjoint":
            for a, b in ((0, 1), (1, 0)):
                jobs.append(
                    (f"{src}->{tgt}", fold_manifest(data, src, a, runs), fold_manifest(data, tgt, b, runs),
                     fold_manifest(data, tgt, b, runs))
                )  # fmt: skip
        else:
            jobs.append((f"{src}->{tgt}", family(data, src), family(data, tgt), family(data, tgt)))
    task_keys = list(dict.fromkeys(j[0] for j in jobs))
    # per row, per task: accuracy and macro-F1 over seeds (and folds)
    cells: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for variant, _ in rows:
        cells[variant] = {k: ([], []) for k in task_keys}
        for key, source, target, eval_data in jobs:
            if variant == "majority":
                res = [majority(source, eval_data, labels)]
            elif variant == "zeroshot":
                res = [zeroshot(eval_data, args)]
            else:
                res = []
                for seed in args.seeds:
                    setting = VARIANTS[variant][0]
                    tname = Path(target).stem if setting == "da" else "none"
                    run_dir = runs / recipe_tag(args) / f"{variant}_{Path(source).stem}_{tname}_s{seed}"
                    print(f"[{table}] {variant} {key} seed {seed} -> {run_dir}", file=sys.stderr, flush=True)
                    res.append(run_one(variant, source, target, eval_data, run_dir, seed, args))
                    print(
                        f"    target acc {res[-1]['accuracy']:.3f} macro-F1 {res[-1]['macro_f1']:.3f}",
                        file=sys.stderr, flush=True,
                    )  # fmt: skip
            cells[variant][key][0].extend(r["accuracy"] for r in res)
            cells[variant][key][1].extend(r["macro_f1"] for r in res)
    # The mean over tasks is computed per seed first, so its ± is the spread across seeds.
    header = "| method | " + " | ".join(task_keys) + " | mean acc | mean macro-F1 |"
    lines = [header, "|" + "---|" * (len(task_keys) + 3)]
    for variant, description in rows:
        parts = []
        for key in task_keys:
            acc, f1 = cells[variant][key]
            parts.append(f"{fmt(acc)} / {fmt(f1)}")
        n = min(len(cells[variant][k][0]) for k in task_keys)
        mean_acc = [np.mean([cells[variant][k][0][i] for k in task_keys]) for i in range(n)]
        mean_f1 = [np.mean([cells[variant][k][1][i] for k in task_keys]) for i in range(n)]
        lines.append(f"| {description} | " + " | ".join(parts) + f" | {fmt(mean_acc)} | {fmt(mean_f1)} |")
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
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    meta = (
        f"Command: `{command}`  \n"
        f"Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {machine()}  \n"
        f"Preset `{args.preset}`, {args.epochs} epochs, seeds {seeds}; cells: target accuracy / macro-F1, "
        f"mean ± std over seeds{' and both folds' if table == 'disjoint' else ''}; model selected on a "
        f"source validation split (macro-F1), never on the target."
    )
    return f"### {title}\n\n{meta}\n\n" + "\n".join(lines) + "\n"


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
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--data", default="/work/data/emoji")
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
    p.add_argument(
        "--variants", nargs="+", help="run only these rows (e.g. to split a table over processes; no write)"
    )
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    body = build_table(args.table, args)
    print(body)
    if not args.no_write and not args.variants:
        write_section(args.table, body)
        print(f"wrote the '{args.table}' table into {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
