"""Build the drawn-faces benchmark and the avatar pretraining corpus with DiceBear.

Styles, label key and tasks: kcdp_core/data/README.md.

Output layout (DIR = --out):

    DIR/domains/<style>/<label>/<style>-<label>-<seed>.png   benchmark: only the expression carries the label
    DIR/corpus/<style>/<style>-<seed>.png                      corpus styles (never benchmark styles)
    DIR/corpus/captions.jsonl                                  {"path","caption","codepoint","domain",
                                                                "license","face": true}, path relative to corpus/
    DIR/tasks/*.csv                                            leave-one-style-out and emoji -> style sources

With --styles extra, labelled or heldout, DIR/domains/ holds another labelled set instead
(avatar_key.py STYLE_SETS), with no corpus and no tasks: extra and labelled styles are added to
training sources (they must be on training_styles.csv), held-out styles only score a finished model
(nothing is trained or tuned on them).
    DIR/index.csv                                              path,part,style,label,seed,options,creator,license
    DIR/LICENSES.md, DIR/report.json                           credits per style; counts

Rendering is pure Python: `dicebear-core` resolves a style definition of `dicebear-styles` and a
seed into SVG, resvg rasterises it. A seed is a string (`<style>:<label>:<n>`), so two builds give
byte-identical images and `--seed-start` renders fresh avatars never used before.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from kcdp_core.data.avatar_captions import avatar_caption
from kcdp_core.data.avatar_key import (
    BENCHMARK_STYLES,
    CORPUS_STYLES,
    FACE_VISIBLE,
    LABELLED_OPTIONS,
    STYLE_SETS,
    StyleKey,
    check_trainable,
    load_avatar_key,
    style_credit,
    style_definition,
)

INDEX_FIELDS = ("path", "part", "style", "label", "seed", "options", "creator", "license")
# Background colours drawn by seed (DiceBear draws none by default): light, so every part stays visible.
BACKGROUNDS = ["ffffff", "f2f2f2", "ffdfbf", "ffd5dc", "d1d4f9", "c0aede", "b6e3f4", "d4f4c8", "fff3b0"]


@dataclass
class AvatarBuildResult:
    out: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # style -> label -> images
    corpus_counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Job:
    part: str  # "benchmark" | "corpus"
    style: str
    label: str  # "" in the corpus
    seed: str
    options: dict
    path: Path  # relative to the output folder


def class_options(style: str, components: dict[str, tuple[str, ...]]) -> dict:
    """DiceBear options forcing every listed component to one of its variants, always shown."""
    opts = {**FACE_VISIBLE.get(style, {}), **LABELLED_OPTIONS.get(style, {})}
    for component, variants in components.items():
        opts[f"{component}Variant"] = list(variants)
        opts[f"{component}Probability"] = 100
    return opts


def render_avatar(style: str, options: dict, size: int) -> tuple[bytes, dict]:
    """PNG bytes of one avatar and the options DiceBear resolved (the variants actually drawn)."""
    import resvg_py
    from dicebear import Avatar
    from PIL import Image

    avatar = Avatar(_style(style), {**options, "backgroundColor": BACKGROUNDS, "size": size})
    resolved = avatar.to_json()["options"]
    png = bytes(resvg_py.svg_to_bytes(svg_string=avatar.to_string(), width=size, height=size))
    # Re-encode as RGB without metadata: the benchmark format of the emoji domains, byte-stable.
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue(), resolved


_STYLES: dict = {}


def _style(name: str):
    """Style objects cached per process: parsing a definition costs more than a render."""
    from dicebear import Style

    if name not in _STYLES:
        _STYLES[name] = Style(style_definition(name))
    return _STYLES[name]


def _drawn(resolved: dict) -> dict:
    """The part of the resolved options worth recording: which variant each component took."""
    return {k: v for k, v in sorted(resolved.items()) if k.endswith("Variant")}


def _run(job_and_root: tuple[Job, str, int]) -> tuple[Job, dict | None, str | None]:
    job, root, size = job_and_root
    try:
        png, resolved = render_avatar(job.style, job.options, size)
    except Exception as e:  # noqa: BLE001 - one bad avatar is reported, the batch goes on
        return job, None, f"{job.path}: {type(e).__name__}: {e}"
    path = Path(root) / job.path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)  # a killed build never leaves a truncated PNG under the final name
    return job, _drawn(resolved), None


def benchmark_jobs(
    key: dict[str, StyleKey], per_class: int, seed_start: int, styles: tuple[str, ...] = BENCHMARK_STYLES
) -> list[Job]:
    jobs = []
    for style in styles:
        for label in key[style].labels:
            opts = class_options(style, key[style].classes[label])
            for n in range(seed_start, seed_start + per_class):
                seed = f"{style}:{label}:{n}"
                jobs.append(
                    Job(
                        "benchmark",
                        style,
                        label,
                        seed,
                        {**opts, "seed": seed},
                        Path("domains", style, label, f"{style}-{label}-{n}.png"),
                    )
                )
    return jobs


def corpus_jobs(per_style: int, seed_start: int) -> list[Job]:
    jobs = []
    for style in CORPUS_STYLES:
        opts = dict(FACE_VISIBLE.get(style, {}))
        for n in range(seed_start, seed_start + per_style):
            seed = f"{style}:corpus:{n}"
            jobs.append(
                Job(
                    "corpus",
                    style,
                    "",
                    seed,
                    {**opts, "seed": seed},
                    Path("corpus", style, f"{style}-{n}.png"),
                )
            )
    return jobs


def build_avatars(
    out: str | Path,
    per_class: int = 200,
    size: int = 128,
    workers: int | None = None,
    corpus_per_style: int = 1500,
    seed_start: int = 0,
    emoji: str | Path | None = None,
    key_path: str | Path | None = None,
    style_set: str = "benchmark",
) -> AvatarBuildResult:
    """Render the benchmark (and the corpus when corpus_per_style > 0); see the module docstring.
    style_set "extra" / "heldout": that labelled set instead (its own key; no corpus, no tasks)."""
    if per_class < 1 or size < 16 or corpus_per_style < 0:
        raise ValueError("--per-class must be >= 1, --size >= 16, --corpus-per-style >= 0")
    if style_set not in STYLE_SETS:
        raise ValueError(f"--styles {style_set!r}: expected one of {sorted(STYLE_SETS)}")
    benchmark = style_set == "benchmark"
    if not benchmark and (corpus_per_style or emoji is not None):
        raise ValueError(f"--styles {style_set} renders labelled styles only: no corpus, no --emoji")
    styles, default_key = STYLE_SETS[style_set]
    key = load_avatar_key(key_path or default_key, styles)  # every row checked before anything is written
    if style_set != "heldout":  # whatever may train must be on the written list of training styles
        check_trainable(styles)
    if set(key) != set(styles):
        raise ValueError(f"the key must cover exactly {styles}, it has {sorted(key)}")
    emoji_domains = _emoji_domains(emoji) if emoji is not None else []
    t0 = time.perf_counter()
    out = Path(out)
    for part in ("domains", "corpus"):  # a rebuild never keeps images of an older key or count
        shutil.rmtree(out / part, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    result = AvatarBuildResult(out)
    jobs = benchmark_jobs(key, per_class, seed_start, styles) + corpus_jobs(corpus_per_style, seed_start)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    rows, captions = [], []
    for job, drawn, err in _map(jobs, str(out), size, workers):
        if err is not None:
            result.errors.append(err)
            continue
        creator, licence = style_credit(job.style)
        rows.append(
            {
                "path": job.path.as_posix(),
                "part": job.part,
                "style": job.style,
                "label": job.label,
                "seed": job.seed,
                "options": json.dumps(drawn, separators=(",", ":")),
                "creator": creator,
                "license": licence,
            }
        )
        if job.part == "benchmark":
            counts = result.counts.setdefault(job.style, {})
            counts[job.label] = counts.get(job.label, 0) + 1
        else:
            result.corpus_counts[job.style] = result.corpus_counts.get(job.style, 0) + 1
            caption = avatar_caption(job.style, drawn)
            captions.append(
                {
                    "path": job.path.relative_to("corpus").as_posix(),
                    "caption": caption,
                    # Held out by caption: an expression combination is held out in all its seeds.
                    "codepoint": f"{job.style}|{caption}",
                    "domain": job.style,
                    "license": licence,
                    "face": True,
                }
            )
    rows.sort(key=lambda r: r["path"])
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=INDEX_FIELDS)
        w.writeheader()
        w.writerows(rows)
    if captions:
        captions.sort(key=lambda r: r["path"])
        (out / "corpus").mkdir(exist_ok=True)
        with open(out / "corpus" / "captions.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in captions)
    if benchmark:  # the tasks are the benchmark's
        _write_tasks(out, rows, emoji_domains)
    _write_licences(out, sorted(set(styles) | (set(result.corpus_counts))), style_set)
    result.seconds = time.perf_counter() - t0
    report = {
        "benchmark": result.counts,
        "corpus": result.corpus_counts,
        "size": size,
        "per_class": per_class,
        "seed_start": seed_start,
        "errors": result.errors,
        "seconds": round(result.seconds, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return result


def _map(jobs: list[Job], root: str, size: int, workers: int):
    from tqdm import tqdm

    args = [(j, root, size) for j in jobs]
    bar = dict(total=len(jobs), desc="render avatars", mininterval=5)
    if workers <= 1 or len(jobs) < 64:
        yield from tqdm(map(_run, args), **bar)
        return
    ctx = get_context("fork") if hasattr(os, "fork") else get_context()
    with ctx.Pool(workers) as pool:
        yield from tqdm(pool.imap_unordered(_run, args, chunksize=16), **bar)


def _emoji_domains(emoji: str | Path) -> list[Path]:
    root = Path(emoji) / "domains"
    domains = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not domains:
        raise ValueError(f"{root}: no emoji domains here (build them with kcdp-data emoji)")
    return domains


def _write_tasks(out: Path, rows: list[dict], emoji_domains: list[Path]) -> None:
    """Source manifests of the content-disjoint tasks; targets are the folders domains/<style>.

    leave_out_<style>.csv: the emoji styles (when --emoji is given) + the other four avatar styles;
    emoji.csv: the emoji styles alone (the single-source task emoji -> each avatar style).
    """
    tasks = out / "tasks"
    shutil.rmtree(tasks, ignore_errors=True)
    tasks.mkdir()
    emoji_rows = [
        {"path": os.path.relpath(img, tasks), "label": img.parent.name, "domain": d.name}
        for d in emoji_domains
        for img in sorted(d.glob("*/*.png"))
    ]
    avatar_rows = [
        {"path": os.path.relpath(out / r["path"], tasks), "label": r["label"], "domain": r["style"]}
        for r in rows
        if r["part"] == "benchmark"
    ]
    for style in BENCHMARK_STYLES:
        _write_manifest(
            tasks / f"leave_out_{style}.csv", emoji_rows + [r for r in avatar_rows if r["domain"] != style]
        )
    if emoji_rows:
        _write_manifest(tasks / "emoji.csv", emoji_rows)


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=("path", "label", "domain"))
        w.writeheader()
        w.writerows(rows)


def _write_licences(out: Path, styles: list[str], style_set: str) -> None:
    lines = [
        "# Sources and licences of the avatars in this folder",
        "",
        "Rendered by `kcdp-data avatars` with dicebear-core from the style definitions of dicebear-styles;",
        "creator and licence as each style's definition names them.",
        "",
        "| style | part | art | licence |",
        "|---|---|---|---|",
    ]
    for style in styles:
        creator, licence = style_credit(style)
        part = style_set
        if style_set == "benchmark":  # a benchmark build also renders the corpus styles
            part = "benchmark" if style in BENCHMARK_STYLES else "corpus"
        lines.append(f"| {style} | {part} | {creator} | {licence} |")
    (out / "LICENSES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def contact_sheet(out: str | Path, path: str | Path, per_row: int = 8, thumb: int = 48) -> Path:
    """One row per benchmark style and class (the first `per_row` seeds), as a small PNG."""
    import numpy as np
    from PIL import Image

    from kcdp_core.pretrain.figures import image_grid

    rows, names = [], []
    for style_dir in sorted(p for p in (Path(out) / "domains").iterdir() if p.is_dir()):
        for label_dir in sorted(p for p in style_dir.iterdir() if p.is_dir()):
            files = sorted(label_dir.glob("*.png"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))[:per_row]
            rows.append(
                [
                    np.asarray(Image.open(f).convert("RGB").resize((thumb, thumb), Image.LANCZOS))
                    for f in files
                ]
            )
            names.append(f"{style_dir.name} / {label_dir.name}")
    return image_grid(
        rows, path, names, header="kcdp-data avatars: one row per style and class", label_width=150
    )
