"""Which BatchNorm statistics should kcdp-adapt's target step recompute? Each choice scored per style.

    python benchmarks/target_statistics.py --model CKPT --cache $RUNS/target_statistics \
        --styles $DATA/avatars_labelled/domains/* [--variants none fpn+tail tail ...] [--json OUT]

kcdp-adapt ends with the target statistics step (kcdp_core.train.target_bn, AdaBN): the BatchNorm
statistics of the FPN and the image tail recomputed over the unlabelled target images. This script
asks which layers that step should reach: for every style folder (class subfolders, each style its
own target) and every variant, the statistics of the variant's layers are recomputed over the style's
images (one pass in kcdp-adapt's order and batch size, a cumulative average, as the step does) and the
style is classified. The labels are read only to score: macro-F1 over the classes the style has
(`macro_f1_truth`, as the avatar tables).

What no variant changes, the UNet's levels pooled by the FPN and the knowledge, is computed once per
style and checkpoint and kept under --cache (safetensors), so a second run or a new variant costs only
the image branch. The variants (VARIANTS): none; the FPN and the image tail (kcdp-adapt's step); each of
the two alone; the step plus statistics of the frozen image encoder (EfficientNet-Lite0) the tail reads
from: all of its BatchNorms, shared by the whole image and the face view as the module runs both, or
one set per view (the exported face encoder is a graph of its own), and per view the stem's only or
those of the four stages below the tail; the step with the image tail's statistics one set per view. A change to the encoder's statistics would also change the
retrieval captioner's embedding; the knowledge is kept as cached here (an upper bound for an export
with one trunk pass). Prints a table: per style, the mean, and each variant's change against the step
with its worst style; then, from a paired bootstrap over each style's images (--rounds), the change's
95% interval and the styles surely below or above the step.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from kcdp_core.model.output import KCDPOutput

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, recorded_command  # noqa: E402

BATCH = 32  # images per forward pass where no statistics are computed
STEP = "fpn+tail"  # kcdp-adapt's step: the reference every other variant is compared with


@dataclass(frozen=True)
class Variant:
    head: tuple[str, ...]  # of "fpn", "tail": the trained modules whose statistics are recomputed
    encoder: str = ""  # the frozen image encoder's: "" none, "all", "stem", "below-tail"
    per_view: bool = False  # the encoder's statistics one set per view (whole image, face view)
    tail_per_view: bool = False  # the image tail's statistics one set per view


VARIANTS = {
    "none": Variant(()),
    "fpn+tail": Variant(("fpn", "tail")),
    "tail": Variant(("tail",)),
    "fpn": Variant(("fpn",)),
    "+encoder": Variant(("fpn", "tail"), "all"),
    "+encoder per view": Variant(("fpn", "tail"), "all", per_view=True),
    "+stem per view": Variant(("fpn", "tail"), "stem", per_view=True),
    "+4 stages below the tail per view": Variant(("fpn", "tail"), "below-tail", per_view=True),
    "fpn+tail per view": Variant(("fpn", "tail"), tail_per_view=True),
}


def frozen_outputs(model, style: Path, cache: Path) -> dict:
    """pixels, face (with a face view), k, k_mask, label and the pooled UNet levels of every image of
    `style` (from `cache` when this checkpoint has seen these files before), in the order kcdp-adapt
    reads a target: by content hash. The statistics are averaged batch by batch, so the order counts:
    batches of one class each (the folders' order) would leave the between-class variance out."""
    import torch
    from safetensors.torch import load_file, save_file

    from kcdp_core.train.datasets import file_hash, load_records
    from kcdp_core.train.evaluate import load_dataset

    paths = [r.path for r in load_records(style, model.labels)]
    hashes = [file_hash(p) for p in paths]
    digest = hashlib.sha256("".join(f"{p.name}:{h}" for p, h in zip(paths, hashes, strict=True)).encode())
    file = cache / f"{style.name}-{digest.hexdigest()[:16]}.safetensors"
    if file.is_file():
        out = load_file(str(file))
    else:  # decoding the images and looking up their knowledge only when they are not cached
        ds = load_dataset(model, style)
        items = [ds[i] for i in range(len(ds))]
        names = ["pixels", "k", "k_mask", "label"] + (["face"] if "face" in items[0] else [])
        out = {name: torch.stack([it[name] for it in items]) for name in names}
        with torch.no_grad():
            out["pooled"] = torch.cat(
                [model.pooled_levels(b["pixels"], b["k"], b["k_mask"]) for b in batches(out, BATCH)]
            )
        cache.mkdir(parents=True, exist_ok=True)
        save_file({name: t.contiguous() for name, t in out.items()}, str(file))
    order = torch.tensor(sorted(range(len(paths)), key=lambda i: (hashes[i], str(paths[i]))))
    return {name: t[order] for name, t in out.items()}


def batches(outputs: dict, size: int):
    n = len(outputs["label"])
    for start in range(0, n, size):
        yield {name: t[start : start + size] for name, t in outputs.items()}


def encoder_norms(encoder, scope: str, tail: int) -> list:
    """The BatchNorm layers of the frozen image encoder a variant recomputes."""
    from torch import nn

    from kcdp_core.train.target_bn import batch_norms

    if scope == "all":
        return batch_norms(encoder)
    if scope == "stem":
        return batch_norms(encoder.stages()[0])
    if scope == "below-tail":
        return batch_norms(nn.ModuleList(encoder.stages()[-4 - tail : -tail]))
    raise ValueError(f"unknown encoder scope {scope!r} (all, stem, below-tail)")


@contextmanager
def adapted(model, outputs: dict, variant: Variant) -> Iterator[Callable[[dict], KCDPOutput]]:
    """The model with the variant's statistics recomputed on `outputs`, in eval mode: yields
    forward(batch) -> KCDPOutput over the cached frozen outputs; the statistics are restored after."""
    import torch

    from kcdp_core.model.image_tail import FaceEncoder, ImageEncoderOutputs
    from kcdp_core.train.target_bn import batch_norms, recompute_statistics

    encoder = model.image_encoder
    if variant.encoder and model.image_tail is None:
        raise ValueError("the encoder's variants need a model with an image tail (perception.image_tail)")
    if variant.tail_per_view and not model.face_view:
        raise ValueError(
            "the tail's statistics per view need a model with a face view (perception.face_view)"
        )
    face_encoder = copy.deepcopy(encoder) if variant.per_view else encoder
    face_tail = copy.deepcopy(model.image_tail) if variant.tail_per_view else model.image_tail
    modules = {"fpn": model.fpn, "tail": model.image_tail}
    within = [batch_norms(modules[name]) for name in variant.head if modules[name] is not None]
    if face_tail is not model.image_tail:
        within.append(batch_norms(face_tail))
    if variant.encoder:
        tail = model.image_tail.size
        within.append(encoder_norms(encoder, variant.encoder, tail))
        if variant.per_view and model.face_view:
            within.append(encoder_norms(face_encoder, variant.encoder, tail))
    norms = [bn for group in within for bn in group]
    saved = [copy.deepcopy(bn.state_dict()) for bn in norms]

    image_branch = ImageEncoderOutputs(encoder, model.image_tail) if model.image_tail is not None else None
    face_branch = FaceEncoder(face_encoder, face_tail) if model.face_view else None
    if face_branch is not None:
        face_branch.eval()  # copies are no submodules: the model's train/eval switches leave them alone

    def forward(batch: dict) -> KCDPOutput:
        view = None
        if image_branch is not None:
            views = [image_branch.features(batch["pixels"])]
            if face_branch is not None:
                views.append(face_branch(batch["face"]))
            view = torch.cat(views, 1)
        elif model.config.perception.image_embedding:
            view = encoder(batch["pixels"])
        return model.from_pooled_levels(batch["pooled"], batch["k"], batch["k_mask"], view)

    try:
        if norms:  # in batches of the checkpoint's training batch size, as kcdp-adapt's step
            size = model.config.train.batch_size
            recompute_statistics(model, batches(outputs, size), within=norms, forward=forward)
        model.eval()
        if face_branch is not None:
            face_branch.eval()  # the copies' BatchNorms were left in training mode by the step
        with torch.no_grad():
            yield forward
    finally:
        for bn, state in zip(norms, saved, strict=True):
            bn.load_state_dict(state)


def run_variant(model, outputs: dict, variant: Variant) -> np.ndarray:
    """The predicted class of every image after the variant's statistics are recomputed on them; the
    model's statistics are restored afterwards."""
    import torch

    with adapted(model, outputs, variant) as forward:
        return torch.cat([forward(b).logits.argmax(-1) for b in batches(outputs, BATCH)]).numpy()


def format_table(
    scores: dict[str, dict[str, float]], variants: list[str], sizes: dict[str, int], reference: str = STEP
) -> str:
    """Per style and mean; each variant's mean change against `reference` and its worst style."""
    lines = [
        "| style (images) | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    for style, row in scores.items():
        lines.append(f"| {style} ({sizes[style]}) | " + " | ".join(f"{row[v]:.3f}" for v in variants) + " |")
    means = {v: float(np.mean([row[v] for row in scores.values()])) for v in variants}
    lines.append("| mean | " + " | ".join(f"{means[v]:.3f}" for v in variants) + " |")
    if reference in variants:
        cells = []
        for v in variants:
            diffs = {s: 100 * (row[v] - row[reference]) for s, row in scores.items()}
            worst = min(diffs, key=diffs.get)
            change = round(100 * (means[v] - means[reference]), 1) + 0.0  # + 0.0: no "-0.0"
            cells.append(f"{change:+.1f} ({worst} {diffs[worst]:+.1f})")
        lines.append(f"| change against {reference} (worst style) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_bootstrap(
    truths: dict[str, np.ndarray],
    predictions: dict[str, dict[str, np.ndarray]],
    reference: str,
    labels: tuple[str, ...],
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """How sure each change against `reference` is: the images of every style resampled `rounds` times
    (the same draw for every name: paired). Per name: the 95% interval of the mean change over the
    styles, in points, and the styles whose own change is below (above) zero in 97.5% of the draws."""
    from kcdp_core.train.evaluate import classification_metrics

    def f1(truth: np.ndarray, predicted: np.ndarray) -> float:
        return classification_metrics(truth, predicted, labels)["macro_f1_truth"]

    rng = np.random.default_rng(seed)
    names = list(next(iter(predictions.values())))
    changes = {name: np.zeros((rounds, len(truths))) for name in names}  # [draw, style] in points
    for j, (style, truth) in enumerate(truths.items()):
        for r in range(rounds):
            draw = rng.integers(0, len(truth), len(truth))
            base = f1(truth[draw], predictions[style][reference][draw])
            for name in names:
                changes[name][r, j] = 100 * (f1(truth[draw], predictions[style][name][draw]) - base)
    styles = list(truths)
    out = {}
    for name, c in changes.items():
        low, high = np.percentile(c, [2.5, 97.5], axis=0)
        out[name] = {
            "interval": tuple(float(x) for x in np.percentile(c.mean(1), [2.5, 97.5])),
            "below": [s for s, h in zip(styles, high, strict=True) if h < 0],
            "above": [s for s, lo in zip(styles, low, strict=True) if lo > 0],
        }
    return out


def format_bootstrap(sure: dict[str, dict], names: list[str], reference: str) -> str:
    """Two table rows for paired_bootstrap(): the mean change's interval, and the styles surely below
    and above `reference`."""
    intervals = [f"{sure[n]['interval'][0]:+.1f} to {sure[n]['interval'][1]:+.1f}" for n in names]
    counts = [f"{len(sure[n]['below'])} / {len(sure[n]['above'])}" for n in names]
    return (
        f"| change against {reference}, 95% interval (paired bootstrap over images) | "
        + " | ".join(intervals)
        + " |\n| styles surely below / above it (97.5% of the draws) | "
        + " | ".join(counts)
        + " |\n"
    )


def score_styles(
    argv: list[str] | None,
    doc: str,
    script: str,
    option: str,
    choices: dict,
    predict: Callable[[object, dict, list[str]], dict[str, np.ndarray]],
    reference: str,
) -> int:
    """The command of this script and of target_labels.py: for every style (cached frozen outputs),
    `predict(model, outputs, chosen)` gives each chosen name's labels; prints the table of macro-F1
    against `reference`. --`option` picks among the keys of `choices`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default="kcdp:default_model", help="checkpoint (default: the shipped one)")
    parser.add_argument(
        "--styles", nargs="+", type=Path, required=True, help="style folders of class folders"
    )
    parser.add_argument(f"--{option}", nargs="+", default=list(choices), choices=list(choices))
    parser.add_argument("--cache", type=Path, required=True, help="folder for the frozen outputs")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--rounds", type=int, default=1000, help="paired bootstrap draws over each style's images (0: none)"
    )
    args = parser.parse_args(argv)
    chosen = getattr(args, option)

    import torch
    from tqdm import tqdm

    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_core.train.adapt import resolve_model
    from kcdp_core.train.evaluate import classification_metrics

    if args.threads:
        torch.set_num_threads(args.threads)
    missing = [str(s) for s in args.styles if not s.is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)}")
    ckpt = resolve_model(args.model)
    model = KCDPModel.from_pretrained(ckpt)
    cache = args.cache / hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()[:16]
    print(f"command: {recorded_command(script)}\nmachine: {machine()}\ncheckpoint: {ckpt}")
    scores: dict[str, dict[str, float]] = {}
    truths: dict[str, np.ndarray] = {}
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for style in tqdm(args.styles, desc="styles", unit="style"):
        outputs = frozen_outputs(model, style, cache)
        truths[style.name] = truth = outputs["label"].numpy()
        predictions[style.name] = predict(model, outputs, chosen)
        scores[style.name] = {
            name: classification_metrics(truth, labels, model.labels)["macro_f1_truth"]
            for name, labels in predictions[style.name].items()
        }
    table = format_table(scores, chosen, {s: len(t) for s, t in truths.items()}, reference)
    report: dict = {"checkpoint": str(ckpt), "scores": scores}
    if args.rounds and reference in chosen:
        report["bootstrap"] = paired_bootstrap(truths, predictions, reference, model.labels, args.rounds)
        table += format_bootstrap(report["bootstrap"], chosen, reference)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return score_styles(
        argv,
        __doc__,
        "target_statistics.py",
        "variants",
        VARIANTS,
        lambda model, outputs, chosen: {v: run_variant(model, outputs, VARIANTS[v]) for v in chosen},
        reference=STEP,
    )


if __name__ == "__main__":
    sys.exit(main())
