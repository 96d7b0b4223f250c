"""The import contracts (pyproject.toml [tool.importlinter], run by `lint-imports` in CI) list every
kcdp_core module outside kcdp_core.portable, so a module added to kcdp_core is not silently allowed."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

import kcdp_core

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _contracts() -> dict[str, dict]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def test_contracts_forbid_every_kcdp_core_module_but_portable() -> None:
    outside = {f"kcdp_core.{m.name}" for m in pkgutil.iter_modules(kcdp_core.__path__)} - {"kcdp_core.portable"}
    assert {"kcdp_core.model", "kcdp_core.train", "kcdp_core.knowledge"} <= outside
    contracts = _contracts()
    for name in (
        "kcdp_runtime imports from kcdp_core only kcdp_core.portable",
        "kcdp_core.portable imports no training library and no kcdp_core module outside itself",
    ):
        missing = outside - set(contracts[name]["forbidden_modules"])
        assert not missing, f"{name}: add {sorted(missing)} to its forbidden_modules in pyproject.toml"
