"""The knowledge cache: caption and triplets per image, computed once, resumable after a crash.

Append-only JSON-lines files, one entry per line:
    {"key", "image", "caption", "triplets", "image_sha256", "captioner", "parser"}
keyed by (sha256 of the image bytes, captioner id, parser version): a re-encoded or edited image,
another captioner or new parser rules get new entries, a renamed or copied file reuses its entry.
A single process writes `<folder>/knowledge.jsonl`; under `accelerate launch` each process writes
its own `<folder>/knowledge.<shard>.jsonl` (`shard=`), and every reader reads all of them together.

Crash safety: each batch is appended under an exclusive file lock and flushed + fsynced before the
next starts, so a kill loses at most the batch in flight. A line torn by the kill (no trailing newline
or not valid JSON) is ignored when reading and cut off before the next append; its image is redone.
Torch-free (the captioner brings its own dependencies).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kcdp_core.portable.images import ImageError, load_image

FILENAME = "knowledge.jsonl"
PATTERN = "knowledge*.jsonl"  # FILENAME and the per-process shard files


def shard_filename(shard: str | None) -> str:
    return FILENAME if shard is None else f"knowledge.{shard}.jsonl"


class _Captioner(Protocol):
    id: str

    def __call__(self, images: Sequence[Any], paths: Sequence[Any] | None = None) -> list[str]: ...


class _Parser(Protocol):
    @property
    def version(self) -> str: ...

    def parse_many(self, texts: Sequence[str]) -> list[list[tuple[str, str, str]]]: ...


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def entry_key(image_sha256: str, captioner_id: str, parser_version: str) -> str:
    return hashlib.sha256(json.dumps([image_sha256, captioner_id, parser_version]).encode()).hexdigest()


def parser_version_of(parser: Any) -> str:
    """TripletParser.version, or PARSER_VERSION for a parser object without one."""
    version = getattr(parser, "version", None)
    if version is None:
        from kcdp_core.portable.triplets import PARSER_VERSION

        version = PARSER_VERSION
    return str(version)


@dataclass
class FillReport:
    added: int = 0
    skipped: int = 0  # already in the cache
    errors: list[tuple[str, str]] = field(default_factory=list)  # (image, message)

    @property
    def ok(self) -> bool:
        return not self.errors


class KnowledgeCache:
    """`get(image)` -> entry dict or None; `fill(paths, captioner, parser)` adds what is missing.

    `get` needs to know which captioner and parser the entry must come from: pass them, or give
    them to the constructor, or they are taken from the last `fill` call. Unknown -> None.
    """

    def __init__(
        self,
        folder: str | Path,
        captioner_id: str | None = None,
        parser_version: str | None = None,
        shard: str | None = None,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / shard_filename(shard)  # where this process appends
        self.captioner_id = captioner_id
        self.parser_version = parser_version
        self._entries: dict[str, dict[str, Any]] = {}
        self._offsets: dict[Path, int] = {}  # bytes of each file already read
        self._hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256
        self.reload()

    # -- reading ------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Read entries appended since the last read (by this or another process), from every file."""
        for path in sorted(self.folder.glob(PATTERN)):
            self._read(path)

    def _read(self, path: Path) -> None:
        offset = self._offsets.get(path, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a torn last line (no newline yet) is left for later
        for line in data[:end].splitlines():
            try:
                entry = json.loads(line)
                self._entries.setdefault(entry["key"], entry)  # first one wins: entries never change
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                # Glued to a torn line by an old crash: skip it, the image is redone if needed.
                continue
        self._offsets[path] = offset + end

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._entries.values())

    def image_sha256(self, path: str | Path) -> str:
        st = os.stat(path)
        sig = (str(path), st.st_size, st.st_mtime_ns)
        if sig not in self._hashes:
            self._hashes[sig] = file_sha256(path)
        return self._hashes[sig]

    def key_for(
        self, path: str | Path, captioner_id: str | None = None, parser_version: str | None = None
    ) -> str | None:
        cid = captioner_id or self.captioner_id
        pv = parser_version or self.parser_version
        if cid is None or pv is None:
            return None
        return entry_key(self.image_sha256(path), cid, pv)

    def get(
        self, image_path: str | Path, captioner_id: str | None = None, parser_version: str | None = None
    ) -> dict[str, Any] | None:
        """The entry for this image's content (None if missing, unreadable or captioner unknown)."""
        try:
            key = self.key_for(image_path, captioner_id, parser_version)
        except OSError:
            return None
        if key is None:
            return None
        if key not in self._entries:
            self.reload()
        return self._entries.get(key)

    # -- writing ------------------------------------------------------------------------------------
    def fill(
        self,
        paths: Sequence[str | Path],
        captioner: _Captioner,
        parser: _Parser,
        batch_size: int | None = None,
        progress: bool = True,
    ) -> FillReport:
        """Caption + parse every image not cached yet; bad images are reported, the rest still run."""
        from tqdm.auto import tqdm

        cid, pv = captioner.id, parser_version_of(parser)
        self.captioner_id, self.parser_version = cid, pv
        self.reload()
        report = FillReport()
        todo: list[tuple[str, str, str]] = []  # (path, key, sha)
        queued: set[str] = set()
        for p in paths:
            try:
                sha = self.image_sha256(p)
            except OSError as exc:
                report.errors.append((str(p), f"{p}: cannot read ({exc.strerror or exc})"))
                continue
            key = entry_key(sha, cid, pv)
            if key in self._entries or key in queued:
                report.skipped += 1  # done before, or the same bytes already queued under another name
                continue
            queued.add(key)
            todo.append((str(p), key, sha))
        size = batch_size or getattr(captioner, "batch_size", 8)
        bar = tqdm(total=len(todo), desc="knowledge", unit="img", disable=not progress, file=sys.stderr)
        try:
            for start in range(0, len(todo), size):
                batch = todo[start : start + size]
                entries = self._describe(batch, captioner, parser, cid, pv, report)
                self._append(entries)
                report.added += len(entries)
                bar.update(len(batch))
        finally:
            bar.close()
        return report

    def _describe(self, batch, captioner, parser, cid, pv, report) -> list[dict[str, Any]]:
        images, ok = [], []
        for item in batch:
            try:
                images.append(load_image(item[0]))
                ok.append(item)
            except ImageError as exc:
                report.errors.append((item[0], str(exc)))
        if not ok:
            return []
        try:
            captions = captioner(images, [p for p, _, _ in ok])
        except Exception:
            # One bad item must not sink the batch: caption one by one to find and report it.
            captions = []
            for img, item in zip(images, list(ok), strict=True):
                try:
                    captions.append(captioner([img], [item[0]])[0])
                except Exception as exc:  # noqa: BLE001 - reported per image, never swallowed
                    report.errors.append((item[0], str(exc) if item[0] in str(exc) else f"{item[0]}: {exc}"))
                    captions.append(None)
            kept = [(c, item) for c, item in zip(captions, ok, strict=True) if c is not None]
            captions, ok = [c for c, _ in kept], [item for _, item in kept]
        triplets = parser.parse_many(captions) if captions else []
        return [
            {
                "key": key,
                "image": path,
                "caption": caption,
                "triplets": [list(t) for t in trips],
                "image_sha256": sha,
                "captioner": cid,
                "parser": pv,
            }
            for (path, key, sha), caption, trips in zip(ok, captions, triplets, strict=True)
        ]

    def _append(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        payload = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        with open(self.path, "a+b") as f:
            _lock(f)
            try:
                _repair_tail(f)
                f.seek(0, os.SEEK_END)
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            finally:
                _unlock(f)
        self.reload()


def _repair_tail(f: Any) -> None:
    """Cut a torn last line (written by a killed process) so the next entry starts on its own line."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    pos = size
    while pos > 0:  # scan back block by block to the last newline
        step = min(1 << 16, pos)
        f.seek(pos - step)
        block = f.read(step)
        nl = block.rfind(b"\n")
        if nl >= 0:
            f.truncate(pos - step + nl + 1)
            return
        pos -= step
    f.truncate(0)


def _lock(f: Any) -> None:
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    except ImportError:  # Windows: single writer assumed
        pass


def _unlock(f: Any) -> None:
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except ImportError:
        pass
