"""A model's summary: what ``onnxstitch inspect`` prints and the demo's report uses.

:func:`describe` returns plain JSON-able data with stable keys (documented in ``docs/security.md``
next to ``inspect``, and pinned by ``tests/files``):

``file``
    ``{"path", "size_bytes", "external_data": [{"file", "size_bytes"}]}`` or ``None`` for an
    in-memory model.
``ir_version``, ``opsets``
    the IR version and ``{domain: version}`` (``""`` is written ``"ai.onnx"``).
``producer``
    ``{"name", "version"}``.
``source``
    the framework recorded in ``onnxstitch.source`` (``"torch"``, ``"keras"``, ``"merged"``...) or ``None``.
``inputs``, ``outputs``
    ``[{"name", "dtype", "shape", "layout"}]``; ``dtype`` a NumPy name (``"float32"``) or the ONNX
    type (``"sequence"``...), ``shape`` a list of ints (static), strings (symbolic) and ``None``
    (unknown), ``layout`` ``"NHWC"``/``"NCHW"`` (``"NLC"``/``"NCL"``, ``"NDHWC"``/``"NCDHW"`` at
    ranks 3 and 5) or ``None``.
``batching``
    ``{"dim", "reason"}``: the batch symbol a server may batch along (dim 0 of every input and
    output, e.g. ``"batch"``) or ``None``, and why (``deploy triton`` turns dynamic batching on
    exactly when ``dim`` is set).
``nodes``, ``op_types``
    the node count of the main graph and ``{op_type: count}`` (sorted by count, then name).
``parameters``, ``parameter_bytes``
    elements of the floating-point and int8/uint8 initializers (the weights, quantized ones too;
    int32/int64 shape and index constants are not parameters) and bytes of all initializers
    (subgraphs included).
``layouts``
    ``{tensor: layout}`` from ``onnxstitch.layout.<tensor>``.
``parts``
    for a merged model, one row per part in merge order: ``{"part", "nodes", "parameters",
    "op_types"}``; an initializer used by several parts is counted in a ``"(shared)"`` row and
    nodes without a part in ``"(unassigned)"``. Empty for a model that was not merged.
``precision``
    what ``ox.quantize``/``ox.to_fp16`` recorded (``onnxstitch.precision``): ``{"parts": {part:
    precision}, "gate": {"passed", "agreement", "min_agreement"}}`` (plus ``"speed"``, the converted
    model timed against float32 where it was converted, when recorded) with ``precision`` one of
    ``"int8"``, ``"int8-dynamic"``, ``"fp16"``, ``"fp32"`` (a model that was not merged is the one
    part ``"model"``), or ``None`` when nothing was recorded.
``metadata``
    the other ``metadata_props`` (not ``onnxstitch.*``).
``graph``
    the part-level picture: parts (framework, nodes, parameters, precision, opsets), seams (tensor,
    dtype, shape, layout), adapters (automatic or the user's), merged inputs and outputs, and the
    edges between them; see :mod:`onnxstitch.files.picture`. ``inspect --graph`` draws it.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from onnxstitch import _meta
from onnxstitch._batching import batching
from onnxstitch._graphs import walk_graphs
from onnxstitch.files.picture import part_graph

__all__ = ["SHARED", "UNASSIGNED", "describe", "describe_file"]

SHARED = "(shared)"
UNASSIGNED = "(unassigned)"


def _dtype_name(elem_type: int) -> str:
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type).name)
    except (KeyError, ValueError, TypeError):
        try:
            return str(onnx.TensorProto.DataType.Name(elem_type)).lower()
        except ValueError:
            return f"unknown({elem_type})"


def _value_info(vi: onnx.ValueInfoProto, layouts: dict[str, str]) -> dict[str, Any]:
    kind = vi.type.WhichOneof("value")
    if kind == "tensor_type":
        tensor = vi.type.tensor_type
        dtype = _dtype_name(tensor.elem_type)
        shape: list[int | str | None] | None = None
        if tensor.HasField("shape"):
            shape = []
            for dim in tensor.shape.dim:
                which = dim.WhichOneof("value")
                shape.append(dim.dim_value if which == "dim_value" else dim.dim_param if which else None)
    else:
        dtype, shape = (kind or "unknown").removesuffix("_type"), None
    return {"name": vi.name, "dtype": dtype, "shape": shape, "layout": layouts.get(vi.name)}


# what counts as a parameter: floating-point weights, not integer shape/index constants
# weights: floating-point tensors, and the int8/uint8 weights of a quantized model (index and shape
# constants are int64 or int32; a quantized bias, int32, is not counted)
_WEIGHT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE,
     onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
)  # fmt: skip


def _tensor_size(tensor: onnx.TensorProto) -> tuple[int, int]:
    """(parameters, bytes) of an initializer: elements if it holds weights (float, int8), else 0."""
    count = int(math.prod(tensor.dims))
    try:
        itemsize = int(helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    except (KeyError, ValueError, TypeError):
        itemsize = 0
    if tensor.data_type == onnx.TensorProto.STRING:
        itemsize = 0
    return (count if tensor.data_type in _WEIGHT_TYPES else 0), count * itemsize


def _node_inputs(node: onnx.NodeProto) -> Iterator[str]:
    """Names a node reads, including those its subgraphs read from the outer scope."""
    yield from node.input
    for attr in node.attribute:
        subs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for sub in subs:
            for inner in walk_graphs(sub):
                for n in inner.node:
                    yield from n.input


def _parts(model: onnx.ModelProto, sizes: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    order = _meta.get_parts(model)
    node_part = [_meta.get_part(n) for n in model.graph.node]
    if not order and not any(node_part):
        return []
    nodes: Counter[str] = Counter()
    ops: dict[str, Counter[str]] = defaultdict(Counter)
    users: dict[str, set[str]] = defaultdict(set)
    for node, part in zip(model.graph.node, node_part, strict=True):
        key = part or UNASSIGNED
        nodes[key] += 1
        ops[key][node.op_type] += 1
        for name in _node_inputs(node):
            if name in sizes:
                users[name].add(key)
    params: Counter[str] = Counter()
    for name, parts in users.items():
        params[next(iter(parts)) if len(parts) == 1 else SHARED] += sizes[name][0]
    keys = [
        *order,
        *sorted(k for k in set(nodes) | set(params) if k not in order and k not in (SHARED, UNASSIGNED)),
    ]
    keys += [k for k in (UNASSIGNED, SHARED) if k in nodes or k in params]
    return [
        {"part": k, "nodes": nodes[k], "parameters": params[k], "op_types": dict(ops[k].most_common())}
        for k in keys
    ]


def _precision(raw: str | None) -> dict[str, Any] | None:
    """The summary of an ``onnxstitch.precision`` record (``None`` if absent or unreadable)."""
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("parts"), dict):
        return None
    gate: dict[str, Any] = record["gate"] if isinstance(record.get("gate"), dict) else {}
    rows = [r for r in gate.get("rows", []) if isinstance(r, dict)]
    agreement = min((float(r.get("agreement", 0.0)) for r in rows), default=None)
    out: dict[str, Any] = {
        "parts": {str(k): str(v) for k, v in record["parts"].items()},
        "gate": {
            "passed": gate.get("passed"),
            "agreement": agreement,
            "min_agreement": gate.get("min_agreement"),
        },
    }
    if isinstance(record.get("speed"), dict):
        out["speed"] = dict(record["speed"])
    return out


def _sorted_counts(counter: Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def describe(
    model: onnx.ModelProto | str | os.PathLike[str], *, path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Summarize ``model`` (read only) as JSON-able data with the keys listed in the module doc.

    Args:
        model: the model (never modified), or the path of an ``.onnx`` file (loaded safely, as
            :func:`describe_file` does).
        path: the file it was loaded from, to report file sizes; ``None`` for an in-memory model.

    Raises:
        ModelFileError, UnsafeModelError, VersionError, ModelTooLargeError: ``model`` is a path that
            cannot be loaded safely (as ``onnxstitch.load``).
    """
    if not isinstance(model, onnx.ModelProto):
        return describe_file(model)
    layouts = _meta.get_layouts(model)
    sizes: dict[str, tuple[int, int]] = {}
    for graph in walk_graphs(model.graph):
        for tensor in graph.initializer:
            sizes[tensor.name] = _tensor_size(tensor)
        for sparse in graph.sparse_initializer:
            weights = sparse.values.data_type in _WEIGHT_TYPES
            count = int(math.prod(sparse.dims)) if weights else 0
            sizes[sparse.values.name] = (count, _tensor_size(sparse.values)[1])
    initializer_names = set(sizes)
    props = _meta.get_props(model)
    inputs = [_value_info(v, layouts) for v in model.graph.input if v.name not in initializer_names]
    outputs = [_value_info(v, layouts) for v in model.graph.output]
    verdict = batching([(v["name"], v["shape"]) for v in inputs], [(v["name"], v["shape"]) for v in outputs])
    return {
        "file": _file_info(path) if path is not None else None,
        "ir_version": int(model.ir_version),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "producer": {"name": model.producer_name, "version": model.producer_version},
        "source": _meta.get_source(model),
        "inputs": inputs,
        "outputs": outputs,
        "batching": {"dim": verdict.dim, "reason": verdict.reason},
        "nodes": len(model.graph.node),
        "op_types": _sorted_counts(Counter(n.op_type for n in model.graph.node)),
        "parameters": sum(c for c, _ in sizes.values()),
        "parameter_bytes": sum(b for _, b in sizes.values()),
        "layouts": layouts,
        "parts": _parts(model, sizes),
        "precision": _precision(props.get(_meta.PRECISION)),
        "metadata": {k: v for k, v in props.items() if not k.startswith(_meta.PREFIX)},
        "graph": part_graph(model),
    }


def _file_info(path: str | os.PathLike[str], *, trusted: bool = False) -> dict[str, Any]:
    from onnxstitch.files import check_file

    p = Path(path)
    data = [
        {"file": f.name, "size_bytes": f.stat().st_size} for f in check_file(p, trusted_external_data=trusted)
    ]
    return {"path": str(p), "size_bytes": p.stat().st_size, "external_data": data}


def describe_file(
    path: str | os.PathLike[str], *, verify: bool = False, trusted_external_data: bool = False
) -> dict[str, Any]:
    """Load ``path`` safely (see :func:`onnxstitch.files.load`, whose options these are) and describe it.

    Raises:
        ModelFileError, UnsafeModelError, IntegrityError, VersionError, ModelTooLargeError: as ``load``.
    """
    from onnxstitch.files import load

    summary = describe(load(path, verify=verify, trusted_external_data=trusted_external_data))
    summary["file"] = _file_info(path, trusted=trusted_external_data)
    return summary
