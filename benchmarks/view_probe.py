"""Is a drawn face's expression lost at the model's input? Linear probes on the frozen image encoder
by view (the whole image, or a crop around where drawn faces sit) and input size.

    python benchmarks/view_probe.py --avatars $DATA/avatars --labelled-avatars $DATA/avatars_labelled \
        [--per-class 60] [--views full centre] [--sizes 96 128] [--renders original gray lines] [--no-write]

For every style of the list (the five benchmark avatar styles and six labelled human-face styles by
default: training styles only, never a held-out one) the aligned image encoder's embedding of the
committed `mini` foundation (no training) is probed twice, with a logistic regression (C = 0.1, fixed
beforehand) on features standardised per style:
- inside the style: 5-fold cross-validated macro-F1 (can the input separate its expressions at all?);
- across styles: fitted on every other style of the list, scored on this one (leave one style out).
The encoder is convolutional, so it reads larger inputs without retraining (the resolution question
asked before paying for a pretraining run). --renders asks whether redrawing every image the same way
(grey levels, or its edges as line art) would carry the expression across styles better than its
colours do: an input normalisation, asked before training one. Writes RESULTS.md between the
accuracy:view_probe markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, publish, recorded_command  # noqa: E402
from probes import COMMITTED, extract, model_for, probe, within_style  # noqa: E402

from kcdp_core.data.avatar_key import check_trainable  # noqa: E402
from kcdp_core.portable.images import FACE_BOX, crop_box  # noqa: E402
from kcdp_core.train.style_augment import edge_drawing  # noqa: E402

BENCHMARK_STYLES = ("avataaars", "open-peeps", "fun-emoji", "big-smile", "moods")
LABELLED_STYLES = ("adventurer", "big-ears", "croodles", "dylan", "lorelei", "notionists")
# The crop of each view, as fractions of the side (left, top, right, bottom); "centre" is the face view
# a model reads with perception.face_view.
VIEWS = {"full": (0.0, 0.0, 1.0, 1.0), "centre": FACE_BOX}
# How every image of a view is redrawn before the encoder reads it (after the crop).
RENDERS = {
    "original": lambda img: img,
    "gray": lambda img: ImageOps.grayscale(img.convert("RGB")).convert("RGB"),
    # the style augmentation's line art at a fixed threshold (40) and stroke (1 px)
    "lines": lambda img: edge_drawing(img.convert("RGB")),
}


def crop(img, box: tuple[float, float, float, float]):
    """The fractional box of a PIL image (the whole image for (0, 0, 1, 1))."""
    return img if box == VIEWS["full"] else crop_box(img, box)


def view_folder(
    folder: Path, per_class: int, box: tuple[float, float, float, float], out: Path, render: str = "original"
) -> Path:
    """The first `per_class` images of every class folder, cropped to `box` and redrawn by `render`, as
    PNG files under out/."""
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        (out / label_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(label_dir.glob("*.png"))[:per_class]:
            target = out / label_dir.name / f.name
            if not target.exists():
                RENDERS[render](crop(Image.open(f), box)).save(target)
    return out


def cached_embeddings(folders: dict[str, Path], size: int, path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The image-encoder embedding and label of every image per style, kept in `path` for a rerun."""
    if path.exists():
        with np.load(path) as z:
            if all(f"{s}|emb" in z.files for s in folders):
                return {s: {"emb": z[f"{s}|emb"], "y": z[f"{s}|y"]} for s in folders}
    feats = extract(model_for(COMMITTED, size), folders)
    np.savez(path, **{f"{s}|{k}": feats[s][k] for s in folders for k in ("emb", "y")})
    return feats


