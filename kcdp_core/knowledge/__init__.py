"""The knowledge branch: captions, knowledge triplets and their text encoding."""
