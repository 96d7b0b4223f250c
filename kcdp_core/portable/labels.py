"""Emotion label sets. Torch-free: shared by training, export and runtime."""

from __future__ import annotations

from collections.abc import Sequence

# The 7 classes of the emoji benchmark and of SER30K, in this fixed order.
EMOJI7: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
SER30K = EMOJI7
# The authors' code trains on these 6 (official repository order).
OFFICIAL6: tuple[str, ...] = ("surprise", "happy", "disgust", "fear", "sad", "anger")
# Mikels' 8 categories (EmoSet, FI, Emo8, ArtPhoto, Abstract).
MIKELS8: tuple[str, ...] = (
    "amusement",
    "anger",
    "awe",
    "contentment",
    "disgust",
    "excitement",
    "fear",
    "sadness",
)

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "emoji7": EMOJI7,
    "ser30k": SER30K,
    "official6": OFFICIAL6,
    "mikels8": MIKELS8,
}


def resolve_labels(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A named set ("emoji7", "mikels8", ...), a comma list, or a sequence of names."""
    if isinstance(spec, (list, tuple)):
        labels = tuple(spec)
    elif spec in LABEL_SETS:
        labels = LABEL_SETS[spec]
    else:
        labels = tuple(s.strip() for s in spec.split(",") if s.strip())
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"a label set needs at least two distinct names, got {labels!r}")
    return labels


def answered(labels: Sequence[str], classes: Sequence[str] | None) -> list[bool] | None:
    """Per label, whether it is among `classes`, the labels a model is to answer (`--classes`); None when
    none are given. Raises ValueError unless `classes` is a non-empty subset of `labels`."""
    if classes is None:
        return None
    unknown = [c for c in classes if c not in labels]
    if unknown or not classes:
        raise ValueError(
            f"classes {' '.join(classes)}: each must be one of the labels {' '.join(labels)} "
            f"(unknown: {' '.join(unknown) or 'none given'})"
        )
    return [label in classes for label in labels]
