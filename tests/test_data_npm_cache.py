"""Fetching pinned tarballs: integrity check, refetch of a corrupted cache, clear npm errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from data_fixtures import make_tgz

from kcdp_core.data import npm_cache
from kcdp_core.data.npm_cache import FetchError, fetch_package, sri_of
from kcdp_core.data.packages import PACKAGES, NpmPackage
from kcdp_core.data.tarball import TarballError, iter_files


def _pinned(tmp_path: Path) -> tuple[NpmPackage, bytes]:
    good = make_tgz(tmp_path / "good.tgz", {"package/a.txt": "hello"})
    data = good.read_bytes()
    return NpmPackage("@scope/pkg", "2.0.1", sri_of(good), "MIT", True), data


def test_sri_matches_npm_format(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    # sha512("abc") in base64, as npm's dist.integrity writes it.
    assert sri_of(p) == (
        "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw=="
    )
    assert all(p.integrity.startswith("sha512-") and len(p.integrity) == 95 for p in PACKAGES.values())


def test_cached_tarball_with_right_hash_is_used_without_npm(tmp_path, monkeypatch):
    pkg, data = _pinned(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "scope-pkg-2.0.1.tgz").write_bytes(data)
    monkeypatch.setattr(npm_cache, "npm_pack", lambda *a: pytest.fail("npm must not run"))
    assert fetch_package(pkg, cache) == cache / "scope-pkg-2.0.1.tgz"


def test_corrupted_cache_is_detected_and_fetched_again(tmp_path, monkeypatch, capsys):
    pkg, data = _pinned(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / pkg.tarball_name
    target.write_bytes(data[:-10] + b"corrupted!")
    calls = []

    def fake_pack(spec: str, dest: Path) -> Path:
        calls.append(spec)
        out = dest / pkg.tarball_name
        out.write_bytes(data)
        return out

    monkeypatch.setattr(npm_cache, "npm_pack", fake_pack)
    assert fetch_package(pkg, cache) == target
    assert calls == ["@scope/pkg@2.0.1"]
    assert target.read_bytes() == data
    assert "fails its integrity check" in capsys.readouterr().out
    # No temporary pack folders are left behind.
    assert sorted(p.name for p in cache.iterdir()) == [pkg.tarball_name]


def test_registry_tarball_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    pkg, _ = _pinned(tmp_path)

    def fake_pack(spec: str, dest: Path) -> Path:
        out = dest / "x.tgz"
        out.write_bytes(b"tampered")
        return out

    monkeypatch.setattr(npm_cache, "npm_pack", fake_pack)
    with pytest.raises(FetchError, match="refusing to use it"):
        fetch_package(pkg, tmp_path / "cache")
    assert not (tmp_path / "cache" / pkg.tarball_name).exists()


def test_offline_without_cache_says_so(tmp_path):
    pkg, _ = _pinned(tmp_path)
    with pytest.raises(FetchError, match="not in the cache"):
        fetch_package(pkg, tmp_path / "cache", offline=True)


def _fake_npm(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)


def test_unreachable_registry_gives_a_clear_error(tmp_path, monkeypatch):
    pkg, _ = _pinned(tmp_path)
    _fake_npm(
        tmp_path / "bin",
        'echo "npm error code ENOTFOUND" >&2\n'
        'echo "npm error request to https://registry.example/pkg failed, reason: getaddrinfo ENOTFOUND" >&2\n'
        "exit 1\n",
    )
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(FetchError) as err:
        fetch_package(pkg, tmp_path / "cache")
    msg = str(err.value)
    assert "@scope/pkg@2.0.1" in msg and "cannot be reached" in msg and "ENOTFOUND" in msg


def test_missing_npm_gives_a_clear_error(tmp_path, monkeypatch):
    pkg, _ = _pinned(tmp_path)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FetchError, match="npm client is not installed"):
        fetch_package(pkg, tmp_path / "cache")


def test_cli_reports_fetch_errors_with_exit_1(tmp_path, monkeypatch, capsys):
    from kcdp_core.data.cli import main

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rc = main(["emoji", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--domains", "twitter"])
    assert rc == 1
    assert "npm client is not installed" in capsys.readouterr().err


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KCDP_CACHE", str(tmp_path))
    assert npm_cache.default_cache_dir() == tmp_path / "npm"
    monkeypatch.delenv("KCDP_CACHE")
    assert npm_cache.default_cache_dir() == Path(os.path.expanduser("~")) / ".cache/kcdp/npm"


def test_tarball_reader_refuses_path_traversal(tmp_path):
    bad = make_tgz(tmp_path / "bad.tgz", {"package/ok.txt": "x", "../evil.txt": "y"})
    with pytest.raises(TarballError, match="unsafe member path"):
        list(iter_files(bad, lambda n: True))
    assert [n for n, _ in iter_files(bad, lambda n: n.startswith("package/"))] == ["package/ok.txt"]
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(TarballError, match="not a readable tarball"):
        list(iter_files(tmp_path / "junk.tgz", lambda n: True))
