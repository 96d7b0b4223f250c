"""The README's "From Python" example runs as written, in a process where torch and spaCy cannot be
imported (the edge install), and prints what the README shows; the package's names load lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest
from readme_sections import README, code_blocks, section

# Makes `import torch` / `import spacy` fail in the child before the example runs.
BLOCK = "import sys\nsys.modules['torch'] = None\nsys.modules['spacy'] = None\n"


def test_the_python_example_prints_what_the_readme_shows_without_torch():
    blocks = code_blocks(section(README.read_text(), "From Python"))
    langs = [lang for lang, _ in blocks]
    assert langs[:2] == ["python", "text"], langs
    code, shown = blocks[0][1], blocks[1][1]
    run = subprocess.run(
        [sys.executable, "-c", BLOCK + code], cwd=README.parent, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == shown.splitlines()


def test_importing_the_package_loads_no_onnxruntime_until_a_name_is_used():
    probe = (
        "import sys, kcdp_runtime\n"
        "before = 'onnxruntime' in sys.modules\n"
        "from kcdp_runtime import ModelError, Pipeline, SessionConfig\n"
        "print(before, 'onnxruntime' in sys.modules, Pipeline.__module__, SessionConfig.__module__, ModelError.__module__)\n"
        "try:\n"
        "    kcdp_runtime.Pipe\n"
        "except AttributeError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "False True kcdp_runtime.pipeline kcdp_runtime.sessions kcdp_runtime.manifest",
        "module 'kcdp_runtime' has no attribute 'Pipe'",
    ]


def test_an_installation_without_the_default_model_says_to_name_an_export(tmp_path, monkeypatch):
    import kcdp_runtime.manifest as manifest
    from kcdp_runtime import ModelError, Pipeline

    monkeypatch.setattr(manifest, "DEFAULT_MODEL", tmp_path)
    with pytest.raises(ModelError, match=r"no default model in this installation .*name an export folder"):
        Pipeline.from_pretrained()
