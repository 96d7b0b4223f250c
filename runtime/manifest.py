"""manifest.json of an export folder: its typed schema (written by kcdp_export, read here) and the checks.

One schema for every writer and reader. `Manifest` holds what the runtime reads, typed (labels,
preprocessing, knowledge, tokenizer, caption bank, graphs, file hashes); the evidence an export
records beside it (parity, end-to-end figures, LoRA merge, calibration, the training config,
timings) is kept as `record`, written and read back unchanged. kcdp-export fills it from the
checkpoint (kcdp_export.manifest.runtime_manifest), the checkpoint opener fills the same fields for
`kcdp-infer --model CKPT`, and the runtime reads nothing else.

Older exports of the same format version may lack keys that later ones write: the defaults here are
what those exports were run with (a missing `use_caption` is True, and so on), so they load unchanged.

The runtime trusts nothing but the manifest: every file it loads is listed there with its sha256,
so a half-copied or edited export fails at load time with a message naming the file, instead of
producing wrong labels later. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from kcdp_core.portable.assemble import KnowledgeRule
from kcdp_core.portable.constants import CAPTION_SEPARATOR
from kcdp_core.portable.labels import answered

FORMAT = "kcdp-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The export that ships inside the package: what kcdp-infer, kcdp-serve and Pipeline.from_pretrained()
# load when no model is named.
DEFAULT_MODEL = Path(__file__).parent / "default_model"


class ModelError(ValueError):
    """A model folder that the runtime cannot use; the message says why and what to do."""


# -- the schema ------------------------------------------------------------------------------------
@dataclass
class Preprocessing:
    """kcdp_core.portable.images.preprocess with these settings gives every graph's `pixels`."""

    image_size: int = 64
    resize_filter: str = "bicubic"
    # A model with a face view (perception.face_view) also takes `face`: preprocess with box=face_box
    # at face_view x face_view; absent (None): no face view.
    face_view: int | None = None
    face_box: tuple[float, float, float, float] | None = None
    # What preprocess does, written down for a reader of the folder (the runtime calls preprocess).
    pixel_range: tuple[int, int] = (0, 1)
    layout: str = "NCHW"
    pad_to_square: str = "white"
    alpha: str = "composite on white"
    normalisation: str = "inside each graph"


@dataclass
class ParserSpec:
    model: str = "en_core_web_sm"  # the spaCy model of kcdp_core.portable.triplets.TripletParser
    version: str | None = None  # PARSER_VERSION that training used (keys the parsed-caption memo)
    # Whether captions need spaCy at run time; None (older exports): decided from the bank.
    required: bool | None = None


@dataclass
class KnowledgeSpec:
    """How k is made: the captioner, the text length of each half of k, the knowledge rule."""

    captioner: str = "retrieval"  # retrieval | instructblip | csv
    text_length: int | None = None
    max_triplets: int = 8
    retrieval_top_k: int = 1
    parser: ParserSpec = field(default_factory=ParserSpec)
    use_caption: bool = True
    use_triplets: bool = True
    triplet_text: str = "subject verb object joined by spaces"
    knowledge_layout: str = "k = concat(T(caption), sum_i T(triplet_i)) via kcdp_core.portable.assemble"
    retrieval_separator: str | None = None  # retrieval only; None reads as CAPTION_SEPARATOR
    instructblip: dict[str, Any] | None = None  # what the InstructBLIP stage loads (captioner_source, generation)

    @property
    def rule(self) -> KnowledgeRule:
        return KnowledgeRule.of(self)

    @property
    def separator(self) -> str:
        return self.retrieval_separator if self.retrieval_separator is not None else CAPTION_SEPARATOR


@dataclass
class TokenizerSpec:
    folder: str = "tokenizer"
    file: str = "tokenizer/tokenizer.json"
    max_length: int | None = None  # None: knowledge.text_length


@dataclass
class BankKnowledgeSpec:
    """caption_bank/knowledge.safetensors: every bank caption's k, precomputed (kcdp_runtime.bank_knowledge)."""

    file: str
    dtype: str | None = None
    rows: int | None = None
    tokens: int | None = None
    computed_with: str | None = None
    max_abs_diff: float | None = None
    text_encoder_shipped: bool | None = None


@dataclass
class CaptionBankSpec:
    captions: str  # captions.jsonl, one {"caption", "triplets"?} per line
    embeddings: str
    size: int | None = None
    separator: str | None = None
    triplets_parser: str | None = None  # the parser version that wrote the bank's triplets, if it did
    knowledge: BankKnowledgeSpec | None = None


