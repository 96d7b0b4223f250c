"""The torch-free inference pipeline: an export folder in, emotion labels out.

Per image: load + preprocess (kcdp_core.portable.images, the training code) -> captioner -> triplet parser ->
tokenizer -> text_encoder.onnx (caption and each triplet) -> assemble_knowledge (kcdp_core, the
training code) -> perception.onnx -> label = argmax probs. Every stage runs batched over the images
of a chunk; an image that cannot be read gets an error entry and leaves the rest of its batch alone.

The knowledge k of an image depends only on its caption, and a retrieval captioner only ever
returns bank captions, so k is memoised per caption text (LRU, `knowledge_cache_size`): after
warm-up the parser and the text encoder cost nothing. Set the size to 0 to time them every call.
Parsed captions also persist on disk (kcdp_runtime.parsed_captions), so a new process loads spaCy
only for a caption never parsed before (unless the bank carries its triplets already).
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from kcdp_core.portable.assemble import assemble_batch, knowledge_texts
from kcdp_core.portable.centroids import unit
from kcdp_core.portable.images import MAX_FRAMES, Frames, ImageError, load_frames, preprocess
from kcdp_core.portable.labels import answered
from kcdp_runtime.bank_knowledge import FILE, BankKnowledge
from kcdp_runtime.captioner import (
    Caption,
    Captioner,
    GivenCaptioner,
    InstructBlipCaptioner,
    RetrievalCaptioner,
    encode_images,
    load_bank,
)
from kcdp_runtime.manifest import (
    Manifest,
    ModelError,
    TokenizerSpec,
    default_model,
    graph_digest,
    load_manifest,
)
from kcdp_runtime.packs import answer_as_pack
from kcdp_runtime.parsed_captions import ParsedCaptions
from kcdp_runtime.sessions import SessionConfig, create_session, describe

log = logging.getLogger("kcdp_runtime")

# perception input -> the graph and output that give it (KCDPModel.image_inputs)
IMAGE_VIEWS = {
    "image_embedding": ("image_encoder", "embedding"),
    "image_features": ("image_encoder", "image_features"),
    "face_features": ("face_encoder", "face_features"),
}
GRAPHS = ("image_encoder", "face_encoder", "text_encoder", "latents", "kadap", "perception")
STAGES = ("preprocess", "caption", "parse", "text_encoder", "assemble", "perception")
# A file, its bytes, or an image already decoded (kcdp_core.portable.images.load_frames).
ImageInput = str | Path | bytes | Image.Image | np.ndarray
Triplet = tuple[str, str, str]
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(double)": np.float64}  # fmt: skip


@dataclass
class _Knowledge:
    triplets: list[Triplet]
    k: np.ndarray  # [2L, D]
    mask: np.ndarray  # [2L]


@dataclass(eq=False)
class _Item:
    """One image on its way through the stages."""

    name: str
    image: Image.Image | None = None
    pixels: np.ndarray | None = None
    caption: Caption | None = None
    knowledge: _Knowledge | None = None
    error: str | None = None
    probs: np.ndarray | None = None
    view: np.ndarray | None = None  # what a pack's centroids are placed in (kcdp_runtime.packs)
    latency: dict[str, float] = field(default_factory=dict)


class TextEncoderStage:
    """tokenizer.json (tokenizers library) + text_encoder.onnx: texts -> token states [N, L, D]."""

    def __init__(self, session: Any, tokenizer: Tokenizer, length: int):
        self.session = session
        self.length = length
        self.tokenizer = tokenizer
        self.inputs = {i.name: _NP_TYPES.get(i.type, np.int64) for i in session.get_inputs()}

    @classmethod
    def load(cls, manifest: Manifest, session: Any) -> TextEncoderStage:
        spec = manifest.tokenizer
        if spec is None:
            raise ModelError(f"{manifest.folder}: manifest.json names no tokenizer for the text encoder")
        length = int(spec.max_length or manifest.knowledge.text_length or 0)
        tokenizer = Tokenizer.from_file(str(manifest.path(spec.file)))
        tokenizer.enable_truncation(max_length=length)
        pad_token = _pad_token(manifest, spec, tokenizer)
        pad_id = tokenizer.token_to_id(pad_token) if pad_token is not None else None
        tokenizer.enable_padding(length=length, pad_id=pad_id or 0, pad_token=pad_token or "[PAD]")
        return cls(session, tokenizer, length)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        return ids, mask

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Token states [N, L, D] float32 and the float mask [N, L]."""
        states, masks = [], []
        for start in range(0, len(texts), batch_size):
            ids, mask = self.tokenize(texts[start : start + batch_size])
            feed = {}
            for name, dtype in self.inputs.items():
                source = mask if name == "attention_mask" else np.zeros_like(ids) if "type" in name else ids
                feed[name] = source.astype(dtype)
            states.append(self.session.run(None, feed)[0].astype(np.float32))
            masks.append(mask.astype(np.float32))
        return np.concatenate(states), np.concatenate(masks)


