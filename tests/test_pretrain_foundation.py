"""kcdp-pretrain end to end on a tiny drawn corpus: the folder it writes loads through load_foundation
(the `mini` preset's sources pointed at it) and from_pretrained, and evaluates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from pretrain_fixture import make_fixture
from safetensors.torch import load_file

from kcdp_core.config import Source, mini
from kcdp_core.model.foundation import load_foundation
from kcdp_core.pretrain import recipe as recipe_mod
from kcdp_core.pretrain.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    data = make_fixture(root / "data")
    args = ["run", "--data", str(data), "--work", str(root / "work"), "--out", str(root / "out"), "--small"]
    for stage in ("encoder", "vae", "unet"):
        args += [f"--{stage}-minutes", "0", f"--{stage}-steps", "4", f"--{stage}-batch-size", "8"]
    assert main(args) == 0
    return root


def test_foundation_folder_layout_and_load(built):
    out = built / "out"
    meta = json.loads((out / "foundation.json").read_text())
    assert meta["kind"] == "kcdp-foundation" and meta["preset"] == "mini"
    assert meta["text_encoder"]["path"] == "sentence-transformers/all-MiniLM-L6-v2"
    for sub in ("vae", "unet", "image_encoder", "caption_bank", "scheduler"):
        assert (out / sub).is_dir(), sub

    cfg = mini()
    f = cfg.foundation
    cfg = cfg.replace(
        foundation={
            **cfg.to_dict()["foundation"],
            "vae": {"path": str(out), "subfolder": "vae"},
            "unet": {"path": str(out), "subfolder": "unet"},
            "image_encoder": {"path": str(out), "subfolder": "image_encoder"},
        }
    )
    assert f.text_encoder == Source(cfg.foundation.text_encoder.path)
    found = load_foundation(cfg)
    assert found.caption_bank_dir == out / "caption_bank"
    assert found.unet.config.cross_attention_dim == found.text_encoder.dim == 384
    assert len(found.unet.up_blocks) == len(cfg.perception.feature_levels)
    assert all(hasattr(found.unet.up_blocks[i], "attentions") for i in cfg.perception.feature_levels)
    assert next(found.vae.parameters()).dtype == torch.float32  # stored fp16, loaded fp32
    z = found.vae.encode(torch.rand(2, 3, 64, 64) * 2 - 1).latent_dist.mode()
    assert z.shape == (2, 4, 8, 8)

    bank = out / "caption_bank"
    captions = [json.loads(ln)["caption"] for ln in (bank / "captions.jsonl").read_text().splitlines()]
    emb = load_file(str(bank / "embeddings.safetensors"))["embeddings"]
    assert len(captions) == emb.shape[0] == 12 and emb.dtype == torch.float16
    torch.testing.assert_close(emb.float().norm(dim=1), torch.ones(12), atol=2e-3, rtol=0)
    # Same order as the text encoder would embed them (docs/architecture.md, foundation folder), to half precision.
    te = found.text_encoder
    te.length = meta["caption_bank"]["sentence_length"]
    torch.testing.assert_close(te.sentence_embeddings(captions[:3]), emb[:3].float(), atol=1e-3, rtol=0)


def test_rerun_skips_finished_stages_and_evaluates(built):
    work, out = built / "work", built / "out"
    stamp = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    args = ["run", "--data", str(built / "data"), "--work", str(work), "--out", str(out), "--small"]
    for stage in ("encoder", "vae", "unet"):
        args += [f"--{stage}-minutes", "0", f"--{stage}-steps", "4"]
    assert main(args) == 0  # every stage already done: re-exports the same weights
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == stamp

    recipe = recipe_mod.Recipe(data=str(built / "data"), work=str(work), out=str(out))
    result = recipe_mod.evaluate(recipe, figures=built / "fig", samples_per_caption=2, sample_steps=3)
    assert 0 <= result["retrieval_heldout"]["top1"] <= result["retrieval_heldout"]["top5"] <= 1
    assert set(result["zero_shot"]["families"]) == {"flat", "line"}
    assert result["vae"]["psnr_heldout_db"] > 0
    assert set(result["unet_heldout_denoising_mse"]) == {str(t) for t in recipe_mod.UNET_TIMESTEPS}
    assert (built / "fig" / "mini_samples.png").exists() and (built / "fig" / "mini_vae_recon.png").exists()


def test_a_foundation_moves_to_a_larger_image_size(built):
    """--image-size with the encoder, VAE and UNet taken from a 64 px foundation: same weights shapes,
    2x latents, the size recorded, and kcdp-train --foundation reads it from there."""
    from safetensors.torch import load_file

    from kcdp_core.train.cli import _config_from_args, train_parser

    root, small = built, built / "out"
    args = [
        "run",
        "--data",
        str(root / "data"),
        "--work",
        str(root / "work128"),
        "--out",
        str(root / "out128"),
    ]
    args += ["--small", "--image-size", "128", "--encoder-init", str(small), "--vae-from", str(small)]
    args += ["--unet-init", str(small)]
    for stage in ("encoder", "unet"):
        args += [f"--{stage}-minutes", "0", f"--{stage}-steps", "1", f"--{stage}-batch-size", "4"]
    assert main(args) == 0
    out = root / "out128"
    meta = json.loads((out / "foundation.json").read_text())
    assert meta["image_size"] == 128 and meta["stages"]["unet"]["init_from"] == str(small)
    assert json.loads((out / "image_encoder" / "config.json").read_text())["image_size"] == 128
    # one AdamW step (lr 5e-4) from the 64 px UNet: every weight within a few lr of where it started
    # (a random initialisation would be ~0.1 away)
    a = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(small / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 5e-3

    config = _config_from_args(
        train_parser().parse_args(
            ["--preset", "mini", "--source", "x", "--out", "y", "--foundation", str(out)]
        )
    )
    assert config.foundation.image_size == 128
    found = load_foundation(config)
    assert found.vae.encode(torch.rand(1, 3, 128, 128)).latent_dist.mode().shape == (1, 4, 16, 16)


@pytest.mark.slow
def test_accelerate_launch_runs_the_recipe_on_two_processes(tmp_path):
    """The GPU path (`accelerate launch kcdp-pretrain run ...`), checked on two CPU processes."""
    import shutil
    import subprocess
    import sys

    data = make_fixture(tmp_path / "data")
    cmd = [
        shutil.which("accelerate") or "accelerate",
        "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", str(Path(sys.executable).parent / "kcdp-pretrain"), "run",
        "--data", str(data), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--small",
    ]  # fmt: skip
    for stage in ("encoder", "vae", "unet"):
        cmd += [f"--{stage}-minutes", "0", f"--{stage}-steps", "4", f"--{stage}-batch-size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "foundation.json").read_text())["stages"]["unet"]["steps"] == 4
    for stage in ("encoder", "vae", "unet"):  # one voice: the main process alone logs each step
        steps = [
            json.loads(ln)["step"]
            for ln in (tmp_path / "work" / stage / "loss.jsonl").read_text().splitlines()
        ]
        assert steps == [4], stage
