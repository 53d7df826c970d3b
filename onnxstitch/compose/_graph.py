"""Building the merged graph from checked parts: scoping, seams, adapters, weights, functions, provenance.

Every name inside part ``key`` becomes ``"key/name"`` (nodes, initializers, value_info, internal
tensors, subgraph tensors); the merged model's inputs and outputs keep the clean names of the plan.
A link's consumer reads the producer's tensor directly; an adapter writes the consumer's own scoped
input name. Identical initializers (same dtype, dims and bytes) are stored once.

Why ``ModelProto`` and a string renamer, not onnx-ir (measured by ``scripts/bench/measure_ir.py``,
docs/benchmarks.md "merge on onnx-ir"): onnx-ir builds a Python object per node and value, so
deserializing one 200-node part (2-3 ms of CPU) costs as much as today's whole merge of it, and a
merge done in IR (each part converted once, renamed and wired there, serialized once) takes 3-4x
today's merge, against a budget of ~2 ms per part. ``rename_node`` renames through
``node.input[:] = ...`` (C-level); every name of a part gets the same scope, so subgraph bodies and
their outer-scope references stay consistent (ONNX forbids a subgraph to shadow an outer name);
model-local functions are renamed by (domain, name, overload) with their call sites
(``GraphBuilder._functions``; onnx-ir links calls to functions by those strings too).
"""

from __future__ import annotations

import graphlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx
import onnx.helper

from onnxstitch import _meta
from onnxstitch.compose._seams import Adapter, DimUnifier, dim_node
from onnxstitch.compose._spec import Plan, graph_inputs
from onnxstitch.compose._versions import Part, walk_nodes
from onnxstitch.compose._weights import inline_copy, payload, sample_of, stored_digest, stored_sample
from onnxstitch.files.external import ExternalStore, read_ref

log = logging.getLogger(__name__)

ADAPTER_SUFFIX = ".adapter"

#: a model-local function's identity: (domain, name, overload)
FuncId = tuple[str, str, str]


@dataclass
class _Stored:
    index: int
    sample: bytes
    digest: bytes | None = None


@dataclass
class _Weights:
    """Initializers of the merged graph, deduplicated by (dtype, dims, bytes).

    Candidates are bucketed by dtype and dims and first compared by a cheap sample digest (length,
    first and last 64 KiB); the full sha256 is computed only when the samples match. A tensor still on
    disk (``store``) is read through the hardened reader: into the merged graph, or — with
    ``stream`` — not at all: its marked stub is stored, and the bytes are copied file to file on save.
    """

    graph: onnx.GraphProto
    store: ExternalStore
    stream: bool = False
    buckets: dict[tuple[int, tuple[int, ...]], list[_Stored]] = field(default_factory=dict)
    shared: int = 0

    def add(self, tensor: onnx.TensorProto, name: str, *, dedupe: bool = True) -> str:
        """Store ``tensor`` as ``name`` unless an identical one is stored; return the stored name."""
        ref = self.store.ref_of(tensor)
        data = read_ref(ref) if ref is not None and not self.stream else None
        value = data if data is not None else (payload(tensor) if ref is None else None)
        sample = sample_of(value) if value is not None else stored_sample(tensor, self.store)
        bucket = self.buckets.setdefault((tensor.data_type, tuple(tensor.dims)), [])
        digest: bytes | None = None
        for entry in bucket if dedupe else []:
            if entry.sample != sample:
                continue
            if digest is None:
                digest = (
                    hashlib.sha256(value).digest() if value is not None else stored_digest(tensor, self.store)
                )
            if entry.digest is None:
                entry.digest = stored_digest(self.graph.initializer[entry.index], self.store)
            if entry.digest == digest:
                self.shared += 1
                return str(self.graph.initializer[entry.index].name)
        stored = self.graph.initializer.add()
        if data is not None:
            inline_copy(tensor, data, name, stored)
        else:
            stored.CopyFrom(tensor)
            stored.name = name
        bucket.append(_Stored(len(self.graph.initializer) - 1, sample, digest))
        return name


def _retarget(node: onnx.NodeProto, mapping: Mapping[FuncId, str]) -> None:
    """Point calls of ``node`` (and of its subgraphs) at the merged names of renamed functions."""
    for call in walk_nodes([node]):
        call.op_type = mapping.get((call.domain, call.op_type, call.overload), call.op_type)


