"""In the edge install (no torch, no spaCy, none of the train extra), the commands that need an extra
say which one to install, exit 2 and print no traceback. Each runs in a subprocess whose imports of
the train and parser extras' modules fail, as they would in `pip install kcdp`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from runtime_images import RED, png_bytes

from kcdp_core.extras import EXTRA_OF, missing_extra

REPO = Path(__file__).resolve().parents[1]
EDGE = """
import importlib, importlib.abc, sys
from kcdp_core.extras import EXTRA_OF
blocked = {m for m, extra in EXTRA_OF.items() if extra in ("train", "parser")}

class EdgeInstall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, EdgeInstall())
for name in [m for m in sys.modules if m.split(".")[0] in blocked]:
    del sys.modules[name]
module, function = sys.argv[1].split(":")
sys.exit(getattr(importlib.import_module(module), function)(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edge_cmds")
    for label in ("anger", "sadness"):
        (root / "data" / label).mkdir(parents=True)
        (root / "data" / label / "a.png").write_bytes(png_bytes(Image.new("RGB", (16, 16), RED)))
    return root


CKPT = "kcdp_core/assets/default_model"
TRAIN = "pip install 'kcdp[train]'"
COMMANDS = {
    "kcdp-train": ("kcdp_core.train.cli:train_main", ["--preset", "tiny", "--source", "{data}", "--out", "{out}"], TRAIN),
    "kcdp-eval": ("kcdp_core.train.cli:eval_main", ["--ckpt", CKPT, "--data", "{data}"], TRAIN),
    "kcdp-export": ("kcdp_export.cli:main", ["--ckpt", CKPT, "--out", "{out}"], TRAIN),
    "kcdp-pretrain": ("kcdp_core.pretrain.cli:main", ["run", "--data", "{data}", "--work", "{out}"], TRAIN),
    "kcdp-data": ("kcdp_core.data.cli:main", ["avatars", "--out", "{out}"], TRAIN),
    "kcdp-adapt": ("kcdp_export.adapt:main", ["{data}", "--out", "{out}"], TRAIN),
    "kcdp-knowledge": ("kcdp_core.knowledge.cli:main", ["parse", "a man hugs a woman"], "pip install 'kcdp[parser]'"),
    # the ONNX benchmarks run in the edge install; a checkpoint gets told to export it first
    "kcdp-bench": ("kcdp_bench.cli:main", ["accuracy", "--model", CKPT, "--data", "{data}"], "kcdp-export --ckpt"),
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_without_its_extra_names_it(command, folder, tmp_path):
    entry, args, says = COMMANDS[command]
    argv = [a.format(data=folder / "data", out=tmp_path / "out") for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", EDGE, entry, *argv], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert says in proc.stderr and proc.stderr.startswith(f"{command}"), proc.stderr


def test_missing_extra_knows_only_the_extras_modules():
    assert missing_extra(ModuleNotFoundError("x", name="torch.nn")) == "train"
    assert missing_extra(ModuleNotFoundError("x", name="spacy")) == "parser"
    assert missing_extra(ModuleNotFoundError("x", name="fastapi")) == "serve"
    assert missing_extra(ModuleNotFoundError("x", name="kcdp_core.nowhere")) is None  # a bug, not an install
    assert not {"numpy", "PIL", "onnxruntime", "tokenizers", "resvg_py"} & set(EXTRA_OF)  # the edge install's own
