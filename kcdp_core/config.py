"""Typed configuration of a KCDP model and its training run.

One architecture, three presets (`sd15`, `mini`, `tiny`) that differ only in these values.
The whole config is written as config.json into every checkpoint and read back identically.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kcdp_core.portable.labels import EMOJI7

# Where the `mini` foundation lives inside the package (pretrained by kcdp-pretrain).
MINI_FOUNDATION = "kcdp:foundation/mini"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
INSTRUCTBLIP = "Salesforce/instructblip-flan-t5-xl"


def foundation_image_size(folder: str | Path) -> int | None:
    """The pixel size a kcdp-pretrain foundation was trained at (its foundation.json), None elsewhere."""
    path = Path(folder)
    if str(folder).startswith("kcdp:"):
        path = Path(__file__).parent / "assets" / str(folder).removeprefix("kcdp:")
    manifest = path / "foundation.json"
    return int(json.loads(manifest.read_text())["image_size"]) if manifest.is_file() else None


OFFICIAL_INSTRUCTBLIP_PROMPT = (
    "What is the information of subject in the picture? What is the facial expression and the body "
    "movement of the subject in the picture? What is the emotional meaning of the image? Please answer "
    "these question with a descriptive sentence."
)


@dataclass
class Source:
    """A pretrained component: a Hugging Face id, a local folder, or `kcdp:<path>` inside the package."""

    path: str
    subfolder: str | None = None


@dataclass
class FoundationConfig:
    """The frozen foundation: VAE, UNet, text encoder (+ tokenizer) and, for `mini`, the aligned image encoder."""

    vae: Source
    unet: Source
    text_encoder: Source
    tokenizer: Source
    # The retrieval captioner's image encoder and caption bank (`mini`, `tiny`); None for `sd15`.
    image_encoder: Source | None = None
    image_size: int = 64


@dataclass
class KnowledgeConfig:
    """Captioning, triplet parsing and the knowledge sequence k = concat(T(c), sum_i T(t_i))."""

    captioner: Literal["instructblip", "retrieval", "csv"] = "retrieval"
    captioner_source: Source | None = None  # InstructBLIP weights; retrieval uses foundation.image_encoder
    captions_csv: str | None = None  # for captioner == "csv": path,caption
    prompt: str = OFFICIAL_INSTRUCTBLIP_PROMPT
    num_beams: int = 5
    repetition_penalty: float = 5.0
    min_new_tokens: int = 30
    max_new_tokens: int = 50
    retrieval_top_k: int = 1  # captions joined from the k best bank entries
    parser_model: str = "en_core_web_sm"
    max_triplets: int = 8
    # Token length of each half of k (caption half, triplet half): k has 2 * text_length tokens.
    text_length: int = 77
    # Table 4 ablations: leave the caption half (encoded as "") or the triplet half out of k.
    use_caption: bool = True
    use_triplets: bool = True


@dataclass
class PerceptionConfig:
    """KADAP: one UNet pass at a fixed timestep, guided by k, features fused by an FPN."""

    timestep: int = 1
    add_noise: bool = False  # official code: no noise
    finetune: Literal["frozen", "kv", "lora", "full"] = "lora"
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("attn2.to_k", "attn2.to_v")
    # UNet up-block indices whose outputs (and cross-attention maps) feed the FPN.
    feature_levels: tuple[int, ...] = (0, 1, 2, 3)
    use_attention_maps: bool = True
    fpn_dim: int = 256
    feature_dim: int = 512  # size of the pooled visual feature v
    # Fuse the frozen aligned image encoder's embedding into v (the CLIP-like image view beside the
    # UNet's): a linear probe on it transfers across styles far better than on pooled UNet features
    # of the 64 px mini foundation (benchmarks/RESULTS.md, "Probes").
    image_embedding: bool = False
    # With image_embedding: the last N stages of the image encoder (its head stage included) copied
    # and trained on the source, their pooled features fused into v instead of the frozen embedding
    # (kcdp_core/model/image_tail.py). 0: the frozen embedding.
    image_tail: int = 0
    # With image_tail: a second image view through the same tail, the face region of the image
    # (kcdp_core/portable/images.py FACE_BOX) at this side in pixels, its features beside the whole
    # image's; 0 off. A drawn bust's face is a third of the frame at 96 px, and the crop separates
    # expressions better inside a style and across styles (benchmarks/RESULTS.md, "The input view").
    face_view: int = 0
    # MixStyle in the image tail while training (kcdp_core/model/mixstyle.py): probability per batch; 0 off.
    mix_style: float = 0.0
    # With image_tail: its BatchNorm layers keep the running statistics they were copied with (the
    # pretraining corpus's, many styles) while training instead of re-estimating them on the source's few.
    freeze_tail_statistics: bool = False


@dataclass
class HeadConfig:
    """Prediction head: a = Linear(v ⊕ pool(k)); MoE (paper) or one global classifier (Table 4 ablation)."""

    classifier: Literal["moe", "linear"] = "moe"
    use_knowledge: bool = True  # feed v ⊕ pool(k) (True) or v alone
    fused_dim: int = 512
    num_experts: int = 4
    top_k: int = 2
    expert_hidden: int = 128
    dropout: float = 0.1


@dataclass
class CLIEAConfig:
    """Counterfactual-enhanced language-image emotional alignment (pseudo-labels)."""

    enabled: bool = True
    prompt_template: str = "A {} photo of"
    tau: float = 0.07
    num_heads: int = 8
    dim: int = 512
    # "ce": cross-entropy over the K prompts (authors' code); "paper": Eq. 10, positive left out of the denominator.
    ccl: Literal["ce", "paper"] = "ce"
    threshold: float | None = None  # keep target pseudo-labels whose softmax confidence reaches this


@dataclass
class TrainConfig:
    setting: Literal["da", "uc"] = "da"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-5
    head_lr: float | None = None  # None: same as lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    lambda1: float = 1.0
    lambda2: float = 1.0
    balance_weight: float = 0.01
    # CLIEA per batch (authors), CLIEA refreshed per epoch, or the aligned encoder's zero-shot (Table 3).
    pseudo_labels: Literal["batch", "epoch", "zeroshot"] = "batch"
    # Which of an epoch's pseudo-labels train (kcdp_core/train/pseudo_labels.py; needs "epoch" or
    # "zeroshot"): all, or per predicted class the most confident `pseudo_fraction`, ramped linearly
    # to `pseudo_fraction_end` over the epochs; `pseudo_agreement` keeps only labels the head shares.
    pseudo_select: Literal["all", "class_fraction", "class_quota"] = "all"
    pseudo_fraction: float = 0.5
    pseudo_fraction_end: float | None = None
    pseudo_agreement: bool = False
    # Epochs of source-only training before the target loss starts (CLIEA untrained before).
    pseudo_warmup_epochs: int = 0
    grad_accum: int = 1
    val_fraction: float = 0.15
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    augment: bool = True
    # Probability that a source image is first redrawn in another style (palette, flat fills,
    # line art, background, size in the frame: train/style_augment.py); 0 off.
    style_augment: float = 0.0
    # The face view's box moved and scaled by up to this fraction of its side (train/datasets.py,
    # moved_box); 0 off. A model without a face view ignores it.
    face_box_jitter: float = 0.0
    # Weight of a consistency term between each source image and the same image redrawn in another
    # style (train/style_augment.py's restyle always, then the usual augmentation): the head's
    # softmax on the first view, gradient-free, is the soft target of the redrawn one; 0 off. It asks
    # for style invariance directly, as AugMix's consistency term (Hendrycks et al. 2020), instead of
    # only showing restyled images with their labels. Costs a second forward and backward pass of
    # every source batch.
    style_consistency_weight: float = 0.0
    # Epochs at the start in which the pretrained weights (the UNet's LoRA, the image tail's copy) stay
    # as they are and only the new modules train, then warm up and decay over the rest: LP-FT (Kumar
    # et al. 2022; a random head's first gradients otherwise distort the pretrained features); 0 off.
    pretrained_hold_epochs: int = 0
    num_workers: int = 0
    # Draw source batches class-balanced (with replacement): macro-F1 on skewed sets (happiness 19/44).
    balanced_sampling: bool = False
    # Draw source batches style-balanced (with replacement): every style, the folder above an image's
    # class folder (kcdp-data's domains/<style>/<class>/), as often as any other; with
    # balanced_sampling too, every (style, class). Issue 26's "batches balanced over styles".
    balance_styles: bool = False
    # DA (AdaBN, train/target_bn.py): after training, recompute best/'s BatchNorm statistics on the
    # unlabelled target (per-style feature standardisation; images only, never labels).
    target_bn: bool = False
    # Start from a trained checkpoint's tensors (LoRA, image tail, FPN, heads, CLIEA; a folder with
    # config.json + model.safetensors, or `kcdp:<asset>`) instead of fresh heads: adaptation
    # (kcdp-adapt) fine-tunes a trained model. Its architecture must be this config's.
    init_checkpoint: str | None = None
    # DA: weight of a consistency term between two augmented views of each target image (the
    # head's softmax on one view, gradient-free, is the soft target of the other); 0 off. Costs a
    # second forward and backward pass of every target batch.
    consistency_weight: float = 0.0
    # DA: the labels the target can show, as its user declares them (kcdp-adapt --classes; None: all).
    # Pseudo-labels are argmax over these alone: a label the target lacks is always a wrong one.
    target_classes: tuple[str, ...] | None = None

    # Read only when setting == "da": a UC run is the same run whatever they hold.
    DA_ONLY = (
        "pseudo_labels",
        "pseudo_select",
        "pseudo_fraction",
        "pseudo_fraction_end",
        "pseudo_agreement",
        "pseudo_warmup_epochs",
        "target_bn",
        "consistency_weight",
        "target_classes",
    )


@dataclass
class KCDPConfig:
    preset: str
    labels: tuple[str, ...]
    foundation: FoundationConfig
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    cliea: CLIEAConfig = field(default_factory=CLIEAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    version: str = "0.1.0"

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KCDPConfig:
        return _build(cls, data)

    @classmethod
    def from_json(cls, text: str) -> KCDPConfig:
        return cls.from_dict(json.loads(text))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> KCDPConfig:
        path = Path(folder)
        path = path / "config.json" if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"{path}: no KCDP config.json here")
        return cls.from_json(path.read_text())

    def replace(self, **sections: Any) -> KCDPConfig:
        """A copy with whole sections or section fields replaced: replace(train={"lr": 1e-4})."""
        data = self.to_dict()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                unknown = set(value) - set(data[key])
                if unknown:
                    raise KeyError(f"unknown {key} option(s): {sorted(unknown)}")
                data[key].update(value)
            else:
                data[key] = value
        return KCDPConfig.from_dict(data)

    def with_foundation(self, folder: str) -> KCDPConfig:
        """A copy whose VAE, UNet and image encoder (and a text encoder kept in the UNet's repository,
        sd15's CLIP; not mini's MiniLM) come from `folder`, at the pixel size it was trained at."""
        out = KCDPConfig.from_dict(self.to_dict())
        f = out.foundation
        repo = f.unet.path
        for name in ("vae", "unet", "text_encoder", "tokenizer", "image_encoder"):
            src = getattr(f, name)
            if src is not None and (name in ("vae", "unet", "image_encoder") or src.path == repo):
                setattr(f, name, Source(folder, src.subfolder))
        f.image_size = foundation_image_size(folder) or f.image_size
        return out


def _build(cls: type, data: Any) -> Any:
    """Rebuild nested dataclasses (and tuples) from plain JSON data."""
    if not dataclasses.is_dataclass(cls) or data is None:
        return data
    hints = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(hints)
    if unknown:
        raise KeyError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        ftype = str(hints[name].type)
        sub = _NESTED.get(ftype.replace(" | None", ""))
        if sub is not None:
            kwargs[name] = _build(sub, value)
        elif ftype.startswith("tuple") and value is not None:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_NESTED: dict[str, type] = {
    "Source": Source,
    "FoundationConfig": FoundationConfig,
    "KnowledgeConfig": KnowledgeConfig,
    "PerceptionConfig": PerceptionConfig,
    "HeadConfig": HeadConfig,
    "CLIEAConfig": CLIEAConfig,
    "TrainConfig": TrainConfig,
}


# -- presets ------------------------------------------------------------------------------


def sd15(
    labels: tuple[str, ...] = EMOJI7, foundation: str = SD15, captioner: str = INSTRUCTBLIP
) -> KCDPConfig:
    """The paper: SD 1.5 (512 px), its CLIP ViT-L/14 text encoder, InstructBLIP flan-t5-xl.

    `foundation` / `captioner`: hub ids (default) or local folders laid out like those repositories.
    """
    return KCDPConfig(
        preset="sd15",
        labels=tuple(labels),
        foundation=FoundationConfig(
            vae=Source(foundation, "vae"),
            unet=Source(foundation, "unet"),
            text_encoder=Source(foundation, "text_encoder"),
            tokenizer=Source(foundation, "tokenizer"),
            image_encoder=None,
            image_size=512,
        ),
        knowledge=KnowledgeConfig(
            captioner="instructblip",
            captioner_source=Source(captioner),
            text_length=77,
        ),
        perception=PerceptionConfig(fpn_dim=256, feature_dim=512),
    )


def mini(labels: tuple[str, ...] = EMOJI7) -> KCDPConfig:
    """The embedded default: the foundation pretrained by kcdp-pretrain (its own pixel size), MiniLM."""
    return KCDPConfig(
        preset="mini",
        labels=tuple(labels),
        foundation=FoundationConfig(
            vae=Source(MINI_FOUNDATION, "vae"),
            unet=Source(MINI_FOUNDATION, "unet"),
            text_encoder=Source(MINILM),
            tokenizer=Source(MINILM),
            image_encoder=Source(MINI_FOUNDATION, "image_encoder"),
            image_size=foundation_image_size(MINI_FOUNDATION) or 64,
        ),
        knowledge=KnowledgeConfig(captioner="retrieval", retrieval_top_k=1, text_length=16),
        # The mini UNet (kcdp-pretrain) has three up blocks, all with cross-attention (12x12 latents at 96 px: 3, 6, 12).
        perception=PerceptionConfig(
            fpn_dim=64,
            feature_dim=128,
            lora_rank=8,
            lora_alpha=8.0,
            feature_levels=(0, 1, 2),
            image_embedding=True,
            # EfficientNet-Lite0's last two blocks and head stage (1.5M parameters) trained as an
            # ImageTail: drawn faces' expressions, which the frozen embedding barely separates.
            image_tail=3,
        ),
        head=HeadConfig(fused_dim=128, expert_hidden=128),
        cliea=CLIEAConfig(dim=128, num_heads=4),
        # The recipe of benchmarks/RESULTS.md (chosen on the -> fluent validation tasks). DA: CLIEA's
        # labels refreshed per epoch after one source-only epoch, per class the most confident
        # 30% -> 80%, no class above an equal share (HISTORY.md, "Why DA did not adapt": all of them only
        # confirmed the head, skewed to one class). Then AdaBN: best/'s BatchNorm statistics from the
        # unlabelled target (RESULTS.md, "Recipe choice": .729 -> .750 macro-F1 there, nine of nine cells up).
        train=TrainConfig(
            lr=1e-4,
            head_lr=1e-3,
            epochs=10,
            batch_size=16,
            pseudo_labels="epoch",
            pseudo_select="class_quota",
            pseudo_fraction=0.3,
            pseudo_fraction_end=0.8,
            pseudo_warmup_epochs=1,
            target_bn=True,
        ),
    )


def tiny(labels: tuple[str, ...] = EMOJI7, foundation: str = "kcdp:tiny") -> KCDPConfig:
    """Tests: every component with random weights, built in seconds by kcdp_core.model.foundation.

    `foundation` is a folder written by `build_tiny_foundation` (tests create one in a temp dir).
    """
    return KCDPConfig(
        preset="tiny",
        labels=tuple(labels),
        foundation=FoundationConfig(
            vae=Source(foundation, "vae"),
            unet=Source(foundation, "unet"),
            text_encoder=Source(foundation, "text_encoder"),
            tokenizer=Source(foundation, "tokenizer"),
            image_encoder=Source(foundation, "image_encoder"),
            image_size=64,
        ),
        knowledge=KnowledgeConfig(captioner="retrieval", text_length=8, max_triplets=4),
        perception=PerceptionConfig(
            fpn_dim=16, feature_dim=32, lora_rank=4, lora_alpha=4.0, image_embedding=True
        ),
        head=HeadConfig(fused_dim=32, expert_hidden=16),
        cliea=CLIEAConfig(dim=32, num_heads=2),
        train=TrainConfig(lr=1e-3, epochs=2, batch_size=4, val_fraction=0.25),
    )


PRESETS = {"sd15": sd15, "mini": mini, "tiny": tiny}


def preset(name: str, **kwargs: Any) -> KCDPConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)
