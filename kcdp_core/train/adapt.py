"""Adapt a trained KCDP model to a folder of unlabelled images: the training side of `kcdp-adapt`.

The method is KCDP's DA setting, started from a trained checkpoint instead of fresh heads
(`TrainConfig.init_checkpoint`): the checkpoint's labelled sources train beside the unlabelled
target, CLIEA labels the target once per epoch (per class the most confident share, no class above
an equal share), and AdaBN gives the result the target's BatchNorm statistics. Last (unless `refit` is
off), the head alone is refit on the target's class centroids in the FPN's output space beside the labelled
source sample (kcdp_core.train.centroid_labels): the labels the target's own clusters give, better than
the head's or CLIEA's on drawn styles no decision had seen, at a cost to the source check set
(benchmarks/RESULTS.md, "kcdp-adapt").

- Target: every image under the folder, in any layout. Its labels are never read: the images are
  ordered by content hash, so folder and file names cannot change what is trained.
- Sources: the starting model's recipe (the shipped default model: the open emoji styles and the
  drawn-face styles of its model card, built on demand by `kcdp-data` into $KCDP_CACHE/adapt/sources
  and reused), or labelled folders / CSVs given by the caller. A held-aside *check set* never trains:
  for the recipe, avatars of seeds the starting model never saw; otherwise a stratified share.
- Budget: the seconds per image of the first pass over target + check set (the "before"
  diagnostics) price a training step; the epochs are fixed (4 unless given) and the source images
  per class and style are the most that fit the minutes left after a reserve for AdaBN, the head
  refit, the "after" diagnostics and the export. The plan is saved, so a resumed run trains exactly
  what was planned.
- Diagnostics, all without target labels: the predicted-class histogram, mean confidence,
  CLIEA-head agreement and the share of target predictions changed from the starting model, the
  pseudo-label histogram of every epoch, and the check set's accuracy / macro-F1 before and after
  (each model with the check set's own BatchNorm statistics: what the weights forgot, not the
  target statistics AdaBN gave the export).

`adapt()` returns the adapted checkpoint, a calibration folder (source + target sample) and the
report; exporting and the exit status are the command's (kcdp_export.adapt).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kcdp_core.config import KCDPConfig, Source
from kcdp_core.portable.constants import IMAGE_SUFFIXES, cache_root

DEFAULT_MODEL = "kcdp:default_model"
DEFAULT_EPOCHS = 4
CHECK_PER_CLASS = 10  # check-set images per class and style (or source)
CALIBRATION_PER_SIDE = 32  # source and target images each in the int8 calibration folder
# A training step on a source + a target batch costs this many times the per-image time of the
# eval pass it is priced from (forward + backward of the trained parts; measured on this CPU: 1.2).
TRAIN_COST = 1.3
# Reserve for the int8 export (parity checks and the caption bank's knowledge included). Its time does
# not follow the model's seconds per image (graph conversion and quantization, checks on 64 images):
# measured inside kcdp-adapt on a 2-core CPU, 280 s for the default model v5 (eval pass 0.026 s per
# image) and 217-219 s for v6 (0.075-0.13 s per image, four runs), which the eval pass priced at 830-1470 s.
# A machine's first export parses the caption bank (90 s of that); later ones read it back (v6: 82 s in all).
EXPORT_SECONDS = 280.0


class AdaptError(ValueError):
    """Bad input for an adaptation (no images, no sources, an unreadable model)."""


# -- the target ----------------------------------------------------------------------------------


@dataclass
class TargetSet:
    folder: Path
    paths: list[Path]  # readable images, ordered by (content hash, path)
    digest: str  # sha256 over the sorted content hashes: the same images give the same digest
    skipped: list[str] = field(default_factory=list)  # "path: problem" of images that could not be read


def read_target(folder: str | Path) -> TargetSet:
    """Every readable image under `folder` (recursively, hidden folders skipped). Names and folders
    are never interpreted; an unreadable image is skipped with its reason."""
    from kcdp_core.portable.images import ImageError, load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise AdaptError(f"{folder}: not a folder of images")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    rows, skipped = [], []
    for path in files:
        try:
            data = path.read_bytes()  # read once: decoded to check it, hashed to order it
            load_image(data, name=str(path))
        except (OSError, ImageError) as exc:
            skipped.append(f"{path}: {exc}")
            continue
        rows.append((hashlib.sha256(data).hexdigest(), path))
    if not rows:
        raise AdaptError(f"{folder}: no readable images (looked for {sorted(IMAGE_SUFFIXES)})")
    rows.sort(key=lambda r: (r[0], str(r[1])))
    digest = hashlib.sha256("\n".join(h for h, _ in rows).encode()).hexdigest()
    return TargetSet(folder, [p for _, p in rows], digest, skipped)


# -- labelled sources ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    path: Path
    label: str
    group: str  # the domain / style (or source folder) it belongs to


@dataclass
class SourcePool:
    """Per (group, label), the images training may use, in the order they are taken, and the check set."""

    train: dict[tuple[str, str], list[Path]]
    check: list[Labelled]
    origin: list[str]  # where they came from, for the report

    def subsample(self, per_class: int) -> list[Labelled]:
        return [
            Labelled(p, label, group)
            for (group, label), paths in sorted(self.train.items())
            for p in paths[:per_class]
        ]

    def size(self, per_class: int) -> int:
        return sum(min(per_class, len(paths)) for paths in self.train.values())

    def uncached(self, per_class: int, cached: set[Path]) -> int:
        """How many of the first `per_class` images per class have no knowledge cached yet."""
        return sum(1 for paths in self.train.values() for p in paths[:per_class] if p not in cached)

    @property
    def largest(self) -> int:
        return max(len(paths) for paths in self.train.values())


def _seed_number(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


def recipe_of(model_dir: Path) -> list[str] | None:
    """The default-model recipe's arguments recorded in `model_dir`/model_card.json, or None."""
    card = model_dir / "model_card.json"
    if not card.is_file():
        return None
    recipe = json.loads(card.read_text()).get("recipe", "")
    words = shlex.split(recipe)
    prefix = ["python", "-m", "kcdp_core.train.default_model"]
    return words[len(prefix) :] if words[: len(prefix)] == prefix else None


