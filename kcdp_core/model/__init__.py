"""The KCDP model in PyTorch (imports torch: import submodules explicitly)."""
