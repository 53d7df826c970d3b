"""Tensor layouts: their names at ranks 3, 4 and 5, the permutations between them, and the evidence.

A layout says where the channels of a rank-3/4/5 tensor are: last (``NLC``, ``NHWC``, ``NDHWC``,
Keras's default) or right after the batch (``NCL``, ``NCHW``, ``NCDHW``, torch's and ONNX's).

It is a fact only where an op with a data format reads or writes the tensor (DESIGN.md): a
convolution, a pooling, a normalization over the channel axis, depth-to-space... ONNX defines all
of these channels-first, so :func:`detect` reads the evidence off any ONNX graph, whatever made it: a
graph input that reaches such an op's data input, or a graph output that such an op's output
reaches, through ops that move no axis (elementwise ops, padding, slicing, concatenation) and
through the ``Transpose`` / ``Unsqueeze`` / ``Squeeze`` that exporters put around them (tf2onnx
wraps every Keras conv in ``Transpose(0, 3, 1, 2)`` … ``Transpose(0, 2, 3, 1)``; a Keras ``Conv1D``
becomes ``Unsqueeze`` → ``Transpose`` → ``Conv`` → ``Squeeze`` → ``Transpose``). The axes are followed
one by one, so an input is channels-first when the op's channel axis is its axis 1, channels-last
when it is its last axis, and nothing at all otherwise. A tensor that reaches a ``MatMul`` (a Dense
layer, attention), a ``Reshape`` or anything else first records nothing; evidence that disagrees
(one conv reads it channels-first, another channels-last) records nothing either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import onnx
import onnx.numpy_helper

from onnxstitch import _meta

log = logging.getLogger(__name__)

#: rank -> (channels-last, channels-first)
BY_RANK: dict[int, tuple[str, str]] = {3: ("NLC", "NCL"), 4: ("NHWC", "NCHW"), 5: ("NDHWC", "NCDHW")}
LAYOUTS: tuple[str, ...] = _meta.LAYOUTS

# ONNX ops with a data format: their data input (input 0) and output 0 are channels-first.
DATA_FORMAT_OPS = frozenset(
    {
        "AveragePool",
        "BatchNormalization",
        "Conv",
        "ConvInteger",
        "ConvTranspose",
        "DeformConv",
        "DepthToSpace",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "GroupNormalization",
        "InstanceNormalization",
        "LpPool",
        "LRN",
        "MaxPool",
        "MaxUnpool",
        "QLinearConv",
        "SpaceToDepth",
    }
)
# ops that move no axis of their (first) data input: the axes of the output are the input's
AXIS_KEEPING_OPS = frozenset(
    {
        "Abs",
        "Add",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Elu",
        "Erf",
        "Exp",
        "Floor",
        "Gelu",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "LeakyRelu",
        "Log",
        "Max",
        "Min",
        "Mish",
        "Mul",
        "Neg",
        "Pad",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "Reciprocal",
        "Relu",
        "Round",
        "Selu",
        "Sigmoid",
        "Sign",
        "Slice",
        "Softplus",
        "Softsign",
        "Split",
        "Sqrt",
        "Sub",
        "Sum",
        "Tanh",
        "ThresholdedRelu",
        "Where",
    }
)
_MAX_STEPS = 64  # nodes followed from one graph input/output before giving up

AxisMap = tuple[int | None, ...]  # for each axis of the tensor reached: the graph tensor's axis (or None)


# ------------------------------------------------------------------------------------- names
def rank_of(layout: str) -> int:
    """The rank a layout describes (``"NHWC"`` -> 4).

    Raises:
        ValueError: not a layout name.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    return len(layout)


def channels_first(layout: str) -> bool:
    """``True`` for NCL/NCHW/NCDHW, ``False`` for NLC/NHWC/NDHWC."""
    return layout[1] == "C"


def other(layout: str) -> str:
    """The same rank with the channels moved: ``"NHWC"`` <-> ``"NCHW"``."""
    last, first = BY_RANK[rank_of(layout)]
    return first if layout == last else last


def perm(src: str, dst: str) -> tuple[int, ...]:
    """The ``Transpose`` perm that turns a ``src`` tensor into a ``dst`` one (identity when equal).

    Raises:
        ValueError: not layout names, or layouts of different ranks.
    """
    rank = rank_of(src)
    if rank_of(dst) != rank:
        raise ValueError(f"layouts {src} and {dst} describe different ranks")
    if src == dst:
        return tuple(range(rank))
    if channels_first(dst):  # channels-last -> channels-first: (0, r-1, 1, ..., r-2)
        return (0, rank - 1, *range(1, rank - 1))
    return (0, *range(2, rank), 1)  # channels-first -> channels-last


def for_rank(rank: int) -> tuple[str, ...]:
    """The layout names of a rank (empty below 3 and above 5)."""
    return BY_RANK.get(rank, ())


def check(layout: object, rank: int | None, *, what: str) -> str | None:
    """A problem with declaring ``layout`` on a tensor of ``rank`` (``None``: rank unknown), or ``None``."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        return f"{what}: layout {layout!r} is not one of {', '.join(LAYOUTS)}"
    if rank is not None and rank != len(layout):
        valid = ", ".join(for_rank(rank)) or "none: layouts describe ranks 3, 4 and 5"
        return f"{what}: {layout} describes rank-{len(layout)} tensors, this one has rank {rank} ({valid})"
    return None


# ---------------------------------------------------------------------------------- evidence
def detect(model: onnx.ModelProto) -> dict[str, str]:
    """The layouts of the graph inputs/outputs of rank 3-5 that the graph gives evidence for.

    See the module docstring for what counts as evidence. ``model`` is only read.
    """
    return resolve([evidence(model)])


def evidence(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Every layout each graph input/output of rank 3-5 is read or written in (empty sets left out)."""
    graph = _Graph(model)
    found: dict[str, set[str]] = {}
    for value in model.graph.input:
        if value.name not in graph.constants:
            found[value.name] = graph.forward(value.name, _rank(value))
    for value in model.graph.output:
        found.setdefault(value.name, set()).update(graph.backward(value.name, _rank(value)))
    return {name: layouts for name, layouts in found.items() if layouts}


