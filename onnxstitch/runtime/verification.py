"""Check that an ONNX model computes what its native reference computes.

``verify(model, reference)`` runs the model with onnxruntime and the reference callable on the same
seeded random feeds (or given feeds) and returns a :class:`VerifyReport` with one row per output and
batch: truthy when every row passes, printable as a table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxstitch.errors import InputError, StitchError, ValidationError
from onnxstitch.runtime._feeds import TensorInfo

__all__ = ["VerifyReport", "VerifyRow", "random_feeds", "verify"]

logger = logging.getLogger(__name__)

OTHER_SYMBOLIC_DIM = 3  # size given to symbolic dims other than the batch dim
_BATCH_SYMBOLS = ("batch", "batch_size", "N", "n")


@dataclass(frozen=True)
class VerifyRow:
    """One output at one batch: how the model's result compares with the reference.

    Attributes:
        output: the output's name.
        batch: the batch size of the feeds (``None`` for given feeds without a batch dim).
        shape: the model's output shape (``None`` when it produced none).
        expected_shape: the reference's output shape (``None`` when it produced none).
        max_abs: largest ``|onnx - ref|`` (``None`` when not comparable).
        max_rel: largest ``|onnx - ref| / |ref|`` over elements with ``ref != 0``.
        rtol: relative tolerance used (0 for exact comparisons).
        atol: absolute tolerance used (0 for exact comparisons).
        passed: whether this row passes.
        note: why it fails (or how it was compared), empty when nothing to say.
    """

    output: str
    batch: int | None
    shape: tuple[int, ...] | None
    expected_shape: tuple[int, ...] | None
    max_abs: float | None
    max_rel: float | None
    rtol: float
    atol: float
    passed: bool
    note: str = ""

    @property
    def shape_ok(self) -> bool:
        """True when the model's and the reference's shapes agree."""
        return self.shape is not None and self.shape == self.expected_shape


@dataclass(frozen=True)
class VerifyReport:
    """Every comparison ``verify`` made: truthy iff all rows pass; ``str()`` is a table.

    Attributes:
        rows: one :class:`VerifyRow` per output and batch (and per name mismatch).
        model: a label of the model checked.
    """

    rows: tuple[VerifyRow, ...]
    model: str = "model"

    def __bool__(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def passed(self) -> bool:
        """True iff every row passes."""
        return bool(self)

    @property
    def failures(self) -> list[VerifyRow]:
        """The rows that fail."""
        return [r for r in self.rows if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form of the report."""
        return {
            "model": self.model,
            "passed": self.passed,
            "rows": [
                {
                    "output": r.output,
                    "batch": r.batch,
                    "shape": list(r.shape) if r.shape is not None else None,
                    "expected_shape": list(r.expected_shape) if r.expected_shape is not None else None,
                    "max_abs": r.max_abs,
                    "max_rel": r.max_rel,
                    "rtol": r.rtol,
                    "atol": r.atol,
                    "passed": r.passed,
                    "note": r.note,
                }
                for r in self.rows
            ],
        }

    def __str__(self) -> str:
        header = ("output", "batch", "shape", "max abs err", "max rel err", "tolerance", "ok")
        body = [_row_cells(r) for r in self.rows]
        widths = [max(len(c[i]) for c in [header, *body]) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip(),
            "  ".join("-" * w for w in widths),
        ]
        for row, cells in zip(self.rows, body, strict=True):
            line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
            lines.append(line + (f"  ({row.note})" if row.note and not row.passed else ""))
        verdict = "all outputs match" if self else f"{len(self.failures)} of {len(self.rows)} row(s) FAIL"
        return f"verify {self.model}: {verdict}\n" + "\n".join(lines)

    def raise_for_mismatch(self) -> None:
        """Raise if any row fails.

        Raises:
            ValidationError: with ``report=self`` and the whole table in the message.
        """
        if not self:
            raise ValidationError(
                f"the ONNX model does not match the reference:\n{self}",
                report=self,
                hint="look at the failing outputs; loosen rtol/atol only for numerical noise",
            )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _row_cells(r: VerifyRow) -> tuple[str, ...]:
    if r.shape_ok:
        shape = "x".join(str(d) for d in r.shape or ()) or "scalar"
    else:
        shape = f"{_shape_str(r.shape)} vs ref {_shape_str(r.expected_shape)}"
    tol = "exact" if r.rtol == 0 and r.atol == 0 else f"rtol={r.rtol:g} atol={r.atol:g}"
    return (r.output, "-" if r.batch is None else str(r.batch), shape, _fmt(r.max_abs), _fmt(r.max_rel), tol,
            "✓" if r.passed else "✗")  # fmt: skip


def _shape_str(shape: tuple[int, ...] | None) -> str:
    return "missing" if shape is None else "(" + ",".join(str(d) for d in shape) + ")"


