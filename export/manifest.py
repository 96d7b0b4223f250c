"""Filling and writing an export's manifest.json; the schema itself is kcdp_runtime.manifest, which
the runtime reads. `runtime_manifest` fills what the runtime needs from a checkpoint's model: the
exporter's manifest and the checkpoint opener's (`kcdp-infer --model CKPT`) come from it alike."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kcdp_core.portable.constants import CAPTION_SEPARATOR
from kcdp_core.portable.images import FACE_BOX, RESIZE_FILTER
from kcdp_runtime.manifest import (
    MANIFEST,
    CaptionBankSpec,
    GraphSpec,
    KnowledgeSpec,
    Manifest,
    ParserSpec,
    Preprocessing,
    TokenizerSpec,
    sha256,
)


def runtime_manifest(
    folder: Path,
    model: Any,
    graphs: dict[str, GraphSpec],
    precision: str = "fp32",
    caption_bank: CaptionBankSpec | None = None,
    tokenizer: TokenizerSpec | None = None,
    record: dict[str, Any] | None = None,
    classes: tuple[str, ...] | None = None,
) -> Manifest:
    """The manifest of `model` (a KCDPModel) run from `folder`: labels, preprocessing and knowledge
    from its config; graphs, bank, tokenizer, the labels answered and the export's record as given."""
    from kcdp_core.portable.triplets import PARSER_VERSION

    config = model.config
    kc = config.knowledge
    # Free-text captions (InstructBLIP, CSV, joined top-k retrievals) are parsed at run time: the
    # runtime then needs spaCy (kcdp[parser]); a top-1 bank carries every caption's triplets.
    bank_parsed = caption_bank is not None and caption_bank.triplets_parser is not None
    knowledge = KnowledgeSpec(
        captioner=kc.captioner,
        text_length=int(kc.text_length),
        max_triplets=int(kc.max_triplets),
        retrieval_top_k=int(kc.retrieval_top_k),
        parser=ParserSpec(kc.parser_model, PARSER_VERSION, bool(kc.use_triplets and not bank_parsed)),
        use_caption=bool(kc.use_caption),
        use_triplets=bool(kc.use_triplets),
        retrieval_separator=CAPTION_SEPARATOR if kc.captioner == "retrieval" else None,
        instructblip=instructblip_spec(kc) if kc.captioner == "instructblip" else None,
    )
    return Manifest(
        folder=Path(folder),
        labels=tuple(model.labels),
        graphs=graphs,
        knowledge=knowledge,
        preprocessing=Preprocessing(
            image_size=int(config.foundation.image_size),
            resize_filter=RESIZE_FILTER,
            face_view=int(config.perception.face_view) or None,
            face_box=FACE_BOX if config.perception.face_view else None,
        ),
        tokenizer=tokenizer,
        caption_bank=caption_bank,
        preset=config.preset,
        precision=precision,
        classes=classes,
        record=dict(record or {}),
    )


def instructblip_spec(kc: Any) -> dict[str, Any]:
    """The manifest's `knowledge.instructblip`: what the runtime's InstructBLIP stage loads and runs."""
    src = kc.captioner_source
    return {
        "source": None if src is None else {"path": src.path, "subfolder": src.subfolder},
        "stage": "transformers",
        "why": "optimum's ONNX exporter (optimum-onnx) has no InstructBLIP config; it runs as a transformers stage",
        "prompt": kc.prompt,
        "generation": {
            "num_beams": kc.num_beams,
            "repetition_penalty": kc.repetition_penalty,
            "min_new_tokens": kc.min_new_tokens,
            "max_new_tokens": kc.max_new_tokens,
            "do_sample": False,
        },
    }


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (relative POSIX paths), the manifest itself excepted."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and p.name != MANIFEST
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("kcdp")
    except Exception:  # noqa: BLE001 - not installed as a distribution: fall back to the config's
        from kcdp_core.config import KCDPConfig

        return KCDPConfig.__dataclass_fields__["version"].default


def write_manifest(manifest: Manifest) -> Path:
    """Stamp the package version, date and every file's sha256, and write manifest.json atomically."""
    manifest.package_version = package_version()
    manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest.files = file_hashes(manifest.folder)
    path = manifest.folder / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    tmp.replace(path)
    return path
