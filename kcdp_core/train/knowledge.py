"""Knowledge k for every training / evaluation image, computed once and cached.

Caption and triplets come from the knowledge cache (kcdp_core.knowledge.cache, filled by the
configured captioner and the triplet parser); k and its mask come from the frozen text encoder
(TextEncoder.knowledge, the same assembly as the runtime). The arrays are cached per image under
a fingerprint of everything they depend on (text encoder weights, lengths, captioner, parser,
ablation switches), so repeated runs and other seeds never recompute them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from kcdp_core.config import KCDPConfig
from kcdp_core.knowledge.text_encoder import TextEncoder
from kcdp_core.portable.assemble import KnowledgeRule
from kcdp_core.portable.constants import cache_root
from kcdp_core.train.datasets import file_hash

Triplet = tuple[str, str, str]
Describe = Callable[[Sequence[Path]], list[tuple[str, list[Triplet]]]]


def text_encoder_fingerprint(encoder: TextEncoder) -> str:
    """sha256 over the encoder's weights and tokenizer settings: a retrained encoder never reuses k."""
    h = hashlib.sha256()
    for name, tensor in sorted(encoder.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    h.update(json.dumps({"length": encoder.length, "vocab": len(encoder.tokenizer)}).encode())
    return h.hexdigest()


def _folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def captioner_id(config: KCDPConfig) -> str:
    """What the captions depend on: captioner kind, settings and (retrieval) the encoder + bank files."""
    from kcdp_core.sources import resolve

    k = config.knowledge
    if k.captioner == "retrieval":
        src = config.foundation.image_encoder
        if src is None:
            return f"retrieval:none:top{k.retrieval_top_k}"
        path, sub = resolve(src)
        encoder = Path(path) / sub if sub else Path(path)
        parts = [f"retrieval:top{k.retrieval_top_k}"]
        for folder in (encoder, encoder.parent / "caption_bank"):
            parts.append(_folder_digest(folder) if folder.is_dir() else f"{src.path}:{src.subfolder}")
        return ":".join(parts)
    if k.captioner == "csv":
        csv_path = Path(k.captions_csv or "")
        return f"csv:{hashlib.sha256(csv_path.read_bytes()).hexdigest()[:16] if csv_path.is_file() else csv_path}"
    src = k.captioner_source
    return f"instructblip:{src.path if src else None}:{k.num_beams}:{k.max_new_tokens}:{k.prompt}"


def describe_with_knowledge_cache(
    config: KCDPConfig, folder: Path | None = None, progress: bool = True
) -> Describe:
    """Captions + triplets through kcdp_core.knowledge (cache filled on demand, resumable)."""
    from kcdp_core.knowledge.cache import KnowledgeCache
    from kcdp_core.knowledge.captioners import build_captioner
    from kcdp_core.portable.triplets import TripletParser

    cache = KnowledgeCache(folder or cache_root() / "knowledge")
    state: dict[str, object] = {}

    def describe(paths: Sequence[Path]) -> list[tuple[str, list[Triplet]]]:
        if "captioner" not in state:
            state["captioner"] = build_captioner(config)
            state["parser"] = TripletParser(config.knowledge.parser_model)
        report = cache.fill(list(paths), state["captioner"], state["parser"], progress=progress)
        if report.errors:
            raise ValueError("; ".join(msg for _, msg in report.errors[:5]))
        out = []
        for p in paths:
            entry = cache.get(p)
            if entry is None:
                raise RuntimeError(f"{p}: the knowledge cache has no entry after filling it")
            out.append((entry["caption"], [tuple(t) for t in entry["triplets"]]))
        return out

    return describe


class KnowledgeTable:
    """k [N, 2L, D] and k_mask [N, 2L] for a list of image files, through a per-image array cache."""

    def __init__(
        self,
        config: KCDPConfig,
        text_encoder: TextEncoder,
        describe: Describe | None = None,
        folder: Path | None = None,
        progress: bool = True,
    ):
        self.config = config
        self.encoder = text_encoder
        self.describe = describe or describe_with_knowledge_cache(config, progress=progress)
        self.rule = KnowledgeRule.of(config.knowledge)
        key = {
            "encoder": text_encoder_fingerprint(text_encoder),
            "captioner": captioner_id(config),
            "parser": _parser_version(),
            "max_triplets": config.knowledge.max_triplets,
            "use_caption": config.knowledge.use_caption,
            "use_triplets": config.knowledge.use_triplets,
        }
        self.key = key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = (folder or cache_root() / "k") / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "key.json").write_text(json.dumps(key, indent=1) + "\n")

    def _file(self, sha: str) -> Path:
        return self.folder / sha[:2] / f"{sha}.safetensors"

    def cached(self, path: str | Path) -> bool:
        """Whether this image file's knowledge is in the cache already (kcdp-adapt prices the rest)."""
        return self._file(file_hash(path)).exists()

    def knowledge(self, paths: Sequence[Path], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        paths = [Path(p) for p in paths]
        hashes = [file_hash(p) for p in paths]
        todo = sorted(
            {h: p for h, p in zip(hashes, paths, strict=True) if not self._file(h).exists()}.items()
        )
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            if self.rule.use_caption or self.rule.use_triplets:
                described = self.describe([p for _, p in chunk])
            else:  # neither half is used (source-only ablation): captioning would be thrown away
                described = [("", [])] * len(chunk)
            captions, triplets = self.rule.apply([c for c, _ in described], [t for _, t in described])
            with torch.no_grad():
                k, mask = self.encoder.knowledge(captions, triplets)
            for (sha, _), ki, mi in zip(chunk, k, mask, strict=True):
                target = self._file(sha)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(f".tmp{os.getpid()}")
                save_file({"k": ki.astype(np.float16), "mask": mi.astype(np.uint8)}, str(tmp))
                os.replace(tmp, target)  # atomic: a killed run never leaves half an entry
        ks, masks = [], []
        for sha in hashes:
            arrays = load_file(str(self._file(sha)))
            ks.append(arrays["k"].astype(np.float32))
            masks.append(arrays["mask"].astype(np.float32))
        if not ks:
            return np.zeros((0, 2 * self.encoder.length, self.encoder.dim), np.float32), np.zeros(
                (0, 2 * self.encoder.length), np.float32
            )
        return np.stack(ks), np.stack(masks)


def _parser_version() -> str:
    from kcdp_core.portable.triplets import PARSER_VERSION

    return PARSER_VERSION
