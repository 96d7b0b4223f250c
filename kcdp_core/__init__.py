"""KCDP training-time package: model, knowledge, data, pretraining and training.

Importing this package must stay cheap and torch-free: the runtime imports a few of its
torch-free modules (labels, images, config, knowledge.triplets).
"""

__version__ = "0.1.0"
