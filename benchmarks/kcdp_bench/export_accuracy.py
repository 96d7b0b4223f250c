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
    results = pipe.run(paths, batch_size=args.batch_size)
    pred = [r.get("label") for r in results]
    acc = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))
    f1s = []
    for label in sorted(set(truth)):
        tp = sum(p == label and t == label for p, t in zip(pred, truth, strict=True))
        fp = sum(p == label and t != label for p, t in zip(pred, truth, strict=True))
        fn = sum(p != label and t == label for p, t in zip(pred, truth, strict=True))
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    out = {"model": str(args.model), "images": len(paths), "accuracy": acc, "macro_f1": float(np.mean(f1s)),
           "errors": sum(1 for r in results if "error" in r)}  # fmt: skip
    print(json.dumps(out))
    return 0