def across_styles(feats: dict, style: str, styles: list[str]) -> float:
    """Macro-F1 on `style` of probes.probe fitted on the other styles (each standardised by its own statistics)."""
    return probe(feats, [s for s in styles if s != style], [style], ("emb",), per_style=True)[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--avatars", required=True, help="kcdp-data avatars output (the benchmark styles)")
    p.add_argument("--labelled-avatars", help="kcdp-data avatars --styles labelled output")
    p.add_argument("--styles", nargs="+", help="styles to probe (default: the benchmark and six labelled)")
    p.add_argument("--per-class", type=int, default=60, help="images per class and style (60)")
    p.add_argument("--views", nargs="+", choices=sorted(VIEWS), default=["full", "centre"])
    p.add_argument("--sizes", nargs="+", type=int, default=[96, 128], help="input sizes in px (96 128)")
    p.add_argument("--renders", nargs="+", choices=list(RENDERS), default=["original"], help="(original)")
    p.add_argument(
        "--combined",
        action="append",
        help="VIEW@SIZE+VIEW@SIZE: a row on both embeddings side by side (e.g. full@96+centre@128)",
    )
    p.add_argument("--work", default="runs/view_probe", help="scratch folder for the cropped images")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    roots = [Path(args.avatars)] + ([Path(args.labelled_avatars)] if args.labelled_avatars else [])
    wanted = args.styles or [*BENCHMARK_STYLES, *(LABELLED_STYLES if args.labelled_avatars else ())]
    try:  # a probe that compares inputs is a choice: never made on a held-out style
        check_trainable(wanted)
    except ValueError as exc:
        p.error(str(exc))
    sources = {}
    for style in wanted:
        found = [r / "domains" / style for r in roots if (r / "domains" / style).is_dir()]
        if not found:
            p.error(f"style {style!r}: no domains/{style} folder under {', '.join(map(str, roots))}")
        sources[style] = found[0]
    styles = list(sources)

    work = Path(args.work) / f"n{args.per_class}"  # the crops and embeddings of this many per class
    feats: dict[str, dict] = {}  # "view@size" (or "view/render@size") -> per style {"emb", "y"}
    for view in args.views:
        for render in args.renders:
            name = view if render == "original" else f"{view}/{render}"  # the row's
            stem = name.replace("/", "-")  # its crops' folder and embeddings' file
            folders = {
                s: view_folder(f, args.per_class, VIEWS[view], work / stem / s, render)
                for s, f in sources.items()
            }
            for size in args.sizes:
                feats[f"{name}@{size}"] = cached_embeddings(folders, size, work / f"{stem}@{size}.npz")
    for combined in args.combined or []:
        parts = combined.split("+")
        if any(part not in feats for part in parts):
            p.error(f"--combined {combined}: each part must be one of {sorted(feats)}")
        feats[combined] = {
            s: {
                "emb": np.concatenate([feats[part][s]["emb"] for part in parts], 1),
                "y": feats[parts[0]][s]["y"],
            }
            for s in styles
        }
    rows = {
        name.replace("@", " @ ").replace("+", " px + ") + " px": {
            s: (within_style(f, s, ("emb",)), across_styles(f, s, styles)) for s in styles
        }
        for name, f in feats.items()
    }

    lines = [
        "### Expression at the input: the frozen image encoder by view and size (linear probes, no training)",
        "",
        f"Command: `{recorded_command('view_probe.py')}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {machine()}  ",
        f"Committed `mini` foundation, aligned image-encoder embedding, {args.per_class} images per class and "
        "style, features standardised per style, logistic regression C = 0.1. Cells: macro-F1 inside the style "
        "(5-fold) / across styles (fitted on the other styles of the table). Views: "
        + "; ".join(f"{v} = {VIEWS[v]}" for v in args.views)
        + " (the box of the image kept: left, top, right, bottom, as fractions of its sides)"
        + (
            ""
            if args.renders == ["original"]
            else "; view/gray: grey levels, view/lines: the edges as 1 px "
            "dark strokes on white (grey-level step > 40), redrawn after the crop"
        ),
        "",
        "| view @ input | " + " | ".join(styles) + " | mean inside | mean across |",
        "|---|" + "---|" * len(styles) + "---:|---:|",
    ]
    for name, cells in rows.items():
        inside = float(np.mean([a for a, _ in cells.values()]))
        across = float(np.mean([b for _, b in cells.values()]))
        body = " | ".join(f"{a:.3f} / {b:.3f}" for a, b in cells.values())
        lines.append(f"| {name} | {body} | {inside:.3f} | {across:.3f} |")
    text = "\n".join(lines) + "\n"
    publish("view_probe", text, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
