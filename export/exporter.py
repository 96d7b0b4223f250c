"""export_checkpoint: checkpoint folder -> validated export folder.

The export is a sequence of named stages (STAGES) over one ExportRun, each timed into the manifest's
timings_s: load the checkpoint; caption the real images and compute their k with PyTorch; merge
LoRA (checked); write the tokenizer; trace each graph to fp32 ONNX and hold it to parity (refused
otherwise); write the caption bank and its precomputed k; check the runtime's own Pipeline end to
end on the real images; derive the fp16/int8 graphs, measured against the same PyTorch reference,
with a per-graph and then an end-to-end fallback; optional Triton/TensorRT assets; a torch-free
reload. manifest.json (kcdp_runtime.manifest's schema) comes last. Everything is built in a hidden
scratch folder next to EXPORT and moved into place only when every check passed.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcdp_core.portable.constants import CAPTION_SEPARATOR
from kcdp_core.portable.labels import answered
from kcdp_core.recorded_paths import recorded_path
from kcdp_export import validate
from kcdp_export.graphs import (
    GraphConfig,
    face_encoder_graph,
    image_encoder_graph,
    image_view_specs,
    perception_dummy,
    perception_graphs,
    text_encoder_graph,
)
from kcdp_export.manifest import runtime_manifest, write_manifest
from kcdp_export.onnx_export import DEFAULT_OPSET, convert_fp16, export_graph
from kcdp_export.tokenizer import check_tokenizer, encode, export_tokenizer
from kcdp_runtime.bank_knowledge import FILE as BANK_KNOWLEDGE_FILE
from kcdp_runtime.bank_knowledge import BankKnowledge
from kcdp_runtime.manifest import BankKnowledgeSpec, CaptionBankSpec, GraphSpec, Manifest, TokenizerSpec

if TYPE_CHECKING:
    from kcdp_core.portable.caption_bank import CaptionBank
    from kcdp_export.calibration import RealSet
    from kcdp_export.merge import MergeReport

PRECISIONS = ("fp32", "fp16", "int8")


class ExportError(RuntimeError):
    pass


@dataclass
class ExportOptions:
    precision: str = "fp32"
    calibration: Path | None = None  # real images (recursively); labelled when under <label>/ folders
    max_images: int = 256  # real images for parity and accuracy (0: all)
    calibration_images: int = 64  # of those, how many calibrate int8 (the quantizer holds activations of all)
    captions_csv: str | None = None
    opset: int = DEFAULT_OPSET
    use_last: bool = False  # CKPT/ itself even when CKPT/best/ exists
    min_agreement: float = 0.9  # fp16/int8 label agreement floor against PyTorch
    int8_max_drop: float = 1.0  # accuracy points int8 may lose (labelled calibration images only)
    tensorrt: bool = False
    triton: bool = False
    max_batch: int = 32
    overwrite: bool = False
    seed: int = 0
    # Top-1 retrieval: every bank caption's k computed here (fp32 text encoder), so the runtime looks
    # it up instead of running the text encoder; the text encoder then ships only when asked for.
    bank_knowledge: bool = True
    keep_text_encoder: bool = False
    # The labels the export answers (manifest "classes"); None: all. Parity and the end-to-end figures
    # are measured over every label: the restriction is the runtime's, after the graphs.
    classes: tuple[str, ...] | None = None
    log: Any = field(default=None, repr=False)


def _log(options: ExportOptions, message: str) -> None:
    print(f"kcdp-export: {message}", file=options.log or sys.stderr, flush=True)


def resolve_checkpoint(ckpt: Path, use_last: bool = False) -> tuple[Path, str]:
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise ExportError(f"{ckpt}: checkpoint folder does not exist")
    best = ckpt / "best"
    if not use_last and (best / "config.json").exists() and (best / "model.safetensors").exists():
        return best, "best"
    if not (ckpt / "config.json").exists():
        raise ExportError(f"{ckpt}: not a checkpoint (config.json missing)")
    return ckpt, "last"


def export_checkpoint(ckpt: Path, out: Path, options: ExportOptions | None = None) -> dict:
    """Export and validate; returns the manifest. Raises ParityError / ExportError, leaving `out` untouched."""
    options = options or ExportOptions()
    if options.precision not in PRECISIONS:
        raise ExportError(f"precision {options.precision!r}: choose one of {PRECISIONS}")
    if options.precision == "int8" and options.calibration is None:
        raise ExportError("int8 needs --calibration DIR (real images to calibrate and measure accuracy on)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise ExportError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        manifest = _export(ckpt, scratch, options)
        if out.exists():
            shutil.rmtree(out)
        scratch.chmod(0o755)  # mkdtemp made it private
        scratch.rename(out)
        return manifest
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class ExportRun:
    """What the stages of one export share: each stage reads what earlier ones made and adds its own."""

    options: ExportOptions
    work: Path  # the scratch folder that becomes EXPORT
    ckpt_dir: Path
    selected: str  # "best" | "last": which checkpoint of the run folder
    model: Any = None  # KCDPModel; its LoRA is merged in place by the merge stage
    real: RealSet | None = None  # real images with their PyTorch captions and k (--calibration)
    bank: CaptionBank | None = None  # the retrieval captioner's caption bank
    graphs: list[GraphConfig] = field(default_factory=list)  # the graphs to ship, in runtime order
    merge: MergeReport | None = None
    tokenizer_json: Path | None = None
    real_feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)  # per graph
    sessions: dict[str, Any] = field(default_factory=dict)  # the fp32 graphs on onnxruntime
    parity: dict[str, dict] = field(default_factory=dict)  # per graph, per precision
    caption_bank: CaptionBankSpec | None = None
    runtime: Manifest | None = None  # what the runtime reads, before manifest.json exists
    knowledge_k: tuple[np.ndarray, np.ndarray] | None = None  # every bank caption's exact k and mask
    shipped_knowledge: BankKnowledge | None = None  # ...stored at the export's precision
    torch_labels: np.ndarray | None = None  # PyTorch's labels of the real images
    end_to_end: dict[str, Any] = field(default_factory=dict)
    graph_precision: dict[str, str] = field(default_factory=dict)
    int8_change: dict | None = None
    external_data: dict[str, str] = field(default_factory=dict)  # graph -> the file of its shared weights
    shared_weights: list[dict] = field(default_factory=list)  # the manifest's record of each such file
    assets: dict[str, Any] = field(default_factory=dict)  # the manifest's triton / tensorrt entries
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def fp32_dir(self) -> Path:
        return self.work / ".fp32"

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Image size, text length L and text width D."""
        config = self.model.config
        return (
            int(config.foundation.image_size),
            int(config.knowledge.text_length),
            int(self.model.text_encoder.dim),
        )

    def log(self, message: str) -> None:
        _log(self.options, message)


