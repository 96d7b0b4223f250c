"""A training checkpoint run by the runtime's own Pipeline, eagerly in PyTorch (`kcdp-infer --model CKPT`).

The export's graphs are replaced by sessions that call the checkpoint's torch modules with the same
named inputs and outputs (kcdp_export.graphs: image_encoder, face_encoder, latents, kadap and perception;
text_encoder: input_ids, attention_mask -> token_states), and the manifest by one built from the
checkpoint's config. Everything else (preprocessing, captioners, parser, knowledge assembly, batching,
errors, JSON) is the Pipeline's, so a checkpoint and its export print the same results. Tokens come from the checkpoint's
transformers tokenizer, as in training. Needs torch; the runtime CLI finds it through the `kcdp.openers` entry point when a checkpoint is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kcdp_export.manifest import runtime_manifest
from kcdp_runtime.captioner import GivenCaptioner, InstructBlipCaptioner, RetrievalCaptioner
from kcdp_runtime.manifest import GraphSpec, ModelError
from kcdp_runtime.pipeline import Pipeline, TextEncoderStage
from kcdp_runtime.sessions import SessionConfig

PROVIDER = "PyTorch"  # what describe() prints for these sessions


def checkpoint_dir(folder: Path) -> Path:
    """CKPT/best/ when training wrote one (as kcdp-export picks it), else CKPT itself."""
    best = folder / "best"
    return best if (best / "config.json").is_file() and (best / "model.safetensors").is_file() else folder


@dataclass
class _Arg:
    """onnxruntime's NodeArg, as far as the Pipeline reads it."""

    name: str
    type: str = "tensor(float)"


class TorchSession:
    """An onnxruntime-like session over a torch callable: run(names, feed) -> numpy arrays."""

    def __init__(self, fn: Any, inputs: list[_Arg], outputs: list[str], device: str):
        import torch

        self.torch = torch
        self.fn = fn
        self.inputs = inputs
        self.outputs = [_Arg(name) for name in outputs]
        self.device = device

    def get_inputs(self) -> list[_Arg]:
        return list(self.inputs)

    def get_outputs(self) -> list[_Arg]:
        return list(self.outputs)

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        args = [torch.from_numpy(np.ascontiguousarray(feed[i.name])).to(self.device) for i in self.inputs]
        with torch.inference_mode():
            out = self.fn(*args)
        named = dict(zip((o.name for o in self.outputs), out, strict=True))
        wanted = output_names or list(named)
        return [named[name].float().cpu().numpy() for name in wanted]


class HFTextEncoderStage(TextEncoderStage):
    """The text stage with the checkpoint's transformers tokenizer (the export writes it as tokenizer.json)."""

    def __init__(self, session: Any, hf_tokenizer: Any, length: int):
        super().__init__(session, None, length)
        self.hf_tokenizer = hf_tokenizer

    def tokenize(self, texts: Any) -> tuple[np.ndarray, np.ndarray]:
        enc = self.hf_tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.length, return_tensors="np"
        )
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def open_checkpoint(
    folder: str | Path,
    session_config: SessionConfig | None = None,
    parse_cache: bool = True,
    knowledge_cache_size: int = 4096,
) -> Pipeline:
    """A Pipeline over the checkpoint in `folder` (CKPT/best/ when present). Raises ModelError.
    The options are Pipeline.from_pretrained's (kcdp-bench times it with the knowledge memo off)."""
    import torch

    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_core.portable.caption_bank import CaptionBank
    from kcdp_export.graphs import (
        face_encoder_graph,
        image_encoder_graph,
        perception_graphs,
    )

    config_ = session_config or SessionConfig()
    folder = Path(folder)
    ckpt = checkpoint_dir(folder)
    if config_.intra_op_threads:
        torch.set_num_threads(config_.intra_op_threads)
    try:
        model = KCDPModel.from_pretrained(ckpt).eval()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"{folder} is a training checkpoint that could not be loaded ({type(exc).__name__}: {exc}). "
            f"Fix it, or export a good one with `kcdp-export --ckpt {folder} --out {folder}-export`"
        ) from None
    config = model.config
    kc = config.knowledge
    size, length = int(config.foundation.image_size), int(kc.text_length)
    # what an export would hold: the graphs' modules and named inputs and outputs
    graphs = []
    if model.image_encoder is not None:
        graphs.append(image_encoder_graph(model, size))
        if model.face_view:
            graphs.append(face_encoder_graph(model))
    dim = int(model.text_encoder.dim)
    graphs += perception_graphs(model, size, length, dim)
    device = "cuda" if torch.cuda.is_available() and wants_gpu(config_) else "cpu"
    model.to(device)
    text_model = model.text_encoder.model
    sessions: dict[str, Any] = {
        "text_encoder": TorchSession(
            lambda ids, mask: (text_model(input_ids=ids, attention_mask=mask).last_hidden_state,),
            [_Arg("input_ids", "tensor(int64)"), _Arg("attention_mask", "tensor(int64)")],
            ["token_states"],
            device,
        )
    }
    for graph in graphs:
        sessions[graph.name] = TorchSession(
            lambda *x, m=graph.module: out if isinstance(out := m(*x), tuple) else (out,),
            [_Arg(spec.name) for spec in graph.inputs],
            graph.output_names,
            device,
        )

    specs = {name: GraphSpec(file=None, engine="pytorch-eager") for name in sessions}
    manifest = runtime_manifest(ckpt, model, specs, record={"checkpoint": {"path": str(ckpt.resolve())}})
    captioner: Any
    if kc.captioner == "retrieval":
        if "image_encoder" not in sessions or model.caption_bank_dir is None:
            raise ModelError(
                f"{ckpt}: the retrieval captioner needs the foundation's image encoder and caption bank"
            )
        bank = CaptionBank.load(model.caption_bank_dir)
        know = manifest.knowledge
        captioner = RetrievalCaptioner(
            sessions["image_encoder"], bank, know.retrieval_top_k, False, know.separator
        )
    elif kc.captioner == "instructblip":
        captioner = InstructBlipCaptioner(manifest.knowledge.instructblip or {})
    else:
        captioner = GivenCaptioner()
    text = HFTextEncoderStage(sessions["text_encoder"], model.text_encoder.tokenizer, length)
    return Pipeline(manifest, sessions, text, captioner, config_, knowledge_cache_size, parse_cache)


def wants_gpu(config: SessionConfig) -> bool:
    """GPU unless the providers asked for are CPU only."""
    return not config.providers or any(
        p.lower() not in ("cpu", "cpuexecutionprovider") for p in config.providers
    )
