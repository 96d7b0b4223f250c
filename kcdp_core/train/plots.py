"""Evaluation plots: confusion matrix, t-SNE of source vs target features (paper Figure 5)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    plt = _pyplot()
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels), 0.8 + 0.7 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black"
            )
    if title:
        ax.set_title(title)
    return _save(fig, path)


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(features)
    perplexity = float(max(2, min(30, (n - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(features, dtype=np.float64)
    )


def plot_tsne(
    source_features: np.ndarray,
    target_features: np.ndarray,
    path: str | Path,
    source_labels: np.ndarray | None = None,
    target_labels: np.ndarray | None = None,
    label_names: Sequence[str] = (),
    seed: int = 0,
    title: str = "",
) -> Path:
    """One t-SNE of both domains: source as circles, target as crosses, colour = class when known."""
    plt = _pyplot()
    both = np.concatenate([source_features, target_features])
    xy = tsne_embedding(both, seed)
    ns = len(source_features)
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab10")
    for part, (sl, marker, name) in enumerate(
        ((slice(0, ns), "o", "source"), (slice(ns, None), "x", "target"))
    ):
        labels = source_labels if part == 0 else target_labels
        if labels is None or len(label_names) == 0:
            ax.scatter(xy[sl, 0], xy[sl, 1], s=14, marker=marker, label=name, alpha=0.7)
            continue
        for c, cname in enumerate(label_names):
            sel = np.asarray(labels) == c
            if sel.any():
                ax.scatter(
                    xy[sl][sel, 0],
                    xy[sl][sel, 1],
                    s=14,
                    marker=marker,
                    color=cmap(c % 10),
                    label=f"{name}: {cname}",
                    alpha=0.7,
                )
    ax.legend(fontsize=6, ncol=2, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of v: source (o) vs target (x)")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