def _export(ckpt: Path, work: Path, options: ExportOptions) -> dict:
    """The stages in order, each timed into the manifest's timings_s, then manifest.json."""
    ckpt_dir, selected = resolve_checkpoint(ckpt, options.use_last)
    run = ExportRun(options, work, ckpt_dir, selected)
    for name, stage in STAGES:
        t0 = time.perf_counter()
        stage(run)
        if name is not None:
            run.timings[name.format(precision=options.precision)] = round(time.perf_counter() - t0, 3)
    manifest = _manifest(run)
    write_manifest(manifest)
    return manifest.to_dict()


def _load(run: ExportRun) -> None:
    import torch

    from kcdp_core.model.kcdp import KCDPModel

    torch.manual_seed(run.options.seed)
    run.log(f"loading {run.ckpt_dir} ({run.selected})")
    run.model = KCDPModel.from_pretrained(run.ckpt_dir).eval()
    try:
        answered(run.model.labels, run.options.classes)
    except ValueError as exc:
        raise ExportError(f"--classes: {exc}") from None


def _real_images(run: ExportRun) -> None:
    options = run.options
    if options.calibration is None:
        return
    from kcdp_export.calibration import load_real_set

    run.real = load_real_set(
        run.model, Path(options.calibration), options.max_images or None, options.captions_csv
    )
    run.log(f"{len(run.real)} real images from {options.calibration} ({run.real.captioner})")


def _merge(run: ExportRun) -> None:
    """The graphs to trace, and the LoRA merge, checked on random and real inputs before any tracing."""
    from kcdp_export.merge import merge_lora

    model, config = run.model, run.model.config
    size, length, dim = run.sizes
    if model.caption_bank_dir is not None and config.knowledge.captioner == "retrieval":
        from kcdp_core.portable.caption_bank import CaptionBank

        run.bank = CaptionBank.load(model.caption_bank_dir)
    run.graphs = [text_encoder_graph(model.text_encoder, length)]
    # The image encoder serves the retrieval captioner and, when the model fuses it into v, perception.
    if model.image_encoder is not None and (
        config.knowledge.captioner == "retrieval" or config.perception.image_embedding
    ):
        run.graphs.append(image_encoder_graph(model, size, None if run.bank is None else run.bank.embeddings))
    if model.face_view:
        run.graphs.append(face_encoder_graph(model))
    # the merge is checked on the whole of perception (pixels, knowledge, image views), split or not
    whole = perception_dummy(size, length, dim, image_view_specs(model))
    rng = np.random.default_rng(run.options.seed + 7)
    check = [whole(batch, rng) for batch in validate.RANDOM_BATCHES]
    if run.real is not None:
        check += list(validate.batched({k: v[:32] for k, v in run.real.perception_feeds().items()}, 16))
    run.merge = merge_lora(model, check)
    run.log(f"LoRA merge: {run.merge.lora_layers} layers, max abs logit diff {run.merge.max_abs_diff:.3g}")
    # traced from the same (now merged) model
    run.graphs += perception_graphs(model, size, length, dim)


