"""Label-free labellers after kcdp-adapt's target statistics step, each scored per style.

    python benchmarks/target_labels.py --model CKPT --cache $RUNS/target_statistics \
        --styles $DATA/avatars_labelled/domains/* [--labellers head cliea centroids ...] [--json OUT]

From the default model the whole of kcdp-adapt's gain is its target statistics step: the training
half learns from CLIEA's pseudo-labels, which are no better than the head's own predictions, and adds
nothing. A labeller better than the adapted head is what the training half would need. This script
asks which label-free labeller is: for every style folder (class subfolders, each style its own target)
the step is applied (benchmarks/target_statistics.py, the same cache of frozen outputs), and each
labeller (LABELLERS) labels the style's images from what the adapted model computes on all of them:

- head, cliea: the classification head's and CLIEA's argmax (what kcdp-adapt predicts and trains on);
- centroids (SHOT's self-supervised labels, Liang et al. 2020): class centroids in the head's fused space
  weighted by the head's (or CLIEA's) probabilities; each image to its nearest centroid (cosine); the
  centroids of those labels; nearest centroid again. A class nobody is nearest to drops out;
- neighbours (neighbourhood consistency, as NRC, Yang et al. 2021): the mean of the head's probabilities over
  each image's k nearest images in the same space, itself included.

The labels are transductive (every image of the style labelled from all of them): an upper bound for a
head trained on them. The true labels are read only to score: macro-F1 over the classes the style has.
Prints the same table as target_statistics.py, each labeller against the head.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, recorded_command  # noqa: E402
from target_statistics import BATCH, STEP, VARIANTS, adapted, batches, format_table, frozen_outputs  # noqa: E402


def centroids(features, probs, steps: int = 2):
    """[N] labels: nearest class centroid (cosine); the first centroids weighted by `probs` [N, C], each
    of the `steps` - 1 others the mean of the labels the last gave. A class with no image drops out."""
    from torch.nn.functional import normalize, one_hot

    f = normalize(features, dim=1)
    weights = probs
    for _ in range(steps):
        alive = weights.sum(0) > 0
        centres = normalize(weights.T @ f, dim=1)
        similarity = (f @ centres.T).masked_fill(~alive, float("-inf"))
        labels = similarity.argmax(1)
        weights = one_hot(labels, probs.shape[1]).to(f.dtype)
    return labels


def neighbours(features, probs, k: int):
    """[N] labels: argmax of the mean of `probs` over each row's k nearest rows (cosine), itself included."""
    from torch.nn.functional import normalize

    f = normalize(features, dim=1)
    nearest = (f @ f.T).topk(min(k, len(f)), dim=1).indices
    return probs[nearest].mean(1).argmax(1)


# name -> labeller(head's fused inputs, head's logits, CLIEA's scores) -> labels
LABELLERS: dict[str, Callable] = {
    "head": lambda a, logits, cliea: logits.argmax(1),
    "cliea": lambda a, logits, cliea: cliea.argmax(1),
    "centroids": lambda a, logits, cliea: centroids(a, logits.softmax(1)),
    "centroids from cliea": lambda a, logits, cliea: centroids(a, cliea.softmax(1)),
    "neighbours 5": lambda a, logits, cliea: neighbours(a, logits.softmax(1), 5),
    "neighbours 15": lambda a, logits, cliea: neighbours(a, logits.softmax(1), 15),
}


def after_step(model, outputs: dict) -> dict:
    """The head's fused inputs a, logits and CLIEA's scores of every image, after kcdp-adapt's step."""
    import torch

    from kcdp_core.model.head import pool_knowledge

    found: dict[str, list] = {"a": [], "logits": [], "cliea": []}
    with adapted(model, outputs, VARIANTS[STEP]) as forward:
        for batch in batches(outputs, BATCH):
            out = forward(batch)
            k, mask = batch["k"], batch["k_mask"]
            v = out.features
            found["a"].append(
                model.head.fuse(
                    torch.cat([v, pool_knowledge(k, mask)], 1) if model.head.config.use_knowledge else v
                )
            )
            found["logits"].append(out.logits)
            found["cliea"].append(model.cliea_scores(out.features, k, mask))
    return {name: torch.cat(parts) for name, parts in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="kcdp:default_model", help="checkpoint (default: the shipped one)")
    parser.add_argument(
        "--styles", nargs="+", type=Path, required=True, help="style folders of class folders"
    )
    parser.add_argument("--labellers", nargs="+", default=list(LABELLERS), choices=list(LABELLERS))
    parser.add_argument("--cache", type=Path, required=True, help="folder for the frozen outputs")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)

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
    if model.cliea is None:
        parser.error(f"{ckpt}: the labellers need CLIEA (cliea.enabled) in the checkpoint's config")
    cache = args.cache / hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()[:16]
    print(f"command: {recorded_command('target_labels.py')}\nmachine: {machine()}\ncheckpoint: {ckpt}")
    scores: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    for style in tqdm(args.styles, desc="styles", unit="style"):
        outputs = frozen_outputs(model, style, cache)
        truth = outputs["label"].numpy()
        sizes[style.name] = len(truth)
        found = after_step(model, outputs)
        scores[style.name] = {
            name: classification_metrics(
                truth, LABELLERS[name](found["a"], found["logits"], found["cliea"]).numpy(), model.labels
            )["macro_f1_truth"]
            for name in args.labellers
        }
    print(format_table(scores, args.labellers, sizes, reference="head"))
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(ckpt), "scores": scores}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
