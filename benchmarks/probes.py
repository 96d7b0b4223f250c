"""Linear probes on frozen `mini` foundations: which input of KCDP carries expression across styles?

    python benchmarks/probes.py [--data $DATA/emoji] [--avatars $DATA/avatars]
                                [--foundation NAME=DIR[@SIZE] ...] [--per-class 100] [--no-write]

For every benchmark image: the pooled UNet levels KADAP reads (guided by the image's own knowledge
k, LoRA off), the same with its cross-attention maps, pool(k), and the aligned image encoder's
embedding. A logistic regression (C = 0.1, fixed in advance, never tuned on a target) is fitted on
the source and scored on the target, features standardised on the source or per style (each style
by its own statistics, as unlabelled target images allow). Tasks: the four emoji cross-style tasks
and, with --avatars, the five leave-one-avatar-style-out tasks (source: the 15 emoji styles + the
other four avatar styles). Several foundations (e.g. the previous and the new one) side by side.
Written into benchmarks/RESULTS.md between the accuracy:probes markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import TASKS, machine, publish, recorded_command  # noqa: E402

FEATURES = {
    "pooled UNet levels": ("unet",),
    "UNet levels + attention maps": ("unet", "maps"),
    "pool(k) (knowledge)": ("k",),
    "image encoder embedding": ("emb",),
    "all": ("unet", "maps", "k", "emb"),
}
AVATAR_STYLES = ("avataaars", "open-peeps", "fun-emoji", "big-smile", "moods")
COMMITTED = "kcdp:foundation/mini"


def model_for(foundation: str, image_size: int | None = None, timestep: int | None = None):
    """The frozen mini model with every foundation component taken from `foundation`.

    `image_size` runs the same weights on larger images (every part is convolutional or attends over
    positions): the resolution question of issue 13, asked before paying for a pretraining run.
    `timestep` reads the UNet at another diffusion step (clean latents, as KADAP does at t=1).
    """
    from kcdp_core.config import mini
    from kcdp_core.model.kcdp import KCDPModel

    config = mini().with_foundation(foundation)
    if image_size:
        config.foundation.image_size = image_size
    if timestep is not None:
        config.perception.timestep = timestep
    model = KCDPModel.from_config(config).eval()
    # the retrieval captioner feeds the image encoder at its config's size
    model.image_encoder.config.image_size = config.foundation.image_size
    return model


def _subset(folder: Path, per_class: int | None, work: Path) -> Path:
    """A CSV of the first `per_class` images of every class folder (all when None)."""
    if per_class is None:
        return folder
    rows = ["path,label"]
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(label_dir.glob("*.png"), key=lambda p: p.name)[:per_class]
        rows += [f"{f.resolve()},{label_dir.name}" for f in files]
    path = work / f"{folder.name}.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def extract(model, folders: dict[str, Path]) -> dict[str, dict[str, np.ndarray]]:
    """Per style: unet [N, C], maps [N, M], k [N, D], emb [N, E], y [N]."""
    import torch

    from kcdp_core.model.head import pool_knowledge
    from kcdp_core.train.evaluate import load_dataset

    channels = list(reversed(model.kadap.unet.config.block_out_channels))
    out = {}
    for style, folder in folders.items():
        ds = load_dataset(model, folder)
        pixels = torch.stack([ds.views(i)["pixels"] for i in range(len(ds))])
        unet, maps = [], []
        with torch.no_grad():
            for start in range(0, len(ds), 128):
                sl = slice(start, start + 128)
                levels = model.kadap(pixels[sl], ds.k[sl], ds.k_mask[sl])
                pooled = [
                    (h.mean(dim=(2, 3)), channels[i]) for h, i in zip(levels, model.kadap.levels, strict=True)
                ]
                unet.append(torch.cat([p[:, :c] for p, c in pooled], 1))
                maps.append(torch.cat([p[:, c:] for p, c in pooled], 1))
            out[style] = {
                "unet": torch.cat(unet).numpy(),
                "maps": torch.cat(maps).numpy(),
                "k": pool_knowledge(ds.k, ds.k_mask).numpy(),
                "emb": model.image_encoder(pixels).numpy(),
                "y": np.array([r.label for r in ds.records]),
            }
        print(f"  {style}: {len(ds)} images", file=sys.stderr)
    return out


def _weights_stamp(foundation: str) -> list[tuple[str, int, int]]:
    """Size and mtime of the foundation's weight files: a cache key that changes when a folder
    (e.g. kcdp:foundation/mini) is given new weights under the same name."""
    from kcdp_core.config import Source
    from kcdp_core.sources import local_folder

    folder = local_folder(Source(foundation))
    files = sorted(folder.rglob("*.safetensors")) if folder else []
    return [(str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def cached_features(
    foundation: str,
    folders: dict[str, Path],
    work: Path,
    image_size: int | None = None,
    timestep: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """extract(), kept in `work` per foundation and image set (a rerun adding a foundation reuses the rest)."""
    import hashlib

    spec = (
        foundation,
        _weights_stamp(foundation),
        sorted((k, str(v)) for k, v in folders.items()),
        image_size,
    )
    key = hashlib.sha256(repr(spec if timestep is None else (*spec, timestep)).encode())
    path = work / f"features-{key.hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            flat = {k: z[k] for k in z.files}
        out: dict[str, dict[str, np.ndarray]] = {}
        for k, v in flat.items():
            style, name = k.split("|")
            out.setdefault(style, {})[name] = v
        return out
    feats = extract(model_for(foundation, image_size, timestep), folders)
    np.savez(path, **{f"{s}|{n}": v for s, d in feats.items() for n, v in d.items()})
    return feats


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
    # macro-F1 over the target's own classes (a style that cannot show disgust is not scored on it)
    return float((pred == yt).mean()), float(f1_score(yt, pred, labels=sorted(set(yt)), average="macro"))


def within_style(feats: dict, style: str, keys: tuple[str, ...]) -> float:
    """Macro-F1 of 5-fold cross-validated probes inside one style: can the feature separate its
    expressions at all, before any change of style? (the ceiling for the cross-style probes)"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import cross_val_predict

    x = np.concatenate([feats[style][k] for k in keys], 1)
    x, y = (x - x.mean(0)) / (x.std(0) + 1e-6), feats[style]["y"]
    pred = cross_val_predict(LogisticRegression(C=0.1, max_iter=3000), x, y, cv=5)
    return float(f1_score(y, pred, average="macro"))