def _callees_first(functions: Sequence[onnx.FunctionProto]) -> list[onnx.FunctionProto]:
    """A part's functions ordered so that every function comes after the local functions it calls."""
    by_id = {(f.domain, f.name, f.overload): f for f in functions}
    calls = {
        ident: {
            (c.domain, c.op_type, c.overload)
            for node in func.node
            for c in walk_nodes([node])
            if (c.domain, c.op_type, c.overload) in by_id
        }
        for ident, func in by_id.items()
    }
    try:
        return [by_id[i] for i in graphlib.TopologicalSorter(calls).static_order()]
    except graphlib.CycleError:  # recursive functions are invalid ONNX: the checker names them later
        return list(functions)


def _free_name(name: str, domain: str, overload: str, taken: Mapping[FuncId, bytes]) -> str:
    candidate, n = name, 1
    while (domain, candidate, overload) in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _shared_inputs(plan: Plan) -> dict[tuple[str, str], Adapter]:
    """Inputs of one part fed by one tensor: each gets an Identity, so every input keeps its own name.

    Without it the part's inputs would all be renamed to the one tensor, and ``extract`` could not
    tell them apart again.
    """
    fed: dict[tuple[str, object], list[tuple[str, str]]] = {}
    for end, name in plan.feeds.items():
        fed.setdefault((end[0], ("input", name)), []).append(end)
    for ln in plan.links:
        fed.setdefault((ln.dst_part, ("link", ln.src_part, ln.src_tensor)), []).append(
            (ln.dst_part, ln.dst_tensor)
        )
    return {end: Adapter() for ends in fed.values() if len(ends) > 1 for end in ends}


def _renamer(key: str, overrides: Mapping[str, str]) -> Callable[[str], str]:
    def rename(name: str) -> str:
        if not name:
            return name
        return overrides.get(name) or f"{key}/{name}"

    return rename


def rename_graph(graph: onnx.GraphProto, rename: Callable[[str], str], funcs: Mapping[FuncId, str]) -> None:
    """Rename every tensor of a (sub)graph in place (it is a copy we own)."""
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        vi.name = rename(vi.name) if vi.name else vi.name
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name) if tensor.name else tensor.name
    for node in graph.node:
        rename_node(node, rename, funcs)


def rename_node(node: onnx.NodeProto, rename: Callable[[str], str], funcs: Mapping[FuncId, str]) -> None:
    """Rename a node's tensors (a copy we own), its subgraphs' too, and point its calls at ``funcs``.

    The one renamer of compose: ``merge`` scopes names with it, ``extract`` takes the scope off.
    Empty names (omitted optional inputs) stay empty.
    """
    node.input[:] = [rename(n) if n else n for n in node.input]
    node.output[:] = [rename(n) if n else n for n in node.output]
    if funcs:
        node.op_type = funcs.get((node.domain, node.op_type, node.overload), node.op_type)
    if not len(node.attribute):
        return
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            rename_graph(attr.g, rename, funcs)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for sub in attr.graphs:
                rename_graph(sub, rename, funcs)


