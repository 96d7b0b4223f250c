"""Build the emoji cross-style benchmark and the pretraining corpus (kcdp_core/data/README.md).

Output layout (DIR = --out):

    DIR/domains/<domain>/<label>/<codepoint>.png     the 44 benchmark faces per style domain
    DIR/families/<family>/<label>/<domain>_<codepoint>.png   pooled style families (hard links)
    DIR/splits/disjoint_fold{0,1}.csv                emoji-disjoint folds (codepoint,short_name,label)
    DIR/corpus/<domain>/<codepoint>.png              every other emoji of the openly licensed sets
    DIR/corpus/captions.jsonl                        {"path","caption","codepoint","domain","license",
                                                      "group","subgroup"}, path relative to corpus/
    DIR/index.csv                                    provenance of every image
    DIR/report.json                                  counts and emojis missing per domain
    DIR/.build/<domain>.json                         stamps: a rerun with the same inputs reuses images

The corpus never holds the 44 benchmark emojis. It does hold the faces emoji_excluded.csv leaves
out of the benchmark as ambiguous: they are not test images, and the pilot found the non-benchmark
faces carry all of the emotion signal a captioner learns (kcdp_core/data/README.md, the pilot).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from kcdp_core.data.emoji_catalog import EmojiCatalog, load_catalog
from kcdp_core.data.emoji_key import KeyEmoji, load_label_key
from kcdp_core.data.emoji_render import EMPTY_DRAWING, render_job
from kcdp_core.data.emoji_sources import DOMAINS, FAMILIES, DomainSource, read_drawings
from kcdp_core.data.npm_cache import fetch_package
from kcdp_core.data.packages import CATALOG_PACKAGES, PACKAGES, NpmPackage
from kcdp_core.portable.labels import EMOJI7

BUILDER_VERSION = 1  # bump when the image format changes, to invalidate stamps
INDEX_FIELDS = ("path", "part", "domain", "codepoint", "label", "package", "version", "member", "license")


@dataclass
class BuildResult:
    out: Path
    domain_counts: dict[str, int] = field(default_factory=dict)
    corpus_counts: dict[str, int] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # blank upstream drawings, left out
    reused: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def corpus_size(self) -> int:
        return sum(self.corpus_counts.values())


def _stamp(source: DomainSource, pkg: NpmPackage, size: int, corpus: bool, key: list[KeyEmoji]) -> dict:
    return {
        "builder": BUILDER_VERSION,
        "package": pkg.spec,
        "integrity": pkg.integrity,
        "where": source.where,
        "size": size,
        "corpus": corpus,
        "key": sorted(f"{e.unified}:{e.label}" for e in key),
    }


def _load_stamped(path: Path, stamp: dict, out: Path) -> dict | None:
    """A previous build of this domain (records, skipped) if its inputs match and its files exist."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("stamp") != stamp:
        return None
    records = saved.get("records", [])
    if not all((out / r["path"]).is_file() for r in records):
        return None
    return saved


def _run_jobs(jobs: list[tuple], workers: int) -> list[tuple[str, str | None]]:
    if workers <= 1 or len(jobs) < 64:
        return [render_job(j) for j in jobs]
    # fork is cheapest on Linux; payloads travel by pickle either way.
    ctx = get_context("fork") if hasattr(os, "fork") else get_context()
    with ctx.Pool(workers) as pool:
        return list(pool.imap_unordered(render_job, jobs, chunksize=32))


