"""Walking an ONNX graph and its subgraphs (If/Loop/Scan bodies): shared by every layer."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def walk_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Yield ``graph`` and every subgraph nested in its nodes' attributes, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from walk_graphs(attr.g)
            for sub in attr.graphs:
                yield from walk_graphs(sub)


def tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name used anywhere in ``model`` (inputs, outputs, value_info, initializers, nodes)."""
    names: set[str] = set()
    for g in walk_graphs(model.graph):
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
        for seq in (g.input, g.output, g.value_info, g.initializer):
            names.update(item.name for item in seq)
    names.discard("")
    return names
