"""What changed between two versions of a (merged) model: ``ox.diff`` and ``onnxstitch diff``.

The comparison is part by part, using what a merged model records (``onnxstitch.part`` on each node,
the wiring in ``onnxstitch.spec``); a model that was not merged is one part, ``(model)``. Per part:

``weights``
    initializers the part's nodes read, compared by name and by the sha256 of their dtype, dims and
    bytes. Hashing reads a file's external data in chunks (no second copy of the weights in memory);
    only a tensor whose hash differs is read whole, to report its largest relative change
    ``max|new - old| / max|old|``.
``structure``
    the part's nodes, independent of tensor names: op types counted (what was added and removed),
    and a fingerprint of each node (domain, op type, attributes, what feeds each input).
``signature``
    the part's inputs and outputs (dtype, shape, layout) as merged, and the seams (links) it is on.

A part's ``status`` is the most serious change it has: ``"signature"``, ``"structure"``,
``"weights"`` or ``"identical"``; ``"added"`` / ``"removed"`` for a part only one model has. Automatic
adapters (nodes recorded as ``<part>.adapter``) are compared as parts of their own. The merged
inputs and outputs, the IR version and the opsets are compared too.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxstitch import _meta
from onnxstitch._graphs import walk_graphs
from onnxstitch.errors import ModelFileError
from onnxstitch.files.describe import _dtype_name, _node_inputs
from onnxstitch.files.external import ExternalRef, iter_ref, read_ref, uses_external_data
from onnxstitch.files.picture import recorded_spec as _spec
from onnxstitch.files.picture import typed_values as _typed

__all__ = ["ModelDiff", "PartDiff", "WeightChange", "diff"]

WHOLE = "(model)"


@dataclass(frozen=True)
class WeightChange:
    """One initializer of a part that differs: ``change`` is ``"values"``, ``"shape"``, ``"dtype"``,
    ``"added"`` or ``"removed"``; ``relative_change`` is ``max|new - old| / max|old|`` for values."""

    tensor: str
    change: str
    relative_change: float | None = None
    old: str | None = None
    new: str | None = None


@dataclass
class PartDiff:
    """How one part differs between the two models."""

    part: str
    status: str
    weights: list[WeightChange] = field(default_factory=list)
    ops_added: dict[str, int] = field(default_factory=dict)
    ops_removed: dict[str, int] = field(default_factory=dict)
    structure: list[str] = field(default_factory=list)
    signature: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``onnxstitch diff --json``)."""
        return {
            "part": self.part,
            "status": self.status,
            "weights": [w.__dict__ for w in self.weights],
            "ops_added": self.ops_added,
            "ops_removed": self.ops_removed,
            "structure": self.structure,
            "signature": self.signature,
        }


