"""The torch-free code that training, export and the runtime share: one copy of what must not drift.

The runtime (kcdp_runtime, the `pip install kcdp` edge install: onnxruntime, numpy, Pillow,
tokenizers) runs an export without torch. A few steps must still behave exactly as they did when the
model was trained and exported, or the served labels drift from the measured ones. Those steps live
here, written once; training (kcdp_core), kcdp_export and kcdp_runtime all import them from here:

- images        decode an image file (raster or SVG, animated frames) and preprocess it to pixels
- labels        the emotion label sets and their names
- constants     values every part agrees on: image file suffixes, the caption separator, the cache root
- triplets      the spaCy rule parser that turns a caption into knowledge triplets
- assemble      the knowledge rule (what of a caption goes into k) and k = concat(T(c), sum_i T(t_i))
- caption_bank  the retrieval captioner's captions and embeddings, searched in numpy

The contract, checked by `lint-imports` (the contracts are in pyproject.toml's [tool.importlinter]):

- modules here import the standard library, numpy, Pillow, safetensors, resvg-py and, to parse,
  spaCy (`kcdp[parser]`); never torch or the other training libraries, nor any kcdp_core module
  outside this package;
- kcdp_runtime imports from kcdp_core only this package (one exception: an `sd15` export captions
  with InstructBLIP, a transformers stage the runtime loads only when such an export is opened);
  it never imports torch or kcdp_export; kcdp_core never imports kcdp_export or kcdp_runtime;
- `import kcdp_core` stays torch-free: the torch modules load when they are used.
"""
