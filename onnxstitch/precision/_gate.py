"""The accuracy gate: a converted model against the float32 model and a native reference.

Per output and per comparison, on the hold-out samples:

- an output *like a classifier's* (floating point, rank ≥ 2, last dim > 1) is judged by its top-1
  agreement: the share of positions whose argmax over the last axis is the same;
- any other output by the share of samples that agree to within ``rtol``: the sample's
  ``max|converted - expected| <= rtol * max|expected|``, the scale taken over the whole output on the
  hold-out set (as ``ox.verify``'s scaled metric: values near zero are not held to a relative bound).

Error statistics (max abs, mean abs, max abs relative to ``max|expected|``) are shown for both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxstitch.precision._calibration import Feeds

__all__ = ["AgreementRow", "PrecisionReport", "judge", "run_model"]

logger = logging.getLogger(__name__)

FLOAT32 = "float32 model"
NATIVE = "native reference"


@dataclass(frozen=True)
class AgreementRow:
    """One output of the converted model compared with one expectation.

    Attributes:
        output: the output's name.
        against: ``"float32 model"`` or ``"native reference"``.
        metric: ``"top-1"`` (a classifier-like output) or ``"within rtol"``.
        samples: how many samples (or positions, for top-1 over rank > 2) were compared.
        agreement: the share that agrees, in [0, 1].
        max_abs: largest absolute error.
        mean_abs: mean absolute error.
        max_rel: ``max_abs / max|expected|``.
        passed: ``agreement >= min_agreement``.
    """

    output: str
    against: str
    metric: str
    samples: int
    agreement: float
    max_abs: float
    mean_abs: float
    max_rel: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class PrecisionReport:
    """What the gate measured: truthy when every row passes; ``str()`` gives one table per output.

    Attributes:
        parts: ``{part: precision}`` of the converted model.
        rows: one :class:`AgreementRow` per output and comparison.
        min_agreement: the threshold each row was held to.
        rtol: the tolerance of the non-classifier outputs.
        holdout: where the compared samples came from.
        settings: how the model was converted (format, per-channel, types, calibration method …).
        speed: the converted model timed against the float32 model on this machine (``batch``,
            ``float32_ms``, ``quantized_ms``, ``ratio`` = float32_ms / quantized_ms, ``runs``,
            ``device``, ``precision``), or ``None`` when nothing was converted.
    """

    parts: dict[str, str]
    rows: tuple[AgreementRow, ...]
    min_agreement: float
    rtol: float
    holdout: str
    settings: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def passed(self) -> bool:
        """True iff every row passes."""
        return bool(self)

    @property
    def agreement(self) -> float:
        """The lowest agreement over all rows (1.0 without rows)."""
        return min((r.agreement for r in self.rows), default=1.0)

    @property
    def failures(self) -> list[AgreementRow]:
        """The rows below ``min_agreement``."""
        return [r for r in self.rows if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (what the model's ``onnxstitch.precision`` metadata holds)."""
        out: dict[str, Any] = {
            "parts": dict(self.parts),
            "settings": dict(self.settings),
            "gate": {
                "passed": self.passed,
                "min_agreement": self.min_agreement,
                "rtol": self.rtol,
                "holdout": self.holdout,
                "rows": [r.to_dict() for r in self.rows],
            },
        }
        if self.speed is not None:
            out["speed"] = dict(self.speed)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrecisionReport:
        """Rebuild a report from :meth:`to_dict`'s form (the model's ``onnxstitch.precision`` record)."""
        gate = data.get("gate") or {}
        rows = tuple(AgreementRow(**row) for row in gate.get("rows", []))
        return cls(
            dict(data.get("parts", {})),
            rows,
            float(gate.get("min_agreement", 0.0)),
            float(gate.get("rtol", 0.0)),
            str(gate.get("holdout", "")),
            dict(data.get("settings", {})),
            dict(data["speed"]) if data.get("speed") else None,
        )

    def __str__(self) -> str:
        parts = ", ".join(f"{p}: {v}" for p, v in self.parts.items())
        verdict = "passed" if self else f"{len(self.failures)} of {len(self.rows)} row(s) below the threshold"
        lines = [
            f"precision gate ({parts}): {verdict}; min agreement {self.min_agreement:g}",
            f"hold-out: {self.holdout}",
        ]
        if self.speed:
            from onnxstitch.precision._speed import speed_line

            lines.append(speed_line(self.speed))
        thin = self.settings.get("thin_convs")
        if isinstance(thin, dict):
            from onnxstitch.precision._stem import thin_line

            lines.append(thin_line(thin))
        header = (
            "against",
            "metric",
            "samples",
            "agreement",
            "max abs err",
            "mean abs err",
            "max rel err",
            "ok",
        )
        for output in dict.fromkeys(r.output for r in self.rows):
            body = [
                (
                    r.against,
                    r.metric,
                    str(r.samples),
                    f"{r.agreement:.4f}",
                    f"{r.max_abs:.3g}",
                    f"{r.mean_abs:.3g}",
                    f"{r.max_rel:.3g}",
                    "✓" if r.passed else "✗",
                )
                for r in self.rows
                if r.output == output
            ]
            widths = [max(len(c[i]) for c in [header, *body]) for i in range(len(header))]
            lines.append(f"output {output!r}:")
            for cells in [header, tuple("-" * w for w in widths), *body]:
                lines.append(
                    "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
                )
        return "\n".join(lines)