def recipe_sources(
    recipe: list[str], labels: Sequence[str], cache: Path, log: Callable[[str], None]
) -> SourcePool:
    """The labelled sources of a default-model recipe, built on demand under `cache` (kcdp-data).

    Training may use the images the starting model trained on (the open emoji styles, the lowest
    `--avatar-per-class` (`--labelled-per-class`) seeds of each avatar style and class, procedural
    faces); the check set is the next CHECK_PER_CLASS seeds of each avatar style and class, which it
    never saw. Families the recipe left out stay out."""
    from kcdp_core.data.avatar_key import BENCHMARK_STYLES, EXTRA_STYLES, LABELLED_STYLES
    from kcdp_core.train.default_model import OPEN_DOMAINS, kept_styles, recipe_parser

    args, _ = recipe_parser().parse_known_args(recipe)
    per_class, labelled_per_class = int(args.avatar_per_class), int(args.labelled_per_class)
    builds = [("emoji128", ["emoji", "--size", "128", "--no-corpus", "--domains", ",".join(OPEN_DOMAINS)])]
    if args.avatars:
        n = str(per_class + CHECK_PER_CLASS)
        builds.append(("avatars", ["avatars", "--per-class", n, "--corpus-per-style", "0"]))
    if args.extra_avatars:
        builds.append(
            (
                "avatars_extra",
                ["avatars", "--styles", "extra", "--per-class", str(per_class + CHECK_PER_CLASS)],
            )
        )
    if args.labelled_avatars:
        n = str(labelled_per_class + CHECK_PER_CLASS)
        builds.append(("avatars_labelled", ["avatars", "--styles", "labelled", "--per-class", n]))
    if args.procedural:
        builds.append(("procedural", ["procedural"]))
    roots = {name: ensure_built(cache / name, argv, log) for name, argv in builds}
    train: dict[tuple[str, str], list[Path]] = {}
    check: list[Labelled] = []
    for domain in OPEN_DOMAINS:
        for folder in _class_folders(roots["emoji128"] / "domains" / domain, labels):
            train[(domain, folder.name)] = sorted(folder.glob("*.png"))
    left_out = tuple(args.leave_out_families)
    styles = [("avatars", s, per_class) for s in BENCHMARK_STYLES if args.avatars]
    styles += [("avatars_extra", s, per_class) for s in EXTRA_STYLES if args.extra_avatars]
    styles += [("avatars_labelled", s, labelled_per_class) for s in LABELLED_STYLES if args.labelled_avatars]
    kept = set(kept_styles(tuple(style for _, style, _ in styles), left_out))
    for root, style, n in [row for row in styles if row[1] in kept]:
        for folder in _class_folders(roots[root] / "domains" / style, labels):
            paths = sorted(folder.glob("*.png"), key=_seed_number)
            train[(style, folder.name)] = paths[:n]
            check += [Labelled(p, folder.name, style) for p in paths[n : n + CHECK_PER_CLASS]]
    if args.procedural:
        for folder in _class_folders(roots["procedural"], labels):
            train[("procedural", folder.name)] = sorted(folder.glob("*.png"))
    if not check:
        raise AdaptError("the recipe's sources hold no image the starting model did not train on")
    return SourcePool(train, check, [f"$KCDP_CACHE/adapt/sources/{name}" for name in roots])


def _class_folders(folder: Path, labels: Sequence[str]) -> list[Path]:
    if not folder.is_dir():
        raise AdaptError(f"{folder}: missing from the built sources")
    return sorted(d for d in folder.iterdir() if d.is_dir() and d.name in labels)


