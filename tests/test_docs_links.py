"""The repository's documents point only at what is in the repository.

Every relative link in a markdown file must name an existing file (and, with a #fragment into a markdown
file, one of its headings); no file may cite the design notes that lived outside the repository; the
documents name folders relative to the repository or as $DATA / $RUNS, never a path of one machine.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "build", "dist", "runs", "data", "node_modules", "__pycache__"}
TEXT_SUFFIXES = {".md", ".py", ".toml", ".cfg", ".txt", ".yml", ".yaml", ".ini"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# Files that lived outside the repository; spelled in two parts so that this test does not cite them.
OUTSIDE = ("DESIGN" + ".md", "notes/" + "MANIFEST", "MODEL_" + "API.md")
MACHINE_PATH = re.compile(r"(?<![\w.$])/(work|tmp|root|home)/")


def _files(suffixes: set[str]) -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(p in SKIP_DIRS or p.endswith(".egg-info") or (p.startswith(".") and p != ".ci") for p in parts[:-1]):
            continue
        if path.is_file() and path.suffix in suffixes:
            found.append(path)
    return sorted(found)


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(0)[1:-1], heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", markdown).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_github() -> None:
    assert slug("Drawn faces: leave one avatar style out") == "drawn-faces-leave-one-avatar-style-out"
    assert slug("The `mini` foundation") == "the-mini-foundation"
    assert slug("sd15 and the pretraining recipe on one GPU (NVIDIA H200), 2026-11-30") == (
        "sd15-and-the-pretraining-recipe-on-one-gpu-nvidia-h200-2026-11-30"
    )
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


@pytest.mark.parametrize("doc", _files({".md"}), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, fragment = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_no_file_cites_notes_outside_the_repository() -> None:
    citing = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _files(TEXT_SUFFIXES)
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if any(name in line for name in OUTSIDE)
    ]
    assert not citing, "cites a file that is not in the repository: " + ", ".join(citing)


def test_documents_name_no_machine_paths() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()[:80]}"
        for path in _files({".md"})
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not found, "machine paths in documents: " + "; ".join(found)