def run_model(
    model: onnx.ModelProto | Path, holdout: Sequence[Feeds]
) -> list[dict[str, np.ndarray[Any, Any]]]:
    """Outputs of ``model`` (onnxruntime, CPU; a path for a model past 2 GB) on each hold-out batch."""
    from onnxstitch.runtime.session import Session

    session = Session(model, device="cpu")
    # a float16 model without float32 inputs (keep_io_types=False) takes the same samples in float16
    dtypes = {i.name: i.dtype for i in session.inputs}

    def cast(feed: Feeds) -> Feeds:
        return {
            k: v.astype(dtypes[k]) if k in dtypes and v.dtype != dtypes[k] and v.dtype.kind == "f" else v
            for k, v in feed.items()
        }

    return [session.run(cast(feed)) for feed in holdout]


def _classifier_like(array: np.ndarray[Any, Any]) -> bool:
    return bool(np.issubdtype(array.dtype, np.floating) and array.ndim >= 2 and array.shape[-1] > 1)


def _row(
    output: str,
    against: str,
    got: np.ndarray[Any, Any],
    want: np.ndarray[Any, Any],
    min_agreement: float,
    rtol: float,
) -> AgreementRow:
    g, w = got.astype(np.float64), want.astype(np.float64)
    if g.shape != w.shape:
        return AgreementRow(
            output, against, f"shape {g.shape} vs {w.shape}", 0, 0.0, np.inf, np.inf, np.inf, False
        )
    diff = np.abs(g - w)
    scale = float(np.abs(w).max()) if w.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    if _classifier_like(want):
        same = g.argmax(axis=-1) == w.argmax(axis=-1)
        metric, samples, agreement = "top-1", int(same.size), float(same.mean())
    else:
        flat_d = diff.reshape(len(diff), -1) if diff.ndim else diff.reshape(1, -1)
        ok = flat_d.max(axis=1) <= rtol * scale
        metric, samples, agreement = f"within rtol {rtol:g}", int(ok.size), float(ok.mean())
    return AgreementRow(
        output, against, metric, samples, agreement, max_abs, mean_abs, max_rel, agreement >= min_agreement
    )


def _stack(batches: Sequence[dict[str, np.ndarray[Any, Any]]], name: str) -> np.ndarray[Any, Any]:
    arrays = [np.asarray(b[name]) for b in batches]
    return np.concatenate(arrays) if arrays[0].ndim else np.stack(arrays)


def judge(
    converted: onnx.ModelProto | Path,
    expected: Sequence[tuple[str, Sequence[dict[str, np.ndarray[Any, Any]]]]],
    holdout: Sequence[Feeds],
    *,
    min_agreement: float,
    rtol: float,
) -> list[AgreementRow]:
    """Rows of ``converted`` (a model, or its path past 2 GB) run on ``holdout`` against each
    ``(label, outputs per batch)``."""
    got = run_model(converted, holdout)
    rows = []
    for name in got[0]:
        have = _stack(got, name)
        for label, outputs in expected:
            if name in outputs[0]:
                rows.append(_row(name, label, have, _stack(outputs, name), min_agreement, rtol))
    return rows


def reference_outputs(
    reference: Callable[..., Any], holdout: Sequence[Feeds], model: onnx.ModelProto
) -> list[dict[str, np.ndarray[Any, Any]]]:
    """The native reference's outputs on each hold-out batch, by output name (as ``ox.verify`` calls it)."""
    from onnxstitch.runtime.verification import _infos, _reference_outputs

    order = [i.name for i in _infos(model)]
    outputs = [o.name for o in model.graph.output]
    return [_reference_outputs(reference, feed, order, outputs) for feed in holdout]
