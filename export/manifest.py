"""manifest.json of an export folder (notes/MANIFEST.md): what the torch-free runtime needs to run the
graphs, and the evidence (parity figures, file hashes) that they are the trained model."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FORMAT = "kcdp-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def write_manifest(folder: Path, body: dict[str, Any]) -> Path:
    """Complete body with the format header and file hashes, and write folder/manifest.json."""
    folder = Path(folder)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": package_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **body,
    }
    manifest["files"] = file_hashes(folder)
    path = folder / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def verify_files(folder: Path) -> list[str]:
    """Files whose sha256 differs from the manifest (or that are missing); [] when all match."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    bad = []
    for rel, digest in manifest["files"].items():
        p = folder / rel
        if not p.is_file() or sha256(p) != digest:
            bad.append(rel)
    return bad
