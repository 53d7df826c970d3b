"""Clean the seams of a merged model with onnxscript's optimizer, keeping what onnxstitch recorded.

Why onnxscript's optimizer (measured by ``scripts/bench/bench_optimize.py``, see
``docs/benchmarks.md``): it cancels a seam's back-to-back Transposes and folds constants like
onnxslim and onnxruntime's offline BASIC level do, with the same numbers; it is faster than onnxslim
(onnxruntime's C++ pass is faster still); it is the only one of the three that keeps node-level
``metadata_props`` (the provenance); and it writes a plain portable ONNX graph, where onnxruntime's
offline output imports onnxruntime's own domains (and, past BASIC, provider-specific ops). It is
already installed with the torch converter.

``optimize`` never mutates its input; it keeps the graph's input and output names and types
(symbolic dims included), the model-level metadata and every node's ``onnxstitch.part``; and by
default it checks that the optimized model computes what the original computes in onnxruntime.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from onnxstitch import _meta
from onnxstitch.errors import MissingDependencyError, StitchError, ValidationError
from onnxstitch.files import ModelLike, as_model

__all__ = ["optimize"]

logger = logging.getLogger(__name__)

_SYMBOL_SIZES = {"batch": 2}
_OTHER_SYMBOL_SIZE = 3


def optimize(
    model: ModelLike,
    *,
    check_parity: bool = True,
    feeds: Mapping[str, np.ndarray] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> onnx.ModelProto:
    """Return an optimized copy of ``model``: seam Transpose pairs cancelled, constants folded.

    Runs ``onnxscript.optimizer.optimize`` (constant folding, dead-code removal and its default
    rewrite rules: Transpose∘Transpose, Cast∘Cast, Reshape∘Reshape, identity removal ...). The
    result keeps the inputs and outputs of ``model`` exactly (names, dtypes, symbolic dims), its
    model-level metadata, and each node's ``onnxstitch.part``: nodes the optimizer re-creates get
    it back by name or output, nodes it creates take the part of their neighbours.

    Args:
        model: a ``ModelProto`` (never mutated) or a path to an ``.onnx`` file.
        check_parity: run both models in onnxruntime on the same inputs and compare the outputs.
        feeds: the inputs for that check (name -> array); by default seeded random inputs built
            from the model's signature (symbolic ``batch`` = 2, other symbols = 3).
        rtol: relative tolerance of the parity check.
        atol: absolute tolerance of the parity check.

    Returns:
        A new ``ModelProto``.

    Raises:
        MissingDependencyError: onnxscript is not installed.
        StitchError: the optimizer failed on this model (the model is named in the message).
        ValidationError: ``check_parity`` is on and an output differs beyond the tolerances.
        ModelFileError: ``model`` is a path that cannot be read.
    """
    original = as_model(model)
    try:
        import onnxscript.optimizer as onnxscript_optimizer
    except ImportError as exc:
        raise MissingDependencyError(
            "onnxscript", extra="optimize", purpose="optimizing a model (optimize=True)"
        ) from exc
    try:
        result = onnxscript_optimizer.optimize(original)
    except Exception as exc:  # a third-party failure on a model we do not control
        raise StitchError(
            f"onnxscript's optimizer failed on graph {original.graph.name!r}: {exc}",
            hint="merge without optimize=True; onnxruntime optimizes the graph when it loads it anyway",
        ) from exc
    if result is original:  # never hand back (and later mutate) the caller's object
        result = onnx.ModelProto()
        result.CopyFrom(original)
    _restore_signature(original, result)
    _restore_model_metadata(original, result)
    _restore_node_parts(original, result)
    logger.debug(
        "optimize %r: %d -> %d nodes", original.graph.name, len(original.graph.node), len(result.graph.node)
    )
    if check_parity:
        _check_parity(original, result, feeds, rtol=rtol, atol=atol)
    return result


def _restore_signature(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    """Put back the original graph inputs/outputs (names, order, types with symbolic dims)."""
    for field in ("input", "output"):
        before = [vi.name for vi in getattr(original.graph, field)]
        after = [vi.name for vi in getattr(result.graph, field)]
        if sorted(before) != sorted(after):
            raise StitchError(
                f"the optimizer changed the graph {field}s of {original.graph.name!r} "
                f"from {before} to {after}",
                hint="merge without optimize=True",
            )
        target = getattr(result.graph, field)
        del target[:]
        target.extend(getattr(original.graph, field))


def _restore_model_metadata(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    kept = _meta.get_props(result)
    for key, value in _meta.get_props(original).items():
        if kept.get(key) != value:
            _meta.set_prop(result, key, value)
    if original.doc_string and not result.doc_string:
        result.doc_string = original.doc_string


def _restore_node_parts(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    """Give every optimized node its ``onnxstitch.*`` node metadata back (or its neighbours' part)."""
    by_name: dict[str, dict[str, str]] = {}
    by_output: dict[str, dict[str, str]] = {}
    for node in original.graph.node:
        props = {k: v for k, v in _meta.get_props(node).items() if k.startswith(_meta.PREFIX)}
        if not props:
            continue
        if node.name:
            by_name[node.name] = props
        for out in node.output:
            by_output[out] = props
    if not by_name and not by_output:
        return  # not a merged model: nothing to keep
    missing: list[onnx.NodeProto] = []
    for node in result.graph.node:
        props = by_name.get(node.name) or next((by_output[o] for o in node.output if o in by_output), {})
        for key, value in props.items():
            if key not in _meta.get_props(node):
                _meta.set_prop(node, key, value)
        if _meta.get_part(node) is None:
            missing.append(node)
    parts = _meta.get_parts(original)
    _parts_from_neighbours(result.graph, missing, fallback=parts[0] if parts else None)


def _parts_from_neighbours(
    graph: onnx.GraphProto, nodes: list[onnx.NodeProto], *, fallback: str | None
) -> None:
    """A node the optimizer created takes the part of its producer, else of its consumer."""
    producer: dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in nodes:  # graph order is topological: producers are settled first
        parts = [_meta.get_part(producer[i]) for i in node.input if i in producer]
        parts += [_meta.get_part(c) for o in node.output for c in consumers.get(o, [])]
        part = next((p for p in parts if p is not None), fallback)
        if part is not None:
            _meta.set_prop(node, _meta.PART, part)


def _dtype_of(vi: onnx.ValueInfoProto) -> np.dtype[Any]:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))


