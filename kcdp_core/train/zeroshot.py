"""Zero-shot classification with the aligned image encoder (the paper's "vanilla CLIP" of Table 3).

Image embeddings of the foundation's image encoder against averaged sentence embeddings of a few
emotion prompts per class. Used as a baseline and as the plain pseudo-labeller that CLIEA is
compared with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kcdp_core.config import KCDPConfig
from kcdp_core.knowledge.text_encoder import TextEncoder

# Adjective forms read better in prompts than the class nouns.
ADJECTIVES = {
    "anger": "angry",
    "disgust": "disgusted",
    "fear": "afraid",
    "happiness": "happy",
    "neutral": "neutral",
    "sadness": "sad",
    "surprise": "surprised",
    "happy": "happy",
    "sad": "sad",
}
TEMPLATES = ("{adj} face", "a {adj} face", "an emoji of a {adj} face", "{noun}", "a face showing {noun}")


def prompt_embeddings(encoder: TextEncoder, labels: Sequence[str]) -> torch.Tensor:
    """[C, D] L2-normalised mean of the templates' sentence embeddings per class."""
    rows = []
    for label in labels:
        adj = ADJECTIVES.get(label, label)
        texts = [t.format(adj=adj, noun=label) for t in TEMPLATES]
        rows.append(torch.nn.functional.normalize(encoder.sentence_embeddings(texts).mean(0), dim=-1))
    return torch.stack(rows)


class ZeroShotClassifier(torch.nn.Module):
    """pixels [B,3,S,S] in [0,1] -> class probabilities [B,C] (cosine / tau softmax)."""

    def __init__(self, image_encoder: torch.nn.Module, prompts: torch.Tensor, tau: float = 0.07):
        super().__init__()
        self.image_encoder = image_encoder.eval().requires_grad_(False)
        self.register_buffer("prompts", prompts)
        self.tau = tau

    @classmethod
    def from_config(cls, config: KCDPConfig, encoder: TextEncoder | None = None) -> ZeroShotClassifier:
        from kcdp_core.model.image_encoder import ImageEncoder
        from kcdp_core.sources import resolve

        if config.foundation.image_encoder is None:
            raise ValueError(f"preset {config.preset!r} has no aligned image encoder for zero-shot")
        path, sub = resolve(config.foundation.image_encoder)
        image_encoder = ImageEncoder.from_pretrained(path, sub)
        if encoder is None:
            f = config.foundation
            encoder = TextEncoder.from_sources(f.text_encoder, f.tokenizer, config.knowledge.text_length)
        return cls(image_encoder, prompt_embeddings(encoder, config.labels), config.cliea.tau)

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,C] cosine / tau: the scores forward() takes the softmax of."""
        return self.image_encoder(pixels) @ self.prompts.T / self.tau

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(pixels), dim=-1)

    @torch.no_grad()
    def predict(self, loader: torch.utils.data.DataLoader) -> tuple[np.ndarray, np.ndarray]:
        """(probs [N,C], labels [N]) over a loader of ImageKnowledgeDataset batches."""
        probs, labels = [], []
        for batch in loader:
            probs.append(self(batch["pixels"]))
            labels.append(batch["label"])
        return torch.cat(probs).numpy(), torch.cat(labels).numpy()
