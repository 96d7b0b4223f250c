"""The `sd15` preset end to end at its true size, random weights, on a CPU: train, export, serve.

    python benchmarks/sd15_smoke.py --out DIR [--steps 2] [--batch-size 2] [--precisions fp32,fp16]

1. Builds DIR/hub: a random Stable Diffusion 1.5 (860M-parameter UNet, 8x VAE, CLIP ViT-L/14 text
   encoder, CLIP tokenizer) and a small InstructBLIP, filed under the hub ids the preset names
   (kcdp_core.model.random_sd15), so every command below runs with HF_HUB_OFFLINE=1 and
   `--preset sd15` exactly as a GPU user types it.
2. `kcdp-train --preset sd15` (UC, 512 px, LoRA on attn2 K/V, the real feature levels and
   cross-attention maps over 154 knowledge tokens) for a few optimizer steps.
3. `kcdp-export` per precision (external data past 2 GB; parity checked as always).
4. `kcdp-infer` on the first export and on the checkpoint (eager), same images.

Each command runs in its own process; its peak RSS is that process's VmHWM. Prints one JSON object
and writes it to DIR/sd15_smoke.json. One torch/onnxruntime thread per process (shared machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Runs `module:function(argv)` in a fresh process and writes its exit code and VmHWM to a file.
_WRAPPER = """
import time
started = time.perf_counter()
import json, sys, importlib
import torch.optim.optimizer as oo
out, target, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
steps = []
oo.register_optimizer_step_post_hook(lambda *a: steps.append(time.perf_counter()))
module, func = target.split(":")
code = 1
try:
    code = getattr(importlib.import_module(module), func)(argv)
finally:
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    wall = time.perf_counter() - started
    json.dump({"code": code, "peak_rss_kb": hwm, "optimizer_steps": steps, "wall_s": wall}, open(out, "w"))
