"""A pack: images of one style answered together (`kcdp-infer --pack`, `Pipeline.run(pack=True)`).

A model meets a new drawing style with every image of it shifted the same way, so alone each image is
often read wrongly, while the style's images still cluster by expression. A pack's answer is SHOT's
self-supervised labelling (Liang et al. 2020, as kcdp-adapt's refit uses it), with no training: class
centroids of the pack's image views weighted by the model's probabilities, each image to the nearest
(cosine), the centroids recomputed from those labels and assigned once more. The image view is what
the image branch hands perception (the image and face encoders' features, each unit length, side by
side; perception's features for a model without one). Chosen on drawn styles no model had seen:
+12.0 points of macro-F1 in packs of 32 and +18.2 with the whole style (benchmarks/RESULTS.md, "Packs").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Below this many readable images a pack is answered image by image (its smallest measured size: 16).
PACK_MIN = 16


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def centroid_labels(views: np.ndarray, probs: np.ndarray, steps: int = 2) -> np.ndarray:
    """[N] label indices: the nearest class centroid (cosine) of `views` [N, F], the first centroids
    weighted by `probs` [N, C], each later one the mean of the labels the last gave. A class without
    weight (one the model may not answer) is never given."""
    views, weights = unit(views.astype(np.float64)), probs.astype(np.float64)
    for _ in range(steps):
        similarity = views @ unit(weights.T @ views).T
        similarity[:, weights.sum(0) <= 0] = -np.inf
        labels = similarity.argmax(1)
        weights = np.eye(probs.shape[1])[labels]
    return labels


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
