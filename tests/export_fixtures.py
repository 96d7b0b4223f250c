"""Helpers for the export tests: a tiny checkpoint whose LoRA matters, and a few real PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CALIBRATION_LABELS = ("anger", "happiness", "sadness", "surprise")


def tiny_checkpoint(folder: Path, foundation: Path, perception: dict | None = None) -> tuple[Path, float]:
    """A tiny KCDPModel checkpoint with non-zero LoRA (B is zero at init, which would make the merge
    check vacuous), `perception` overriding the preset's. Returns (ckpt, max abs logit change the
    LoRA causes)."""
    import torch

    from kcdp_core.config import tiny
    from kcdp_core.model.kcdp import KCDPModel

    torch.manual_seed(1)  # before the model: its random heads must not depend on which tests ran first
    config = tiny(foundation=str(foundation))
    model = KCDPModel.from_config(config.replace(perception=perception) if perception else config).eval()
    pixels = torch.rand(2, 3, 64, 64)
    face = torch.rand(2, 3, model.face_view, model.face_view) if model.face_view else None
    k, mask = (
        torch.from_numpy(a) for a in model.encode_knowledge(["grinning face", "crying face"], [[], []])
    )
    with torch.no_grad():
        before = model(pixels, k, mask, face=face).logits
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
        after = model(pixels, k, mask, face=face).logits
    model.save_pretrained(folder)
    return folder, float((after - before).abs().max())


def calibration_images(folder: Path, per_label: int = 2) -> Path:
    """Generated face-like PNGs (RGBA, not square) in <label>/ folders, plus one unreadable file."""
    rng = np.random.default_rng(0)
    for i, label in enumerate(CALIBRATION_LABELS):
        sub = folder / label
        sub.mkdir(parents=True, exist_ok=True)
        for j in range(per_label):
            img = Image.new("RGBA", (48, 40), (255, 255, 255, 0))
            draw = ImageDraw.Draw(img)
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse((4, 2, 44, 38), fill=(*colour, 255))
            draw.arc(
                (14, 16, 34, 30), 0 if i % 2 else 180, 180 if i % 2 else 360, fill=(0, 0, 0, 255), width=3
            )
            img.save(sub / f"face{j}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def tiny_export_inputs(root: Path, perception: dict | None = None) -> tuple[Path, float, Path]:
    """Under root: a tiny foundation, a checkpoint on it (tiny_checkpoint) and calibration images.
    Returns (ckpt, the LoRA's logit effect, calibration folder)."""
    from kcdp_core.model.foundation import build_tiny_foundation

    ckpt, lora_effect = tiny_checkpoint(root / "ckpt", build_tiny_foundation(root / "foundation"), perception)
    return ckpt, lora_effect, calibration_images(root / "calib")
