"""KADAP perception: VAE latent -> ONE UNet pass guided by the knowledge k -> multi-level features.

Per paper Eq. 5, h_i = F_i ⊕ A_i for each chosen UNet up block i: F_i is the block's output and A_i
its head-averaged cross-attention maps over the 2L knowledge tokens, resized to F_i's grid. Up-block
outputs are read with forward hooks and maps with a diffusers attention processor; the UNet's own
forward is left untouched.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn
from torch.nn import functional as F

from kcdp_core.config import PerceptionConfig
from kcdp_core.model.attention import AttentionStore, OutputCaptureHook, install_capture


class KADAP(nn.Module):
    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        config: PerceptionConfig,
        knowledge_tokens: int,
        scheduler: DDPMScheduler | None = None,
    ):
        super().__init__()
        self.vae = vae
        self.unet = unet
        self.config = config
        n_up = len(unet.up_blocks)
        bad = [i for i in config.feature_levels if not 0 <= i < n_up]
        if bad:
            raise ValueError(
                f"feature_levels {bad} out of range: this UNet has {n_up} up blocks (0..{n_up - 1})"
            )
        self.levels = tuple(config.feature_levels)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        # The noise schedule only matters when noise is added (official code: t=1, no noise).
        self.scheduler = scheduler or DDPMScheduler(num_train_timesteps=1000)
        self.register_buffer(
            "timestep", torch.tensor(int(config.timestep), dtype=torch.long), persistent=False
        )

        self.store = AttentionStore()
        self.has_maps: dict[int, bool] = {}
        if config.use_attention_maps:
            captured = install_capture(unet, self.levels, self.store)
            for i in self.levels:
                self.has_maps[i] = any(name.startswith(f"up_blocks.{i}.") for name in captured)
        else:
            self.has_maps = dict.fromkeys(self.levels, False)

        reversed_channels = list(reversed(unet.config.block_out_channels))
        self.channels = [
            reversed_channels[i] + (knowledge_tokens if self.has_maps[i] else 0) for i in self.levels
        ]
        self.upsamples = {i: getattr(unet.up_blocks[i], "upsamplers", None) is not None for i in self.levels}
        for i in self.levels:
            unet.up_blocks[i].register_forward_hook(OutputCaptureHook(self.store, i))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B,3,S,S] in [0,1] -> scaled latents (the distribution's mean: deterministic)."""
        latent = self.vae.encode(pixels * 2.0 - 1.0).latent_dist.mean
        return (latent - self.shift_factor) * self.scaling_factor

    def forward(self, pixels: torch.Tensor, k: torch.Tensor, k_mask: torch.Tensor) -> list[torch.Tensor]:
        """h_i for each feature level, coarse to fine: [B, C_i (+2L), H_i, W_i]."""
        return self.from_latents(self.encode(pixels), k, k_mask)

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        """encode's output for pixels of side `size`: (channels, height, width)."""
        side = size // 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.vae.config.latent_channels), side, side

    def from_latents(
        self, latents: torch.Tensor, k: torch.Tensor, k_mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """forward after the VAE encoder (what needs only the pixels), from encode's latents."""
        if self.config.add_noise:
            noise = torch.randn_like(latents)
            latents = self.scheduler.add_noise(latents, noise, self.timestep.expand(latents.shape[0]))
        self.store.clear()
        self.unet(latents, self.timestep, encoder_hidden_states=k, encoder_attention_mask=k_mask)
        outs = []
        for i in self.levels:
            feat = self.store.outputs[i]
            maps = self.store.mean(i) if self.has_maps[i] else None
            if maps is not None:
                # [B, N, T] over the block's input grid: F_i's grid, halved when the block upsamples.
                h, w = feat.shape[-2:]
                if self.upsamples[i]:
                    h, w = h // 2, w // 2
                grid = maps.transpose(1, 2).unflatten(2, (h, w))
                grid = F.interpolate(grid, size=feat.shape[-2:], mode="bilinear", align_corners=False)
                feat = torch.cat([feat, grid], dim=1)
            outs.append(feat)
        self.store.clear()
        return outs
