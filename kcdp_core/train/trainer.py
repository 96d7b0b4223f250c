"""The KCDP training loop (DA and UC settings) on accelerate, with exact resume.

- DA: labelled source + unlabelled target. The target is loaded without labels (image paths only);
  its pseudo-labels come from CLIEA per batch (the authors' way), from CLIEA refreshed once per
  epoch, or from the aligned encoder's zero-shot (the Table 3 comparison); an optional confidence
  threshold keeps only confident ones.
- UC: the source alone.
- Model selection on a stratified validation split of the SOURCE (macro-F1), never the target.
- A checkpoint every epoch: model.safetensors (trained tensors) + train_state.safetensors/.json
  (optimizer, scheduler, RNG states, epoch, metrics offset). Data order and augmentation are pure
  functions of (seed, epoch), so resuming at an epoch boundary replays exactly what an
  uninterrupted run does; a run killed mid-epoch restarts that epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kcdp_core.config import KCDPConfig, TrainConfig
from kcdp_core.train.datasets import (
    AugmentConfig,
    EpochSampler,
    ImageKnowledgeDataset,
    Record,
    load_records,
    split_validation,
)
from kcdp_core.train.evaluate import classification_metrics, predict
from kcdp_core.train.knowledge import Describe, KnowledgeTable
from kcdp_core.train.pseudo_labels import (
    BatchPseudoLabels,
    EpochPseudoLabels,
    TargetPredictions,
    absent_labels,
    declared,
)
from kcdp_core.train.target_bn import batch_norms, recompute_statistics

STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"
METRICS = "metrics.jsonl"
WEIGHTS = "model.safetensors"


@dataclass
class TrainResult:
    out: Path
    best_epoch: int
    best_val_macro_f1: float | None
    epochs_run: int  # epochs trained by this call (0: a finished run resumed)


class CyclicBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Exactly `num_batches` target batches per epoch, cycling through a (seed, epoch) permutation."""

    def __init__(self, n: int, batch_size: int, num_batches: int, seed: int):
        self.n, self.batch_size, self.num_batches, self.seed, self.epoch = n, batch_size, num_batches, seed, 0
        self.pool: list[int] | None = None  # draw from these indices only (None: all n)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_pool(self, indices: list[int] | None) -> None:
        """Draw only these target images (the selected pseudo-labels): a batch of images whose
        labels are masked out would cost a forward and backward pass for nothing."""
        self.pool = list(indices) if indices else None

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 17)
        order: list[int] = []
        pool = self.pool
        for _ in range(self.num_batches):
            while len(order) < self.batch_size:
                perm = torch.randperm(len(pool) if pool else self.n, generator=g).tolist()
                order += [pool[i] for i in perm] if pool else perm
            yield order[: self.batch_size]
            order = order[self.batch_size :]


class BalancedSampler(EpochSampler):
    """Sampling with replacement that draws every group (class, style, or both: one key per image) as
    often as any other; one epoch = n draws; a function of (seed, epoch)."""

    def __init__(self, keys: Sequence[Hashable], seed: int):
        super().__init__(len(keys), seed)
        counts = Counter(keys)
        self.weights = torch.tensor([1.0 / counts[key] for key in keys], dtype=torch.double)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 31)
        return iter(torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist())


def style_of(record: Record) -> str:
    """The style an image belongs to: the folder above its class folder (domains/<style>/<class>/)."""
    return record.path.parent.parent.name


def balance_keys(records: Sequence[Record], tc: TrainConfig) -> list[Hashable]:
    """The group each source image is balanced in: its class, its style, or both."""
    if tc.balance_styles and tc.balanced_sampling:
        return [(style_of(r), r.label) for r in records]
    return [style_of(r) for r in records] if tc.balance_styles else [r.label for r in records]


class TwoViews(torch.utils.data.Dataset):
    """A dataset whose items carry a second augmented view ("pixels2", "face2") of the same image,
    drawn from its own (seed, epoch, index) stream, augmented as `second` says (default: as the
    dataset augments): for the consistency terms."""

    def __init__(self, dataset: ImageKnowledgeDataset, second: AugmentConfig | None = None):
        self.dataset, self.second = dataset, second

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        second = self.dataset.views(i, stream=(2,), how=self.second)
        return {**self.dataset[i], **{f"{name}2": view for name, view in second.items()}}