def _tokenizer(run: ExportRun) -> None:
    """tokenizer.json first: the text encoder's real inputs come from it, as at run time."""
    model, real, bank = run.model, run.real, run.bank
    run.tokenizer_json = export_tokenizer(model.text_encoder.tokenizer, run.work / "tokenizer", run.sizes[1])
    prompts = [model.config.cliea.prompt_template.format(label) for label in model.labels]
    token_texts = list(
        dict.fromkeys([*(real.texts if real else []), *prompts, *(bank.captions[:256] if bank else [])])
    )
    check_tokenizer(run.tokenizer_json, model.text_encoder, token_texts)
    run.real_feeds = _real_feeds(run.graphs, real, run.tokenizer_json)


def _fp32_graphs(run: ExportRun) -> None:
    """Each graph traced to fp32 ONNX and held to parity with PyTorch (refused on any miss)."""
    options = run.options
    # A top-1 retrieval bank gets its knowledge precomputed; the text encoder then ships only on request.
    table_planned = (
        run.bank is not None and options.bank_knowledge and run.model.config.knowledge.retrieval_top_k == 1
    )
    for graph in run.graphs:
        t0 = time.perf_counter()
        path = run.fp32_dir / graph.file
        export_graph(graph, path, options.opset, options.seed)
        fused = None
        if "transformer" in graph.meta and (options.keep_text_encoder or not table_planned):
            fused = _optimize(graph, path, options, run.real_feeds[graph.name])
        validate.check_model(path)
        sess = validate.session(path)
        result = validate.measure(
            graph, sess, validate.random_feeds(graph, options.seed + 1), run.real_feeds[graph.name]
        )
        run.log(result.summary())
        validate.enforce(result, graph.label_output)  # fp32: refuse on any miss
        run.parity[graph.name] = {"fp32": result.manifest()}
        if fused:
            run.parity[graph.name]["fp32"]["transformer_optimizer"] = fused
        run.sessions[graph.name] = sess
        run.timings[f"export_{graph.name}"] = round(time.perf_counter() - t0, 3)


def _caption_bank(run: ExportRun) -> None:
    """The caption bank (its triplets parsed) and, for top-1 retrieval, every bank caption's k: the
    runtime pipeline of the next stages reads them from the folder being built."""
    options = run.options
    if run.bank is not None:
        run.caption_bank = _export_bank(
            run.bank,
            run.model.caption_bank_dir,
            run.work / "caption_bank",
            run.model.config.knowledge,
            options,
        )
    fp32_graphs = {g.name: GraphSpec(**g.manifest()) for g in run.graphs}
    run.runtime = runtime_manifest(
        run.work, run.model, fp32_graphs, "fp32", run.caption_bank, TokenizerSpec(max_length=run.sizes[1])
    )
    if (
        run.caption_bank is not None
        and options.bank_knowledge
        and run.caption_bank.triplets_parser is not None
    ):
        run.knowledge_k = _bank_k(run.runtime, run.sessions["text_encoder"])


def _end_to_end_fp32(run: ExportRun) -> None:
    """The runtime's own Pipeline (image files in; its captions, k, labels) over the fp32 graphs vs PyTorch."""
    real = run.real
    if real is None:
        return
    probe = next(g for g in run.graphs if g.name == "perception")
    torch_probs = np.concatenate([probe.run_torch(f)["probs"] for f in run.real_feeds["perception"]])
    run.torch_labels = torch_probs.argmax(-1)
    exact = None if run.knowledge_k is None else BankKnowledge.pack(*run.knowledge_k, "fp32")
    labels, captions = _run_runtime(run.runtime, run.sessions, real, exact)
    run.end_to_end["fp32"] = _agreement(labels, run.torch_labels, real.labels)
    run.end_to_end["fp32"]["caption_agreement"] = _same(captions, real.captions)
    run.log(f"end to end fp32 vs PyTorch: {run.end_to_end['fp32']}")


