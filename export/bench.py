"""kcdp-bench latency: the same stages timed on PyTorch eager, ONNX fp32 and ONNX int8.

    kcdp-bench latency --model EXPORT [--ckpt CKPT] [--int8 EXPORT_INT8] --images DIR

Per engine and batch size (1 and 8): p50/p95 per stage in ms per image (a batched stage's time is
split evenly over its images) and images/s over the engine's own timed calls. The engines take
turns batch by batch, so on a shared machine each sees the same background load. Cold start is process start to
the first printed result of a fresh `kcdp-infer --batch-size 1` over the images (or the eager twin),
peak memory that process's own VmHWM, so one engine's figures never include the other's libraries. A plot of
the per-stage p50 goes to benchmarks/figures/, a table with command, machine and date is appended
to benchmarks/RESULTS.md.

The ONNX engines run with the knowledge memo off (every stage computed for every image); the row
"onnx-fp32+memo" is the steady state of a served model, where k is memoised per retrieved caption.
In every engine the parser keeps TripletParser's in-process cache, so a caption seen before parses
for free; spaCy's first load is in the warm-up (and in the cold start).
It lives in kcdp_export (not the torch-free runtime) because the eager engine needs torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kcdp_core.extras import names_missing_extra
from kcdp_core.recorded_paths import with_path_variables
from kcdp_runtime.cli import IMAGE_SUFFIXES
from kcdp_runtime.manifest import ModelError
from kcdp_runtime.pipeline import STAGES, Pipeline

RESULTS = Path("benchmarks/RESULTS.md")
FIGURES = Path("benchmarks/figures")


# -- the PyTorch eager twin of kcdp_runtime.Pipeline --------------------------------------------------
class EagerPipeline:
    """The runtime's stages with the torch modules: ImageEncoder, TextEncoder, KCDPModel."""

    def __init__(self, ckpt: str | Path, parser_bank_triplets: bool = False):
        import torch

        from kcdp_core.knowledge.caption_bank import CaptionBank
        from kcdp_core.model.kcdp import KCDPModel

        self.torch = torch
        self.model = KCDPModel.from_pretrained(_checkpoint_dir(Path(ckpt))).eval()
        self.config = self.model.config
        self.labels = tuple(self.model.labels)
        kc = self.config.knowledge
        if (
            kc.captioner != "retrieval"
            or self.model.image_encoder is None
            or self.model.caption_bank_dir is None
        ):
            raise SystemExit("kcdp-bench: the eager engine covers the retrieval captioner (mini/tiny) only")
        self.bank = CaptionBank.load(self.model.caption_bank_dir)
        self.size = int(self.config.foundation.image_size)
        self.top_k = kc.retrieval_top_k
        self.max_triplets = kc.max_triplets
        self.use_caption = getattr(kc, "use_caption", True)
        self.use_triplets = getattr(kc, "use_triplets", True)
        self._parser: Any = None

    @property
    def parser(self) -> Any:
        if self._parser is None:
            from kcdp_core.knowledge.triplets import TripletParser

            self._parser = TripletParser(self.config.knowledge.parser_model)
        return self._parser

    def run(self, images: Sequence[str], batch_size: int = 8) -> list[dict[str, Any]]:
        out = []
        for start in range(0, len(images), batch_size):
            out.extend(self._batch(list(images[start : start + batch_size])))
        return out

    def _batch(self, paths: list[str]) -> list[dict[str, Any]]:
        from kcdp_core.images import ImageError, load_image, preprocess
        from kcdp_core.knowledge.assemble import assemble_knowledge
        from kcdp_core.knowledge.text_encoder import triplet_text

        torch = self.torch
        lat: list[dict[str, float]] = [{} for _ in paths]
        pixels, ok, errors = [], [], {}
        for i, path in enumerate(paths):
            t0 = time.perf_counter()
            try:
                pixels.append(preprocess(load_image(path), self.size))
                ok.append(i)
            except ImageError as exc:
                errors[i] = str(exc)
            lat[i]["preprocess"] = _ms(t0)
        n = max(1, len(ok))
        results: list[dict[str, Any]] = [
            {"image": p, "error": errors[i]} for i, p in enumerate(paths) if i in errors
        ]
        if not ok:
            return results
        with torch.inference_mode():
            t0 = time.perf_counter()
            x = torch.from_numpy(np.stack(pixels))
            emb_t = self.model.image_encoder(x)
            idx, _ = self.bank.search(emb_t.numpy(), self.top_k)
            captions = [". ".join(self.bank.captions[j] for j in row) for row in idx]
            _share(lat, ok, "caption", _ms(t0) / n)
            t0 = time.perf_counter()
            trips = self.parser.parse_many(captions) if self.use_triplets else [[] for _ in captions]
            trips = [list(t)[: self.max_triplets] for t in trips]
            _share(lat, ok, "parse", _ms(t0) / n)
            t0 = time.perf_counter()
            texts = [c if self.use_caption else "" for c in captions] + [
                triplet_text(t) for ts in trips for t in ts
            ]
            states, masks = (a.numpy() for a in self.model.text_encoder.token_states(texts))
            _share(lat, ok, "text_encoder", _ms(t0) / n)
            t0 = time.perf_counter()
            ks, kms, offset = [], [], len(captions)
            for i, ts in enumerate(trips):
                k, m = assemble_knowledge(
                    states[i], masks[i], states[offset : offset + len(ts)], masks[offset : offset + len(ts)]
                )
                offset += len(ts)
                ks.append(k)
                kms.append(m)
            _share(lat, ok, "assemble", _ms(t0) / n)
            t0 = time.perf_counter()
            probs = self.model(
                x, torch.from_numpy(np.stack(ks)), torch.from_numpy(np.stack(kms)), emb_t
            ).probs.numpy()
            _share(lat, ok, "perception", _ms(t0) / n)
        for j, i in enumerate(ok):
            latency = {s: lat[i].get(s, 0.0) for s in STAGES}
            latency["total"] = sum(latency.values())
            results.append({"image": paths[i], "label": self.labels[int(probs[j].argmax())],
                            "scores": dict(zip(self.labels, map(float, probs[j]), strict=True)),
                            "caption": captions[j], "triplets": [list(t) for t in trips[j]], "latency_ms": latency})  # fmt: skip
        order = {p: n for n, p in enumerate(paths)}
        return sorted(results, key=lambda r: order[r["image"]])


