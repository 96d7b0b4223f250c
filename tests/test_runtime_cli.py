"""kcdp-infer: its output contract (docs/architecture.md), bad inputs, globs, and running without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_export import build_fake_export
from runtime_images import write_bad, write_tricky

from kcdp_runtime.cli import main

KEYS = {"image", "label", "scores", "caption", "triplets", "latency_ms"}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return build_fake_export(tmp_path_factory.mktemp("export") / "fake")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_bad(root / "bad"), write_tricky(root / "good")


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_bad_input_gets_its_error_and_the_good_ones_run(export, images, capsys):
    bad, good = images
    # interleave so that errors sit inside batches, not only at the edges
    argv = []
    for (_, b), (_, (g, _)) in zip(bad.items(), good.items(), strict=False):
        argv += [str(b), str(g)]
    argv += [str(p) for _, (p, _) in list(good.items())[len(bad) :]]
    code = main([*argv, "--model", str(export), "--json", "--batch-size", "3"])
    out = _lines(capsys.readouterr().out)
    assert code == 1
    assert [r["image"] for r in out] == argv  # one line per input, in order
    by_name = {r["image"]: r for r in out}
    reasons = {
        "zero_byte": "empty file",
        "truncated_png": "truncated",
        "truncated_jpeg": "truncated",
        "not_an_image": "not an image",
        "one_pixel": "too small",
        "bomb": "decompression bomb",
        "missing": "no such file",
    }
    for name, path in bad.items():
        entry = by_name[str(path)]
        assert set(entry) == {"image", "error"}, name
        assert str(path) in entry["error"] and reasons[name] in entry["error"], (name, entry)
    for name, (path, label) in good.items():
        entry = by_name[str(path)]
        assert set(entry) == (KEYS | {"frames"} if name.startswith("animated") else KEYS), (name, entry)
        if label:
            assert entry["label"] == label, (name, entry["scores"])


def test_all_good_exits_0_and_plain_output(export, images, capsys):
    _, good = images
    path = str(good["plain_red"][0])
    assert main([path, "--model", str(export)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: anger (")


def test_directories_and_globs_expand(export, images, capsys):
    _, good = images
    folder = good["plain_red"][0].parent
    assert (
        main(
            [
                str(folder),
                str(folder / "*.gif"),
                str(folder / "nothing*.png"),
                "--model",
                str(export),
                "--json",
            ]
        )
        == 1
    )
    out = _lines(capsys.readouterr().out)
    names = [r["image"] for r in out]
    assert len(names) == len(good) + 2
    assert names[: len(good)] == sorted(str(p) for p, _ in good.values())
    assert names[len(good)] == str(folder / "anim.gif")
    assert "no file matches" in out[-1]["error"]



def test_a_dash_reads_one_image_from_standard_input(export, images, capsys, monkeypatch):
    import io

    _, good = images
    red, blue = good["plain_red"][0], good["animated_gif"][0]  # the animation's answer: sadness

    class Stdin:
        buffer = io.BytesIO(red.read_bytes())

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert main(["-", str(blue), "--model", str(export), "--json"]) == 0
    out = _lines(capsys.readouterr().out)
    assert [r["image"] for r in out] == ["-", str(blue)]
    assert out[0]["label"] == "anger" and out[1]["label"] == "sadness" and "frames" not in out[0]
    # standard input is read once: a second dash finds it empty, and says so
    assert main(["-", "--model", str(export), "--json"]) == 1
    assert _lines(capsys.readouterr().out) == [{"image": "-", "error": "-: empty file (0 bytes)"}]

def test_classes_answers_only_those_labels(export, images, capsys):
    _, good = images
    path = str(good["plain_red"][0])  # anger, when anger may be answered
    assert main([path, "--model", str(export), "--json", "--classes", "sadness", "happiness"]) == 0
    row = _lines(capsys.readouterr().out)[0]
    assert row["label"] in ("sadness", "happiness") and row["scores"]["anger"] == 0
    assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert main([path, "--model", str(export), "--classes", "sadness", "joy"]) == 2
    assert "joy" in capsys.readouterr().err


def test_usage_errors_exit_2(export, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["x.png", "--batch-size", "0"])
    assert exc.value.code == 2
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    assert main(["x.png", "--model", str(ckpt)]) == 2
    assert "is a training checkpoint" in (err := capsys.readouterr().err) and "kcdp-export --ckpt" in err
    assert main(["x.png", "--model", str(tmp_path / "nowhere")]) == 2


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from kcdp_runtime.cli import main
import kcdp_runtime.serve, kcdp_runtime.pipeline
code = main(sys.argv[1:])
assert sys.modules["torch"] is None
sys.exit(code)
"""


def test_runs_where_torch_cannot_be_imported(export, images):
    bad, good = images
    args = [str(good["plain_red"][0]), str(bad["zero_byte"]), "--model", str(export), "--json"]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert proc.returncode == 1, proc.stderr
    out = _lines(proc.stdout)
    assert out[0]["label"] == "anger" and "empty file" in out[1]["error"]
    assert "execution provider: cpu" in proc.stderr  # the one log line


def test_console_script(export, images):
    _, good = images
    exe = Path(sys.executable).parent / "kcdp-infer"
    if not exe.exists():
        pytest.skip("console script not installed")
    proc = subprocess.run(
        [str(exe), str(good["cmyk_jpeg"][0]), "--model", str(export), "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert _lines(proc.stdout)[0]["label"] == "anger" and proc.stderr == ""


def test_sd15_export_without_torch_says_what_to_install(export, images, tmp_path):
    """An InstructBLIP (sd15) export needs transformers + torch for its captioner: a clear exit 2."""
    import shutil

    sd15 = tmp_path / "sd15"
    shutil.copytree(export, sd15)
    manifest = json.loads((sd15 / "manifest.json").read_text())
    manifest["knowledge"]["captioner"] = "instructblip"
    manifest["knowledge"]["instructblip"] = {
        "source": {"path": "Salesforce/instructblip-flan-t5-xl", "subfolder": None}
    }
    (sd15 / "manifest.json").write_text(json.dumps(manifest))
    _, good = images
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(good["plain_red"][0]), "--model", str(sd15)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "InstructBLIP" in proc.stderr and "torch not installed" in proc.stderr