@dataclass
class GraphSpec:
    file: str | None  # None: not a file (the checkpoint opener's PyTorch sessions)
    inputs: dict[str, list[Any]] = field(default_factory=dict)  # name -> [dims..., dtype]
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    precision: str | None = None  # fp32 | fp16 | int8 | int8-weights | fp16-weights
    engine: str | None = None  # "pytorch-eager" for the checkpoint opener's sessions
    # The external-data file holding the graph's weights, shared with other graphs (kcdp_export.
    # shared_weights); onnxruntime reads it from the graph's folder. None: weights inside the file.
    external_data: str | None = None

    def batch_axes(self) -> list[str]:
        """Names of the symbolic batch axes of the inputs (what a batch-1 session fixes to 1)."""
        return sorted({dims[0] for dims in self.inputs.values() if dims and isinstance(dims[0], str)})


@dataclass
class Manifest:
    """An export folder's manifest.json, typed; `folder` is where its relative paths point."""

    folder: Path
    labels: tuple[str, ...]
    graphs: dict[str, GraphSpec]
    knowledge: KnowledgeSpec
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    tokenizer: TokenizerSpec | None = None  # None only for the checkpoint opener (transformers tokenizer)
    caption_bank: CaptionBankSpec | None = None
    preset: str = "?"
    precision: str = "fp32"
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    package_version: str | None = None
    created: str | None = None
    # The labels this export answers (`--classes` of kcdp-export / kcdp-adapt: the expressions a sticker
    # set can show); the others score 0 and the probabilities are renormalised. None: every label.
    classes: tuple[str, ...] | None = None
    # The export's evidence and provenance (prompts, opset, parity, end_to_end, int8_accuracy_change,
    # lora_merge, checkpoint, calibration, config, timings_s, triton, tensorrt), kept as written.
    record: dict[str, Any] = field(default_factory=dict)

    def graph(self, name: str) -> GraphSpec | None:
        return self.graphs.get(name)

    def path(self, relative: str) -> Path:
        return self.folder / relative

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of manifest.json (the folder is where it is written, not part of it)."""
        out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        for name in ("package_version", "created", "preset", "labels", "classes", "precision",
                     "preprocessing", "knowledge", "tokenizer", "caption_bank", "graphs"):  # fmt: skip
            value = getattr(self, name)
            if value is not None or name == "caption_bank":
                out[name] = _plain(value)
        out.update(self.record)
        out["files"] = dict(self.files)
        return out

    @classmethod
    def from_dict(cls, folder: Path, data: dict[str, Any]) -> Manifest:
        """Raises ModelError naming the key when a section has the wrong shape."""
        where = folder / MANIFEST
        try:
            known = {f.name for f in fields(cls)} | {"format", "format_version"}
            know = dict(data.get("knowledge") or {})
            know["parser"] = _section(ParserSpec, know.get("parser") or {})
            bank = data.get("caption_bank")
            if bank is not None:
                bank = dict(bank)
                bank["knowledge"] = _section(BankKnowledgeSpec, bank.get("knowledge"))
            return cls(
                folder=Path(folder),
                labels=tuple(data["labels"]),
                classes=None if data.get("classes") is None else tuple(data["classes"]),
                graphs={name: _section(GraphSpec, g) for name, g in data["graphs"].items() if g},
                knowledge=_section(KnowledgeSpec, know),
                preprocessing=_section(Preprocessing, data.get("preprocessing") or {}),
                tokenizer=_section(TokenizerSpec, data.get("tokenizer")),
                caption_bank=_section(CaptionBankSpec, bank),
                preset=str(data.get("preset", "?")),
                precision=str(data.get("precision", "fp32")),
                files=dict(data.get("files") or {}),
                package_version=data.get("package_version"),
                created=data.get("created"),
                record={k: v for k, v in data.items() if k not in known},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{where}: malformed manifest ({exc})") from None


def _section(cls: type, data: dict[str, Any] | None) -> Any:
    """A schema section from its JSON object (None stays None); keys this runtime does not know are
    ignored, a missing required key is a TypeError naming it."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    section = cls(**{k: v for k, v in data.items() if k in names})
    if cls is Preprocessing:
        section.pixel_range = tuple(section.pixel_range)
        if section.face_box is not None:
            section.face_box = tuple(float(v) for v in section.face_box)
    return section


def _plain(value: Any) -> Any:
    """JSON-ready: dataclasses as objects without their unset (None) fields, tuples as lists."""
    if is_dataclass(value):
        return {f.name: _plain(v) for f in fields(value) if (v := getattr(value, f.name)) is not None}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- reading ---------------------------------------------------------------------------------------