def _random_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    initializers = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        shape = [
            d.dim_value if d.HasField("dim_value") else _SYMBOL_SIZES.get(d.dim_param, _OTHER_SYMBOL_SIZE)
            for d in vi.type.tensor_type.shape.dim
        ]
        dtype = _dtype_of(vi)
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[vi.name] = rng.integers(0, 3, size=shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def _run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def _check_parity(
    original: onnx.ModelProto,
    result: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray] | None,
    *,
    rtol: float,
    atol: float,
) -> None:
    """Run both models on the same inputs; raise ValidationError listing every differing output."""
    given = feeds is not None
    inputs = dict(feeds) if feeds is not None else _random_feeds(original)
    try:
        want = _run(original, inputs)
    except Exception as exc:
        if given:
            raise StitchError(f"the feeds given to optimize() do not run the model: {exc}") from exc
        logger.warning(
            "optimize: parity not checked, random inputs do not run %r (%s); pass feeds=",
            original.graph.name,
            exc,
        )
        return
    got = _run(result, inputs)
    rows = []
    for name, expected in want.items():
        actual = got[name]
        if actual.shape != expected.shape or not np.allclose(actual, expected, rtol=rtol, atol=atol):
            err = np.abs(actual.astype(np.float64) - expected) if actual.shape == expected.shape else None
            detail = "shape " + str(actual.shape) if err is None else f"max abs err {err.max():.3g}"
            rows.append(f"{name}: {detail} (expected shape {expected.shape}, rtol={rtol}, atol={atol})")
    if rows:
        raise ValidationError(
            f"the optimized {original.graph.name!r} differs from the original:\n  " + "\n  ".join(rows),
            report=rows,
            hint="merge without optimize=True and report the model to onnxscript",
        )
