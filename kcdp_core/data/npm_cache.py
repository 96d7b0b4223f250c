"""Fetch pinned npm tarballs with the npm client into a cache, verified by their integrity hash.

The cache lives outside the output folder (default ~/.cache/kcdp/npm, or $KCDP_CACHE/npm) so a
rebuild never downloads again. A cached tarball whose hash does not match (a torn download, a
corrupted disk, a tampered file) is deleted and fetched again.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kcdp_core.data.packages import NpmPackage
from kcdp_core.portable.constants import cache_root

NPM_TIMEOUT_S = 900


class FetchError(RuntimeError):
    """A package could not be fetched or verified; the message says which and why."""


def default_cache_dir() -> Path:
    """$KCDP_CACHE/npm if set, else ~/.cache/kcdp/npm."""
    return cache_root() / "npm"


def sri_of(path: Path) -> str:
    """The SRI string "sha512-<base64>" of a file, as npm writes dist.integrity."""
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def npm_pack(spec: str, dest: Path) -> Path:
    """Run `npm pack <spec>` into dest and return the tarball it wrote."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(
            f"cannot fetch {spec}: the npm client is not installed (install Node.js/npm, e.g. "
            "`apt-get install npm`), or put the pinned tarballs into the cache folder by hand"
        )
    dest.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [npm, "pack", spec, "--pack-destination", str(dest), "--json", "--silent"],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"cannot fetch {spec}: npm pack timed out after {NPM_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout or "").split())[-400:]
        hint = ""
        if any(s in tail for s in ("ENOTFOUND", "ECONNREFUSED", "ETIMEDOUT", "EAI_AGAIN", "network")):
            hint = (
                " The npm registry cannot be reached: check the network/proxy or `npm config get registry`."
            )
        raise FetchError(
            f"cannot fetch {spec}: npm pack failed (exit {proc.returncode}).{hint} npm said: {tail}"
        )
    tarballs = sorted(dest.glob("*.tgz"))
    if not tarballs:
        raise FetchError(f"cannot fetch {spec}: npm pack succeeded but wrote no tarball in {dest}")
    return tarballs[0]


def fetch_package(pkg: NpmPackage, cache_dir: Path | None = None, *, offline: bool = False) -> Path:
    """The verified tarball of pkg in the cache, fetching it with npm if absent or corrupted."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / pkg.tarball_name
    if target.exists():
        found = sri_of(target)
        if found == pkg.integrity:
            return target
        # A cached file that fails its hash is never used: fetch it again.
        print(f"kcdp-data: {target} fails its integrity check ({found[:20]}... != pinned); fetching again")
        target.unlink()
    if offline:
        raise FetchError(f"{pkg.spec} is not in the cache {cache_dir} and --offline forbids fetching it")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".pack-") as tmp:
        got = npm_pack(pkg.spec, Path(tmp))
        found = sri_of(got)
        if found != pkg.integrity:
            raise FetchError(
                f"{pkg.spec}: the registry's tarball has integrity {found}, but {pkg.integrity} is pinned; "
                "refusing to use it"
            )
        os.replace(got, target)  # atomic: a half-written tarball never sits under the final name
    return target
