"""The part-level structure of a merged model: parts, seams, adapters, merged inputs and outputs.

This is the ``"graph"`` entry of :func:`onnxstitch.files.describe.describe` (and so of
``ox.describe`` and ``onnxstitch inspect --json``), and what ``inspect --graph`` / ``--mermaid``
draw. It is read from what a merged model records: the wiring (``onnxstitch.spec``), each node's
part (``onnxstitch.part``; automatic adapters are recorded as ``<part>.adapter``) and the layouts.

Keys (a model that was not merged is one part, ``"model"``, with no seams)::

    parts:    [{"id", "part", "source", "nodes", "parameters", "precision", "opsets"}]
    adapters: [{"id", "kind": "automatic" | "user", "ops", "nodes", "into"}]
    seams:    [{"from", "to", "tensor", "dtype", "shape", "layout", "via"}]
    inputs:   [{"id", "name", "dtype", "shape", "layout", "to"}]
    outputs:  [{"id", "name", "dtype", "shape", "layout", "from"}]
    edges:    [{"from", "to", "label"}]   every arrow of the picture, between ids

``from``/``to`` of a seam are ``"part:tensor"``; ``via`` is the id of the adapter on it, if any.
``precision`` is the dtype that holds most of the part's initializer elements (``"float32"``,
``"float16"``, ``"int8"``...) or ``None`` without weights. ``layout`` of a seam is the producer's
(``"NHWC"``), or ``"NHWC→NCHW"`` when the two ends differ (an automatic Transpose converts it).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from typing import Any

import onnx

from onnxstitch import _meta
from onnxstitch._graphs import walk_graphs

__all__ = ["part_graph"]

_ADAPTER_SUFFIX = ".adapter"  # what compose records on the nodes of an automatic adapter
_ADAPTER_SOURCE = "adapter"  # onnxstitch.source of a user's adapter from ox.adapters


def recorded_spec(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The wiring a merged model recorded (``onnxstitch.spec``), or None (not merged, unreadable)."""
    raw = _meta.get_props(model).get(_meta.SPEC)
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


def typed_values(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """``{tensor: {"name", "dtype", "shape", "layout"}}`` of the graph's typed values."""
    from onnxstitch.files.describe import _value_info

    layouts = _meta.get_layouts(model)
    return {
        vi.name: _value_info(vi, layouts)
        for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]
    }


def _precision(tensors: list[onnx.TensorProto]) -> str | None:
    from onnxstitch.files.describe import _dtype_name

    counts: Counter[str] = Counter()
    for t in tensors:
        counts[_dtype_name(t.data_type)] += int(math.prod(t.dims))
    return counts.most_common(1)[0][0] if counts else None


def _part_rows(model: onnx.ModelProto, keys: list[str], merged: bool) -> dict[str, dict[str, Any]]:
    from onnxstitch.files.describe import _node_inputs, _tensor_size

    inits = {t.name: t for g in walk_graphs(model.graph) for t in g.initializer}
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    nodes: Counter[str] = Counter()
    domains: dict[str, set[str]] = defaultdict(set)
    weights: dict[str, dict[str, onnx.TensorProto]] = defaultdict(dict)
    for node in model.graph.node:
        key = (_meta.get_part(node) or "(unassigned)") if merged else "model"
        nodes[key] += 1
        domains[key].add(node.domain or "ai.onnx")
        for name in _node_inputs(node):
            if name in inits:
                weights[key][name] = inits[name]
    rows = {}
    for key in [*keys, *sorted(k for k in nodes if k not in keys)]:
        tensors = list(weights[key].values())
        rows[key] = {
            "nodes": nodes[key],
            "parameters": sum(_tensor_size(t)[0] for t in tensors),
            "precision": _precision(tensors),
            "opsets": {d: opsets[d] for d in sorted(domains[key]) if d in opsets},
        }
    return rows


def _io(model: onnx.ModelProto, types: dict[str, dict[str, Any]], role: str) -> list[dict[str, Any]]:
    inits = {t.name for t in model.graph.initializer}
    vis = model.graph.input if role == "input" else model.graph.output
    return [dict(types[vi.name], id=f"{role}:{vi.name}") for vi in vis if vi.name not in inits]


def _single(model: onnx.ModelProto) -> dict[str, Any]:
    types = typed_values(model)
    row = _part_rows(model, ["model"], merged=False)["model"]
    inputs = [dict(r, to=["model"]) for r in _io(model, types, "input")]
    outputs = [dict(r, **{"from": "model"}) for r in _io(model, types, "output")]
    source = _meta.get_source(model)
    edges = [{"from": r["id"], "to": "part:model", "label": r["name"]} for r in inputs]
    edges += [{"from": "part:model", "to": r["id"], "label": r["name"]} for r in outputs]
    part = {"id": "part:model", "part": "model", "source": source, **row}
    return {
        "parts": [part],
        "adapters": [],
        "seams": [],
        "inputs": inputs,
        "outputs": outputs,
        "edges": edges,
    }


