"""A Stable-Diffusion-1.5-shaped foundation with random weights, built offline: the `sd15` preset's
code path run at its true size (or small, for tests) where no hub weights can be had.

`build_sd15_foundation(folder)` writes what the hub repository stable-diffusion-v1-5/stable-diffusion-v1-5
holds, file for file where it matters: model_index.json, unet/ (860M parameters), vae/ (the 8x KL
autoencoder), text_encoder/ (CLIP ViT-L/14's text tower), tokenizer/ (vocab.json + merges.txt that
CLIPTokenizer loads; a small BPE vocabulary, the ids all inside CLIP's 49,408), scheduler/ (PNDM).
`small=True` keeps every class, block type and file but shrinks the widths (tests: seconds).
`build_instructblip(folder)` writes a small InstructBLIP (the same classes as
Salesforce/instructblip-flan-t5-xl: vision tower, Q-Former, flan-T5, the processor with its two
tokenizers) with random weights; its 4B parameters do not fit a test.
`install_in_hub_cache` files a folder under a Hugging Face hub cache as `repo_id`, so the presets'
hub ids load it offline (HF_HUB_OFFLINE=1) through exactly the code that loads the real weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from kcdp_core.config import INSTRUCTBLIP, SD15
from kcdp_core.model.tiny_foundation import TINY_CAPTIONS

# The configs of the hub repository (diffusers / transformers class names and every field that
# shapes the weights).
UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],  # the safety checker's; KCDP never loads it
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# Test size: the same classes and block types, narrow.
SMALL = {
    "unet": {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "cross_attention_dim": 32,
             "attention_head_dim": 4, "norm_num_groups": 8, "sample_size": 8},
    "vae": {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                     "num_hidden_layers": 2, "projection_dim": 32},
}  # fmt: skip

_SPECIAL = {"bos": "<|startoftext|>", "eos": "<|endoftext|>"}
_WORDS = (
    "a an the of in on with and is are photo picture image emoji sticker face man woman person people "
    "cat dog child it he she they this that his her their what how "
    "happy happiness joy joyful smile smiles smiling laugh laughing glad cheerful thrilled excited love "
    "amusement awe contentment excitement contempt "
    "sad sadness sorrow unhappy cry crying tears gloomy upset "
    "angry anger mad furious rage annoyed fear fearful afraid scared scary terrified anxious "
    "disgust disgusted gross sick surprise surprised shocked amazed astonished neutral calm plain blank "
    "eyes mouth nose head hand hands arms body heart red yellow blue open closed big small "
    "has have looks look shows show feels feel very not no subject expression movement meaning "
    "information emotional facial describe descriptive sentence answer question questions please"
)


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) writes the bytes 0..255 as."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def clip_bpe_files() -> tuple[dict[str, int], list[str]]:
    """vocab.json and merges.txt contents for CLIPTokenizer: every byte (alone and word-final), then
    whole-word merges for the caption/emotion vocabulary, then the two special tokens."""
    alphabet = _byte_alphabet()
    vocab = alphabet + [c + "</w>" for c in alphabet]
    known, merges = set(vocab), []
    seen_merges: set[str] = set()
    words = dict.fromkeys(w for text in (*TINY_CAPTIONS, _WORDS) for w in text.lower().split())
    for word in words:
        symbols = [*word[:-1], word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            merge = f"{current} {symbol}"
            if merge not in seen_merges:
                seen_merges.add(merge)
                merges.append(merge)
            current += symbol
            if current not in known:
                known.add(current)
                vocab.append(current)
    vocab += [_SPECIAL["bos"], _SPECIAL["eos"]]
    return {token: i for i, token in enumerate(vocab)}, merges


def _write_clip_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe_files()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    bos, eos = _SPECIAL["bos"], _SPECIAL["eos"]
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": bos, "eos_token": eos, "pad_token": eos, "unk_token": eos}, indent=2)
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_prefix_space": False,
                "bos_token": bos,
                "do_lower_case": True,
                "eos_token": eos,
                "errors": "replace",
                "model_max_length": 77,
                "pad_token": eos,
                "tokenizer_class": "CLIPTokenizer",
                "unk_token": eos,
            },
            indent=2,
        )
    )


def _config(base: dict[str, Any], small: dict[str, Any] | None) -> dict[str, Any]:
    config = copy.deepcopy(base)
    config.update(small or {})
    return config


def build_sd15_foundation(folder: str | Path, small: bool = False, seed: int = 0) -> Path:
    """Write a random SD 1.5 foundation to `folder` (true size unless `small`). Deterministic per seed.

    True size: about 4.4 GB of fp32 safetensors and a minute or two on one CPU thread."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shrink = SMALL if small else {}
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        unet_cfg = {k: v for k, v in _config(UNET_CONFIG, shrink.get("unet")).items() if k != "_class_name"}
        UNet2DConditionModel(**unet_cfg).save_pretrained(folder / "unet")
        vae_cfg = {k: v for k, v in _config(VAE_CONFIG, shrink.get("vae")).items() if k != "_class_name"}
        AutoencoderKL(**vae_cfg).save_pretrained(folder / "vae")
        text_cfg = {
            k: v
            for k, v in _config(TEXT_ENCODER_CONFIG, shrink.get("text_encoder")).items()
            if k != "architectures"
        }
        CLIPTextModel(CLIPTextConfig(**text_cfg)).save_pretrained(folder / "text_encoder")
    # Written as the hub has it (diffusers ignores the legacy clip_sample key when loading).
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
    _write_clip_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    return folder


