"""Real images for parity and int8 calibration: each image's pixels, caption, triplets and knowledge k,
computed with the PyTorch model exactly as training does (retrieval captioner, TripletParser,
frozen text encoder, assemble_knowledge). Images are found recursively under a folder; an image in
`<label>/` of the model's label set carries that label (for the int8 accuracy figure)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kcdp_core.portable.assemble import KnowledgeRule, knowledge_texts
from kcdp_core.portable.constants import IMAGE_SUFFIXES
from kcdp_core.portable.images import ImageError, load_image, preprocess_views


@dataclass
class RealSet:
    paths: list[Path]
    labels: np.ndarray | None  # [N] label index, or None when the folder carries no labels
    pixels: np.ndarray  # [N, 3, S, S] float32 in [0, 1]
    captions: list[str]
    triplets: list[list[tuple[str, ...]]]  # as k holds them (KnowledgeRule applied)
    knowledge: np.ndarray  # [N, 2L, D]
    knowledge_mask: np.ndarray  # [N, 2L]
    texts: list[str] = field(default_factory=list)  # every text the text encoder saw (captions, triplets)
    captioner: str = ""
    skipped: list[str] = field(default_factory=list)
    # the image views perception fuses into v, by input name (KCDPModel.image_inputs)
    image_views: dict[str, np.ndarray] = field(default_factory=dict)
    face: np.ndarray | None = None  # [N, 3, F, F]: the face view, for a model with perception.face_view

    def __len__(self) -> int:
        return len(self.paths)

    def perception_feeds(self) -> dict[str, np.ndarray]:
        feeds = {"pixels": self.pixels, "knowledge": self.knowledge, "knowledge_mask": self.knowledge_mask}
        return feeds | self.image_views


def find_images(root: Path, limit: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under root (recursively), sorted; a deterministic, label-stratified-ish sample when
    there are more than `limit` (every class folder keeps its share)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: calibration folder does not exist")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{root}: no images found (looked for {sorted(IMAGE_SUFFIXES)})")
    if limit is not None and len(paths) > limit:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(paths))[:limit]
        paths = [paths[i] for i in sorted(order)]
    return paths


def load_real_set(model, root: Path, limit: int | None = 64, captions_csv: str | None = None) -> RealSet:
    """Load images under root, caption them and compute k with the PyTorch model."""
    config = model.config
    size, face_size = int(config.foundation.image_size), int(config.perception.face_view)
    pixels, faces, images, paths, skipped = [], [], [], [], []
    for path in find_images(root, limit):
        try:
            img = load_image(path)
        except ImageError as exc:
            skipped.append(str(exc))
            print(f"kcdp-export: skipped {exc}", file=sys.stderr)
            continue
        images.append(img)
        whole, face = preprocess_views(img, size, face_size)
        pixels.append(whole)
        if face is not None:
            faces.append(face)
        paths.append(path)
    if not paths:
        raise ValueError(f"{root}: none of the images could be read ({'; '.join(skipped[:3])})")
    label_index = {name: i for i, name in enumerate(model.labels)}
    labels = [label_index.get(p.parent.name) for p in paths]
    label_array = np.array(labels, dtype=np.int64) if all(x is not None for x in labels) else None

    captioner = _captioner(model, captions_csv)
    captions = []
    step = max(1, int(getattr(captioner, "batch_size", 8)))
    for start in range(0, len(images), step):
        captions += captioner(images[start : start + step], paths[start : start + step])
    from kcdp_core.portable.triplets import TripletParser

    triplets = TripletParser(config.knowledge.parser_model).parse_many(captions)
    used_captions, used_triplets = KnowledgeRule.of(config.knowledge).apply(captions, triplets)
    k, mask = model.encode_knowledge(used_captions, used_triplets)
    texts = list(dict.fromkeys(knowledge_texts(used_captions, used_triplets)))
    pixel_array = np.stack(pixels).astype(np.float32)
    face_array = np.stack(faces).astype(np.float32) if faces else None
    image_views = {}
    if model.image_inputs:
        import torch

        face = None if face_array is None else torch.from_numpy(face_array)
        with torch.no_grad():
            views = model.image_views(torch.from_numpy(pixel_array), face)
        image_views = {name: view.numpy() for name, view in views.items()}
    return RealSet(
        paths=paths,
        labels=label_array,
        pixels=pixel_array,
        captions=captions,
        triplets=used_triplets,
        knowledge=k.astype(np.float32),
        knowledge_mask=mask.astype(np.float32),
        texts=texts,
        captioner=getattr(captioner, "id", type(captioner).__name__),
        skipped=skipped,
        image_views=image_views,
        face=face_array,
    )


def _captioner(model, captions_csv: str | None):
    from kcdp_core.knowledge.captioners import RetrievalCaptioner, build_captioner

    kc = model.config.knowledge
    if captions_csv is None and kc.captioner == "retrieval" and model.image_encoder is not None:
        from kcdp_core.portable.caption_bank import CaptionBank

        if model.caption_bank_dir is None:
            raise ValueError("the retrieval captioner needs the foundation's caption_bank/ (none found)")
        bank = CaptionBank.load(model.caption_bank_dir)
        return RetrievalCaptioner(model.image_encoder, bank, kc.retrieval_top_k)
    return build_captioner(model.config, captions_csv=captions_csv)