def _precision(run: ExportRun) -> None:
    """The bank's k and every graph at the requested precision; a graph that fails parity there falls
    back on its own (int8 weights with fp32 compute, else fp32), the others keep theirs."""
    options = run.options
    drop_text = run.knowledge_k is not None and not options.keep_text_encoder
    if run.knowledge_k is not None:
        assert run.caption_bank is not None
        run.shipped_knowledge = BankKnowledge.pack(*run.knowledge_k, options.precision)
        run.shipped_knowledge.save(run.work / BANK_KNOWLEDGE_FILE)
        run.caption_bank.knowledge = _knowledge_spec(run.shipped_knowledge, run.knowledge_k, drop_text)
        run.log(f"bank knowledge: {run.caption_bank.knowledge}")
    if drop_text:
        run.graphs = [g for g in run.graphs if g.name != "text_encoder"]
    for graph in run.graphs:
        run.graph_precision[graph.name] = _reduce(run, graph)


def _reduce(run: ExportRun, graph: GraphConfig) -> str:
    """One graph into place at the requested precision; returns the precision it ships at."""
    options, parity = run.options, run.parity[graph.name]
    src, dst = run.fp32_dir / graph.file, run.work / graph.file
    if options.precision == "fp32":
        _move_graph(src, dst)
        return "fp32"
    reason: validate.ParityError | None = None
    if options.precision == "fp16" or graph.quantization != "weights":
        _convert(run, graph, src, dst)
        try:
            parity[options.precision] = _measure_variant(graph, dst, options, run.real_feeds[graph.name])
            return options.precision
        except validate.ParityError as exc:
            parity[f"{options.precision}_rejected"] = exc.parity.manifest()
            reason = exc
    if options.precision == "int8":  # int8 weights, fp32 compute: int8 activations failed or are known to
        try:
            _int8_weights(run, graph)
            if reason is not None:
                run.log(f"{graph.name}: {reason}; int8 weights with fp32 compute instead")
            return "int8-weights"
        except validate.ParityError as exc:
            reason = exc
    run.log(f"{graph.name}: {reason}; keeping this graph in fp32")
    _move_graph(src, dst)
    return "fp32"


def _convert(run: ExportRun, graph: GraphConfig, src: Path, dst: Path) -> None:
    """The fp32 graph at `src` as fp16, or int8 of the graph's kind (calibrated on its real feeds)."""
    if run.options.precision == "fp16":
        convert_fp16(src, dst)
    else:
        from kcdp_export.quantize import quantize_graph

        calib = run.real_feeds[graph.name]
        n = run.options.calibration_images
        arrays = {k: _spread(np.concatenate([f[k] for f in calib]), n) for k in calib[0]} if calib else None
        quantize_graph(src, dst, graph.quantization, arrays, graph.quantize_ops)
    validate.check_model(dst)


def _int8_weights(run: ExportRun, graph: GraphConfig) -> None:
    """The graph in place with int8 weights and fp32 compute, its parity recorded (ParityError past it)."""
    from kcdp_export.quantize import int8_weights

    dst = run.work / graph.file
    int8_weights(run.fp32_dir / graph.file, dst)
    run.parity[graph.name]["int8_weights"] = _measure_variant(
        graph, dst, run.options, run.real_feeds[graph.name]
    )


def _end_to_end_variant(run: ExportRun) -> None:
    """The reduced-precision export end to end vs PyTorch. Greedy fallback: while the figures miss the
    floors, put back the fp32 graph that buys the least speed (text encoder, then the face and image
    encoders); refuse when the last reduced graph (the one with the UNet, where the time goes:
    perception, or kadap when perception is split) still misses. A
    graph kept at int8 weights goes back in two steps: fp16-stored weights (half the file, fp32
    compute), then fp32."""
    options, real, precision = run.options, run.real, run.graph_precision
    if options.precision != "fp32" and real is not None and _can_run(run.work, run.graphs):
        assert run.torch_labels is not None and run.runtime is not None
        reduced_kinds = {options.precision, "int8-weights", "fp16-weights"}
        order = [
            n
            for n in ("text_encoder", "face_encoder", "image_encoder", "latents", "perception", "kadap")
            if precision.get(n) in reduced_kinds
        ]
        attempts = []
        while True:
            sessions = {g.name: validate.session(run.work / g.file) for g in run.graphs}
            labels, captions = _run_runtime(run.runtime, sessions, real, run.shipped_knowledge)
            figures = _agreement(labels, run.torch_labels, real.labels)
            figures["caption_agreement"] = _same(captions, real.captions)
            figures["graphs"] = dict(precision)
            attempts.append(figures)
            run.log(f"end to end {options.precision} vs PyTorch: {figures}")
            problem = _variant_problem(figures, run.end_to_end["fp32"], options)
            if problem is None:
                break
            reduced = [n for n in order if precision[n] in reduced_kinds]
            if len(reduced) <= 1:
                raise ExportError(f"{options.precision} refused: {problem} (attempts: {attempts})")
            _put_back(run, reduced[0], problem)
        run.end_to_end[options.precision] = figures
        if len(attempts) > 1:
            run.end_to_end[f"{options.precision}_attempts"] = attempts
        if options.precision == "int8":
            run.int8_change = _int8_change(figures, run.end_to_end["fp32"], len(real))
    shutil.rmtree(run.fp32_dir, ignore_errors=True)


