"""The frozen foundation of a KCDP model: VAE, text-conditioned UNet, text encoder, image encoder and
caption bank, in one folder laid out like a diffusers/transformers repository.

`load_foundation` loads any preset's foundation. Random ones for tests: the `tiny` foundation
(kcdp_core.model.tiny_foundation, re-exported here) and the `sd15`-shaped one (kcdp_core.model.random_sd15).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from kcdp_core.config import KCDPConfig
from kcdp_core.knowledge.text_encoder import TextEncoder
from kcdp_core.model.image_encoder import ImageEncoder
from kcdp_core.model.tiny_foundation import (  # noqa: F401 - re-exported: tests and tools import them here
    TINY_CAPTIONS,
    TINY_IMAGE_SIZE,
    TINY_TEXT_DIM,
    TINY_VERSION,
    build_tiny_foundation,
    ensure_tiny_foundation,
)
from kcdp_core.sources import resolve


@dataclass
class Foundation:
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: TextEncoder
    image_encoder: ImageEncoder | None
    caption_bank_dir: Path | None
    # The noise schedule for perception with add_noise (the foundation's scheduler/, else DDPM defaults).
    scheduler: DDPMScheduler | None = None


def load_foundation(cfg: KCDPConfig) -> Foundation:
    """Load the frozen components named by `cfg.foundation` (hub ids, folders or `kcdp:` paths)."""
    f = cfg.foundation
    path, sub = resolve(f.vae)
    # float32 whatever the stored dtype (the committed `mini` foundation may be fp16).
    vae = AutoencoderKL.from_pretrained(path, subfolder=sub).float()
    path, sub = resolve(f.unet)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder=sub).float()
    scheduler = _load_scheduler(path)
    text_encoder = TextEncoder.from_sources(f.text_encoder, f.tokenizer, cfg.knowledge.text_length)
    image_encoder = None
    caption_bank_dir = None
    if f.image_encoder is not None:
        path, sub = resolve(f.image_encoder)
        image_encoder = ImageEncoder.from_pretrained(path, subfolder=sub)
        bank = Path(path) / "caption_bank"
        caption_bank_dir = bank if (bank / "captions.jsonl").exists() else None
    if int(unet.config.cross_attention_dim) != text_encoder.dim:
        raise ValueError(
            f"foundation mismatch: UNet cross_attention_dim {unet.config.cross_attention_dim} "
            f"!= text encoder hidden size {text_encoder.dim}"
        )
    for module in (vae, unet):
        module.eval().requires_grad_(False)
    return Foundation(vae, unet, text_encoder, image_encoder, caption_bank_dir, scheduler)


def _load_scheduler(path: str) -> DDPMScheduler | None:
    """The scheduler/ next to the UNet, read as DDPM (only its noise schedule is used); None if none."""
    if Path(path).is_dir():
        if not (Path(path) / "scheduler" / "scheduler_config.json").exists():
            return None
        return DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    try:  # a hub id (sd15): its scheduler when the hub or a local HF cache has it
        return DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    except (OSError, ValueError):
        return None