def _build_domain(
    source: DomainSource,
    pkg: NpmPackage,
    tgz: Path,
    catalog: EmojiCatalog,
    key: list[KeyEmoji],
    out: Path,
    size: int,
    corpus: bool,
    workers: int,
    result: BuildResult,
) -> list[dict]:
    bench = {e.key: e for e in key}

    def want(k: str) -> bool:
        return k in bench or (corpus and k in catalog.by_key)

    drawings = read_drawings(source, tgz, catalog, want)
    jobs: list[tuple] = []
    records: list[dict] = []
    for k, d in drawings.items():
        if k in bench:
            e = bench[k]
            rel = f"domains/{source.domain}/{e.label}/{e.unified}.png"
            rec = {"part": "domain", "codepoint": e.unified, "label": e.label}
        else:
            info = catalog.by_key[k]
            rel = f"corpus/{source.domain}/{info.hexcode}.png"
            rec = {"part": "corpus", "codepoint": info.hexcode, "label": ""}
        rec.update(
            path=rel,
            domain=source.domain,
            package=pkg.name,
            version=pkg.version,
            member=d.member,
            license=pkg.licence,
        )
        records.append(rec)
        jobs.append((d.kind, d.payload, str(out / rel), size))
    # A stale domain folder could hold images of an older build: start it afresh.
    for part in ("domains", "corpus"):
        shutil.rmtree(out / part / source.domain, ignore_errors=True)
    failed: dict[str, str] = {}
    for path, err in _run_jobs(jobs, workers):
        if err is not None:
            failed[path] = err
    kept = []
    for rec in records:
        err = failed.get(str(out / rec["path"]))
        if err is None:
            kept.append(rec)
        elif err == EMPTY_DRAWING:
            result.skipped.append(f"{source.domain} {rec['member']}: {err}")
        else:
            result.errors.append(f"{source.domain} {rec['member']}: {err}")
    return kept


def _emoji_folds(key: list[KeyEmoji], seed: int = 0) -> dict[str, int]:
    """Two folds of the benchmark emojis, stratified by class (each class split as evenly as it can)."""
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    sizes = [0, 0]
    for label in EMOJI7:
        members = [e for e in key if e.label == label]
        rng.shuffle(members)
        # Odd-sized classes put their extra emoji in the smaller fold so far, keeping folds balanced.
        first = 0 if sizes[0] <= sizes[1] else 1
        for i, e in enumerate(members):
            f = first if i % 2 == 0 else 1 - first
            fold_of[e.unified] = f
            sizes[f] += 1
    return fold_of


