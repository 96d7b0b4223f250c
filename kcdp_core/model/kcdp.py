"""KCDPModel: KADAP perception + FPN + MoE head, with CLIEA for pseudo-labels (paper section 4).

forward(pixels, k, k_mask) is the exported graph (no data-dependent Python control flow); the text
encoder only serves `encode_knowledge` and the CLIEA prompts, computed once at construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kcdp_core.config import KCDPConfig
from kcdp_core.model.cliea import CLIEA
from kcdp_core.model.foundation import Foundation, load_foundation
from kcdp_core.model.fpn import FPN
from kcdp_core.model.head import PredictionHead
from kcdp_core.model.image_tail import FaceEncoder, ImageEncoderOutputs, ImageTail
from kcdp_core.model.kadap import KADAP
from kcdp_core.model.output import KCDPOutput

WEIGHTS_NAME = "model.safetensors"
__all__ = ["WEIGHTS_NAME", "KCDPModel", "KCDPOutput"]


class KCDPModel(nn.Module):
    def __init__(self, config: KCDPConfig, foundation: Foundation):
        super().__init__()
        self.config = config
        self.labels = tuple(config.labels)
        self.text_encoder = foundation.text_encoder
        self.caption_bank_dir = foundation.caption_bank_dir
        self.image_encoder = foundation.image_encoder  # the retrieval captioner's; frozen, not trained here
        if self.image_encoder is not None:
            self.image_encoder.eval().requires_grad_(False)
        text_dim = self.text_encoder.dim
        knowledge_tokens = 2 * config.knowledge.text_length
        p = config.perception

        vae, unet = foundation.vae, foundation.unet
        vae.requires_grad_(False)
        unet.requires_grad_(False)
        self._lora = False
        if p.finetune == "lora":
            from peft import LoraConfig

            unet.add_adapter(
                LoraConfig(
                    r=p.lora_rank,
                    lora_alpha=p.lora_alpha,
                    lora_dropout=p.lora_dropout,
                    target_modules=list(p.lora_targets),
                    init_lora_weights=True,
                )
            )
            self._lora = True
        elif p.finetune not in ("frozen", "kv", "full"):
            raise ValueError(f"unknown finetune mode {p.finetune!r} (frozen, kv, lora, full)")

        self.kadap = KADAP(vae, unet, p, knowledge_tokens, foundation.scheduler)
        self.image_tail: ImageTail | None = None
        if p.image_embedding:
            if self.image_encoder is None:
                raise ValueError(
                    "perception.image_embedding needs a foundation with an aligned image encoder "
                    f"(preset {config.preset!r} has none)"
                )
            if p.image_tail:
                self.image_tail = ImageTail(
                    self.image_encoder, p.image_tail, p.mix_style, p.freeze_tail_statistics
                )
        if p.face_view and self.image_tail is None:
            raise ValueError("perception.face_view is read by the image tail: set perception.image_tail")
        extra_dim = sum(self.image_inputs.values())
        self.fpn = FPN(self.kadap.channels, p.fpn_dim, p.feature_dim, extra_dim)
        self.head = PredictionHead(config.head, p.feature_dim, text_dim, len(self.labels))
        self.cliea: CLIEA | None = None
        if config.cliea.enabled:
            prompts = [config.cliea.prompt_template.format(label) for label in self.labels]
            states, mask = self.text_encoder.token_states(prompts)
            self.cliea = CLIEA(config.cliea, p.feature_dim, text_dim, states, mask)
        self._set_trainable()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: KCDPConfig) -> KCDPModel:
        return cls(config, load_foundation(config))

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path) -> KCDPModel:
        """Rebuild from a checkpoint folder: config.json + model.safetensors (trained tensors only)."""
        ckpt_dir = Path(ckpt_dir)
        config = KCDPConfig.load(ckpt_dir)
        weights = ckpt_dir / WEIGHTS_NAME
        if not weights.exists():
            raise FileNotFoundError(
                f"{weights}: missing (a checkpoint folder holds config.json and {WEIGHTS_NAME})"
            )
        model = cls.from_config(config)
        state = load_file(str(weights))
        expected = set(model.trained_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(
                f"{weights}: does not match config.json "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        model.load_state_dict(state, strict=False)
        return model.eval()

    def _is_trained(self, name: str) -> bool:
        """Whether parameter `name` is trained in this finetune mode (and so saved)."""
        if not name.startswith("kadap."):
            # the image tail's copy is trained; the frozen encoder it was copied from is not
            return not name.startswith(("text_encoder.", "image_encoder."))
        if not name.startswith("kadap.unet."):
            return False  # the VAE is always frozen
        mode = self.config.perception.finetune
        if mode == "full":
            return True
        if mode == "lora":
            return self._lora and ".lora_" in name
        if mode == "kv":
            return any(f".{t}." in name for t in self.config.perception.lora_targets)
        return False

    def _set_trainable(self) -> None:
        for name, param in self.named_parameters():
            param.requires_grad_(self._is_trained(name))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def statistics_modules(self) -> dict[str, nn.Module]:
        """The modules whose BatchNorm running statistics a checkpoint keeps (learned from data too):
        the FPN and the image tail. The frozen image encoder's come from the foundation."""
        modules: dict[str, nn.Module] = {"fpn": self.fpn}
        if self.image_tail is not None:
            modules["image_tail"] = self.image_tail
        return modules

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Trained parameters plus the buffers of `statistics_modules()`."""
        state = {n: p for n, p in self.named_parameters() if self._is_trained(n)}
        for prefix, module in self.statistics_modules().items():
            state.update(dict(module.named_buffers(prefix=prefix)))
        return state

    def train(self, mode: bool = True) -> KCDPModel:
        super().train(mode)
        # Frozen encoders stay deterministic (no dropout) while the rest trains.
        self.text_encoder.eval()
        self.kadap.vae.eval()
        if self.image_encoder is not None:
            self.image_encoder.eval()
        return self

    # -- forward ------------------------------------------------------------------------
    @property
    def image_inputs(self) -> dict[str, int]:
        """What perception takes beside pixels and k, name -> width, in the order v fuses them: an
        output of the image encoder graph (the frozen "embedding", taken as "image_embedding", or the
        tail's "image_features") and, with a face view, the face encoder graph's "face_features"."""
        if not self.config.perception.image_embedding:
            return {}
        if self.image_tail is None:
            return {"image_embedding": self.image_encoder.config.embed_dim}
        views = {"image_features": self.image_tail.dim}
        if self.face_view:
            views["face_features"] = self.image_tail.dim
        return views

    @property
    def face_view(self) -> int:
        """The side of the face view the image branch also reads (images.FACE_BOX), 0: none."""
        return self.config.perception.face_view

    def image_views(self, pixels: torch.Tensor, face: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """perception's image inputs (image_inputs) computed from the whole image and the face view."""
        if self.image_tail is None:
            return {"image_embedding": self.image_encoder(pixels)}
        views = {"image_features": self.image_encoder_graph_module().features(pixels)}
        if self.face_view:
            if face is None:
                raise ValueError("this model reads a face view too: pass face (images.preprocess_views)")
            views["face_features"] = self.face_encoder_graph_module()(face)
        return views

    def image_view(self, pixels: torch.Tensor, face: torch.Tensor | None = None) -> torch.Tensor:
        """What perception fuses into v: image_views side by side."""
        return torch.cat(list(self.image_views(pixels, face).values()), dim=1)

    def image_encoder_graph_module(self) -> nn.Module:
        """The module exported as the image encoder graph: pixels -> embedding [, image_features]."""
        if self.image_tail is None:
            return self.image_encoder
        return ImageEncoderOutputs(self.image_encoder, self.image_tail)

    def face_encoder_graph_module(self) -> nn.Module:
        """The module exported as the face encoder graph: face -> face_features."""
        if self.image_tail is None or not self.face_view:
            raise ValueError("only a model with a face view (perception.face_view) has a face encoder")
        return FaceEncoder(self.image_encoder, self.image_tail)

    def forward(
        self,
        pixels: torch.Tensor,
        k: torch.Tensor,
        k_mask: torch.Tensor,
        image_view: torch.Tensor | None = None,
        face: torch.Tensor | None = None,
    ) -> KCDPOutput:
        """pixels [B,3,S,S] in [0,1], k [B,2L,D], k_mask [B,2L] (1 = real token).

        image_view: `image_view(pixels, face)` when perception.image_embedding is on; computed here
        when not given (the runtime passes what its image and face encoder graphs computed).
        face: the face view [B,3,F,F] when perception.face_view is on (F = face_view).
        """
        if self.config.perception.image_embedding and image_view is None:
            image_view = self.image_view(pixels, face)
        return self.from_pooled_levels(self.pooled_levels(pixels, k, k_mask), k, k_mask, image_view)

    def pooled_levels(self, pixels: torch.Tensor, k: torch.Tensor, k_mask: torch.Tensor) -> torch.Tensor:
        """The UNet's levels, pooled by the FPN: all of perception that the image view does not enter."""
        return self.pooled_from_latents(self.kadap.encode(pixels), k, k_mask)

    def pooled_from_latents(
        self, latents: torch.Tensor, k: torch.Tensor, k_mask: torch.Tensor
    ) -> torch.Tensor:
        """pooled_levels from the VAE encoder's latents (KADAP.encode)."""
        return self.fpn.pool(self.kadap.from_latents(latents, k, k_mask))

    def from_pooled_levels(
        self, pooled: torch.Tensor, k: torch.Tensor, k_mask: torch.Tensor, image_view: torch.Tensor | None
    ) -> KCDPOutput:
        """The rest of perception: pooled levels + the image view -> v -> the head."""
        v = self.fpn.fuse(pooled, image_view)
        logits, balance, router_probs = self.head(v, k, k_mask)
        return KCDPOutput(logits, logits.softmax(dim=-1), v, balance, router_probs)

    def cliea_scores(self, features: torch.Tensor, k: torch.Tensor, k_mask: torch.Tensor) -> torch.Tensor:
        if self.cliea is None:
            raise RuntimeError("CLIEA is disabled in this config (cliea.enabled = false)")
        return self.cliea(features, k, k_mask)

    def encode_knowledge(
        self, captions: Sequence[str], triplets: Sequence[Sequence[Sequence[str]]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """k [B, 2L, D] float32 and k_mask [B, 2L] float32 with the frozen text encoder."""
        return self.text_encoder.knowledge(captions, triplets)

    # -- saving, export -----------------------------------------------------------------
    def save_pretrained(self, ckpt_dir: str | Path) -> Path:
        """config.json + model.safetensors with only the trained tensors (the foundation is referenced)."""
        if self._lora is False and self.config.perception.finetune == "lora":
            raise RuntimeError("LoRA was merged into the UNet: save the checkpoint before merge_lora()")
        ckpt_dir = Path(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.config.save(ckpt_dir)
        state = {n: t.detach().cpu().contiguous() for n, t in self.trained_state_dict().items()}
        save_file(state, str(ckpt_dir / WEIGHTS_NAME))
        return ckpt_dir

    @torch.no_grad()
    def merge_lora(self) -> None:
        """Fold LoRA into the UNet base weights in place, leaving plain nn.Linear layers (for export)."""
        if not self._lora:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        unet = self.kadap.unet
        targets = [(n, m) for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]
        for name, module in targets:
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name) if parent_name else unet
            setattr(parent, child, module.get_base_layer())
        unet._hf_peft_config_loaded = False
        if hasattr(unet, "peft_config"):
            del unet.peft_config
        self._lora = False
        self._set_trainable()
