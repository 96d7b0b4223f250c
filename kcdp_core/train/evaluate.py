"""Classification metrics and batched prediction.

Macro-F1 averages over the classes that occur in the true or the predicted labels (scikit-learn's
default); a class never predicted and never present does not count. Per-class recall is reported
for the classes present in the truth (None for the others).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict[str, object]:
    """accuracy, macro_f1, per_class_recall {label: recall or None}, confusion [[...]], n.

    macro_f1 averages over the classes in the truth or the predictions (a prediction of a class the
    data lacks adds an F1 of 0); macro_f1_truth over the classes in the truth only, as the avatar
    tables report a style that has 3-7 of the classes."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes")
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    if (y_true < 0).any():
        raise ValueError("evaluation needs labelled data (found unlabelled samples)")
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    present = (support > 0) | (predicted > 0)
    denom = support + predicted
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    recall = {name: (float(tp[i] / support[i]) if support[i] > 0 else None) for i, name in enumerate(labels)}
    return {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / len(y_true)),
        "macro_f1": float(f1[present].mean()),
        "macro_f1_truth": float(f1[support > 0].mean()),
        "per_class_recall": recall,
        "per_class_f1": {name: float(f1[i]) for i, name in enumerate(labels) if present[i]},
        "confusion": cm.tolist(),
    }


@dataclass
class Predictions:
    probs: np.ndarray  # [N, C]
    features: np.ndarray  # [N, F]
    labels: np.ndarray  # [N] true labels (-1 when unlabelled)

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: torch.utils.data.DataLoader, device=None) -> Predictions:
    """Run the model in eval mode over a loader of ImageKnowledgeDataset batches."""
    was_training = model.training
    model.eval()
    probs, feats, labels = [], [], []
    for batch in loader:
        if device is not None:
            batch = {name: t.to(device) for name, t in batch.items()}
        out = model(batch["pixels"], batch["k"], batch["k_mask"], face=batch.get("face"))
        probs.append(out.probs.float().cpu())
        feats.append(out.features.float().cpu())
        labels.append(batch["label"].cpu())
    model.train(was_training)
    return Predictions(torch.cat(probs).numpy(), torch.cat(feats).numpy(), torch.cat(labels).numpy())


def load_dataset(model, data: str | Path, with_labels: bool = True, describe=None):
    """An un-augmented ImageKnowledgeDataset over `data` with k from the model's text encoder."""
    from kcdp_core.train.datasets import ImageKnowledgeDataset, load_records
    from kcdp_core.train.knowledge import KnowledgeTable

    config = model.config
    records = load_records(data, config.labels, with_labels=with_labels)
    k, mask = KnowledgeTable(config, model.text_encoder, describe).knowledge([r.path for r in records])
    return ImageKnowledgeDataset.for_config(config, records, k, mask)


def evaluate_checkpoint(
    ckpt: str | Path,
    data: str | Path,
    batch_size: int = 32,
    confusion: str | Path | None = None,
    tsne: str | Path | None = None,
    tsne_source: str | Path | None = None,
    model=None,
    describe=None,
) -> dict[str, object]:
    """Metrics of a checkpoint (folder with config.json + model.safetensors) on labelled data."""
    from kcdp_core.model.kcdp import KCDPModel

    model = model or KCDPModel.from_pretrained(ckpt)
    ds = load_dataset(model, data, describe=describe)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    preds = predict(model, loader)
    report: dict[str, object] = {"checkpoint": str(ckpt), "data": str(data)}
    report.update(classification_metrics(preds.labels, preds.predicted, model.config.labels))
    if confusion:
        from kcdp_core.train.plots import plot_confusion

        report["confusion_png"] = str(
            plot_confusion(
                np.asarray(report["confusion"]), model.config.labels, confusion, title=str(Path(data).name)
            )
        )
    if tsne:
        from kcdp_core.train.plots import plot_tsne

        src = load_dataset(model, tsne_source, describe=describe)
        src_preds = predict(model, torch.utils.data.DataLoader(src, batch_size=batch_size))
        report["tsne_png"] = str(
            plot_tsne(
                src_preds.features,
                preds.features,
                tsne,
                src_preds.labels,
                preds.labels,
                model.config.labels,
                title=f"t-SNE of v: {Path(tsne_source).name} (o) vs {Path(data).name} (x)",
            )
        )
    return report
