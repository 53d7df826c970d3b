"""Graph rewrites before quantization that let onnxruntime keep more of a part in int8.

Keras' ``GlobalAveragePooling2D`` reaches ONNX (tf2onnx) as ``Transpose(NCHW→NHWC)`` followed by
``ReduceMean`` over the spatial axes. onnxruntime has no int8 ReduceMean, so the quantized backbone
ends in DequantizeLinear → float ReduceMean; it has an int8 global average pool
(``com.microsoft.QLinearGlobalAveragePool``, NHWC-aware). The rewrite says the same thing as
``GlobalAveragePool`` → ``Flatten``, which ``quantize_static`` quantizes and onnxruntime fuses.
Measured in ``scripts/bench/bench_quantize.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

__all__ = ["global_pools"]

_TO_NHWC = [0, 2, 3, 1]


def _axes(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> list[int] | None:
    """The constant ``axes`` of a ReduceMean (an attribute before opset 18, an input since)."""
    for attribute in node.attribute:
        if attribute.name == "axes":
            return sorted(int(a) for a in attribute.ints)
    if len(node.input) > 1 and node.input[1] in initializers:
        return sorted(int(a) for a in numpy_helper.to_array(initializers[node.input[1]]).ravel())
    return None


def _int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def global_pools(
    model: onnx.ModelProto, parts: set[str], part_of: list[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """``Transpose(perm=[0,2,3,1])`` → ``ReduceMean(axes=[1,2], keepdims=0)`` as ``GlobalAveragePool``
    → ``Flatten`` where the ReduceMean belongs to one of ``parts`` and is the Transpose's only reader.

    Args:
        model: the working copy (unique node names); not modified.
        parts: the parts to rewrite in (those quantized static int8).
        part_of: the part of each node of ``model``, in graph order.

    Returns:
        The rewritten copy (``model`` itself when nothing matched) and the names of the ReduceMean
        nodes rewritten. The Flatten keeps the ReduceMean's name and output, the pool is named
        ``<name>/GlobalAveragePool``; both keep the ReduceMean's metadata (its part).
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for name in (o.name for o in graph.output):
        readers[name] = readers.get(name, 0) + 1
    producer = {out: node for node in graph.node for out in node.output}
    dropped: set[str] = set()
    replaced: dict[str, list[onnx.NodeProto]] = {}
    gone: set[str] = set()
    for node, part in zip(graph.node, part_of, strict=True):
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or part not in parts:
            continue
        transpose = producer.get(node.input[0])
        if (
            transpose is None
            or transpose.op_type != "Transpose"
            or readers.get(node.input[0], 0) != 1
            or _int_attribute(node, "keepdims", 1) != 0
            or _axes(node, initializers) not in ([1, 2], [-3, -2])
        ):
            continue
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        if perm != _TO_NHWC:
            continue
        pooled = f"{node.output[0]}/GlobalAveragePool"
        pool = helper.make_node(
            "GlobalAveragePool", [transpose.input[0]], [pooled], name=f"{node.name}/GlobalAveragePool"
        )
        flatten = helper.make_node("Flatten", [pooled], [node.output[0]], name=node.name, axis=1)
        for new in (pool, flatten):
            new.metadata_props.extend(node.metadata_props)
        dropped.add(transpose.name)
        gone.add(transpose.output[0])
        if len(node.input) > 1 and readers.get(node.input[1], 0) == 1:
            gone.add(node.input[1])  # the axes, read by this ReduceMean only
        replaced[node.name] = [pool, flatten]
    if not replaced:
        return model, []
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = [n for node in graph.node if node.name not in dropped for n in replaced.get(node.name, [node])]
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    for field in (copy.graph.value_info, copy.graph.initializer):
        kept = [x for x in field if x.name not in gone]
        del field[:]
        field.extend(kept)
    return copy, list(replaced)