def _write_csv(path: Path, fields: Iterable[str], rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def build_emoji(
    out: str | Path,
    *,
    domains: Iterable[str] | None = None,
    size: int = 64,
    cache_dir: Path | None = None,
    corpus: bool = True,
    workers: int | None = None,
    offline: bool = False,
    packages: dict[str, NpmPackage] | None = None,
    sources: dict[str, DomainSource] | None = None,
    label_key: list[KeyEmoji] | None = None,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Build DIR (see the module docstring). `packages`/`sources` default to the pinned tables."""
    t0 = time.perf_counter()
    out = Path(out)
    packages = packages if packages is not None else PACKAGES
    sources = sources if sources is not None else DOMAINS
    names = list(domains) if domains is not None else list(sources)
    unknown = [d for d in names if d not in sources]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; known: {', '.join(sources)}")
    if size < 8:
        raise ValueError(f"--size must be at least 8 pixels, got {size}")
    key = label_key if label_key is not None else load_label_key()
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    result = BuildResult(out)
    out.mkdir(parents=True, exist_ok=True)

    if any(sources[d].layout in ("svg_files", "iconify") for d in names):
        _require_resvg()
    needed = list(CATALOG_PACKAGES) + sorted({sources[d].package for d in names})
    tarballs: dict[str, Path] = {}
    for name in needed:
        tarballs[name] = fetch_package(packages[name], cache_dir, offline=offline)
    log(f"kcdp-data: {len(tarballs)} packages verified in the cache")
    catalog = load_catalog(tarballs["emojibase-data"], tarballs["emoji-datasource"])

    records: list[dict] = []
    stamps = out / ".build"
    stamps.mkdir(exist_ok=True)
    for d in names:
        source = sources[d]
        pkg = packages[source.package]
        in_corpus = corpus and pkg.open_licence
        stamp = _stamp(source, pkg, size, in_corpus, key)
        stamp_path = stamps / f"{d}.json"
        saved = _load_stamped(stamp_path, stamp, out)
        if saved is not None:
            result.reused.append(d)
            recs = saved["records"]
            result.skipped.extend(saved.get("skipped", []))
        else:
            td = time.perf_counter()
            n_skipped, n_errors = len(result.skipped), len(result.errors)
            recs = _build_domain(
                source, pkg, tarballs[source.package], catalog, key, out, size, in_corpus, workers, result
            )
            if len(result.errors) == n_errors:  # a domain with failed images is rebuilt next time
                stamp_path.write_text(
                    json.dumps({"stamp": stamp, "records": recs, "skipped": result.skipped[n_skipped:]})
                )
            else:
                stamp_path.unlink(missing_ok=True)
            log(f"kcdp-data: {d}: {len(recs)} images in {time.perf_counter() - td:.1f} s")
        records.extend(recs)
        have = {r["codepoint"] for r in recs if r["part"] == "domain"}
        result.domain_counts[d] = len(have)
        result.missing[d] = [e.unified for e in key if e.unified not in have]
        n_corpus = sum(r["part"] == "corpus" for r in recs)
        if n_corpus:
            result.corpus_counts[d] = n_corpus

    _write_families(out, records, sources)
    _write_splits(out, key)
    _write_captions(out, records, catalog)
    _write_csv(out / "index.csv", INDEX_FIELDS, sorted(records, key=lambda r: r["path"]))
    _write_licences(out, [packages[n] for n in needed], names, sources)
    result.seconds = time.perf_counter() - t0
    report = {
        "size": size,
        "domains": result.domain_counts,
        "missing": {d: m for d, m in result.missing.items() if m},
        "corpus": result.corpus_counts,
        "corpus_total": result.corpus_size,
        "errors": result.errors,
        "skipped": result.skipped,
        "reused": result.reused,
        "seconds": round(result.seconds, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return result


def _require_resvg() -> None:
    try:
        import resvg_py  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "SVG domains need the resvg renderer: pip install resvg-py (part of kcdp[train])"
        ) from e


def _write_licences(
    out: Path, pkgs: list[NpmPackage], names: list[str], sources: dict[str, DomainSource]
) -> None:
    """LICENSES.md: the art's source and licence per domain (CC-BY needs this credit when shared)."""
    lines = [
        "# Sources and licences of the images in this folder",
        "",
        "Built by `kcdp-data emoji` from npm packages at pinned versions (integrity-checked).",
        "Domains marked *not redistributable* must not be shared or committed; the corpus holds",
        "openly licensed art only.",
        "",
        "| domain | package | licence |",
        "|---|---|---|",
    ]
    by_name = {p.name: p for p in pkgs}
    for d in names:
        p = by_name[sources[d].package]
        flag = "" if p.open_licence or "not redistributable" in p.licence else " — *not redistributable*"
        lines.append(f"| {d} | {p.spec} | {p.licence}{flag} |")
    lines += [
        "",
        "Captions: CLDR annotations via emojibase-data (Unicode licence), names via emoji-datasource.",
    ]
    (out / "LICENSES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_families(out: Path, records: list[dict], sources: dict[str, DomainSource]) -> None:
    fam_root = out / "families"
    shutil.rmtree(fam_root, ignore_errors=True)
    for r in records:
        if r["part"] != "domain":
            continue
        family = sources[r["domain"]].family
        _link(out / r["path"], fam_root / family / r["label"] / f"{r['domain']}_{r['codepoint']}.png")
    for family in FAMILIES:
        (fam_root / family).mkdir(parents=True, exist_ok=True)


def _write_splits(out: Path, key: list[KeyEmoji]) -> None:
    folds = _emoji_folds(key)
    for f in (0, 1):
        rows = [
            {"codepoint": e.unified, "short_name": e.short_name, "label": e.label}
            for e in key
            if folds[e.unified] == f
        ]
        _write_csv(out / "splits" / f"disjoint_fold{f}.csv", ("codepoint", "short_name", "label"), rows)


def _write_captions(out: Path, records: list[dict], catalog: EmojiCatalog) -> None:
    path = out / "corpus" / "captions.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in sorted(records, key=lambda r: r["path"]):
            if r["part"] != "corpus":
                continue
            info = catalog.get(r["codepoint"])
            if info is None:
                continue
            line = {
                "path": r["path"][len("corpus/") :],
                "caption": info.caption,
                "codepoint": r["codepoint"],
                "domain": r["domain"],
                "license": r["license"],
                "group": info.group,
                "subgroup": info.subgroup,
            }
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    tmp.replace(path)
