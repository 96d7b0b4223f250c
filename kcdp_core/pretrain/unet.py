"""Stage 3: a small text-conditioned diffusers UNet2DConditionModel on the VAE's latents (8 x 8 at 64 px).

Conditioned on frozen MiniLM token states of the caption (length = the mini preset's
knowledge.text_length) with their attention mask, epsilon prediction on a DDPM schedule, and
caption dropout (the empty caption) so classifier-free guidance works at sampling time. Latents
(posterior mean and std) and token states are computed once before training. Every up block has
cross-attention, because KCDP reads features and cross-attention maps from the up blocks
(perception.feature_levels of the mini preset name them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from kcdp_core.pretrain.corpus import Corpus, sampling_weights
from kcdp_core.pretrain.repa import AlignmentHead, BlockFeatures, alignment_loss, block_channels
from kcdp_core.pretrain.stage import Stage, StageOptions


@dataclass
class UNetOptions:
    block_out_channels: tuple[int, ...] = (64, 64, 96)  # latent 8 -> 4 -> 2
    layers_per_block: int = 1
    norm_num_groups: int = 16
    attention_head_dim: int = 8  # diffusers' legacy name: the number of heads
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.01
    caption_dropout: float = 0.1
    face_fraction: float = 0.3
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # REPA (kcdp_core/pretrain/repa.py): weight of the alignment to the image encoder (0: off; off by
    # default since the v2 control without it probed better: benchmarks/HISTORY.md, foundation v2),
    # the UNet blocks aligned ("mid", "up0", ...) and the target: "embedding" (global) or "tokens"
    # (the encoder's embedding head at every position of its last feature map).
    repa_weight: float = 0.0
    repa_hidden: int = 256
    repa_levels: tuple[str, ...] = ("mid",)
    repa_target: str = "embedding"
    # Start from a foundation's UNet (folder or kcdp:<path>) instead of random weights, e.g. to move a
    # trained UNet to a larger latent: its convolutions and attention do not depend on the size.
    init_from: str | None = None
    stage: StageOptions = field(default_factory=lambda: StageOptions(max_steps=4000, budget_minutes=15))


def build_unet(
    options: UNetOptions, latent_size: int, latent_channels: int, text_dim: int
) -> UNet2DConditionModel:
    n = len(options.block_out_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(options.block_out_channels),
        layers_per_block=options.layers_per_block,
        norm_num_groups=options.norm_num_groups,
        cross_attention_dim=text_dim,
        attention_head_dim=options.attention_head_dim,
    )


def build_scheduler(options: UNetOptions) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=options.num_train_timesteps,
        beta_schedule=options.beta_schedule,
        beta_start=options.beta_start,
        beta_end=options.beta_end,
        prediction_type="epsilon",
        clip_sample=False,
    )


@dataclass
class Conditioning:
    """Precomputed token states of the caption vocabulary and of the empty caption."""

    states: torch.Tensor  # [V, L, D]
    masks: torch.Tensor  # [V, L]
    empty_state: torch.Tensor  # [L, D]
    empty_mask: torch.Tensor  # [L]


def conditioning(text_encoder, vocabulary: list[str]) -> Conditioning:
    states, masks = text_encoder.token_states(vocabulary)
    empty_s, empty_m = text_encoder.token_states([""])
    return Conditioning(states, masks, empty_s[0], empty_m[0])


def build_stage(
    corpus: Corpus,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    scaling_factor: float,
    cond: Conditioning,
    work_dir: str | Path,
    options: UNetOptions,
    repa_targets: torch.Tensor | None = None,
) -> tuple[Stage, UNet2DConditionModel, DDPMScheduler]:
    """`latent_mean`/`latent_std`: unscaled posterior statistics of every corpus image;
    `repa_targets`: the image encoder's target map [N, D, h, w] of every corpus image (needed when
    repa_weight > 0; kcdp_core.pretrain.recipe.repa_targets)."""
    torch.manual_seed(options.stage.seed)
    _, channels, size, _ = latent_mean.shape
    unet = build_unet(options, size, channels, cond.states.shape[-1])
    if options.init_from:
        from kcdp_core.config import Source
        from kcdp_core.sources import local_folder

        folder = local_folder(Source(options.init_from, "unet"))
        if folder is None:
            raise FileNotFoundError(f"{options.init_from}: no unet folder to start from")
        # strict: a UNet of other widths or conditioning is an error, not a silent partial load
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder).float().state_dict())
    unet.train()
    scheduler = build_scheduler(options)
    modules: dict[str, torch.nn.Module] = {"unet": unet}
    kept = None
    if options.repa_weight > 0:
        if repa_targets is None:
            raise ValueError("repa_weight > 0 needs the image encoder's embeddings of the corpus")
        modules["repa_head"] = torch.nn.ModuleDict(
            {
                n: AlignmentHead(block_channels(unet, n), options.repa_hidden, repa_targets.shape[1])
                for n in options.repa_levels
            }
        )
        kept = BlockFeatures(unet, tuple(options.repa_levels))
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    train_idx = torch.from_numpy(corpus.train_index)
    weights = torch.from_numpy(sampling_weights(corpus, corpus.train_index, options.face_fraction))
    caption_ids = torch.from_numpy(corpus.caption_ids)

    def step(_: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        unet.train()
        idx = train_idx[torch.multinomial(weights, options.batch_size, replacement=True, generator=g)]
        z0 = (
            latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=g)
        ) * scaling_factor
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, options.num_train_timesteps, (len(idx),), generator=g)
        zt = scheduler.add_noise(z0, noise, t)
        drop = (torch.rand(len(idx), generator=g) < options.caption_dropout).view(-1, 1, 1)
        cid = caption_ids[idx]
        ctx = torch.where(drop, cond.empty_state, cond.states[cid])
        mask = torch.where(drop[..., 0], cond.empty_mask, cond.masks[cid])
        device = unet.device  # the batch follows the model (GPU under accelerate)
        zt, t, ctx, mask, noise = (v.to(device) for v in (zt, t, ctx, mask, noise))
        pred = unet(zt, t, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
        loss = F.mse_loss(pred.float(), noise)
        if kept is None:
            return loss, {}
        align = alignment_loss(modules["repa_head"], kept.pop(), repa_targets[idx].to(device))
        return loss + options.repa_weight * align, {"eps_mse": loss.item(), "repa": align.item()}

    return Stage("unet", work_dir, modules, optimizer, step, options.stage), unet, scheduler


@torch.no_grad()
def denoising_loss(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latent_mean: torch.Tensor,
    scaling_factor: float,
    cond: Conditioning,
    caption_ids: np.ndarray,
    timesteps: list[int],
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Epsilon MSE per timestep on the given latents, with their captions and with the empty one."""
    unet.eval()
    g = torch.Generator().manual_seed(seed)
    z0 = latent_mean * scaling_factor
    noise = torch.randn(z0.shape, generator=g)
    cid = torch.from_numpy(caption_ids)
    out: dict[str, dict[str, float]] = {}
    for t in timesteps:
        sums = {"captioned": 0.0, "empty_caption": 0.0}
        for start in range(0, len(z0), batch_size):
            sl = slice(start, start + batch_size)
            n = z0[sl].shape[0]
            tt = torch.full((n,), t, dtype=torch.long)
            zt = scheduler.add_noise(z0[sl], noise[sl], tt)
            for key, (ctx, mask) in {
                "captioned": (cond.states[cid[sl]], cond.masks[cid[sl]]),
                "empty_caption": (cond.empty_state.expand(n, -1, -1), cond.empty_mask.expand(n, -1)),
            }.items():
                pred = unet(zt, tt, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
                sums[key] += float(F.mse_loss(pred, noise[sl], reduction="sum"))
        out[str(t)] = {k: v / z0.numel() for k, v in sums.items()}
    return out


@torch.no_grad()
def sample(
    unet: UNet2DConditionModel,
    vae,
    scheduler_config: dict,
    states: torch.Tensor,
    masks: torch.Tensor,
    cond: Conditioning,
    steps: int = 50,
    guidance: float = 4.0,
    seed: int = 0,
) -> np.ndarray:
    """DDIM + classifier-free guidance from token states [B, L, D]; returns uint8 [B, S, S, 3]."""
    unet.eval()
    vae.eval()
    ddim = DDIMScheduler.from_config(scheduler_config)
    ddim.set_timesteps(steps)
    n = states.shape[0]
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    z = torch.randn((n, unet.config.in_channels, size, size), generator=g)
    ctx = torch.cat([cond.empty_state.expand(n, -1, -1), states])
    mask = torch.cat([cond.empty_mask.expand(n, -1), masks])
    for t in ddim.timesteps:
        eps = unet(torch.cat([z, z]), t, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
        uncond, text = eps.chunk(2)
        z = ddim.step(uncond + guidance * (text - uncond), t, z).prev_sample
    images = vae.decode(z / vae.config.scaling_factor).sample
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_sample_grid(
    references: np.ndarray, samples: np.ndarray, captions: list[str], path: str | Path, per_caption: int
) -> Path:
    """One row per caption: a real held-out image of it, then `per_caption` samples, then the caption."""
    from kcdp_core.pretrain.figures import image_grid

    rows = [[references[r], *samples[r * per_caption : (r + 1) * per_caption]] for r in range(len(captions))]
    return image_grid(
        rows,
        path,
        captions,
        header=f"mini UNet: held-out caption -> real image | {per_caption} samples (DDIM 50, CFG 4, VAE decode)",
        separators=(0,),
    )