def ensure_built(folder: Path, argv: list[str], log: Callable[[str], None]) -> Path:
    """`kcdp-data ARGV --out folder`, unless a finished build is there (report.json is written last).
    Built into a sibling folder and renamed: a killed build is never mistaken for a finished one."""
    if (folder / "report.json").is_file():
        return folder
    from kcdp_core.data.cli import main as kcdp_data

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"building the labelled source {folder.name}: kcdp-data {' '.join(argv)}")
    if kcdp_data([*argv, "--out", str(partial)]) != 0 or not (partial / "report.json").is_file():
        raise AdaptError(f"kcdp-data {' '.join(argv)} failed: pass labelled data with --source instead")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def given_sources(sources: Sequence[str | Path], labels: Sequence[str], seed: int) -> SourcePool:
    """Labelled folders (DIR/<label>/<image>) or CSV manifests; per source and class a stratified
    share (15%, at most CHECK_PER_CLASS, at least one of three or more) is held aside as the check set."""
    from kcdp_core.train.datasets import load_records

    train: dict[tuple[str, str], list[Path]] = {}
    check: list[Labelled] = []
    rng = np.random.default_rng(seed + 4051)
    for source in sources:
        group = str(source)
        by_label: dict[str, list[Path]] = {}
        for rec in load_records(source, labels, with_labels=True):
            by_label.setdefault(labels[rec.label], []).append(rec.path)
        for label, paths in sorted(by_label.items()):
            order = [paths[i] for i in rng.permutation(len(paths))]
            n = min(CHECK_PER_CLASS, int(round(0.15 * len(order))))
            n = 1 if n == 0 and len(order) >= 3 else n
            check += [Labelled(p, label, group) for p in order[:n]]
            train[(group, label)] = order[n:]
    if not check:
        raise AdaptError("the sources are too small to hold a check set aside (3 images per class at least)")
    return SourcePool(train, check, [str(s) for s in sources])


