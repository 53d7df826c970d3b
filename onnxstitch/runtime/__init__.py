"""Run, verify and benchmark ONNX models with onnxruntime; deploy and serve them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxstitch._lazy import lazy_exports

__all__ = ["Session", "VerifyReport", "bench", "verify"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Session": "session:Session",
        "verify": "verification:verify",
        "VerifyReport": "verification:VerifyReport",
        "bench": "benchmark:bench",
    },
)

if TYPE_CHECKING:  # pragma: no cover
    from onnxstitch.runtime.benchmark import bench
    from onnxstitch.runtime.session import Session
    from onnxstitch.runtime.verification import VerifyReport, verify
