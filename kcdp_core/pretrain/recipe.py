"""The whole `mini` foundation recipe: corpus -> encoder -> VAE -> UNet -> caption bank -> foundation.json,
and its evaluation. Each stage trains in <work>/<stage>/ (resumable) and then exports its component,
fp16, into the foundation folder; rerunning the recipe skips finished stages and re-exports.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kcdp_core.config import MINILM, Source, mini
from kcdp_core.knowledge.text_encoder import TextEncoder
from kcdp_core.pretrain import encoder as encoder_stage
from kcdp_core.pretrain import unet as unet_stage
from kcdp_core.pretrain import vae as vae_stage
from kcdp_core.pretrain.bank import write_caption_bank
from kcdp_core.pretrain.corpus import Corpus, load_corpus, load_domains

STAGES = ("encoder", "vae", "unet", "bank")


@dataclass
class Recipe:
    data: str
    work: str
    out: str
    image_size: int = 64
    text_length: int = field(default_factory=lambda: mini().knowledge.text_length)
    sentence_length: int = 64  # captions are CLDR name + keywords: keep them whole for the embeddings
    heldout_fraction: float = 0.05
    seed: int = 0
    limit: int | None = None  # first N corpus lines (smoke runs)
    # kcdp-data avatars output: its corpus (captioned avatars of non-benchmark styles) joins the emoji
    # corpus, and its benchmark styles join the zero-shot evaluation.
    avatars: str | None = None
    # Take the VAE of an existing foundation (folder or kcdp:<path>) instead of training one.
    vae_from: str | None = None
    text_encoder: str = MINILM
    encoder: encoder_stage.EncoderOptions = field(default_factory=encoder_stage.EncoderOptions)
    vae: vae_stage.VAEOptions = field(default_factory=vae_stage.VAEOptions)
    unet: unet_stage.UNetOptions = field(default_factory=unet_stage.UNetOptions)


class Context:
    """What the stages share, loaded lazily once: corpus, text encoder, caption embeddings."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.work = Path(recipe.work)
        self.out = Path(recipe.out)
        self._corpus: Corpus | None = None
        self._text: TextEncoder | None = None
        self._embeddings: torch.Tensor | None = None
        from accelerate import PartialState

        # Under `accelerate launch` every process trains; the main one writes exports and caches
        # first (the others then read them).
        self.state = PartialState()

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            r = self.recipe
            data = [r.data, *([str(Path(r.avatars) / "corpus")] if r.avatars else [])]
            self._corpus = load_corpus(
                data, r.image_size, r.heldout_fraction, r.seed, cache_dir=self.work / "cache", limit=r.limit
            )
            c = self._corpus
            print(
                f"corpus: {len(c)} images, {len(c.vocabulary)} captions, {int(c.faces.sum())} face images, "
                f"{int(c.heldout.sum())} held out ({len(set(np.array(c.codepoints)[c.heldout]))} emojis)",
                file=sys.stderr,
            )
        return self._corpus

    def text_encoder(self, length: int) -> TextEncoder:
        if self._text is None:
            src = Source(self.recipe.text_encoder)
            self._text = TextEncoder.from_sources(src, src, self.recipe.sentence_length)
        return TextEncoder(self._text.model, self._text.tokenizer, length)

    @property
    def embeddings(self) -> torch.Tensor:
        """Sentence embeddings of the caption vocabulary, cached in <work>/cache."""
        if self._embeddings is None:
            vocab = self.corpus.vocabulary
            text = "\n".join([self.recipe.text_encoder, str(self.recipe.sentence_length), *vocab])
            key = hashlib.sha256(text.encode()).hexdigest()[:16]
            path = self.work / "cache" / f"sentences-{key}.safetensors"
            with self.state.main_process_first():
                if path.exists():
                    self._embeddings = load_file(str(path))["embeddings"]
                else:
                    self._embeddings = self.text_encoder(self.recipe.sentence_length).sentence_embeddings(
                        vocab
                    )
                    path.parent.mkdir(parents=True, exist_ok=True)
                    save_file({"embeddings": self._embeddings.contiguous()}, str(path))
        return self._embeddings


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def run_encoder(ctx: Context, stop_after: int | None = None) -> dict | None:
    r = ctx.recipe
    stage, model = encoder_stage.build_stage(
        ctx.corpus, ctx.embeddings, ctx.work / "encoder", r.encoder, ctx.embeddings.shape[1], r.image_size
    )
    stage.run(stop_after=stop_after)
    if not stage.done:
        return None
    if ctx.is_main:
        model.encoder.save_pretrained(ctx.out / "image_encoder", dtype=torch.float16)
    return {
        "steps": stage.step,
        "seconds": round(stage.elapsed, 1),
        "temperature": float(1 / model.scale().detach()),
        "init_from": r.encoder.init_from or "ImageNet",
    }


