"""Check that an ONNX model computes what its native reference computes.

``verify(model, reference)`` runs the model with onnxruntime and the reference callable on the same
seeded random feeds (or given feeds) and returns a :class:`VerifyReport` with one row per output and
batch: truthy when every row passes, printable as a table.

How an output is judged (``metric=``):

- ``"scaled"`` (the default): ``max|onnx - ref| <= atol + rtol * max|ref|`` per output and feed
  set: the error is judged against the magnitude of that output, so float32 reassociation on values
  near zero (deep nets with BatchNorm) passes while a real conversion bug (errors of the order of
  the values themselves) fails.
- ``"elementwise"``: ``|onnx - ref| <= atol + rtol * |ref|`` for every element (``numpy.allclose``).

With either metric, a floating-point output whose reference values are constant to within the
tolerance over every feed set (all ~0, or all equal) cannot tell a right conversion from a wrong
one: a constant would pass. Such an output is reported as *uninformative* and fails, instead of
passing vacuously. Integer and bool outputs are compared exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxstitch.errors import InputError, StitchError, ValidationError
from onnxstitch.runtime._feeds import TensorInfo

__all__ = [
    "METRICS",
    "FeedSet",
    "VerifyReport",
    "VerifyRow",
    "compare_on",
    "describe_feeds",
    "random_feed_sets",
    "random_feeds",
    "verify",
]

logger = logging.getLogger(__name__)

OTHER_SYMBOLIC_DIM = 3  # size given to symbolic dims other than the batch dim
_BATCH_SYMBOLS = ("batch", "batch_size", "N", "n")
METRICS = ("scaled", "elementwise")


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
        metric: ``"scaled"`` or ``"elementwise"`` (see the module docstring).
        scale: ``max|ref|`` of this output at this feed set (``None`` when not comparable).
        feeds: the label of the feed set (``"#1"``…; the report's ``feeds`` describes each).
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
    metric: str = "elementwise"
    scale: float | None = None
    feeds: str = ""

    @property
    def bound(self) -> float | None:
        """The largest error this row allows (scaled metric), else ``None``."""
        if self.metric != "scaled" or self.scale is None:
            return None
        return self.atol + self.rtol * self.scale

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
        feeds: one description per feed set, in order (``rows[i].feeds`` is ``"#k"``, 1-based).
    """

    rows: tuple[VerifyRow, ...]
    model: str = "model"
    feeds: tuple[str, ...] = ()

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
                    "metric": r.metric,
                    "scale": r.scale,
                    "feeds": r.feeds,
                }
                for r in self.rows
            ],
            "feeds": list(self.feeds),
        }

    def __str__(self) -> str:
        header = ("output", "feeds", "batch", "shape", "max abs err", "max rel err", "tolerance", "ok")
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
        rule = _rule(self.rows)
        legend = [f"feeds #{i}: {text}" for i, text in enumerate(self.feeds, 1)]
        return f"verify {self.model}: {verdict}{rule}\n" + "\n".join(lines + legend)

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


def _rule(rows: Sequence[VerifyRow]) -> str:
    metrics = {r.metric for r in rows if r.rtol or r.atol}
    if metrics == {"scaled"}:
        return " (per output: max|err| <= atol + rtol * max|ref|)"
    if metrics == {"elementwise"}:
        return " (per element: |err| <= atol + rtol * |ref|)"
    return ""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _row_cells(r: VerifyRow) -> tuple[str, ...]:
    if r.shape_ok:
        shape = "x".join(str(d) for d in r.shape or ()) or "scalar"
    else:
        shape = f"{_shape_str(r.shape)} vs ref {_shape_str(r.expected_shape)}"
    tol = "exact" if r.rtol == 0 and r.atol == 0 else f"rtol={r.rtol:g} atol={r.atol:g}"
    if r.bound is not None and (r.rtol or r.atol):
        tol += f" (<= {r.bound:.3g})"
    return (r.output, r.feeds or "-", "-" if r.batch is None else str(r.batch), shape, _fmt(r.max_abs),
            _fmt(r.max_rel), tol, "✓" if r.passed else "✗")  # fmt: skip


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
    metric: str = "scaled",
) -> VerifyRow:
    shape, ref_shape = tuple(got.shape), tuple(ref.shape)
    exact = not (np.issubdtype(got.dtype, np.inexact) or np.issubdtype(ref.dtype, np.inexact))
    r_tol, a_tol = (0.0, 0.0) if exact else (rtol, atol)

    def row(
        max_abs: float | None, max_rel: float | None, ok: bool, note: str, scale: float | None = None
    ) -> VerifyRow:
        return VerifyRow(
            name, batch, shape, ref_shape, max_abs, max_rel, r_tol, a_tol, ok, note, metric, scale
        )

    if shape != ref_shape:
        return row(None, None, False, "shape mismatch")
    notes = []
    if got.dtype != ref.dtype:
        kind_differs = np.issubdtype(got.dtype, np.inexact) != np.issubdtype(ref.dtype, np.inexact)
        if kind_differs or got.dtype == np.bool_ or ref.dtype == np.bool_:
            return row(None, None, False, f"dtype mismatch: model {got.dtype}, reference {ref.dtype}")
        notes.append(f"dtypes {got.dtype} vs {ref.dtype}")
    g, r = got.astype(np.float64), ref.astype(np.float64)
    if got.size == 0:
        return row(0.0, 0.0, True, "empty", 0.0)
    both_nan = np.isnan(g) & np.isnan(r)
    diff = np.where(both_nan, 0.0, np.abs(g - r))
    diff = np.where(np.isnan(diff), np.inf, diff)
    nonzero = np.abs(r) > 0
    max_abs = float(diff.max())
    max_rel = float((diff[nonzero] / np.abs(r[nonzero])).max()) if nonzero.any() else 0.0
    finite = np.abs(r[np.isfinite(r)])
    scale = float(finite.max()) if finite.size else 0.0
    if metric == "scaled" and not exact:
        bound = a_tol + r_tol * scale
        ok = max_abs <= bound
        if not ok:
            bad = int(np.count_nonzero(~(diff <= bound)))
            notes.append(
                f"max abs err {max_abs:.3g} > atol + rtol * max|ref| = {bound:.3g} (max|ref| {scale:.3g}); "
                f"{bad} of {got.size} elements beyond it"
            )
    else:
        within = diff <= a_tol + r_tol * np.abs(r)
        ok = bool(np.all(within))
        if not ok:
            notes.append(f"{int(np.count_nonzero(~within))} of {got.size} elements out of tolerance")
    return row(max_abs, max_rel, ok, "; ".join(notes), scale)


