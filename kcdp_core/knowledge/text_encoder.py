"""The frozen text encoder T: token states for captions, triplets and prompts, sentence embeddings
for the caption bank. Any transformers text model: CLIP's (sd15), MiniLM (mini), a random BERT (tiny)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from kcdp_core.config import Source
from kcdp_core.knowledge.pooling import sentence_embedding
from kcdp_core.portable.assemble import assemble_batch, knowledge_texts
from kcdp_core.sources import resolve

Triplet = Sequence[str]


class TextEncoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, tokenizer, length: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.length = length

    @classmethod
    def from_sources(cls, text_encoder: Source, tokenizer: Source, length: int) -> TextEncoder:
        path, sub = resolve(text_encoder)
        model = AutoModel.from_pretrained(path, subfolder=sub or "")
        if hasattr(model, "text_model") and not hasattr(model, "embeddings"):
            model = model.text_model  # a full CLIP checkpoint: keep its text tower
        tpath, tsub = resolve(tokenizer)
        tok = AutoTokenizer.from_pretrained(tpath, subfolder=tsub or "")
        return cls(model, tok, length)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.length, return_tensors="pt"
        )

    @torch.no_grad()
    def token_states(self, texts: Sequence[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, L, D] last hidden states and the [N, L] attention mask (float)."""
        states, masks = [], []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenize(texts[start : start + batch_size])
            out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            states.append(out.last_hidden_state.float())
            masks.append(enc["attention_mask"].float())
        if not states:
            return torch.zeros(0, self.length, self.dim), torch.zeros(0, self.length)
        return torch.cat(states), torch.cat(masks)

    @torch.no_grad()
    def sentence_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised masked mean of the token states (sentence-transformers' pooling)."""
        return sentence_embedding(*self.token_states(texts))

    @torch.no_grad()
    def knowledge(
        self, captions: Sequence[str], triplets: Sequence[Sequence[Triplet]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """k [B, 2L, D] and its mask [B, 2L] for a batch of images (caption + their triplets)."""
        states, mask = (x.numpy() for x in self.token_states(knowledge_texts(captions, triplets)))
        return assemble_batch(states, mask, [len(ts) for ts in triplets])
