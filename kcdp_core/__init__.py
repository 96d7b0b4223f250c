"""KCDP training-time package: model, knowledge, data, pretraining and training.

Importing this package stays cheap and torch-free. The code the torch-free runtime shares with
training is kcdp_core.portable; its docstring states the import rules that `lint-imports` checks.
"""

__version__ = "0.1.0"
