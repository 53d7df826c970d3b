"""Which nodes belong to which part, which parts to convert, and the precision a model records.

A merged model's nodes carry ``onnxstitch.part`` (see :mod:`onnxstitch._meta`); a model that was not
merged is one part, :data:`WHOLE`. onnxruntime's quantizers select nodes by name, so a working copy
gets a unique name on every node first (the caller's model is never touched), and after conversion
the new nodes (QuantizeLinear, QLinearConv, Cast …) get the part of the node they serve.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx

from onnxstitch import _meta
from onnxstitch.errors import SpecError

__all__ = [
    "PRECISION",
    "WHOLE",
    "choose",
    "named_copy",
    "node_parts",
    "part_precisions",
    "read_precision",
    "restore_provenance",
    "write_precision",
]

#: model-level metadata key: JSON ``{"parts": {part: precision}, "settings": …, "gate": …}``
PRECISION = _meta.PRECISION
#: the one part of a model that was not merged
WHOLE = "model"

#: onnxruntime's static int8 kernels that pay on CPU (VNNI): convolutions and matrix products
_STATIC_OPS = frozenset({"Conv", "ConvTranspose"})
_MATMUL_OPS = frozenset({"MatMul", "Gemm"})
#: a part of matrix products only is quantized (dynamically) from this many weight elements on:
#: below it the quantize/dequantize work costs more than the int8 products save (a small MLP head)
DYNAMIC_MIN_WEIGHTS = 262_144


def node_parts(model: onnx.ModelProto) -> list[str]:
    """The part of each top-level node, in graph order (:data:`WHOLE` where none is recorded)."""
    return [_meta.get_part(n) or WHOLE for n in model.graph.node]


def named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every node has a unique name (kept where it already had one)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen: set[str] = set()
    for i, node in enumerate(copy.graph.node):
        if not node.name or node.name in seen:
            base = f"{_meta.get_part(node) or WHOLE}/{node.op_type}_{i}"
            name, k = base, 0
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            node.name = name
        seen.add(node.name)
    return copy


def _weights(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}


def _default(model: onnx.ModelProto, part: str, nodes: list[onnx.NodeProto], sizes: dict[str, int]) -> str:
    ops = {n.op_type for n in nodes}
    if ops & _STATIC_OPS:
        return "int8"
    matmul_weights = sum(sizes.get(i, 0) for n in nodes if n.op_type in _MATMUL_OPS for i in n.input)
    if matmul_weights >= DYNAMIC_MIN_WEIGHTS:
        return "int8-dynamic"
    return "fp32"


def choose(
    model: onnx.ModelProto,
    parts: Mapping[str, str] | Iterable[str] | str | None,
    *,
    allowed: tuple[str, ...],
    converted: str,
) -> dict[str, str]:
    """``{part: precision}`` for every part of ``model``.

    ``parts`` is a dict ``{part: precision}`` (parts left out stay ``"fp32"``), a part name or a list
    of them (each gets ``converted``), or ``None``: for int8 the rule of what pays (a part with a
    convolution: static int8; a part of matrix products only with at least
    :data:`DYNAMIC_MIN_WEIGHTS` weight elements: dynamic int8; anything else: fp32); otherwise every
    part gets ``converted``.

    Raises:
        SpecError: an unknown part or precision (the valid ones are listed).
    """
    order = list(dict.fromkeys(node_parts(model)))
    if parts is None:
        if converted != "int8":
            return dict.fromkeys(order, converted)
        sizes = _weights(model)
        by_part: dict[str, list[onnx.NodeProto]] = {p: [] for p in order}
        for node, part in zip(model.graph.node, node_parts(model), strict=True):
            by_part[part].append(node)
        return {p: _default(model, p, by_part[p], sizes) for p in order}
    if isinstance(parts, str):
        wanted: dict[str, str] = {parts: converted}
    elif isinstance(parts, Mapping):
        wanted = {str(k): str(v) for k, v in parts.items()}
    else:
        wanted = dict.fromkeys((str(p) for p in parts), converted)
    unknown = [p for p in wanted if p not in order]
    if unknown:
        raise SpecError(
            f"unknown part(s) {unknown}: the model's parts are {order}",
            hint="name parts as ox.chain/ox.merge keyed them (onnxstitch inspect lists them)",
        )
    bad = {p: v for p, v in wanted.items() if v not in allowed}
    if bad:
        raise SpecError(f"unknown precision(s) {bad}", hint=f"use one of {list(allowed)}")
    return {p: wanted.get(p, "fp32") for p in order}


def restore_provenance(result: onnx.ModelProto, original: onnx.ModelProto, choice: Mapping[str, str]) -> None:
    """Give every node of ``result`` (ours, edited in place) the part of the node it came from.

    A node that kept its name keeps its part. A node the converter added (QuantizeLinear,
    DequantizeLinear, Cast …) takes the part of a neighbour: one that was converted (``choice``)
    before one left in float32, a producer of its inputs before a reader of its outputs; so the
    Quantize/Dequantize pair at a seam belongs to the quantized part. The model-level metadata of
    ``original`` is copied over.
    """
    by_name = {n.name: part for n, part in zip(original.graph.node, node_parts(original), strict=True)}
    merged = bool(_meta.get_parts(original)) or any(_meta.get_part(n) for n in original.graph.node)
    nodes = list(result.graph.node)
    part_of = {i: by_name[n.name] for i, n in enumerate(nodes) if n.name in by_name}
    producers = {out: i for i, n in enumerate(nodes) for out in n.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    for _ in range(len(nodes)):
        changed = False
        for i, node in enumerate(nodes):
            if i in part_of:
                continue
            near = [producers[x] for x in node.input if x in producers and producers[x] in part_of]
            near += [j for o in node.output for j in consumers.get(o, []) if j in part_of]
            if near:
                converted = [j for j in near if choice.get(part_of[j], "fp32") != "fp32"]
                part_of[i] = part_of[(converted or near)[0]]
                changed = True
        if not changed:
            break
    del result.metadata_props[:]
    result.metadata_props.extend(original.metadata_props)
    if not merged:
        return
    fallback = node_parts(original)[0]
    for i, node in enumerate(nodes):
        _meta.set_prop(node, _meta.PART, part_of.get(i, fallback))


def write_precision(model: onnx.ModelProto, record: Mapping[str, Any]) -> None:
    """Record ``{"parts": …, "settings": …, "gate": …}`` in ``model`` (ours, in place)."""
    _meta.set_prop(model, PRECISION, json.dumps(record, sort_keys=False, default=str))


def read_precision(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The precision record of a model written by ``quantize``/``to_fp16``, or ``None``."""
    raw = _meta.get_props(model).get(PRECISION)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def part_precisions(model: onnx.ModelProto) -> dict[str, str]:
    """``{part: precision}`` as recorded, else ``"fp32"`` for every part."""
    record = read_precision(model)
    recorded = record.get("parts", {}) if record else {}
    order = list(dict.fromkeys(node_parts(model)))
    return {p: str(recorded.get(p, "fp32")) for p in order}
