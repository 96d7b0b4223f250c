"""The caption bank of the retrieval captioner: captions.jsonl + embeddings.safetensors (docs/architecture.md)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_caption_bank(folder: str | Path, captions: list[str], embeddings: torch.Tensor) -> Path:
    """One {"caption"} per line and float16 [N, D] L2-normalised embeddings in the same order
    (stored at half precision like every exported component; retrieval ranks are unchanged)."""
    if len(captions) != embeddings.shape[0]:
        raise ValueError(f"{len(captions)} captions but {embeddings.shape[0]} embeddings")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "captions.jsonl").open("w") as f:
        for caption in captions:
            f.write(json.dumps({"caption": caption}, ensure_ascii=False) + "\n")
    emb = torch.nn.functional.normalize(embeddings.float(), dim=-1).half().contiguous()
    save_file({"embeddings": emb}, str(folder / "embeddings.safetensors"))
    return folder
