"""Precision per part: int8 (``quantize``) and float16 (``to_fp16``), each behind an accuracy gate.

A merged model knows which node came from which part, so one part (a convolutional backbone) can be
quantized while another (a small head) stays float32, and a result that no longer agrees with the
float32 model, or with the native frameworks, is refused with a ``PrecisionError`` that says which
part costs the accuracy. Importing this package imports neither onnxruntime's quantization tools nor
any training framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxstitch._lazy import lazy_exports

__all__ = ["AgreementRow", "PrecisionReport", "part_precisions", "quantize", "read_precision", "to_fp16"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "quantize": "_quantize:quantize",
        "to_fp16": "_fp16:to_fp16",
        "PrecisionReport": "_gate:PrecisionReport",
        "AgreementRow": "_gate:AgreementRow",
        "read_precision": "_parts:read_precision",
        "part_precisions": "_parts:part_precisions",
    },
)

if TYPE_CHECKING:  # pragma: no cover
    from onnxstitch.precision._fp16 import to_fp16
    from onnxstitch.precision._gate import AgreementRow, PrecisionReport
    from onnxstitch.precision._parts import part_precisions, read_precision
    from onnxstitch.precision._quantize import quantize