def resolve(sources: Iterable[Mapping[str, Iterable[str]]]) -> dict[str, str]:
    """One layout per tensor from several sources of evidence; a tensor they disagree on gets none."""
    seen: dict[str, set[str]] = {}
    for source in sources:
        for name, layouts in source.items():
            seen.setdefault(name, set()).update(layouts)
    out: dict[str, str] = {}
    for name, layouts in seen.items():
        if len(layouts) == 1:
            out[name] = next(iter(layouts))
        elif layouts:
            log.warning("tensor %r is read as %s: no layout recorded", name, " and ".join(sorted(layouts)))
    return out


def _rank(value: onnx.ValueInfoProto) -> int:
    if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.HasField("shape"):
        return 0
    return len(value.type.tensor_type.shape.dim)


def classify(axes: AxisMap, rank: int) -> str | None:
    """The layout of a rank-``rank`` tensor whose axes sit at ``axes`` in a channels-first op frame.

    ``axes[i]`` is the tensor's axis that becomes the op's axis ``i`` (``None``: an axis of size 1
    the exporter inserted). ``None`` when every axis of the tensor is not accounted for in order.
    """
    if rank not in BY_RANK or len(axes) < 3 or axes[0] != 0 or axes[1] is None:
        return None
    channel = axes[1]
    spatial = [a for a in axes[2:] if a is not None]
    if sorted([0, channel, *spatial]) != list(range(rank)) or spatial != sorted(spatial):
        return None
    last, first = BY_RANK[rank]
    if channel == 1:
        return first
    return last if channel == rank - 1 else None


class _Graph:
    """Producers, consumers and constants of one graph, for following axes through it."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.constants: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producer[name] = node
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = attr.t

    def _axes(self, node: onnx.NodeProto) -> list[int] | None:
        """The ``axes`` of a Squeeze/Unsqueeze (attribute before opset 13, constant input after)."""
        for attr in node.attribute:
            if attr.name == "axes":
                return list(attr.ints)
        if len(node.input) > 1 and node.input[1] in self.constants:
            return [int(v) for v in onnx.numpy_helper.to_array(self.constants[node.input[1]]).ravel()]
        return None

    def forward(self, name: str, rank: int) -> set[str]:
        """Follow a graph input's axes down to the data-format ops it feeds."""
        return self._walk(name, rank, backward=False)

    def backward(self, name: str, rank: int) -> set[str]:
        """Follow a graph output's axes up to the data-format ops that produce it."""
        return self._walk(name, rank, backward=True)

    def _walk(self, name: str, rank: int, *, backward: bool) -> set[str]:
        found: set[str] = set()
        if rank not in BY_RANK:
            return found
        todo: list[tuple[str, AxisMap]] = [(name, tuple(range(rank)))]
        seen: set[tuple[str, AxisMap]] = set()
        while todo and len(seen) < _MAX_STEPS:
            tensor, axes = todo.pop()
            if (tensor, axes) in seen:
                continue
            seen.add((tensor, axes))
            if backward:
                nodes = [self.producer[tensor]] if tensor in self.producer else []
            else:
                nodes = self.consumers.get(tensor, [])
            for node in nodes:
                if node.domain not in ("", "ai.onnx"):
                    continue
                if node.op_type in DATA_FORMAT_OPS:
                    end = node.output[0] if backward else node.input[0]
                    layout = classify(axes, rank) if end == tensor else None
                    found.update([layout] if layout else [])
                    continue
                moved = self._moved(node, axes, backward=backward)
                if moved is None:
                    continue
                if not backward:
                    todo.extend((out, moved) for out in node.output if out)
                    continue
                data = node.input[:1] if node.op_type in ("Pad", "Slice", "Split", "Clip") else node.input
                todo.extend((i, moved) for i in data if i and i not in self.constants)
        return found

    def _moved(self, node: onnx.NodeProto, axes: AxisMap, *, backward: bool) -> AxisMap | None:
        """The axis map past ``node``: forward, from its input to its output; backward, the other
        way (``axes`` then maps the node output's axes to the graph output's). ``None``: lost."""
        op = node.op_type
        if op in AXIS_KEEPING_OPS:
            return axes
        if op == "Transpose":
            order = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if order is None or sorted(order) != list(range(len(axes))):
                return None
            if backward:  # the inverse permutation
                order = [order.index(i) for i in range(len(order))]
            return tuple(axes[p] for p in order)
        if op not in ("Unsqueeze", "Squeeze"):
            return None
        given = self._axes(node)
        if given is None:
            return None
        if (op == "Unsqueeze") != backward:  # size-1 axes appear at ``given``
            out_rank = len(axes) + len(given)
            where = {a % out_rank for a in given}
            rest = iter(axes)
            return tuple(None if i in where else next(rest) for i in range(out_rank))
        where = {a % len(axes) for a in given}
        if any(axes[i] is not None for i in where):
            return None  # an axis of the graph tensor would disappear
        return tuple(a for i, a in enumerate(axes) if i not in where)