def _t5_vocab() -> list[tuple[str, float]]:
    """A Unigram vocabulary in flan-T5's conventions: <pad> 0, </s> 1, <unk> 2, then "▁word" pieces
    and single characters (so any text tokenizes)."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    words = dict.fromkeys(w for text in (*TINY_CAPTIONS, _WORDS) for w in text.lower().split())
    pieces += [("▁" + w, -5.0 - 0.01 * i) for i, w in enumerate(words)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()\""
    pieces += [("▁", -8.0)] + [(c, -10.0) for c in chars] + [("▁" + c, -9.0) for c in chars]
    return pieces


def build_instructblip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A small random InstructBLIP (flan-T5 flavour) that InstructBlipProcessor and
    InstructBlipForConditionalGeneration load like Salesforce/instructblip-flan-t5-xl."""
    from tokenizers import AddedToken
    from transformers import (
        BertTokenizer,
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        T5Tokenizer,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_query_tokens = 4
    tokenizer = T5Tokenizer(vocab=_t5_vocab(), extra_ids=0)
    tokenizer.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += list(dict.fromkeys(w for text in (*TINY_CAPTIONS, _WORDS) for w in text.lower().split()))
    words += [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()\"" if c not in words]
    words += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    qformer_tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    image_processor = BlipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = InstructBlipProcessor(
        image_processor, tokenizer, qformer_tokenizer, num_query_tokens=num_query_tokens
    )
    config = InstructBlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": 8},
        qformer_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "encoder_hidden_size": 32, "vocab_size": len(words),
                        "max_position_embeddings": 128},
        text_config={"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 1,
                     "num_decoder_layers": 1, "num_heads": 2, "vocab_size": len(tokenizer),
                     "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
                     "is_encoder_decoder": True, "tie_word_embeddings": False},
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InstructBlipForConditionalGeneration(config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


_PROBED = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "processor_config.json", "preprocessor_config.json",
    "video_preprocessor_config.json", "generation_config.json", "model.safetensors.index.json",
)  # fmt: skip


def install_in_hub_cache(folder: str | Path, repo_id: str, cache_dir: str | Path) -> Path:
    """File `folder` under a hub cache (the HF_HUB_CACHE layout) as the `main` revision of `repo_id`;
    with HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache_dir, from_pretrained(repo_id) then loads it."""
    folder = Path(folder).resolve()
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    revision = hashlib.sha1(f"kcdp-random:{repo_id}:{folder}".encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if snapshot.is_symlink() or snapshot.exists():
        snapshot.unlink()
    os.symlink(folder, snapshot, target_is_directory=True)  # the hub cache itself links files to blobs
    # Offline, a file the loaders probe for must be known to be absent (as a cache filled online
    # records it), else transformers gives up or falls back to another folder.
    for sub in [folder, *(p for p in folder.iterdir() if p.is_dir())]:
        for name in _PROBED:
            if not (sub / name).exists():
                marker = repo / ".no_exist" / revision / sub.relative_to(folder) / name
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
    return snapshot


def build_hub_cache(
    cache_dir: str | Path, work: str | Path, small: bool = False, seed: int = 0
) -> dict[str, Path]:
    """Both repositories the `sd15` preset names, random, under `work` and filed in `cache_dir`."""
    work = Path(work)
    sd = build_sd15_foundation(work / "stable-diffusion-v1-5", small=small, seed=seed)
    blip = build_instructblip(work / "instructblip-flan-t5-xl", seed=seed)
    install_in_hub_cache(sd, SD15, cache_dir)
    install_in_hub_cache(blip, INSTRUCTBLIP, cache_dir)
    return {SD15: sd, INSTRUCTBLIP: blip}
