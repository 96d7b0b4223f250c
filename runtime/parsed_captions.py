"""A persistent memo of parsed captions: caption text -> triplets, one JSONL file per parser version.

spaCy's import and model load cost 1-4 s (far more on a loaded machine), the largest part of a
cold start. A retrieval captioner only ever returns bank captions, so once a caption has been
parsed, later processes read its triplets from this file and never load spaCy. (An export whose
bank already carries triplets from the same parser version, caption_bank.triplets_parser in the
manifest, needs no parsing at all.) Lines are appended with one write each, so concurrent
processes at worst parse a caption twice.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from kcdp_core.portable.constants import cache_root

Triplet = tuple[str, str, str]


class ParsedCaptions:
    def __init__(self, parser_id: str, folder: Path | None = None):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", parser_id)
        self.path = (folder or cache_root() / "parsed_captions") / f"{safe}.jsonl"
        self.entries: dict[str, list[Triplet]] = {}
        self._load()

    def _load(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return
        for line in lines:
            try:
                row = json.loads(line)
                self.entries[str(row["caption"])] = [tuple(t) for t in row["triplets"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from a killed process: skip it

    def triplets(
        self, texts: Sequence[str], parse: Callable[[list[str]], Sequence[Sequence[Sequence[str]]]]
    ) -> list[list[Triplet]]:
        """Each text's triplets: from the memo, else `parse` (called once, on the unknown texts only,
        so a parser that is loaded on first use is never loaded when all are known), then remembered."""
        unknown = [t for t in dict.fromkeys(texts) if t not in self.entries]
        if unknown:
            parsed = parse(unknown)
            self._append({t: [tuple(x) for x in p] for t, p in zip(unknown, parsed, strict=True)})
        return [self.entries[t] for t in texts]

    def _append(self, fresh: dict[str, list[Triplet]]) -> None:
        """Remember texts not known yet, in memory and as lines of the file."""
        self.entries.update(fresh)
        data = "".join(
            json.dumps({"caption": t, "triplets": [list(x) for x in v]}) + "\n" for t, v in fresh.items()
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError:
            pass  # a read-only home: the memo only saves time
