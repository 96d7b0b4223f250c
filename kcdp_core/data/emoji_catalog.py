"""Every emoji with its CLDR name, keywords, group and subgroup, and lookup by code point or name.

Built from emojibase-data (CLDR annotations: `label` is the CLDR short name, `tags` the CLDR
keywords) and emoji-datasource (Unicode names and short names, which old icon sets use as file
names). Code points are compared in a normal form: upper-case hex, variation selector FE0F dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from kcdp_core.data.tarball import read_file

# Unicode's group names (emojibase keeps them as lower-case keys).
GROUP_TITLES: dict[str, str] = {
    "smileys-emotion": "Smileys & Emotion",
    "people-body": "People & Body",
    "component": "Component",
    "animals-nature": "Animals & Nature",
    "food-drink": "Food & Drink",
    "travel-places": "Travel & Places",
    "activities": "Activities",
    "objects": "Objects",
    "symbols": "Symbols",
    "flags": "Flags",
}

# Names older icon sets use that neither current CLDR nor the Unicode name gives.
OLD_NAMES: dict[str, str] = {
    "smiling-cat-face-with-heart-eyes": "1F63B",
    "smiling-face-with-heart-eyes": "1F60D",
    "grinning-face-with-star-eyes": "1F929",
    "white-frowning-face": "2639",
    "face-with-symbols-over-mouth": "1F92C",
    "serious-face-with-symbols-covering-mouth": "1F92C",
    "shocked-face-with-exploding-head": "1F92F",
    "face-with-open-mouth-vomiting": "1F92E",
    "smiling-face-with-smiling-eyes-and-three-hearts": "1F970",
    "face-with-party-horn-and-party-hat": "1F973",
    "keycap-asterisk": "002A-20E3",
    "keycap-pound": "0023-20E3",
    "keycap-hashtag": "0023-20E3",
}

_SKIN_SUFFIXES = ("medium-light", "medium-dark", "light", "medium", "dark")


def norm_hex(code: str) -> str:
    """Normal form of a code point sequence: '263a-fe0f' -> '263A', '1f636_200d' -> '1F636-200D'."""
    parts = re.split(r"[-_ ]", code.strip().upper())
    return "-".join(p.lstrip("0").rjust(4, "0") for p in parts if p and p != "FE0F")


def is_hex_sequence(stem: str) -> bool:
    return bool(re.fullmatch(r"[0-9A-Fa-f]{2,6}([-_][0-9A-Fa-f]{2,6})*", stem))


def slug(text: str) -> str:
    """Icon-set style name: lower case, apostrophes dropped, other non-alphanumerics as '-'."""
    text = text.lower().replace("\u2019", "").replace("'", "")
    text = text.replace("\u00f1", "n").replace("\u00e9", "e").replace("\u00e7", "c").replace("\u00e5", "a")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


@dataclass(frozen=True)
class EmojiInfo:
    hexcode: str  # emojibase's form, fully qualified where it matters (e.g. 1F636-200D-1F32B-FE0F)
    name: str  # CLDR short name
    keywords: tuple[str, ...]  # CLDR keywords
    group: str
    subgroup: str

    @property
    def key(self) -> str:
        return norm_hex(self.hexcode)

    @property
    def caption(self) -> str:
        return f"{self.name}: {', '.join(self.keywords)}" if self.keywords else self.name


class EmojiCatalog:
    """Lookup of emojis by normalised code point and by the names icon sets give them."""

    def __init__(self, entries: list[EmojiInfo], extra_names: dict[str, str] | None = None) -> None:
        self.by_key: dict[str, EmojiInfo] = {}
        for e in entries:
            self.by_key.setdefault(e.key, e)
        self.names: dict[str, str] = {}
        for e in entries:
            self.names.setdefault(slug(e.name), e.key)
        for name, code in (extra_names or {}).items():
            if norm_hex(code) in self.by_key:
                self.names.setdefault(slug(name), norm_hex(code))
        for name, code in OLD_NAMES.items():
            if norm_hex(code) in self.by_key:
                self.names.setdefault(name, norm_hex(code))

    def __len__(self) -> int:
        return len(self.by_key)

    def get(self, code: str) -> EmojiInfo | None:
        return self.by_key.get(norm_hex(code))

    def lookup_name(self, name: str) -> str | None:
        """Normalised code point of an icon name, or None."""
        s = slug(name)
        if s in self.names:
            return self.names[s]
        if s.startswith("flag-for-flag-"):
            s = "flag-" + s[len("flag-for-flag-") :]
        elif s.startswith("flag-for-"):
            s = "flag-" + s[len("flag-for-") :]
        if s in self.names:
            return self.names[s]
        # Fluent names skin tones "<name>-dark"; CLDR says "<name>: dark skin tone".
        for suffix in _SKIN_SUFFIXES:
            if s.endswith("-" + suffix):
                hit = self.names.get(f"{s}-skin-tone")
                if hit:
                    return hit
        return None


def _emojibase_entries(data: list[dict], messages: dict) -> list[EmojiInfo]:
    groups = {g["order"]: g["key"] for g in messages.get("groups", [])}
    subgroups = {g["order"]: g["key"] for g in messages.get("subgroups", [])}
    out: list[EmojiInfo] = []
    for e in data:
        gkey = groups.get(e.get("group", -1), "")
        group = GROUP_TITLES.get(gkey, gkey)
        subgroup = subgroups.get(e.get("subgroup", -1), "")
        tags = tuple(e.get("tags") or ())
        out.append(EmojiInfo(e["hexcode"], e["label"], tags, group, subgroup))
        for s in e.get("skins") or ():
            out.append(EmojiInfo(s["hexcode"], s["label"], tuple(s.get("tags") or tags), group, subgroup))
    return out


def load_catalog(emojibase_tgz: Path, datasource_tgz: Path | None = None) -> EmojiCatalog:
    """The catalog from the emojibase-data tarball (+ emoji-datasource's names, if given)."""
    data = json.loads(read_file(emojibase_tgz, "package/en/data.json"))
    messages = json.loads(read_file(emojibase_tgz, "package/en/messages.json"))
    entries = _emojibase_entries(data, messages)
    extra: dict[str, str] = {}
    if datasource_tgz is not None:
        for d in json.loads(read_file(datasource_tgz, "package/emoji.json")):
            for n in [d.get("name") or "", *(d.get("short_names") or ())]:
                if n:
                    extra.setdefault(n, d["unified"])
    return EmojiCatalog(entries, extra)
