"""Sticker formats in the runtime: SVG rasterised with resvg, animated GIF / WebP / APNG scored over
frames spread through the animation; folder mode picks up .svg; the caption reported is the one
whose knowledge was used; `kcdp-infer ... | head -1` ends quietly."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from runtime_export import build_fake_export
from runtime_images import BLUE, RED, YELLOW, animation, blues, gif_bytes, png_bytes, svg_bytes

from kcdp_core.portable.images import MAX_FRAMES, ImageError, is_svg, load_frames, load_image
from kcdp_runtime.cli import main
from kcdp_runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return build_fake_export(tmp_path_factory.mktemp("formats") / "fake")


@pytest.fixture(scope="module")
def pipe(export):
    return Pipeline.from_pretrained(export)


def _animated(fmt: str, frames: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {"loop": 0} if fmt == "GIF" else {}
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=40, **extra)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_frames_spread_through_the_animation(fmt):
    colours = [(10 * i, 200 - 10 * i, 40) for i in range(12)]  # 12 distinct frames
    frames = load_frames(_animated(fmt, animation(colours)))
    assert frames.count == 12 and frames.indices == [0, 3, 6, 9] and frames.animated
    got = [img.getpixel((5, 5)) for img in frames.images]
    assert all(max(abs(a - b) for a, b in zip(g, colours[i], strict=True)) <= 8 for g, i in zip(got, frames.indices, strict=True))  # fmt: skip
    three = load_frames(_animated(fmt, animation(colours[:3])))
    assert three.indices == [0, 1, 2] and MAX_FRAMES == 4
    assert load_frames(_animated(fmt, animation(colours)), max_frames=1).indices == [0]
    still = load_frames(png_bytes(Image.new("RGB", (8, 8), RED)))
    assert (still.count, still.indices, still.animated) == (1, [0], False)


def test_svg_is_rasterised_and_bounded():
    img = load_image(svg_bytes(RED, 40, 20))
    assert img.mode == "RGB" and img.size == (256, 128) and img.getpixel((100, 60)) == RED  # SVG_SIDE, aspect kept
    assert load_frames(svg_bytes(BLUE), svg_side=16).images[0].size == (16, 12)
    # transparent areas composite on white, as for PNG
    ring = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><circle cx="5" cy="5" r="2"/></svg>'
    assert load_image(ring).getpixel((2, 2)) == (255, 255, 255)
    # a claimed size resvg could not allocate (it would abort the process) is drawn inside the square
    huge = b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"><rect width="100%" height="100%" fill="red"/></svg>'
    assert load_image(huge).size == (256, 256)
    assert is_svg(b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- x -->\n<!DOCTYPE svg [ <!ENTITY a "b"> ]>\n<svg>')
    assert not is_svg(b"<html><svg></svg></html>") and not is_svg(png_bytes(Image.new("RGB", (4, 4))))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (svg_bytes(RED, extra='<image href="/etc/hostname" width="4" height="4"/>'), "outside resource ('/etc/hostname')"),
        (svg_bytes(RED, extra='<image xlink:href="face.png"/>'), "outside resource ('face.png')"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><rect', "SVG could not be rendered"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="900"></svg>', "too small to classify"),
        ('<svg xmlns="http://www.w3.org/2000/svg">é</svg>'.encode("latin-1"), "not UTF-8"),
    ],
    ids=["absolute-href", "relative-href", "broken", "one-pixel-wide", "latin-1"],
)  # fmt: skip
def test_bad_svg_gets_a_named_error(data, says):
    with pytest.raises(ImageError, match="^sticker.svg: ") as exc:
        load_image(data, name="sticker.svg")
    assert says in str(exc.value)


def test_embedded_data_uri_and_fragment_references_render():
    inner = png_bytes(Image.new("RGB", (4, 4), BLUE))
    import base64

    uri = "data:image/png;base64," + base64.b64encode(inner).decode()
    data = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="8" height="8">'
        f'<defs><rect id="r" width="8" height="8" fill="rgb{RED}"/></defs><use xlink:href="#r"/>'
        f'<image href="{uri}" x="0" y="0" width="4" height="4"/></svg>'
    ).encode()
    img = load_image(data)
    assert img.getpixel((200, 200)) == RED and img.getpixel((20, 20)) == BLUE


def test_animation_scores_the_mean_of_its_frames(pipe):
    colours = [RED, *blues(3), YELLOW, *blues(3)]  # 8 frames: 0 red, 2 blue, 4 yellow, 6 blue
    result = pipe.run([gif_bytes(animation(colours))], names=["anim.gif"])[0]
    assert result["frames"] == {"count": 8, "classified": [0, 2, 4, 6]}
    stills = pipe.run([png_bytes(img) for img in animation([colours[i] for i in (0, 2, 4, 6)])])
    mean = {label: np.mean([s["scores"][label] for s in stills]) for label in pipe.labels}
    assert all(abs(result["scores"][k] - mean[k]) < 2e-6 for k in mean), (result["scores"], mean)
    assert result["label"] == "sadness" and abs(sum(result["scores"].values()) - 1) < 1e-5
    # caption and triplets: those of the frame scoring the label highest (a blue one)
    best = max(stills, key=lambda s: s["scores"]["sadness"])
    assert (result["caption"], result["triplets"]) == (best["caption"], best["triplets"])
    # the cost of every classified frame is reported
    assert result["latency_ms"]["perception"] > 0 and "frames" not in stills[0]


def test_decoded_images_answer_as_their_files_and_a_wrong_array_is_named(pipe):
    rgba = Image.new("RGBA", (30, 20), (*RED, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 30, 6))  # a transparent band: composited on white, as a PNG is
    files = pipe.run([png_bytes(rgba), png_bytes(Image.new("RGB", (24, 24), BLUE))])
    decoded = pipe.run(
        [rgba, np.asarray(rgba), np.zeros((2, 2, 3), np.float32), Image.new("RGB", (24, 24), BLUE)]
    )
    assert decoded[0]["image"] == "<Image 0>" and decoded[1]["image"] == "<ndarray 1>"
    for got in (decoded[0], decoded[1]):
        assert got["scores"] == files[0]["scores"] and got["label"] == "anger"
    assert decoded[2] == {
        "image": "<ndarray 2>",
        "error": "<ndarray 2>: an array of float32 with shape (2, 2, 3); expected uint8 H x W (grey), "
        "H x W x 3 (RGB) or H x W x 4 (RGBA)",
    }
    assert decoded[3]["scores"] == files[1]["scores"]  # the images after it still run
    assert np.array_equal(np.asarray(load_image(np.full((8, 8), 90, np.uint8))), np.full((8, 8, 3), 90))


def test_reported_caption_is_the_bank_row_whose_knowledge_was_used(export, tmp_path):
    """The caption the runtime reports must be the one its knowledge k came from (the default model's
    README example showed a caption that looked wrong: it was the nearest bank caption, used as is)."""
    pipe = Pipeline.from_pretrained(export, knowledge_cache_size=0)
    used: list[str] = []
    encode = pipe.text.encode

    def spy(texts, *args, **kwargs):
        used.extend(texts)
        return encode(texts, *args, **kwargs)

    pipe.text.encode = spy
    images = [png_bytes(Image.new("RGB", (16, 16), c)) for c in (RED, BLUE, YELLOW)]
    for result in pipe.run(images):
        assert result["caption"] in pipe.captioner.bank.captions
        assert result["caption"] in used  # encoded as the caption half of k
    assert used, "the text encoder never ran"


def test_folder_mode_reads_svg(export, tmp_path, capsys):
    (tmp_path / "red.svg").write_bytes(svg_bytes(RED))
    (tmp_path / "blue.png").write_bytes(png_bytes(Image.new("RGB", (20, 20), BLUE)))
    (tmp_path / "notes.txt").write_text("not an image")
    assert main([str(tmp_path), "--model", str(export), "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["image"], r["label"]) for r in out] == [
        (str(tmp_path / "blue.png"), "sadness"),
        (str(tmp_path / "red.svg"), "anger"),
    ]


def test_broken_pipe_ends_quietly(export, tmp_path):
    """`kcdp-infer DIR --json | head -1`: the reader goes away; no traceback, status 141."""
    (tmp_path / "red.png").write_bytes(png_bytes(Image.new("RGB", (16, 16), RED)))
    # 400 results (~150 KB) outgrow the pipe's buffer: the writer is still writing when the reader goes
    cmd = [sys.executable, "-m", "kcdp_runtime.cli", *[str(tmp_path / "red.png")] * 400, "--model", str(export),
           "--json", "--batch-size", "8", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()  # as `head -1` exits after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert first["label"] == "anger" and err == "", err
    # and through a real shell pipe
    shell = subprocess.run(
        shlex.join(cmd) + " | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert shell.returncode == 0 and shell.stderr == "" and len(shell.stdout.splitlines()) == 1


def test_max_frames_option(export, tmp_path, capsys):
    (tmp_path / "anim.gif").write_bytes(gif_bytes(animation([RED, *blues(7)])))
    for option, classified in ((["--max-frames", "2"], [0, 4]), (["--max-frames", "1"], [0]), ([], [0, 2, 4, 6])):
        assert main([str(tmp_path / "anim.gif"), "--model", str(export), "--json", *option]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["frames"] == {"count": 8, "classified": classified}
        assert result["label"] == ("anger" if classified == [0] else "sadness")
    assert main([str(tmp_path / "anim.gif"), "--model", str(export)]) == 0
    assert "anim.gif: sadness (0.7" in (out := capsys.readouterr().out) and "(4 of 8 frames)" in out
    assert "  nearest bank caption: '" in out  # a retrieval captioner's caption, named as such