def _pad_token(manifest: Manifest, spec: TokenizerSpec, tokenizer: Tokenizer) -> str | None:
    """The padding token, as transformers would pick it: tokenizer.json's, then tokenizer_config.json's."""
    padding = json.loads(tokenizer.to_str()).get("padding") or {}
    if padding.get("pad_token"):
        return padding["pad_token"]
    config = manifest.path(spec.folder) / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("pad_token")
        if isinstance(value, dict):
            value = value.get("content")
        if value:
            return str(value)
    for candidate in ("[PAD]", "<pad>", "<|endoftext|>"):
        if tokenizer.token_to_id(candidate) is not None:
            return candidate
    return None


class Pipeline:
    """An export folder loaded for inference. `run(images)` -> one result dict per image."""

    # Frames classified per animated image (GIF / WebP / APNG), spread evenly through it.
    max_frames: int = MAX_FRAMES

    def __init__(
        self,
        manifest: Manifest,
        sessions: dict[str, Any],
        text: TextEncoderStage | None,
        captioner: Captioner,
        session_config: SessionConfig,
        knowledge_cache_size: int = 4096,
        parse_cache: bool = True,
        bank_knowledge: BankKnowledge | None = None,
    ):
        self.manifest = manifest
        # Precomputed k of every bank caption (retrieval top-1 exports): no text encoder per image.
        self.bank_knowledge = bank_knowledge
        bank = getattr(captioner, "bank", None)
        self._bank_rows: dict[str, int] = {}
        if bank_knowledge is not None and bank is not None:
            if len(bank_knowledge) != len(bank):
                raise ModelError(
                    f"{manifest.folder}: {FILE} holds {len(bank_knowledge)} rows for {len(bank)} bank captions"
                )
            self._bank_rows = {text: i for i, text in reversed(list(enumerate(bank.captions)))}
        if text is None and not self._bank_rows:
            raise ModelError(
                f"{manifest.folder}: graphs.text_encoder is missing and no bank knowledge replaces it"
            )
        self.sessions = sessions
        self.text = text
        self.captioner = captioner
        self.session_config = session_config
        self.labels = manifest.labels
        self.answer_only(manifest.classes)
        self.image_size = int(manifest.preprocessing.image_size)
        self.resize_filter = manifest.preprocessing.resize_filter
        self.face_view = manifest.preprocessing.face_view or 0
        self.face_box = manifest.preprocessing.face_box
        know = manifest.knowledge
        self.parser_model = know.parser.model
        # What of a caption goes into k: the model's max_triplets and knowledge ablations.
        self.rule = know.rule
        self.knowledge_cache_size = knowledge_cache_size
        self._knowledge_cache: OrderedDict[str, _Knowledge] = OrderedDict()
        self._parser: Any = None
        # Parsed bank captions persist across processes (keyed by parser version): no spaCy at cold start.
        parser_version = know.parser.version
        self.parsed_captions = (
            ParsedCaptions(f"{parser_version}-{self.parser_model}")
            if parse_cache and parser_version
            else None
        )
        perception = sessions["perception"]
        self._perception_inputs = {i.name: _NP_TYPES.get(i.type, np.float32) for i in perception.get_inputs()}
        self._perception_outputs = [o.name for o in perception.get_outputs()]
        # The image views perception fuses into v, by input name -> the graph and output giving each.
        self._image_views = {n: IMAGE_VIEWS[n] for n in self._perception_inputs if n in IMAGE_VIEWS}
        for name, (graph, _) in self._image_views.items():
            if graph not in sessions:
                raise ModelError(f"{manifest.folder}: perception takes {name} but graphs.{graph} is missing")
        if "pooled_levels" in self._perception_inputs and "kadap" not in sessions:
            raise ModelError(f"{manifest.folder}: perception takes pooled_levels but graphs.kadap is missing")
        # What needs only the pixels runs on a second thread (onnxruntime releases the GIL): the face
        # encoder, started after the caption, and for a single image the VAE encoder (latents, a split
        # perception's first graph), started before it. They run while the image encoder, the bank
        # search, the knowledge and kadap's UNet run here, so the caption does not wait for the VAE nor
        # kadap for it. A batch runs the VAE here: each graph of a batch uses every core, and one beside
        # the image encoder only competes with it (v6, 2 cores: +1.2 ms per image at batch 8).
        wanted = {"latents": "latents" in sessions, "face_encoder": "face_features" in self._image_views}
        self._side_graphs = {graph for graph, runs in wanted.items() if runs}
        self._side_thread = ThreadPoolExecutor(1, thread_name_prefix="kcdp-side")
        # run() from several threads: one call at a time (the knowledge memo, the parser and the
        # parse memo are shared state; onnxruntime already spreads one call over the cores).
        self._run_lock = threading.Lock()
        self.provider_line = describe(sessions, session_config)

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path | None = None,
        session_config: SessionConfig | None = None,
        verify: Literal["sha256", "presence", "none"] = "sha256",
        knowledge_cache_size: int = 4096,
        parse_cache: bool = True,
    ) -> Pipeline:
        """Load an export folder (manifest.json + ONNX graphs; None: the embedded default model); see
        kcdp_runtime.manifest for checks."""
        config = session_config or SessionConfig()
        folder = default_model() if folder is None else folder
        manifest = load_manifest(folder, verify=verify)
        sessions = {}
        for name in GRAPHS:
            spec = manifest.graph(name)
            if spec is not None and spec.file:
                # the sha256 keys the ORT-format cache: none, no cache (SessionConfig.uncached_graphs)
                cached = verify == "sha256" and name not in config.uncached_graphs
                digest = graph_digest(manifest, name) if cached else None
                sessions[name] = create_session(
                    manifest.path(spec.file), config, digest, spec.batch_axes(), name
                )
        return cls.from_sessions(manifest, sessions, config, knowledge_cache_size, parse_cache)

    @classmethod
    def from_sessions(
        cls,
        manifest: Manifest,
        sessions: dict[str, Any],
        session_config: SessionConfig | None = None,
        knowledge_cache_size: int = 4096,
        parse_cache: bool = True,
        bank_knowledge: BankKnowledge | None = None,
        captioner: Captioner | None = None,
    ) -> Pipeline:
        """A pipeline over sessions already made (kcdp-export checks its graphs with it before the
        folder is finished); `bank_knowledge` and `captioner` replace what the manifest names."""
        config = session_config or SessionConfig()
        folder = manifest.folder
        text = (
            TextEncoderStage.load(manifest, sessions["text_encoder"]) if "text_encoder" in sessions else None
        )
        know = manifest.knowledge
        kind = know.captioner
        if captioner is not None:
            pass
        elif kind == "retrieval":
            if "image_encoder" not in sessions:
                raise ModelError(f"{folder}: captioner 'retrieval' needs graphs.image_encoder")
            bank, trusted = load_bank(manifest)
            captioner = RetrievalCaptioner(
                sessions["image_encoder"], bank, know.retrieval_top_k, trusted, know.separator
            )
        elif kind == "instructblip":
            captioner = InstructBlipCaptioner(know.instructblip or {})
        elif kind == "csv":
            captioner = GivenCaptioner()
        else:
            raise ModelError(f"{folder}: unknown captioner {kind!r} in manifest.json")
        if parser_required(manifest, captioner) and not parser_installed():
            raise ModelError(f"{folder}: {PARSER_MISSING}")
        spec = manifest.caption_bank.knowledge if manifest.caption_bank is not None else None
        if bank_knowledge is None and spec is not None and isinstance(captioner, RetrievalCaptioner):
            try:
                bank_knowledge = BankKnowledge.load(manifest.path(spec.file))
            except (OSError, ValueError, KeyError) as exc:
                raise ModelError(f"{folder}: unreadable {spec.file} ({exc})") from None
        pipe = cls(
            manifest, sessions, text, captioner, config, knowledge_cache_size, parse_cache, bank_knowledge
        )
        log.info("%s: %s", manifest.folder.name, pipe.provider_line)
        return pipe

    @property
    def parser(self) -> Any:
        """The spaCy triplet parser, loaded on first need (bank triplets usually make it unnecessary)."""
        if self._parser is None:
            if not parser_installed():
                raise ModelError(
                    f"{self.manifest.folder}: a caption outside the bank needs parsing: {PARSER_MISSING}"
                )
            from kcdp_core.portable.triplets import TripletParser

            self._parser = TripletParser(model=self.parser_model)
        return self._parser

    # -- inference --------------------------------------------------------------------------------
    def run(
        self,
        images: Sequence[ImageInput],
        names: Sequence[str] | None = None,
        batch_size: int = 8,
        captions: Sequence[str] | None = None,
        pack: bool = False,
    ) -> list[dict[str, Any]]:
        """One dict per image, in order: {"image", "label", "scores", "caption", "triplets",
        "latency_ms"} (an animation adds "frames") or {"image", "error"}: what `kcdp-infer --json` prints.
        pack=True: the images are one style's, answered together (kcdp_runtime.packs); each result then
        adds "image_label", its answer alone, and "pack", the images answered together (0: too few to
        answer as a pack, each answered alone). Calls from several threads run one at a time."""
        if names is None:
            names = [
                str(i) if isinstance(i, str | Path) else f"<{type(i).__name__} {n}>"
                for n, i in enumerate(images)
            ]
        with self._run_lock:
            answered: list[tuple[dict[str, Any], np.ndarray | None]] = []
            for start in range(0, len(images), max(1, batch_size)):
                chunk = slice(start, start + max(1, batch_size))
                given = list(captions[chunk]) if captions is not None else None
                answered.extend(self._run_batch(list(images[chunk]), list(names[chunk]), given, pack))
        results = [result for result, _ in answered]
        if pack:
            together = answer_as_pack(results, [view for _, view in answered], self.labels)
            readable = sum("error" not in r for r in results)
            for r in results:
                if "error" not in r:
                    r.setdefault("image_label", r["label"])
                    r["pack"] = readable if together else 0
        return results

    def _run_batch(
        self, images: list[ImageInput], names: list[str], captions: list[str] | None, views: bool = False
    ) -> list[tuple[dict[str, Any], np.ndarray | None]]:
        """(result, view) per image; views=False (answers alone): every view None. The view of an
        animation is its frames' mean."""
        # One item per classified frame: a still image is one, an animation up to max_frames.
        groups: list[tuple[list[_Item], Frames | None]] = []
        for name, source in zip(names, images, strict=True):
            t0 = time.perf_counter()
            try:
                # SVG is drawn at the model's input size: nothing finer reaches the model
                side = max(self.image_size, self.face_view)
                frames = load_frames(source, name, self.max_frames, svg_side=side)
                group = [self._preprocessed(name, img) for img in frames.images]
            except ImageError as exc:
                frames, group = None, [_Item(name, error=str(exc))]
            except Exception as exc:  # noqa: BLE001 - any decoder failure is this image's problem only
                error = f"{name}: could not read image ({type(exc).__name__}: {exc})"
                frames, group = None, [_Item(name, error=error)]
            _share(group, "preprocess", t0)
            groups.append((group, frames))
        good = [(item, n) for n, (group, _) in enumerate(groups) for item in group if item.error is None]
        ok = [item for item, _ in good]
        if ok:
            pixels = np.stack([item.pixels for item in ok])  # read by the caption, the VAE and perception
            side = self._start_side(ok, pixels, "latents")
            self._caption(ok, pixels, [captions[n] for _, n in good] if captions is not None else None)
            side |= self._start_side(ok, pixels, "face_encoder")
            self._knowledge(ok)
            self._perceive(ok, pixels, side, views)
        return [(self._result(group, frames), _view(group) if views else None) for group, frames in groups]

    def _start_side(self, items: list[_Item], pixels: np.ndarray, graph: str) -> dict[str, Future]:
        """`graph` started on the second thread, if this model runs it there for these items."""
        if graph not in self._side_graphs or (graph == "latents" and len(items) > 1):
            return {}
        return {graph: self._side_thread.submit(self._pixels_graph, graph, items, pixels)}

    def _pixels_graph(self, graph: str, items: list[_Item], pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs of `graph`, which reads only the pixels (latents, face_encoder), for the items; its
        input made on the calling thread: on the second one, the face view is cropped there too (Pillow
        resizes without holding the GIL)."""
        if graph == "latents":
            feed = {"pixels": pixels}
        else:
            view = (self.face_view, self.resize_filter, self.face_box)
            feed = {"face": np.stack([preprocess(i.image, *view) for i in items])}
        return encode_images(self.sessions[graph], feed)

    def _preprocessed(self, name: str, img: Image.Image) -> _Item:
        return _Item(name, img, preprocess(img, self.image_size, self.resize_filter))

    def _caption(self, items: list[_Item], pixels: np.ndarray, given: list[str] | None) -> None:
        t0 = time.perf_counter()
        if given is not None:
            caps = [Caption(str(c)) for c in given]
        else:
            caps = self.captioner.caption([i.image for i in items], pixels)
        _share(items, "caption", t0)
        for item, cap in zip(items, caps, strict=True):
            item.caption = cap

    def _knowledge(self, items: list[_Item]) -> None:
        """k per image: looked up for bank captions with precomputed knowledge; else parsed, encoded
        and assembled for the captions not memoised yet (each distinct text once)."""
        if self._bank_rows:
            items = self._bank_lookup(items)
        todo: dict[str, Caption] = {}
        for item in items:
            assert item.caption is not None
            hit = self._cache_get(item.caption.text)
            if hit is not None:
                item.knowledge = hit
            else:
                todo.setdefault(item.caption.text, item.caption)
        if todo and self.text is None:
            raise ModelError(
                f"{self.manifest.folder}: this export carries its caption bank's knowledge precomputed and no "
                "text encoder, so a caption outside the bank cannot be encoded; re-export with --keep-text-encoder"
            )
        t0 = time.perf_counter()
        triplets: dict[str, list[Triplet]] = {}
        unparsed = [text for text, cap in todo.items() if cap.triplets is None and self.rule.use_triplets]
        if unparsed:

            def parse(texts: list[str]) -> list[list[Triplet]]:
                return self.parser.parse_many(texts)  # spaCy loads here, on first use

            memo = self.parsed_captions
            found = parse(unparsed) if memo is None else memo.triplets(unparsed, parse)
            triplets = dict(zip(unparsed, found, strict=True))
        encoded, used = self.rule.apply(
            list(todo),
            [cap.triplets if cap.triplets is not None else triplets.get(text) for text, cap in todo.items()],
        )
        triplets = dict(zip(todo, used, strict=True))
        _share(items, "parse", t0)

        t0 = time.perf_counter()
        texts = knowledge_texts(encoded, used)
        states, masks = self.text.encode(texts) if texts and self.text is not None else (None, None)
        _share(items, "text_encoder", t0)

        t0 = time.perf_counter()
        fresh: dict[str, _Knowledge] = {}
        if todo:
            assert states is not None and masks is not None
            ks, kmasks = assemble_batch(states, masks, [len(triplets[text]) for text in todo])
            for text, k, mask in zip(todo, ks, kmasks, strict=True):
                fresh[text] = _Knowledge(triplets[text], k, mask)
                self._cache_put(text, fresh[text])
        for item in items:
            if item.knowledge is None:
                assert item.caption is not None
                item.knowledge = fresh[item.caption.text]
        _share(items, "assemble", t0)

    def _bank_lookup(self, items: list[_Item]) -> list[_Item]:
        """k of bank captions from the precomputed table (timed as "assemble"); returns the rest."""
        assert self.bank_knowledge is not None
        t0 = time.perf_counter()
        found, rest = [], []
        for item in items:
            assert item.caption is not None
            row = item.caption.index
            if row is None:
                row = self._bank_rows.get(item.caption.text)
            (found if row is not None else rest).append((item, row))
        if found:
            ks, masks = self.bank_knowledge.get([row for _, row in found])
            bank_triplets = self.captioner.bank.triplets  # type: ignore[attr-defined]
            for (item, row), k, mask in zip(found, ks, masks, strict=True):
                item.knowledge = _Knowledge(self.rule.triplets(bank_triplets[row]), k, mask)
            _share([item for item, _ in found], "assemble", t0)
            for item, _ in found:
                item.latency.setdefault("parse", 0.0)
                item.latency.setdefault("text_encoder", 0.0)
        return [item for item, _ in rest]

    def _perceive(
        self, items: list[_Item], pixels: np.ndarray, side: dict[str, Future], views: bool = False
    ) -> None:
        """Perception (kadap first when split); its time includes any wait for the second thread's
        graphs (`side`: their outputs by graph name)."""
        t0 = time.perf_counter()
        arrays = {
            "pixels": pixels,
            "knowledge": np.stack([i.knowledge.k for i in items]),
            "knowledge_mask": np.stack([i.knowledge.mask for i in items]),
        }
        kadap = self.sessions.get("kadap")
        if kadap is not None:  # a split perception: its UNet half, while the face encoder runs
            if "latents" in self.sessions:  # a batch runs its VAE encoder here, before kadap
                done = (
                    side["latents"].result()
                    if "latents" in side
                    else self._pixels_graph("latents", items, pixels)
                )
                arrays["latents"] = done["latents"]
            feed = {
                i.name: arrays[i.name].astype(_NP_TYPES.get(i.type, np.float32)) for i in kadap.get_inputs()
            }
            arrays["pooled_levels"] = kadap.run(["pooled_levels"], feed)[0].astype(np.float32)
        arrays |= self._image_inputs(items, arrays["pixels"], side.get("face_encoder"))
        feed = {name: arrays[name].astype(dtype) for name, dtype in self._perception_inputs.items()}
        wanted = "probs" if "probs" in self._perception_outputs else "logits"
        # a pack's views (only when answering one): what the image branch hands perception, or
        # perception's own features for a model without an image branch
        image_views = [name for name in self._image_views if name in arrays] if views else []
        extra = ["features"] if views and not image_views else []
        out, *features = self.sessions["perception"].run([wanted, *extra], feed)
        out = out.astype(np.float64)
        if wanted == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        if self._answered is not None:  # the softmax over the answered classes alone; the floor keeps a
            out = np.maximum(out, 1e-30) * self._answered  # distribution when they all underflowed
            out /= out.sum(axis=1, keepdims=True)
        _share(items, "perception", t0)
        for item, probs in zip(items, out, strict=True):
            item.probs = probs
        if views:
            found = [unit(arrays[n].astype(np.float32)) for n in image_views] or features
            for item, v in zip(items, np.hstack(found), strict=True):
                item.view = v

    def _image_inputs(
        self, items: list[_Item], pixels: np.ndarray, faces: Future | None
    ) -> dict[str, np.ndarray]:
        """perception's image views: the image encoder's outputs the retrieval captioner already has (or
        the graph run now, for other captioners) and the face encoder's from its thread."""
        graphs = {graph for graph, _ in self._image_views.values()}
        outputs = {}
        if "image_encoder" in graphs:
            known = [i.caption.image if i.caption is not None else None for i in items]
            outputs["image_encoder"] = (
                {name: np.stack([k[name] for k in known]) for name in known[0]}
                if all(k is not None for k in known)
                else encode_images(self.sessions["image_encoder"], {"pixels": pixels})
            )
        if faces is not None:
            outputs["face_encoder"] = faces.result()
        return {name: outputs[graph][output] for name, (graph, output) in self._image_views.items()}

    def _result(self, group: list[_Item], frames: Frames | None) -> dict[str, Any]:
        """One image's result from its frames' items. An animation scores the mean of its frames'
        probabilities: still a distribution, and one odd frame (a blink) cannot outvote the rest as
        a max would; caption and triplets are those of the frame that scores the label highest."""
        if group[0].error is not None:
            return {"image": group[0].name, "error": group[0].error}
        probs = np.mean([item.probs for item in group], axis=0)
        top = int(np.argmax(probs))
        item = max(group, key=lambda i: i.probs[top])  # the first of equals: a still image's only item
        assert item.caption is not None and item.knowledge is not None
        latency = {stage: round(sum(i.latency.get(stage, 0.0) for i in group), 3) for stage in STAGES}
        latency["total"] = round(sum(latency.values()), 3)
        result = {
            "image": item.name,
            "label": self.labels[top],
            "scores": {label: round(float(p), 6) for label, p in zip(self.labels, probs, strict=True)},
            "caption": item.caption.text,
            "triplets": [list(t) for t in item.knowledge.triplets],
            "latency_ms": latency,
        }
        if frames is not None and frames.animated:
            result["frames"] = {"count": frames.count, "classified": frames.indices}
        return result

    def answer_only(self, classes: Sequence[str] | None) -> None:
        """Score only `classes`, a subset of the labels (None: all): the others 0, the probabilities
        renormalised over these. The manifest's "classes" sets it at load; --classes of kcdp-infer and
        kcdp-serve replaces it. Raises ModelError naming a class that is not a label."""
        try:
            mask = answered(self.labels, classes)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        self.classes = None if classes is None else tuple(classes)
        self._answered = None if mask is None else np.array(mask, dtype=np.float64)  # 1 or 0 per label

    # -- knowledge memo ---------------------------------------------------------------------------
    def _cache_get(self, text: str) -> _Knowledge | None:
        hit = self._knowledge_cache.get(text)
        if hit is not None:
            self._knowledge_cache.move_to_end(text)
        return hit

    def _cache_put(self, text: str, value: _Knowledge) -> None:
        if self.knowledge_cache_size <= 0:
            return
        self._knowledge_cache[text] = value
        while len(self._knowledge_cache) > self.knowledge_cache_size:
            self._knowledge_cache.popitem(last=False)

    def warmup(self) -> None:
        """A white image through every stage, alone and as a pair: first-call allocations (and the
        batch graphs beside the batch-1 ones) happen before real traffic."""
        buf = Image.new("RGB", (self.image_size, self.image_size), "white")
        data = io.BytesIO()
        buf.save(data, format="PNG")
        self.run([data.getvalue()], names=["warmup"])
        self.run([data.getvalue()] * 2, names=["warmup"] * 2)


PARSER_MISSING = (
    "this export's captioner writes free text, whose knowledge triplets spaCy parses, and spaCy is not "
    "installed: pip install 'kcdp[parser]'"
)


def parser_installed() -> bool:
    return importlib.util.find_spec("spacy") is not None


def parser_required(manifest: Manifest, captioner: Captioner) -> bool:
    """Whether the captions this export produces need the spaCy triplet parser at run time.

    The manifest may say so (knowledge.parser.required, written by kcdp-export); otherwise only a
    top-1 retrieval captioner whose bank carries every caption's triplets, parsed by the parser
    version training used, can do without (captions handed to run() still get parsed)."""
    know = manifest.knowledge
    if know.parser.required is not None:
        return know.parser.required
    if not know.use_triplets:
        return False
    if not isinstance(captioner, RetrievalCaptioner):
        return True
    return not (captioner.bank_triplets and captioner.top_k == 1 and None not in captioner.bank.triplets)


def _view(group: list[_Item]) -> np.ndarray | None:
    """An image's view for a pack: its frames' mean (None for an image that could not be read)."""
    return None if group[0].error is not None else np.mean([item.view for item in group], axis=0)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _share(items: list[_Item], stage: str, t0: float) -> None:
    """A batched stage's time, split evenly over its images: ms per image."""
    per = _ms(t0) / max(1, len(items))
    for item in items:
        item.latency[stage] = per
