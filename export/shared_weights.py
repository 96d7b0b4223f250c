"""Graphs that carry the same weights store them once, in one external-data file beside them.

The image and face encoder graphs run the same trunk and image tail: without this, every export of a
face-view model ships those weights twice. `share_weights` moves the initializers of such graphs into
one file with ONNX's standard external-data fields (location, offset, length); tensors with the same
bytes, dtype and dims (whatever their names) are written once and referenced by every graph.
onnxruntime, TensorRT and onnx resolve the file relative to each graph's folder, so it must stay
beside the graphs (the manifest lists it, with its sha256, in `files` and in each graph's
`external_data`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, save_external_data, set_external_data

# Smaller tensors stay inline (the default size_threshold of onnx.save_model's external data).
SIZE_THRESHOLD = 1024


@dataclass
class SharedWeights:
    """What `share_weights` did: the manifest's record of it."""

    file: str
    graphs: list[str]  # their files
    tensors: int  # initializers moved out of the graphs
    stored: int  # distinct tensors written to `file`
    bytes_before: int  # the graph files' sizes before
    bytes_after: int  # the graph files' sizes after, `file` included

    def manifest(self) -> dict:
        return {**self.__dict__, "saved_bytes": self.bytes_before - self.bytes_after}


def external_files(path: Path) -> list[str]:
    """The external-data files a graph reads (locations relative to its folder), without loading them."""
    graph = onnx.load(str(path), load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    return sorted({ExternalDataInfo(t).location for t in external})


def share_weights(
    folder: Path, files: list[str], data_file: str, size_threshold: int = SIZE_THRESHOLD
) -> SharedWeights:
    """Rewrite the graphs `files` of `folder` so that their initializers of at least `size_threshold`
    bytes live in `folder/data_file`, each distinct tensor once."""
    folder = Path(folder)
    before = sum((folder / f).stat().st_size for f in files)
    old = {loc for f in files for loc in external_files(folder / f)} - {data_file}
    models = [onnx.load(str(folder / f), load_external_data=True) for f in files]
    (folder / data_file).write_bytes(b"")  # empty, with the usual permissions (onnx would make it 0600)
    first: dict[tuple, onnx.TensorProto] = {}  # (dtype, dims, sha256 of the bytes) -> the stored tensor
    moved = 0
    for model in models:
        for tensor in model.graph.initializer:
            # Tensors in typed fields (float_data...) are the small ones onnx writes; they stay inline.
            if not tensor.HasField("raw_data") or len(tensor.raw_data) < size_threshold:
                continue
            key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(tensor.raw_data).digest())
            stored = first.get(key)
            if stored is None:
                set_external_data(tensor, data_file)  # no offset: onnx appends it to the file
                save_external_data(tensor, str(folder))
                first[key] = tensor
            else:
                info = ExternalDataInfo(stored)
                set_external_data(tensor, data_file, info.offset, info.length)
            tensor.ClearField("raw_data")
            moved += 1
    for model, name in zip(models, files, strict=True):
        onnx.save_model(model, str(folder / name))  # raw data already cleared: writes the graph only
    for location in old:  # e.g. a graph's own <file>.data, now read from data_file
        (folder / location).unlink(missing_ok=True)
    after = sum((folder / f).stat().st_size for f in [*files, data_file])
    return SharedWeights(data_file, list(files), moved, len(first), before, after)
