"""Reading and writing ONNX model files safely.

``load`` refuses garbage and hostile files with a typed error; ``save`` writes atomically and moves
big weights to external data. ``as_model`` is what every public function that accepts
"``ModelProto`` or path" calls.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnxstitch.errors import ModelFileError

__all__ = ["ModelLike", "as_model", "load", "save"]

ModelLike = onnx.ModelProto | str | os.PathLike[str]


def load(path: str | os.PathLike[str], *, verify: bool = False) -> onnx.ModelProto:
    """Load an ONNX model from ``path`` (preliminary implementation; hardened in files/)."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file {str(p)!r} does not exist or is not a file")
    try:
        return onnx.load(str(p))
    except Exception as exc:
        raise ModelFileError(f"{str(p)!r} is not a readable ONNX model: {exc}") from exc


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` to ``path`` (preliminary implementation; hardened in files/)."""
    p = Path(path)
    onnx.save(model, str(p))
    return p


def as_model(model: ModelLike) -> onnx.ModelProto:
    """Return ``model`` itself if it is a ``ModelProto`` (callers must not mutate it), else load it."""
    if isinstance(model, onnx.ModelProto):
        return model
    return load(model)