def _put_back(run: ExportRun, name: str, problem: str) -> None:
    """One step of the fallback for graph `name`: int8 -> int8 weights (fp32 compute) -> fp16 weights
    -> fp32. (A graph without a label output, such as kadap, is only checked for labels end to end.)"""
    graph = next(g for g in run.graphs if g.name == name)
    file = graph.file
    if run.graph_precision[name] == "int8":
        run.log(f"{problem}: the {name} graph with int8 weights and fp32 compute instead")
        run.parity[name]["int8_rejected"] = run.parity[name].pop("int8", None)
        _int8_weights(run, graph)
        run.graph_precision[name] = "int8-weights"
        return
    if run.graph_precision[name] == "int8-weights":
        from kcdp_export.quantize import fp16_weights

        run.log(f"{problem}: storing the {name} graph's weights in fp16 instead of int8")
        fp16_weights(run.fp32_dir / file, run.work / file)
        run.graph_precision[name] = "fp16-weights"
        return
    run.log(f"{problem}: putting back the fp32 {name} graph")
    _move_graph(run.fp32_dir / file, run.work / file)
    run.graph_precision[name] = "fp32"
    parity = run.parity[name]
    parity[f"{run.options.precision}_rejected"] = parity.pop(run.options.precision, None)


def _share_weights(run: ExportRun) -> None:
    """Graphs that carry the same weights (GraphConfig.shared_weights: the image and face encoders)
    store them once, in one external-data file, once every graph is at its final precision; each
    graph's outputs must stay bit for bit what they were."""
    from kcdp_export.shared_weights import share_weights

    groups: dict[str, list[GraphConfig]] = {}
    for graph in run.graphs:
        if graph.shared_weights:
            groups.setdefault(graph.shared_weights, []).append(graph)
    rng = np.random.default_rng(run.options.seed + 5)
    for data_file, graphs in groups.items():
        if len(graphs) < 2:
            continue  # nothing to share: the graph keeps its weights inside
        feeds = {g.name: g.dummy(2, rng) for g in graphs}
        before = {
            g.name: validate.run_onnx(validate.session(run.work / g.file), feeds[g.name]) for g in graphs
        }
        report = share_weights(run.work, [g.file for g in graphs], data_file)
        for g in graphs:
            validate.check_model(run.work / g.file)
            after = validate.run_onnx(validate.session(run.work / g.file), feeds[g.name])
            if any(not np.array_equal(before[g.name][k], after[k]) for k in after):
                raise ExportError(f"{g.file}: its outputs changed when its weights moved to {data_file}")
            run.external_data[g.name] = data_file
        run.shared_weights.append(report.manifest())
        run.log(
            f"{data_file}: {report.stored} distinct of {report.tensors} weight tensors of "
            f"{', '.join(report.graphs)}; {report.bytes_before - report.bytes_after} bytes saved"
        )


def _assets(run: ExportRun) -> None:
    """Optional serving assets: a Triton model repository, TensorRT engines."""
    options = run.options
    if options.triton:
        from kcdp_export.triton import write_repository

        write_repository(run.work, run.graphs, options.max_batch, options.precision)
        run.assets["triton"] = {
            "repository": "triton",
            "models": [g.name for g in run.graphs],
            "max_batch_size": options.max_batch,
        }
    if options.tensorrt:
        run.assets["tensorrt"] = _tensorrt(run.work, run.graphs, options, run.real_feeds)


def _reload(run: ExportRun) -> None:
    """Torch-free reload of the finished folder's graphs before it is declared done."""
    for graph in run.graphs:
        sess = validate.session(run.work / graph.file)
        validate.run_onnx(sess, graph.dummy(1, np.random.default_rng(run.options.seed + 3)))