def _checkpoint_dir(ckpt: Path) -> Path:
    best = ckpt / "best"
    return best if (best / "config.json").exists() and (best / "model.safetensors").exists() else ckpt


def _share(lat: list[dict[str, float]], ok: list[int], stage: str, ms: float) -> None:
    for i in ok:
        lat[i][stage] = ms


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


# -- measuring -----------------------------------------------------------------------------------------
def find_images(folder: Path, limit: int) -> list[str]:
    found = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise SystemExit(f"kcdp-bench: {folder}: no images")
    return found[:limit]


def time_engines(
    engines: dict[str, Any], images: list[str], batch: int, count: int
) -> dict[str, dict[str, Any]]:
    """Warm up each engine, then time `count` images per engine in batches of `batch`, the engines
    taking turns batch by batch: on a shared machine each one sees the same background load."""
    for engine in engines.values():
        engine.run(images[: max(batch, 2)], batch_size=batch)  # warm-up: allocations, spaCy, caches
    stream = [images[i % len(images)] for i in range(count)]
    per_image: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    wall = dict.fromkeys(engines, 0.0)
    for start in range(0, len(stream), batch):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            results = engine.run(stream[start : start + batch], batch_size=batch)
            wall[name] += time.perf_counter() - t0
            for r in results:
                if "error" in r:
                    raise SystemExit(f"kcdp-bench: {r['error']}")
                per_image[name].append(r["latency_ms"])
    out = {}
    for name, lats in per_image.items():
        stats = {}
        for stage in (*STAGES, "total"):
            values = np.array([lat[stage] for lat in lats])
            stats[stage] = {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}
        out[name] = {
            "batch": batch,
            "images": len(lats),
            "images_per_s": len(lats) / wall[name],
            "stages": stats,
        }
    return out


