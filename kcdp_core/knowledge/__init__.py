"""The knowledge branch: captioners, the knowledge cache and the text encoder.

The triplet parser, the caption bank and the knowledge assembly are shared with the torch-free
runtime: they live in kcdp_core.portable.

- captioners.py    InstructBLIP / retrieval / CSV captioners behind one interface, build_captioner
- cache.py         the crash-safe, resumable knowledge cache (caption + triplets per image)
- text_encoder.py  token states T(c), T(t_i); k = concat(T(c), sum_i T(t_i)) via portable.assemble
- pooling.py       sentence embeddings (masked mean) for the caption bank
- cli.py           kcdp-knowledge
"""