# (timings_s key or None, stage); "{precision}" is the export's. The fp32 stage times each graph itself.
STAGES: tuple[tuple[str | None, Callable[[ExportRun], None]], ...] = (
    ("load", _load),
    ("real_images", _real_images),
    ("merge", _merge),
    ("tokenizer", _tokenizer),
    (None, _fp32_graphs),
    ("caption_bank", _caption_bank),
    ("end_to_end_fp32", _end_to_end_fp32),
    ("precision_{precision}", _precision),
    ("end_to_end_variant", _end_to_end_variant),
    ("shared_weights", _share_weights),
    ("assets", _assets),
    ("reload", _reload),
)


def _manifest(run: ExportRun) -> Manifest:
    """manifest.json of the finished folder: what the runtime reads, and the export's evidence."""
    graphs = {
        g.name: GraphSpec(
            **g.manifest(), precision=run.graph_precision[g.name], external_data=run.external_data.get(g.name)
        )
        for g in run.graphs
    }
    record = {**_record(run), **run.assets, "timings_s": run.timings}
    tokenizer = TokenizerSpec(max_length=run.sizes[1])
    return runtime_manifest(
        run.work, run.model, graphs, run.options.precision, run.caption_bank, tokenizer, record,
        classes=run.options.classes,
    )  # fmt: skip


def _variant_problem(figures: dict, fp32: dict, options: ExportOptions) -> str | None:
    """Why reduced-precision end-to-end figures are not good enough, or None."""
    if options.precision == "int8" and "accuracy" in figures:
        drop = 100 * (fp32["accuracy"] - figures["accuracy"])
        if drop > options.int8_max_drop:
            return (
                f"accuracy {figures['accuracy']:.4f} vs fp32 {fp32['accuracy']:.4f} "
                f"({-drop:+.2f} points; limit -{options.int8_max_drop:g})"
            )
    if figures["label_agreement"] < options.min_agreement:
        return f"end-to-end label agreement with PyTorch {figures['label_agreement']:.4f} < {options.min_agreement:g}"
    return None


def _export_bank(bank, src: Path, dst: Path, kc, options: ExportOptions) -> CaptionBankSpec:
    dst.mkdir()
    shutil.copy2(src / "embeddings.safetensors", dst / "embeddings.safetensors")
    spec = CaptionBankSpec(
        captions="caption_bank/captions.jsonl",
        embeddings="caption_bank/embeddings.safetensors",
        size=len(bank),
        separator=CAPTION_SEPARATOR,
    )
    if kc.retrieval_top_k != 1:
        shutil.copy2(src / "captions.jsonl", dst / "captions.jsonl")  # joined captions get parsed at run time
        return spec
    from kcdp_core.portable.triplets import PARSER_VERSION, TripletParser
    from kcdp_runtime.parsed_captions import ParsedCaptions

    # A persistent memo of parsed bank captions: parsing a bank costs minutes (spaCy over the mini
    # foundation's 4,778 captions: 95 s on one core), and every export of the same bank (each kcdp-adapt
    # run, each export of one foundation's models) would repeat it. A file of its own beside the runtime's
    # memo, which every Pipeline reads at start: these captions are not the runtime's to load.
    memo = ParsedCaptions(f"bank-{PARSER_VERSION}-{kc.parser_model}")
    known = len(memo.entries)
    parsed = memo.triplets(bank.captions, lambda texts: TripletParser(kc.parser_model).parse_many(texts))
    with (dst / "captions.jsonl").open("w", encoding="utf-8") as f:
        for caption, triplets in zip(bank.captions, parsed, strict=True):
            f.write(
                json.dumps({"caption": caption, "triplets": [list(t) for t in triplets]}, ensure_ascii=False)
                + "\n"
            )
    spec.triplets_parser = PARSER_VERSION
    _log(
        options,
        f"caption bank: {len(bank)} captions, triplets parsed with {PARSER_VERSION} "
        f"({len(memo.entries) - known} parsed now, the rest from {memo.path})",
    )
    return spec


def _spread(array: np.ndarray, n: int) -> np.ndarray:
    """n rows spread evenly over the array (images are sorted by class folder: every class is kept)."""
    if n <= 0 or len(array) <= n:
        return array
    return array[np.linspace(0, len(array) - 1, n).round().astype(int)]


def _same(a: list[str], b: list[str]) -> float:
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)])) if a else 1.0


def _move_graph(src: Path, dst: Path) -> None:
    """Move a graph (and its external data file) from the scratch fp32 folder into place."""
    dst.unlink(missing_ok=True)
    shutil.move(str(src), dst)
    data = src.with_name(src.name + ".data")
    if data.exists():
        shutil.move(str(data), dst.with_name(data.name))


