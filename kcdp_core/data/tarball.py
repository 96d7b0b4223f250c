"""Read files out of npm tarballs in memory, never extracting to disk.

Tarballs are untrusted input: only regular files are read, names that are absolute or climb out
with '..' are refused, and one member may not exceed a size limit.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

MAX_MEMBER_BYTES = 512 * 1024 * 1024  # Fluent Emoji's Iconify JSON alone is ~100 MB


class TarballError(ValueError):
    """A tarball that cannot be read or holds an unsafe member; the message names both."""


def safe_member_name(name: str) -> bool:
    """True for a relative path that stays inside the archive."""
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in name


def iter_files(tgz: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) for every regular file whose name `want` accepts, in archive order."""
    try:
        with tarfile.open(tgz, mode="r:*") as tf:
            for member in tf:
                if not member.isfile() or not want(member.name):
                    continue
                if not safe_member_name(member.name):
                    raise TarballError(f"{tgz}: unsafe member path {member.name!r}")
                if member.size > MAX_MEMBER_BYTES:
                    raise TarballError(f"{tgz}: member {member.name} is {member.size} bytes, over the limit")
                f = tf.extractfile(member)
                if f is None:
                    continue
                yield member.name, f.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise TarballError(f"{tgz}: not a readable tarball ({e})") from e


def read_file(tgz: Path, name: str) -> bytes:
    """One member's bytes; TarballError if it is missing."""
    for _, data in iter_files(tgz, lambda n: n == name):
        return data
    raise TarballError(f"{tgz}: has no file {name}")