def is_export(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def default_model() -> Path:
    """The embedded default model's export folder; ModelError where an installation lacks it."""
    if not is_export(DEFAULT_MODEL):
        raise ModelError(
            f"no default model in this installation ({DEFAULT_MODEL} has no {MANIFEST}); "
            "name an export folder (kcdp-infer --model EXPORT_FOLDER)"
        )
    return DEFAULT_MODEL


def is_checkpoint(folder: str | Path) -> bool:
    """A training checkpoint (config.json + weights, or its best/ subfolder) rather than an export."""
    folder = Path(folder)
    return not is_export(folder) and (
        (folder / "config.json").is_file() or (folder / "best" / "config.json").is_file()
    )


def load_manifest(folder: str | Path, verify: Literal["sha256", "presence", "none"] = "sha256") -> Manifest:
    """Read and check manifest.json; `verify` checks every listed file's presence and (default) hash."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelError(f"{folder}: no such model folder")
    if is_checkpoint(folder):
        raise ModelError(
            f"{folder} is a training checkpoint, not an export: the runtime runs ONNX graphs without torch. "
            f"Export it first: `kcdp-export --ckpt {folder} --out {folder}-export`, "
            f"then pass --model {folder}-export"
        )
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelError(f"{folder}: no manifest.json (not a kcdp export folder; make one with kcdp-export)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from None
    if data.get("format") != FORMAT:
        raise ModelError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(
            f"{path}: format_version {data['format_version']} is newer than this runtime reads "
            f"({FORMAT_VERSION}); upgrade kcdp"
        )
    for key in ("labels", "graphs", "tokenizer"):
        if key not in data:
            raise ModelError(f"{path}: missing required key {key!r}")
    manifest = Manifest.from_dict(folder, data)
    try:
        answered(manifest.labels, manifest.classes)
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    # The text encoder may be left out when the caption bank's knowledge is precomputed (bank_knowledge).
    precomputed = manifest.caption_bank is not None and manifest.caption_bank.knowledge is not None
    for name in ("perception",) if precomputed else ("text_encoder", "perception"):
        if name not in manifest.graphs:
            raise ModelError(f"{path}: graphs.{name} is missing")
    if manifest.preprocessing.face_view and "face_encoder" not in manifest.graphs:
        raise ModelError(
            f"{path}: the model reads a face view but graphs.face_encoder is missing "
            "(an export older than the face encoder graph: export the checkpoint again with kcdp-export)"
        )
    kadap = manifest.graphs.get("kadap")
    if kadap is not None and "latents" in kadap.inputs and "latents" not in manifest.graphs:
        raise ModelError(
            f"{path}: graphs.kadap reads latents but graphs.latents is missing (an incomplete manifest: "
            "export the checkpoint again with kcdp-export)"
        )
    if verify != "none":
        verify_files(manifest, hashes=verify == "sha256")
    return manifest


def verify_files(manifest: Manifest, hashes: bool = True) -> None:
    """Every file the manifest names exists (and matches its sha256); graph files must be listed."""
    needed = {g.file for g in manifest.graphs.values() if g.file}
    weights = {g.external_data for g in manifest.graphs.values() if g.external_data}
    if manifest.tokenizer is not None:
        needed.add(manifest.tokenizer.file)
    for relative in sorted(needed | weights | set(manifest.files)):
        path = manifest.path(relative)
        if not path.is_file():
            readers = [n for n, g in manifest.graphs.items() if g.external_data == relative]
            what = f" (the weights of graphs {', '.join(readers)})" if readers else ""
            raise ModelError(f"{manifest.folder}: {relative} is missing{what} (incomplete export?)")
        if hashes and relative in manifest.files and sha256(path) != manifest.files[relative]:
            raise ModelError(
                f"{manifest.folder}: {relative} does not match its sha256 in manifest.json (corrupt or edited)"
            )


def graph_digest(manifest: Manifest, name: str) -> str | None:
    """The sha256 that identifies graph `name` with its weights (keys the ORT-format cache): the
    graph file's, folded with its external-data file's when the weights live there; None when either
    is not listed in `files`."""
    spec = manifest.graphs[name]
    digest = manifest.files.get(spec.file) if spec.file else None
    if digest is None or not spec.external_data:
        return digest
    data = manifest.files.get(spec.external_data)
    return None if data is None else hashlib.sha256(f"{digest}:{data}".encode()).hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