def _real_feeds(
    graphs: list[GraphConfig], real, tokenizer_json: Path
) -> dict[str, list[dict[str, np.ndarray]]]:
    feeds: dict[str, list[dict[str, np.ndarray]]] = {g.name: [] for g in graphs}
    if real is None:
        return feeds
    ids, mask = encode(tokenizer_json, real.texts)
    feeds["text_encoder"] = list(validate.batched({"input_ids": ids, "attention_mask": mask}, 32))
    feeds["image_encoder"] = list(validate.batched({"pixels": real.pixels}, 16))
    if real.face is not None:
        feeds["face_encoder"] = list(validate.batched({"face": real.face}, 16))
    feeds["perception"] = list(validate.batched(real.perception_feeds(), 16))
    for graph in (g for g in graphs if g.name in ("latents", "kadap")):
        # a split perception: each graph starts from what the one before it computes
        feeds[graph.name] = feeds["perception"]
        feeds["perception"] = [f | graph.run_torch(f) for f in feeds["perception"]]
    # each graph's own inputs only (the int8 calibration reader feeds everything it is given)
    return {g.name: [{n: f[n] for n in g.input_names} for f in feeds[g.name]] for g in graphs}


def _measure_variant(graph: GraphConfig, path: Path, options: ExportOptions, real: list) -> dict:
    try:
        sess = validate.session(path)
        result = validate.measure(
            graph, sess, validate.random_feeds(graph, options.seed + 1), real, options.precision
        )
    except Exception as exc:  # noqa: BLE001 - e.g. fp16 kernels missing on this CPU build
        if options.precision == "fp16":
            return {
                "measured": False,
                "reason": f"onnxruntime on this machine cannot run the fp16 graph: {exc}"[:300],
            }
        raise
    _log(options, result.summary())
    validate.enforce(result, graph.label_output, options.min_agreement)
    return result.manifest()


def _can_run(work: Path, graphs: list[GraphConfig]) -> bool:
    try:
        for g in graphs:
            validate.session(work / g.file)
        return True
    except Exception:  # noqa: BLE001
        return False


def _optimize(graph: GraphConfig, path: Path, options: ExportOptions, real: list) -> dict | None:
    """onnxruntime's transformer optimizer on the fp32 text encoder, kept only when the optimised
    graph holds fp32 parity with PyTorch (checked here and again by the caller)."""
    from kcdp_export.optimize import optimize_transformer

    backup = path.with_name(path.name + ".unoptimised")
    shutil.copy2(path, backup)
    try:
        fused = optimize_transformer(path, **graph.meta["transformer"])
        if fused:
            result = validate.measure(
                graph, validate.session(path), validate.random_feeds(graph, options.seed + 1), real
            )
            validate.enforce(result, graph.label_output)
            _log(options, f"{graph.name}: onnxruntime transformer optimizer fused {fused}")
        return fused
    except Exception as exc:  # noqa: BLE001 - an optional speed-up: the unoptimised graph is valid
        _log(options, f"{graph.name}: transformer optimizer not used ({str(exc)[:200]})")
        shutil.copy2(backup, path)
        return None
    finally:
        backup.unlink(missing_ok=True)


