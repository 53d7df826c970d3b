"""Keras / TensorFlow → ONNX through tf2onnx's Python API, made strict, clean and checked.

What :func:`from_keras` adds to ``tf2onnx.convert``:

* the caller's model is never edited (tf2onnx's ``from_keras`` renames the model's outputs while it
  runs): we trace our own ``tf.function`` that *calls* the model with ``training=False``;
* captured constants (a ``Normalization`` layer's statistics) are frozen into the graph, lookup
  tables are carried (``StringLookup`` → ``CategoryMapper``), Keras's grouped convolutions are
  inlined and ``Erfc`` (exact ``gelu``) is handled (see ``_tf2onnx``); the graph's inputs are
  checked to be exactly the model's inputs;
* a model, tf.function or SavedModel whose graphs can touch files, the network or Python is refused
  before anything runs, unless ``trusted`` (see ``_tf_ops``);
* tf2onnx's Python API carries on past ops it cannot convert and reports success; we refuse the
  result, listing every unsupported op type and the nodes that use it;
* inputs and outputs keep the Keras names (never ``Identity:0``); dim 0 of every input and output is
  one symbol ``batch``; other dynamic dims get stable names (``<tensor>_dim<axis>``);
* rank-3/4/5 inputs/outputs get a layout only from evidence: a conv, pooling, channel normalization
  ... reads or writes them (the ONNX graph and the Keras layers' ``data_format``);
* importing tf2onnx sets ``TF_CPP_MIN_LOG_LEVEL``; we put the caller's value back;
* the result passes ``onnx.checker`` (full) and, by default, matches the native model at batch 1 and 7.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from onnxstitch import _layouts
from onnxstitch._graphs import tensor_names, walk_graphs
from onnxstitch.converters import _batch, _common
from onnxstitch.converters._keras_sources import (
    KERAS_FILE_SUFFIXES,
    Signature,
    Traced,
    load_keras_file,
    refuse_unsafe_graph,
    safe_in,
    safe_out,
    trace,
    trace_keras_model,
    trace_saved_model,
    trace_tf_function,
)
from onnxstitch.converters._tf2onnx import OpHandler, run_tf2onnx
from onnxstitch.converters._tf_ops import unsupported_op_hint
from onnxstitch.errors import (
    ConversionError,
    InputError,
    ModelFileError,
    UnsupportedOpsError,
    VersionError,
)

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "from_keras"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MAX_OPSET = 18  # tf2onnx 1.17 refuses anything newer; compose raises the opset at merge time
MIN_OPSET = 9
_ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_PURPOSE = "Converting a Keras/TensorFlow model"


def from_keras(
    model_or_path: Any,
    *,
    input_signature: Signature | None = None,
    opset: int | None = None,
    validate: bool = True,
    rtol: float = _common.DEFAULT_RTOL,
    atol: float = _common.DEFAULT_ATOL,
    trusted: bool = False,
    layouts: Mapping[str, str] | None = None,
    op_handlers: Mapping[str, OpHandler] | None = None,
    validation_inputs: Any = None,
    metric: str = _common.DEFAULT_METRIC,
) -> onnx.ModelProto:
    """Convert a Keras model, a Keras file, a SavedModel directory or a ``tf.function`` to ONNX.

    Args:
        model_or_path: a Keras 3 model (functional, Sequential, subclassed; built), a path to a
            ``.keras`` / ``.h5`` file, a path to a SavedModel directory (its ``serving_default``
            signature), or a ``tf.function`` / concrete function.
        input_signature: the inputs, when the source does not say: a ``tf.TensorSpec`` or a
            ``(shape, dtype)`` pair, or a list (positional) or dict (by name) of them. Required for a
            ``tf.function`` without its own ``input_signature``. Spec names become input names.
            Derived by default from ``model.inputs`` (functional, Sequential with an ``Input`` or
            built with ``build(shape)``) or a subclassed model's build config (float32 inputs).
        opset: ai.onnx opset of the result, between 9 and 18 (tf2onnx's limit); default 18.
        validate: run the native model and the ONNX model on seeded random inputs at batch 1 and 7
            (or on ``validation_inputs``) and compare every output (see ``metric``).
        rtol: relative tolerance of the validation (fp32 default 1e-4).
        atol: absolute tolerance of the validation (default 1e-5).
        trusted: load a ``.keras`` / ``.h5`` file with Keras ``safe_mode`` **off**, which runs any
            Python code stored in it (``Lambda`` layers), and load or run a SavedModel, model or
            ``tf.function`` even if its graphs hold ops that read/write files, reach the network or
            call Python (loading runs a SavedModel's initializers). Only for files and code you
            produced yourself. Without it such sources are refused before anything runs.
        layouts: ``{tensor: layout}`` overrides/additions for rank-3/4/5 inputs/outputs
            (``NLC``/``NCL``, ``NHWC``/``NCHW``, ``NDHWC``/``NCDHW``). Recorded by themselves, from
            evidence only: an input that a conv, pooling, channel normalization, up-sampling...
            reads (in the converted graph or by its Keras layer's ``data_format``), an output such
            a layer writes. ``keras.config.image_data_format()`` alone is no evidence: a Dense,
            attention or Permute output records nothing.
        op_handlers: ``{TensorFlow op type: handler}`` for ops tf2onnx has no handler for, passed to
            tf2onnx as ``custom_op_handlers`` (``handler(ctx, node, name, args)`` rewrites ``node`` in
            tf2onnx's graph ``ctx`` into ONNX ops). ``Erfc`` (Keras's exact ``gelu``) is built in.
        validation_inputs: inputs to validate on instead of random ones: one input set or a list of
            them; a set is a dict ``{input name: array}``, one array, or a tuple in input order.
        metric: ``"scaled"`` (default): per output, ``max|onnx - native| <= atol + rtol *
            max|native|``; ``"elementwise"``: every element, ``|onnx - native| <= atol + rtol *
            |native|``. An output that is constant to within the tolerance fails as uninformative.

    Returns:
        A new self-contained ``onnx.ModelProto``: clean input/output names (Keras input layer names or
        dict keys; outputs by ``output_names`` / dict keys / the last layer of a Sequential; a SavedModel
        keeps its signature's names; otherwise ``input_<i>`` / ``output`` / ``output_<i>``), a shared
        ``batch`` dim 0 on inputs and outputs (with validation on, an output whose dim 0 did not follow
        the batch size is given ``<output>_dim0`` instead), other dynamic dims named
        ``<tensor>_dim<axis>``, metadata ``onnxstitch.source = "keras"`` (also for SavedModels and
        tf.functions) and the layouts.

    Raises:
        MissingDependencyError: tensorflow, keras or tf2onnx is not installed (extra ``keras``).
        UnsafeModelError: a Keras file would run stored Python code (``Lambda``), or a SavedModel,
            model or tf.function holds file-system / network / Python-callback ops, and ``trusted``
            is off.
        ModelFileError: a path that is no Keras file or SavedModel, or one that cannot be read.
        InputError: an unsupported ``model_or_path`` type or an ``input_signature`` that does not fit.
        VersionError: ``opset`` outside 9..18.
        UnsupportedOpsError: TensorFlow ops tf2onnx cannot express in ONNX (all of them, with nodes).
        ConversionError: tracing or conversion failed, the converted graph's inputs are not exactly
            the model's inputs, or the result is not a valid ONNX model.
        ValidationError: the ONNX model's outputs differ from the native model's (per-output table).
    """
    tf = _common.require("tensorflow", package="tensorflow", extra="keras", purpose=_PURPOSE)
    _common.require("keras", package="keras", extra="keras", purpose=_PURPOSE)
    target = _check_opset(opset)
    traced = _resolve(model_or_path, input_signature, tf=tf, trusted=trusted)
    logger.info("tracing %s", traced.what)
    trace(traced)
    refuse_unsafe_graph(traced, trusted=trusted)
    with _restored_env("TF_CPP_MIN_LOG_LEVEL"):
        _common.require("tf2onnx.convert", package="tf2onnx", extra="keras", purpose=_PURPOSE)
        logger.info("converting %s with tf2onnx (opset %d)", traced.what, target)
        raw = run_tf2onnx(traced, target, op_handlers=op_handlers)
    logger.info("checking the ONNX model of %s", traced.what)
    model = _clean(raw, traced, layouts, opset=target)
    if validate:
        feeds = None
        if validation_inputs is not None:
            feeds = _common.user_feed_sets(model, validation_inputs, what=traced.what)
        report = _common.validate(
            model, traced.reference, what=traced.what, rtol=rtol, atol=atol, feeds=feeds, metric=metric
        )
        _unclaim_batch(model, report)
    logger.info("converted %s: inputs %s, outputs %s", traced.what, traced.input_names, traced.output_names)
    return model


def _check_opset(opset: int | None) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise VersionError(
            f"from_keras: opset {opset!r} is not supported; tf2onnx converts to opsets "
            f"{MIN_OPSET}..{MAX_OPSET}",
            hint=f"pass opset={MAX_OPSET} (or leave it unset); merge/compose raise the opset later",
        )
    return opset


def _resolve(source: Any, signature: Signature | None, *, tf: Any, trusted: bool) -> Traced:
    """Dispatch on the kind of source; load files."""
    import keras

    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            if not any((path / n).is_file() for n in ("saved_model.pb", "saved_model.pbtxt")):
                raise ModelFileError(
                    f"{str(path)!r} is a directory but not a SavedModel (no saved_model.pb)",
                    hint="pass a SavedModel directory, a .keras/.h5 file, or a model object",
                )
            return trace_saved_model(path, signature, tf, trusted=trusted)
        if not path.is_file():
            raise ModelFileError(f"{str(path)!r} does not exist")
        if path.suffix not in KERAS_FILE_SUFFIXES:
            raise ModelFileError(
                f"{str(path)!r} is not a Keras model file (expected {', '.join(KERAS_FILE_SUFFIXES)})",
                hint="ONNX files need no conversion: use onnxstitch.load(path)",
            )
        return trace_keras_model(load_keras_file(path, trusted=trusted), signature, tf)
    if isinstance(source, keras.Model):
        return trace_keras_model(source, signature, tf)
    if isinstance(source, tf.types.experimental.ConcreteFunction):
        if signature is None:
            signature = [s for s in tf.nest.flatten(source.structured_input_signature)]
        return trace_tf_function(source, signature, tf)
    if isinstance(source, tf.types.experimental.PolymorphicFunction):
        return trace_tf_function(source, signature, tf)
    raise InputError(
        f"from_keras cannot convert a {type(source).__module__}.{type(source).__name__}",
        hint="pass a keras.Model, a .keras/.h5 path, a SavedModel directory or a tf.function",
    )


@contextmanager
def _restored_env(name: str) -> Iterator[None]:
    """Put environment variable ``name`` back as it was (tf2onnx sets TF_CPP_MIN_LOG_LEVEL=3)."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def unsupported_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    """``{op_type: [node names]}`` of nodes (also in subgraphs) that are not standard ONNX ops.

    A node is standard when its domain is ai.onnx or ai.onnx.ml and the op exists at the model's
    opset of that domain. tf2onnx leaves an op it cannot convert as a node of the TF op type.
    """
    opsets = {o.domain or "": o.version for o in model.opset_import}
    found: dict[str, list[str]] = defaultdict(list)
    for graph in walk_graphs(model.graph):
        for node in graph.node:
            domain = "" if node.domain == "ai.onnx" else node.domain
            if not _is_standard(node.op_type, domain, opsets.get(domain)):
                label = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
                found[label].append(node.name or "<unnamed>")
    return dict(found)


def _is_standard(op_type: str, domain: str, version: int | None) -> bool:
    if domain not in _ONNX_DOMAINS or version is None:
        return False
    try:
        onnx.defs.get_schema(op_type, max_inclusive_version=version, domain=domain)
    except onnx.defs.SchemaError:
        return False
    return True


def _clean(
    raw: onnx.ModelProto, traced: Traced, layouts: Mapping[str, str] | None, *, opset: int
) -> onnx.ModelProto:
    """Refuse unsupported ops; names, dims, metadata; full check. ``raw`` is ours to edit."""
    bad = unsupported_ops(raw)
    if bad:
        listing = "; ".join(f"{op} (nodes: {', '.join(nodes)})" for op, nodes in sorted(bad.items()))
        raise UnsupportedOpsError(
            f"{traced.what}: tf2onnx could not convert {sum(map(len, bad.values()))} node(s) of "
            f"{len(bad)} TensorFlow op type(s) to ONNX: {listing}",
            ops=bad,
            hint=unsupported_op_hint(bad, opset=opset, max_opset=MAX_OPSET),
        )
    _rename_ends(raw, traced)
    proof = _batch.prove_onnx(raw, what=traced.what)  # tf2onnx leaves the inputs' dim 0 unlinked
    inits = {t.name for t in raw.graph.initializer}
    names = [v.name for v in raw.graph.input if v.name not in inits]
    _common.unify_batch_dim(raw, inputs=None if proof is None else [names[i] for i in proof.inputs])
    if proof is not None:
        _batch.apply_proof(raw, proof)
    _stable_dims(raw)
    _common.set_producer(raw, "keras")
    _common.record_layouts(raw, _layouts_for(raw, traced, layouts))
    return _common.finalize(raw, what=traced.what)


def _rename_ends(model: onnx.ModelProto, traced: Traced) -> None:
    """``in_000``/``out_000`` → the Keras names; output order as in the model."""
    mapping = {safe_in(i): n for i, n in enumerate(traced.input_names)}
    mapping.update({safe_out(i): n for i, n in enumerate(traced.output_names)})
    present = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    missing = sorted(k for k in mapping if k not in present)
    if missing:
        raise ConversionError(f"{traced.what}: tf2onnx's result lacks the tensors {missing}")
    taken = tensor_names(model) - set(mapping)
    clashes = {n: f"{n}__internal" for n in set(mapping.values()) & taken}
    _common.rename_tensors(model, clashes)
    _common.rename_tensors(model, mapping)
    order = {n: i for i, n in enumerate(traced.output_names)}
    outputs = sorted(model.graph.output, key=lambda v: order.get(v.name, len(order)))
    kept = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in outputs]
    del model.graph.output[:]
    model.graph.output.extend(kept)


def _unclaim_batch(model: onnx.ModelProto, report: Any) -> None:
    """An output whose dim 0 was labelled ``batch`` but did not follow the batch size at run time
    (e.g. a flattened tensor of a tf.function) gets its own symbol ``<output>_dim0`` instead."""
    wrong = {
        row.output
        for row in getattr(report, "rows", ())
        if row.batch is not None and row.shape and row.shape[0] != row.batch
    }
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if value.name in wrong and dims and dims[0].dim_param == "batch":
            logger.info(
                "output %r: dim 0 does not follow the batch size; symbol %s_dim0", value.name, value.name
            )
            dims[0].dim_param = f"{value.name}_dim0"


def _stable_dims(model: onnx.ModelProto) -> None:
    """tf2onnx's ``unk__N`` / unknown dims (other than the batch) → ``<tensor>_dim<axis>``."""
    mapping: dict[str, str] = {}
    inits = {i.name for i in model.graph.initializer}
    ends = [v for v in model.graph.input if v.name not in inits] + list(model.graph.output)
    for value in ends:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            param = dim.dim_param
            if not param:
                dim.dim_param = f"{value.name}_dim{axis}"
            elif param.startswith("unk__") and param not in mapping:
                mapping[param] = f"{value.name}_dim{axis}"
    _common.rename_dims(model, mapping)


def _layouts_for(model: onnx.ModelProto, traced: Traced, given: Mapping[str, str] | None) -> dict[str, str]:
    """Layouts to record: the evidence of the graph and of the Keras layers, then the user's."""
    ends = {v.name: len(v.type.tensor_type.shape.dim) for v in [*model.graph.input, *model.graph.output]}
    from_layers = {
        name: {lay for lay in layouts if _layouts.rank_of(lay) == ends.get(name)}
        for name, layouts in (traced.layer_layouts or {}).items()
    }
    out = _layouts.resolve([_layouts.evidence(model), from_layers])
    out.update(dict(given or {}))
    return out
