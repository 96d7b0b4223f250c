"""Does the knowledge name the expression? The retrieved caption of labelled drawn faces, read for emotion words.

    python benchmarks/caption_expressions.py --set "unseen seeds=$DATA/avatars_test/domains" \
        --set "held out=$DATA/avatars_heldout/domains" [--model runtime/default_model] \
        [--bank-from $RUNS/x26/x1/training_data.csv] [--per-class 40] [--no-write]

KCDP's knowledge is the caption the retrieval captioner takes from the caption bank (the aligned
image encoder's nearest caption) and the triplets parsed from it. For every image of each labelled
set (a `kcdp-data` domains/ folder of <style>/<class>/ images, or one <style> folder), the export's
own captioner retrieves the caption, and an emotion lexicon (LEXICON below, fixed before scoring)
reads which classes it names: the right one only, the right one among others, only wrong ones, or
none. With --bank-from (a training manifest: path,label) the same images are also matched to their
nearest *training image* in the same embedding space, as a bank of expression-captioned training
images would retrieve: the share whose neighbour has the right label (macro-F1 over the classes of
the style). Labels are read here for scoring only. Written into benchmarks/RESULTS.md between the
accuracy:caption_expressions markers.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import random
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, publish, recorded_command  # noqa: E402

from kcdp_core.portable.constants import IMAGE_SUFFIXES  # noqa: E402
from kcdp_core.portable.images import load_frames, preprocess  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Words that name a class in a caption (emoji names and keywords, avatar part words); a trailing
# "-" marks a stem ("smil-": smile, smiling), anything else is a whole word ("mad", not "madrid").
LEXICON: dict[str, tuple[str, ...]] = {
    "anger": ("angry", "anger", "rage", "furious", "mad", "pout-", "grump-", "annoy-"),
    "disgust": ("disgust-", "gross", "nause-", "vomit-", "repuls-", "yuck"),
    "fear": ("fear-", "scared", "afraid", "scream-", "anxious", "worried", "terrif-", "fright-", "horror"),
    "happiness": ("happy", "smil-", "grin", "grinning", "laugh-", "joy-", "beam-", "cheer-", "pleased"),
    "neutral": ("neutral", "expressionless", "straight mouth", "calm", "blank", "deadpan"),
    "sadness": (
        "sad",
        "frown-",
        "cry",
        "crying",
        "tear",
        "tears",
        "unhappy",
        "sorrow-",
        "disappoint-",
        "pensive",
    ),
    "surprise": ("surpris-", "astonish-", "shock-", "amaz-", "gasp-", "hushed", "open mouth", "ooh"),
}


def _pattern(words: tuple[str, ...]) -> re.Pattern:
    alternatives = (re.escape(w[:-1]) + r"\w*" if w.endswith("-") else re.escape(w) + r"\b" for w in words)
    return re.compile(r"\b(" + "|".join(alternatives) + ")", re.I)


_PATTERNS = {c: _pattern(words) for c, words in LEXICON.items()}


def named_classes(caption: str) -> set[str]:
    """The classes whose words the caption contains."""
    return {c for c, pattern in _PATTERNS.items() if pattern.search(caption)}


VERDICTS = ("right", "right among others", "wrong", "none")


def verdict(caption: str, truth: str) -> str:
    named = named_classes(caption)
    if not named:
        return "none"
    if truth in named:
        return "right" if named == {truth} else "right among others"
    return "wrong"


def labelled_images(folder: Path, per_class: int | None, seed: int) -> dict[str, list[tuple[Path, str]]]:
    """style -> [(image, label)]: a domains/ folder (one subfolder per style) or one style folder."""
    styles = [folder] if any(_images(d) for d in folder.iterdir() if d.is_dir()) else []
    styles = styles or sorted(d for d in folder.iterdir() if d.is_dir())
    out = {}
    for style in styles:
        rows = []
        for class_dir in sorted(d for d in style.iterdir() if d.is_dir()):
            files = _images(class_dir)
            if per_class and len(files) > per_class:
                files = sorted(
                    random.Random(f"{seed}:{style.name}:{class_dir.name}").sample(files, per_class)
                )
            rows += [(f, class_dir.name) for f in files]
        if not rows:
            raise SystemExit(f"{style}: no <class>/ image folders here")
        out[style.name] = rows
    return out


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def retrieve(pipeline, paths: list[Path], batch: int = 32) -> tuple[list[str], np.ndarray]:
    """The export's retrieved caption and aligned embedding of each image."""
    captions, embeddings = [], []
    size, resize = pipeline.image_size, pipeline.resize_filter
    for start in tqdm(range(0, len(paths), batch), desc="captions", unit="batch", leave=False):
        chunk = paths[start : start + batch]
        images = [load_frames(p, str(p), 1).images[0] for p in chunk]
        pixels = np.stack([preprocess(img, size, resize) for img in images])
        for cap in pipeline.captioner.caption(images, pixels):
            captions.append(cap.text)
            embeddings.append(cap.image["embedding"])
    return captions, np.stack(embeddings)