def write_manifest(rows: Sequence[Labelled] | Sequence[Path], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        if rows and isinstance(rows[0], Labelled):
            writer.writerow(["path", "label"])
            writer.writerows([str(r.path), r.label] for r in rows)
        else:
            writer.writerow(["path"])
            writer.writerows([str(p)] for p in rows)
    return out


# -- the budget ------------------------------------------------------------------------------------


@dataclass
class Plan:
    epochs: int
    per_class: int  # source images per class and style (or source)
    source_images: int
    seconds_per_image: float  # the eval pass's, which priced the plan
    knowledge_seconds_per_image: float  # captioning + k of an image not cached yet
    estimated_training_s: float
    how: str


def plan_budget(
    pool: SourcePool,
    n_target: int,
    seconds_per_image: float,
    seconds_left: float | None,
    batch_size: int,
    val_fraction: float,
    epochs: int | None = None,
    per_class: int | None = None,
    rounds: int = 1,
    views: int = 1,
    knowledge_seconds_per_image: float = 0.0,
    cached: set[Path] | None = None,
) -> Plan:
    """Epochs and source images per class that fit `seconds_left` of training (None: no budget).

    A step trains a source batch and `views` target batches of `batch_size`, at TRAIN_COST times the
    eval pass's seconds per image; every epoch also labels the target and validates on the source;
    source images whose knowledge is not in `cached` are captioned first."""
    epochs = epochs or DEFAULT_EPOCHS
    cached = cached or set()

    def cost(p: int, e: int) -> float:
        n = pool.size(p)
        steps = math.ceil(n * (1 - val_fraction) / batch_size)
        step = batch_size * (1 + views) * TRAIN_COST * seconds_per_image
        per_epoch = steps * step + (n_target + n * val_fraction) * seconds_per_image
        captioning = pool.uncached(p, cached) * knowledge_seconds_per_image
        return captioning + rounds * e * per_epoch + n_target * seconds_per_image  # + AdaBN

    if per_class is None:
        if seconds_left is None:
            per_class, how = pool.largest, "no budget: every source image"
        else:
            per_class = 0
            lo, hi = 1, pool.largest
            while lo <= hi:  # the most images per class whose cost fits
                mid = (lo + hi) // 2
                if cost(mid, epochs) <= seconds_left:
                    per_class, lo = mid, mid + 1
                else:
                    hi = mid - 1
            how = f"{seconds_left:.0f} s of training left: the most source images per class that fit"
            if per_class < 4:
                per_class = min(4, pool.largest)
                how = f"{seconds_left:.0f} s of training left is too little: the minimum, 4 per class"
    else:
        how = "given"
    return Plan(
        epochs, per_class, pool.size(per_class), round(seconds_per_image, 5),
        round(knowledge_seconds_per_image, 5), round(cost(per_class, epochs), 1), how,
    )  # fmt: skip


# -- diagnostics (no target label anywhere) --------------------------------------------------------


@dataclass
class TargetView:
    """A model's predictions on the target: head argmax and confidence, CLIEA argmax."""

    head: np.ndarray
    confidence: np.ndarray
    cliea: np.ndarray


def _loader(dataset, batch_size: int):
    import torch

    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def target_view(model, dataset, batch_size: int = 32, absent=None) -> TargetView:
    """The predictions over the target; `absent` ([C] bool): labels outside the declared classes."""
    import torch

    parts = []
    model.eval()
    with torch.no_grad():
        for batch in _loader(dataset, batch_size):
            out = model(batch["pixels"], batch["k"], batch["k_mask"], face=batch.get("face"))
            parts.append(_view(model, out.logits, out.features, batch["k"], batch["k_mask"], absent))
    return TargetView(*(np.concatenate(p) for p in zip(*parts, strict=True)))


def _view(model, logits, features, k, k_mask, absent) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head argmax, its confidence, CLIEA argmax) of images the model gave `logits` and v `features`."""
    from kcdp_core.train.pseudo_labels import declared

    conf, head = declared(logits, absent).float().softmax(dim=-1).max(dim=-1)
    if model.cliea is None:
        return head.numpy(), conf.numpy(), np.full(len(head), -1)
    cliea = declared(model.cliea_scores(features, k, k_mask), absent).argmax(dim=-1)
    return head.numpy(), conf.numpy(), cliea.numpy()


def _histogram(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    return dict(zip(names, (int(c) for c in counts), strict=True))


def summarize(view: TargetView, names: Sequence[str], start: TargetView | None = None) -> dict:
    out = {
        "predicted": _histogram(view.head, names),
        "mean_confidence": round(float(view.confidence.mean()), 4),
        "cliea_head_agreement": round(float((view.cliea == view.head).mean()), 4),
    }
    if start is not None:
        out["changed_from_start"] = round(float((view.head != start.head).mean()), 4)
    return out


def _reading(model, dataset, batch_size: int = 32):
    """A copy of `model` with the statistics a checkpoint keeps recomputed on `dataset`: the model as it
    reads that domain (the source check set, the source sample), the model itself unchanged."""
    import copy

    from kcdp_core.train.target_bn import recompute_statistics

    model = copy.deepcopy(model)
    recompute_statistics(
        model, _loader(dataset, batch_size), within=list(model.statistics_modules().values())
    )
    return model


def check_metrics(model, dataset, names: Sequence[str], batch_size: int = 32) -> dict:
    """Accuracy and macro-F1 on the labelled check set, the model reading it with the check set's own
    BatchNorm statistics (a copy of the model is changed, not the model). The adapted model carries
    the target's statistics (AdaBN) for the target; on the source they would measure the domain
    gap, not what the weights forgot (measured on toon-head: macro-F1 .66 with the target's, .79
    with the source's, from .83 before)."""
    from kcdp_core.train.evaluate import classification_metrics, predict

    model = _reading(model, dataset, batch_size)
    preds = predict(model, _loader(dataset, batch_size))
    m = classification_metrics(preds.labels, preds.predicted, names)
    return {"images": m["n"], "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


def pseudo_label_history(metrics: Path, names: Sequence[str]) -> list[dict]:
    """Per trained epoch: CLIEA's label histogram over the whole target and that of the kept labels."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    history = []
    for row in rows:
        if row["kind"] != "pseudo_labels":
            continue
        cliea, keep = np.asarray(row["cliea"]), np.asarray(row["keep"], dtype=bool)
        history.append(
            {
                "epoch": row["epoch"],
                "cliea": _histogram(cliea, names),
                "kept": _histogram(cliea[keep], names),
                "kept_share": round(float(keep.mean()), 4),
            }
        )
    return history


# -- the run -------------------------------------------------------------------------------------


@dataclass
class AdaptOptions:
    target: Path
    model: str = DEFAULT_MODEL  # checkpoint folder (its best/ when present) or kcdp:<asset>
    sources: list[Path] = field(default_factory=list)  # labelled; empty: the model's recipe
    minutes: float | None = 15.0  # the whole run, export included (None: no budget)
    epochs: int | None = None
    per_class: int | None = None
    rounds: int = 1  # self-training rounds: each restarts from the previous round's adapted model
    consistency: float = 0.0  # TrainConfig.consistency_weight
    # The labels the target can show, as the user declares them (None: all): pseudo-labels and the
    # export answer these alone (TrainConfig.target_classes, the export's manifest "classes").
    classes: tuple[str, ...] | None = None
    # TrainConfig.pseudo_select: class_quota caps every predicted class at an equal share, which also
    # fills classes the target may not have; class_fraction keeps the predicted proportions.
    pseudo_select: str = "class_quota"
    lr: float | None = None
    head_lr: float | None = None
    # lambda2, the weight of the pseudo-labelled target loss. The defaults here and below are a gentle
    # fine-tune of a converged model on noisy labels: chosen on two labelled training styles the
    # shipped model never saw (dylan, lorelei-neutral: +10.4 macro-F1 points on average against +2.2
    # for lr 1e-4 / 1e-3 / lambda2 1; benchmarks/RESULTS.md, "kcdp-adapt").
    target_weight: float = 0.3
    seed: int = 0
    max_drop: float = 5.0  # check-set points (accuracy or macro-F1) the adaptation may lose
    # A last step, the head refit on the target's centroid labels (benchmarks/RESULTS.md, "kcdp-adapt").
    refit: bool = True
    work: Path | None = None
    resume: bool = False
    progress: bool = True


@dataclass
class AdaptResult:
    checkpoint: Path  # the adapted checkpoint folder (config.json + model.safetensors)
    calibration: Path  # source + target sample, for int8
    work: Path
    report: dict
    dropped: bool  # the check set lost more than max_drop points


def resolve_model(model: str) -> Path:
    from kcdp_core.sources import resolve

    folder = Path(resolve(Source(model))[0])
    if (folder / "best" / "model.safetensors").is_file():
        folder = folder / "best"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise AdaptError(f"{folder}: not a checkpoint (config.json + model.safetensors)")
    return folder


# Applied after training, or only naming where it runs: not part of what a work folder holds.
_AFTER_TRAINING = ("target", "work", "resume", "progress", "max_drop", "model", "refit")


def _run_fields(options: AdaptOptions, model_dir: Path, target: TargetSet) -> dict:
    """What decides the training, as saved in plan.json: every option but those applied after it,
    the starting weights and the target's images."""
    fields = {k: v for k, v in asdict(options).items() if k not in _AFTER_TRAINING}
    fields["sources"] = [str(Path(s).resolve()) for s in options.sources]
    fields["weights"] = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    fields["target"] = target.digest
    return json.loads(json.dumps(fields, default=str))  # as plan.json will hold them


def _defaults() -> dict:
    return json.loads(json.dumps(asdict(AdaptOptions(Path("."))), default=str))


def _run_key(fields: dict) -> str:
    """The work folder's name under the cache. Options at their defaults leave it out, so that an
    option added by a later version does not move the runs of an earlier one (a changed default is
    caught by the fields plan.json keeps, see _mismatch)."""
    defaults = _defaults()
    keyed = {k: v for k, v in fields.items() if k not in defaults or v != defaults[k]}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def _mismatch(saved: dict, fields: dict, key: str) -> list[str]:
    """What differs between a saved run (plan.json) and this one: [] when --resume may continue it.
    An option the saved run predates ran as its default."""
    if "fields" not in saved:  # written before plan.json kept its fields
        return [] if saved.get("key") == key else ["the arguments or kcdp-adapt's version"]
    old, defaults = saved["fields"], _defaults()
    return sorted(
        k for k in old.keys() | fields.keys() if old.get(k, defaults.get(k)) != fields.get(k, defaults.get(k))
    )


def adapt_regime(
    epochs: int = DEFAULT_EPOCHS,
    *,
    pseudo_select: str = "class_quota",
    consistency: float = 0.0,
    target_weight: float = 0.3,
    lr: float | None = None,
    head_lr: float | None = None,
) -> dict[str, object]:
    """The TrainConfig fields of adapting a trained model (the mini preset's DA selection; no
    source-only warm-up: the starting model's CLIEA is already trained; a gentle learning rate).
    Also what benchmarks/accuracy.py's adapt rows train with."""
    return {
        "setting": "da",
        "epochs": epochs,
        "pseudo_labels": "epoch",
        "pseudo_select": pseudo_select,
        "pseudo_fraction": 0.3,
        "pseudo_fraction_end": 0.8,
        "pseudo_warmup_epochs": 0,
        "target_bn": True,
        "consistency_weight": consistency,
        "lambda2": target_weight,
        "lr": lr if lr is not None else 5e-6,
        "head_lr": head_lr if head_lr is not None else 2.5e-5,
    }


def adapt_config(start: KCDPConfig, options: AdaptOptions, plan: Plan, init: str) -> KCDPConfig:
    """The starting model's config in the adapt regime, trained from `init`."""
    regime = adapt_regime(
        plan.epochs, pseudo_select=options.pseudo_select, consistency=options.consistency,
        target_weight=options.target_weight, lr=options.lr, head_lr=options.head_lr,
    )  # fmt: skip
    train = {**regime, "seed": options.seed, "init_checkpoint": init, "target_classes": options.classes}
    return start.replace(train=train)


def _calibration(work: Path, pool: list[Labelled], target: TargetSet, seed: int) -> Path:
    """A folder of CALIBRATION_PER_SIDE source and target images (copies, named by content hash):
    source images under <label>/, target images under target/ (no label, so none is inferred)."""
    folder = work / "calibration"
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed + 11)
    picks = [pool[i] for i in sorted(rng.permutation(len(pool))[:CALIBRATION_PER_SIDE])]
    for row in picks:
        dst = (
            folder
            / "source"
            / row.label
            / f"{hashlib.sha256(row.path.read_bytes()).hexdigest()}{row.path.suffix}"
        )
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.path, dst)
    for i in sorted(rng.permutation(len(target.paths))[:CALIBRATION_PER_SIDE]):
        path = target.paths[i]
        dst = folder / "target" / f"{hashlib.sha256(path.read_bytes()).hexdigest()}{path.suffix.lower()}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
    return folder


