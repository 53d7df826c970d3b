"""Keys and helpers for what onnxstitch remembers inside a model's ``metadata_props``.

Everything lives under keys that start with ``onnxstitch.`` so that every other tool of the ONNX
ecosystem can read (and ignore) it.

Model-level keys:
    ``onnxstitch.source``         the framework a model came from: "torch", "keras", "onnx", "merged".
    ``onnxstitch.layout.<name>``  the layout of a rank-3/4/5 graph input/output: "NLC"/"NCL",
                                  "NHWC"/"NCHW" or "NDHWC"/"NCDHW" (see ``onnxstitch._layouts``).
    ``onnxstitch.parts``          JSON list of the part keys of a merged model, in merge order.
    ``onnxstitch.precision``      JSON written by ``ox.quantize``/``ox.to_fp16``: ``{"parts": {part:
                                  precision}, "settings": {...}, "gate": {"passed", "rows", ...}}``.

Node-level keys:
    ``onnxstitch.part``           the key of the part a node of a merged model came from.
"""

from __future__ import annotations

import json

import onnx

PREFIX = "onnxstitch."
SOURCE = PREFIX + "source"
LAYOUT_PREFIX = PREFIX + "layout."
PARTS = PREFIX + "parts"
PART = PREFIX + "part"
PRECISION = PREFIX + "precision"

LAYOUTS = ("NLC", "NCL", "NHWC", "NCHW", "NDHWC", "NCDHW")  # channels last / first at ranks 3, 4, 5


def get_props(proto: onnx.ModelProto | onnx.NodeProto) -> dict[str, str]:
    """Return ``metadata_props`` of a model or node as a dict."""
    return {p.key: p.value for p in proto.metadata_props}


def set_prop(proto: onnx.ModelProto | onnx.NodeProto, key: str, value: str) -> None:
    """Set (or replace) one ``metadata_props`` entry in place. Only for objects we own."""
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
            return
    entry = proto.metadata_props.add()
    entry.key = key
    entry.value = value


def del_prop(proto: onnx.ModelProto | onnx.NodeProto, key: str) -> None:
    """Remove one ``metadata_props`` entry in place, if present."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != key]
    del proto.metadata_props[:]
    for k, v in keep:
        entry = proto.metadata_props.add()
        entry.key = k
        entry.value = v


def get_layouts(model: onnx.ModelProto) -> dict[str, str]:
    """Return ``{tensor_name: layout}`` for the graph inputs/outputs with a known layout."""
    return {k[len(LAYOUT_PREFIX) :]: v for k, v in get_props(model).items() if k.startswith(LAYOUT_PREFIX)}


def set_layout(model: onnx.ModelProto, tensor: str, layout: str) -> None:
    """Record the layout of a graph input/output of ``model`` (in place; only for models we own)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    set_prop(model, LAYOUT_PREFIX + tensor, layout)


def get_source(model: onnx.ModelProto) -> str | None:
    """Return the framework a model came from, if recorded."""
    return get_props(model).get(SOURCE)


def get_part(node: onnx.NodeProto) -> str | None:
    """Return the part key a node of a merged model came from, if recorded."""
    return get_props(node).get(PART)


def get_parts(model: onnx.ModelProto) -> list[str]:
    """Return the part keys of a merged model, in merge order (empty if not merged)."""
    raw = get_props(model).get(PARTS)
    return list(json.loads(raw)) if raw else []


# Appended by the compose core: the resolved wiring of a merged model (JSON: parts, links, inputs,
# outputs, per-part layouts/sources), read back by ``extract(part=...)`` and ``replace``.
SPEC = PREFIX + "spec"