# Runs a module as __main__ and reports the process's own peak RSS (VmHWM) at exit. ru_maxrss of a
# child is useless here: Linux carries the parent's high-water mark across fork + exec.
_PEAK_WRAPPER = """
import atexit, runpy, sys
def _peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            sys.stderr.write('KCDP_PEAK_RSS_KB=' + line.split()[1] + chr(10))
atexit.register(_peak)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def cold_start(module_args: list[str], repeats: int = 3) -> dict[str, Any]:
    """`python -m MODULE ARGS` in fresh processes: start -> first result line (s, median of repeats)
    and the peak RSS (MiB) of the process itself."""
    cmd = [sys.executable, "-c", _PEAK_WRAPPER, *module_args]
    firsts, peaks = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        first = time.perf_counter() - t0
        proc.stdout.read()
        err = proc.stderr.read()
        proc.wait()
        if not line.strip():
            tail = err.strip().splitlines()[-1:] or [""]
            print(f"kcdp-bench: cold start: no result (exit {proc.returncode}): {tail[0]}", file=sys.stderr)
            return {"error": f"exit {proc.returncode}: {tail[0]}"}
        firsts.append(first)
        peak = [int(x.split("=")[1]) for x in err.splitlines() if x.startswith("KCDP_PEAK_RSS_KB=")]
        if peak:
            peaks.append(peak[-1] / 1024.0)
    return {
        "first_result_s": statistics.median(firsts),
        "peak_rss_mib": max(peaks) if peaks else float("nan"),
    }


def int8_export(model: Path, ckpt: Path | None, images: Path, work: Path) -> tuple[Path, str]:
    """An int8 export to compare: kcdp-export's calibrated int8 when a checkpoint is given, else
    onnxruntime's dynamic int8 of the fp32 graphs (weights only, no calibration)."""
    out = work / "int8"
    if ckpt is not None:
        from kcdp_export.exporter import ExportOptions, export_checkpoint

        export_checkpoint(ckpt, out, ExportOptions(precision="int8", calibration=images, overwrite=True))
        return out, "int8 (kcdp-export, calibrated)"
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from kcdp_runtime.manifest import sha256

    shutil.copytree(model, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for spec in manifest["graphs"].values():
        path = out / spec["file"]
        quantize_dynamic(str(path), str(path), weight_type=QuantType.QInt8)
    manifest["precision"] = "int8"
    manifest["files"] = {rel: sha256(out / rel) for rel in manifest.get("files", {}) if (out / rel).exists()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out, "int8 (dynamic, made by kcdp-bench)"


def machine() -> str:
    model, cores = platform.processor() or "?", os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "CPU(s)":
                cores = int(value.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    import onnxruntime

    return (
        f"{model}, {cores} cores, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}"
    )


# -- reporting -----------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"### Latency: `{report['preset']}` export, {report['date']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Images: {report['images']} from {report['images_dir']}; ms per image, p50 / p95; ONNX rows without the knowledge memo "
        "unless marked +memo.",
        "",
        "| engine | batch | " + " | ".join(STAGES) + " | total | images/s |",
        "|---|---:|" + "---:|" * (len(STAGES) + 2),
    ]
    for name, engine in report["engines"].items():
        for run in engine["runs"]:
            cells = [
                f"{run['stages'][s]['p50']:.2f} / {run['stages'][s]['p95']:.2f}" for s in (*STAGES, "total")
            ]
            lines.append(
                f"| {name} | {run['batch']} | " + " | ".join(cells) + f" | {run['images_per_s']:.1f} |"
            )
    lines.append("")
    for name, engine in report["engines"].items():
        if "cold" in engine and "error" in engine["cold"]:
            lines.append(f"- {name}: cold start failed ({engine['cold']['error']})")
        elif "cold" in engine:
            cold = engine["cold"]
            lines.append(f"- {name}: cold start {cold['first_result_s']:.2f} s (process start to first result, median of "
                         f"{report['cold_repeats']}), peak RSS {cold['peak_rss_mib']:.0f} MiB (batch 1, all images)")  # fmt: skip
        if engine.get("note"):
            lines.append(f"- {name}: {engine['note']}")
    for key, value in report.get("speedups", {}).items():
        lines.append(f"- speed-up, total p50 at batch 1, {key}: {value:.2f}x")
    if report.get("load_average"):
        lines.append(f"- load average at the end (1, 5, 15 min): {', '.join(report['load_average'])}")
    if report.get("figure"):
        lines.append(f"- figure: {report['figure']}")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    batches = sorted({run["batch"] for e in report["engines"].values() for run in e["runs"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    names = list(report["engines"])
    width = 0.8 / max(1, len(names))
    for ax, batch in zip(axes[0], batches, strict=True):
        for n, name in enumerate(names):
            run = next((r for r in report["engines"][name]["runs"] if r["batch"] == batch), None)
            if run is None:
                continue
            values = [max(run["stages"][s]["p50"], 1e-3) for s in STAGES]
            ax.bar(np.arange(len(STAGES)) + n * width, values, width, label=name)
        ax.set_xticks(np.arange(len(STAGES)) + width * (len(names) - 1) / 2, STAGES, rotation=30)
        ax.set_yscale("log")
        ax.set_ylabel("ms per image (p50)")
        ax.set_title(f"{report['preset']}: batch {batch}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- commands ------------------------------------------------------------------------------------------
def latency(args: argparse.Namespace) -> int:
    from kcdp_runtime.sessions import SessionConfig

    model = Path(args.model)
    images = find_images(Path(args.images), args.limit)
    config = SessionConfig(intra_op_threads=args.threads)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    fp32 = Pipeline.from_pretrained(model, session_config=config, knowledge_cache_size=0, parse_cache=False)
    main_name = f"onnx-{fp32.manifest.precision}"  # --model may itself be the int8 export
    if main_name == "onnx-int8":
        args.no_int8 = True  # it is the int8 engine
    report: dict[str, Any] = {
        "command": with_path_variables(
            shlex.join(["kcdp-bench", *(sys.argv[1:] if args.argv is None else args.argv)])
        ),
        "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "preset": fp32.manifest.preset,
        "images": len(images),
        "images_dir": with_path_variables(str(args.images)),
        "cold_repeats": args.cold_repeats,
        "engines": {},
    }
    engines: dict[str, tuple[Any, str]] = {main_name: (fp32, "")}
    if not args.no_memo:
        memo = Pipeline.from_pretrained(model, session_config=config)
        engines[f"{main_name}+memo"] = (memo, "")
    if args.baseline:
        # "Before": an earlier export on dynamic-batch sessions, timed in turns with the others.
        base_config = SessionConfig(intra_op_threads=args.threads, batch_one=False)
        engines["baseline"] = (
            Pipeline.from_pretrained(
                args.baseline, session_config=base_config, knowledge_cache_size=0, parse_cache=False
            ),
            f"{args.baseline}, dynamic-batch sessions (no batch-1 specialisation)",
        )
    work = Path(tempfile.mkdtemp(prefix="kcdp-bench-"))
    try:
        if not args.no_int8:
            if args.int8:
                int8_dir, note = Path(args.int8), "int8 (given export)"
            else:
                int8_dir, note = int8_export(
                    model, Path(args.ckpt) if args.ckpt else None, Path(args.images), work
                )
            engines["onnx-int8"] = (
                Pipeline.from_pretrained(
                    int8_dir, session_config=config, knowledge_cache_size=0, parse_cache=False
                ),
                note,
            )
        for name, (_, note) in engines.items():
            report["engines"][name] = {"runs": [], "note": note}
        for batch in batches:
            timed = time_engines(
                {n: e for n, (e, _) in engines.items()}, images, batch, max(args.count, batch * 4)
            )
            for name, run in timed.items():
                report["engines"][name]["runs"].append(run)
                _say(name, run)
        if args.ckpt:
            # PyTorch in a process of its own: next to onnxruntime's thread pools torch ran up to 4x
            # slower here, which would flatter the ONNX engines.
            cmd = [sys.executable, "-m", "kcdp_export.bench", "_eager-time", "--ckpt", args.ckpt,
                   "--batch-sizes", args.batch_sizes, "--count", str(args.count), "--threads", str(args.threads), *images]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"kcdp-bench: eager timing failed: {proc.stderr.strip().splitlines()[-1:]}")
            runs = json.loads(proc.stdout.strip().splitlines()[-1])
            report["engines"]["torch-eager"] = {"runs": runs, "note": "timed in its own process"}
            for run in runs:
                _say("torch-eager", run)
        # cold start + peak memory in fresh processes, one engine each
        # batch 1 so that the first image is printed as soon as it is classified
        infer = ["kcdp_runtime.cli", *images, "--json", "--quiet", "--batch-size", "1"]
        if args.threads:
            infer += ["--threads", str(args.threads)]
        report["engines"][main_name]["cold"] = cold_start([*infer, "--model", str(model)], args.cold_repeats)
        if args.baseline:
            report["engines"]["baseline"]["cold"] = cold_start(
                [*infer, "--model", str(args.baseline)], args.cold_repeats
            )
        if not args.no_int8:
            report["engines"]["onnx-int8"]["cold"] = cold_start(
                [*infer, "--model", str(int8_dir)], args.cold_repeats
            )
        if args.ckpt:
            eager = ["kcdp_export.bench", "_eager-infer", "--ckpt", args.ckpt, *images]
            report["engines"]["torch-eager"]["cold"] = cold_start(eager, args.cold_repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = {
        n: e["runs"][0]["stages"]["total"]["p50"]
        for n, e in report["engines"].items()
        if e["runs"][0]["batch"] == 1
    }
    report["speedups"] = {}
    for reference in ("torch-eager", "baseline"):
        if reference in total:
            report["speedups"].update(
                {f"{n} vs {reference}": total[reference] / total[n] for n in total
                 if n not in ("torch-eager", "baseline") and total[n] > 0}
            )  # fmt: skip
    report["load_average"] = (
        open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else None
    )
    figure = Path(args.figure) if args.figure else FIGURES / f"latency_{report['preset']}.png"
    saved = plot(report, figure)
    report["figure"] = str(saved) if saved else None
    text = markdown(report)
    if args.results != "-":
        results = Path(args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        if not results.exists():
            results.write_text("# Benchmark results\n\nMeasured tables, appended by kcdp-bench.\n\n")
        with results.open("a") as fh:
            fh.write("\n" + text)
    print(json.dumps(report, indent=1) if args.json else text)
    return 0


def _say(name: str, run: dict[str, Any]) -> None:
    print(f"kcdp-bench: {name} batch {run['batch']}: total p50 {run['stages']['total']['p50']:.2f} ms, "
          f"{run['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)  # fmt: skip


def eager_time(args: argparse.Namespace) -> int:
    """The eager engine timed in a process without onnxruntime; prints the runs as one JSON line."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = EagerPipeline(args.ckpt)
    runs = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        runs.append(
            time_engines({"torch-eager": engine}, args.images, batch, max(args.count, batch * 4))[
                "torch-eager"
            ]
        )
    print(json.dumps(runs))
    return 0


def eager_infer(args: argparse.Namespace) -> int:
    """The eager engine as a process of its own, for cold start and peak memory (JSON lines)."""
    engine = EagerPipeline(args.ckpt)
    for path in args.images:  # one by one, like the ONNX cold start (kcdp-infer --batch-size 1)
        for r in engine.run([path], batch_size=1):
            print(json.dumps(r), flush=True)
    return 0


def accuracy(args: argparse.Namespace) -> int:
    """Accuracy and macro-F1 of an export on DIR/<label>/<image> (the deployed pipeline, end to end)."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kcdp-bench", description="Latency and accuracy benchmarks of kcdp exports."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    lat = sub.add_parser("latency", help="per-stage latency: PyTorch eager vs ONNX fp32 vs ONNX int8")
    lat.add_argument("--model", required=True, help="fp32 export folder")
    lat.add_argument("--ckpt", help="the checkpoint it came from (enables torch-eager and calibrated int8)")
    lat.add_argument("--int8", help="an int8 export folder to use instead of making one")
    lat.add_argument("--no-int8", action="store_true", help="skip the int8 engine")
    lat.add_argument("--no-memo", action="store_true", help="skip the +memo engine")
    lat.add_argument("--baseline", help="an earlier export timed in turns with the others (before/after)")
    lat.add_argument("--images", required=True, help="folder of images (searched recursively)")
    lat.add_argument("--limit", type=int, default=64, help="distinct images used")
    lat.add_argument("--count", type=int, default=64, help="images timed per engine and batch size")
    lat.add_argument("--batch-sizes", default="1,8")
    lat.add_argument(
        "--threads", type=int, default=0, help="intra-op threads for onnxruntime and torch (0: default)"
    )
    lat.add_argument("--cold-repeats", type=int, default=3)
    lat.add_argument(
        "--results", default=str(RESULTS), help="markdown file the table is appended to ('-': none)"
    )
    lat.add_argument("--figure", help=f"plot path (default {FIGURES}/latency_<preset>.png)")
    lat.add_argument("--json", action="store_true", help="print the full report as JSON")
    acc = sub.add_parser("accuracy", help="accuracy and macro-F1 of an export on DIR/<label>/<image>")
    acc.add_argument("--model", required=True)
    acc.add_argument("--data", required=True)
    acc.add_argument("--batch-size", type=int, default=8)
    eager = sub.add_parser("_eager-infer", help=argparse.SUPPRESS)
    eager.add_argument("--ckpt", required=True)
    eager.add_argument("images", nargs="+")
    timing = sub.add_parser("_eager-time", help=argparse.SUPPRESS)
    timing.add_argument("--ckpt", required=True)
    timing.add_argument("--batch-sizes", default="1,8")
    timing.add_argument("--count", type=int, default=64)
    timing.add_argument("--threads", type=int, default=0)
    timing.add_argument("images", nargs="+")
    return parser


@names_missing_extra("kcdp-bench")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if args.command == "latency":
            return latency(args)
        if args.command == "accuracy":
            return accuracy(args)
    except ModelError as exc:  # a model folder the runtime cannot load: what to do, not a traceback
        print(f"kcdp-bench: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "_eager-time":
        return eager_time(args)
    return eager_infer(args)


if __name__ == "__main__":
    sys.exit(main())