def run_vae(ctx: Context, stop_after: int | None = None) -> dict | None:
    r = ctx.recipe
    if r.vae_from:
        import shutil

        from kcdp_core.sources import local_folder

        folder = local_folder(Source(r.vae_from, "vae"))
        if folder is None:
            raise FileNotFoundError(f"{r.vae_from}: no vae folder to take")
        if ctx.is_main:
            shutil.copytree(folder, ctx.out / "vae", dirs_exist_ok=True)
        config = json.loads((folder / "config.json").read_text())
        return {"reused_from": r.vae_from, "scaling_factor": config.get("scaling_factor")}
    stage, vae = vae_stage.build_stage(ctx.corpus, ctx.work / "vae", r.vae, r.image_size)
    stage.run(stop_after=stop_after)
    if not stage.done:
        return None
    factor = vae_stage.set_scaling_factor(vae, ctx.corpus, seed=r.seed)
    if ctx.is_main:
        _save_fp16(vae, ctx.out / "vae")
    return {"steps": stage.step, "seconds": round(stage.elapsed, 1), "scaling_factor": factor}


def _save_fp16(model: torch.nn.Module, folder: Path) -> None:
    """diffusers save_pretrained with fp16 tensors (loads back as fp32 by default)."""
    import copy

    copy.deepcopy(model).half().save_pretrained(folder)


def latents(ctx: Context) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Posterior mean/std of every corpus image under the exported VAE (cached), and its scaling factor."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(ctx.out / "vae")
    stamp = (ctx.out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    path = ctx.work / "cache" / f"latents-{len(ctx.corpus)}-{stamp}.safetensors"
    if path.exists():
        z = load_file(str(path))
        return z["mean"], z["std"], float(vae.config.scaling_factor)
    # the whole corpus once: on the process's GPU under accelerate (the latents come back to the CPU)
    mean, std = vae_stage.encode_latents(vae.to(ctx.state.device), ctx.corpus.images)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(path))
    return mean, std, float(vae.config.scaling_factor)


def repa_targets(ctx: Context) -> torch.Tensor:
    """REPA's targets for every clean corpus image (cached), [N, D, h, w]: the exported image encoder's
    embedding ([N, D, 1, 1]) or its per-position tokens (recipe.unet.repa_target)."""
    from kcdp_core.model.image_encoder import ImageEncoder

    kind = ctx.recipe.unet.repa_target
    if kind not in ("embedding", "tokens"):
        raise ValueError(f"repa_target {kind!r}: expected 'embedding' or 'tokens'")
    folder = ctx.out / "image_encoder"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: train the encoder stage before the UNet (REPA targets)")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    name = "image-embeddings" if kind == "embedding" else "image-tokens"
    path = ctx.work / "cache" / f"{name}-{len(ctx.corpus)}-{stamp}.safetensors"
    if path.exists():
        targets = load_file(str(path))["embeddings"]
    else:
        encoder = ImageEncoder.from_pretrained(folder)
        targets = encoder_stage.embed_images(encoder, ctx.corpus.images, tokens=kind == "tokens")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": targets.contiguous()}, str(path))
    return targets if targets.dim() == 4 else targets[:, :, None, None]


def run_unet(ctx: Context, stop_after: int | None = None) -> dict | None:
    r = ctx.recipe
    if not (ctx.out / "vae" / "config.json").exists():
        raise FileNotFoundError(f"{ctx.out / 'vae'}: train the VAE stage first")
    with ctx.state.main_process_first():
        mean, std, factor = latents(ctx)
        targets = repa_targets(ctx) if r.unet.repa_weight > 0 else None
    cond = unet_stage.conditioning(ctx.text_encoder(r.text_length), ctx.corpus.vocabulary)
    stage, unet, scheduler = unet_stage.build_stage(
        ctx.corpus, mean, std, factor, cond, ctx.work / "unet", r.unet, repa_targets=targets
    )
    stage.run(stop_after=stop_after)
    if not stage.done:
        return None
    if ctx.is_main:
        _save_fp16(unet, ctx.out / "unet")
        scheduler.save_pretrained(ctx.out / "scheduler")
    return {
        "steps": stage.step,
        "seconds": round(stage.elapsed, 1),
        "init_from": r.unet.init_from or "random",
    }