def read_manifest(path: Path) -> list[tuple[Path, str]]:
    with path.open(newline="") as f:
        return [(Path(r["path"]), r["label"]) for r in csv.DictReader(f)]


def macro_f1(truth: list[str], pred: list[str]) -> float:
    """Over the classes the truth has (a style without disgust is not scored on it), as kcdp-eval."""
    from kcdp_core.train.evaluate import classification_metrics

    labels = sorted(set(truth) | set(pred))
    index = {c: i for i, c in enumerate(labels)}
    m = classification_metrics([index[c] for c in truth], [index[c] for c in pred], labels)
    return m["macro_f1_truth"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", action="append", required=True, metavar="NAME=FOLDER", dest="sets")
    p.add_argument("--model", default=str(ROOT / "runtime" / "default_model"), help="an export folder")
    p.add_argument("--bank-from", help="a training manifest (path,label): the expression-bank column")
    p.add_argument("--per-class", type=int, default=40, help="images per class and style (seeded draw)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = p.parse_args(argv)

    from kcdp_runtime.captioner import RetrievalCaptioner
    from kcdp_runtime.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(args.model)
    if not isinstance(pipeline.captioner, RetrievalCaptioner):
        raise SystemExit(
            f"{args.model}: its captioner is {pipeline.captioner.name}, not the retrieval captioner"
        )
    bank = None
    if args.bank_from:
        rows = read_manifest(Path(args.bank_from))
        _, emb = retrieve(pipeline, [r[0] for r in rows])
        bank = (emb / np.linalg.norm(emb, axis=1, keepdims=True), [r[1] for r in rows])

    header = "| set | style | images | names the right class | right among others | only wrong ones | none |"
    if bank:
        header += " nearest training image: acc / macro-F1 |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    examples: Counter[tuple[str, str]] = Counter()
    sets: dict[str, list[Path]] = {}  # a name given twice gathers its folders
    for item in args.sets:
        name, _, folder = item.partition("=")
        sets.setdefault(name, []).append(Path(folder))
    for name, folders in sets.items():
        totals: Counter[str] = Counter()
        nearest_scores: list[tuple[float, float]] = []  # per style: acc, macro-F1
        for folder in folders:
            for style, rows in labelled_images(folder, args.per_class, args.seed).items():
                captions, emb = retrieve(pipeline, [r[0] for r in rows])
                truth = [r[1] for r in rows]
                counts = Counter(verdict(c, t) for c, t in zip(captions, truth, strict=True))
                totals.update(counts)
                examples.update((t, c) for c, t in zip(captions, truth, strict=True))
                cells = [f"{counts[k] / len(rows):.2f}" for k in VERDICTS]
                line = f"| {name} | {style} | {len(rows)} | " + " | ".join(cells) + " |"
                if bank:
                    nearest = (emb / np.linalg.norm(emb, axis=1, keepdims=True) @ bank[0].T).argmax(axis=1)
                    pred = [bank[1][j] for j in nearest]
                    acc = float(np.mean([a == b for a, b in zip(pred, truth, strict=True)]))
                    nearest_scores.append((acc, macro_f1(truth, pred)))
                    line += " {:.3f} / {:.3f} |".format(*nearest_scores[-1])
                lines.append(line)
        n = sum(totals.values())
        cells = [f"**{totals[k] / n:.2f}**" for k in VERDICTS]
        mean = (
            " **{:.3f} / {:.3f}** (mean of the styles) |".format(*np.mean(nearest_scores, axis=0))
            if bank
            else ""
        )
        lines.append(f"| **{name}** | all | {n} | " + " | ".join(cells) + " |" + mean)
    top = [f"{count}x ({truth}) {caption}" for (truth, caption), count in examples.most_common(8)]
    body = (
        "### Does the retrieved caption name the expression?\n\n"
        f"Command: `{recorded_command('caption_expressions.py')}`  \n"
        f"Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {machine()}  \n"
        f"Up to {args.per_class} images per class and style (seed {args.seed}); a caption names a class when it "
        "contains one of its words (benchmarks/caption_expressions.py LEXICON).\n\n"
        + "\n".join(lines)
        + "\n\nMost frequent (true class) retrieved caption:\n\n"
        + "\n".join(f"- {t}" for t in top)
        + "\n"
    )
    publish("caption_expressions", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
