"""Linear probes on the frozen `mini` foundation: which input of KCDP carries expression across styles?

    python benchmarks/probes.py [--data /work/data/emoji] [--no-write]

For every image of the 15 benchmark styles: the pooled UNet levels KADAP reads (guided by the
image's own knowledge k, LoRA off), pool(k), and the aligned image encoder's embedding. A logistic
regression (C = 0.1, fixed in advance, never tuned on a target) is fitted on the source family and
scored on the target family, with features standardised on the source or per style (each style by
its own statistics, as unlabelled target images allow). Rows: the benchmark's four tasks and the
three -> fluent tasks used to choose the training recipe (fluent is in no benchmark task).
Written into benchmarks/RESULTS.md between the accuracy:probes markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import TASKS, machine, write_section  # noqa: E402

VALIDATION_TASKS = ("glossy:fluent", "flat:fluent", "line:fluent")
FEATURES = {
    "pooled UNet levels": ("unet",),
    "pool(k) (knowledge)": ("k",),
    "image encoder embedding": ("emb",),
    "all three": ("unet", "k", "emb"),
}


def extract(data: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per style: unet [N, C], k [N, D], emb [N, E], y [N] (frozen mini foundation, no training)."""
    import torch

    from kcdp_core.config import mini
    from kcdp_core.model.head import pool_knowledge
    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_core.train.evaluate import load_dataset

    model = KCDPModel.from_config(mini()).eval()
    out = {}
    for style in sorted(p.name for p in (data / "domains").iterdir() if p.is_dir()):
        ds = load_dataset(model, data / "domains" / style)
        pixels = torch.stack([ds.pixels(i) for i in range(len(ds))])
        with torch.no_grad():
            levels = model.kadap(pixels, ds.k, ds.k_mask)
            out[style] = {
                "unet": torch.cat([h.mean(dim=(2, 3)) for h in levels], 1).numpy(),
                "k": pool_knowledge(ds.k, ds.k_mask).numpy(),
                "emb": model.image_encoder(pixels).numpy(),
                "y": np.array([r.label for r in ds.records]),
            }
    return out


def styles_of(data: Path, fam: str) -> list[str]:
    """The styles of a family folder (its images are copies of domains/<style>/...)."""
    return sorted({p.stem.rsplit("_", 1)[0] for p in (data / "families" / fam).rglob("*.png")})


def probe(
    feats: dict, src: list[str], tgt: list[str], keys: tuple[str, ...], per_style: bool
) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    def stack(styles: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs = []
        for s in styles:
            x = np.concatenate([feats[s][k] for k in keys], 1)
            xs.append((x - x.mean(0)) / (x.std(0) + 1e-6) if per_style else x)
        return np.concatenate(xs), np.concatenate([feats[s]["y"] for s in styles])

    xs, ys = stack(src)
    xt, yt = stack(tgt)
    if not per_style:
        mu, sd = xs.mean(0), xs.std(0) + 1e-6
        xs, xt = (xs - mu) / sd, (xt - mu) / sd
    pred = LogisticRegression(C=0.1, max_iter=3000).fit(xs, ys).predict(xt)
    return float((pred == yt).mean()), float(f1_score(yt, pred, average="macro"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/work/data/emoji")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    data = Path(args.data)
    feats = extract(data)
    groups = {"benchmark tasks": TASKS, "validation tasks (-> fluent)": VALIDATION_TASKS}
    lines = [
        "### Probes: logistic regression on frozen inputs of KCDP (`mini` foundation, no training)",
        "",
        "Command: `python benchmarks/probes.py`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {machine()}  ",
        "Cells: mean target accuracy / macro-F1 over the tasks; C = 0.1 fixed beforehand.",
        "",
        "| features | standardised | " + " | ".join(groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    for name, keys in FEATURES.items():
        for per_style in (False, True):
            cells = []
            for tasks in groups.values():
                scores = [
                    probe(feats, styles_of(data, s), styles_of(data, t), keys, per_style)
                    for s, t in (task.split(":") for task in tasks)
                ]
                cells.append(f"{np.mean([a for a, _ in scores]):.3f} / {np.mean([f for _, f in scores]):.3f}")
            norm = "per style" if per_style else "on the source"
            lines.append(f"| {name} | {norm} | " + " | ".join(cells) + " |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section("probes", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
