"""The export folder's manifest.json (written by kcdp_export, read here): validation and file checks.

The runtime trusts nothing but the manifest: every file it loads is listed there with its sha256,
so a half-copied or edited export fails at load time with a message naming the file, instead of
producing wrong labels later. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

FORMAT = "kcdp-export"
FORMAT_VERSION = 1
GRAPHS = ("text_encoder", "image_encoder", "perception")


class ModelError(ValueError):
    """A model folder that the runtime cannot use; the message says why and what to do."""


@dataclass
class Manifest:
    folder: Path
    data: dict[str, Any]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.data["labels"])

    @property
    def preset(self) -> str:
        return str(self.data.get("preset", "?"))

    @property
    def precision(self) -> str:
        return str(self.data.get("precision", "fp32"))

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.data.get("preprocessing", {}))

    @property
    def knowledge(self) -> dict[str, Any]:
        return dict(self.data.get("knowledge", {}))

    @property
    def tokenizer(self) -> dict[str, Any]:
        return dict(self.data["tokenizer"])

    @property
    def caption_bank(self) -> dict[str, Any] | None:
        return self.data.get("caption_bank")

    def graph(self, name: str) -> dict[str, Any] | None:
        return self.data.get("graphs", {}).get(name)

    def path(self, relative: str) -> Path:
        return self.folder / relative


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / "manifest.json").is_file()


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
    path = folder / "manifest.json"
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
    # The text encoder may be left out when the caption bank's knowledge is precomputed (bank_knowledge).
    precomputed = bool((data.get("caption_bank") or {}).get("knowledge"))
    for name in ("perception",) if precomputed else ("text_encoder", "perception"):
        if name not in data["graphs"]:
            raise ModelError(f"{path}: graphs.{name} is missing")
    manifest = Manifest(folder, data)
    if verify != "none":
        verify_files(manifest, hashes=verify == "sha256")
    return manifest


def verify_files(manifest: Manifest, hashes: bool = True) -> None:
    """Every file the manifest names exists (and matches its sha256); graph files must be listed."""
    files: dict[str, str] = manifest.data.get("files", {})
    needed = {g["file"] for g in manifest.data["graphs"].values() if g}
    needed.add(manifest.tokenizer["file"])
    for relative in sorted(needed | set(files)):
        path = manifest.path(relative)
        if not path.is_file():
            raise ModelError(f"{manifest.folder}: {relative} is missing (incomplete export?)")
        if hashes and relative in files and sha256(path) != files[relative]:
            raise ModelError(
                f"{manifest.folder}: {relative} does not match its sha256 in manifest.json (corrupt or edited)"
            )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
