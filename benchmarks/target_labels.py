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
  centroids of those labels; nearest centroid again (kcdp_core.train.centroid_labels). A class nobody is
  nearest to drops out. "centroids in v" does the same in the FPN's output space, before the knowledge
  joins it, and "head refit on centroids in v" is its buildable form: a copy of the head trained on those
  labels, then its argmax (kcdp-adapt's last step trains it with a labelled source sample beside them);
- neighbours (neighbourhood consistency, as NRC, Yang et al. 2021): the mean of the head's probabilities over
  each image's k nearest images in the same space, itself included.

The labels are transductive (every image of the style labelled from all of them): an upper bound for a
head trained on them. The true labels are read only to score: macro-F1 over the classes the style has.
Prints the same table as target_statistics.py, each labeller against the head.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kcdp_core.train.centroid_labels import TargetFeatures, centroid_labels, refit_head

sys.path.insert(0, str(Path(__file__).resolve().parent))
from target_statistics import BATCH, STEP, VARIANTS, adapted, batches, score_styles  # noqa: E402


def neighbours(features, probs, k: int):
    """[N] labels: argmax of the mean of `probs` over each row's k nearest rows (cosine), itself included."""
    from torch.nn.functional import normalize

    f = normalize(features, dim=1)
    nearest = (f @ f.T).topk(min(k, len(f)), dim=1).indices
    return probs[nearest].mean(1).argmax(1)


def refit(found: dict):
    """The buildable form of "centroids in v": a copy of the head trained on those labels, its argmax."""
    import copy

    head = copy.deepcopy(found["head"])
    features = TargetFeatures(found["v"], found["k"], found["k_mask"], found["logits"])
    refit_head(head, features, LABELLERS["centroids in v"](found))
    with torch.no_grad():
        return head(found["v"], found["k"], found["k_mask"])[0].argmax(1)


# name -> labeller(what after_step found: the head's fused inputs a, the FPN's output v, the head's
# logits, CLIEA's scores, the knowledge k and its mask, a copy of the adapted head) -> labels
LABELLERS: dict[str, Callable] = {
    "head": lambda f: f["logits"].argmax(1),
    "cliea": lambda f: f["cliea"].argmax(1),
    "centroids": lambda f: centroid_labels(f["a"], f["logits"].softmax(1)),
    "centroids from cliea": lambda f: centroid_labels(f["a"], f["cliea"].softmax(1)),
    "centroids in v": lambda f: centroid_labels(f["v"], f["logits"].softmax(1)),
    "head refit on centroids in v": refit,
    "neighbours 5": lambda f: neighbours(f["a"], f["logits"].softmax(1), 5),
    "neighbours 15": lambda f: neighbours(f["a"], f["logits"].softmax(1), 15),
}


def after_step(model, outputs: dict) -> dict:
    """The head's fused inputs a, the FPN's output v, the logits, CLIEA's scores, k and k_mask of every
    image, and a copy of the head, after kcdp-adapt's step."""
    import copy

    found: dict[str, list] = {"a": [], "v": [], "logits": [], "cliea": []}
    with adapted(model, outputs, VARIANTS[STEP]) as forward:
        for batch in batches(outputs, BATCH):
            out = forward(batch)
            v, k, mask = out.features, batch["k"], batch["k_mask"]
            found["a"].append(model.head.fused(v, k, mask))
            found["v"].append(v)
            found["logits"].append(out.logits)
            found["cliea"].append(model.cliea_scores(v, k, mask))
        head = copy.deepcopy(model.head)
    given = {"k": outputs["k"], "k_mask": outputs["k_mask"], "head": head}  # the batches' order is outputs'
    return {name: torch.cat(parts) for name, parts in found.items()} | given


def predict(model, outputs: dict, chosen: list[str]) -> dict[str, np.ndarray]:
    """Each chosen labeller's labels of a style's images."""
    found = after_step(model, outputs)
    return {name: LABELLERS[name](found).numpy() for name in chosen}


def main(argv: list[str] | None = None) -> int:
    return score_styles(argv, __doc__, "target_labels.py", "labellers", LABELLERS, predict, reference="head")


if __name__ == "__main__":
    sys.exit(main())
