"""Stage 1: the retrieval captioner's image encoder, aligned to frozen MiniLM sentence embeddings.

Contrastive InfoNCE with the text side locked (LiT): because the text tower is frozen, every caption
of the training split is a negative for every image (a softmax over the whole caption vocabulary,
not only the batch), with a learnable temperature. The ImageNet EfficientNet-Lite0 backbone is
fine-tuned at a lower learning rate than the head. Faces are oversampled and images augmented
(see augment.py). Evaluation: caption retrieval on held-out emojis and zero-shot emotion
classification of the benchmark domains with averaged prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kcdp_core.model.image_encoder import ImageEncoder, ImageEncoderConfig
from kcdp_core.pretrain.augment import AugmentOptions, augment
from kcdp_core.pretrain.corpus import Corpus, Domain, sampling_weights
from kcdp_core.pretrain.stage import Stage, StageOptions

# Style families of the benchmark (kcdp_core/data/README.md).
FAMILIES: dict[str, tuple[str, ...]] = {
    "glossy": ("apple", "google", "facebook", "joypixels", "emojione4"),
    "flat": ("twitter", "openmoji", "noto_v1", "emojione_v1"),
    "line": ("openmoji_black", "fluent_mono", "emojione_mono"),
    "fluent": ("fluent_color", "fluent_flat", "fluent3d"),
}

# Generic emotion words only: no CLDR names of the benchmark emojis leak into the prompts.
EMOTION_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # label: (adjectives, nouns)
    "anger": (("angry", "furious", "mad"), ("anger", "rage")),
    "disgust": (("disgusted", "grossed out", "repulsed"), ("disgust",)),
    "fear": (("fearful", "scared", "afraid"), ("fear", "terror")),
    "happiness": (("happy", "joyful", "cheerful"), ("happiness", "joy")),
    "neutral": (("neutral", "calm", "indifferent"), ("no emotion", "indifference")),
    "sadness": (("sad", "unhappy", "sorrowful"), ("sadness", "sorrow")),
    "surprise": (("surprised", "amazed", "shocked"), ("surprise", "amazement")),
}
ADJECTIVE_TEMPLATES = ("a {} face", "an emoji of a {} face", "{} face", "a {} emoji")
NOUN_TEMPLATES = ("a face showing {}", "an emoji expressing {}")


@dataclass
class EncoderOptions:
    backbone: str = "efficientnet_lite0"
    pretrained_backbone: bool = True
    hidden_dim: int = 512
    batch_size: int = 128
    head_lr: float = 1e-3
    backbone_lr: float = 3e-4
    weight_decay: float = 0.01
    init_temperature: float = 0.07
    face_fraction: float = 0.3
    # Start from an aligned image encoder (a foundation folder) instead of ImageNet: continue training
    # on a grown corpus without paying for the first alignment again.
    init_from: str | None = None
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    stage: StageOptions = field(default_factory=lambda: StageOptions(max_steps=3000, budget_minutes=20))


class Aligner(nn.Module):
    """The image encoder plus the learnable log inverse temperature of the contrastive loss."""

    def __init__(self, encoder: ImageEncoder, init_temperature: float):
        super().__init__()
        self.encoder = encoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> uint8 torch [N, 3, S, S] (converted to float per batch)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def build_stage(
    corpus: Corpus,
    text_embeddings: torch.Tensor,
    work_dir: str | Path,
    options: EncoderOptions,
    text_dim: int,
    image_size: int,
) -> tuple[Stage, Aligner]:
    """`text_embeddings`: [len(corpus.vocabulary), D] L2-normalised sentence embeddings."""
    torch.manual_seed(options.stage.seed)
    config = ImageEncoderConfig(
        backbone=options.backbone, embed_dim=text_dim, image_size=image_size, hidden_dim=options.hidden_dim
    )
    if options.init_from:
        from kcdp_core.config import Source
        from kcdp_core.sources import local_folder

        folder = local_folder(Source(options.init_from, "image_encoder"))
        if folder is None:
            raise FileNotFoundError(f"{options.init_from}: no image_encoder folder to start from")
        encoder = ImageEncoder.from_pretrained(folder).float().train()
        if encoder.config.embed_dim != text_dim:
            raise ValueError(f"{options.init_from}: its image encoder does not match ({encoder.config})")
        # Convolutions and a global pool: the weights carry over to another pixel size.
        encoder.config.image_size = image_size
    else:
        encoder = ImageEncoder(config, pretrained_backbone=options.pretrained_backbone)
    model = Aligner(encoder, options.init_temperature)
    # channels_last: about twice as fast for EfficientNet's depthwise convolutions on CPU (measured).
    model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.encoder.backbone.parameters(), "lr": options.backbone_lr},
            {"params": model.encoder.head.parameters(), "lr": options.head_lr},
            {"params": [model.logit_scale], "lr": options.head_lr, "weight_decay": 0.0},
        ],
        weight_decay=options.weight_decay,
    )
    train_idx = torch.from_numpy(corpus.train_index)
    weights = torch.from_numpy(sampling_weights(corpus, corpus.train_index, options.face_fraction))
    vocab_ids = corpus.train_vocabulary()
    bank = text_embeddings[vocab_ids].float()  # locked text side: the training captions
    remap = torch.full((len(corpus.vocabulary),), -1, dtype=torch.long)
    remap[vocab_ids] = torch.arange(len(vocab_ids))
    targets_all = remap[torch.from_numpy(corpus.caption_ids)]
    images = images_to_tensor(corpus.images)

    def step(_: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        model.train()
        idx = train_idx[torch.multinomial(weights, options.batch_size, replacement=True, generator=g)]
        device = model.logit_scale.device  # the batch follows the model (GPU under accelerate)
        x = augment(images[idx].float() / 255.0, g, options.augment).to(device)
        emb = model.encoder(x.contiguous(memory_format=torch.channels_last))
        logits = model.scale() * emb @ bank.to(device).T
        target = targets_all[idx].to(device)
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(1) == target).float().mean()
        return loss, {"acc": float(acc), "temperature": float(1 / model.scale().detach())}

    return Stage("encoder", work_dir, {"model": model}, optimizer, step, options.stage), model


@torch.no_grad()
def embed_images(
    encoder: ImageEncoder, images: np.ndarray, batch_size: int = 256, tokens: bool = False
) -> torch.Tensor:
    """Embeddings [N, D], or with `tokens` the per-position maps [N, D, h, w] in fp16."""
    encoder.eval()
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="image encoder", disable=len(images) < 4096):
        x = images_to_tensor(images[start : start + batch_size]).float() / 255.0
        out.append(encoder.tokens(x).half() if tokens else encoder(x))
    return torch.cat(out) if out else torch.zeros(0, encoder.config.embed_dim)


@torch.no_grad()
def retrieval(
    encoder: ImageEncoder, corpus: Corpus, text_embeddings: torch.Tensor, index: np.ndarray
) -> dict[str, float]:
    """Top-1/top-5 caption retrieval of the images in `index` among the whole caption vocabulary."""
    emb = embed_images(encoder, corpus.images[index])
    sims = emb @ text_embeddings.float().T
    target = torch.from_numpy(corpus.caption_ids[index])
    true = sims.gather(1, target[:, None])
    rank = (sims > true).sum(1)  # 0 = retrieved first
    return {
        "top1": float((rank < 1).float().mean()),
        "top5": float((rank < 5).float().mean()),
        "images": len(index),
        "emojis": len({corpus.codepoints[i] for i in index}),
        "captions": int(text_embeddings.shape[0]),
    }


def emotion_prompts(label: str) -> list[str]:
    adjectives, nouns = EMOTION_WORDS[label]
    return [t.format(a) for t in ADJECTIVE_TEMPLATES for a in adjectives] + [
        t.format(n) for t in NOUN_TEMPLATES for n in nouns
    ]


def class_embeddings(text_encoder, labels: list[str]) -> torch.Tensor:
    """Averaged, re-normalised prompt embeddings per class [C, D]."""
    rows = []
    for label in labels:
        emb = text_encoder.sentence_embeddings(emotion_prompts(label))
        rows.append(F.normalize(emb.mean(0), dim=0))
    return torch.stack(rows)


def zero_shot(
    encoder: ImageEncoder,
    text_encoder,
    domains: list[Domain],
    labels: list[str],
    families: dict[str, tuple[str, ...]] = FAMILIES,
) -> dict:
    """Zero-shot accuracy and macro-F1 per domain, per style family (pooled) and over all domains.

    Macro-F1 averages the classes present in the scored images (an avatar style without disgust
    is not scored on disgust), as kcdp-eval does."""
    from sklearn.metrics import f1_score

    classes = class_embeddings(text_encoder, labels)
    preds: dict[str, tuple[list[str], list[str]]] = {}
    for d in domains:
        pred = (embed_images(encoder, d.images) @ classes.T).argmax(1)
        preds[d.name] = (d.labels, [labels[i] for i in pred.tolist()])

    def score(names: list[str]) -> dict[str, float]:
        y = [t for n in names for t in preds[n][0]]
        p = [t for n in names for t in preds[n][1]]
        acc = float(np.mean([a == b for a, b in zip(y, p, strict=True)]))
        present = [c for c in labels if c in set(y)]
        f1 = float(f1_score(y, p, labels=present, average="macro", zero_division=0))
        return {"accuracy": acc, "macro_f1": f1, "images": len(y)}

    result: dict = {"domains": {n: score([n]) for n in preds}, "families": {}}
    for family, members in families.items():
        present = [m for m in members if m in preds]
        if present:
            result["families"][family] = score(present) | {"domains": present}
    result["all"] = score(list(preds))
    return result
