"""A resumable training stage: the loop every pretraining stage shares.

Resuming after `kill -9` continues exactly where the last checkpoint left off, because nothing random
is carried between steps: step s draws its batch, noise and augmentations from generators seeded with
(seed, s), and the learning rate is a pure function of s. A checkpoint is model + optimizer state as
safetensors plus a json with the step; `latest.json` is replaced atomically after the files are
written, so a kill mid-save leaves the previous checkpoint in force. Each stage keeps a loss log
(loss.jsonl, truncated back to the checkpoint on resume) and a loss plot (loss.png).

On GPUs the same loop runs under `accelerate launch kcdp-pretrain run ... --mixed_precision bf16`:
modules move to the process's device, the step runs under the launcher's autocast, every process
draws its own batch (seeded by rank: rank 0 draws what a single process would) and gradients are
averaged across processes before the optimizer step; only the main process writes checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

StepFn = Callable[[int, torch.Generator], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class StageOptions:
    """How long a stage trains and how it saves; `budget_minutes` fixes the step count once, on a fresh start."""

    max_steps: int = 1000
    budget_minutes: float | None = None
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_seconds: float = 120.0
    log_every: int = 10
    timing_steps: int = 8  # steps timed (after a warm-up step) to turn the budget into a step count


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


def _optimizer_to_safetensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().contiguous().clone()
            else:
                meta["state"][str(pid)][name] = value
    return tensors, meta


def _optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(pid): dict(extra) for pid, extra in meta["state"].items()}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class Stage:
    """Runs `step_fn` from the last checkpoint to the end, with a progress bar, loss log and plot."""

    def __init__(
        self,
        name: str,
        work_dir: str | Path,
        modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        step_fn: StepFn,
        options: StageOptions,
    ):
        self.name = name
        self.dir = Path(work_dir)
        self.modules = modules
        self.optimizer = optimizer
        self.step_fn = step_fn
        self.options = options
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.step = 0
        self.total_steps: int | None = None
        self.elapsed = 0.0
        from accelerate import Accelerator

        # Reads what `accelerate launch` set (device, processes, mixed precision); plain CPU otherwise.
        self.accelerator = Accelerator()
        for m in modules.values():
            m.to(self.accelerator.device)  # in place: the optimizer keeps the same parameters

    # -- state ---------------------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return self.dir / "ckpt"

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]

    def model_state(self) -> dict[str, torch.Tensor]:
        return {
            f"{name}.{k}": v.detach().contiguous().clone()
            for name, m in self.modules.items()
            for k, v in m.state_dict().items()
        }

    def _average_gradients(self) -> None:
        import torch.distributed as dist

        world = self.accelerator.num_processes
        for p in self.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    def save(self) -> Path:
        # Only the main process writes (no barrier: processes reach a timed save at different steps).
        folder = self.ckpt_root / f"step-{self.step:08d}"
        if self.accelerator.is_main_process:
            self._write(folder)
        return folder

    def _write(self, folder: Path) -> None:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        save_file(self.model_state(), str(folder / "model.safetensors"))
        tensors, meta = _optimizer_to_safetensors(self.optimizer)
        save_file(tensors, str(folder / "optimizer.safetensors"))
        state = {
            "stage": self.name,
            "step": self.step,
            "total_steps": self.total_steps,
            "elapsed_seconds": self.elapsed,
            "done": self.done,
            "options": asdict(self.options),
            "optimizer": meta,
        }
        (folder / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        tmp = self.ckpt_root / "latest.json.tmp"
        tmp.write_text(json.dumps({"checkpoint": folder.name, "step": self.step, "done": self.done}) + "\n")
        os.replace(tmp, self.ckpt_root / "latest.json")
        for old in self.ckpt_root.glob("step-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        self.plot()

    def latest(self) -> Path | None:
        pointer = self.ckpt_root / "latest.json"
        if not pointer.exists():
            return None
        folder = self.ckpt_root / json.loads(pointer.read_text())["checkpoint"]
        return folder if (folder / "state.json").exists() else None

    def load(self) -> bool:
        """Restore the last checkpoint if there is one; True if restored."""
        folder = self.latest()
        if folder is None:
            return False
        state = json.loads((folder / "state.json").read_text())
        weights = load_file(str(folder / "model.safetensors"), device=str(self.accelerator.device))
        for name, m in self.modules.items():
            prefix = f"{name}."
            m.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
        self.optimizer.load_state_dict(
            _optimizer_from_safetensors(load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
        )
        self.step = int(state["step"])
        self.total_steps = state["total_steps"]
        self.elapsed = float(state["elapsed_seconds"])
        self._truncate_log(self.step)
        return True

    @property
    def done(self) -> bool:
        return self.total_steps is not None and self.step >= self.total_steps

    # -- loss log --------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.dir / "loss.jsonl"

    def _truncate_log(self, step: int) -> None:
        """Drop entries logged after the checkpoint (a killed run logged steps it will redo)."""
        if not self.log_path.exists() or not self.accelerator.is_main_process:
            return
        lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        self.log_path.write_text("".join(ln + "\n" for ln in kept))

    def log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> Path | None:
        if not self.log_path.exists():
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(ln) for ln in self.log_path.read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if "loss" in r]
        if not rows:
            return None
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"kcdp-pretrain {self.name}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.dir / "loss.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    # -- loop --------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> Stage:
        """Train to the end (or until step `stop_after`, checkpointing there: a simulated kill)."""
        from tqdm import tqdm

        self.dir.mkdir(parents=True, exist_ok=True)
        self.load()
        if self.done:
            return self
        opts = self.options
        bar = tqdm(
            total=self.total_steps or opts.max_steps,
            initial=self.step,
            desc=f"pretrain {self.name}",
            mininterval=10,
            file=sys.stderr,
            disable=not self.accelerator.is_main_process,
        )
        rank = self.accelerator.process_index
        last_save = time.monotonic()
        timing: list[float] = []
        window: list[float] = []
        try:
            while self.total_steps is None or self.step < self.total_steps:
                if stop_after is not None and self.step >= stop_after:
                    break
                started = time.monotonic()
                seed = step_seed(opts.seed + 1_000_003 * rank, self.step)
                torch.manual_seed(seed)  # dropout / drop-connect inside the models
                generator = torch.Generator().manual_seed(seed)
                total_for_lr = self.total_steps or opts.max_steps
                factor = lr_factor(self.step, total_for_lr, opts.warmup_steps, opts.min_lr_ratio)
                for group in self.optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                self.optimizer.zero_grad(set_to_none=True)
                with self.accelerator.autocast():
                    loss, parts = self.step_fn(self.step, generator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.name}: loss is {loss.item()} at step {self.step}")
                loss.backward()
                if self.accelerator.num_processes > 1:
                    self._average_gradients()
                if opts.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.parameters(), opts.grad_clip)
                self.optimizer.step()
                took = time.monotonic() - started
                self.elapsed += took
                window.append(float(loss.detach()))
                self.step += 1
                bar.update(1)
                self._update_total(timing, took)
                if self.total_steps is not None and bar.total != self.total_steps:
                    bar.total = self.total_steps
                    bar.refresh()
                if self.step % opts.log_every == 0 or self.step == self.total_steps:
                    record = {"step": self.step, "loss": sum(window) / len(window), "lr": factor}
                    record.update({k: round(float(v), 6) for k, v in parts.items()})
                    record["elapsed_s"] = round(self.elapsed, 1)
                    self.log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    window = []
                if time.monotonic() - last_save > opts.checkpoint_seconds:
                    self.save()
                    last_save = time.monotonic()
        finally:
            bar.close()
        self.save()
        self.accelerator.wait_for_everyone()
        return self

    def _update_total(self, timing: list[float], took: float) -> None:
        """The step count: max_steps, or what fits in the budget at the measured speed. Fixed once the
        first `timing_steps` steps are timed (the very first pays for warm-up and is not), then, as the
        speed on a shared machine drifts, re-fitted every 25 steps until 80% of the budget is spent
        (the cosine schedule follows the current estimate)."""
        opts = self.options
        if opts.budget_minutes is None:
            self.total_steps = self.total_steps or opts.max_steps
            return
        if self.total_steps is None and self.step == 1:
            return
        timing.append(took)
        if len(timing) < opts.timing_steps:
            return
        if self.total_steps is None or (
            self.step % 25 == 0 and self.elapsed < 0.8 * opts.budget_minutes * 60
        ):
            self.total_steps = self._estimate_total(timing)

    def _estimate_total(self, timing: list[float]) -> int:
        opts = self.options
        recent = timing[-50:]
        per_step = sorted(recent)[len(recent) // 2]
        fits = int((opts.budget_minutes * 60 - self.elapsed) / per_step) + self.step
        total = max(self.step + 1, min(opts.max_steps, fits))
        print(
            f"{self.name}: {per_step:.2f} s/step, budget {opts.budget_minutes} min -> {total} steps",
            file=sys.stderr,
        )
        return total
