"""The knowledge branch: captions, knowledge triplets and their text encoding.

- triplets.py      spaCy dependency-rule triplet parser (torch-free; the runtime uses it too)
- captioners.py    InstructBLIP / retrieval / CSV captioners behind one interface, build_captioner
- caption_bank.py  the retrieval captioner's caption bank (numpy; build needs the text encoder)
- cache.py         the crash-safe, resumable knowledge cache (caption + triplets per image)
- text_encoder.py, assemble.py   k = concat(T(c), sum_i T(t_i)) and its mask
- cli.py           kcdp-knowledge
"""
