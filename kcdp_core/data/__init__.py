"""Datasets: the emoji cross-style benchmark builder, the pretraining corpus, dataset loaders."""
