"""kcdp-bench accuracy: accuracy and macro-F1 of an export on DIR/<label>/<image>, through the runtime's
Pipeline (the deployed path, end to end: image files in, labels out)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kcdp_core.portable.constants import IMAGE_SUFFIXES
from kcdp_runtime.pipeline import Pipeline


def accuracy(args: argparse.Namespace) -> int:
    folder = Path(args.data)
    pipe = Pipeline.from_pretrained(args.model)
    paths, truth = [], []
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if label_dir.name not in pipe.labels:
            print(f"kcdp-bench: skipping {label_dir} (not a label of the model)", file=sys.stderr)
            continue
        for p in sorted(label_dir.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(p))
                truth.append(label_dir.name)
    if not paths:
        raise SystemExit(f"kcdp-bench: {folder}: no DIR/<label>/<image> files")
    if args.pack:  # seeded packs (every one of at least the size asked), each answered together
        results: list[dict] = [{}] * len(paths)
        size = len(paths) if args.pack == "all" else args.pack
        order = np.random.default_rng(0).permutation(len(paths))
        for pack in np.array_split(order, max(1, len(paths) // size)):
            answered = pipe.run([paths[n] for n in pack], batch_size=args.batch_size, pack=True)
            for n, result in zip(pack, answered, strict=True):
                results[n] = result
    else:
        results = pipe.run(paths, batch_size=args.batch_size)
    out = {"model": str(args.model), "images": len(paths), **_scores([r.get("label") for r in results], truth),
           "errors": sum(1 for r in results if "error" in r)}  # fmt: skip
    if args.pack:
        out["pack"] = args.pack
        out["packs_answered_alone"] = sum(r.get("pack") == 0 for r in results)  # images, in packs under 16
        out |= {f"{k}_alone": v for k, v in _scores([r.get("image_label") for r in results], truth).items()}
    print(json.dumps(out))
    return 0


def _scores(pred: list[str | None], truth: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes the truth holds."""
    f1s = []
    for label in sorted(set(truth)):
        tp = sum(p == label and t == label for p, t in zip(pred, truth, strict=True))
        fp = sum(p == label and t != label for p, t in zip(pred, truth, strict=True))
        fn = sum(p != label and t == label for p, t in zip(pred, truth, strict=True))
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    acc = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))
    return {"accuracy": acc, "macro_f1": float(np.mean(f1s))}
