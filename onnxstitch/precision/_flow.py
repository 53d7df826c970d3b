"""What ``quantize`` and ``to_fp16`` share: convert, judge on the hold-out set, attribute, record."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnx

from onnxstitch.errors import PrecisionError
from onnxstitch.precision._calibration import Feeds
from onnxstitch.precision._gate import FLOAT32, NATIVE, PrecisionReport, judge, reference_outputs, run_model
from onnxstitch.precision._large import Runnable
from onnxstitch.precision._parts import restore_provenance, write_precision
from onnxstitch.precision._speed import measure_speed, warn_speed

__all__ = ["gated", "quiet_root_logger"]

logger = logging.getLogger(__name__)

Converter = Callable[[Mapping[str, str]], onnx.ModelProto]


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantization and float16 tools log through ``logging.warning()`` and
    ``logging.info()``, which configure the *root* logger (``basicConfig``) when it has no handler:
    a process-wide side effect. While they run, a root logger without handlers gets a NullHandler
    (so nothing is configured), removed afterwards."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard is not None:
            root.removeHandler(guard)


def gated(
    original: onnx.ModelProto,
    work: onnx.ModelProto,
    choice: Mapping[str, str],
    convert: Converter,
    holdout: Sequence[Feeds],
    holdout_text: str,
    *,
    reference: Callable[..., Any] | None,
    min_agreement: float,
    rtol: float,
    settings: dict[str, Any],
    what: str,
) -> onnx.ModelProto:
    """Convert ``work`` as ``choice`` says, hold the result to the gate, and return it with its record.

    Sessions take ``work`` and the result themselves, or past :data:`~._large.LARGE_BYTES` their
    files with external data, written to a temporary folder removed before this returns.

    Raises:
        PrecisionError: a row is below ``min_agreement``; carries the report and, for each converted
            part, the lowest agreement with that part converted alone.
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise PrecisionError(f"min_agreement must lie in [0, 1], got {min_agreement}")
    converted_parts = [p for p, v in choice.items() if v != "fp32"]
    result = convert(choice)
    # a model past 2 GB reaches onnxruntime as a file with external data, removed on return
    with tempfile.TemporaryDirectory(prefix="onnxstitch-gate-") as folder:
        runnable = Runnable(Path(folder))
        work_source, result_source = runnable(work, "float32"), runnable(result, what)
        expected = [(FLOAT32, run_model(work_source, holdout))]
        if reference is not None:
            expected.append((NATIVE, reference_outputs(reference, holdout, work)))
        rows = judge(result_source, expected, holdout, min_agreement=min_agreement, rtol=rtol)
        # timed whether or not the gate passes (the failure's report shows it too); never changes the choice
        speed = (
            measure_speed(work, result_source, holdout, precision=what, float_source=work_source)
            if converted_parts
            else None
        )
        report = PrecisionReport(
            dict(choice), tuple(rows), min_agreement, rtol, holdout_text, settings, speed
        )
        logger.info(
            "%s gate: lowest agreement %.4f (%s)", what, report.agreement, "passed" if report else "failed"
        )
        if not report and converted_parts:
            _refuse(report, converted_parts, choice, convert, expected, holdout, holdout_text, runnable, what)
    if speed is not None:
        logger.info("%s speed: %.2fx the float32 model at batch %d", what, speed["ratio"], speed["batch"])
        warn_speed(speed, choice)
    restore_provenance(result, original, choice)
    write_precision(result, report.to_dict())
    return result


def _refuse(
    report: PrecisionReport,
    converted_parts: list[str],
    choice: Mapping[str, str],
    convert: Converter,
    expected: Sequence[tuple[str, Sequence[dict[str, np.ndarray[Any, Any]]]]],
    holdout: Sequence[Feeds],
    holdout_text: str,
    runnable: Runnable,
    what: str,
) -> NoReturn:
    """Raise the gate's ``PrecisionError``, with each converted part's agreement when converted alone."""
    min_agreement = report.min_agreement
    if len(converted_parts) == 1:  # converted alone already
        attribution = {converted_parts[0]: report.agreement}
    else:
        attribution = _attribute(
            converted_parts, choice, convert, expected, holdout, min_agreement, report.rtol, runnable
        )
    alone = ", ".join(f"{p} {a:.4f}" for p, a in attribution.items())
    worst = min(attribution, key=lambda p: attribution[p])
    keep = {p: ("fp32" if p == worst else v) for p, v in choice.items()}
    raise PrecisionError(
        f"the {what} model agrees {report.agreement:.4f} < min_agreement {min_agreement:g} "
        f"(hold-out: {holdout_text}); each part converted alone: {alone}; part {worst!r} costs the most\n"
        f"{report}",
        report=report,
        attribution=attribution,
        hint=f"keep part {worst!r} in float32 (parts={keep}), calibrate on more representative data, "
        f"or lower min_agreement",
    )


def _attribute(
    converted_parts: list[str],
    choice: Mapping[str, str],
    convert: Converter,
    expected: Sequence[tuple[str, Sequence[dict[str, np.ndarray[Any, Any]]]]],
    holdout: Sequence[Feeds],
    min_agreement: float,
    rtol: float,
    runnable: Runnable,
) -> dict[str, float]:
    """Each converted part alone (the others in float32): its lowest agreement over all rows."""
    out: dict[str, float] = {}
    for part in converted_parts:
        alone = {p: (v if p == part else "fp32") for p, v in choice.items()}
        source = runnable(convert(alone), f"{part}_alone")
        rows = judge(source, expected, holdout, min_agreement=min_agreement, rtol=rtol)
        if isinstance(source, Path):
            source.unlink(missing_ok=True)
            source.with_name(source.name + ".data").unlink(missing_ok=True)
        out[part] = min((r.agreement for r in rows), default=1.0)
        logger.info("attribution: %s alone agrees %.4f", part, out[part])
    return out
