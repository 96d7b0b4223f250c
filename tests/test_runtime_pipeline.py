"""kcdp_runtime.Pipeline on a tiny export: stages, batching, knowledge memo, manifest checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from runtime_export import BANK, build_fake_export
from runtime_images import BLUE, RED, YELLOW, png_bytes

from kcdp_runtime.manifest import ModelError, load_manifest
from kcdp_runtime.pipeline import STAGES, Pipeline
from kcdp_runtime.sessions import SessionConfig, candidate_providers


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return build_fake_export(tmp_path_factory.mktemp("export") / "fake")


@pytest.fixture(scope="module")
def pipe(export):
    return Pipeline.from_pretrained(export)


def _img(colour, size=(40, 30)) -> bytes:
    return png_bytes(Image.new("RGB", size, colour))


def test_labels_captions_and_result_contract(pipe):
    out = pipe.run([_img(RED), _img(BLUE), _img(YELLOW)], names=["r", "b", "y"])
    assert [r["label"] for r in out] == ["anger", "sadness", "happiness"]
    bank = {c for c, _ in BANK}
    for r in out:
        assert set(r) == {"image", "label", "scores", "caption", "triplets", "latency_ms"}
        assert list(r["scores"]) == list(pipe.labels)
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["caption"] in bank
        assert set(r["latency_ms"]) == {*STAGES, "total"}
        assert r["latency_ms"]["total"] == pytest.approx(sum(r["latency_ms"][s] for s in STAGES), abs=0.01)
        json.dumps(r)  # JSON-serialisable as is


def test_batching_gives_the_same_scores_as_one_by_one(pipe):
    images = [_img(c) for c in (RED, BLUE, YELLOW, (90, 200, 90), (10, 10, 10))]
    batched = pipe.run(images, batch_size=8)
    single = [pipe.run([im], batch_size=1)[0] for im in images]
    for a, b in zip(batched, single, strict=True):
        assert a["label"] == b["label"]
        for label in pipe.labels:
            assert a["scores"][label] == pytest.approx(b["scores"][label], abs=1e-5)


def test_bad_image_in_a_batch_leaves_the_others(pipe):
    out = pipe.run([_img(RED), b"not an image", _img(BLUE)], names=["a", "bad", "c"])
    assert out[1] == {"image": "bad", "error": "bad: not an image (unrecognised format)"}
    assert out[0]["label"] == "anger" and out[2]["label"] == "sadness"



def test_calls_from_several_threads_run_one_at_a_time_with_the_answers_of_one_thread(export):
    import threading
    import time

    pipe = Pipeline.from_pretrained(export, knowledge_cache_size=1)  # every call evicts: shared state moves
    images = [_img(c) for c in (RED, BLUE, YELLOW, (90, 200, 90))]
    alone = [r["scores"] for r in pipe.run(images, batch_size=1)]
    inside, most = [0], [0]
    run_batch = pipe._run_batch

    def counted(*args, **kwargs):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.005)  # time for another thread to come in, were it let in
        try:
            return run_batch(*args, **kwargs)
        finally:
            inside[0] -= 1

    pipe._run_batch = counted
    got: dict[int, list] = {}

    def worker(t: int) -> None:
        order = [(t + k) % len(images) for k in range(len(images))]
        got[t] = [(j, pipe.run([images[j]], batch_size=1)[0]["scores"]) for j in order * 3]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
    assert sorted(got) == [0, 1, 2, 3]
    assert all(scores == alone[j] for answers in got.values() for j, scores in answers)

def test_bank_triplets_or_parser(pipe):
    """Bank triplets are used when the manifest vouches for them; a bank line without any is parsed."""
    out = pipe.run([_img(RED)], captions=["an angry red face"])[0]
    assert out["triplets"] == [["face", "is", "angry"], ["face", "is", "red"]]  # given caption: parsed
    caps = pipe.captioner.caption([], np.zeros((1, 3, pipe.image_size, pipe.image_size), np.float32))
    assert caps[0].text in {c for c, _ in BANK}
    known = dict(BANK)[caps[0].text]
    assert caps[0].triplets == ([tuple(t) for t in known] if known is not None else None)


def test_knowledge_memo_skips_parser_and_text_encoder(export):
    pipe = Pipeline.from_pretrained(export, knowledge_cache_size=16)
    calls = []
    encode = pipe.text.encode
    pipe.text.encode = lambda texts, **kw: calls.append(list(texts)) or encode(texts, **kw)
    first = pipe.run([_img(RED), _img(RED)])
    assert len(calls) == 1 and len(calls[0]) == 1 + len(first[0]["triplets"])  # one distinct caption
    second = pipe.run([_img(RED)])
    assert len(calls) == 1  # memo hit
    assert second[0]["scores"] == first[0]["scores"]
    nomemo = Pipeline.from_pretrained(export, knowledge_cache_size=0)
    assert nomemo.run([_img(RED)])[0]["scores"] == first[0]["scores"]


def test_manifest_checks(export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    (broken / "perception.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelError, match="perception.onnx does not match its sha256"):
        load_manifest(broken)
    (broken / "perception.onnx").unlink()
    with pytest.raises(ModelError, match="perception.onnx is missing"):
        load_manifest(broken, verify="presence")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="kcdp-export --ckpt"):
        Pipeline.from_pretrained(ckpt)
    newer = tmp_path / "newer"
    shutil.copytree(export, newer)
    data = json.loads((newer / "manifest.json").read_text())
    data["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="newer than this runtime"):
        load_manifest(newer)
    malformed = tmp_path / "malformed"
    shutil.copytree(export, malformed)
    data = json.loads((malformed / "manifest.json").read_text())
    del data["caption_bank"]["captions"]
    (malformed / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="malformed manifest .*captions"):
        load_manifest(malformed)


def test_declared_classes_are_the_only_answers(export, pipe, tmp_path):
    """A manifest's "classes" (kcdp-export / kcdp-adapt --classes): the others score 0 and the rest is
    the softmax over those alone; a class that is not a label is refused at load time."""
    images = [_img(RED), _img(BLUE), _img(YELLOW)]
    reference = pipe.run(images)
    classes = ["happiness", "sadness", "surprise"]
    folder = tmp_path / "declared"
    shutil.copytree(export, folder)
    data = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**data, "classes": classes}))
    declared = Pipeline.from_pretrained(folder)
    assert declared.manifest.to_dict()["classes"] == classes
    out = declared.run(images)
    assert [r["label"] for r in out[1:]] == ["sadness", "happiness"]
    assert out[0]["label"] in classes  # red: anger is not among them
    for got, ref in zip(out, reference, strict=True):
        kept = sum(ref["scores"][c] for c in classes)
        for label, score in got["scores"].items():
            want = ref["scores"][label] / kept if label in classes else 0.0
            assert score == pytest.approx(want, abs=1e-5), label  # scores are rounded to 6 places
    declared.answer_only(None)  # what --classes of kcdp-infer / kcdp-serve replaces the manifest's with
    assert [r["scores"] for r in declared.run(images)] == [r["scores"] for r in reference]
    (folder / "manifest.json").write_text(json.dumps({**data, "classes": ["happiness", "joy"]}))
    with pytest.raises(ModelError, match=r"classes happiness joy: each must be one of the labels .*unknown: joy"):
        load_manifest(folder)


def test_the_shipped_manifest_reads_into_the_schema_and_writes_back_unchanged():
    from kcdp_runtime.manifest import DEFAULT_MODEL

    manifest = load_manifest(DEFAULT_MODEL, verify="none")
    assert manifest.to_dict() == json.loads((DEFAULT_MODEL / "manifest.json").read_text())
    assert manifest.knowledge.rule.max_triplets == 8 and manifest.knowledge.parser.required is False
    assert manifest.caption_bank is not None and manifest.caption_bank.knowledge is not None
    assert "text_encoder" not in manifest.graphs  # the bank's k is precomputed


def test_an_older_manifest_reads_with_the_defaults_it_was_run_with(export):
    know = load_manifest(export).knowledge  # the fake export predates use_caption, use_triplets, separator
    assert (know.use_caption, know.use_triplets, know.separator, know.parser.required) == (True, True, ". ", None)
    assert know.rule.max_triplets == 4


def test_providers_fall_back_to_cpu(export):
    assert candidate_providers(SessionConfig(providers=["tensorrt", "cuda"]))[-1] == "CPUExecutionProvider"
    pipe = Pipeline.from_pretrained(export, session_config=SessionConfig(providers=["tensorrt", "cuda"]))
    assert all(s.get_providers()[0] == "CPUExecutionProvider" for s in pipe.sessions.values())
    assert pipe.provider_line.startswith("execution provider: cpu")


def test_parsed_captions_persist_so_a_new_process_needs_no_spacy(export, tmp_path, monkeypatch):
    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    first = Pipeline.from_pretrained(export)
    out = first.run([_img(RED)], captions=["a neutral face"])[0]
    assert first._parser is not None  # parsed with spaCy
    second = Pipeline.from_pretrained(export)
    assert second.run([_img(RED)], captions=["a neutral face"])[0]["triplets"] == out["triplets"]
    assert second._parser is None  # read from the disk memo: spaCy never loaded
    assert (tmp_path / "cache" / "parsed_captions").is_dir()


def test_preoptimised_graph_cache_gives_identical_results(export, tmp_path, monkeypatch):
    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    images = [_img(RED), _img(BLUE), _img((30, 160, 90))]
    plain = Pipeline.from_pretrained(export, session_config=SessionConfig(graph_cache=False)).run(images)
    assert not (tmp_path / "cache" / "ort").exists()
    first = Pipeline.from_pretrained(export).run(images)  # writes the ORT-format copies
    cached = sorted((tmp_path / "cache" / "ort").glob("*.ort"))
    # each graph but the image encoder (SessionConfig.uncached_graphs): its batch-1 specialisation and
    # the dynamic-batch graph
    assert len(cached) == 4
    assert len([p for p in cached if "-batch1-" in p.name]) == 2
    second = Pipeline.from_pretrained(export).run(images)  # loads them
    assert sorted((tmp_path / "cache" / "ort").glob("*.ort")) == cached
    for a, b, c in zip(plain, first, second, strict=True):
        assert a["scores"] == b["scores"] == c["scores"]


def test_batch_one_specialisation_matches_the_dynamic_graph(export):
    images = [_img(RED), _img(BLUE), _img((30, 160, 90))]
    one = Pipeline.from_pretrained(export)
    single = one.run(images, batch_size=1)  # batch-1 sessions only
    # (the text encoder sees a caption and its triplets at once: a batch even for one image)
    assert one.sessions["perception"]._any is None and one.sessions["image_encoder"]._any is None
    # the batch-1 copies run on one thread (SessionConfig.single_thread_batch_one), batches on the pool
    for graph in ("perception", "image_encoder"):
        assert one.sessions[graph].one.get_session_options().intra_op_num_threads == 1
    one.run(images, batch_size=3)
    assert one.sessions["perception"]._any.get_session_options().intra_op_num_threads != 1
    dynamic = Pipeline.from_pretrained(export, session_config=SessionConfig(batch_one=False))
    for a, b in zip(single, dynamic.run(images, batch_size=1), strict=True):
        assert max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]) < 1e-6
