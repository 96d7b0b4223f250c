"""SHOT's self-supervised labels (Liang et al. 2020): class centroids placed among the images' features,
weighted by a model's probabilities, each image to the nearest. Torch-free: kcdp-adapt's refit
(kcdp_core.train.centroid_labels) and the runtime's packs (kcdp_runtime.packs) label with this one."""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def centroid_labels(features: np.ndarray, probs: np.ndarray, steps: int = 2) -> np.ndarray:
    """[N] label indices: the nearest class centroid (cosine) of `features` [N, F], the first centroids
    weighted by `probs` [N, C], each later one the mean of the labels the last gave. A class without
    weight (one the model may not answer, or a target was declared to lack) is never given."""
    features, weights = unit(features.astype(np.float64)), probs.astype(np.float64)
    for _ in range(steps):
        similarity = features @ unit(weights.T @ features).T
        similarity[:, weights.sum(0) <= 0] = -np.inf
        labels = similarity.argmax(1)
        weights = np.eye(probs.shape[1])[labels]
    return labels