def _plain_dataset(table, rows: Sequence[Path], labels: Sequence[int] | None):
    """Un-augmented images with their knowledge k (from `table`, a KnowledgeTable)."""
    from kcdp_core.train.datasets import ImageKnowledgeDataset, Record

    records = [Record(p, labels[i] if labels is not None else -1) for i, p in enumerate(rows)]
    k, mask = table.knowledge(rows)
    return ImageKnowledgeDataset.for_config(table.config, records, k, mask)


def _silent(_: str) -> None:
    pass


@dataclass
class _Run:
    """What the stages of one adaptation share."""

    options: AdaptOptions
    log: Callable[[str], None]
    state: object  # accelerate's PartialState: which process this is
    model_dir: Path
    start: object  # the starting KCDPModel
    names: list[str]
    target: TargetSet
    fields: dict  # what decides the training (_run_fields)
    key: str
    work: Path
    resuming: bool = False
    pool: SourcePool | None = None
    table: object = None  # the KnowledgeTable every dataset of the run reads its k from

    @property
    def plan_file(self) -> Path:
        return self.work / "plan.json"


def adapt(options: AdaptOptions, log: Callable[[str], None] = print) -> AdaptResult:
    """Adapt `options.model` to the images of `options.target`; the adapted checkpoint, a calibration
    folder and the report (also written to the work folder as adaptation.json)."""
    import torch
    from accelerate import PartialState

    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_core.train.pseudo_labels import absent_labels

    t0 = time.time()
    model_dir = resolve_model(options.model)
    target = read_target(options.target)
    start = KCDPModel.from_pretrained(model_dir)
    absent = absent_labels(start.config.labels, options.classes)  # checks the names first
    if not start.config.cliea.enabled:
        raise AdaptError(f"{model_dir}: adaptation needs CLIEA (the pseudo-labeller); this model has none")
    # The trainer's Accelerator shares this state: the same device choice, made before it exists.
    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        log = _silent  # one voice under `accelerate launch`
    for problem in target.skipped:
        log(f"skipped {problem}")
    fields = _run_fields(options, model_dir, target)
    key = _run_key(fields)
    work = Path(options.work) if options.work else cache_root() / "adapt" / "runs" / key
    run = _Run(options, log, state, model_dir, start, list(start.config.labels), target, fields, key, work)
    _prepare(run)
    target_ds, check_ds, knowledge_spi, cached = _datasets(run)

    tic = time.time()
    start_view = target_view(start, target_ds, absent=absent)
    check_before = check_metrics(start, check_ds, run.names)
    seconds_per_image = (time.time() - tic) / (len(target_ds) + len(check_ds))
    elapsed = time.time() - t0
    plan = _plan(run, len(target_ds) + len(check_ds), seconds_per_image, knowledge_spi, cached, elapsed)
    final, trained_s = _train(run, plan)
    rows = run.pool.subsample(plan.per_class)  # the source sample that trained (and calibrates the export)
    refit = after_view = None
    if options.refit:  # the refit's own pass over the target gives the view after it
        final, refit, after_view = _refit(run, KCDPModel.from_pretrained(final), target_ds, rows, absent)

    adapted = KCDPModel.from_pretrained(final)
    if after_view is None:
        after_view = target_view(adapted, target_ds, absent=absent)
    check_after = check_metrics(adapted, check_ds, run.names)
    drop = {k: round(100 * (check_before[k] - check_after[k]), 2) for k in ("accuracy", "macro_f1")}
    history = [
        {"round": r + 1, **row}
        for r in range(options.rounds)
        for row in pseudo_label_history(work / f"round{r + 1}" / "metrics.jsonl", run.names)
    ]
    report = {
        "model": options.model if options.model.startswith("kcdp:") else str(model_dir),
        "target": {
            "images": len(target.paths),
            "skipped": len(target.skipped),
            "sha256": target.digest,
            "hash_of": "sorted sha256 of every image's bytes (names and folders do not count)",
            "classes": list(options.classes or run.names),
            "classes_declared": options.classes is not None,
        },
        "work": str(work),  # the training run: --resume continues it, --force --resume exports it
        "sources": {"from": run.pool.origin, "images": len(rows), "check_images": len(run.pool.check)},
        "plan": asdict(plan)
        | {
            "rounds": options.rounds,
            "consistency_weight": options.consistency,
            "pseudo_select": options.pseudo_select,
        },
        "time_s": {"training": round(trained_s, 1), "total_before_export": round(time.time() - t0, 1)},
        "diagnostics": {
            "target_before": summarize(start_view, run.names),
            "target_after": summarize(after_view, run.names, start_view),
            "pseudo_labels_per_epoch": history,
            "refit": refit,
            "source_check_before": check_before,
            "source_check_after": check_after,
            "source_check_drop_points": drop,
            "max_drop_points": options.max_drop,
        },
    }
    if state.is_main_process:
        _calibration(work, rows, target, options.seed)
        (work / "adaptation.json").write_text(json.dumps(report, indent=1) + "\n")
    dropped = max(drop.values()) > options.max_drop
    return AdaptResult(final, work / "calibration", work, report, dropped)