def _uninformative(rows: list[VerifyRow], refs: dict[str, list[np.ndarray[Any, Any]]]) -> list[VerifyRow]:
    """Fail the rows of a float output whose reference is constant to within the tolerance over every
    feed set: a constant tensor would pass, so the check tells nothing about the conversion."""
    dull: dict[str, str] = {}
    for name, arrays in refs.items():
        values = [
            a.astype(np.float64).ravel() for a in arrays if np.issubdtype(a.dtype, np.floating) and a.size
        ]
        judged = [r for r in rows if r.output == name and r.shape_ok and (r.rtol or r.atol)]
        if not values or not judged:
            continue
        flat = np.concatenate(values)
        flat = flat[np.isfinite(flat)]
        if flat.size < 2:
            continue
        low, high = float(flat.min()), float(flat.max())
        rtol, atol, metric = judged[0].rtol, judged[0].atol, judged[0].metric
        mid = (low + high) / 2
        if metric == "scaled":
            constant_passes = (high - low) / 2 <= atol + rtol * float(np.abs(flat).max())
        else:
            constant_passes = bool(np.all(np.abs(flat - mid) <= atol + rtol * np.abs(flat)))
        if constant_passes:
            dull[name] = (
                f"uninformative: the reference values lie in [{low:.3g}, {high:.3g}] over every feed set, "
                f"so a constant would pass the tolerance; the check cannot tell a right conversion from a "
                f"wrong one"
            )
    if not dull:
        return rows
    out = []
    for r in rows:
        if r.output in dull and r.shape_ok and (r.rtol or r.atol):
            note = "; ".join(n for n in (dull[r.output], r.note) if n)
            r = dataclasses.replace(r, passed=False, note=note)
        out.append(r)
    return out


FeedSet = tuple[str, Mapping[str, Any]]
"""A described feed set: ``(description, {input name: array})``."""


def random_feed_sets(model: onnx.ModelProto, batch_sizes: Sequence[int], seed: int = 0) -> list[FeedSet]:
    """Described :func:`random_feeds`, one set per batch size (seeds ``seed``, ``seed + 1``, …).

    Raises:
        StitchError: no batch size given.
    """
    if not batch_sizes:
        raise StitchError("verify needs at least one batch size", hint="e.g. batch_sizes=(1, 7)")
    return [
        (f"seeded random inputs (seed {seed + i}), batch {b}", random_feeds(model, b, seed=seed + i))
        for i, b in enumerate(batch_sizes)
    ]


def _feed_sets(model: onnx.ModelProto, feeds: Any, batch_sizes: Sequence[int], seed: int) -> list[FeedSet]:
    if feeds is None:
        return random_feed_sets(model, batch_sizes, seed)
    sets = [feeds] if isinstance(feeds, Mapping) else list(feeds)
    if not sets or not all(isinstance(s, Mapping) for s in sets):
        raise InputError(
            "feeds must be a dict of input name -> array, or a list of such dicts",
            hint="or leave feeds=None to use seeded random feeds",
        )
    return [(f"feeds[{i}] as given", s) for i, s in enumerate(sets)]


def describe_feeds(feeds: Mapping[str, Any]) -> str:
    """``"x float32[2,5] in [-1.2, 3.4]; ids int64[2,8] in {0, 1, 7}"``: what a feed set holds."""
    parts = []
    for name, value in feeds.items():
        a = np.asarray(value)
        dims = ",".join(str(d) for d in a.shape)
        if a.size == 0:
            span = "empty"
        elif np.issubdtype(a.dtype, np.floating):
            span = f"in [{float(np.nanmin(a)):.3g}, {float(np.nanmax(a)):.3g}]"
        else:
            held = np.unique(a)
            span = "in {" + ", ".join(str(v) for v in held[:6]) + (", …}" if held.size > 6 else "}")
        parts.append(f"{name} {a.dtype}[{dims}] {span}")
    return "; ".join(parts)


