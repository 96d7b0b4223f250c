"""The `sd15` preset's foundation from a local folder laid out like the hub repository (random, small
widths, the real classes and files), and the same folder through the preset's hub ids, offline."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from kcdp_core.config import INSTRUCTBLIP, SD15, sd15
from kcdp_core.model.random_sd15 import (
    TEXT_ENCODER_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
    build_instructblip,
    build_sd15_foundation,
    install_in_hub_cache,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd15")
    return build_sd15_foundation(root / "sd", small=True), build_instructblip(root / "blip")


def test_layout_is_the_hub_repository(folders):
    sd, _ = folders
    for f in (
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "scheduler/scheduler_config.json",
    ):
        assert (sd / f).is_file(), f
    unet = json.loads((sd / "unet/config.json").read_text())
    assert unet["_class_name"] == "UNet2DConditionModel"
    assert unet["down_block_types"] == UNET_CONFIG["down_block_types"]
    assert unet["up_block_types"] == UNET_CONFIG["up_block_types"]
    assert json.loads((sd / "vae/config.json").read_text())["_class_name"] == "AutoencoderKL"
    assert json.loads((sd / "scheduler/scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"


def test_true_size_configs_are_sd15():
    """The true-size configs build the real model: 860M UNet parameters (counted on the meta device)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**{k: v for k, v in UNET_CONFIG.items() if k != "_class_name"})
        vae = AutoencoderKL(**{k: v for k, v in VAE_CONFIG.items() if k != "_class_name"})
        text = CLIPTextModel(
            CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER_CONFIG.items() if k != "architectures"})
        )
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480


def test_sd15_preset_loads_from_local_folder(folders):
    from transformers import CLIPTokenizer

    from kcdp_core.model.kcdp import KCDPModel

    sd, blip = folders
    config = sd15(foundation=str(sd), captioner=str(blip)).replace(
        perception={"fpn_dim": 16, "feature_dim": 32},
        head={"fused_dim": 32, "expert_hidden": 16},
        cliea={"dim": 32, "num_heads": 2},
    )
    torch.manual_seed(0)
    model = KCDPModel.from_config(config).eval()
    assert isinstance(model.text_encoder.tokenizer, CLIPTokenizer)
    assert model.kadap.unet.config.cross_attention_dim == model.text_encoder.dim == 32
    assert model.image_encoder is None and config.foundation.image_size == 512
    # The knowledge k of the real preset: 2 x 77 CLIP tokens; the latent of a 512 px image is 64 x 64.
    k, mask = model.encode_knowledge(["a man is thrilled", "a sad face"], [[("man", "is", "thrilled")], []])
    assert k.shape == (2, 154, 32) and mask[1, 77:].sum() == 0
    pixels = torch.rand(2, 3, 512, 512)
    with torch.no_grad():
        levels = model.kadap(pixels, torch.from_numpy(k), torch.from_numpy(mask))
        out = model(pixels, torch.from_numpy(k), torch.from_numpy(mask))
    # Up blocks 0..3: block 0 has no cross-attention; blocks 1..3 carry the 154 map channels.
    assert [tuple(t.shape[1:]) for t in levels] == [
        (64, 16, 16),
        (64 + 154, 32, 32),
        (32 + 154, 64, 64),
        (32 + 154, 64, 64),
    ]
    assert out.probs.shape == (2, 7) and torch.allclose(out.probs.sum(-1), torch.ones(2))
    # LoRA sits on attn2.to_k / attn2.to_v only.
    lora = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_" in n}
    assert lora == {"to_k", "to_v"}

    from kcdp_core.knowledge.captioners import build_captioner

    captioner = build_captioner(config, device="cpu")
    images = [
        Image.fromarray((np.random.default_rng(i).random((48, 40, 3)) * 255).astype("uint8"))
        for i in range(2)
    ]
    captions = captioner(images)
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)


def test_hub_ids_load_the_same_files_offline(folders, tmp_path):
    """The preset's hub ids, unchanged, resolve through a hub cache holding the same folders."""
    sd, blip = folders
    cache = tmp_path / "hub"
    install_in_hub_cache(sd, SD15, cache)
    install_in_hub_cache(blip, INSTRUCTBLIP, cache)
    code = (
        "import torch, json\n"
        "from kcdp_core.config import sd15\n"
        "from kcdp_core.model.foundation import load_foundation\n"
        "from kcdp_core.knowledge.captioners import build_captioner\n"
        "c = sd15()\n"
        "f = load_foundation(c)\n"
        "cap = build_captioner(c, device='cpu')\n"
        "print(json.dumps({'unet': f.unet.config.block_out_channels, 'dim': f.text_encoder.dim,"
        " 'tok': type(f.text_encoder.tokenizer).__name__, 'qformer_vocab': len(cap.processor.qformer_tokenizer),"
        " 'unet_sum': float(sum(p.double().sum() for p in f.unet.parameters()))}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    from diffusers import UNet2DConditionModel

    local = UNet2DConditionModel.from_pretrained(str(sd), subfolder="unet")
    assert got["unet"] == [32, 32, 64, 64] and got["dim"] == 32 and got["tok"] == "CLIPTokenizer"
    assert got["qformer_vocab"] > 200  # its own BERT vocabulary, not the T5 tokenizer's fallback
    assert got["unet_sum"] == pytest.approx(float(sum(p.detach().double().sum() for p in local.parameters())))
