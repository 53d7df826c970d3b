"""Framework → ONNX converters. The only place torch, tensorflow and tf2onnx are imported (lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxstitch._lazy import lazy_exports

__all__ = ["from_keras", "from_torch"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {"from_torch": "_torch:from_torch", "from_keras": "_keras:from_keras"},
)

if TYPE_CHECKING:  # pragma: no cover
    from onnxstitch.converters._keras import from_keras
    from onnxstitch.converters._torch import from_torch
