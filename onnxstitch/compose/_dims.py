"""Symbolic dims through the parts of a merge, and the proven batch dim.

The seams tie a producer's output dims to a consumer's input dims (``_seams.DimUnifier``). This
module adds what happens *inside* each part: symbolic shape inference on the part (every unnamed
dynamic input dim given a fresh symbol, the outputs' declared shapes and value_info cleared) shows
which output dims are input dims; those pairs join one class. So a sequence symbol ``seq`` that
enters a Keras head as ``hidden_dim1`` leaves it as ``seq`` too, and the anonymous ``[?, 20]`` of a
scikit-learn-like part is the same dim as its ``[?, 16]`` output.

A merged input's dynamic dim 0 that reaches a merged output's dim 0 is the batch (DESIGN.md): when
no part names that class, it is named ``batch``.

Functions (they update the ``DimUnifier`` in place; models are read, never changed):
    ``link_through_part(dims, key, model, weights=())``  join each output dim of part ``key`` with
        the input dim shape inference says it is.
    ``name_proven_batch(dims, plan, input_dim0, output_dim0)``  name an unnamed class that holds a
        merged input's dim 0 and a merged output's dim 0 ``batch``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import onnx
import onnx.helper

from onnxstitch.compose._seams import DimUnifier, TensorType, dim_node
from onnxstitch.compose._weights import weightless

__all__ = ["BATCH", "interface_dim0", "link_through_part", "name_proven_batch"]

log = logging.getLogger(__name__)

BATCH = "batch"
_FRESH = "__onnxstitch_dim_{}"
#: initializers up to this many bytes stay in the inference skeleton (shape constants need values)
_SMALL_BYTES = 512

Node = tuple[str, ...]


def link_through_part(
    dims: DimUnifier, key: str, model: onnx.ModelProto, weights: Iterable[onnx.TensorProto] = ()
) -> int:
    """Join each dynamic output dim of part ``key`` with the input dim it provably is.

    Args:
        dims: the merge's unifier (updated in place).
        key: the part key.
        model: the part's model (read only); its big initializers may be left out and given in
            ``weights`` (only their dtype and dims are read).
        weights: initializers kept out of ``model``.

    Returns:
        How many output dims were joined to an input dim.
    """
    if _nothing_to_link(model):
        return 0
    skeleton, symbols = _skeleton(key, model, weights)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference is evidence, not a requirement
        log.info("part %r: no shape inference (%s); its symbols stop at its outputs", key, exc)
        return 0
    found = {vi.name: vi for vi in inferred.graph.output}
    joined = 0
    for out in model.graph.output:
        declared = _dims_of(out)
        got = _dims_of(found[out.name]) if out.name in found else None
        if declared is None or got is None or len(got) != len(declared):
            continue
        for axis, (mine, inner) in enumerate(zip(declared, got, strict=True)):
            if isinstance(mine, int) or not isinstance(inner, str) or inner not in symbols:
                continue
            node = dim_node(key, "out", out.name, axis, mine)
            if (
                node is not None
                and dims.find(node) != dims.find(symbols[inner])
                and dims.union(symbols[inner], node) is None
            ):
                joined += 1
    if joined:
        log.debug("part %r: %d output dim(s) follow its input dims", key, joined)
    return joined


def name_proven_batch(
    dims: DimUnifier, input_dim0: Sequence[Node], output_dim0: Sequence[Node], *, name: str = BATCH
) -> bool:
    """Name ``batch`` the unnamed class that holds a merged input's dim 0 and a merged output's dim 0.

    Args:
        dims: the merge's unifier, its classes already named (updated in place).
        input_dim0: the dim-0 nodes of the merged inputs (dynamic ones only).
        output_dim0: the dim-0 nodes of the merged outputs (dynamic ones only).
        name: the batch symbol.

    Returns:
        Whether a class was named (never when ``name`` is taken, nor for a named or bound class).
    """
    if name in dims.names.values():
        return False
    outputs = {dims.find(n) for n in output_dim0}
    for node in input_dim0:
        root = dims.find(node)
        if root in outputs and root not in dims.names and root not in dims.value:
            dims.names[root] = name
            log.info("the unnamed dim 0 of the merged input reaches the outputs' dim 0: named %r", name)
            return True
    return False


def interface_dim0(
    models: Mapping[str, onnx.ModelProto], ends: Iterable[tuple[str, str]], where: str
) -> list[Node]:
    """Union-find nodes of dim 0 of the given part inputs (``where="in"``) or outputs (``"out"``)."""
    nodes: list[Node] = []
    for key, tensor in ends:
        graph = models[key].graph
        values = graph.input if where == "in" else graph.output
        vi = next((v for v in values if v.name == tensor), None)
        shape = _dims_of(vi) if vi is not None else None
        if shape:
            node = dim_node(key, where, tensor, 0, shape[0])
            if node is not None:
                nodes.append(node)
    return nodes


# -- internals --------------------------------------------------------------------------------------
def _nothing_to_link(model: onnx.ModelProto) -> bool:
    """True when every output dim is static or a symbol the part's inputs carry too: a part symbol is
    one union-find node already, so inference could join nothing (and costs ~0.3 ms per part)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs: set[str] = set()
    for vi in model.graph.input:
        if vi.name not in initializers:
            inputs.update(d for d in _dims_of(vi) or () if isinstance(d, str))
    for vi in model.graph.output:
        dims = _dims_of(vi)
        if dims is None or any(d is None or (isinstance(d, str) and d not in inputs) for d in dims):
            return False
    return True


def _dims_of(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    dims = TensorType.of(vi).dims
    return None if dims is None else [d or None if isinstance(d, str) else d for d in dims]


def _skeleton(
    key: str, model: onnx.ModelProto, weights: Iterable[onnx.TensorProto]
) -> tuple[onnx.ModelProto, dict[str, Node]]:
    """A weight-less copy to infer on, its input symbols fresh; ``{fresh symbol: union-find node}``.

    compose's one skeleton builder (``weightless``: big initializers become typed inputs, no data
    copied), then: every dynamic input dim gets a fresh symbol (a named one: one per part symbol, so
    two inputs that share ``batch`` still share it), and the outputs' shapes and the value_info are
    cleared, so that inference says what the outputs' dims are.
    """
    weights = list(weights)
    skeleton = weightless(model, inline_limit=_SMALL_BYTES, weights=weights)
    graph = skeleton.graph
    del graph.value_info[:]
    for vi in graph.output:
        if vi.type.WhichOneof("value") == "tensor_type":
            vi.type.tensor_type.ClearField("shape")
    inits = {t.name for t in model.graph.initializer} | {t.name for t in weights}
    symbols: dict[str, Node] = {}
    fresh: dict[Node, str] = {}
    for vi in graph.input:
        if vi.name in inits or vi.type.WhichOneof("value") != "tensor_type":
            continue
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.WhichOneof("value") == "dim_value":
                continue
            node = ("sym", key, d.dim_param) if d.dim_param else ("anon", key, "in", vi.name, str(axis))
            symbol = fresh.setdefault(node, _FRESH.format(len(fresh)))
            d.dim_param = symbol
            symbols[symbol] = node
    return skeleton, symbols