def _prepare(run: _Run) -> None:
    """The work folder (kept for --resume of the same arguments, else emptied) and the labelled
    sources (built on first use). Under several processes the first one does it, the others wait.
    --resume never empties a folder that holds another run: it stops and says what differs."""
    options, log = run.options, run.log
    with run.state.main_process_first():
        saved = json.loads(run.plan_file.read_text()) if run.plan_file.is_file() else None
        differs = _mismatch(saved, run.fields, run.key) if saved is not None else None
        if options.resume and differs:
            raise AdaptError(
                f"{run.work}: --resume: this folder holds another run (differs in {', '.join(differs)}); "
                "rerun with that run's arguments, or without --resume to start afresh (empties the folder)"
            )
        run.resuming = options.resume and differs == []
        if run.state.is_main_process:
            if run.resuming:
                log(f"--resume: continuing {run.work}")
            else:
                if options.resume:
                    log(f"--resume: nothing to resume in {run.work}, starting afresh")
                shutil.rmtree(run.work, ignore_errors=True)
            run.work.mkdir(parents=True, exist_ok=True)
        log(f"work folder {run.work}")
        if options.sources:
            run.pool = given_sources(options.sources, run.names, options.seed)
        else:
            recipe = recipe_of(run.model_dir)
            if recipe is None:
                raise AdaptError(f"{run.model_dir}: no recorded recipe of labelled sources (pass --source)")
            run.pool = recipe_sources(recipe, run.names, cache_root() / "adapt" / "sources", log)


