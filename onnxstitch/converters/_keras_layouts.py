"""Layout evidence from a Keras model's layers (``data_format``, a BatchNormalization's ``axis``).

The converted ONNX graph carries most of the evidence by itself (``onnxstitch._layouts.detect``):
tf2onnx keeps convolutions and max/average pooling as ONNX ``Conv``/``MaxPool``/``AveragePool``
between transposes. Some Keras layers with a data format do not survive as such an op: a
``BatchNormalization`` becomes ``Mul``/``Add``, a global pooling ``ReduceMean``, ``UpSampling2D``
``Tile``/``Reshape``. For those, the layer itself is the evidence: a model input that such a layer
reads (directly, or through layers that move no axis: activations, dropout, noise), and a model
output that such a layer writes.

``keras.config.image_data_format()`` alone is never evidence; a layer without ``data_format`` (Dense,
attention, Permute, Reshape...) gives none. Keras is not imported here: the model's own objects are
read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onnxstitch import _layouts

# Keras layers that move no axis: a data-format layer behind them still reads the model input
_AXIS_KEEPING = frozenset(
    {
        "Activation",
        "ActivityRegularization",
        "AlphaDropout",
        "Dropout",
        "ELU",
        "GaussianDropout",
        "GaussianNoise",
        "LeakyReLU",
        "PReLU",
        "ReLU",
        "Softmax",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
    }
)
_FORMATS = {"channels_last": False, "channels_first": True}


def layer_layouts(model: Any, input_names: Sequence[str], output_names: Sequence[str]) -> dict[str, set[str]]:
    """``{name: layouts}``: how data-format layers read/write the inputs/outputs (several: a conflict).

    ``input_names``/``output_names`` name ``model.inputs``/``model.outputs`` in order (as the
    converted model does); a model without a layer graph (subclassed) gives ``{}``.
    """
    inputs, outputs = list(getattr(model, "inputs", None) or []), list(getattr(model, "outputs", None) or [])
    if not inputs or len(inputs) != len(input_names) or len(outputs) != len(output_names):
        return {}
    consumers: dict[int, list[tuple[Any, Any]]] = {}
    try:
        layers = list(model._flatten_layers(include_self=False, recursive=False))
    except (AttributeError, TypeError):
        layers = list(getattr(model, "layers", []))
    for layer in layers:
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in getattr(node, "input_tensors", []):
                consumers.setdefault(id(tensor), []).append((layer, node))
    found: dict[str, set[str]] = {}
    for name, tensor in zip(input_names, inputs, strict=True):
        found[name] = _reads(tensor, consumers)
    for name, tensor in zip(output_names, outputs, strict=True):
        found.setdefault(name, set()).update(_writes(tensor))
    return {name: layouts for name, layouts in found.items() if layouts}


def _rank(tensor: Any) -> int:
    shape = getattr(tensor, "shape", None)
    return len(shape) if shape is not None else 0


def layout_of(layer: Any, rank: int) -> str | None:
    """The layout a layer reads and writes a rank-``rank`` tensor in, if it has a data format."""
    names = _layouts.for_rank(rank)
    if not names:
        return None
    fmt = getattr(layer, "data_format", None)
    if fmt in _FORMATS:
        return names[1] if _FORMATS[fmt] else names[0]
    if type(layer).__name__ in ("BatchNormalization", "GroupNormalization"):
        axis = getattr(layer, "axis", None)
        axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
        if isinstance(axis, int):
            axis %= rank
            return names[1] if axis == 1 else names[0] if axis == rank - 1 else None
    return None


def _reads(tensor: Any, consumers: dict[int, list[tuple[Any, Any]]]) -> set[str]:
    rank = _rank(tensor)
    found: set[str] = set()
    todo, seen = [tensor], set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for layer, node in consumers.get(id(current), []):
            layout = layout_of(layer, rank)
            if layout is not None:
                found.add(layout)
            elif type(layer).__name__ in _AXIS_KEEPING:
                todo.extend(getattr(node, "output_tensors", []))
    return found


def _writes(tensor: Any) -> set[str]:
    rank = _rank(tensor)
    found: set[str] = set()
    current, steps = tensor, 0
    while current is not None and steps < 32:
        steps += 1
        history = getattr(current, "_keras_history", None)
        layer = getattr(history, "operation", None)
        if history is None or layer is None:
            break
        layout = layout_of(layer, rank)
        if layout is not None:
            found.add(layout)
            break
        if type(layer).__name__ not in _AXIS_KEEPING:
            break
        node = layer._inbound_nodes[history.node_index]
        inputs = list(getattr(node, "input_tensors", []))
        current = inputs[0] if len(inputs) == 1 else None
    return found
