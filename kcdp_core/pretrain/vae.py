"""Stage 2: a small diffusers AutoencoderKL, 64 px RGB <-> 4 x 8 x 8 latent.

Loss: L1 + MSE on pixels in [-1, 1] plus a small KL term that keeps the posterior near N(0, 1)
without blurring. After training, `scaling_factor` is set to 1 / std of the training latents so the
UNet sees unit-variance latents (as SD's 0.18215 does for its VAE). Faces are oversampled like in
stage 1 so the reconstruction spends its capacity on expressions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from kcdp_core.pretrain.corpus import Corpus, sampling_weights
from kcdp_core.pretrain.encoder import images_to_tensor
from kcdp_core.pretrain.stage import Stage, StageOptions


@dataclass
class VAEOptions:
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)  # 4 blocks: 64 px -> 8 x 8
    layers_per_block: int = 1
    norm_num_groups: int = 8
    latent_channels: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    kl_weight: float = 1e-4  # per latent element, against per-pixel L1 + MSE
    face_fraction: float = 0.3
    stage: StageOptions = field(default_factory=lambda: StageOptions(max_steps=3000, budget_minutes=10))


def build_vae(options: VAEOptions, image_size: int) -> AutoencoderKL:
    n = len(options.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(options.block_out_channels),
        layers_per_block=options.layers_per_block,
        latent_channels=options.latent_channels,
        norm_num_groups=options.norm_num_groups,
        sample_size=image_size,
        mid_block_add_attention=False,  # attention at 8x8 buys little and costs export time
    )


def to_signed(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def build_stage(
    corpus: Corpus, work_dir: str | Path, options: VAEOptions, image_size: int
) -> tuple[Stage, AutoencoderKL]:
    torch.manual_seed(options.stage.seed)
    vae = build_vae(options, image_size).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    train_idx = torch.from_numpy(corpus.train_index)
    weights = torch.from_numpy(sampling_weights(corpus, corpus.train_index, options.face_fraction))
    images = images_to_tensor(corpus.images)

    def step(_: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        vae.train()
        idx = train_idx[torch.multinomial(weights, options.batch_size, replacement=True, generator=g)]
        x = to_signed(images[idx]).to(vae.device)  # the batch follows the model (GPU under accelerate)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=g)
        rec = vae.decode(z).sample
        l1 = F.l1_loss(rec, x)
        mse = F.mse_loss(rec, x)
        kl = posterior.kl().mean() / z[0].numel()
        loss = l1 + mse + options.kl_weight * kl
        return loss, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}

    return Stage("vae", work_dir, {"vae": vae}, optimizer, step, options.stage), vae


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, images: np.ndarray, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (unscaled) [N, C, h, w] of uint8 [N, S, S, 3] images."""
    from tqdm import tqdm

    vae.eval()
    means, stds = [], []
    starts = range(0, len(images), batch_size)
    # minutes for the whole corpus on a CPU: show it
    for start in tqdm(
        starts, desc="encode latents", mininterval=10, disable=len(starts) < 8, file=sys.stderr
    ):
        x = to_signed(images_to_tensor(images[start : start + batch_size])).to(vae.device)
        post = vae.encode(x).latent_dist
        # the cache and the UNet stage index these on the CPU, wherever the VAE runs
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def set_scaling_factor(vae: AutoencoderKL, corpus: Corpus, count: int = 4096, seed: int = 0) -> float:
    """1 / std of training latents (posterior samples), written into the VAE config."""
    rng = np.random.default_rng(seed)
    idx = corpus.train_index
    idx = idx if len(idx) <= count else rng.choice(idx, count, replace=False)
    mean, std = encode_latents(vae, corpus.images[np.sort(idx)])
    g = torch.Generator().manual_seed(seed)
    z = mean + std * torch.randn(mean.shape, generator=g)
    factor = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=factor)
    return factor


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Deterministic reconstructions (posterior mode) as uint8 [N, S, S, 3]."""
    vae.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_signed(images_to_tensor(images[start : start + batch_size])).to(vae.device)
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.cpu()
        out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else np.zeros_like(images)


def psnr(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean per-image PSNR in dB over uint8 images."""
    a = original.astype(np.float64) / 255.0
    b = reconstruction.astype(np.float64) / 255.0
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1).clip(1e-10)
    return float(np.mean(10 * np.log10(1.0 / mse)))


def save_recon_grid(
    originals: np.ndarray, reconstructions: np.ndarray, path: str | Path, titles: list[str], cols: int = 12
) -> Path:
    """Pairs of rows: originals above their reconstructions, `titles` (one per pair of rows) to the right."""
    from kcdp_core.pretrain.figures import image_grid

    rows, labels = [], []
    for start in range(0, len(originals), cols):
        rows += [list(originals[start : start + cols]), list(reconstructions[start : start + cols])]
        labels += [titles[start // cols] + " (original)", "VAE reconstruction"]
    return image_grid(
        rows, path, labels, header="mini VAE: held-out benchmark faces (never in the corpus)", label_width=170
    )
