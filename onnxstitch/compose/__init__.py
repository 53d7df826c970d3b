"""ONNX → one ONNX: pure functions on ``ModelProto``; never imports a training framework."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxstitch._lazy import lazy_exports

__all__ = ["Link", "adapters", "chain", "extract", "merge", "optimize", "replace"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Link": "_merge:Link",
        "merge": "_merge:merge",
        "chain": "_merge:chain",
        "replace": "_merge:replace",
        "extract": "_extract:extract",
        "optimize": "_optimize:optimize",
        "adapters": "adapters",
    },
)

if TYPE_CHECKING:  # pragma: no cover
    from onnxstitch.compose import adapters
    from onnxstitch.compose._extract import extract
    from onnxstitch.compose._merge import Link, chain, merge, replace
    from onnxstitch.compose._optimize import optimize
