"""The knowledge + perception pipeline on the exported graphs (numpy + onnxruntime, no torch), used
at export time to measure end-to-end agreement and the int8 accuracy change on real images: image
encoder -> caption bank top-k -> TripletParser -> tokenizer.json -> text encoder -> assemble_knowledge
-> perception. The runtime package implements the serving version of the same steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kcdp_core.knowledge.assemble import assemble_batch, triplet_text
from kcdp_export.tokenizer import encode
from kcdp_export.validate import run_onnx


@dataclass
class PipelineResult:
    captions: list[str]
    probs: np.ndarray  # [N, C]

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(-1)


class OnnxPipeline:
    def __init__(
        self,
        sessions: dict[str, ort.InferenceSession],
        tokenizer_json: Path,
        bank=None,  # kcdp_core.knowledge.caption_bank.CaptionBank (retrieval) or None
        parser=None,  # TripletParser
        top_k: int = 1,
        separator: str = ". ",
        max_triplets: int = 8,
        use_caption: bool = True,
        use_triplets: bool = True,
        batch: int = 16,
    ):
        self.sessions = sessions
        self.tokenizer_json = tokenizer_json
        self.bank = bank
        self.parser = parser
        self.top_k = top_k
        self.separator = separator
        self.max_triplets = max_triplets
        self.use_caption = use_caption
        self.use_triplets = use_triplets
        self.batch = batch

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                run_onnx(self.sessions["image_encoder"], {"pixels": pixels[i : i + self.batch]})["embedding"]
                for i in range(0, len(pixels), self.batch)
            ]
        )

    def caption(self, embeddings: np.ndarray) -> list[str]:
        indices, _ = self.bank.search(embeddings, self.top_k)
        return [self.separator.join(self.bank.captions[i] for i in row) for row in indices]

    def token_states(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = encode(self.tokenizer_json, texts)
        states = [
            run_onnx(
                self.sessions["text_encoder"],
                {"input_ids": ids[i : i + 64], "attention_mask": mask[i : i + 64]},
            )["token_states"]
            for i in range(0, len(ids), 64)
        ]
        return np.concatenate(states), mask.astype(np.float32)

    def knowledge(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        triplets = self.parser.parse_many(list(captions)) if self.parser is not None else [[]] * len(captions)
        caps = [c if self.use_caption else "" for c in captions]
        trips = [list(t[: self.max_triplets]) if self.use_triplets else [] for t in triplets]
        texts = caps + [triplet_text(t) for ts in trips for t in ts]
        states, mask = self.token_states(texts)
        return assemble_batch(states, mask, [len(ts) for ts in trips])

    def __call__(self, pixels: np.ndarray, captions: Sequence[str] | None = None) -> PipelineResult:
        fused = "image_embedding" in {i.name for i in self.sessions["perception"].get_inputs()}
        emb = self.embed(pixels) if captions is None or fused else None  # once, for both uses
        captions = list(captions) if captions is not None else self.caption(emb)
        k, mask = self.knowledge(captions)
        arrays = {"pixels": pixels, "knowledge": k, "knowledge_mask": mask}
        if fused:
            arrays["image_embedding"] = emb
        probs = [
            run_onnx(self.sessions["perception"], {n: a[i : i + self.batch] for n, a in arrays.items()})[
                "probs"
            ]
            for i in range(0, len(pixels), self.batch)
        ]
        return PipelineResult(captions, np.concatenate(probs))
