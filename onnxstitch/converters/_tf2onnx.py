"""Run tf2onnx on a :class:`~onnxstitch.converters._keras_sources.Traced` function.

``tf2onnx.convert.from_function`` falls short on ordinary Keras models; this route fixes each gap:

* **captures become constants**: ``from_function`` lists a function's captured tensors (a
  ``Normalization`` layer's mean and variance, EfficientNet's preprocessing) as graph *inputs*; here
  the graph's inputs are exactly the traced inputs (what ``convert.from_keras`` does too), the
  captures are frozen into constants, and the result is checked to have no other input;
* **lookup tables are carried**: tables are exported from the captured resources
  (``tf_loader.from_trackable``), so ``StringLookup`` / ``IntegerLookup`` become ``CategoryMapper``;
* **nested XLA functions are inlined**: Keras runs a grouped ``Conv2D`` in a nested
  ``tf.function(jit_compile=True)``, which TensorFlow marks ``_noinline``; those marks are dropped
  from the frozen graph and grappler inlines the call, leaving a plain grouped ``Conv``;
* **extra op handlers**: ``Erfc`` (Keras's exact ``gelu``) = ``1 - Erf``; the caller's own handlers
  are added;
* **quiet**: tf2onnx logs warnings and whole tracebacks on successful conversions (an optimizer pass
  it skips); the records of tf2onnx and TensorFlow logged by *this thread* during the conversion go
  to this module's debug log instead. Filters are added to those loggers for the conversion only and
  removed afterwards; other threads' records pass untouched.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx

from onnxstitch.converters._keras_sources import Traced, safe_in
from onnxstitch.errors import ConversionError, StitchError

__all__ = ["OpHandler", "run_tf2onnx"]

logger = logging.getLogger(__name__)

# tf2onnx's custom op handler: handler(ctx: tf2onnx Graph, node: tf2onnx Node, name: str, args: list)
OpHandler = Callable[..., Any]
_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
_NO_INLINE = ("_noinline", "_XlaMustCompile")
_QUIETED = ("tf2onnx", "tensorflow")


def run_tf2onnx(
    traced: Traced, opset: int, *, op_handlers: Mapping[str, OpHandler] | None = None
) -> onnx.ModelProto:
    """Convert ``traced.function`` with tf2onnx; the result's inputs are exactly ``in_000`` ...

    Raises:
        ConversionError: tf2onnx failed, or its graph has inputs beyond the traced ones.
    """
    import tensorflow as tf
    from tf2onnx import convert, tf_loader

    handlers: dict[str, tuple[OpHandler, list[Any]]] = {"Erfc": (_erfc, [])}
    handlers.update({op: (fn, []) for op, fn in (op_handlers or {}).items()})
    concrete = traced.function.get_concrete_function(*traced.specs)
    count = len(traced.specs)
    inputs = [t.name for t in concrete.inputs[:count]]
    if inputs != [f"{safe_in(i)}:0" for i in range(count)]:  # pragma: no cover - TF changed its order
        raise ConversionError(f"{traced.what}: unexpected traced inputs {inputs}")
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    try:
        with _quiet_logs(), tf.device("/cpu:0"):
            renames = convert.tensor_names_from_structed(concrete, inputs, outputs)
            frozen, tables = tf_loader.from_trackable(
                traced.trackable if traced.trackable is not None else traced.function,
                concrete,
                inputs,
                outputs,
                False,
            )
            frozen = _inline_no_inline_calls(frozen, inputs, outputs, tf=tf, tf_loader=tf_loader)
            proto, _ = convert._convert_common(
                frozen,
                name=traced.what,
                continue_on_error=True,
                opset=opset,
                custom_op_handlers=handlers,
                input_names=inputs,
                output_names=outputs,
                tensors_to_rename=renames,
                initialized_tables=tables,
            )
    except StitchError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"{traced.what}: tf2onnx failed: {type(exc).__name__}: {exc}",
            hint="try another opset, or simplify the model's unusual ops",
        ) from exc
    if not isinstance(proto, onnx.ModelProto):
        raise ConversionError(f"{traced.what}: tf2onnx returned no model")
    _check_inputs(proto, traced)
    shapes = {renames.get(t.name, t.name): t.shape for t in concrete.outputs if t.dtype != tf.resource}
    _fill_output_shapes(proto, shapes)
    return proto


def _fill_output_shapes(model: onnx.ModelProto, shapes: Mapping[str, Any]) -> None:
    """Give graph outputs tf2onnx left without a shape (e.g. ``CategoryMapper``) TensorFlow's shape."""
    for value in model.graph.output:
        tensor = value.type.tensor_type
        shape = shapes.get(value.name)
        if tensor.HasField("shape") or shape is None or shape.rank is None:
            continue
        tensor.shape.SetInParent()
        for dim in shape.as_list():
            entry = tensor.shape.dim.add()
            if dim is not None:
                entry.dim_value = int(dim)