class GraphBuilder:
    """Builds the merged ModelProto from parts in topological order."""

    def __init__(
        self,
        parts: Mapping[str, Part],
        plan: Plan,
        adapters: Mapping[tuple[str, str], Adapter],
        dims: DimUnifier,
        ir_version: int,
        targets: Mapping[str, int],
        weights: _Weights | None = None,
    ) -> None:
        self.parts, self.plan, self.dims = parts, plan, dims
        self.adapters = {**_shared_inputs(plan), **adapters}
        self.model = onnx.ModelProto(ir_version=ir_version, producer_name="onnxstitch")
        self.model.graph.name = "+".join(plan.order)
        for domain, version in sorted(targets.items()):
            self.model.opset_import.append(onnx.helper.make_opsetid(domain, version))
        self.weights = weights or _Weights(self.model.graph, ExternalStore())
        self.weights.graph = self.model.graph
        self.renames: dict[str, Callable[[str], str]] = {}
        self.funcs: dict[str, dict[FuncId, str]] = {}
        self.fed_by_link = {(ln.dst_part, ln.dst_tensor): ln for ln in plan.links}
        self.out_names = {end: name for name, end in plan.merged_outputs.items()}
        self.value_info_done: set[str] = set()

    def build(self, keys_in_order: Sequence[str]) -> onnx.ModelProto:
        self._functions()
        interface = set(self.plan.merged_inputs) | set(self.plan.merged_outputs)
        for key in self.plan.order:
            self._part(key, interface)
        self._interface()
        self._metadata(keys_in_order)
        return self.model

    # -- functions -----------------------------------------------------------------------------------
    def _functions(self) -> None:
        """Copy model-local functions; identical ones are kept once, differing ones renamed ``key/name``.

        A part's functions are taken callees first, and every call site inside them is pointed at the
        merged name of its callee *before* two functions are compared: a function that calls a renamed
        function is therefore itself different (and renamed), and call sites in every function and
        graph of the part, subgraphs included, bind to the part's own functions.
        """
        stored: dict[FuncId, bytes] = {}
        for key in self.plan.order:
            mapping: dict[FuncId, str] = {}
            for func in _callees_first(self.parts[key].model.functions):
                copy = onnx.FunctionProto()
                copy.CopyFrom(func)
                for node in copy.node:
                    _retarget(node, mapping)
                ident = (copy.domain, copy.name, copy.overload)
                body = copy.SerializeToString(deterministic=True)
                if stored.get(ident) == body:
                    continue
                if ident in stored:
                    copy.name = _free_name(f"{key}/{func.name}", copy.domain, copy.overload, stored)
                    mapping[ident] = copy.name
                    body = copy.SerializeToString(deterministic=True)
                stored[(copy.domain, copy.name, copy.overload)] = body
                self.model.functions.append(copy)
            self.funcs[key] = mapping
        domains = {e.domain for e in self.model.opset_import}
        for func in self.model.functions:
            if func.domain not in domains:
                self.model.opset_import.append(onnx.helper.make_opsetid(func.domain, 1))
                domains.add(func.domain)

    # -- one part ------------------------------------------------------------------------------------
    def _overrides(self, key: str) -> dict[str, str]:
        """Tensor names of part ``key`` that do not get the default ``key/name``."""
        overrides: dict[str, str] = {}
        part_inputs = [vi.name for vi in graph_inputs(self.parts[key].model)]
        for name in part_inputs:
            end = (key, name)
            if end in self.adapters:
                continue  # the adapter writes the part's own scoped name
            if end in self.plan.feeds:
                overrides[name] = self.plan.feeds[end]
            elif end in self.fed_by_link:
                link = self.fed_by_link[end]
                overrides[name] = self.renames[link.src_part](link.src_tensor)
        for vi in self.parts[key].model.graph.output:
            merged = self.out_names.get((key, vi.name))
            if merged is not None and vi.name not in overrides:
                overrides[vi.name] = merged
        return overrides

    def _part(self, key: str, interface: set[str]) -> None:
        part = self.parts[key]
        overrides = self._overrides(key)
        base = _renamer(key, overrides)
        for tensor in [*part.model.graph.initializer, *part.weights]:
            if tensor.name in overrides:  # an initializer that is also a merged output
                self.weights.add(tensor, overrides[tensor.name], dedupe=False)
                continue
            stored = self.weights.add(tensor, f"{key}/{tensor.name}")
            if stored != f"{key}/{tensor.name}":
                overrides[tensor.name] = stored
        if part.owned:
            part.weights.clear()  # the last reference to a loaded part's weights: released now
        self.renames[key] = base
        scoped = {n[len(key) + 1 :] for n in interface if n.startswith(f"{key}/")}
        clash = {f"{key}/{n}" for n in scoped & _all_names(part.model)} if scoped else set()
        if clash:
            from onnxstitch.errors import SpecError

            raise SpecError(
                f"merged name(s) {sorted(clash)} collide with the scoped names of part {key!r}",
                hint="pick other names in inputs=/outputs=",
            )
        for name in [vi.name for vi in graph_inputs(part.model)]:
            if (key, name) in self.adapters:
                self._adapter(key, name, self.adapters[(key, name)])
        funcs = self.funcs[key]
        nodes = self.model.graph.node
        start = len(nodes)
        nodes.extend(part.model.graph.node)  # one copy in C; renamed in place below
        for i in range(start, len(nodes)):
            copy = nodes[i]
            copy.name = f"{key}/{copy.name or f'{copy.op_type}_{i - start}'}"
            rename_node(copy, base, funcs)
            _meta.set_prop(copy, _meta.PART, key)
        for sparse in part.model.graph.sparse_initializer:
            copy_s = self.model.graph.sparse_initializer.add()
            copy_s.CopyFrom(sparse)
            copy_s.values.name = base(sparse.values.name)
        self._value_info(key, base, interface)
        self._output_identities(key, overrides)

    def _adapter(self, key: str, name: str, adapter: Adapter) -> None:
        if (key, name) in self.plan.feeds:
            source = f"merged input {self.plan.feeds[(key, name)]!r} -> {key}:{name}"
            current = self.plan.feeds[(key, name)]
        else:
            link = self.fed_by_link[(key, name)]
            source = str(link)
            current = self.renames[link.src_part](link.src_tensor)
        steps: list[onnx.NodeProto] = []
        if adapter.perm is not None:
            out = f"{key}/{name}@transposed" if adapter.cast_to is not None else f"{key}/{name}"
            steps.append(onnx.helper.make_node("Transpose", [current], [out], perm=list(adapter.perm)))
            current = out
        if adapter.cast_to is not None:
            steps.append(onnx.helper.make_node("Cast", [current], [f"{key}/{name}"], to=adapter.cast_to))
        if not steps:  # one tensor feeds several inputs of this part: each keeps a name of its own
            steps.append(onnx.helper.make_node("Identity", [current], [f"{key}/{name}"]))
        for node in steps:
            node.name = f"{key}/{name}@{node.op_type.lower()}"
            _meta.set_prop(node, _meta.PART, key + ADAPTER_SUFFIX)
            self.model.graph.node.append(node)
        log.info("seam %s: inserted %s", source, adapter.describe() or "Identity")

    def _value_info(self, key: str, rename: Callable[[str], str], interface: set[str]) -> None:
        """Carry the part's value_info (and its seam outputs' types) over, renamed, dims unified."""
        graph = self.parts[key].model.graph
        inputs = {vi.name for vi in graph_inputs(self.parts[key].model)}
        out_vis = [vi for vi in graph.output if (key, vi.name) not in self.out_names]
        in_vis = [vi for vi in graph_inputs(self.parts[key].model) if (key, vi.name) in self.adapters]
        for vi in [*graph.value_info, *out_vis, *in_vis]:
            new_name = rename(vi.name)
            if new_name in interface or new_name in self.value_info_done:
                continue
            if vi.name in inputs and (key, vi.name) not in self.adapters:
                continue
            where = "out" if vi in out_vis else "in"
            copy = self.model.graph.value_info.add()
            copy.CopyFrom(vi)
            copy.name = new_name
            self._map_dims(key, where, vi.name, copy)
            self.value_info_done.add(new_name)

    def _output_identities(self, key: str, overrides: Mapping[str, str]) -> None:
        """A merged output whose tensor already has another name (passthrough, twice named): an Identity."""
        for name, (okey, tensor) in self.plan.merged_outputs.items():
            if okey != key or overrides.get(tensor) == name:
                continue
            node = onnx.helper.make_node(
                "Identity", [self.renames[key](tensor)], [name], name=f"{key}/{name}@identity"
            )
            _meta.set_prop(node, _meta.PART, key)
            self.model.graph.node.append(node)

    # -- interface and metadata ----------------------------------------------------------------------
    def _map_dims(self, key: str, where: str, tensor: str, vi: onnx.ValueInfoProto) -> None:
        if vi.type.WhichOneof("value") != "tensor_type" or not vi.type.tensor_type.HasField("shape"):
            return
        for i, dim in enumerate(vi.type.tensor_type.shape.dim):
            kind = dim.WhichOneof("value")
            raw = dim.dim_param if kind == "dim_param" else None
            if kind == "dim_value":
                continue
            node = dim_node(key, where, tensor, i, raw)
            if node is None or node not in self.dims.parent:
                if raw is not None:  # a symbol no seam touched: still one class per (part, symbol)
                    node = ("sym", key, raw)
                else:
                    continue
            final = self.dims.resolve(node)
            if isinstance(final, int):
                dim.dim_value = final
            elif isinstance(final, str):
                dim.dim_param = final

    def _interface(self) -> None:
        graph = self.model.graph
        for name, ends in self.plan.merged_inputs.items():
            key, tensor = ends[0]
            vi = next(v for v in graph_inputs(self.parts[key].model) if v.name == tensor)
            copy = graph.input.add()
            copy.CopyFrom(vi)
            copy.name = name
            self._map_dims(key, "in", tensor, copy)
        for name, (key, tensor) in self.plan.merged_outputs.items():
            vi = next(v for v in self.parts[key].model.graph.output if v.name == tensor)
            copy = graph.output.add()
            copy.CopyFrom(vi)
            copy.name = name
            self._map_dims(key, "out", tensor, copy)

    def _metadata(self, keys_in_order: Sequence[str]) -> None:
        _meta.set_prop(self.model, _meta.SOURCE, "merged")
        _meta.set_prop(self.model, _meta.PARTS, json.dumps(list(keys_in_order)))
        for name, ends in self.plan.merged_inputs.items():
            first_key, first_tensor = ends[0]  # a merged input takes its first part input's layout
            layout = _meta.get_layouts(self.parts[first_key].source).get(first_tensor)
            if layout:
                _meta.set_layout(self.model, name, layout)
        for name, (key, tensor) in self.plan.merged_outputs.items():
            layout = _meta.get_layouts(self.parts[key].source).get(tensor)
            if layout:
                _meta.set_layout(self.model, name, layout)


def _all_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {vi.name for vi in [*graph.input, *graph.output, *graph.value_info]}
    names.update(t.name for t in graph.initializer)
    for node in graph.node:
        names.update(node.output)
    return names