def _datasets(run: _Run):
    """(target dataset, check dataset, seconds per image to caption one not cached yet, the source
    images whose knowledge is cached)."""
    from kcdp_core.train.knowledge import KnowledgeTable

    run.table = table = KnowledgeTable(
        run.start.config, run.start.text_encoder, progress=run.options.progress
    )
    cached = {p for paths in run.pool.train.values() for p in paths if table.cached(p)}
    check = run.pool.check
    tic = time.time()
    fresh = sum(not table.cached(p) for p in run.target.paths + [r.path for r in check])
    target_ds = _plain_dataset(table, run.target.paths, None)
    check_ds = _plain_dataset(table, [r.path for r in check], [run.names.index(r.label) for r in check])
    return target_ds, check_ds, (time.time() - tic) / fresh if fresh else 0.0, cached


def _plan(
    run: _Run, images: int, seconds_per_image: float, knowledge_spi: float, cached: set[Path], elapsed: float
) -> Plan:
    """A fresh run's plan (written with the manifests it names), or the saved one (--resume)."""
    options, tc = run.options, run.start.config.train
    n_target = len(run.target.paths)
    if not run.resuming and run.state.is_main_process:
        # the export, then AdaBN, the head refit (a pass over the target, two over a source sample of
        # about its size) and the after-diagnostics: about six passes over target + check set
        reserve = EXPORT_SECONDS + 6 * images * seconds_per_image
        left = None if options.minutes is None else 60.0 * options.minutes - elapsed - reserve
        plan = plan_budget(
            run.pool, n_target, seconds_per_image, left, tc.batch_size, tc.val_fraction,
            options.epochs, options.per_class, options.rounds, 2 if options.consistency > 0 else 1,
            knowledge_spi, cached,
        )  # fmt: skip
        write_manifest(run.pool.subsample(plan.per_class), run.work / "source.csv")
        write_manifest(run.target.paths, run.work / "target.csv")
        # written last: a plan.json means the run's inputs are all there (what --resume relies on)
        run.plan_file.write_text(
            json.dumps({"key": run.key, "fields": run.fields, "plan": asdict(plan)}, indent=1) + "\n"
        )
    run.state.wait_for_everyone()
    plan = Plan(**json.loads(run.plan_file.read_text())["plan"])
    run.log(
        f"plan: {plan.epochs} epochs x {options.rounds} round(s), {plan.per_class} source images per class "
        f"and style ({plan.source_images} images), about {plan.estimated_training_s:.0f} s of training "
        f"({plan.how})"
    )
    return plan


