"""kcdp-pretrain: build (or resume) the `mini` foundation, and evaluate it.

    kcdp-pretrain run  --data DATA --work RUN [--out FOLDER] [--stages encoder,vae,unet,bank] [--image-size 64]
                       [--encoder-minutes 20 --vae-minutes 10 --unet-minutes 15] [--encoder-steps N ...]
    kcdp-pretrain eval --data DATA --work RUN [--out FOLDER] [--json FILE] [--figures DIR] [--parts encoder,vae,unet]

DATA is the output of `kcdp-data emoji` (corpus/captions.jsonl, domains/). Rerunning `run` after an
interruption (even kill -9) resumes every stage from its last checkpoint; finished stages are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kcdp_core.extras import names_missing_extra
from kcdp_core.process_group import leave

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "foundation" / "mini"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kcdp-pretrain", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "eval"):
        s = sub.add_parser(name)
        s.add_argument("--data", required=True, help="kcdp-data emoji output folder")
        s.add_argument("--work", required=True, help="run folder: checkpoints, loss logs, caches")
        s.add_argument("--out", default=str(DEFAULT_OUT), help=f"foundation folder (default {DEFAULT_OUT})")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--limit", type=int, default=None, help="use the first N corpus lines (smoke runs)")
        s.add_argument("--heldout-fraction", type=float, default=0.05)
        s.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch threads (1 is fastest on a shared, busy CPU: measured)",
        )
        s.add_argument("--small", action="store_true", help="tiny models (smoke tests, fixture corpora)")
        s.add_argument(
            "--avatars", default=None, help="kcdp-data avatars output: its corpus joins the emoji one"
        )
        s.add_argument("--image-size", type=int, default=64, help="pixels per side of the foundation (64)")
        if name == "run":
            s.add_argument("--encoder-init", default=None, help="start the encoder from this foundation's")
            s.add_argument("--unet-init", default=None, help="start the UNet from this foundation's")
            s.add_argument(
                "--vae-from", default=None, help="take this foundation's VAE instead of training one"
            )
            s.add_argument(
                "--repa-weight", type=float, default=None, help="UNet alignment to the image encoder (0: off)"
            )
            s.add_argument(
                "--repa-levels", default=None, help="UNet blocks aligned, e.g. mid,up0,up1,up2 (default mid)"
            )
            s.add_argument(
                "--repa-target",
                choices=("embedding", "tokens"),
                default=None,
                help="the encoder's embedding (global) or its per-position tokens",
            )
            s.add_argument("--stages", default="encoder,vae,unet,bank")
            for stage, minutes in (("encoder", 20.0), ("vae", 10.0), ("unet", 15.0)):
                s.add_argument(
                    f"--{stage}-minutes", type=float, default=minutes, help="time budget (0: use steps)"
                )
                s.add_argument(f"--{stage}-steps", type=int, default=None, help="maximum steps")
                s.add_argument(f"--{stage}-batch-size", type=int, default=None)
            s.add_argument("--checkpoint-seconds", type=float, default=120.0)
        else:
            s.add_argument("--json", default=None, help="write the metrics here")
            s.add_argument(
                "--figures", default=None, help="write mini_samples.png and mini_vae_recon.png here"
            )
            s.add_argument("--parts", default="encoder,vae,unet", help="components to evaluate")
            s.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the sample grid")
    return p


def _recipe(args: argparse.Namespace):
    from kcdp_core.pretrain.recipe import Recipe

    recipe = Recipe(
        data=args.data,
        work=args.work,
        out=args.out,
        seed=args.seed,
        limit=args.limit,
        heldout_fraction=args.heldout_fraction,
        avatars=args.avatars,
        image_size=args.image_size,
    )
    if args.command == "run":
        recipe.vae_from = args.vae_from
        recipe.encoder.init_from = args.encoder_init
        recipe.unet.init_from = args.unet_init
        if args.repa_weight is not None:
            recipe.unet.repa_weight = args.repa_weight
        if args.repa_levels:
            recipe.unet.repa_levels = tuple(n.strip() for n in args.repa_levels.split(",") if n.strip())
        if args.repa_target:
            recipe.unet.repa_target = args.repa_target
    if args.small:
        recipe.encoder.backbone = "tiny_cnn"
        recipe.encoder.pretrained_backbone = False
        recipe.encoder.hidden_dim = 64
        recipe.vae.block_out_channels = (8, 16, 16, 16)
        recipe.vae.norm_num_groups = 4
        recipe.unet.block_out_channels = (16, 16, 32)
        recipe.unet.norm_num_groups = 8
        recipe.unet.attention_head_dim = 4
    for name, opts in (("encoder", recipe.encoder), ("vae", recipe.vae), ("unet", recipe.unet)):
        opts.stage.seed = args.seed
        if args.command != "run":
            continue
        minutes = getattr(args, f"{name}_minutes")
        steps = getattr(args, f"{name}_steps")
        batch = getattr(args, f"{name}_batch_size")
        opts.stage.budget_minutes = minutes if minutes and minutes > 0 else None
        if steps is not None:
            opts.stage.max_steps = steps
        if batch is not None:
            opts.batch_size = batch
        opts.stage.checkpoint_seconds = args.checkpoint_seconds
        opts.stage.warmup_steps = min(opts.stage.warmup_steps, max(1, opts.stage.max_steps // 10))
    return recipe


@names_missing_extra("kcdp-pretrain")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    recipe = _recipe(args)
    import torch

    torch.set_num_threads(max(1, args.threads))
    from kcdp_core.pretrain import recipe as recipe_mod

    try:
        if args.command == "run":
            stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
            unknown = set(stages) - set(recipe_mod.STAGES)
            if unknown:
                print(f"kcdp-pretrain: unknown stage(s) {sorted(unknown)}", file=sys.stderr)
                return 2
            summary = recipe_mod.run(recipe, stages)
            print(json.dumps(summary, indent=2))
            from accelerate import PartialState

            return leave(0, PartialState().num_processes)  # every stage is written
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        result = recipe_mod.evaluate(
            recipe, figures=args.figures, parts=parts, sample_steps=args.sample_steps
        )
        text = json.dumps(result, indent=2)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
        print(text)
        return 0
    except (FileNotFoundError, ValueError) as exc:
        print(f"kcdp-pretrain: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