def compare_on(
    model: onnx.ModelProto | str | os.PathLike[str],
    reference: Reference,
    feed_sets: Sequence[FeedSet],
    *,
    rtol: float,
    atol: float,
    metric: str = "scaled",
    device: str = "cpu",
) -> VerifyReport:
    """Run ``model`` and ``reference`` on each described feed set and compare every output.

    The engine of :func:`verify` (which makes the feed sets); converters call it with their own.

    Raises:
        StitchError: the reference raised, the model cannot run, a tolerance is negative or the
            metric is unknown.
        InputError: a feed set does not match the model's inputs.
    """
    from onnxstitch.files import as_model

    return _run_sets(as_model(model), model, reference, feed_sets, rtol, atol, metric, device)


def _run_sets(
    proto: onnx.ModelProto,
    model: onnx.ModelProto | str | os.PathLike[str],
    reference: Reference,
    feed_sets: Sequence[FeedSet],
    rtol: float,
    atol: float,
    metric: str,
    device: str,
) -> VerifyReport:
    from onnxstitch.runtime.session import Session

    if rtol < 0 or atol < 0:
        raise StitchError(f"tolerances must not be negative, got rtol={rtol}, atol={atol}")
    if metric not in METRICS:
        raise StitchError(f"unknown metric {metric!r}", hint=f"use one of {list(METRICS)}")
    session = Session(model if not isinstance(model, onnx.ModelProto) else proto, device=device)
    label = str(model) if not isinstance(model, onnx.ModelProto) else f"graph {proto.graph.name!r}"
    rows: list[VerifyRow] = []
    refs: dict[str, list[np.ndarray[Any, Any]]] = {}
    descriptions = []
    for k, (text, given) in enumerate(feed_sets, 1):
        feed = {name: np.asarray(v) for name, v in given.items()}
        descriptions.append(f"{text}: {describe_feeds(feed)}")
        first = next(iter(feed.values()), None)
        batch = int(first.shape[0]) if first is not None and first.ndim else None
        got = session.run(feed)
        ref = _reference_outputs(reference, feed, session.input_names, session.output_names)
        these: list[VerifyRow] = []
        for name in session.output_names:
            if name in ref:
                refs.setdefault(name, []).append(ref[name])
                these.append(_compare(name, batch, got[name], ref[name], rtol, atol, metric))
            else:
                note = f"reference gave no output {name!r} (it gave: {sorted(ref)})"
                these.append(VerifyRow(name, batch, tuple(got[name].shape), None, None, None, rtol, atol,
                                       False, note, metric))  # fmt: skip
        for name in ref:
            if name not in got:
                note = f"model has no output {name!r} (its outputs: {session.output_names})"
                these.append(VerifyRow(name, batch, None, tuple(ref[name].shape), None, None, rtol, atol,
                                       False, note, metric))  # fmt: skip
        rows.extend(dataclasses.replace(r, feeds=f"#{k}") for r in these)
    report = VerifyReport(tuple(_uninformative(rows, refs)), label, tuple(descriptions))
    logger.info("verify %s: %s", label, "passed" if report else f"{len(report.failures)} failing row(s)")
    return report


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
    metric: str = "scaled",
) -> VerifyReport:
    """Compare ``model`` run by onnxruntime with ``reference`` on the same feeds.

    Args:
        model: an ``onnx.ModelProto`` or a path.
        reference: called with the model's inputs as positional numpy arrays in graph-input order;
            returns an array, a sequence in output order, or a dict by output name.
        feeds: a dict name -> array, or a list of such dicts; default: seeded random feeds at each
            of ``batch_sizes``.
        rtol: relative tolerance.
        atol: absolute tolerance. Integer and bool outputs are compared exactly.
        batch_sizes: batch sizes of the random feeds.
        seed: seed of the random feeds.
        device: where onnxruntime runs the model (see ``Session``).
        metric: ``"scaled"`` (default): per output, ``max|onnx - ref| <= atol + rtol * max|ref|``;
            ``"elementwise"``: every element, ``|onnx - ref| <= atol + rtol * |ref|``. With either,
            a float output constant to within the tolerance over all feeds fails as uninformative.

    Returns:
        A report with one row per output and feed set, plus a failing row per missing or extra
        output; ``report.feeds`` describes each feed set.

    Raises:
        StitchError: the reference raised (wrapped with context), the model cannot run, a
            tolerance is negative or ``metric`` is unknown.
        InputError: ``feeds`` do not match the model's inputs.
        DeviceError: ``device`` is unavailable.
    """
    from onnxstitch.files import as_model

    proto = as_model(model)
    sets = _feed_sets(proto, feeds, batch_sizes, seed)
    return _run_sets(proto, model, reference, sets, rtol, atol, metric, device)
