"""What an animated sticker costs against a still one, end to end in the runtime (decode included).

    python benchmarks/animated_cost.py [--model EXPORT] [--rounds 60]

The stickers are built from runtime/examples (deterministic): the still grinning.png, and 24-frame
animations cycling the four examples, as GIF at the examples' size and as WebP at 512 px (the size
messaging apps use for stickers). Each animation is timed as the runtime classifies it (up to
Pipeline.max_frames frames spread through it) and with max_frames = 1 (the first frame only: its
decoding without the extra frames' classification). One process, model loaded and warmed up, cases
interleaved round by round; prints the median and 90th percentile per case in ms.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path

from PIL import Image

from kcdp_runtime.cli import resolve_model
from kcdp_runtime.pipeline import Pipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "runtime" / "examples"
NAMES = ("grinning", "angry", "crying", "screaming")


def stickers() -> dict[str, bytes]:
    frames = [Image.open(EXAMPLES / f"{n}.png").convert("RGBA") for n in NAMES]
    cycle = [frames[i % len(frames)] for i in range(24)]
    out = {"still PNG": (EXAMPLES / "grinning.png").read_bytes()}
    gif = io.BytesIO()
    cycle[0].save(gif, format="GIF", save_all=True, append_images=cycle[1:], duration=80, loop=0, disposal=2)
    out[f"GIF {cycle[0].width} px, 24 frames"] = gif.getvalue()
    big = [f.resize((512, 512), Image.Resampling.BICUBIC) for f in cycle]
    webp = io.BytesIO()
    big[0].save(webp, format="WEBP", save_all=True, append_images=big[1:], duration=80, loop=0, quality=80)
    out["WebP 512 px, 24 frames"] = webp.getvalue()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="export folder (default: the embedded model)")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained(resolve_model(args.model))
    pipe.warmup()
    cases = []
    for name, data in stickers().items():
        cases.append((name, data, Pipeline.max_frames))
        if not name.startswith("still"):
            cases.append((f"{name}, first frame only", data, 1))
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    frames: dict[str, object] = {}
    for _ in range(3):  # the batched graphs' first runs
        for name, data, k in cases:
            pipe.max_frames = k
            pipe.run([data], names=[name])
    for _ in range(args.rounds):
        for name, data, k in cases:
            pipe.max_frames = k
            t0 = time.perf_counter()
            result = pipe.run([data], names=[name])[0]
            times[name].append((time.perf_counter() - t0) * 1000)
            frames[name] = result.get("frames", {"count": 1, "classified": [0]})
    print(f"model {pipe.manifest.folder.name} ({pipe.manifest.precision}), {args.rounds} rounds, {pipe.provider_line}")
    for name, data, _ in cases:
        ts = sorted(times[name])
        p90 = ts[int(0.9 * (len(ts) - 1))]
        print(f"{name:40s} {len(data) / 1024:7.1f} KiB  frames {frames[name]}  p50 {statistics.median(ts):6.1f} ms  p90 {p90:6.1f} ms")  # fmt: skip
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
