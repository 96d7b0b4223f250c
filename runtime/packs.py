"""A pack: images of one style answered together (`kcdp-infer --pack`, `Pipeline.run(pack=True)`).

A model meets a new drawing style with every image of it shifted the same way, so alone each image is
often read wrongly, while the style's images still cluster by expression. A pack's answer is SHOT's
self-supervised labelling (kcdp_core.portable.centroids, as kcdp-adapt's refit uses it), with no
training: class centroids of the pack's image views weighted by the model's probabilities, each image
to the nearest (cosine), the centroids recomputed from those labels and assigned once more. The image
view is what the image branch hands perception (the image and face encoders' features, each of unit
length, side by side; perception's features for a model without one). Chosen on drawn styles no model
had seen: +11.2 points of macro-F1 in packs of 32 and +18.2 as whole styles (benchmarks/RESULTS.md,
"Packs").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kcdp_core.portable.centroids import centroid_labels

# Below this many readable images a pack is answered image by image (its smallest measured size: 16).
PACK_MIN = 16


def answer_as_pack(results: list[dict], views: Sequence[np.ndarray | None], labels: Sequence[str]) -> bool:
    """Give each result of the pack its centroid label ("label"; its own answer stays in "image_label"
    and its "scores" are its own). Errors stay as they are. False, with nothing changed, when fewer
    than PACK_MIN images could be read."""
    ok = [n for n, r in enumerate(results) if "error" not in r]
    if len(ok) < PACK_MIN:
        return False
    probs = np.array([[results[n]["scores"][c] for c in labels] for n in ok])
    found = centroid_labels(np.stack([views[n] for n in ok]), probs)
    for n, label in zip(ok, found, strict=True):
        results[n]["image_label"] = results[n]["label"]
        results[n]["label"] = labels[label]
    return True
