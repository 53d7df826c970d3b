"""The TorchScript exporter, used by :func:`from_torch` only when the dynamo exporter fails.

TorchScript *traces*: it records the ops one run on the example inputs executes. Python control
flow on tensor values (``if x.max() > 4:``, ``for row in x:``, ``int(x.sum())``) is evaluated once
and baked into the graph, and torch says so only in a ``TracerWarning`` ("… might cause the trace
to be incorrect"). Such a trace is refused here (:class:`UnfaithfulTrace`, naming each source line)
instead of being shipped: validation on random inputs may never take the other branch.

Also here: the quieting of torch's own output around an export (shared with the dynamo exporter),
and re-linking the batch dim of outputs that the tracer left unlinked.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import onnx

from onnxstitch.converters import _common

__all__ = [
    "TORCH_LOGGERS",
    "UnfaithfulTrace",
    "export_torchscript",
    "quiet_logger",
    "stderr_to_debug_log",
    "tie_traced_outputs",
]

logger = logging.getLogger(__name__)

# Loggers silenced during an export: "torch" is the parent of every torch logger left at NOTSET,
# i.e. all of them unless the user asked for some with TORCH_LOGS (those keep their levels). Under it
# torch.export._trace logs "always_classified is unsupported" at ERROR and
# torch._subclasses.fake_tensor a whole traceback for a shape error that ConversionError reports in
# one line; the exporter's _registration warns once per torchvision op when torchvision is absent.
TORCH_LOGGERS = ("torch", "torch.onnx._internal.exporter._registration")
# the phrase of every TracerWarning about a Python value computed from a tensor (bool, int, float,
# list, index, iteration): the trace holds the value of the example run, whatever the input
_UNFAITHFUL = "might cause the trace to be incorrect"


class UnfaithfulTrace(Exception):
    """The trace baked in Python control flow or values that depend on the input data.

    Attributes:
        lines: one ``"file:line: `source` (what was converted)"`` per place, in trace order.
    """

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("; ".join(self.lines))


@contextlib.contextmanager
def stderr_to_debug_log() -> Iterator[None]:
    """Divert ``sys.stderr`` to our debug log for the block: on failure torch.export prints the
    partial FX graph and the TorchScript exporter its IR graph (dozens of lines) to stderr itself,
    while ConversionError reports the reason.
    """
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        if buffer.getvalue().strip():
            logger.debug("torch.onnx.export wrote to stderr:\n%s", buffer.getvalue())


@contextlib.contextmanager
def quiet_logger(*names: str) -> Iterator[None]:
    """Raise the loggers' levels above CRITICAL for the duration of the block, then restore them."""
    targets = [logging.getLogger(name) for name in names]
    before = [target.level for target in targets]
    for target in targets:
        target.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for target, level in zip(targets, before, strict=True):
            target.setLevel(level)


def export_torchscript(
    torch: Any,
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: list[str],
    dims: dict[str, dict[int, str]],
    opset: int | None,
) -> onnx.ModelProto:
    """Export ``module`` with the TorchScript exporter; refuse a trace that is not faithful.

    Raises:
        UnfaithfulTrace: the tracer converted a tensor to a Python value (a branch, a loop, a
            number) at least once; names every source line.
        Exception: whatever the exporter raised.
    """
    buffer = io.BytesIO()
    with (
        warnings.catch_warnings(record=True) as caught,
        quiet_logger(*TORCH_LOGGERS),
        stderr_to_debug_log(),
    ):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("always", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            buffer,
            kwargs=kwargs or None,
            dynamo=False,
            input_names=names,
            dynamic_axes={n: dict(a) for n, a in dims.items()},
            opset_version=opset if opset is not None else min(17, _common.max_runtime_opset()),
            do_constant_folding=True,
        )
    unfaithful = _unfaithful_places(torch, caught)
    if unfaithful:
        raise UnfaithfulTrace(unfaithful)
    for w in caught:  # other warnings (e.g. a constant torch.tensor in forward) are the user's to see
        if not issubclass(w.category, DeprecationWarning | FutureWarning):
            logger.warning("TorchScript exporter: %s:%s: %s", w.filename, w.lineno, w.message)
    model = onnx.load_from_string(buffer.getvalue())
    model.ClearField("doc_string")
    return model


def _unfaithful_places(torch: Any, caught: Sequence[warnings.WarningMessage]) -> list[str]:
    places: dict[tuple[str, int], str] = {}
    for w in caught:
        text = str(w.message)
        if issubclass(w.category, torch.jit.TracerWarning) and _UNFAITHFUL in text:
            what = text.split(_UNFAITHFUL)[0].strip()  # "Converting a tensor to a Python boolean"
            source = linecache.getline(w.filename, w.lineno).strip()
            where = f"{w.filename}:{w.lineno}" + (f": `{source}`" if source else "")
            places.setdefault((w.filename, w.lineno), f"{where} ({what[0].lower() + what[1:]})")
    return list(places.values())


def tie_traced_outputs(model: onnx.ModelProto, label: str) -> None:
    """Give TorchScript's unlinked output dim 0 (``Tile32_dim_0``) the inputs' batch symbol — if it is one.

    TorchScript loses the link between input and output dims through some ops, and the same kind of
    name also marks a data-dependent size (``nonzero``). So the model is run at two batch sizes, and
    an output's dim 0 becomes the batch symbol only if it equals the batch size both times.
    """
    inits = {i.name for i in model.graph.initializer}
    inputs = [_common.value_dims(v) for v in model.graph.input if v.name not in inits]
    symbols = {d[0] for d in inputs if d and isinstance(d[0], str)}
    if len(symbols) != 1 or any(d and d[0] is None for d in inputs):
        return
    (symbol,) = symbols
    unlinked = {
        v.name: i
        for i, v in enumerate(model.graph.output)
        if (dims := _common.value_dims(v)) and not isinstance(dims[0], int) and dims[0] != symbol
    }
    if not unlinked:
        return
    try:
        import onnxruntime as ort

        from onnxstitch.runtime.verification import random_feeds

        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        firsts = {b: [o.shape[0] for o in session.run(None, random_feeds(model, b))] for b in (2, 5)}
    except Exception as exc:  # the check is best effort: the symbols stay as exported
        logger.warning("%s: could not run the traced model to link output dims: %s", label, exc)
        return
    for name, i in unlinked.items():
        if all(firsts[b][i] == b for b in firsts):
            _set_dim0(model, name, symbol)
        else:
            logger.info("%s: output %r dim 0 does not follow the batch; left as exported", label, name)


def _set_dim0(model: onnx.ModelProto, name: str, symbol: str) -> None:
    for v in model.graph.output:
        if v.name == name:
            dim = v.type.tensor_type.shape.dim[0]
            old = dim.dim_param
            dim.ClearField("dim_value")
            dim.dim_param = symbol
            if old:
                _common.rename_dims(model, {old: symbol})
