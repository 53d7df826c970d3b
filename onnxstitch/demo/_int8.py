"""The demo's int8 row: ``ox.quantize`` on the merged model, judged against the native chain.

Calibration: training images; hold-out: the test images, against the float32 merged model and the
native chain (``reference=``). A model the gate refuses is still measured, so the row shows what
int8 would cost, but it is not written: ``ox.quantize`` refuses to hand it over, and so does the demo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

import onnxstitch as ox
from onnxstitch.errors import PrecisionError

__all__ = ["CALIBRATION_IMAGES", "Int8Outcome", "quantize_merged"]

logger = logging.getLogger(__name__)

#: training images the int8 activation ranges are calibrated on
CALIBRATION_IMAGES = 512


@dataclass
class Int8Outcome:
    """The int8 model and what the gate said about it.

    Attributes:
        model: the int8 ``ModelProto`` (measured in both cases; written only when ``passed``).
        passed: the accuracy gate of ``ox.quantize`` (default ``min_agreement``) accepted it.
        gate: the gate's table (``PrecisionReport``), for the report.
        parts: ``{part: precision}``: which parts ``ox.quantize`` made int8.
    """

    model: Any
    passed: bool
    gate: str
    parts: dict[str, str]


def quantize_merged(
    merged: Any, reference: Any, input_name: str, calibration: np.ndarray, holdout: np.ndarray
) -> Int8Outcome:
    """Quantize ``merged`` with ``ox.quantize``'s defaults (what pays), gated on ``holdout``.

    Raises:
        StitchError: onnxruntime's quantization tools failed (not a refusal by the gate).
    """
    from onnxstitch.precision import PrecisionReport, part_precisions, read_precision

    calib = {input_name: calibration[:CALIBRATION_IMAGES]}
    held = {input_name: holdout}
    try:
        model = ox.quantize(merged, calib, reference=reference, holdout=held)
        passed = True
        gate = str(PrecisionReport.from_dict(read_precision(model) or {}))
    except PrecisionError as exc:
        logger.info("the int8 model was refused by the gate: %s", str(exc).splitlines()[0])
        passed = False
        gate = str(exc.report) if exc.report is not None else str(exc)
        model = ox.quantize(merged, calib, reference=reference, holdout=held, min_agreement=0.0)
    return Int8Outcome(model, passed, gate, part_precisions(model))
