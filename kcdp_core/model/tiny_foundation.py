"""The random `tiny` foundation: tests and the `tiny` preset, built in seconds.

`build_tiny_foundation` writes a random, deterministic one laid out like the other foundations;
`ensure_tiny_foundation` caches it under $KCDP_CACHE (what `kcdp:tiny` resolves to). This module
does not import kcdp_core.sources: sources builds `kcdp:tiny` through it on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

from kcdp_core.knowledge.pooling import sentence_embedding
from kcdp_core.model.image_encoder import ImageEncoder, ImageEncoderConfig
from kcdp_core.portable.constants import cache_root

# Bump when the tiny foundation's architecture changes so stale caches are rebuilt.
TINY_VERSION = "2"
TINY_TEXT_DIM = 32
TINY_IMAGE_SIZE = 64

# Emoji-like captions (CLDR-name style) for the tiny caption bank.
TINY_CAPTIONS: tuple[str, ...] = (
    "grinning face",
    "grinning face with big eyes",
    "grinning face with smiling eyes",
    "beaming face with smiling eyes",
    "grinning squinting face",
    "face with tears of joy",
    "slightly smiling face",
    "smiling face with halo",
    "smiling face with hearts",
    "star struck face",
    "winking face",
    "face blowing a kiss",
    "relieved face",
    "neutral face",
    "expressionless face",
    "face without mouth",
    "unamused face",
    "face with rolling eyes",
    "grimacing face",
    "pensive face",
    "sleepy face",
    "worried face",
    "slightly frowning face",
    "frowning face with open mouth",
    "anguished face",
    "fearful face",
    "anxious face with sweat",
    "sad but relieved face",
    "crying face",
    "loudly crying face",
    "face screaming in fear",
    "confounded face",
    "persevering face",
    "disappointed face",
    "weary face",
    "tired face",
    "face with steam from nose",
    "pouting face",
    "angry face",
    "angry face with horns",
    "face with symbols on mouth",
    "nauseated face",
    "face vomiting",
    "astonished face",
    "hushed face",
    "face with open mouth",
    "flushed face",
    "exploding head",
)

# Words for the tiny word-piece vocabulary: caption words, emotion names and prompt words;
# anything else falls back to single letters and ##letters.
_EXTRA_WORDS = (
    "a an the of in on with and is are photo picture image emoji sticker face man woman person cat dog "
    "happy happiness joy joyful smile smiling laugh laughing glad cheerful thrilled excited love "
    "sad sadness sorrow unhappy cry tears gloomy upset "
    "angry anger mad furious rage annoyed "
    "fear fearful afraid scared scary terrified anxious "
    "disgust disgusted gross sick "
    "surprise surprised shocked amazed astonished "
    "neutral calm plain blank "
    "contempt amusement awe contentment excitement "
    "eyes mouth nose head hand heart red yellow blue open closed big small "
    "has have looks look shows show feels feel very not no"
)


def _tiny_vocab() -> dict[str, int]:
    words: list[str] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(words)

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            words.append(token)

    for text in (*TINY_CAPTIONS, _EXTRA_WORDS):
        for word in text.split():
            add(word)
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        add(ch)
        add("##" + ch)
    for ch in ".,!?'-:;()\"":
        add(ch)
    return {w: i for i, w in enumerate(words)}


def build_tiny_foundation(folder: str | Path, seed: int = 0) -> Path:
    """Write a random, deterministic tiny foundation (64 px, 8x8x4 latent, text dim 32) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Seed a forked RNG so building (e.g. on first use inside a training run) leaves the caller's
    # random state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _build_tiny(folder)
    return folder


def _build_tiny(folder: Path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizer

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_IMAGE_SIZE,
        mid_block_add_attention=False,
    )
    vae.save_pretrained(folder / "vae")

    # SD 1.5's block layout, shrunk: up block 0 has no cross-attention, up blocks 1-3 do.
    unet = UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=4,
    )
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")

    vocab = _tiny_vocab()
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(folder / "tokenizer")
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=TINY_TEXT_DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )  # keeps the pooler so AutoModel.from_pretrained finds every weight (the pooler is unused)
    bert.save_pretrained(folder / "text_encoder")

    ImageEncoder(
        ImageEncoderConfig(
            backbone="tiny_cnn", embed_dim=TINY_TEXT_DIM, image_size=TINY_IMAGE_SIZE, hidden_dim=64
        )
    ).save_pretrained(folder / "image_encoder")

    bank = folder / "caption_bank"
    bank.mkdir(exist_ok=True)
    with (bank / "captions.jsonl").open("w") as f:
        for caption in TINY_CAPTIONS:
            f.write(json.dumps({"caption": caption}) + "\n")
    enc = tokenizer(
        list(TINY_CAPTIONS), padding="max_length", truncation=True, max_length=16, return_tensors="pt"
    )
    bert.eval()  # no dropout: the bank holds what the frozen text encoder computes at run time
    with torch.no_grad():
        states = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    emb = sentence_embedding(states.float(), enc["attention_mask"].float()).contiguous()
    save_file({"embeddings": emb}, str(bank / "embeddings.safetensors"))

    (folder / "foundation.json").write_text(
        json.dumps({"kind": "kcdp-foundation", "preset": "tiny", "text_encoder": None}, indent=2) + "\n"
    )


def ensure_tiny_foundation() -> Path:
    """The cached tiny foundation, built on first use (atomically: a temp folder renamed into place)."""
    target = cache_root() / f"tiny-foundation-v{TINY_VERSION}"
    if (target / "foundation.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        build_tiny_foundation(tmp)
        # transformers writes on rank 0 only once a process group exists: never publish a partial build.
        missing = [
            f for f in ("text_encoder/model.safetensors", "unet/config.json") if not (tmp / f).exists()
        ]
        if missing:
            raise RuntimeError(
                f"{tmp}: tiny foundation build left out {missing} (built inside a process group?)"
            )
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process won the race (target exists and is complete): use theirs.
            if not (target / "foundation.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