def _bank_k(manifest: Manifest, text_session: Any, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """k [N, 2L, D] and mask [N, 2L] of every bank caption, with the runtime's tokenizer stage over
    the fp32 text encoder graph (held to parity with PyTorch above) and the bank's parsed triplets."""
    from kcdp_core.portable.assemble import assemble_batch, knowledge_texts
    from kcdp_core.portable.caption_bank import CaptionBank
    from kcdp_runtime.pipeline import TextEncoderStage

    assert manifest.caption_bank is not None
    rule = manifest.knowledge.rule
    bank = CaptionBank.load(manifest.path(manifest.caption_bank.captions).parent)
    stage = TextEncoderStage.load(manifest, text_session)
    ks, masks = [], []
    for start in range(0, len(bank), chunk):
        captions, triplets = rule.apply(
            bank.captions[start : start + chunk], bank.triplets[start : start + chunk]
        )
        states, mask = stage.encode(knowledge_texts(captions, triplets))
        k, m = assemble_batch(states, mask, [len(ts) for ts in triplets])
        ks.append(k)
        masks.append(m)
    return np.concatenate(ks), np.concatenate(masks)


def _knowledge_spec(
    shipped: BankKnowledge, exact: tuple[np.ndarray, np.ndarray], drop_text: bool
) -> BankKnowledgeSpec:
    k, mask = exact
    stored, _ = shipped.get(range(len(shipped)))
    return BankKnowledgeSpec(
        file=BANK_KNOWLEDGE_FILE,
        dtype=shipped.dtype,
        rows=len(shipped),
        tokens=int(len(shipped.values)),
        computed_with="the fp32 text encoder graph (parity-checked against PyTorch) and the bank triplets",
        max_abs_diff=float(np.abs(stored - k * mask[..., None]).max()),
        text_encoder_shipped=not drop_text,
    )


def _run_runtime(
    manifest: Manifest, sessions: dict[str, Any], real, bank_knowledge: BankKnowledge | None
) -> tuple[np.ndarray, list[str]]:
    """The runtime's Pipeline on the real image files: label indices and captions. Without a
    caption bank, the captions computed with PyTorch are handed in (the captioner is not rerun)."""
    from kcdp_runtime.captioner import GivenCaptioner
    from kcdp_runtime.pipeline import Pipeline

    retrieval = manifest.caption_bank is not None
    pipe = Pipeline.from_sessions(
        manifest,
        sessions,
        knowledge_cache_size=0,
        parse_cache=False,
        bank_knowledge=bank_knowledge,
        captioner=None if retrieval else GivenCaptioner(),
    )
    results = pipe.run(
        [str(p) for p in real.paths], batch_size=16, captions=None if retrieval else real.captions
    )
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise ExportError(f"the runtime pipeline could not run the real images: {failed[:3]}")
    index = {label: i for i, label in enumerate(pipe.labels)}
    return np.array([index[r["label"]] for r in results]), [r["caption"] for r in results]


def _agreement(labels: np.ndarray, reference: np.ndarray, truth: np.ndarray | None) -> dict:
    figures = {"label_agreement": float(np.mean(labels == reference)), "n": int(len(labels))}
    if truth is not None:
        figures["accuracy"] = float(np.mean(labels == truth))
        figures["pytorch_accuracy"] = float(np.mean(reference == truth))
    return figures


def _int8_change(int8: dict, fp32: dict, n: int) -> dict:
    labelled = "accuracy" in int8
    return {
        "fp32_accuracy": fp32.get("accuracy"),
        "int8_accuracy": int8.get("accuracy"),
        "change_points": round(100 * (int8["accuracy"] - fp32["accuracy"]), 4) if labelled else None,
        "label_agreement_with_fp32": int8["label_agreement"],
        "n_images": n,
        "measured_on": "calibration images, end-to-end pipeline"
        + ("" if labelled else " (unlabelled: agreement only)"),
    }


def _tensorrt(work: Path, graphs, options: ExportOptions, real_feeds) -> dict:
    from dataclasses import asdict

    from kcdp_export.tensorrt import TensorRTUnavailable, build_engines

    check = {g.name: validate.random_feeds(g, options.seed + 1) + real_feeds[g.name] for g in graphs}
    try:
        reports = build_engines(work, graphs, options.precision, check, options.max_batch)
    except TensorRTUnavailable as exc:
        _log(options, f"{exc}; the ONNX export is complete without them")
        return {"built": False, "reason": str(exc)}
    return {"built": True, "engines": [asdict(r) for r in reports]}


def _record(run: ExportRun) -> dict[str, Any]:
    """The manifest's evidence and provenance: what was checked, against what, from which checkpoint."""
    model, options, real = run.model, run.options, run.real
    config = model.config
    assert run.merge is not None
    return {
        "prompts": {
            "template": config.cliea.prompt_template,
            "per_label": [config.cliea.prompt_template.format(label) for label in model.labels],
            "used_by": "CLIEA pseudo-labels at training time; not needed for inference",
        },
        "opset": options.opset,
        "parity": {name: _flat_parity(p, options.precision) for name, p in run.parity.items()},
        "end_to_end": run.end_to_end,
        "int8_accuracy_change": run.int8_change,
        "shared_weights": run.shared_weights,
        "lora_merge": run.merge.manifest(),
        "checkpoint": {
            "path": recorded_path(run.ckpt_dir),
            "selected": run.selected,
            "finetune": config.perception.finetune,
        },
        "calibration": None
        if real is None
        else {
            "folder": recorded_path(options.calibration),
            "images": len(real),
            "labelled": real.labels is not None,
            "skipped": real.skipped,
        },
        "config": config.to_dict(),
    }


def _flat_parity(per_precision: dict, precision: str) -> dict:
    """parity[graph] = the figures of the shipped precision, with the fp32 figures alongside."""
    shipped = dict(per_precision.get(precision, per_precision["fp32"]))
    if precision != "fp32":
        shipped["fp32"] = per_precision["fp32"]
    for key, value in per_precision.items():
        if key.endswith("_rejected"):
            shipped[key] = value  # a reduced-precision graph that was refused (this graph ships fp32)
    return shipped
