"""Models past protobuf's 2 GB limit: what ``quantize`` and ``to_fp16`` do with them.

A ``ModelProto`` holds any amount of weights in memory, but it cannot be *serialized* past 2 GB: not
to a file without external data, not to the bytes an onnxruntime session is made from, not through
``onnx.shape_inference.infer_shapes``. So a model holding more than :data:`LARGE_BYTES` of tensors
goes the way the rest of onnxstitch takes big models: through files with external data
(``ox.save(..., external_data=True)``, atomic and never touching the model it is given), paths for
onnxruntime's tools and sessions, ``onnx.shape_inference.infer_shapes_path``, and the hardened reader
(``ox.load``) for what comes back, so the returned model has its weights in memory as ``ox.load``
gives them. The files live in a temporary folder that is removed when the call returns.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from onnxstitch.files._write import AUTO_EXTERNAL_BYTES, inline_bytes

__all__ = ["LARGE_BYTES", "Runnable", "infer_by_path", "is_large", "save_external"]

logger = logging.getLogger(__name__)

#: a model holding more tensor bytes than this takes the external-data route (files, paths); the
#: size from which ``ox.save`` writes external data by itself. A module constant, read at each
#: call, so tests can lower it to drive the route with a small model.
LARGE_BYTES = AUTO_EXTERNAL_BYTES


def is_large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds more than :data:`LARGE_BYTES` of tensor data (counted without copying)."""
    return inline_bytes(model) > LARGE_BYTES


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` with its initializers in ``<name>.onnx.data`` (``model`` untouched)."""
    from onnxstitch.files import save

    return save(model, path, external_data=True)


def infer_by_path(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """``model`` with ONNX shape inference's ``value_info``, inferred through a file (works past 2 GB).

    The inferred file is read back by the hardened reader; both files are removed afterwards.
    """
    from onnxstitch.files import load

    source = save_external(model, folder / "infer_in.onnx")
    target = folder / "infer_out.onnx"
    onnx.shape_inference.infer_shapes_path(str(source), str(target))
    try:
        # the inferred header points at infer_in.onnx.data, in the same folder
        return load(target)
    finally:
        for path in (source, target, folder / "infer_in.onnx.data"):
            path.unlink(missing_ok=True)


class Runnable:
    """What an onnxruntime session is made from: the model itself, or past :data:`LARGE_BYTES` a file
    with external data written into ``folder`` (a session cannot take more than 2 GB of bytes)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written = 0

    def __call__(self, model: onnx.ModelProto, name: str) -> onnx.ModelProto | Path:
        """``model``, or the path of ``model`` written as ``<folder>/<name>_<n>.onnx``."""
        if not is_large(model):
            return model
        self.written += 1
        path = save_external(model, self.folder / f"{name}_{self.written}.onnx")
        logger.info("%s: past %d bytes of tensors, run from %s", name, LARGE_BYTES, path)
        return path
