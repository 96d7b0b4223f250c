"""The tokenizer as one `tokenizer.json` (tokenizers library) with truncation and padding to L built
in, so the torch-free runtime calls `Tokenizer.from_file(...).encode_batch(texts)` and gets exactly the
ids and mask the PyTorch text encoder was fed; checked on real texts at export."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class TokenizerMismatch(RuntimeError):
    pass


def export_tokenizer(hf_tokenizer, folder: Path, length: int) -> Path:
    """Write folder/tokenizer.json from a transformers (fast) tokenizer, padded/truncated to `length`."""
    from tokenizers import Tokenizer

    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(
            f"{type(hf_tokenizer).__name__}: not backed by the tokenizers library; "
            "the export needs a fast tokenizer to write tokenizer.json"
        )
    tok = Tokenizer.from_str(backend.to_str())
    tok.enable_truncation(max_length=length)
    pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
    pad_token = hf_tokenizer.pad_token or tok.id_to_token(pad_id) or "[PAD]"
    tok.enable_padding(length=length, pad_id=int(pad_id), pad_token=str(pad_token))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return path


def encode(path: Path, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 [N, L] with the exported tokenizer.json."""
    from tokenizers import Tokenizer

    encodings = Tokenizer.from_file(str(path)).encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def check_tokenizer(path: Path, text_encoder, texts: Sequence[str]) -> int:
    """The exported tokenizer must give the PyTorch text encoder's ids and mask on every text."""
    texts = list(texts)
    ids, mask = encode(path, texts)
    ref = text_encoder.tokenize(texts)
    ref_ids, ref_mask = ref["input_ids"].numpy(), ref["attention_mask"].numpy()
    bad = [
        i
        for i in range(len(texts))
        if not (np.array_equal(ids[i], ref_ids[i]) and np.array_equal(mask[i], ref_mask[i]))
    ]
    if bad:
        i = bad[0]
        raise TokenizerMismatch(
            f"tokenizer.json disagrees with the PyTorch tokenizer on {len(bad)}/{len(texts)} texts, "
            f"e.g. {texts[i]!r}: {ids[i].tolist()} vs {ref_ids[i].tolist()}"
        )
    return len(texts)
