"""kcdp-pretrain stages on a tiny drawn corpus: each runs a few steps, its loss falls, and a run that is
interrupted and resumed ends in exactly the state of an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pretrain_fixture import make_fixture

from kcdp_core.config import MINILM, Source
from kcdp_core.knowledge.text_encoder import TextEncoder
from kcdp_core.pretrain import encoder as enc
from kcdp_core.pretrain import unet as un
from kcdp_core.pretrain import vae as va
from kcdp_core.pretrain.corpus import load_corpus, sampling_weights
from kcdp_core.pretrain.stage import StageOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_fixture(tmp_path_factory.mktemp("emoji"))


@pytest.fixture(scope="module")
def corpus(data):
    return load_corpus(data, 64, heldout_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def text():
    src = Source(MINILM)
    return TextEncoder.from_sources(src, src, 32)


@pytest.fixture(scope="module")
def sentences(corpus, text):
    return text.sentence_embeddings(corpus.vocabulary)


def _opts(steps: int, lr_warmup: int = 2) -> StageOptions:
    return StageOptions(max_steps=steps, budget_minutes=None, warmup_steps=lr_warmup, log_every=1, seed=3)


def _losses(work: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (work / "loss.jsonl").read_text().splitlines()]


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)


def test_corpus_split_is_by_emoji_and_faces_are_oversampled(corpus):
    assert len(corpus) == 36  # 12 emojis x 3 styles; the broken json line was skipped
    held = {c for c, h in zip(corpus.codepoints, corpus.heldout, strict=True) if h}
    train = {c for c, h in zip(corpus.codepoints, corpus.heldout, strict=True) if not h}
    assert len(held) == round(0.2 * 12) and not held & train
    assert corpus.heldout.sum() == 3 * len(held)  # every style of a held-out emoji
    w = sampling_weights(corpus, corpus.train_index, 0.5)
    assert w[corpus.faces[corpus.train_index]].sum() == pytest.approx(0.5)
    assert corpus.images.shape[1:] == (64, 64, 3) and corpus.images.dtype == np.uint8


def test_a_second_corpus_gets_its_share_without_drowning_the_emoji_faces(corpus):
    mixed = dataclasses.replace(corpus, extra=np.arange(len(corpus)) % 4 == 0)
    idx = mixed.train_index
    w = sampling_weights(mixed, idx, face_fraction=0.2, extra_fraction=0.3)
    extra, faces = mixed.extra[idx], mixed.faces[idx] & ~mixed.extra[idx]
    assert w.sum() == pytest.approx(1.0)
    assert w[extra].sum() == pytest.approx(0.3) and w[faces].sum() == pytest.approx(0.2)
    assert w[~extra & ~faces].sum() == pytest.approx(0.5)


def _encoder_options(steps: int) -> enc.EncoderOptions:
    return enc.EncoderOptions(
        backbone="tiny_cnn",
        pretrained_backbone=False,
        hidden_dim=64,
        batch_size=16,
        head_lr=3e-3,
        stage=_opts(steps),
    )


def test_encoder_stage_learns_and_resumes_exactly(tmp_path, corpus, sentences):
    full, model_full = enc.build_stage(corpus, sentences, tmp_path / "a", _encoder_options(30), 384, 64)
    full.run()
    losses = _losses(tmp_path / "a")
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert (tmp_path / "a" / "loss.png").exists()

    first, _ = enc.build_stage(corpus, sentences, tmp_path / "b", _encoder_options(30), 384, 64)
    first.run(stop_after=12)  # an interruption right after a checkpoint
    assert not first.done and first.step == 12
    again, model_resumed = enc.build_stage(corpus, sentences, tmp_path / "b", _encoder_options(30), 384, 64)
    again.run()
    assert again.done and again.step == 30
    _same_state(model_full, model_resumed)
    assert _losses(tmp_path / "b") == pytest.approx(losses)

    r = enc.retrieval(model_full.encoder, corpus, sentences, corpus.train_index)
    assert r["top5"] >= r["top1"] and r["images"] == len(corpus.train_index)


def test_vae_stage_learns_and_resumes_exactly(tmp_path, corpus):
    def opts(steps: int) -> va.VAEOptions:
        return va.VAEOptions(
            block_out_channels=(8, 16, 16, 16), norm_num_groups=4, batch_size=8, lr=3e-3, stage=_opts(steps)
        )

    full, vae_full = va.build_stage(corpus, tmp_path / "a", opts(16), 64)
    full.run()
    losses = _losses(tmp_path / "a")
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    va.build_stage(corpus, tmp_path / "b", opts(16), 64)[0].run(stop_after=7)
    again, vae_resumed = va.build_stage(corpus, tmp_path / "b", opts(16), 64)
    again.run()
    _same_state(vae_full, vae_resumed)

    factor = va.set_scaling_factor(vae_full, corpus)
    assert vae_full.config.scaling_factor == pytest.approx(factor) and factor > 0
    rec = va.reconstruct(vae_full, corpus.images[:4])
    assert rec.shape == corpus.images[:4].shape
    assert va.psnr(corpus.images[:4], corpus.images[:4]) > 90  # identical images: capped, huge
    assert 3 < va.psnr(corpus.images[:4], rec) < 60


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_latents_and_reconstructions_follow_the_vae_and_come_back_to_the_cpu(corpus, device):
    """Under `accelerate launch` the VAE stage ends with the VAE on the GPU; the latents it then encodes feed a
    CPU cache and the CPU-side batch sampling of the UNet stage (on an H200 this step once failed)."""
    options = va.VAEOptions(block_out_channels=(8, 16, 16, 16), norm_num_groups=4)
    torch.manual_seed(0)
    vae = va.build_vae(options, 64)
    mean_cpu, _ = va.encode_latents(vae, corpus.images[:6], batch_size=4)
    vae.to(device)
    mean, std = va.encode_latents(vae, corpus.images[:6], batch_size=4)
    assert mean.device.type == std.device.type == "cpu" and mean.shape == (6, 4, 8, 8)
    torch.testing.assert_close(mean, mean_cpu, atol=1e-3, rtol=1e-3)
    assert va.set_scaling_factor(vae, corpus) > 0
    assert va.reconstruct(vae, corpus.images[:3]).shape == corpus.images[:3].shape


def test_unet_stage_learns_and_resumes_exactly(tmp_path, corpus, text):
    torch.manual_seed(0)
    vae = va.build_vae(va.VAEOptions(block_out_channels=(8, 16, 16, 16), norm_num_groups=4), 64)
    mean, std = va.encode_latents(vae, corpus.images)
    cond = un.conditioning(TextEncoder(text.model, text.tokenizer, 16), corpus.vocabulary)
    assert cond.states.shape == (len(corpus.vocabulary), 16, 384)

    def opts(steps: int, repa: float = 0.5) -> un.UNetOptions:
        return un.UNetOptions(
            block_out_channels=(16, 16, 32),
            norm_num_groups=8,
            attention_head_dim=4,
            batch_size=16,
            lr=2e-3,
            repa_weight=repa,
            repa_hidden=32,
            stage=_opts(steps),
        )

    # REPA targets that depend on the image (its mean colour, randomly projected): learnable.
    colour = torch.from_numpy(corpus.images.reshape(len(corpus), -1, 3).mean(1)).float() / 255
    targets = torch.nn.functional.normalize(
        colour @ torch.randn(3, 384, generator=torch.Generator().manual_seed(0))
    )[:, :, None, None]  # global: a 1 x 1 grid
    factor = 1.0 / float(mean.std())
    full, unet_full, sched = un.build_stage(
        corpus, mean, std, factor, cond, tmp_path / "a", opts(24), targets
    )
    full.run()
    losses = _losses(tmp_path / "a")
    assert np.mean(losses[-6:]) < 0.9 * np.mean(losses[:6])
    repa = [json.loads(ln)["repa"] for ln in (tmp_path / "a" / "loss.jsonl").read_text().splitlines()]
    assert np.mean(repa[-6:]) < 0.8 * np.mean(repa[:6])  # the mid block learns to predict the target
    un.build_stage(corpus, mean, std, factor, cond, tmp_path / "b", opts(24), targets)[0].run(stop_after=9)
    again, unet_resumed, _ = un.build_stage(
        corpus, mean, std, factor, cond, tmp_path / "b", opts(24), targets
    )
    again.run()
    _same_state(unet_full, unet_resumed)  # the alignment head resumes too, or the UNets would differ
    # U-REPA: tokens on a 2 x 2 grid (each quadrant's mean colour), aligned at the mid block (2 x 2
    # here) and at the last up block (8 x 8, pooled to the grid): both heads learn.
    quadrants = torch.from_numpy(corpus.images).float().permute(0, 3, 1, 2) / 255
    quadrants = torch.nn.functional.adaptive_avg_pool2d(quadrants, 2)
    proj = torch.randn(384, 3, generator=torch.Generator().manual_seed(1))
    tokens = torch.nn.functional.normalize(torch.einsum("dc,nchw->ndhw", proj, quadrants), dim=1)
    spatial = opts(24)
    spatial.repa_levels = ("mid", "up2")
    stage, unet_sp, _ = un.build_stage(corpus, mean, std, factor, cond, tmp_path / "e", spatial, tokens)
    assert set(stage.modules["repa_head"]) == {"mid", "up2"}
    stage.run()
    repa = [json.loads(ln)["repa"] for ln in (tmp_path / "e" / "loss.jsonl").read_text().splitlines()]
    assert np.mean(repa[-6:]) < 0.8 * np.mean(repa[:6])
    with pytest.raises(ValueError, match="up0..up2"):
        bad = opts(4)
        bad.repa_levels = ("up7",)
        un.build_stage(corpus, mean, std, factor, cond, tmp_path / "f", bad, tokens)
    with pytest.raises(ValueError, match="embeddings"):
        un.build_stage(corpus, mean, std, factor, cond, tmp_path / "c", opts(4))
    plain, _, _ = un.build_stage(corpus, mean, std, factor, cond, tmp_path / "d", opts(4, repa=0.0))
    plain.run()
    assert "repa" not in (tmp_path / "d" / "loss.jsonl").read_text()
    assert [b.__class__.__name__ for b in unet_full.up_blocks] == ["CrossAttnUpBlock2D"] * 3

    losses_t = un.denoising_loss(unet_full, sched, mean[:6], 1.0, cond, corpus.caption_ids[:6], [1, 500])
    assert set(losses_t) == {"1", "500"} and all(v["captioned"] > 0 for v in losses_t.values())
    imgs = un.sample(unet_full, vae, sched.config, cond.states[:2], cond.masks[:2], cond, steps=3)
    assert imgs.shape == (2, 64, 64, 3) and imgs.dtype == np.uint8


def test_stage_options_budget_fixes_step_count(tmp_path, corpus, sentences):
    o = _encoder_options(1000)
    o.stage = dataclasses.replace(o.stage, budget_minutes=0.02, timing_steps=2, warmup_steps=5)
    stage, _ = enc.build_stage(corpus, sentences, tmp_path, o, 384, 64)
    stage.run()
    # 1.2 s of budget: a handful of steps, far fewer than max_steps, and stored for resuming.
    assert stage.done and 3 <= stage.total_steps < 1000
    state = json.loads(next((tmp_path / "ckpt").glob("step-*/state.json")).read_text())
    assert state["total_steps"] == stage.total_steps