def load_initial_weights(model, checkpoint: str | Path) -> None:
    """The trained tensors of `checkpoint` (a folder with model.safetensors, or `kcdp:<asset>`) into
    `model`, cast to its dtypes (the shipped default model stores fp16). Every tensor the model
    trains must be there, and nothing else: another architecture is refused, naming the file."""
    from kcdp_core.config import Source
    from kcdp_core.model.kcdp import WEIGHTS_NAME
    from kcdp_core.sources import resolve

    folder = Path(resolve(Source(str(checkpoint)))[0])
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing (init_checkpoint names a checkpoint folder)")
    state = load_file(str(weights))
    expected = model.trained_state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: not this architecture's trained tensors "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    for name, value in state.items():
        if value.shape != expected[name].shape:
            want = tuple(expected[name].shape)
            raise ValueError(f"{weights}: {name} has shape {tuple(value.shape)}, the model {want}")
    model.load_state_dict({n: v.to(expected[n].dtype) for n, v in state.items()}, strict=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def lr_lambda(warmup: int, total: int, hold: int = 0):
    """0 for `hold` steps, then linear warm-up and cosine decay to 0 over the rest (a picklable callable
    is not needed: state is epochs)."""

    def f(step: int) -> float:
        if step < hold:
            return 0.0
        step -= hold
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - hold - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


class Trainer:
    def __init__(
        self,
        config: KCDPConfig,
        source: str | Path,
        out: str | Path,
        target: str | Path | None = None,
        describe: Describe | None = None,
        progress: bool = True,
        log=print,
    ):
        self.config = config
        self.tc = config.train
        if self.tc.setting == "da" and target is None:
            raise ValueError("the DA setting needs --target (unlabelled target images)")
        if self.tc.setting == "uc" and target is not None:
            raise ValueError("the UC setting trains on the source alone: drop --target or use --setting da")
        if self.tc.pseudo_labels == "zeroshot" and config.foundation.image_encoder is None:
            raise ValueError("--pseudo-labels zeroshot needs a foundation with an aligned image encoder")
        if self.tc.setting == "da" and self.tc.pseudo_labels != "zeroshot" and not config.cliea.enabled:
            raise ValueError("CLIEA pseudo-labels need cliea.enabled (or use --pseudo-labels zeroshot)")
        if self.tc.pseudo_select != "all" and self.tc.pseudo_labels == "batch":
            raise ValueError(
                f"pseudo_select {self.tc.pseudo_select!r} selects over the whole target: "
                "use pseudo_labels 'epoch' (or 'zeroshot')"
            )
        if self.tc.pseudo_agreement and self.tc.pseudo_labels == "zeroshot":
            raise ValueError("pseudo_agreement compares CLIEA with the head: not with zero-shot labels")
        two_views = {  # the consistency terms' weights, as this setting reads them
            "style_consistency_weight": self.tc.style_consistency_weight,
            "consistency_weight": self.tc.consistency_weight if self.tc.setting == "da" else 0.0,
        }
        for name, weight in two_views.items():
            if weight > 0 and not self.tc.augment:
                raise ValueError(f"{name} compares two augmented views: it needs augment")
        if not 0 <= self.tc.pretrained_hold_epochs < self.tc.epochs:
            raise ValueError(
                f"train.pretrained_hold_epochs = {self.tc.pretrained_hold_epochs}: 0 to epochs - 1"
            )
        self.absent = (
            absent_labels(config.labels, self.tc.target_classes) if self.tc.setting == "da" else None
        )
        self.source, self.target, self.out = Path(source), (Path(target) if target else None), Path(out)
        self.describe = describe
        self.progress = progress
        self.log = log

    # -- setup ---------------------------------------------------------------------------
    def _build(self) -> None:
        from accelerate import Accelerator

        from kcdp_core.model.kcdp import KCDPModel
        from kcdp_core.sources import resolve

        tc, cfg = self.tc, self.config
        # Build (or find) the foundation before seeding (building the tiny one reseeds torch) and
        # before the process group exists: once it does, transformers' save_pretrained writes on
        # rank 0 only, and another rank's build would leave an empty text encoder folder.
        resolve(cfg.foundation.vae)
        self.accelerator = Accelerator(
            mixed_precision=tc.mixed_precision,
            gradient_accumulation_steps=tc.grad_accum,
            cpu=not torch.cuda.is_available(),
        )
        if not self.accelerator.is_main_process:
            self.log = lambda *_: None  # one voice per run under `accelerate launch`
        acc = self.accelerator
        self.log(
            f"device {acc.device}, mixed precision {acc.mixed_precision}, {acc.num_processes} process(es)"
        )
        seed_everything(tc.seed)
        model = KCDPModel.from_config(cfg)
        if tc.init_checkpoint:
            load_initial_weights(model, tc.init_checkpoint)
            self.log(f"initial weights: {tc.init_checkpoint}")
        labels = cfg.labels

        records = load_records(self.source, labels, with_labels=True)
        train_idx, val_idx = split_validation(records, tc.val_fraction, tc.seed)
        self.train_records = [records[i] for i in train_idx]
        self.val_records = [records[i] for i in val_idx]
        # The target's labels are never read: paths only.
        self.target_records: list[Record] = (
            load_records(self.target, labels, with_labels=False) if self.target else []
        )

        table = KnowledgeTable(cfg, model.text_encoder, self.describe, progress=self.progress)
        all_paths = [r.path for r in records] + [r.path for r in self.target_records]
        k, mask = table.knowledge(all_paths)
        n_src = len(records)
        ks, ms = k[:n_src], mask[:n_src]
        kt, mt = k[n_src:], mask[n_src:]
        views = ImageKnowledgeDataset.for_config
        aug = AugmentConfig(style=tc.style_augment, face_box=tc.face_box_jitter) if tc.augment else None
        self.train_ds = views(cfg, self.train_records, ks[train_idx], ms[train_idx], aug, tc.seed)
        if tc.style_consistency_weight > 0:
            self.train_ds = TwoViews(self.train_ds, dataclasses.replace(aug, style=1.0))
        self.val_ds = views(cfg, self.val_records, ks[val_idx], ms[val_idx]) if val_idx else None
        if self.target_records:
            self.target_ds = views(cfg, self.target_records, kt, mt, aug, tc.seed + 1)
            if tc.setting == "da" and tc.consistency_weight > 0:
                self.target_ds = TwoViews(self.target_ds)
            self.target_plain = views(cfg, self.target_records, kt, mt)

        bs = tc.batch_size
        if tc.balanced_sampling or tc.balance_styles:
            self.sampler = BalancedSampler(balance_keys(self.train_records, tc), tc.seed)
        else:
            self.sampler = EpochSampler(len(self.train_ds), tc.seed)
        loader_kw = {"num_workers": tc.num_workers}
        train_loader = torch.utils.data.DataLoader(
            self.train_ds, batch_size=bs, sampler=self.sampler, drop_last=len(self.train_ds) > bs, **loader_kw
        )
        self.steps_per_epoch = len(train_loader)
        self.target_sampler = None
        target_loader = None
        if self.target_records:
            self.target_sampler = CyclicBatchSampler(
                len(self.target_ds), bs, self.steps_per_epoch, tc.seed + 1
            )
            target_loader = torch.utils.data.DataLoader(
                self.target_ds, batch_sampler=self.target_sampler, **loader_kw
            )

        head_lr = tc.head_lr if tc.head_lr is not None else tc.lr
        # pretrained weights (UNet, the image tail's copy) at lr, new ones at head_lr
        pretrained, other = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (pretrained if name.startswith(("kadap.", "image_tail.")) else other).append(p)
        epoch_steps = math.ceil(self.steps_per_epoch / tc.grad_accum)
        self.total_steps = tc.epochs * epoch_steps
        warmup = int(round(tc.warmup_ratio * self.total_steps))
        hold = tc.pretrained_hold_epochs * epoch_steps
        groups, schedules = [], []
        for params, lr, held in ((pretrained, tc.lr, hold), (other, head_lr, 0)):
            if params:
                groups.append({"params": params, "lr": lr})
                schedules.append(lr_lambda(warmup, self.total_steps, held))
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)

        acc = self.accelerator
        if target_loader is not None:
            self.model, self.optimizer, self.train_loader, self.target_loader, self.scheduler = acc.prepare(
                model, optimizer, train_loader, target_loader, scheduler
            )
        else:
            self.model, self.optimizer, self.train_loader, self.scheduler = acc.prepare(
                model, optimizer, train_loader, scheduler
            )
            self.target_loader = None
        # Whether captions were computed now or read from the cache must not change what follows.
        seed_everything(tc.seed + 1)

    # -- checkpoints ---------------------------------------------------------------------
    def _metrics_path(self) -> Path:
        return self.out / METRICS

    def _append_metrics(self, row: dict) -> None:
        if self.accelerator.is_main_process:
            with self._metrics_path().open("a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")

    def _save_checkpoint(self, epoch: int, best: dict) -> None:
        """Atomic per file; train_state.json is written last and names the hashes of the others."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        staging = self.out / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        model = acc.unwrap_model(self.model)
        model.save_pretrained(staging)
        opt_tensors, opt_meta = _optimizer_state(
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        )
        rng_tensors, rng_meta = _rng_state()
        save_file({**opt_tensors, **rng_tensors}, str(staging / STATE_TENSORS))
        sched = self.scheduler.scheduler if hasattr(self.scheduler, "scheduler") else self.scheduler
        sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
        state = {
            "epoch": epoch,  # epochs completed
            "step": self.global_step,
            "total_steps": self.total_steps,
            "scheduler": sched_state,
            "optimizer": opt_meta,
            "rng": rng_meta,
            "best": best,
            "metrics_bytes": self._metrics_path().stat().st_size if self._metrics_path().exists() else 0,
            "files": {WEIGHTS: _sha(staging / WEIGHTS), STATE_TENSORS: _sha(staging / STATE_TENSORS)},
        }
        (staging / STATE_JSON).write_text(json.dumps(state) + "\n")
        for name in ("config.json", WEIGHTS, STATE_TENSORS, STATE_JSON):
            os.replace(staging / name, self.out / name)
        shutil.rmtree(staging, ignore_errors=True)

    def _load_checkpoint(self) -> dict:
        state_file = self.out / STATE_JSON
        if not state_file.exists():
            raise FileNotFoundError(f"{state_file}: nothing to resume (no checkpoint in {self.out})")
        state = json.loads(state_file.read_text())
        for name, sha in state["files"].items():
            if _sha(self.out / name) != sha:
                raise ValueError(
                    f"{self.out / name}: does not match {STATE_JSON} (interrupted while saving?)"
                )
        model = self.accelerator.unwrap_model(self.model)
        weights = load_file(str(self.out / WEIGHTS))
        expected = set(model.trained_state_dict())
        if set(weights) != expected:
            raise ValueError(f"{self.out / WEIGHTS}: holds other tensors than this config trains")
        model.load_state_dict(weights, strict=False)
        tensors = load_file(str(self.out / STATE_TENSORS))
        opt = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        _load_optimizer_state(opt, tensors, state["optimizer"])
        sched = self.scheduler.scheduler if hasattr(self.scheduler, "scheduler") else self.scheduler
        sched.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(sched.lr_lambdas)})
        _set_rng_state(tensors, state["rng"])
        # Rows a killed run logged after its last checkpoint are replayed: drop them.
        metrics = self._metrics_path()
        if metrics.exists():
            with metrics.open("r+b") as f:
                f.truncate(state["metrics_bytes"])
        return state

    # -- pseudo-labels -------------------------------------------------------------------
    @torch.no_grad()
    def _epoch_pseudo_labels(self, model) -> TargetPredictions:
        """CLIEA argmax and confidence, and the head's argmax, over the whole (un-augmented) target
        with the current model."""
        loader = torch.utils.data.DataLoader(self.target_plain, batch_size=self.tc.batch_size)
        labels, confs, heads = [], [], []
        was = model.training
        model.eval()
        device = self.accelerator.device
        for batch in loader:
            k, m = batch["k"].to(device), batch["k_mask"].to(device)
            with self.accelerator.autocast():
                face = batch["face"].to(device) if "face" in batch else None
                out = model(batch["pixels"].to(device), k, m, face=face)
                scores = declared(model.cliea_scores(out.features, k, m), self.absent)
            conf, y = scores.float().softmax(dim=-1).max(dim=-1)
            labels.append(y.cpu())
            confs.append(conf.cpu())
            heads.append(declared(out.logits, self.absent).argmax(dim=-1).cpu())
        model.train(was)
        return TargetPredictions(torch.cat(labels), torch.cat(confs), torch.cat(heads))

    def _log_pseudo_labels(self, epoch: int, pred: TargetPredictions, keep: torch.Tensor, how: str) -> None:
        """The epoch's pseudo-labels per target image (in target order), for reports scored outside
        training: the trainer itself has no target labels to score them with."""
        self._append_metrics(
            {
                "kind": "pseudo_labels",
                "epoch": epoch + 1,
                "how": how,
                "cliea": pred.cliea.tolist(),
                "confidence": [round(float(c), 4) for c in pred.confidence],
                "head": pred.head.tolist(),
                "keep": keep.int().tolist(),
            }
        )

    def _publish_best(self, model, extra_json: dict[str, dict] | None = None) -> None:
        """Write best/ in a staging folder, then swap it in: a crash never leaves half a best/."""
        staging, best = self.out / ".best-staging", self.out / "best"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        for name, content in (extra_json or {}).items():
            (staging / name).write_text(json.dumps(content) + "\n")
        shutil.rmtree(best, ignore_errors=True)
        os.replace(staging, best)

    @torch.no_grad()
    def _adapt_best_to_target(self) -> None:
        """AdaBN on best/: BatchNorm running statistics = the target's (un-augmented images only).

        Idempotent: best/target_bn.json marks a checkpoint already adapted (resume-safe)."""
        from kcdp_core.model.kcdp import KCDPModel

        best = self.out / "best"
        marker = best / "target_bn.json"
        if marker.exists():
            return
        model = KCDPModel.from_pretrained(best)
        kept = list(model.statistics_modules().values())
        if not any(batch_norms(m) for m in kept):
            return
        loader = torch.utils.data.DataLoader(self.target_plain, batch_size=self.tc.batch_size)
        if not recompute_statistics(model, loader, within=kept):
            self.log("best/ keeps its source BatchNorm statistics: no target batch of two or more images")
            return
        self._publish_best(
            model, {"target_bn.json": {"target": str(self.target), "images": len(self.target_plain)}}
        )
        self._append_metrics({"kind": "target_bn", "images": len(self.target_plain)})
        self.log(
            f"best/: BatchNorm statistics recomputed on {len(self.target_plain)} unlabelled target images"
        )

    @torch.no_grad()
    def _zeroshot_pseudo_labels(self, model) -> TargetPredictions:
        from kcdp_core.train.zeroshot import ZeroShotClassifier, prompt_embeddings

        zs = ZeroShotClassifier(
            model.image_encoder, prompt_embeddings(model.text_encoder, self.config.labels)
        )
        loader = torch.utils.data.DataLoader(self.target_plain, batch_size=self.tc.batch_size)
        logits = torch.cat([zs.logits(batch["pixels"]) for batch in loader])
        conf, labels = declared(logits, self.absent).softmax(dim=1).max(dim=1)
        return TargetPredictions(labels, conf, torch.full_like(labels, -1))

    def _assert_processes_agree(self, model) -> None:
        """Several processes must hold the same weights after each epoch: gradients are all-reduced
        through the wrapped model, and a trained tensor reached another way (CLIEA is called on the
        unwrapped model) would drift silently. Compares one checksum per parameter across processes."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        sums = torch.stack([p.detach().double().sum() for p in model.trainable_parameters()])
        gathered = acc.gather(sums[None].to(acc.device))
        spread = float((gathered - gathered[:1]).abs().max())
        if spread > 1e-6 * max(1.0, float(gathered.abs().max())):
            raise RuntimeError(f"processes disagree on the trained weights (max checksum gap {spread:.3g})")

    # -- the loop ------------------------------------------------------------------------
    def _pseudo_labeller(self, model) -> BatchPseudoLabels | EpochPseudoLabels | None:
        """The DA run's pseudo-labeller for its mode (None: UC)."""
        tc = self.tc
        if tc.setting != "da":
            return None
        if tc.pseudo_labels == "batch":
            return BatchPseudoLabels(model, len(self.target_ds), tc.pseudo_agreement, self.absent)
        if tc.pseudo_labels == "epoch":
            return EpochPseudoLabels("epoch", lambda: self._epoch_pseudo_labels(model), self.config)
        return EpochPseudoLabels(
            "zeroshot", lambda: self._zeroshot_pseudo_labels(model), self.config, refresh=False
        )

    def _begin(self, resume: bool) -> tuple[int, dict]:
        """(first epoch to train, best so far): a fresh run, or where the checkpoint in `out` ended."""
        self.global_step = 0
        best: dict = {"epoch": -1, "score": None, "val_macro_f1": None, "val_accuracy": None}
        if resume and (self.out / STATE_JSON).exists():
            state = self._load_checkpoint()
            self.global_step = state["step"]
            self.log(f"resuming {self.out} after epoch {state['epoch']} (step {self.global_step})")
            return state["epoch"], state["best"]
        if resume:
            self.log(f"--resume: no checkpoint in {self.out} yet, starting from scratch")
        if self._metrics_path().exists():
            self._metrics_path().unlink()  # a fresh run owns its log
        return 0, best

    def run(self, resume: bool = False) -> TrainResult:
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        acc, tc = self.accelerator, self.tc
        start_epoch, best = self._begin(resume)
        if not (self.out / "config.json").exists():
            self.config.save(self.out)
        raw = acc.unwrap_model(self.model)
        labeller = self._pseudo_labeller(raw)
        for epoch in range(start_epoch, tc.epochs):
            t0 = time.time()
            # accelerate's loaders keep their own epoch counter (reset on resume): set it explicitly.
            for obj in (
                self.train_loader, self.target_loader, self.train_ds, self.sampler, self.target_sampler,
                getattr(self, "target_ds", None),
            ):  # fmt: skip
                if obj is not None and hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            # Warm-up epochs train on the source alone: CLIEA's labels are noise before it has learnt.
            active = labeller if labeller is not None and epoch >= tc.pseudo_warmup_epochs else None
            if active is not None:
                chosen = active.start_epoch(epoch)
                if chosen is not None:
                    self._log_pseudo_labels(epoch, chosen.pred, chosen.keep, chosen.how)
                    if isinstance(active, EpochPseudoLabels) and active.pool is not None:
                        self.target_sampler.set_pool(active.pool)
            row = self._train_epoch(epoch, active)
            if active is not None:
                used = active.finish_epoch()
                if used is not None:
                    self._log_pseudo_labels(epoch, used.pred, used.keep, used.how)
            best = self._end_epoch(epoch, row, best, t0)
        if tc.setting == "da" and tc.target_bn and acc.is_main_process and (self.out / "best").exists():
            self._adapt_best_to_target()
        acc.end_training()
        return TrainResult(self.out, best["epoch"], best["val_macro_f1"], max(0, tc.epochs - start_epoch))

    def _train_epoch(self, epoch: int, labeller) -> dict:
        """One pass over the source (and, with a labeller, as many target batches); the epoch's row."""
        from tqdm.auto import tqdm

        acc, tc, cfg, model = self.accelerator, self.tc, self.config, self.model
        raw = acc.unwrap_model(model)
        model.train()
        sums: dict[str, float] = {}
        hist = torch.zeros(len(cfg.labels), dtype=torch.long)
        target_iter = iter(self.target_loader) if self.target_loader is not None and labeller else None
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            disable=not (self.progress and acc.is_local_main_process),
            leave=False,
        )
        for batch in bar:
            with acc.accumulate(model):
                with acc.autocast():
                    step = training_step(cfg, model, raw, batch, target_iter, labeller)
                    if step.pseudo is not None:
                        kept = step.pseudo[step.keep].cpu()
                        hist += torch.bincount(kept, minlength=len(cfg.labels))
                acc.backward(step.loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(raw.trainable_parameters(), 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            self.global_step += 1
            for key, value in step.parts.items():
                sums[key] = sums.get(key, 0.0) + value
            row = {"kind": "step", "epoch": epoch + 1, "step": self.global_step}
            row["lr"] = self.scheduler.get_last_lr()[0]
            row.update({k: round(v, 6) for k, v in step.parts.items()})
            self._append_metrics(row)
            bar.set_postfix(loss=f"{step.parts['loss']:.3f}")
        bar.close()
        n = max(1, len(self.train_loader))  # this process's batches (a shard under several)
        row = {"kind": "epoch", "epoch": epoch + 1, "step": self.global_step}
        row.update({f"train_{k}": round(v / n, 6) for k, v in sums.items()})
        if labeller is not None:
            hist = acc.reduce(hist.to(acc.device), "sum").cpu()  # every process labels its own shard
            row["pseudo_label_counts"] = dict(zip(cfg.labels, hist.tolist(), strict=True))
        return row

    def _end_epoch(self, epoch: int, row: dict, best: dict, t0: float) -> dict:
        """Source validation, best/ when it improved, the epoch's log row and checkpoint; the new best."""
        acc, cfg = self.accelerator, self.config
        raw = acc.unwrap_model(self.model)
        if self.val_ds is not None:
            loader = torch.utils.data.DataLoader(self.val_ds, batch_size=self.tc.batch_size)
            preds = predict(raw, loader, acc.device)
            m = classification_metrics(preds.labels, preds.predicted, cfg.labels)
            row["val_accuracy"] = round(m["accuracy"], 6)
            row["val_macro_f1"] = round(m["macro_f1"], 6)
            score = m["macro_f1"]
        else:
            score = -float(row.get("train_loss", 0.0))  # no validation split: lowest training loss
        if best["epoch"] < 0 or score > best["score"]:
            best = {
                "epoch": epoch + 1,
                "score": score,
                "val_macro_f1": row.get("val_macro_f1"),
                "val_accuracy": row.get("val_accuracy"),
            }
            if acc.is_main_process:
                self._publish_best(raw)
        row["best_epoch"] = best["epoch"]
        self._append_metrics(row)
        self.log(
            f"epoch {epoch + 1}/{self.tc.epochs}: loss {row.get('train_loss', float('nan')):.4f}"
            + (
                f", source-val acc {row['val_accuracy']:.3f} macro-F1 {row['val_macro_f1']:.3f}"
                if "val_accuracy" in row
                else ""
            )
            + (f", pseudo-labels {row['pseudo_label_counts']}" if "pseudo_label_counts" in row else "")
            + f" ({time.time() - t0:.1f}s)"
        )
        self._assert_processes_agree(raw)
        self._save_checkpoint(epoch + 1, best)
        return best


@dataclass
class StepOutput:
    loss: torch.Tensor
    parts: dict[str, float]  # each loss term, for the log
    pseudo: torch.Tensor | None  # [B] the target batch's pseudo-labels (None: no target batch)
    keep: torch.Tensor | None  # [B] bool: which of them trained


def training_step(
    cfg: KCDPConfig, model, raw, batch: dict, target_batches: Iterator[dict] | None, labeller
) -> StepOutput:
    """Forward passes and the loss of one step: the source batch, then the next target batch with
    its pseudo-labels from `labeller` when there are target batches. `model` is the (possibly
    wrapped) model the gradients flow through, `raw` the same model unwrapped (CLIEA is called on it
    directly). The target batch is drawn after the source forward: the loader's first draw seeds
    from the global RNG, and the source forward's dropout must see the same RNG state on resume."""
    from kcdp_core.model.losses import total_loss

    out_s = model(batch["pixels"], batch["k"], batch["k_mask"], face=batch.get("face"))
    scores_s = raw.cliea_scores(out_s.features, batch["k"], batch["k_mask"]) if raw.cliea else None
    out_t = pseudo = keep = None
    if target_batches is not None:
        tb = next(target_batches)
        out_t = model(tb["pixels"], tb["k"], tb["k_mask"], face=tb.get("face"))
        pseudo, keep = labeller.label(tb["index"], out_t, tb["k"], tb["k_mask"])
    loss, parts = total_loss(cfg, out_s, batch["label"], scores_s, out_t, pseudo, keep)
    terms: dict[str, tuple[float, torch.Tensor]] = {}  # name: (weight, term)
    if "pixels2" in batch:
        terms["style_consistency"] = (
            cfg.train.style_consistency_weight,
            view_consistency(model, out_s, batch),
        )
    if target_batches is not None and "pixels2" in tb:
        terms["consistency"] = (cfg.train.consistency_weight, view_consistency(model, out_t, tb))
    for name, (weight, term) in terms.items():
        loss = loss + weight * term
        parts = {**parts, name: float(term.detach()), "loss": float(loss.detach())}
    return StepOutput(loss, parts, pseudo, keep)


def view_consistency(model, first, batch: dict) -> torch.Tensor:
    """Cross-entropy of the model on a batch's second views ("pixels2", "face2") against its softmax on
    the first (`first`, that batch's output), gradient-free: the first view is the soft target."""
    other = model(batch["pixels2"], batch["k"], batch["k_mask"], face=batch.get("face2"))
    soft = first.logits.detach().float().softmax(dim=-1)
    return -(soft * other.logits.float().log_softmax(dim=-1)).sum(dim=-1).mean()