@dataclass
class ModelDiff:
    """The result of :func:`diff`: ``identical`` is True when nothing that runs differs."""

    parts: list[PartDiff]
    inputs: list[str]
    outputs: list[str]
    versions: list[str]

    @property
    def identical(self) -> bool:
        """No part, merged input/output, IR version or opset differs."""
        return not (self.inputs or self.outputs or self.versions) and all(
            p.status == "identical" for p in self.parts
        )

    @property
    def changed_parts(self) -> list[str]:
        """Keys of the parts that differ, in order."""
        return [p.part for p in self.parts if p.status != "identical"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form with stable keys."""
        return {
            "identical": self.identical,
            "changed_parts": self.changed_parts,
            "parts": [p.to_dict() for p in self.parts],
            "inputs": self.inputs,
            "outputs": self.outputs,
            "versions": self.versions,
        }

    def lines(self) -> list[str]:
        """A human-readable report, one line per fact."""
        if self.identical:
            return ["identical: every part, the merged inputs/outputs and the opsets are the same"]
        out: list[str] = []
        for p in self.parts:
            out.append(f"part {p.part}: {p.status}")
            out += [f"  signature: {s}" for s in p.signature]
            if p.ops_added or p.ops_removed:
                added = ", ".join(f"+{n} {op}" for op, n in p.ops_added.items())
                removed = ", ".join(f"-{n} {op}" for op, n in p.ops_removed.items())
                out.append("  nodes: " + ", ".join(x for x in (added, removed) if x))
            out += [f"  structure: {s}" for s in p.structure]
            for w in p.weights:
                if w.change == "values":
                    rel = "n/a" if w.relative_change is None else f"{w.relative_change:.3g}"
                    out.append(f"  weight {w.tensor}: values changed (largest relative change {rel})")
                else:
                    detail = f" ({w.old} -> {w.new})" if w.old or w.new else ""
                    out.append(f"  weight {w.tensor}: {w.change}{detail}")
        out += [f"input {s}" for s in self.inputs]
        out += [f"output {s}" for s in self.outputs]
        out += self.versions
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


# -- reading a model, its weights streamed from files -----------------------------------------------


@dataclass
class _Side:
    model: onnx.ModelProto
    refs: dict[str, ExternalRef]


def _open(model: onnx.ModelProto | str | os.PathLike[str], what: str) -> _Side:
    if isinstance(model, onnx.ModelProto):
        return _Side(model, {})
    if not isinstance(model, (str, os.PathLike)):
        raise ModelFileError(
            f"{what} must be an onnx.ModelProto or a path to an .onnx file, not {type(model).__name__}",
            hint="pass the model object or the file's path",
        )
    from onnxstitch.files._read import external_refs

    header, refs = external_refs(Path(model))
    return _Side(header, {r.tensor: r for r in refs})


def _hash(side: _Side, tensor: onnx.TensorProto) -> str:
    digest = hashlib.sha256(f"{tensor.data_type}:{list(tensor.dims)}:".encode())
    ref = side.refs.get(tensor.name)
    if ref is not None:
        for chunk in iter_ref(ref):
            digest.update(chunk)
    elif uses_external_data(tensor):  # an in-memory model that still points at files: compare where
        digest.update(b"external:" + str([(e.key, e.value) for e in tensor.external_data]).encode())
    elif tensor.HasField("raw_data"):
        digest.update(tensor.raw_data)
    else:
        digest.update(numpy_helper.to_array(tensor).tobytes())
    return digest.hexdigest()


_ELEMENTS = 1 << 20  # elements compared at a time: memory stays bounded whatever the tensor's size


def _pieces(side: _Side, tensor: onnx.TensorProto) -> Iterator[np.ndarray]:
    """The tensor's values, flat, in pieces of ``_ELEMENTS``: external data is read piece by piece
    through the hardened reader; an inline tensor is already in memory."""
    ref = side.refs.get(tensor.name)
    if ref is None:
        flat = numpy_helper.to_array(tensor).reshape(-1)
        for start in range(0, flat.size, _ELEMENTS):
            yield flat[start : start + _ELEMENTS]
        return
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    step = _ELEMENTS * dtype.itemsize
    for start in range(0, ref.length, step):
        yield np.frombuffer(read_ref(ref, start, min(step, ref.length - start)), dtype=dtype)


def _relative_change(old: _Side, ta: onnx.TensorProto, new: _Side, tb: onnx.TensorProto) -> float | None:
    """``max|new - old| / max|old|`` of two same-shaped numeric tensors, piece by piece; None when
    the values are not numbers (strings) or not stored as plain bytes."""
    if ta.data_type == onnx.TensorProto.STRING:
        return None
    scale = delta = 0.0
    try:
        for a, b in zip(_pieces(old, ta), _pieces(new, tb), strict=True):
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            if a64.size:
                scale = max(scale, float(np.max(np.abs(a64))))
                delta = max(delta, float(np.max(np.abs(b64 - a64))))
    except (TypeError, ValueError):  # packed sub-byte types and other layouts numpy cannot read
        return None
    return delta / scale if scale > 0 else (float("inf") if delta > 0 else 0.0)


# -- one part of a model --------------------------------------------------------------------------


@dataclass
class _Part:
    ops: Counter[str] = field(default_factory=Counter)
    fingerprints: Counter[str] = field(default_factory=Counter)
    weights: dict[str, onnx.TensorProto] = field(default_factory=dict)
    signature: dict[str, str] = field(default_factory=dict)


def _op(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _attr_text(node: onnx.NodeProto) -> str:
    items = []
    for attr in sorted(node.attribute, key=lambda a: a.name):
        if attr.HasField("g") or len(attr.graphs):  # a body: its ops, not its tensor names
            subs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            ops = sorted(_op(n) for sub in subs for g in walk_graphs(sub) for n in g.node)
            items.append(f"{attr.name}=graph{ops}")
        elif attr.HasField("t"):
            items.append(f"{attr.name}=tensor{hashlib.sha256(attr.t.SerializeToString()).hexdigest()[:16]}")
        else:
            copy = onnx.AttributeProto()
            copy.CopyFrom(attr)
            items.append(str(copy).replace("\n", " "))
    return ";".join(items)


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for g in walk_graphs(model.graph) for t in g.initializer}


def _part_of(node: onnx.NodeProto, merged: bool) -> str:
    return (_meta.get_part(node) or "(unassigned)") if merged else WHOLE


def _parts(model: onnx.ModelProto) -> dict[str, _Part]:
    spec = _spec(model)
    merged = spec is not None or bool(_meta.get_parts(model))
    inits = _initializers(model)
    producers = {out: _op(n) for n in model.graph.node for out in n.output}
    graph_inputs = {vi.name for vi in model.graph.input}
    parts: dict[str, _Part] = defaultdict(_Part)
    for key in (spec or {}).get("parts", []):
        parts.setdefault(str(key), _Part())  # a part with no nodes still exists
    for node in model.graph.node:
        part = parts[_part_of(node, merged)]
        part.ops[_op(node)] += 1
        feeds = []
        for name in node.input:
            if name in inits:
                t = inits[name]
                feeds.append(f"init:{_dtype_name(t.data_type)}")  # a new shape is a weight change
            else:
                feeds.append(
                    producers.get(name, "input" if name in graph_inputs else ("" if not name else "?"))
                )
        part.fingerprints[f"{_op(node)}({','.join(feeds)})[{_attr_text(node)}]"] += 1
        for name in _node_inputs(node):
            if name in inits:
                part.weights[name] = inits[name]
    _signatures(model, spec, parts)
    return dict(parts)


def _fmt(info: dict[str, Any] | None) -> str:
    if info is None:
        return "(type unknown)"
    shape = (
        "?"
        if info["shape"] is None
        else "[" + ", ".join("?" if d is None else str(d) for d in info["shape"]) + "]"
    )
    return f"{info['dtype']}{shape}" + (f" {info['layout']}" if info.get("layout") else "")


def _signatures(model: onnx.ModelProto, spec: dict[str, Any] | None, parts: Mapping[str, _Part]) -> None:
    typed = _typed(model)
    if spec is None:
        whole = parts.get(WHOLE)
        if whole is not None:
            for vi in model.graph.input:
                whole.signature[f"input {vi.name}"] = _fmt(typed.get(vi.name))
            for vi in model.graph.output:
                whole.signature[f"output {vi.name}"] = _fmt(typed.get(vi.name))
        return
    io = spec.get("io", {})
    layouts = spec.get("layouts", {})
    for key, part in parts.items():
        renames = io.get(key, {})
        for role in ("inputs", "outputs"):
            for name in spec.get(f"part_{role}", {}).get(key, []):
                info = typed.get(renames.get(name, name))
                text = _fmt(info)
                layout = layouts.get(key, {}).get(name)
                if layout and not (info and info.get("layout")):
                    text += f" {layout}"
                part.signature[f"{role[:-1]} {name}"] = text
    for src, st, dst, dt in spec.get("links", []):
        for key in (src, dst):
            if key in parts:
                parts[key].signature[f"seam {src}:{st} -> {dst}:{dt}"] = "linked"


# -- comparing ------------------------------------------------------------------------------------


def _compare_weights(old: _Side, new: _Side, a: _Part, b: _Part) -> list[WeightChange]:
    changes: list[WeightChange] = []
    for name in sorted(set(a.weights) | set(b.weights)):
        ta, tb = a.weights.get(name), b.weights.get(name)
        if ta is None and tb is not None:
            changes.append(WeightChange(name, "added", new=f"{_dtype_name(tb.data_type)}{list(tb.dims)}"))
            continue
        if tb is None and ta is not None:
            changes.append(WeightChange(name, "removed", old=f"{_dtype_name(ta.data_type)}{list(ta.dims)}"))
            continue
        if ta is None or tb is None:
            continue
        if ta.data_type != tb.data_type:
            changes.append(
                WeightChange(name, "dtype", old=_dtype_name(ta.data_type), new=_dtype_name(tb.data_type))
            )
        elif list(ta.dims) != list(tb.dims):
            changes.append(WeightChange(name, "shape", old=str(list(ta.dims)), new=str(list(tb.dims))))
        elif _hash(old, ta) != _hash(new, tb):
            changes.append(WeightChange(name, "values", relative_change=_relative_change(old, ta, new, tb)))
    return changes


def _compare_part(key: str, old: _Side, new: _Side, a: _Part, b: _Part) -> PartDiff:
    result = PartDiff(key, "identical")
    for name in sorted(set(a.signature) | set(b.signature), key=lambda s: (s.split(" ")[0], s)):
        sa, sb = a.signature.get(name), b.signature.get(name)
        if sa != sb:
            result.signature.append(
                f"{name}: {sa or 'absent'} -> {sb or 'absent'}"
                if sa and sb
                else f"{name} {'added' if sb else 'removed'}"
            )
    result.ops_added = dict(sorted((b.ops - a.ops).items()))
    result.ops_removed = dict(sorted((a.ops - b.ops).items()))
    if a.fingerprints != b.fingerprints and not (result.ops_added or result.ops_removed):
        changed = sum(((a.fingerprints - b.fingerprints) + (b.fingerprints - a.fingerprints)).values())
        result.structure.append(f"{changed} node(s) differ in attributes or wiring (same op types)")
    result.weights = _compare_weights(old, new, a, b)
    if result.signature:
        result.status = "signature"
    elif result.ops_added or result.ops_removed or result.structure:
        result.status = "structure"
    elif result.weights:
        result.status = "weights"
    return result


def _compare_io(a: onnx.ModelProto, b: onnx.ModelProto, role: str) -> list[str]:
    ta, tb = _typed(a), _typed(b)
    init_a, init_b = _initializers(a), _initializers(b)
    names_a = [vi.name for vi in getattr(a.graph, role) if vi.name not in init_a]
    names_b = [vi.name for vi in getattr(b.graph, role) if vi.name not in init_b]
    out = [f"{n!r} removed" for n in names_a if n not in names_b]
    out += [f"{n!r} added: {_fmt(tb[n])}" for n in names_b if n not in names_a]
    out += [
        f"{n!r}: {_fmt(ta[n])} -> {_fmt(tb[n])}"
        for n in names_a
        if n in names_b and _fmt(ta[n]) != _fmt(tb[n])
    ]
    return out


def _compare_versions(a: onnx.ModelProto, b: onnx.ModelProto) -> list[str]:
    out = [f"IR version: {a.ir_version} -> {b.ir_version}"] if a.ir_version != b.ir_version else []
    oa = {(o.domain or "ai.onnx"): o.version for o in a.opset_import}
    ob = {(o.domain or "ai.onnx"): o.version for o in b.opset_import}
    for domain in sorted(set(oa) | set(ob)):
        if oa.get(domain) != ob.get(domain):
            out.append(f"opset {domain}: {oa.get(domain, 'absent')} -> {ob.get(domain, 'absent')}")
    return out


def _order(old: Mapping[str, _Part], new: Mapping[str, _Part]) -> Iterator[str]:
    seen: set[str] = set()
    for key in [*old, *new]:
        if key not in seen:
            seen.add(key)
            yield key


def diff(
    old: onnx.ModelProto | str | os.PathLike[str], new: onnx.ModelProto | str | os.PathLike[str]
) -> ModelDiff:
    """Compare two versions of a model part by part (read only; neither model is modified).

    Args:
        old: the model deployed today, ``ModelProto`` or path (external data is hashed from its file).
        new: the candidate, ``ModelProto`` or path.

    Returns:
        A :class:`ModelDiff`: ``identical``, ``changed_parts``, one :class:`PartDiff` per part.

    Raises:
        ModelFileError, UnsafeModelError, VersionError, ModelTooLargeError: a path cannot be read
            safely (as :func:`onnxstitch.load`).
    """
    a, b = _open(old, "old"), _open(new, "new")
    pa, pb = _parts(a.model), _parts(b.model)
    results = []
    for key in _order(pa, pb):
        if key not in pb:
            results.append(PartDiff(key, "removed"))
        elif key not in pa:
            results.append(PartDiff(key, "added"))
        else:
            results.append(_compare_part(key, a, b, pa[key], pb[key]))
    return ModelDiff(
        parts=results,
        inputs=_compare_io(a.model, b.model, "input"),
        outputs=_compare_io(a.model, b.model, "output"),
        versions=_compare_versions(a.model, b.model),
    )
