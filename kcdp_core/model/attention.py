"""Capturing the UNet's cross-attention maps A_i = softmax(Q_i K_i^T) (paper Eq. 5) with a diffusers
attention processor, installed through `set_attn_processor` on the attn2 layers we read from.

The processor computes attention explicitly (not through scaled_dot_product_attention) because the
probabilities are needed; it is otherwise the standard diffusers cross-attention computation, with
the mask applied by broadcasting so nothing depends on the batch size (ONNX export, dynamic batch).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention


class AttentionStore:
    """What one forward pass captured, keyed by UNet level: head-averaged cross-attention maps and
    block outputs. Processors and hooks hold this object (not the module), so a deep copy of the
    model gets its own store."""

    def __init__(self) -> None:
        self.maps: dict[int, list[torch.Tensor]] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def clear(self) -> None:
        self.maps = {}
        self.outputs = {}

    def add(self, key: int, probs: torch.Tensor) -> None:
        self.maps.setdefault(key, []).append(probs)

    def mean(self, key: int) -> torch.Tensor | None:
        """[B, N, T] mean over the captured layers of `key` (all at one resolution), None if none."""
        maps = self.maps.get(key)
        if not maps:
            return None
        return torch.stack(maps).mean(0)


class OutputCaptureHook:
    """A forward hook storing a block's output (the first element of a tuple output)."""

    def __init__(self, store: AttentionStore, key: int):
        self.store = store
        self.key = key

    def __call__(self, module: torch.nn.Module, args, output) -> None:
        self.store.outputs[self.key] = output[0] if isinstance(output, tuple) else output


class CrossAttentionCaptureProcessor:
    """A diffusers attention processor that also stores the head-averaged attention map [B, N, T]."""

    def __init__(self, store: AttentionStore, key: int):
        self.store = store
        self.key = key

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        heads = attn.heads
        head_dim = key.shape[-1] // heads
        # [B, heads, tokens, head_dim]; -1 for the batch keeps the batch dimension symbolic.
        query = query.unflatten(-1, (heads, head_dim)).transpose(1, 2)
        key = key.unflatten(-1, (heads, head_dim)).transpose(1, 2)
        value = value.unflatten(-1, (heads, head_dim)).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            # The UNet passes encoder_attention_mask as an additive bias [B, 1, T] (or [B, T]).
            bias = attention_mask if attention_mask.ndim == 3 else attention_mask[:, None, :]
            scores = scores + bias[:, None, :, :].to(scores.dtype)
        probs = scores.softmax(dim=-1)
        self.store.add(self.key, probs.mean(dim=1))

        hidden_states = torch.matmul(probs, value).transpose(1, 2).flatten(2)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_capture(unet: torch.nn.Module, levels: tuple[int, ...], store: AttentionStore) -> list[str]:
    """Route the attn2 (cross-attention) layers of the given up blocks through capture processors.

    Every other layer keeps its processor. Returns the names of the layers now captured.
    """
    processors = dict(unet.attn_processors)
    captured = []
    for name in processors:
        parts = name.split(".")
        if parts[0] == "up_blocks" and int(parts[1]) in levels and ".attn2." in name:
            processors[name] = CrossAttentionCaptureProcessor(store, int(parts[1]))
            captured.append(name)
    unet.set_attn_processor(processors)
    return captured
