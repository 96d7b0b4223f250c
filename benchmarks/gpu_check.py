"""GPU readiness of the `sd15` preset at its true size (random weights, 512 px), in one short run.

    python benchmarks/gpu_check.py --out DIR [--batch-size 8] [--budget-s 420]

On a CUDA machine: builds the random SD 1.5 foundation (kcdp_core.model.random_sd15) into DIR, loads
it through the sd15 preset's code path, then measures
- training: optimizer steps per second and peak GPU memory at batch 8 under bf16 autocast (fp16 +
  GradScaler where bf16 is not supported): LoRA on attn2 K/V, FPN, MoE head, CLIEA loss, as kcdp-train;
- perception latency (VAE encode + one UNet pass + FPN + head) at batch 1 and 8: PyTorch eager and
  torch.compile (compile time reported);
- the same through onnxruntime's CUDA provider when onnxruntime-gpu is installed (fp32 graph, with its
  largest difference from PyTorch eager).
Needs torch, diffusers, transformers, peft, accelerate and the kcdp wheel; nothing is downloaded.
Phases that would run past --budget-s are skipped and say so. Writes DIR/gpu_check.json.

Without a CUDA GPU it measures nothing: it says so, writes {"status": "no_gpu", ...} and exits 2.
`--device cpu --small` runs every phase on the CPU with narrow widths (a dry run for tests).
Exit status: 0 measured, 1 a phase failed, 2 no GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

NO_GPU = "no CUDA GPU found (torch.cuda.is_available() is False): nothing was measured"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Any, device: torch.device, repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _stats(times: list[float], batch: int) -> dict[str, float]:
    p50 = statistics.median(times)
    return {
        "p50_ms": round(p50, 2),
        "min_ms": round(min(times), 2),
        "images_per_s": round(1000.0 * batch / p50, 2),
    }


def _inputs(batch: int, size: int, length: int, dim: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, size, size, generator=g)
    mask = torch.ones(batch, 2 * length)
    mask[:, length + 8 :] = 0  # a short triplet half, as real knowledge has
    k = torch.randn(batch, 2 * length, dim, generator=g) * mask[..., None]
    labels = torch.randint(0, 7, (batch,), generator=g)
    return pixels.to(device), k.to(device), mask.to(device), labels.to(device)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16; None (fp32) for a CPU dry run."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _name(dtype: torch.dtype | None) -> str:
    return "fp32 (no autocast)" if dtype is None else str(dtype).removeprefix("torch.")


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.t0 = time.perf_counter()
        self.report: dict[str, Any] = {
            "what": f"sd15 preset at true size (random weights), {args.image_size} px"
            + (" [dry run: small widths]" if args.small else ""),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": _machine(self.device),
            "versions": _versions(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "phases": {},
        }
        self.failed = False

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def phase(self, name: str, fn: Any, needs_s: float) -> None:
        if self.left() < needs_s:
            self.report["phases"][name] = {
                "skipped": f"time budget: {self.left():.0f} s left, needs ~{needs_s:.0f} s"
            }
            return
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - one phase failing must not hide the others' figures
            self.failed = True
            result = {"error": f"{type(exc).__name__}: {exc}"[:800], "trace": traceback.format_exc()[-2000:]}
        result["phase_s"] = round(time.perf_counter() - t0, 1)
        self.report["phases"][name] = result
        print(f"gpu_check: {name}: {json.dumps(result)[:400]}", file=sys.stderr, flush=True)

    # -- phases ---------------------------------------------------------------------------------
    def build(self) -> dict:
        from kcdp_core.model.random_sd15 import build_sd15_foundation

        folder = self.args.out / ("foundation-small" if self.args.small else "foundation")
        if not (folder / "model_index.json").exists():
            build_sd15_foundation(folder, small=self.args.small)
        self.foundation = folder
        return {
            "folder": str(folder),
            "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        }

    def load(self) -> dict:
        from kcdp_core.config import sd15
        from kcdp_core.model.kcdp import KCDPModel

        config = sd15(foundation=str(self.foundation))
        if self.args.small:  # narrow heads to match the narrow foundation
            config = config.replace(
                perception={"fpn_dim": 16, "feature_dim": 32},
                head={"fused_dim": 32, "expert_hidden": 16},
                cliea={"dim": 32, "num_heads": 2},
            )
        torch.manual_seed(0)
        self.config = config
        self.model = KCDPModel.from_config(config).to(self.device)
        unet = self.model.kadap.unet
        return {
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.model.trainable_parameters()),
            "knowledge_tokens": 2 * config.knowledge.text_length,
            "text_dim": self.model.text_encoder.dim,
        }

    def train(self) -> dict:
        from kcdp_core.model.losses import total_loss

        model, device, bs = self.model, self.device, self.args.batch_size
        dtype = _autocast_dtype(device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        size = self.args.image_size
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
        length, dim = self.config.knowledge.text_length, model.text_encoder.dim
        pixels, k, mask, labels = _inputs(bs, size, length, dim, device)
        model.train()

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(pixels, k, mask)
                scores = model.cliea_scores(out.features, k, mask)
                loss, _ = total_loss(self.config, out, labels, scores)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = _time(step, device, self.args.steps, warmup=1)
        result = {"batch_size": bs, "autocast": _name(dtype), "steps": len(times)}
        result["step_ms_p50"] = round(statistics.median(times), 1)
        result["steps_per_s"] = round(1000.0 / statistics.median(times), 3)
        result["images_per_s"] = round(bs * 1000.0 / statistics.median(times), 2)
        if device.type == "cuda":
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        model.eval()
        return result

    def _perception(self, module: Any, batches: tuple[int, ...], dtype: torch.dtype | None) -> dict:
        length, dim = self.config.knowledge.text_length, self.model.text_encoder.dim
        out = {}
        for b in batches:
            pixels, k, mask, _ = _inputs(b, self.args.image_size, length, dim, self.device, seed=b)

            def run(pixels=pixels, k=k, mask=mask) -> None:
                with (
                    torch.inference_mode(),
                    torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
                ):
                    module(pixels, k, mask)

            out[f"batch{b}"] = _stats(_time(run, self.device, self.args.repeat, warmup=2), b)
        return out

    def eager(self) -> dict:
        dtype = _autocast_dtype(self.device)
        self.model.merge_lora()  # as exported: plain Linear layers
        return {
            "autocast": _name(dtype),
            **self._perception(self.model, (1, self.args.batch_size), dtype),
        }

    def compiled(self) -> dict:
        dtype = _autocast_dtype(self.device)
        compiled = torch.compile(self.model)
        length, dim = self.config.knowledge.text_length, self.model.text_encoder.dim
        pixels, k, mask, _ = _inputs(1, self.args.image_size, length, dim, self.device)
        t0 = time.perf_counter()
        enabled = dtype is not None
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=enabled),
        ):
            compiled(pixels, k, mask)
        _sync(self.device)
        compile_s = time.perf_counter() - t0
        return {"autocast": _name(dtype), "first_call_s": round(compile_s, 1),
                **self._perception(compiled, (1,), dtype)}  # fmt: skip

    def onnxruntime(self) -> dict:
        try:
            import onnxruntime as ort
        except ImportError:
            return {"skipped": "onnxruntime is not installed"}
        provider = "CUDAExecutionProvider" if self.device.type == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            return {"skipped": f"onnxruntime {ort.__version__} has no {provider} (install onnxruntime-gpu)"}
        try:
            import onnx
        except ImportError:
            return {"skipped": "onnx is not installed (needed to export the graph)"}
        from kcdp_export.graphs import PerceptionModule
        from kcdp_export.onnx_export import save_model

        length, dim = self.config.knowledge.text_length, self.model.text_encoder.dim
        module = PerceptionModule(self.model).eval()
        size = self.args.image_size
        pixels, k, mask, _ = _inputs(2, size, length, dim, self.device)
        with tempfile.TemporaryDirectory(dir=self.args.out) as tmp:
            raw, path = Path(tmp) / "raw" / "perception.onnx", Path(tmp) / "perception.onnx"
            raw.parent.mkdir()
            t0 = time.perf_counter()
            with torch.no_grad():
                torch.onnx.export(
                    module, (pixels, k, mask), str(raw), dynamo=False, opset_version=17,
                    input_names=["pixels", "knowledge", "knowledge_mask"], output_names=["logits", "probs", "features"],
                    dynamic_axes={n: {0: "batch"} for n in ("pixels", "knowledge", "knowledge_mask", "logits", "probs", "features")},
                )  # fmt: skip
            save_model(onnx.load(str(raw), load_external_data=True), path)
            export_s = time.perf_counter() - t0
            options = ort.SessionOptions()
            t0 = time.perf_counter()
            session = ort.InferenceSession(str(path), options, providers=[provider])
            load_s = time.perf_counter() - t0
            result: dict[str, Any] = {"provider": session.get_providers()[0], "export_s": round(export_s, 1),
                                      "session_s": round(load_s, 1), "precision": "fp32"}  # fmt: skip
            for b in (1, self.args.batch_size):
                px, kk, mm, _ = _inputs(b, size, length, dim, self.device, seed=b)
                feed = {
                    "pixels": px.cpu().numpy(),
                    "knowledge": kk.cpu().numpy(),
                    "knowledge_mask": mm.cpu().numpy(),
                }
                result[f"batch{b}"] = _stats(
                    _time(lambda f=feed: session.run(["logits"], f), self.device, self.args.repeat, 2), b
                )
                if b == 1:
                    with torch.inference_mode():
                        ref = self.model(px, kk, mm).logits.float().cpu().numpy()
                    got = session.run(["logits"], feed)[0]
                    result["max_abs_logit_diff_vs_eager_fp32"] = float(abs(got - ref).max())
        return result


def _machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()})  # fmt: skip
    return info


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "torch",
        "diffusers",
        "transformers",
        "peft",
        "accelerate",
        "onnxruntime",
        "onnxruntime-gpu",
        "kcdp",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="GPU readiness of the sd15 preset at true size (see the module doc)."
    )
    ap.add_argument(
        "--out", type=Path, required=True, help="folder for the random foundation and gpu_check.json"
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (after one warm-up)")
    ap.add_argument("--repeat", type=int, default=10, help="timed perception calls per batch size")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip phases that would run past this")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only for a dry run with --small")
    ap.add_argument("--small", action="store_true", help="narrow widths (same classes): a quick dry run")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile phase")
    ap.add_argument(
        "--image-size", type=int, default=512, help="512 (the preset); smaller only for a dry run"
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "gpu_check.json"

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        report = {"status": "no_gpu", "message": NO_GPU, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "machine": _machine(torch.device("cpu")), "versions": _versions()}  # fmt: skip
        target.write_text(json.dumps(report, indent=2) + "\n")
        print(f"gpu_check: {NO_GPU}; wrote {target}", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.small:
        ap.error("--device cpu is a dry run: add --small (the true size takes minutes per step on a CPU)")
    if args.image_size != 512 and not args.small:
        ap.error("--image-size is for dry runs (--small): the sd15 preset runs at 512 px")

    check = Check(args)
    check.phase("build_foundation", check.build, needs_s=0)
    check.phase("load", check.load, needs_s=0)
    if "error" in check.report["phases"]["load"]:
        check.report["status"] = "failed"
    else:
        check.phase("train", check.train, needs_s=60)
        check.phase("perception_eager", check.eager, needs_s=30)
        if not args.no_compile:
            check.phase("perception_compile", check.compiled, needs_s=120)
        check.phase("perception_onnxruntime", check.onnxruntime, needs_s=120)
        check.report["status"] = "failed" if check.failed else "measured"
    check.report["total_s"] = round(time.perf_counter() - check.t0, 1)
    target.write_text(json.dumps(check.report, indent=2) + "\n")
    print(json.dumps(check.report))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
