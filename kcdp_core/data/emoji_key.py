"""The emoji benchmark's label key: 44 face emojis in 7 classes.

The key is the project's own data file (emoji_label_key.csv beside this module), labelled from
Unicode/CLDR names with a rationale per row. emoji_excluded.csv beside it lists the ambiguous faces
left out, each with its reason: a record for readers (a test keeps it disjoint from the key).
Torch-free.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from kcdp_core.data.emoji_catalog import norm_hex
from kcdp_core.portable.labels import EMOJI7, MIKELS8

_HERE = Path(__file__).resolve().parent
LABEL_KEY_CSV = _HERE / "emoji_label_key.csv"


@dataclass(frozen=True)
class KeyEmoji:
    unified: str  # as in the key, e.g. "263A-FE0F"; image files are named by it
    short_name: str
    unicode_name: str
    label: str  # one of EMOJI7
    label8: str | None  # Mikels' class where one is decidable
    rationale: str

    @property
    def key(self) -> str:
        return norm_hex(self.unified)


def load_label_key(path: str | Path | None = None) -> list[KeyEmoji]:
    """The benchmark emojis in file order; ValueError naming the file and row for a bad row."""
    path = Path(path) if path is not None else LABEL_KEY_CSV
    out: list[KeyEmoji] = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            label = (row.get("label7") or "").strip()
            label8 = (row.get("label8_or_empty") or "").strip() or None
            if label not in EMOJI7:
                raise ValueError(f"{path}:{i}: label7 {label!r} is not one of {EMOJI7}")
            if label8 is not None and label8 not in MIKELS8:
                raise ValueError(f"{path}:{i}: label8 {label8!r} is not one of {MIKELS8}")
            out.append(
                KeyEmoji(
                    row["unified"].strip(),
                    row["short_name"].strip(),
                    row["unicode_name"].strip(),
                    label,
                    label8,
                    row.get("rationale", "").strip(),
                )
            )
    if len({e.key for e in out}) != len(out):
        raise ValueError(f"{path}: an emoji is listed twice")
    return out