def task_lists(data: Path, avatars: Path | None) -> dict[str, list[tuple[list[str], list[str]]]]:
    tasks = {
        "emoji tasks": [(styles_of(data, s), styles_of(data, t)) for s, t in (x.split(":") for x in TASKS)]
    }
    if avatars is not None:
        emoji = sorted(p.name for p in (data / "domains").iterdir() if p.is_dir())
        tasks["avatar leave-one-style-out"] = [
            (emoji + [s for s in AVATAR_STYLES if s != held], [held]) for held in AVATAR_STYLES
        ]
    return tasks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/emoji", help="kcdp-data emoji output")
    p.add_argument("--avatars", default=None, help="kcdp-data avatars output: adds the avatar tasks")
    p.add_argument(
        "--foundation",
        action="append",
        default=None,
        help=f"NAME=DIR[@SIZE][^T] (repeatable; default committed={COMMITTED}); @SIZE runs it on SIZE px "
        "images, ^T reads its UNet at diffusion step T instead of the preset's",
    )
    p.add_argument("--per-class", type=int, default=100, help="avatar images per class and style (100)")
    p.add_argument("--work", default="runs/probes", help="scratch folder for subset manifests")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    data, avatars = Path(args.data), Path(args.avatars) if args.avatars else None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folders = {p.name: p for p in sorted((data / "domains").iterdir()) if p.is_dir()}
    if avatars is not None:
        folders |= {s: _subset(avatars / "domains" / s, args.per_class, work) for s in AVATAR_STYLES}
    foundations = dict(f.split("=", 1) for f in (args.foundation or [f"committed={COMMITTED}"]))
    groups = task_lists(data, avatars)

    results: dict[tuple[str, str, str, bool], tuple[float, float]] = {}
    inside: dict[tuple[str, str], list[float]] = {}  # (foundation, feature) -> per avatar style
    for name, folder in foundations.items():
        print(f"foundation {name}: {folder}", file=sys.stderr)
        folder, _, step = folder.partition("^")
        folder, _, size = folder.partition("@")
        feats = cached_features(
            folder, folders, work, int(size) if size else None, int(step) if step else None
        )
        for group, tasks in groups.items():
            for feature, keys in FEATURES.items():
                for per_style in (False, True):
                    scores = [probe(feats, s, t, keys, per_style) for s, t in tasks]
                    results[(name, group, feature, per_style)] = (
                        float(np.mean([a for a, _ in scores])),
                        float(np.mean([f for _, f in scores])),
                    )
        if avatars is not None:
            for feature in ("pooled UNet levels", "image encoder embedding"):
                inside[(name, feature)] = [within_style(feats, s, FEATURES[feature]) for s in AVATAR_STYLES]

    command = recorded_command("probes.py")
    lines = [
        "### Probes: logistic regression on frozen inputs of KCDP (`mini` foundations, no training)",
        "",
        f"Command: `{command}` (avatars: {args.per_class} per class and style)  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {machine()}  ",
        "Cells: mean target accuracy / macro-F1 over the tasks; C = 0.1 fixed beforehand. Foundations: "
        + ", ".join(
            f"{n} = `{Path(f).name if not f.startswith('kcdp:') else f}`" for n, f in foundations.items()
        ),
        "",
    ]
    columns = [(n, g) for g in groups for n in foundations]
    lines += [
        "| features | standardised | " + " | ".join(f"{g}: {n}" for n, g in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for feature in FEATURES:
        for per_style in (False, True):
            cells = ["{:.3f} / {:.3f}".format(*results[(n, g, feature, per_style)]) for n, g in columns]
            norm = "per style" if per_style else "on the source"
            lines.append(f"| {feature} | {norm} | " + " | ".join(cells) + " |")
    ratios = []
    for n, g in columns:
        unet = results[(n, g, "pooled UNet levels", True)][1]
        emb = results[(n, g, "image encoder embedding", True)][1]
        ratios.append(f"{unet / emb:.0%}")
    lines.append("| UNet-level macro-F1 / image-encoder macro-F1 | per style | " + " | ".join(ratios) + " |")
    if inside:
        lines += [
            "",
            "Inside each avatar style (5-fold cross-validated probe, macro-F1; no change of style):",
            "",
            "| foundation | features | " + " | ".join(AVATAR_STYLES) + " | mean |",
            "|---|---|" + "---:|" * (len(AVATAR_STYLES) + 1),
        ]
        for (name, feature), scores in inside.items():
            cells = " | ".join(f"{v:.3f}" for v in [*scores, float(np.mean(scores))])
            lines.append(f"| {name} | {feature} | {cells} |")
    body = "\n".join(lines) + "\n"
    publish("probes", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