def run_bank(ctx: Context) -> dict:
    """Every corpus caption (deduplicated) with its sentence embedding."""
    embeddings = ctx.embeddings
    if ctx.is_main:
        write_caption_bank(ctx.out / "caption_bank", ctx.corpus.vocabulary, embeddings)
    return {"captions": len(ctx.corpus.vocabulary)}


def write_foundation_json(ctx: Context, stages: dict) -> Path:
    r = ctx.recipe
    data = {
        "kind": "kcdp-foundation",
        "preset": "mini",
        "repa_weight": r.unet.repa_weight,
        **(
            {"repa": {"levels": list(r.unet.repa_levels), "target": r.unet.repa_target}}
            if r.unet.repa_weight
            else {}
        ),
        "text_encoder": asdict(Source(r.text_encoder)),
        # Additive: how it was made, so the folder documents itself.
        "image_size": r.image_size,
        "text_length": r.text_length,
        "caption_bank": {"sentence_length": r.sentence_length, "captions": len(ctx.corpus.vocabulary)},
        "scheduler": "scheduler",
        "corpus": {
            "images": len(ctx.corpus),
            "heldout_fraction": r.heldout_fraction,
            "heldout_emojis": len(set(np.array(ctx.corpus.codepoints)[ctx.corpus.heldout])),
            "seed": r.seed,
        },
        "stages": stages,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = ctx.out / "foundation.json"
    _write_json(path, data)
    return path


def run(recipe: Recipe, stages: tuple[str, ...] = STAGES, stop_after: int | None = None) -> dict:
    """Run (or resume) the given stages; writes foundation.json once every stage is done.

    Stage results go to <work>/<stage>/result.json, so stages may run in separate processes at
    the same time (e.g. encoder,bank next to vae,unet); whichever finishes last writes foundation.json.
    """
    ctx = Context(recipe)
    ctx.out.mkdir(parents=True, exist_ok=True)
    runners = {
        "encoder": lambda: run_encoder(ctx, stop_after),
        "vae": lambda: run_vae(ctx, stop_after),
        "unet": lambda: run_unet(ctx, stop_after),
        "bank": lambda: run_bank(ctx),
    }
    for name in stages:
        started = time.monotonic()
        result = runners[name]()
        if result is None:
            print(f"{name}: stopped before the end; rerun to resume", file=sys.stderr)
            break
        result["wall_seconds_this_run"] = round(time.monotonic() - started, 1)
        if ctx.is_main:
            _write_json(ctx.work / name / "result.json", result)
            print(f"{name}: done {result}", file=sys.stderr)
        ctx.state.wait_for_everyone()  # the next stage reads this one's export
    summary = {
        s: json.loads((ctx.work / s / "result.json").read_text())
        for s in STAGES
        if (ctx.work / s / "result.json").exists()
    }
    if len(summary) == len(STAGES) and ctx.is_main:
        write_foundation_json(ctx, summary)
    return summary


# -- evaluation ----------------------------------------------------------------------------------

SAMPLE_DOMAINS = ("twitter", "openmoji", "google", "fluent_flat", "noto_v1", "openmoji_black", "fluent_color")
UNET_TIMESTEPS = (1, 50, 100, 250, 500, 750, 999)


EVAL_PARTS = ("encoder", "vae", "unet")


def evaluate(
    recipe: Recipe,
    figures: str | Path | None = None,
    samples_per_caption: int = 4,
    parts: tuple[str, ...] = EVAL_PARTS,
    sample_steps: int = 50,
) -> dict:
    """Every figure of benchmarks/RESULTS.md 'mini foundation', from the foundation folder itself."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from kcdp_core.model.image_encoder import ImageEncoder
    from kcdp_core.portable.labels import EMOJI7

    ctx = Context(recipe)
    corpus = ctx.corpus
    out = ctx.out
    held = corpus.heldout_index
    result: dict = {
        "corpus": {"images": len(corpus), "captions": len(corpus.vocabulary), "heldout_images": len(held)},
        "seconds": {},
        "params": {},
    }
    domains = []
    if (Path(recipe.data) / "domains").is_dir():
        domains = load_domains(recipe.data, recipe.image_size)
        names = [n for fam in encoder_stage.FAMILIES.values() for n in fam]
        domains = [d for d in domains if d.name in names] or domains
    if recipe.avatars and (Path(recipe.avatars) / "domains").is_dir():
        domains += load_domains(recipe.avatars, recipe.image_size)

    if "encoder" in parts:
        t0 = time.monotonic()
        image_encoder = ImageEncoder.from_pretrained(out, "image_encoder")
        result["params"]["image_encoder"] = sum(p.numel() for p in image_encoder.parameters())
        result["retrieval_heldout"] = encoder_stage.retrieval(image_encoder, corpus, ctx.embeddings, held)
        rng = np.random.default_rng(0)
        train_sample = np.sort(
            rng.choice(corpus.train_index, min(1000, len(corpus.train_index)), replace=False)
        )
        result["retrieval_train_sample"] = encoder_stage.retrieval(
            image_encoder, corpus, ctx.embeddings, train_sample
        )
        if domains:
            from kcdp_core.data.avatar_key import BENCHMARK_STYLES

            result["zero_shot"] = encoder_stage.zero_shot(
                image_encoder,
                ctx.text_encoder(recipe.sentence_length),
                domains,
                list(EMOJI7),
                encoder_stage.FAMILIES | {"avatars": BENCHMARK_STYLES},
            )
        result["seconds"]["encoder"] = round(time.monotonic() - t0, 1)

    if "vae" in parts or "unet" in parts:
        vae = AutoencoderKL.from_pretrained(out, subfolder="vae")
        result["params"]["vae"] = sum(p.numel() for p in vae.parameters())
    if "vae" in parts:
        t0 = time.monotonic()
        rec = vae_stage.reconstruct(vae, corpus.images[held])
        result["vae"] = {"psnr_heldout_db": vae_stage.psnr(corpus.images[held], rec)}
        held_faces = corpus.faces[held]
        if held_faces.any():
            result["vae"]["psnr_heldout_faces_db"] = vae_stage.psnr(
                corpus.images[held][held_faces], rec[held_faces]
            )
        if domains:
            faces = np.concatenate(
                [d.images for d in domains if d.name in SAMPLE_DOMAINS] or [domains[0].images]
            )
            result["vae"]["psnr_benchmark_faces_db"] = vae_stage.psnr(
                faces, vae_stage.reconstruct(vae, faces)
            )
            if figures is not None:
                picks = [d for d in domains if d.name in SAMPLE_DOMAINS][:5] or domains[:1]
                imgs, titles = [], []
                for d in picks:
                    sel = np.linspace(0, len(d.images) - 1, 12).round().astype(int)
                    imgs += [d.images[i] for i in sel]
                    titles.append(d.name)
                imgs = np.stack(imgs)
                vae_stage.save_recon_grid(
                    imgs, vae_stage.reconstruct(vae, imgs), Path(figures) / "mini_vae_recon.png", titles
                )
        result["seconds"]["vae"] = round(time.monotonic() - t0, 1)

    if "unet" in parts:
        t0 = time.monotonic()
        unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
        result["params"]["unet"] = sum(p.numel() for p in unet.parameters())
        scheduler = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
        factor = float(vae.config.scaling_factor)
        cond = unet_stage.conditioning(ctx.text_encoder(recipe.text_length), corpus.vocabulary)
        mean, _ = vae_stage.encode_latents(vae, corpus.images[held])
        result["unet_heldout_denoising_mse"] = unet_stage.denoising_loss(
            unet, scheduler, mean, factor, cond, corpus.caption_ids[held], list(UNET_TIMESTEPS)
        )
        if figures is not None:
            # Held-out captions: faces first (the emotion signal), then other emojis, one row each.
            chosen, seen = [], set()
            order = sorted(held, key=lambda i: (not corpus.faces[i], corpus.codepoints[i]))
            face_rows = [i for i in order if corpus.faces[i]]
            other_rows = [i for i in order if not corpus.faces[i]]
            for i in face_rows[:: max(1, len(face_rows) // 6)] + other_rows[:: max(1, len(other_rows) // 6)]:
                if corpus.caption_ids[i] not in seen:
                    seen.add(corpus.caption_ids[i])
                    chosen.append(i)
            chosen = chosen[:12]
            ids = np.repeat(corpus.caption_ids[chosen], samples_per_caption)
            imgs = unet_stage.sample(
                unet,
                vae,
                scheduler.config,
                cond.states[ids],
                cond.masks[ids],
                cond,
                steps=sample_steps,
                guidance=4.0,
            )
            unet_stage.save_sample_grid(
                corpus.images[chosen],
                imgs,
                [corpus.captions[i] for i in chosen],
                Path(figures) / "mini_samples.png",
                samples_per_caption,
            )
        result["seconds"]["unet"] = round(time.monotonic() - t0, 1)
    return result
