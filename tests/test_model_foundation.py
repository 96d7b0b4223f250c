import json
import subprocess
import sys
import time

import pytest
import torch
from model_tiny import tiny_config
from safetensors.torch import load_file

from kcdp_core.model.foundation import (
    TINY_CAPTIONS,
    build_tiny_foundation,
    ensure_tiny_foundation,
    load_foundation,
)


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    return build_tiny_foundation(tmp_path_factory.mktemp("f") / "tiny", seed=0)


def test_import_kcdp_core_stays_torch_free():
    code = "import kcdp_core, kcdp_core.config, kcdp_core.sources, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layout_and_caption_bank(foundation):
    meta = json.loads((foundation / "foundation.json").read_text())
    assert meta == {"kind": "kcdp-foundation", "preset": "tiny", "text_encoder": None}
    for sub in ("vae", "unet", "text_encoder", "tokenizer", "image_encoder", "caption_bank"):
        assert (foundation / sub).is_dir(), sub
    lines = (foundation / "caption_bank" / "captions.jsonl").read_text().splitlines()
    captions = [json.loads(line)["caption"] for line in lines]
    assert captions == list(TINY_CAPTIONS) and len(captions) >= 40
    emb = load_file(str(foundation / "caption_bank" / "embeddings.safetensors"))["embeddings"]
    assert emb.shape == (len(captions), 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(captions)), atol=1e-5)
    # Distinct captions embed differently (the random encoder is not degenerate).
    sims = emb @ emb.T
    assert (sims - torch.eye(len(captions))).max() < 0.9999


def test_build_is_deterministic_and_fast(foundation, tmp_path):
    start = time.perf_counter()
    again = build_tiny_foundation(tmp_path / "again", seed=0)
    assert time.perf_counter() - start < 10
    for sub in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(foundation / sub)), load_file(str(again / sub))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    a = load_file(str(foundation / "caption_bank/embeddings.safetensors"))["embeddings"]
    b = load_file(str(again / "caption_bank/embeddings.safetensors"))["embeddings"]
    assert torch.equal(a, b)


def test_load_foundation_matches_tiny_preset(foundation):
    cfg = tiny_config(foundation)
    f = load_foundation(cfg)
    assert f.unet.config.cross_attention_dim == f.text_encoder.dim == 32
    assert f.vae.config.latent_channels == 4
    assert max(cfg.perception.feature_levels) < len(f.unet.up_blocks)
    assert f.caption_bank_dir == foundation / "caption_bank"
    assert f.image_encoder is not None
    assert f.image_encoder(torch.rand(2, 3, 64, 64)).shape == (2, 32)
    # 64 px -> 8x8x4 latent
    assert f.vae.encode(torch.rand(1, 3, 64, 64)).latent_dist.mean.shape == (1, 4, 8, 8)
    # Emotion prompt words are whole tokens, not letter pieces.
    tokens = f.text_encoder.tokenizer.tokenize("A happiness photo of")
    assert tokens == ["a", "happiness", "photo", "of"]
    assert not any(p.requires_grad for p in f.unet.parameters())


def test_ensure_tiny_foundation_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    first = ensure_tiny_foundation()
    assert first.parent == tmp_path / "cache" and (first / "foundation.json").exists()
    stamp = (first / "foundation.json").stat().st_mtime_ns
    assert ensure_tiny_foundation() == first
    assert (first / "foundation.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temp folder left


def test_build_leaves_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_tiny_foundation(tmp_path / "f", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_scheduler_is_loaded_from_the_foundation(foundation):
    f = load_foundation(tiny_config(foundation))
    assert f.scheduler is not None and f.scheduler.config.num_train_timesteps == 1000
