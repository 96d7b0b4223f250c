"""Captioners of the runtime: retrieval (image_encoder.onnx + caption bank), InstructBLIP (sd15), given.

`mini`/`tiny` caption by retrieval: the image encoder embeds the image in the text encoder's
sentence space and the nearest bank captions (cosine) are the caption. The bank may carry each
caption's triplets, parsed offline with the same parser; then the runtime never loads spaCy for
them (spaCy's load alone costs seconds of cold start). `sd15` captions with InstructBLIP, which
stays a transformers stage: it is imported only when such an export is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from kcdp_core.portable.caption_bank import CaptionBank
from kcdp_core.portable.constants import CAPTION_SEPARATOR
from kcdp_runtime.manifest import Manifest, ModelError

Triplet = tuple[str, str, str]


@dataclass
class Caption:
    text: str
    # Triplets known without parsing (from the bank), or None: the pipeline parses the text.
    triplets: list[Triplet] | None = None
    # The image encoder graph's outputs for this image when the captioner ran it (embedding, and
    # image_features with an image tail): perception may take one of them as input.
    image: dict[str, np.ndarray] | None = None
    # The caption bank row of a top-1 retrieved caption (its knowledge may be precomputed).
    index: int | None = None


class Captioner(Protocol):
    name: str

    def caption(self, images: Sequence[Image.Image], pixels: np.ndarray) -> list[Caption]: ...


def load_bank(manifest: Manifest) -> tuple[CaptionBank, bool]:
    """The caption bank, and whether its triplets may stand in for the parser.

    Training parses the retrieved caption with TripletParser; bank triplets are used instead only
    when the manifest says the same parser version wrote them (caption_bank.triplets_parser).
    """
    spec = manifest.caption_bank
    if not spec:
        raise ModelError(f"{manifest.folder}: the retrieval captioner needs a caption_bank in manifest.json")
    folder = manifest.path(spec.captions).parent
    try:
        bank = CaptionBank.load(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder}: unreadable caption bank ({exc})") from None
    parser_version = manifest.knowledge.parser.version
    trusted = bool(parser_version) and spec.triplets_parser == parser_version
    return bank, trusted


def encode_images(session: Any, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An image graph (fp32 or fp16 input) -> its outputs by name, float32. The image encoder: pixels
    [B, 3, S, S] -> embedding [B, E] (the retrieval space) and, from a model with an image tail,
    image_features; the face encoder: face [B, 3, F, F] -> face_features."""
    feed = {}
    for spec in session.get_inputs():
        if spec.name not in images:
            raise ValueError(f"the graph takes {spec.name!r}, which was not given")
        dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
        feed[spec.name] = images[spec.name].astype(dtype)
    names = [o.name for o in session.get_outputs()]
    arrays = session.run(names, feed)
    return {name: a.astype(np.float32) for name, a in zip(names, arrays, strict=True)}


class RetrievalCaptioner:
    name = "retrieval"

    def __init__(
        self,
        session: Any,
        bank: CaptionBank,
        top_k: int = 1,
        bank_triplets: bool = False,
        separator: str = CAPTION_SEPARATOR,
    ):
        self.session = session
        self.separator = separator
        self.bank = bank
        self.top_k = max(1, min(int(top_k), len(bank)))
        self.bank_triplets = bank_triplets

    def caption(self, images: Sequence[Image.Image], pixels: np.ndarray) -> list[Caption]:
        outputs = encode_images(self.session, {"pixels": pixels})
        with _single_threaded_blas():
            indices, _ = self.bank.search(outputs["embedding"], self.top_k)  # kcdp_core's search: same ties
        out = []
        for i, row in enumerate(indices):
            text = self.separator.join(self.bank.captions[j] for j in row)
            known = self.bank.triplets[row[0]] if self.bank_triplets and len(row) == 1 else None
            triplets = [tuple(t) for t in known] if known is not None else None
            image = {name: a[i] for name, a in outputs.items()}
            out.append(Caption(text, triplets, image, int(row[0]) if len(row) == 1 else None))
        return out


_BLAS: Any = None


def _single_threaded_blas() -> Any:
    """The bank search is one small matrix product (B x 3,935 x 384): numpy's threaded BLAS only
    wakes threads that fight onnxruntime's pool for the same cores (measured on 2 loaded cores:
    p50 8-9 ms threaded vs 0.3-1.2 ms on one thread). threadpoolctl limits it for the call only."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


class GivenCaptioner:
    """captioner == "csv": captions come with the images (Pipeline.run(..., captions=[...]))."""

    name = "csv"

    def caption(self, images: Sequence[Image.Image], pixels: np.ndarray) -> list[Caption]:
        raise ModelError(
            "this export was trained with captions from a CSV (captioner 'csv'): pass the captions "
            "with the images (Pipeline.run(images, captions=[...]))"
        )


class InstructBlipCaptioner:
    """sd15: InstructBLIP, the training code's own captioner (kcdp_core.knowledge.captioners) on
    transformers: the one stage that needs torch, imported only when such an export is loaded."""

    name = "instructblip"

    def __init__(self, spec: dict[str, Any]):
        import importlib.util

        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise ModelError(
                "this export captions with InstructBLIP (preset sd15), a transformers stage: "
                f"{' and '.join(missing)} not installed. Install them (`pip install 'kcdp[train]'`), "
                "or use a `mini` export, which runs without torch"
            )
        from kcdp_core.config import KnowledgeConfig, Source
        from kcdp_core.knowledge.captioners import InstructBLIPCaptioner

        # manifest: {"source": {"path", "subfolder"} or a str, "prompt", "generation": {...}}
        source = spec.get("source") or "Salesforce/instructblip-flan-t5-xl"
        src = (
            Source(source["path"], source.get("subfolder"))
            if isinstance(source, dict)
            else Source(str(source))
        )
        gen = dict(spec.get("generation") or {})
        fields = {
            k: gen[k]
            for k in ("num_beams", "repetition_penalty", "min_new_tokens", "max_new_tokens")
            if k in gen
        }
        knowledge = KnowledgeConfig(
            captioner="instructblip", **({"prompt": spec["prompt"]} if "prompt" in spec else {}), **fields
        )
        self.captioner = InstructBLIPCaptioner.from_pretrained(src, knowledge)

    def caption(self, images: Sequence[Image.Image], pixels: np.ndarray) -> list[Caption]:
        return [Caption(text) for text in self.captioner(list(images))]