def _infos(model: onnx.ModelProto) -> list[TensorInfo]:
    """Input signature of ``model`` from its graph (initializer-backed inputs excluded)."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    infos = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dims: list[int | str | None] = []
        for d in tensor.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        infos.append(
            TensorInfo(value.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), tuple(dims))
        )
    return infos


def _random_array(info: TensorInfo, batch_size: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    shape = []
    for axis, d in enumerate(info.shape):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif axis == 0 or d in _BATCH_SYMBOLS:
            shape.append(batch_size)
        else:
            shape.append(OTHER_SYMBOLIC_DIM)
    if info.dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(info.dtype, np.integer):
        return rng.integers(0, 4, size=shape).astype(info.dtype)
    if np.issubdtype(info.dtype, np.floating):
        return rng.standard_normal(size=shape).astype(info.dtype)
    raise InputError(
        f"input {info.name!r}: cannot generate random data of dtype {info.dtype}",
        hint="pass feeds= explicitly",
    )


def random_feeds(
    model: onnx.ModelProto | str | os.PathLike[str], batch_size: int, *, seed: int = 0
) -> dict[str, np.ndarray[Any, Any]]:
    """Seeded random feeds for ``model``'s inputs.

    Dim 0 and dims named ``batch`` take ``batch_size``; other symbolic dims take a small fixed
    size (3); float inputs are standard normal, int inputs small non-negative ints (0..3), bool
    inputs random.

    Raises:
        InputError: an input has a dtype no random data can be made for (e.g. string).
        ModelFileError: ``model`` is a path that cannot be read.
    """
    from onnxstitch.files import as_model

    rng = np.random.default_rng(seed)
    return {info.name: _random_array(info, batch_size, rng) for info in _infos(as_model(model))}


Reference = Callable[..., Any]


def _reference_outputs(
    reference: Reference,
    feeds: Mapping[str, np.ndarray[Any, Any]],
    order: Sequence[str],
    outputs: Sequence[str],
) -> dict[str, np.ndarray[Any, Any]]:
    """Call ``reference`` with the feeds positionally; normalise its result to a dict by name."""
    args = [np.array(feeds[name], copy=True) for name in order]
    try:
        result = reference(*args)
    except Exception as exc:  # the user's code: wrap with context
        raise StitchError(
            f"the reference {getattr(reference, '__name__', reference)!r} raised "
            f"{type(exc).__name__}: {exc} (called with inputs {list(order)} of shapes "
            f"{[tuple(a.shape) for a in args]})",
            hint="the reference is called with the model's inputs as positional numpy arrays in graph order",
        ) from exc
    if isinstance(result, Mapping):
        return {str(k): _as_array(v) for k, v in result.items()}
    if isinstance(result, list | tuple):
        if len(result) != len(outputs):
            logger.debug("reference returned %d values for %d outputs", len(result), len(outputs))
        return {
            (outputs[i] if i < len(outputs) else f"<extra output {i}>"): _as_array(v)
            for i, v in enumerate(result)
        }
    return {outputs[0] if outputs else "<output 0>": _as_array(result)}


def _as_array(value: Any) -> np.ndarray[Any, Any]:
    from onnxstitch.runtime._feeds import to_numpy

    if (
        hasattr(value, "numpy")
        and not isinstance(value, np.ndarray)
        and type(value).__module__.startswith("tensorflow")
    ):
        return np.asarray(value.numpy())
    return to_numpy("reference output", value)


def _compare(
    name: str,
    batch: int | None,
    got: np.ndarray[Any, Any],
    ref: np.ndarray[Any, Any],
    rtol: float,
    atol: float,
) -> VerifyRow:
    shape, ref_shape = tuple(got.shape), tuple(ref.shape)
    exact = not (np.issubdtype(got.dtype, np.inexact) or np.issubdtype(ref.dtype, np.inexact))
    r_tol, a_tol = (0.0, 0.0) if exact else (rtol, atol)
    if shape != ref_shape:
        return VerifyRow(name, batch, shape, ref_shape, None, None, r_tol, a_tol, False, "shape mismatch")
    notes = []
    if got.dtype != ref.dtype:
        kind_differs = np.issubdtype(got.dtype, np.inexact) != np.issubdtype(ref.dtype, np.inexact)
        if kind_differs or got.dtype == np.bool_ or ref.dtype == np.bool_:
            return VerifyRow(
                name, batch, shape, ref_shape, None, None, r_tol, a_tol, False,
                f"dtype mismatch: model {got.dtype}, reference {ref.dtype}",
            )  # fmt: skip
        notes.append(f"dtypes {got.dtype} vs {ref.dtype}")
    g, r = got.astype(np.float64), ref.astype(np.float64)
    if got.size == 0:
        return VerifyRow(name, batch, shape, ref_shape, 0.0, 0.0, r_tol, a_tol, True, "empty")
    both_nan = np.isnan(g) & np.isnan(r)
    diff = np.where(both_nan, 0.0, np.abs(g - r))
    diff = np.where(np.isnan(diff), np.inf, diff)
    nonzero = np.abs(r) > 0
    max_abs = float(diff.max())
    max_rel = float((diff[nonzero] / np.abs(r[nonzero])).max()) if nonzero.any() else 0.0
    ok = bool(np.all(diff <= a_tol + r_tol * np.abs(r)))
    if not ok:
        bad = int(np.count_nonzero(~(diff <= a_tol + r_tol * np.abs(r))))
        notes.append(f"{bad} of {got.size} elements out of tolerance")
    return VerifyRow(name, batch, shape, ref_shape, max_abs, max_rel, r_tol, a_tol, ok, "; ".join(notes))


def _feed_sets(
    model: onnx.ModelProto, feeds: Any, batch_sizes: Sequence[int], seed: int
) -> list[tuple[int | None, dict[str, np.ndarray[Any, Any]]]]:
    if feeds is None:
        if not batch_sizes:
            raise StitchError("verify needs at least one batch size", hint="e.g. batch_sizes=(1, 7)")
        return [(b, random_feeds(model, b, seed=seed + i)) for i, b in enumerate(batch_sizes)]
    sets = [feeds] if isinstance(feeds, Mapping) else list(feeds)
    if not sets or not all(isinstance(s, Mapping) for s in sets):
        raise InputError(
            "feeds must be a dict of input name -> array, or a list of such dicts",
            hint="or leave feeds=None to use seeded random feeds",
        )
    out = []
    for s in sets:
        arrays = {k: np.asarray(v) for k, v in s.items()}
        first = next(iter(arrays.values()), None)
        out.append((int(first.shape[0]) if first is not None and first.ndim else None, arrays))
    return out


def verify(
    model: onnx.ModelProto | str | os.PathLike[str],
    reference: Reference,
    feeds: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    batch_sizes: Sequence[int] = (1, 7),
    seed: int = 0,
    device: str = "cpu",
) -> VerifyReport:
    """Compare ``model`` run by onnxruntime with ``reference`` on the same feeds.

    Args:
        model: an ``onnx.ModelProto`` or a path.
        reference: called with the model's inputs as positional numpy arrays in graph-input order;
            returns an array, a sequence in output order, or a dict by output name.
        feeds: a dict name -> array, or a list of such dicts; default: seeded random feeds at each
            of ``batch_sizes``.
        rtol: relative tolerance (``|onnx - ref| <= atol + rtol * |ref|`` elementwise).
        atol: absolute tolerance. Integer and bool outputs are compared exactly.
        batch_sizes: batch sizes of the random feeds.
        seed: seed of the random feeds.
        device: where onnxruntime runs the model (see ``Session``).

    Returns:
        A report with one row per output and batch, plus a failing row per missing or extra output.

    Raises:
        StitchError: the reference raised (wrapped with context), the model cannot run, or a
            tolerance is negative.
        InputError: ``feeds`` do not match the model's inputs.
        DeviceError: ``device`` is unavailable.
    """
    from onnxstitch.files import as_model
    from onnxstitch.runtime.session import Session

    if rtol < 0 or atol < 0:
        raise StitchError(f"tolerances must not be negative, got rtol={rtol}, atol={atol}")
    proto = as_model(model)
    session = Session(model if not isinstance(model, onnx.ModelProto) else proto, device=device)
    label = str(model) if not isinstance(model, onnx.ModelProto) else f"graph {proto.graph.name!r}"
    rows: list[VerifyRow] = []
    for batch, feed in _feed_sets(proto, feeds, batch_sizes, seed):
        got = session.run(feed)
        ref = _reference_outputs(reference, feed, session.input_names, session.output_names)
        for name in session.output_names:
            if name not in ref:
                note = f"reference gave no output {name!r} (it gave: {sorted(ref)})"
                rows.append(
                    VerifyRow(name, batch, tuple(got[name].shape), None, None, None, rtol, atol, False, note)
                )
                continue
            rows.append(_compare(name, batch, got[name], ref[name], rtol, atol))
        for name in ref:
            if name not in got:
                note = f"model has no output {name!r} (its outputs: {session.output_names})"
                rows.append(
                    VerifyRow(name, batch, None, tuple(ref[name].shape), None, None, rtol, atol, False, note)
                )
    report = VerifyReport(tuple(rows), label)
    logger.info("verify %s: %s", label, "passed" if report else f"{len(report.failures)} failing row(s)")
    return report
