"""Captioners: InstructBLIP end to end (tiny random model saved and loaded with from_pretrained),
the retrieval captioner on the tiny foundation, CSV captions, and the caption bank format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kcdp_core.config import Source, sd15, tiny
from kcdp_core.knowledge.cache import KnowledgeCache
from kcdp_core.knowledge.captioners import (
    CaptionError,
    CSVCaptioner,
    InstructBLIPCaptioner,
    RetrievalCaptioner,
    build_captioner,
)
from kcdp_core.portable.caption_bank import CaptionBank
from kcdp_core.portable.triplets import TripletParser

WORDS = (
    "a the man woman face is smiling happy sad angry with of and in on photo picture grinning crying".split()
)
CHARS = list("abcdefghijklmnopqrstuvwxyz?.,")


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (50, 30), (0, 0, 255))]


def build_tiny_instructblip(folder: Path) -> Path:
    """A random InstructBLIP (tiny ViT, Q-Former, T5) with offline-built tokenizers, saved like a hub repo."""
    from transformers import (
        BertTokenizer,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        T5Config,
        T5Tokenizer,
    )
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    # T5: a unigram vocabulary given directly (pad, eos, unk first, as T5 lays it out).
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -float(i + 1)) for i, w in enumerate(WORDS)] + [(c, -50.0) for c in CHARS]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    qtok = BertTokenizer(
        vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *CHARS])}
    )
    processor = InstructBlipProcessor(
        BlipImageProcessorPil(size={"height": 32, "width": 32}), tok, qtok, num_query_tokens=4
    )
    config = InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ).to_dict(),
        qformer_config=InstructBlipQFormerConfig(
            vocab_size=len(qtok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            encoder_hidden_size=32,
        ).to_dict(),
        text_config=T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=2,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        ).to_dict(),
        num_query_tokens=4,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    InstructBlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def instructblip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_instructblip(tmp_path_factory.mktemp("instructblip"))


def test_instructblip_end_to_end(instructblip_dir: Path, tmp_path: Path) -> None:
    config = sd15().replace(
        knowledge={
            "captioner_source": {"path": str(instructblip_dir), "subfolder": None},
            "num_beams": 2,
            "min_new_tokens": 3,
            "max_new_tokens": 6,
        }
    )
    assert config.knowledge.prompt.startswith("What is the information of subject")  # authors' prompt kept
    captioner = build_captioner(config, device="cpu")
    assert isinstance(captioner, InstructBLIPCaptioner) and captioner.id.startswith("instructblip:")
    captions = captioner(_images())
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    # At least min_new_tokens real tokens were generated; greedy beams are deterministic.
    assert all(
        len(captioner.processor.tokenizer(c, add_special_tokens=False).input_ids) >= 3 for c in captions
    )
    assert captioner(_images()) == captions
    # Through the cache, as training uses it.
    paths = []
    for i, img in enumerate(_images()):
        img.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    cache = KnowledgeCache(tmp_path / "cache")
    report = cache.fill(paths, captioner, TripletParser(), progress=False)
    assert report.added == 2 and report.ok
    assert cache.get(paths[1])["caption"] == captions[1]
    # The id follows the generation settings (another prompt must not reuse cached captions).
    other = InstructBLIPCaptioner(
        captioner.model, captioner.processor, config.knowledge.__class__(prompt="Describe."), "x"
    )
    assert other.id != captioner.id


def test_instructblip_missing_source_is_clear() -> None:
    config = sd15().replace(knowledge={"captioner_source": None})
    with pytest.raises(ValueError, match="captioner_source"):
        build_captioner(config)


@pytest.fixture(scope="module")
def tiny_foundation() -> Path:
    from kcdp_core.model.foundation import ensure_tiny_foundation

    return ensure_tiny_foundation()


def test_caption_bank_format_and_roundtrip(tiny_foundation: Path, tmp_path: Path) -> None:
    from kcdp_core.knowledge.text_encoder import TextEncoder

    bank = CaptionBank.load(tiny_foundation / "caption_bank")
    te = TextEncoder.from_sources(
        Source(str(tiny_foundation), "text_encoder"), Source(str(tiny_foundation), "tokenizer"), 16
    )
    # The stored embeddings are the text encoder's sentence embeddings of the captions, L2-normalised.
    fresh = te.sentence_embeddings(bank.captions).numpy()
    np.testing.assert_allclose(bank.embeddings, fresh, atol=1e-3)  # stored as float16
    built = CaptionBank.build(bank.captions[:5], te, triplets=[[["face", "is", "grinning"]]] + [None] * 4)
    np.testing.assert_allclose(np.linalg.norm(built.embeddings, axis=1), 1.0, atol=1e-3)
    built.save(tmp_path / "bank")
    lines = [json.loads(x) for x in (tmp_path / "bank" / "captions.jsonl").read_text().splitlines()]
    assert lines[0] == {"caption": bank.captions[0], "triplets": [["face", "is", "grinning"]]}
    assert lines[1] == {"caption": bank.captions[1]}
    again = CaptionBank.load(tmp_path / "bank")
    np.testing.assert_array_equal(again.embeddings, built.embeddings)
    assert again.captions == built.captions and again.digest() == built.digest()
    idx, scores = again.search(built.embeddings[[3, 1]], top_k=2)
    assert idx[:, 0].tolist() == [3, 1] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    # ties go to the lower bank index, top-1 (argmax) and top-k (stable sort) alike
    tied = CaptionBank(["a", "b", "c"], np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], np.float32))
    assert tied.search(np.array([[1.0, 0.0]]), 1)[0].tolist() == [[1]]
    assert tied.search(np.array([[1.0, 0.0]]), 2)[0].tolist() == [[1, 2]]
    (tmp_path / "bank" / "embeddings.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="embeddings.safetensors"):
        CaptionBank.load(tmp_path / "bank")


def test_retrieval_captioner_on_tiny_foundation(tiny_foundation: Path) -> None:
    from kcdp_core.model.image_encoder import ImageEncoder
    from kcdp_core.portable.images import preprocess

    captioner = build_captioner(tiny(foundation=str(tiny_foundation)))
    assert isinstance(captioner, RetrievalCaptioner) and captioner.id.endswith(":top1")
    images = _images()
    captions = captioner(images)
    # Same answer computed by hand: cosine argmax of the encoder's embedding over the bank.
    enc = ImageEncoder.from_pretrained(tiny_foundation, "image_encoder")
    bank = CaptionBank.load(tiny_foundation / "caption_bank")
    with torch.no_grad():
        emb = enc(torch.from_numpy(np.stack([preprocess(i, enc.config.image_size) for i in images]))).numpy()
    expected = [bank.captions[int(i)] for i in (emb @ bank.embeddings.T).argmax(1)]
    assert captions == expected
    top3 = RetrievalCaptioner(enc, bank, top_k=3)
    joined = top3(images)
    assert all(len(c.split(". ")) == 3 and c.startswith(e) for c, e in zip(joined, expected, strict=True))
    assert top3.id != captioner.id


def test_csv_captioner(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text('path,caption\na/x.png,"a man, smiling"\n/elsewhere/y.png,grinning face\n')
    cap = CSVCaptioner(csv_file)
    imgs = _images()
    # by path relative to the CSV, and by file name
    assert cap(imgs, [tmp_path / "a" / "x.png", "other/dir/y.png"]) == ["a man, smiling", "grinning face"]
    with pytest.raises(CaptionError, match=r"z\.png: no caption .*captions\.csv"):
        cap(imgs[:1], ["z.png"])
    with pytest.raises(ValueError, match="needs the image paths"):
        cap(imgs)
    assert build_captioner(tiny(), captions_csv=csv_file).id == cap.id
    csv_file.write_text("a/x.png,another caption\n")
    assert CSVCaptioner(csv_file).id != cap.id  # edited captions -> new cache entries
