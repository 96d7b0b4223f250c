"""The exported graphs, one config each (after optimum's OnnxConfig): the torch module to trace, its
named inputs and outputs with their dynamic batch axis, a generator of dummy inputs, the output whose
argmax is a label, and the tolerance parity is held to.

The graphs: text_encoder (token ids + mask -> token states), image_encoder (pixels -> retrieval
embedding [+ the image tail's features]; absent for sd15), perception (pixels + knowledge [+ the image
view the model fuses into v, an output of the image encoder graph] -> logits, probs, features v).
A model with a face view has three more: face_encoder (the face view -> the tail's features of it),
latents (pixels -> the VAE encoder's latents) and kadap (latents + knowledge -> the FPN's pooled levels,
all of perception that no image view enters); its perception graph is the rest (pooled levels +
knowledge + image views -> logits, probs, features), so that the runtime runs what needs only the pixels
(latents, the face encoder) on a second core beside the image encoder's caption, the knowledge and kadap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

BATCH = "batch"
Dim = int | str
# The image and face encoders run the same trunk and image tail: their weights are stored once, here.
IMAGE_WEIGHTS = "image_weights.data"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]  # BATCH marks the dynamic axis
    dtype: Literal["float32", "int64"] = "float32"

    def manifest(self) -> list[Dim]:
        return [*self.shape, self.dtype]

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)


DummyFn = Callable[[int, np.random.Generator], dict[str, np.ndarray]]


@dataclass
class GraphConfig:
    name: str
    module: nn.Module  # forward(*inputs in order) -> tuple of outputs in order
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dummy: DummyFn  # fresh random inputs for tracing and parity
    label_output: str | None = None  # argmax of this output is the prediction (label agreement)
    # Projection before the argmax: the caption bank's embeddings [E, N] for the image encoder, so its
    # "label" is the retrieved caption.
    label_matrix: np.ndarray | None = None
    atol: float = 1e-4  # fp32 max abs difference allowed on every output
    # int8 kind: static QDQ calibrated on real images, dynamic, or "weights": int8 weights with fp32
    # compute from the start (for a graph whose int8 activations are known to fail end to end)
    quantization: Literal["static", "dynamic", "weights"] = "static"
    # op types static int8 quantizes (None: onnxruntime's default, every op it can)
    quantize_ops: tuple[str, ...] | None = None
    # Graphs naming the same external-data file store the weights they carry alike once, in it
    # (kcdp_export.shared_weights); a graph alone with its file keeps its weights inside.
    shared_weights: str | None = None
    meta: dict = field(default_factory=dict)
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in [*self.inputs, *self.outputs]
        }

    def manifest(self) -> dict:
        return {
            "file": self.file,
            "inputs": {t.name: t.manifest() for t in self.inputs},
            "outputs": {t.name: t.manifest() for t in self.outputs},
        }

    def labels(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        out = outputs[self.label_output]
        return (out @ self.label_matrix if self.label_matrix is not None else out).argmax(-1)

    @torch.no_grad()
    def run_torch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The PyTorch reference outputs for numpy feeds (memoised on the input bytes: parity, the
        end-to-end check and every precision compare against the same forward passes)."""
        key = _digest(feeds, self.input_names)
        if key not in self._memo:
            self._memo[key] = self._forward(feeds)
        return self._memo[key]

    def _forward(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.module.eval()
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.detach().float().cpu().numpy() for n, o in zip(self.output_names, out, strict=True)}


def _digest(feeds: dict[str, np.ndarray], names: list[str]) -> str:
    h = hashlib.sha1()
    for name in names:
        a = np.ascontiguousarray(feeds[name])
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# -- wrappers: plain tensors in, a tuple of tensors out (what the tracer wants) ------------------