sys.exit(code)
"""


def run_stage(
    name: str, target: str, argv: list[str], env: dict[str, str], work: Path, done: Path | None = None
) -> dict:
    """One console-script entry point in its own process: wall time, exit code, peak RSS, stdout.

    When `done` (the stage's output) exists and this stage's report from an earlier run was kept,
    the stage is not run again: a rerun of the smoke resumes after its last finished stage."""
    report = work / f".{name}.json"
    log = work / f"{name}.log"
    stdout_file = work / f".{name}.stdout"
    reused = done is not None and done.exists() and report.exists() and stdout_file.exists()
    if not reused:
        report.unlink(missing_ok=True)
        with log.open("w") as err:
            proc = subprocess.run(
                [sys.executable, "-c", _WRAPPER, str(report), target, *argv],
                env=env, stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
        stdout_file.write_text(proc.stdout)
        if not report.exists():
            raise SystemExit(f"sd15_smoke: {name} died (exit {proc.returncode}); see {log}")
    info = json.loads(report.read_text())
    result = {
        "wall_s": None if info.get("wall_s") is None else round(info["wall_s"], 1),
        "exit_code": info["code"],
        "peak_rss_gib": round(info["peak_rss_kb"] / 2**20, 2),
        "log": str(log),
    }
    steps = info.get("optimizer_steps") or []
    if len(steps) > 1:
        result["optimizer_steps"] = len(steps)
        result["step_s"] = [round(y - x, 1) for x, y in zip(steps, steps[1:], strict=False)]
    if reused:
        result["reused_from_earlier_run"] = True
    result["stdout"] = stdout_file.read_text()
    if info["code"] != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"sd15_smoke: {name} failed (exit {info['code']}); {log}:\n{tail}")
    return result


def serve(
    report: dict, models: dict[str, Path], images: list[str], env: dict, out: Path, threads: str
) -> None:
    """kcdp-infer on each model (an export, the checkpoint eagerly) over the same images."""
    runs = {}
    for name, model in models.items():
        stage = run_stage(
            f"infer_{name}",
            "kcdp_runtime.cli:main",
            [*images, "--model", str(model), "--json", "--threads", threads, "--batch-size", "1"],
            env, out,
        )  # fmt: skip
        results = [json.loads(line) for line in stage.pop("stdout").splitlines() if line.strip()]
        stage["labels"] = [r.get("label") for r in results]
        stage["latency_ms_per_image"] = [r.get("latency_ms") for r in results]
        runs[name] = results
        report[f"infer_{name}"] = stage
    if len(runs) == 2:
        x, y = runs.values()
        report["checkpoint_vs_export"] = {
            "same_labels": [r["label"] for r in x] == [r["label"] for r in y],
            "max_abs_score_diff": max(
                abs(r["scores"][k] - q["scores"][k]) for r, q in zip(x, y, strict=True) for k in r["scores"]
            ),
            "same_captions": [r["caption"] for r in x] == [r["caption"] for r in y],
        }


def make_images(folder: Path, per_class: dict[str, int], seed: int, size: int = 512) -> list[Path]:
    """Drawn faces at the model's resolution, one subfolder per label."""
    rng = np.random.default_rng(seed)
    paths = []
    for label, n in per_class.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(150, 255, 3)))
            d = ImageDraw.Draw(img)
            d.ellipse((60, 60, size - 60, size - 60), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
            d.ellipse((170, 180, 220, 230), fill="black")
            d.ellipse((290, 180, 340, 230), fill="black")
            bend = 40 if label == "happiness" else -40
            d.arc(
                (170, 300 - bend, 340, 380 + bend),
                20 if bend > 0 else 200,
                160 if bend > 0 else 340,
                "black",
                8,
            )
            path = folder / label / f"{label}_{i}.png"
            img.save(path)
            paths.append(path)
    return paths


class DirSize:
    """Largest total size seen under a folder while a stage runs (the export's scratch fp32 graphs)."""

    def __init__(self, folder: Path, pattern: str):
        self.folder, self.pattern, self.peak, self._stop = folder, pattern, {}, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(2.0):
            for d in self.folder.glob(self.pattern):
                try:
                    files = {p.name: p.stat().st_size for p in d.iterdir() if p.is_file()}
                except OSError:
                    continue
                if sum(files.values()) > sum(self.peak.values()):
                    self.peak = files

    def __enter__(self) -> DirSize:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def files_of(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work folder (about 25 GB with two exports)")
    ap.add_argument(
        "--steps", type=int, default=2, help="optimizer steps (one epoch of steps x batch images)"
    )
    ap.add_argument("--batch-size", type=int, default=2, help="2 at least: the FPN's BatchNorm needs it")
    ap.add_argument("--precisions", default="fp32,fp16", help="exports to make, in order")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(out / "hub"),
        "KCDP_CACHE": str(out / "cache"),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "KCDP_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
    }
    report: dict = {
        "what": "sd15 preset at true size, random weights, CPU",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads_per_process": args.threads,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    started = time.perf_counter()

    # 1. the foundation, filed under the preset's hub ids
    t0 = time.perf_counter()
    marker = out / "hub" / ".complete"
    if not marker.exists():
        code = (
            "import sys, torch; torch.set_num_threads(int(sys.argv[3]));"
            "from kcdp_core.model.random_sd15 import build_hub_cache;"
            "build_hub_cache(sys.argv[1], sys.argv[2])"
        )
        subprocess.run(
            [sys.executable, "-c", code, str(out / "hub"), str(out / "weights"), threads], env=env, check=True
        )
        marker.touch()
    report["foundation"] = {
        "build_s": round(time.perf_counter() - t0, 1),
        "files": files_of(out / "weights" / "stable-diffusion-v1-5"),
    }

    # 2. data: source (labelled) images at 512 px, and a few to classify
    n_train = args.steps * args.batch_size
    source = out / "data" / "source"
    if not source.exists():
        # one image more than the steps use: it is the validation split
        make_images(source, {"happiness": (n_train + 2) // 2, "sadness": n_train + 1 - (n_train + 2) // 2}, 0)
    queries = make_images(out / "data" / "queries", {"happiness": 1, "sadness": 1}, 1)
    val_fraction = 1.0 / (n_train + 1)

    ckpt = out / "ckpt"
    train = run_stage(
        "train",
        "kcdp_core.train.cli:train_main",
        ["--preset", "sd15", "--source", str(source), "--out", str(ckpt), "--epochs", "1",
         "--batch-size", str(args.batch_size), "--val-fraction", f"{val_fraction:.4f}", "--no-augment",
         "--mixed-precision", "no", "--threads", threads, "--quiet"],
        env, out, done=ckpt / "best" / "model.safetensors",
    )  # fmt: skip
    train["batch_size"] = args.batch_size
    train["result"] = json.loads(train.pop("stdout").strip().splitlines()[-1])
    metrics = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    train["losses"] = [m["loss"] for m in metrics if m.get("kind") == "step"]
    epoch = re.search(r"epoch 1/1: .*\(([0-9.]+)s\)", (out / "train.log").read_text())
    train["epoch_s_with_validation"] = float(epoch.group(1)) if epoch else None
    report["train"] = train

    # 3. exports; the first is served at once (checkpoint vs export), the others come after
    images = [str(p) for p in queries]
    for n, precision in enumerate(p for p in args.precisions.split(",") if p):
        folder = out / f"export-{precision}"
        with DirSize(out, f".{folder.name}.partial-*/.fp32") as scratch:
            stage = run_stage(
                f"export_{precision}",
                "kcdp_export.cli:main",
                ["--ckpt", str(ckpt), "--out", str(folder), "--precision", precision, "--overwrite", "--json"],
                env, out, done=folder / "manifest.json",
            )  # fmt: skip
        summary = json.loads(stage.pop("stdout"))
        stage["files"] = files_of(folder)
        stage["onnx_bytes"] = sum(v for k, v in stage["files"].items() if ".onnx" in k)
        if precision != "fp32" and scratch.peak:
            stage["fp32_scratch_files"] = scratch.peak
        stage["parity"] = summary["parity"]
        stage["timings_s"] = summary["timings_s"]
        report[f"export_{precision}"] = stage
        if n == 0:
            serve(report, {f"export_{precision}": folder, "checkpoint": ckpt}, images, env, out, threads)
        (out / "sd15_smoke.partial.json").write_text(json.dumps(report, indent=2) + "\n")
    report["total_s"] = round(time.perf_counter() - started, 1)
    (out / "sd15_smoke.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
