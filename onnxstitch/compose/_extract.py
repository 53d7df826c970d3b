"""``extract``: take one part back out of a merged model, or cut any subgraph, in memory."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence

import onnx
import onnx.helper
import onnx.shape_inference

from onnxstitch import _meta
from onnxstitch.compose._graph import rename_node
from onnxstitch.compose._spec import graph_inputs, read_spec
from onnxstitch.compose._versions import walk_nodes
from onnxstitch.compose._weights import check_merged, weightless
from onnxstitch.errors import SpecError
from onnxstitch.files import ModelLike, as_model

__all__ = ["extract"]


def extract(
    model: ModelLike,
    *,
    part: str | None = None,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """Take a part back out of a merged model, or cut a subgraph between tensors.

    With ``part="head"`` the nodes that came from that part (by provenance) are taken with their
    initializers; the part's inputs and outputs get back their ORIGINAL part-local names and the
    layouts recorded for them. With ``inputs``/``outputs`` the subgraph computing ``outputs`` from
    ``inputs`` (default: the model's own inputs) is cut out, tensor names unchanged.

    Args:
        model: a ``ModelProto`` or path.
        part: the key of a part of a merged model.
        inputs: tensor names that become the inputs of the cut.
        outputs: tensor names that become the outputs of the cut (required without ``part``).

    Returns:
        A new ``ModelProto``.

    Raises:
        SpecError: both ``part`` and ``inputs``/``outputs`` given, or neither; an unknown part
            (lists the parts) or tensor (lists close valid names); the outputs depend on a model
            input that ``inputs`` leaves out.
    """
    source = as_model(model)
    if part is not None:
        if inputs is not None or outputs is not None:
            raise SpecError("extract takes either part= or inputs=/outputs=, not both")
        return _extract_part(source, part)
    if not outputs:
        raise SpecError("extract needs part= or outputs= (and optionally inputs=)")
    return _cut(source, list(inputs) if inputs is not None else None, list(outputs))


def _typed(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Every tensor's type, from the model and from shape inference on a weight-less skeleton."""
    skeleton = weightless(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton)
    except Exception as exc:  # onnx's InferenceError: the model's own types contradict each other
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(
            f"shape inference fails on model {model.graph.name!r}, so the types of the cut are unknown: "
            f"{first}",
            hint="fix the model (the message names the node), e.g. re-export it",
        ) from exc
    g = inferred.graph
    return {vi.name: vi for vi in [*g.value_info, *g.input, *g.output]}


def _valid_names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    names = [vi.name for vi in g.input] + [t.name for t in g.initializer]
    for node in g.node:
        names.extend(n for n in node.output if n)
    return list(dict.fromkeys(names))


def _unknown(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=8, cutoff=0.3)
    shown = ", ".join(repr(n) for n in (close or valid[:8]))
    return f"unknown {kind} tensor {name!r}; valid names include {shown} ({len(valid)} in all)"


def _cut(model: onnx.ModelProto, inputs: list[str] | None, outputs: list[str]) -> onnx.ModelProto:
    valid = _valid_names(model)
    valid_set = set(valid)
    problems = [_unknown("output", n, valid) for n in outputs if n not in valid_set]
    problems += [_unknown("input", n, valid) for n in (inputs or []) if n not in valid_set]
    if problems:
        raise SpecError("cannot extract:\n  " + "\n  ".join(problems))
    inits = {t.name for t in model.graph.initializer}
    model_inputs = [vi.name for vi in graph_inputs(model)]
    stop = set(inputs) if inputs is not None else set(model_inputs)
    nodes, needed = _walk_back(model.graph.node, outputs, stop, inits)
    missing = sorted(needed - stop - inits)
    if missing:
        raise SpecError(
            f"outputs {outputs} depend on tensor(s) {missing} that are not among the inputs",
            hint="add them to inputs=",
        )
    cut_inputs = inputs if inputs is not None else [n for n in model_inputs if n in needed]
    return _assemble(model, nodes, cut_inputs, outputs, lambda n: n, needed & inits)


def _node_refs(node: onnx.NodeProto) -> set[str]:
    """Inputs of a node, plus outer-scope names its subgraphs read."""
    refs = {n for n in node.input if n}
    for attr in node.attribute:
        for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            local = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
            for sub in graph.node:
                local.update(sub.output)
            for sub in graph.node:
                refs.update(r for r in _node_refs(sub) if r not in local)
            refs.update(vi.name for vi in graph.output if vi.name not in local)
    return refs


def _walk_back(
    nodes: Iterable[onnx.NodeProto], outputs: list[str], stop: set[str], inits: set[str]
) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes needed for ``outputs``, stopping at ``stop``; and every tensor name they read."""
    node_list = list(nodes)
    producer = {out: i for i, node in enumerate(node_list) for out in node.output if out}
    keep: set[int] = set()
    needed: set[str] = set()
    todo = [n for n in outputs if n not in stop]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in stop or name in inits or name not in producer:
            continue
        index = producer[name]
        if index not in keep:
            keep.add(index)
            todo.extend(_node_refs(node_list[index]))
    needed |= {n for n in outputs if n in stop}
    produced = {out for i in keep for out in node_list[i].output}
    return [node_list[i] for i in sorted(keep)], needed - produced


def _assemble(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    inputs: Sequence[str],
    outputs: Sequence[str],
    rename: Callable[[str], str],
    inits: set[str],
) -> onnx.ModelProto:
    types = _typed(model)
    out = onnx.ModelProto(ir_version=model.ir_version, producer_name="onnxstitch")
    out.opset_import.extend(model.opset_import)
    graph = out.graph
    graph.name = model.graph.name + "_extract"
    for name in inputs:
        graph.input.append(_vi(types, name, rename))
    for name in outputs:
        graph.output.append(_vi(types, name, rename))
    for tensor in model.graph.initializer:
        if tensor.name in inits:
            copy = graph.initializer.add()
            copy.CopyFrom(tensor)
            copy.name = rename(tensor.name)
    io = set(inputs) | set(outputs)
    for node in nodes:
        copy = graph.node.add()
        copy.CopyFrom(node)
        rename_node(copy, rename, {})
    names = {n for node in nodes for n in node.output} - io
    for name in sorted(names):
        if name in types:
            graph.value_info.append(_vi(types, name, rename))
    used = {(n.domain, n.op_type) for n in walk_nodes(graph.node)}
    needed = _needed_functions(model.functions, used)
    out.functions.extend(f for f in model.functions if (f.domain, f.name) in needed)
    _check_cut(out)
    return out


def _needed_functions(
    functions: Sequence[onnx.FunctionProto], used: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """The functions called by ``used`` op types, and those they call, transitively."""
    by_id = {(f.domain, f.name): f for f in functions}
    needed: set[tuple[str, str]] = set()
    todo = [u for u in used if u in by_id]
    while todo:
        ident = todo.pop()
        if ident in needed:
            continue
        needed.add(ident)
        todo.extend(
            (n.domain, n.op_type) for n in walk_nodes(by_id[ident].node) if (n.domain, n.op_type) in by_id
        )
    return needed


def _check_cut(model: onnx.ModelProto) -> None:
    """Every input and output typed, and the full checker passes (on a weight-less skeleton).

    Raises:
        SpecError: a tensor of the cut has no known type, or the cut is not a valid model.
    """
    untyped = [
        vi.name for vi in [*model.graph.input, *model.graph.output] if not vi.type.HasField("tensor_type")
    ]
    if untyped:
        raise SpecError(
            f"the extracted model's input/output tensor(s) {untyped} have no known type "
            "(shape inference could not tell)",
            hint="cut at tensors whose types the model declares or infers (a part's own inputs and outputs)",
        )
    try:
        check_merged(model)
    except Exception as exc:  # onnx's ValidationError / InferenceError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(
            f"the extracted model is not a valid ONNX model: {first}",
            hint="cut at other tensors (inputs= must include everything the outputs depend on)",
        ) from exc


def _vi(
    types: dict[str, onnx.ValueInfoProto], name: str, rename: Callable[[str], str]
) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto()
    if name in types:
        vi.CopyFrom(types[name])
    vi.name = rename(name)
    return vi


def _extract_part(model: onnx.ModelProto, key: str) -> onnx.ModelProto:
    spec = read_spec(model)
    parts = [str(k) for k in spec["parts"]]
    if key not in parts:
        raise SpecError(f"merged model has no part {key!r}; its parts are {', '.join(map(repr, parts))}")
    io: dict[str, str] = spec["io"][key]
    nodes = [n for n in model.graph.node if _meta.get_part(n) == key]
    inits = {t.name for t in model.graph.initializer}
    produced = {o for n in nodes for o in n.output if o}
    reads = set().union(*(_node_refs(n) for n in nodes)) if nodes else set()
    local_of = {merged: local for local, merged in io.items()}
    prefix = key + "/"

    def rename(name: str) -> str:
        if name in local_of:
            return local_of[name]
        return name[len(prefix) :] if name.startswith(prefix) else name

    part_inputs = [m for local, m in io.items() if local in spec["part_inputs"][key]]
    part_outputs = [m for local, m in io.items() if local in spec["part_outputs"][key]]
    extra = sorted(reads - produced - inits - set(part_inputs))
    if extra:
        raise SpecError(f"part {key!r} reads tensors {extra} that are neither its inputs nor its own")
    result = _assemble(model, nodes, part_inputs, part_outputs, rename, reads & inits)
    for node in result.graph.node:
        _meta.del_prop(node, _meta.PART)
        node.name = node.name[len(prefix) :] if node.name.startswith(prefix) else node.name
    source = spec["sources"].get(key)
    if source:
        _meta.set_prop(result, _meta.SOURCE, str(source))
    for tensor, layout in spec["layouts"].get(key, {}).items():
        _meta.set_layout(result, tensor, layout)
    result.graph.name = key
    return result
