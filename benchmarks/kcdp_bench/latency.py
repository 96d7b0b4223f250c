"""kcdp-bench latency: the runtime's Pipeline timed stage by stage on ONNX fp32, ONNX int8 and PyTorch eager.

    kcdp-bench latency --model EXPORT [--ckpt CKPT] [--int8 EXPORT_INT8] --images DIR

Every engine is the runtime's own Pipeline: an export on onnxruntime sessions, or (--ckpt) the
checkpoint on PyTorch sessions, as `kcdp-infer --model CKPT` runs it; so the engines differ in how
the graphs run and nothing else. Per engine and batch size (1 and 8): p50/p95 per stage in ms per
image (a batched stage's time is split evenly over its images) and images/s over the engine's own
timed calls. The engines take turns batch by batch, so on a shared machine each sees the same
background load. Cold start is process start to the first printed result of a fresh
`kcdp-infer --batch-size 1` over the images, peak memory that process's own VmHWM, so one engine's
figures never include the other's libraries. A plot of the per-stage p50 goes to
benchmarks/figures/, a table with command, machine and date is appended to benchmarks/RESULTS.md.

The engines run with the knowledge memo off (every stage computed for every image); the row
"onnx-fp32+memo" is the steady state of a served model, where k is memoised per retrieved caption.
In every engine the parser keeps TripletParser's in-process cache, so a caption seen before parses
for free; spaCy's first load is in the warm-up (and in the cold start).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kcdp_bench.report import machine, markdown, plot
from kcdp_core.portable.constants import IMAGE_SUFFIXES
from kcdp_core.recorded_paths import with_path_variables
from kcdp_runtime.pipeline import STAGES, Pipeline
from kcdp_runtime.sessions import SessionConfig

RESULTS = Path("benchmarks/RESULTS.md")
FIGURES = Path("benchmarks/figures")
EAGER = "torch-eager"


def find_images(folder: Path, limit: int) -> list[str]:
    found = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise SystemExit(f"kcdp-bench: {folder}: no images")
    return found[:limit]


def eager_pipeline(ckpt: str | Path, threads: int = 0) -> Pipeline:
    """The checkpoint on PyTorch sessions, opened the way kcdp-infer opens it, knowledge memo off."""
    from kcdp_runtime.cli import checkpoint_opener

    opener = checkpoint_opener()
    if opener is None:
        raise SystemExit("kcdp-bench: --ckpt runs the checkpoint in PyTorch: pip install 'kcdp[train]'")
    config = SessionConfig(intra_op_threads=threads)
    return opener(ckpt, session_config=config, parse_cache=False, knowledge_cache_size=0)


def time_engines(
    engines: dict[str, Pipeline], images: list[str], batch: int, count: int
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

    from kcdp_runtime.manifest import MANIFEST, load_manifest, sha256

    shutil.copytree(model, out)
    manifest = load_manifest(out, verify="none")
    for spec in manifest.graphs.values():
        if spec.file:
            quantize_dynamic(str(out / spec.file), str(out / spec.file), weight_type=QuantType.QInt8)
            spec.external_data = None  # quantize_dynamic writes the weights into the graph file
    manifest.precision = "int8"
    manifest.files = {rel: sha256(out / rel) for rel in manifest.files if (out / rel).exists()}
    (out / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return out, "int8 (dynamic, made by kcdp-bench)"


def latency(args: argparse.Namespace) -> int:
    model = Path(args.model)
    images = find_images(Path(args.images), args.limit)
    config = SessionConfig(intra_op_threads=args.threads)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    main = Pipeline.from_pretrained(model, session_config=config, knowledge_cache_size=0, parse_cache=False)
    main_name = f"onnx-{main.manifest.precision}"  # --model may itself be the int8 export
    if main_name == "onnx-int8":
        args.no_int8 = True  # it is the int8 engine
    report: dict[str, Any] = {
        "command": with_path_variables(
            shlex.join(["kcdp-bench", *(sys.argv[1:] if args.argv is None else args.argv)])
        ),
        "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "preset": main.manifest.preset,
        "images": len(images),
        "images_dir": with_path_variables(str(args.images)),
        "cold_repeats": args.cold_repeats,
        "engines": {},
    }
    # name -> (pipeline, note, model folder for the cold start)
    engines: dict[str, tuple[Pipeline, str, Path]] = {main_name: (main, "", model)}
    if not args.no_memo:
        engines[f"{main_name}+memo"] = (Pipeline.from_pretrained(model, session_config=config), "", model)
    if args.baseline:
        # "Before": an earlier export on dynamic-batch sessions, timed in turns with the others.
        base_config = SessionConfig(intra_op_threads=args.threads, batch_one=False)
        engines["baseline"] = (
            Pipeline.from_pretrained(
                args.baseline, session_config=base_config, knowledge_cache_size=0, parse_cache=False
            ),
            f"{args.baseline}, dynamic-batch sessions (no batch-1 specialisation)",
            Path(args.baseline),
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
            int8 = Pipeline.from_pretrained(
                int8_dir, session_config=config, knowledge_cache_size=0, parse_cache=False
            )
            engines["onnx-int8"] = (int8, note, int8_dir)
        for name, (_, note, _) in engines.items():
            report["engines"][name] = {"runs": [], "note": note}
        for batch in batches:
            timed = time_engines(
                {n: e for n, (e, _, _) in engines.items()}, images, batch, max(args.count, batch * 4)
            )
            for name, run in timed.items():
                report["engines"][name]["runs"].append(run)
                _say(name, run)
        if args.ckpt:
            report["engines"][EAGER] = {"runs": _eager_runs(args, images), "note": "timed in its own process"}
        # cold start + peak memory in fresh processes, one engine each; batch 1 so that the first
        # image is printed as soon as it is classified
        infer = ["kcdp_runtime.cli", *images, "--json", "--quiet", "--batch-size", "1"]
        if args.threads:
            infer += ["--threads", str(args.threads)]
        cold = {n: folder for n, (_, _, folder) in engines.items() if not n.endswith("+memo")}
        if args.ckpt:
            cold[EAGER] = Path(args.ckpt)  # kcdp-infer --model CKPT: the same stages in PyTorch
        for name, folder in cold.items():
            report["engines"][name]["cold"] = cold_start([*infer, "--model", str(folder)], args.cold_repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["speedups"] = _speedups(report["engines"])
    report["load_average"] = (
        open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else None
    )
    # the plot goes beside the tables: with --results - (a check, not a record) only where --figure says
    default = None if args.results == "-" else FIGURES / f"latency_{report['preset']}.png"
    figure = Path(args.figure) if args.figure else default
    saved = plot(report, figure) if figure else None
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


def _eager_runs(args: argparse.Namespace, images: list[str]) -> list[dict[str, Any]]:
    """The checkpoint's PyTorch engine timed in a process of its own: next to onnxruntime's thread
    pools torch ran up to 4x slower here, which would flatter the ONNX engines."""
    cmd = [sys.executable, "-m", "kcdp_bench.cli", "_eager-time", "--ckpt", args.ckpt,
           "--batch-sizes", args.batch_sizes, "--count", str(args.count), "--threads", str(args.threads), *images]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"kcdp-bench: eager timing failed: {proc.stderr.strip().splitlines()[-1:]}")
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    for run in runs:
        _say(EAGER, run)
    return runs


def eager_time(args: argparse.Namespace) -> int:
    """kcdp-bench _eager-time: the checkpoint's PyTorch engine timed alone; prints the runs as one JSON line."""
    engine = eager_pipeline(args.ckpt, args.threads)
    runs = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        runs.append(time_engines({EAGER: engine}, args.images, batch, max(args.count, batch * 4))[EAGER])
    print(json.dumps(runs))
    return 0


def _speedups(engines: dict[str, Any]) -> dict[str, float]:
    """Total p50 at batch 1 of each engine against torch-eager and the baseline, where they ran."""
    total = {n: e["runs"][0]["stages"]["total"]["p50"] for n, e in engines.items() if e["runs"][0]["batch"] == 1}
    out = {}
    for reference in (EAGER, "baseline"):
        if reference in total:
            out.update(
                {f"{n} vs {reference}": total[reference] / total[n] for n in total
                 if n not in (EAGER, "baseline") and total[n] > 0}
            )  # fmt: skip
    return out


def _say(name: str, run: dict[str, Any]) -> None:
    print(f"kcdp-bench: {name} batch {run['batch']}: total p50 {run['stages']['total']['p50']:.2f} ms, "
          f"{run['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)  # fmt: skip