def _shape_text(shape: list[int | str | None] | None) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _label(info: dict[str, Any]) -> str:
    text = f"{info['name']}\n{info['dtype']}{_shape_text(info['shape'])}"
    return text + (f" {info['layout']}" if info.get("layout") else "")


def _automatic_adapters(model: onnx.ModelProto) -> dict[tuple[str, str], list[str]]:
    """``{(part, input tensor): [op types]}`` of the automatic adapters, from their nodes."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for node in model.graph.node:
        owner = _meta.get_part(node) or ""
        if not owner.endswith(_ADAPTER_SUFFIX):
            continue
        key = owner[: -len(_ADAPTER_SUFFIX)]
        tensor = node.name.removeprefix(f"{key}/").rsplit("@", 1)[0]
        found[(key, tensor)].append(node.op_type)
    return dict(found)


def part_graph(model: onnx.ModelProto) -> dict[str, Any]:
    """The part-level structure of ``model`` (read only), with the keys listed in the module doc."""
    spec = recorded_spec(model)
    if spec is None or not spec.get("parts"):
        return _single(model)
    keys = [str(k) for k in spec["parts"]]
    sources = spec.get("sources", {})
    layouts = spec.get("layouts", {})
    io = spec.get("io", {})
    types = typed_values(model)
    rows = _part_rows(model, keys, merged=True)
    automatic = _automatic_adapters(model)
    user = {k for k in keys if sources.get(k) == _ADAPTER_SOURCE}
    parts, adapters = [], []
    for key, row in rows.items():
        if key.endswith(_ADAPTER_SUFFIX) and key[: -len(_ADAPTER_SUFFIX)] in keys:
            continue  # drawn as the automatic adapters' own boxes
        if key in user:
            adapters.append(
                {"id": f"part:{key}", "kind": "user", "ops": [], "nodes": row["nodes"], "into": key}
            )
            continue
        parts.append({"id": f"part:{key}", "part": key, "source": sources.get(key), **row})
    for (key, tensor), ops in automatic.items():
        adapters.append(
            {
                "id": f"adapter:{key}:{tensor}",
                "kind": "automatic",
                "ops": ops,
                "nodes": len(ops),
                "into": f"{key}:{tensor}",
            }
        )
    for a in adapters:
        if a["kind"] == "user":
            a["ops"] = sorted({n.op_type for n in model.graph.node if _meta.get_part(n) == a["into"]})
    edges: list[dict[str, Any]] = []
    seams = []
    for src, st, dst, dt in spec.get("links", []):
        name = io.get(src, {}).get(st, st)
        info = types.get(name, {"name": name, "dtype": "?", "shape": None, "layout": None})
        lp, lc = layouts.get(src, {}).get(st), layouts.get(dst, {}).get(dt)
        layout = f"{lp}→{lc}" if lp and lc and lp != lc else (lp or lc)
        via = f"adapter:{dst}:{dt}" if (dst, dt) in automatic else None
        seam = {
            "from": f"{src}:{st}",
            "to": f"{dst}:{dt}",
            "tensor": name,
            "dtype": info["dtype"],
            "shape": info["shape"],
            "layout": layout,
            "via": via,
        }
        seams.append(seam)
        label = _label({**info, "name": st, "layout": layout})
        if via:
            edges += [
                {"from": f"part:{src}", "to": via, "label": label},
                {"from": via, "to": f"part:{dst}", "label": dt},
            ]
        else:
            edges.append({"from": f"part:{src}", "to": f"part:{dst}", "label": label})
    inputs = []
    for row in _io(model, types, "input"):
        ends = spec.get("inputs", {}).get(row["name"], [])
        row["to"] = [f"{k}:{t}" for k, t in ends]
        inputs.append(row)
        for k, t in ends:
            target = f"adapter:{k}:{t}" if (k, t) in automatic else f"part:{k}"
            edges.append({"from": row["id"], "to": target, "label": _label(row)})
            if (k, t) in automatic:
                edges.append({"from": target, "to": f"part:{k}", "label": t})
    outputs = []
    for row in _io(model, types, "output"):
        end = spec.get("outputs", {}).get(row["name"])
        row["from"] = f"{end[0]}:{end[1]}" if end else None
        outputs.append(row)
        if end:
            edges.append({"from": f"part:{end[0]}", "to": row["id"], "label": _label(row)})
    return {
        "parts": parts,
        "adapters": adapters,
        "seams": seams,
        "inputs": inputs,
        "outputs": outputs,
        "edges": edges,
    }
