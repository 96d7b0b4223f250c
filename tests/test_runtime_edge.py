"""The edge profile of the runtime: no spaCy unless the export's captioner writes free text, and the
caption bank's precomputed knowledge standing in for the text encoder (fake export, milliseconds)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_export import build_fake_export
from runtime_images import BLUE, RED, YELLOW, png_bytes

from kcdp_core.portable.assemble import assemble_batch, triplet_text
from kcdp_runtime.bank_knowledge import FILE, BankKnowledge
from kcdp_runtime.manifest import ModelError
from kcdp_runtime.pipeline import Pipeline

IMAGES = [png_bytes(Image.new("RGB", (24, 24), c)) for c in (RED, BLUE, YELLOW)]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return build_fake_export(tmp_path_factory.mktemp("edge") / "fake")


def _copy(export: Path, dst: Path, manifest_edit=None, bank_edit=None) -> Path:
    """A copy of the export with its manifest / bank rows edited and the sha256 list redone."""
    shutil.copytree(export, dst)
    captions = dst / "caption_bank" / "captions.jsonl"
    if bank_edit is not None:
        rows = [bank_edit(json.loads(line)) for line in captions.read_text().splitlines()]
        captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = json.loads((dst / "manifest.json").read_text())
    if manifest_edit is not None:
        manifest_edit(data, dst)
    data["files"] = {
        str(p.relative_to(dst)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(dst.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and str(p.relative_to(dst)) in data["files"] | {FILE: 1}
    }
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


def _all_parsed(row: dict) -> dict:
    return {**row, "triplets": row.get("triplets") or []}


@pytest.fixture
def no_spacy(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` fails, find_spec says absent


def test_retrieval_export_with_parsed_bank_runs_without_spacy(export, tmp_path, no_spacy):
    folder = _copy(export, tmp_path / "parsed", bank_edit=_all_parsed)
    pipe = Pipeline.from_pretrained(folder, knowledge_cache_size=0)
    out = pipe.run(IMAGES)
    assert [r["label"] for r in out] == ["anger", "sadness", "happiness"]
    assert out[0]["triplets"] == [["face", "is", "angry"], ["face", "is", "red"]]
    assert pipe._parser is None
    # A caption from outside the bank would need the parser: the message names the extra.
    with pytest.raises(ModelError, match=r"pip install 'kcdp\[parser\]'"):
        pipe.run(IMAGES[:1], captions=["a man hugs a woman"])


@pytest.mark.parametrize(
    "edit",
    [
        lambda d, _: d["knowledge"].update(captioner="csv"),  # captions handed in: free text
        lambda d, _: d["knowledge"]["parser"].update(required=True),  # the manifest says so
        None,  # a bank caption without triplets
    ],
    ids=["csv-captioner", "manifest-says", "unparsed-bank-caption"],
)
def test_export_needing_the_parser_names_the_extra(export, tmp_path, no_spacy, edit):
    folder = _copy(export, tmp_path / "needs", manifest_edit=edit)
    with pytest.raises(ModelError, match=r"spaCy is not installed: pip install 'kcdp\[parser\]'"):
        Pipeline.from_pretrained(folder)


def _with_bank_knowledge(export: Path, dst: Path, precision: str, keep_text: bool) -> Path:
    """Precompute every bank caption's k with the export's own text encoder, as kcdp-export does."""
    parsed = _copy(export, dst.with_name(dst.name + "-src"), bank_edit=_all_parsed)
    pipe = Pipeline.from_pretrained(parsed)
    bank = pipe.captioner.bank
    texts = list(bank.captions) + [triplet_text(t) for ts in bank.triplets for t in ts]
    states, mask = pipe.text.encode(texts)
    k, kmask = assemble_batch(states, mask, [len(ts) for ts in bank.triplets])

    def edit(data: dict, folder: Path) -> None:
        BankKnowledge.pack(k, kmask, precision).save(folder / FILE)
        data["caption_bank"]["knowledge"] = {"file": FILE, "dtype": precision}
        if not keep_text:
            del data["graphs"]["text_encoder"]
            (folder / "text_encoder.onnx").unlink()
            data["files"].pop("text_encoder.onnx")

    return _copy(parsed, dst, manifest_edit=edit)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bank_knowledge_replaces_the_text_encoder(export, tmp_path, no_spacy, precision):
    reference = Pipeline.from_pretrained(_copy(export, tmp_path / "ref", bank_edit=_all_parsed)).run(IMAGES)
    folder = _with_bank_knowledge(export, tmp_path / "bk", precision, keep_text=False)
    pipe = Pipeline.from_pretrained(folder, knowledge_cache_size=0)
    assert "text_encoder" not in pipe.sessions and pipe.text is None
    out = pipe.run(IMAGES)
    tol = 1e-6 if precision == "fp32" else 2e-2
    for a, b in zip(out, reference, strict=True):
        assert a["label"] == b["label"] and a["caption"] == b["caption"] and a["triplets"] == b["triplets"]
        assert max(abs(a["scores"][c] - b["scores"][c]) for c in a["scores"]) < tol
        assert a["latency_ms"]["text_encoder"] == 0.0 and a["latency_ms"]["parse"] == 0.0
    # Bank captions handed in are looked up too; free text needs the text encoder, which is not there.
    given = pipe.run(IMAGES[:1], captions=[out[0]["caption"]])[0]
    assert given["scores"] == out[0]["scores"]
    with pytest.raises(ModelError, match="--keep-text-encoder"):
        pipe.run(IMAGES[:1], captions=["not a bank caption"])


def test_bank_knowledge_pack_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    k = rng.normal(size=(5, 6, 4)).astype(np.float32)
    k[:, :, 2] *= 40  # an outlier channel, as MiniLM has: per-channel scales keep the rest fine
    mask = (rng.random((5, 6)) > 0.4).astype(np.float32)
    for precision, tol in (("fp32", 0.0), ("fp16", 0.05), ("int8", 0.5)):
        table = BankKnowledge.pack(k, mask, precision)
        table.save(tmp_path / f"{precision}.safetensors")
        got, got_mask = BankKnowledge.load(tmp_path / f"{precision}.safetensors").get([3, 0, 3])
        np.testing.assert_array_equal(got_mask, mask[[3, 0, 3]])
        np.testing.assert_allclose(got, (k * mask[..., None])[[3, 0, 3]], atol=tol)
        assert table.dtype == precision