class TextEncoderModule(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state.float()


class PerceptionModule(nn.Module):
    """perception's graph: pixels (or, `from_pooled`, kadap's pooled levels) + k + the image views ->
    logits, probs, features."""

    def __init__(self, model: nn.Module, from_pooled: bool = False):
        super().__init__()
        self.model, self.from_pooled = model, from_pooled

    def forward(
        self,
        first: torch.Tensor,
        knowledge: torch.Tensor,
        knowledge_mask: torch.Tensor,
        *image_views: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image_views: the model's image_inputs in order, side by side as the model fuses them."""
        view = torch.cat(image_views, dim=1) if image_views else None
        if self.from_pooled:
            out = self.model.from_pooled_levels(first, knowledge, knowledge_mask, view)
        else:
            out = self.model(first, knowledge, knowledge_mask, view)
        return out.logits, out.probs, out.features


class LatentsModule(nn.Module):
    """The first graph of a split perception: pixels -> the VAE encoder's latents."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.kadap.encode(pixels)


class KadapModule(nn.Module):
    """The second graph of a split perception: latents + k -> pooled levels."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, latents: torch.Tensor, knowledge: torch.Tensor, knowledge_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.model.pooled_from_latents(latents, knowledge, knowledge_mask)


def split_perception(model: nn.Module) -> bool:
    """Whether perception is exported as latents + kadap + perception: for a model with a face view,
    whose face encoder then runs on a second core beside the knowledge and kadap (each split costs one
    more session call)."""
    return bool(model.face_view)


# -- dummy input generators ------------------------------------------------------------------


def _prefix_mask(rng: np.random.Generator, batch: int, length: int, allow_empty: bool) -> np.ndarray:
    """Masks of real tokens first, then padding: random lengths (>= 1 unless allow_empty)."""
    lengths = rng.integers(0 if allow_empty else 1, length + 1, size=batch)
    return (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)


def text_dummy(vocab_size: int, length: int) -> DummyFn:
    def make(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        mask = _prefix_mask(rng, batch, length, allow_empty=False)
        ids = rng.integers(0, vocab_size, size=(batch, length)).astype(np.int64) * mask
        return {"input_ids": ids, "attention_mask": mask}

    return make


def image_dummy(size: int, name: str = "pixels") -> DummyFn:
    def make(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {name: rng.random((batch, 3, size, size), dtype=np.float32)}

    return make


def perception_dummy(size: int, length: int, dim: int, images: Sequence[TensorSpec] = ()) -> DummyFn:
    """Pixels in [0, 1]; k halves with random real-token prefixes; the triplet half may be empty
    (an image whose caption gave no triplet), as assemble_knowledge produces it; the image views
    `images`: unit-norm embeddings (as the frozen encoder gives) or non-negative pooled features."""

    def make(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cap = _prefix_mask(rng, batch, length, allow_empty=False)
        tri = _prefix_mask(rng, batch, length, allow_empty=True)
        mask = np.concatenate([cap, tri], axis=1).astype(np.float32)
        k = rng.standard_normal((batch, 2 * length, dim)).astype(np.float32) * mask[..., None]
        feeds = {
            "pixels": rng.random((batch, 3, size, size), dtype=np.float32),
            "knowledge": k,
            "knowledge_mask": mask,
        }
        for image in images:
            e = rng.standard_normal(image.concrete(batch)).astype(np.float32)
            if image.name == "image_embedding":
                feeds[image.name] = e / np.linalg.norm(e, axis=1, keepdims=True)
            else:  # pooled swish activations: mostly positive, of order one
                feeds[image.name] = np.abs(e)
        return feeds

    return make


# -- the graph configs -------------------------------------------------------------------


def text_encoder_graph(text_encoder: nn.Module, length: int) -> GraphConfig:
    """`text_encoder` is kcdp_core's TextEncoder (its transformers model is traced)."""
    model = text_encoder.model
    dim = int(model.config.hidden_size)
    return GraphConfig(
        name="text_encoder",
        module=TextEncoderModule(model).eval(),
        inputs=[
            TensorSpec("input_ids", (BATCH, length), "int64"),
            TensorSpec("attention_mask", (BATCH, length), "int64"),
        ],
        outputs=[TensorSpec("token_states", (BATCH, length, dim))],
        dummy=text_dummy(int(model.config.vocab_size), length),
        quantization="dynamic",  # transformer MatMuls: dynamic int8 is the standard recipe
        meta={
            "dim": dim,
            "transformer": {
                "model_type": str(model.config.model_type),
                "num_heads": int(getattr(model.config, "num_attention_heads", 0) or 0),
                "hidden_size": dim,
            },
        },
    )


def image_view_specs(model: nn.Module) -> list[TensorSpec]:
    """The image and face encoder outputs perception takes (KCDPModel.image_inputs)."""
    return [TensorSpec(name, (BATCH, int(width))) for name, width in model.image_inputs.items()]


def image_encoder_graph(model: nn.Module, size: int, bank: np.ndarray | None = None) -> GraphConfig:
    """`model` is a KCDPModel; `bank`: the caption bank's embeddings [N, E]; label agreement is then
    retrieval agreement. With an image tail the graph also outputs the tail's features (one trunk pass)."""
    embed = int(model.image_encoder.config.embed_dim)
    outputs = [TensorSpec("embedding", (BATCH, embed))]
    outputs += [v for v in image_view_specs(model) if v.name == "image_features"]
    return GraphConfig(
        name="image_encoder",
        module=model.image_encoder_graph_module().eval(),
        inputs=[TensorSpec("pixels", (BATCH, 3, size, size))],
        outputs=outputs,
        dummy=image_dummy(size),
        label_output=None if bank is None else "embedding",
        label_matrix=None if bank is None else np.ascontiguousarray(bank.T),
        # With an image tail, static int8 fails the graph's own retrieval parity in every export measured
        # (agreement .00-.40 in 23 exports of v6 and its adaptations, 2026-12-06): int8 weights from the start.
        quantization="weights" if model.image_tail is not None else "static",
        shared_weights=IMAGE_WEIGHTS,
    )


def face_encoder_graph(model: nn.Module) -> GraphConfig:
    """`model` is a KCDPModel with a face view: the face view -> the image tail's features of it."""
    side = int(model.face_view)
    return GraphConfig(
        name="face_encoder",
        module=model.face_encoder_graph_module().eval(),
        inputs=[TensorSpec("face", (BATCH, 3, side, side))],
        outputs=[v for v in image_view_specs(model) if v.name == "face_features"],
        dummy=image_dummy(side, "face"),
        # Static int8 passes the graph's own parity (no label output to check) and fails end to end in
        # every export measured (label agreement .72-.80: default model v6, its adaptations, x1 + face
        # view), costing an end-to-end pass before the fallback. Where the image encoder keeps int8
        # weights too, the two store them once.
        quantization="weights",
        shared_weights=IMAGE_WEIGHTS,
    )


def latents_graph(model: nn.Module, size: int) -> GraphConfig:
    """The first graph of a split perception (split_perception): pixels -> the VAE encoder's latents."""
    return GraphConfig(
        name="latents",
        module=LatentsModule(model).eval(),
        inputs=[TensorSpec("pixels", (BATCH, 3, size, size))],
        outputs=[TensorSpec("latents", (BATCH, *model.kadap.latent_shape(size)))],
        dummy=image_dummy(size),
        quantization="static",
        quantize_ops=PERCEPTION_QUANTIZE_OPS,
    )


def kadap_graph(model: nn.Module, size: int, length: int, dim: int, latents: GraphConfig) -> GraphConfig:
    """The second graph of a split perception: `latents`' output + knowledge -> pooled levels."""
    inputs = _perception_inputs(size, length, dim)
    inputs[0] = latents.outputs[0]
    return GraphConfig(
        name="kadap",
        module=KadapModule(model).eval(),
        inputs=inputs,
        outputs=[TensorSpec("pooled_levels", (BATCH, int(model.fpn.pooled_dim)))],
        dummy=_after(latents, perception_dummy(size, length, dim)),
        quantization="static",
        quantize_ops=PERCEPTION_QUANTIZE_OPS,
    )


def perception_graph(
    model: nn.Module, size: int, length: int, dim: int, num_labels: int, before: Sequence[GraphConfig] = ()
) -> GraphConfig:
    """`model` is a KCDPModel (LoRA already merged for export). A model that fuses image views into v
    takes them as inputs: the runtime has them from the image and face encoder graphs already. Given
    the graphs `before` it (split_perception: latents, kadap), the graph starts from kadap's pooled
    levels instead of pixels."""
    views = image_view_specs(model)
    inputs = [*_perception_inputs(size, length, dim), *views]
    dummy = perception_dummy(size, length, dim, views)
    for graph in before:
        inputs[0], dummy = graph.outputs[0], _after(graph, dummy)
    return GraphConfig(
        name="perception",
        module=PerceptionModule(model, from_pooled=bool(before)).eval(),
        inputs=inputs,
        outputs=[
            TensorSpec("logits", (BATCH, num_labels)),
            TensorSpec("probs", (BATCH, num_labels)),
            TensorSpec("features", (BATCH, int(model.fpn.out_dim))),
        ],
        dummy=dummy,
        label_output="logits",
        quantization="static",
        quantize_ops=PERCEPTION_QUANTIZE_OPS,
    )


def perception_graphs(model: nn.Module, size: int, length: int, dim: int) -> list[GraphConfig]:
    """The graphs of perception in export order, each reading what the one before computes: latents,
    kadap and the rest for a split model (split_perception), else the one perception graph."""
    if not split_perception(model):
        return [perception_graph(model, size, length, dim, len(model.labels))]
    latents = latents_graph(model, size)
    kadap = kadap_graph(model, size, length, dim, latents)
    return [latents, kadap, perception_graph(model, size, length, dim, len(model.labels), [latents, kadap])]


# Only the weighted ops: int8 Add/Mul/Softmax/Sigmoid cost more in (de)quantize nodes than they save
# (measured on the default model v4, batch 1: perception p50 10.9 / 11.4 ms vs 11.9 / 12.3 ms
# quantizing every op; end-to-end int8 accuracy .946 vs .947).
PERCEPTION_QUANTIZE_OPS = ("Conv", "MatMul", "Gemm")


def _perception_inputs(size: int, length: int, dim: int) -> list[TensorSpec]:
    return [
        TensorSpec("pixels", (BATCH, 3, size, size)),
        TensorSpec("knowledge", (BATCH, 2 * length, dim)),
        TensorSpec("knowledge_mask", (BATCH, 2 * length)),
    ]


def _after(graph: GraphConfig, dummy: DummyFn) -> DummyFn:
    """Random feeds (`dummy`) with what `graph` computes from them (a split perception's next graph
    reads it)."""

    def make(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        feeds = dummy(batch, rng)
        return feeds | graph.run_torch({n: feeds[n] for n in graph.input_names})

    return make