def _train(run: _Run, plan: Plan) -> tuple[Path, float]:
    """The rounds of DA training (each from the previous round's adapted model); (final checkpoint,
    seconds spent)."""
    from kcdp_core.train.trainer import Trainer

    options, init, spent = run.options, str(run.model_dir), 0.0
    for r in range(options.rounds):
        out = run.work / f"round{r + 1}"
        config = adapt_config(run.start.config, options, plan, init)
        tic = time.time()
        trainer = Trainer(
            config, run.work / "source.csv", out, target=run.work / "target.csv",
            progress=options.progress, log=run.log,
        )  # fmt: skip
        trainer.run(resume=options.resume)
        spent += time.time() - tic
        init = str(out / "best")
    return Path(init), spent


def refit_to_target(model, target_ds, source_ds, absent=None, seed: int = 0) -> tuple[dict, TargetView]:
    """The head refit (in place) on the target's centroid labels in v (kcdp_core.train.centroid_labels)
    beside the labelled `source_ds`, so that it keeps what it knew (alone on the target it cost the source
    check set 5-6 points); (what the step did, the refit model's view of the target: only the head
    changed, so v and k of the pass before it serve). The source images are read with their own
    BatchNorm statistics, as the check set is; the target's labels are never read."""
    import torch

    from kcdp_core.train.centroid_labels import centroid_labels, refit_head, target_features
    from kcdp_core.train.pseudo_labels import declared

    found = target_features(model, _loader(target_ds, 32))
    labels = centroid_labels(found.v, declared(found.logits, absent).softmax(1))
    truth = torch.tensor([r.label for r in source_ds.records])
    both = found.joined(target_features(_reading(model, source_ds), _loader(source_ds, 32)))
    fits = refit_head(model.head, both, torch.cat([labels, truth]), seed=seed)
    with torch.no_grad():
        logits = model.head(found.v, found.k, found.k_mask)[0]
        view = TargetView(*_view(model, logits, found.v, found.k, found.k_mask, absent))
    report = {
        "labels": _histogram(labels.numpy(), model.config.labels),
        "relabelled": round(float((labels != found.logits.argmax(1)).float().mean()), 4),
        "source_images": len(truth),
        "head_fits_labels": round(fits, 4),
    }
    return report, view


def _refit(run: _Run, model, target_ds, rows, absent) -> tuple[Path, dict, TargetView | None]:
    """refit_to_target beside the run's labelled source sample `rows`, saved as work/refit; (that
    checkpoint, what the step did, its view of the target). Under several processes the first one does
    it, and only it has the view."""
    out, view = run.work / "refit", None
    if run.state.is_main_process:
        source_ds = _plain_dataset(
            run.table, [r.path for r in rows], [run.names.index(r.label) for r in rows]
        )
        report, view = refit_to_target(model, target_ds, source_ds, absent, seed=run.options.seed)
        model.save_pretrained(out)
        (out / "refit.json").write_text(json.dumps(report, indent=1) + "\n")
    run.state.wait_for_everyone()
    return out, json.loads((out / "refit.json").read_text()), view


def format_report(report: dict) -> str:
    """The diagnostics as a few lines a user reads without labels."""
    d = report["diagnostics"]
    before, after = d["target_before"], d["target_after"]
    cb, ca, drop = d["source_check_before"], d["source_check_after"], d["source_check_drop_points"]
    target = report["target"]
    declared = f"; classes declared: {' '.join(target['classes'])}" if target["classes_declared"] else ""
    lines = [
        f"target: {target['images']} images (sha256 {target['sha256'][:12]}...){declared}",
        f"predicted classes before: {before['predicted']}",
        f"predicted classes after:  {after['predicted']}",
        f"mean confidence {before['mean_confidence']:.3f} -> {after['mean_confidence']:.3f}; "
        f"CLIEA-head agreement {before['cliea_head_agreement']:.3f} -> {after['cliea_head_agreement']:.3f}; "
        f"{100 * after['changed_from_start']:.1f}% of target predictions changed",
    ]
    for row in d["pseudo_labels_per_epoch"]:
        lines.append(
            f"round {row['round']} epoch {row['epoch']}: pseudo-labels kept {row['kept']} "
            f"({100 * row['kept_share']:.0f}% of the target)"
        )
    if d.get("refit"):
        r = d["refit"]
        lines.append(
            f"head refit on the target's centroid labels {r['labels']}: {100 * r['relabelled']:.1f}% of the "
            f"target relabelled from the adapted head, {100 * r['head_fits_labels']:.1f}% of the labels fit"
        )
    lines.append(
        f"source check set ({cb['images']} labelled images held aside): accuracy {cb['accuracy']:.3f} -> "
        f"{ca['accuracy']:.3f}, macro-F1 {cb['macro_f1']:.3f} -> {ca['macro_f1']:.3f} "
        f"(drop {drop['accuracy']:+.1f} / {drop['macro_f1']:+.1f} points, limit {d['max_drop_points']})"
    )
    return "\n".join(lines)