def _check_inputs(model: onnx.ModelProto, traced: Traced) -> None:
    """The converted graph's inputs must be exactly the traced inputs (no leaked capture)."""
    inits = {i.name for i in model.graph.initializer}
    got = [v.name for v in model.graph.input if v.name not in inits]
    want = [safe_in(i) for i in range(len(traced.specs))]
    if got != want:
        extra = [n for n in got if n not in want]
        missing = [traced.input_names[want.index(n)] for n in want if n not in got]
        raise ConversionError(
            f"{traced.what}: the converted graph's inputs do not match the model's inputs "
            f"{traced.input_names}: extra graph inputs {extra} (tensors the model captures, which should "
            f"have been frozen into constants), missing {missing}",
            hint="report this model to onnxstitch; meanwhile pass the captured values as explicit model "
            "inputs or make them layer weights",
        )


def _inline_no_inline_calls(
    frozen: Any, inputs: list[str], outputs: list[str], *, tf: Any, tf_loader: Any
) -> Any:
    """Drop ``_noinline`` / ``_XlaMustCompile`` from the frozen graph and let grappler inline the calls."""
    calls = [n for n in frozen.node if n.op in _CALL_OPS]
    if not calls:
        return frozen
    for function in frozen.library.function:
        for key in _NO_INLINE:
            function.attr.pop(key, None)
    for node in calls:
        for key in _NO_INLINE:
            node.attr.pop(key, None)
    logger.debug("inlining %d nested function call(s): %s", len(calls), [n.name for n in calls])
    with tf.Graph().as_default():
        return tf_loader.tf_optimize(inputs, outputs, frozen)


def _erfc(ctx: Any, node: Any, name: str, args: list[Any]) -> None:
    """``Erfc(x)`` → ``1 - Erf(x)`` (tf2onnx 1.17 has no Erfc handler; Keras's exact gelu uses it)."""
    x = node.input[0]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ctx.get_dtype(x))
    erf = ctx.make_node("Erf", [x], op_name_scope=node.name)
    one = ctx.make_const(f"{node.name}/one", np.array(1, dtype=dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


class _ThreadCapture(logging.Filter):
    """Drop the records of one thread from a logger, re-logging them here at debug level."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        logger.debug("%s: %s", record.name, record.getMessage(), exc_info=record.exc_info)
        return False


def _quieted_names() -> set[str]:
    """Every logger tf2onnx and TensorFlow use: existing ones, one per imported module (tf2onnx gets
    some loggers inside functions, e.g. ``optimize_graph``'s) and one per tf2onnx optimizer class."""
    names = {n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _QUIETED}
    names.update(n for n in list(sys.modules) if n.split(".")[0] == "tf2onnx")
    optimizer = sys.modules.get("tf2onnx.optimizer")
    factories = getattr(optimizer, "_optimizers", {}) if optimizer is not None else {}
    names.update(f"tf2onnx.optimizer.{getattr(f, '__name__', '')}" for f in factories.values())
    return names | set(_QUIETED)


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """tf2onnx's and TensorFlow's log records of this thread → our debug log, for the block only."""
    capture = _ThreadCapture()
    loggers = [logging.getLogger(n) for n in _quieted_names()]
    for log in loggers:
        log.addFilter(capture)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(capture)
