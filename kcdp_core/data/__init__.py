"""Datasets: the emoji and drawn-faces benchmark builders and the pretraining corpus."""
