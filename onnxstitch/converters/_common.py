"""Plumbing shared by the converters (torch, Keras/TensorFlow): names, symbolic dims, metadata, checks.

Every function that edits a model edits it **in place** and returns it, and is meant for a model the
converter itself just produced (never a model a user handed in: copy that first). Signatures:

Imports:
    ``require(module, *, package, extra, purpose) -> ModuleType``
        import an optional dependency or raise :class:`MissingDependencyError`.

Reading shapes:
    ``value_dims(value) -> list[int | str | None]``  dims of a ``ValueInfoProto`` (int, symbol or None).
    ``batch_sizes_for(model, default=(1, 7)) -> tuple[int, ...]``  batch sizes a model can be checked
        at: ``default`` when dim 0 of every input is symbolic, else the static dim 0.

Names:
    ``clean_name(name) -> str``  strip a TensorFlow port suffix (``"dense:0"`` -> ``"dense"``).
    ``rename_tensors(model, mapping) -> model``  rename tensors everywhere (nodes, subgraphs, graph
        inputs/outputs, initializers, value_info); refuses a rename onto an existing name.

Symbolic dims:
    ``rename_dims(model, mapping) -> model``  rename symbols (also inside expressions like ``2*s0``)
        in graph inputs, outputs and value_info.
    ``unify_batch_dim(model, symbol="batch", *, inputs=None) -> model``  dim 0 of every graph input
        (or of the listed ``inputs``) that is dynamic becomes ``symbol`` (the old symbols are renamed
        everywhere); dim 0 of an output that is dynamic and not already a symbol of some input's
        other axes becomes ``symbol`` too.

Metadata:
    ``set_producer(model, source) -> model``  ``onnxstitch.source`` = source, producer name/version.
    ``record_layouts(model, layouts) -> model``  ``onnxstitch.layout.<tensor>`` for rank-3/4/5 graph
        inputs/outputs; raises :class:`ConversionError` for unknown tensors, bad layouts, wrong ranks.

Versions:
    ``max_runtime_opset() -> int``  highest ai.onnx opset the installed onnxruntime implements.
    ``check_opset(opset, *, what) -> int | None``  ``None`` passes; else must be in [7, max_runtime_opset()].

Checks:
    ``finalize(model, *, what) -> ModelProto``  ``onnx.checker`` (full) + strict shape inference; returns
        the inferred model (a new object). Raises :class:`ConversionError` naming ``what``.
    ``validate(model, reference, *, what, batch_sizes=None, rtol=1e-4, atol=1e-5, feeds=None,
        metric="scaled")``  ``onnxstitch.runtime.verification.compare_on`` on the described feed
        sets (default: seeded random); raises ValidationError (with the report) on mismatch.

Validation feeds:
    ``example_feed_sets(model, examples, *, batch_sizes=None, seed=0)``  the user's examples, then
        the examples repeated to each batch size and perturbed (ints drawn from the values they
        hold; masks, inputs with at most two values, keep their rows).
    ``user_feed_sets(model, validation_inputs, *, what)``  ``validation_inputs=`` normalised.
"""

from __future__ import annotations

import importlib
import logging
import re
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from onnxstitch import _meta
from onnxstitch._graphs import tensor_names, walk_graphs
from onnxstitch.errors import (
    ConversionError,
    InputError,
    MissingDependencyError,
    StitchError,
    ValidationError,
    VersionError,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_METRIC",
    "DEFAULT_RTOL",
    "batch_sizes_for",
    "check_opset",
    "clean_name",
    "example_feed_sets",
    "finalize",
    "max_runtime_opset",
    "record_layouts",
    "rename_dims",
    "rename_tensors",
    "require",
    "set_producer",
    "unify_batch_dim",
    "user_feed_sets",
    "validate",
    "value_dims",
]

logger = logging.getLogger(__name__)

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5
DEFAULT_BATCH_SIZES = (1, 7)
DEFAULT_METRIC = "scaled"  # see onnxstitch.runtime.verification
_PROTOBUF_LIMIT = 2**31 - 1
_SYMBOL_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --------------------------------------------------------------------------------------- imports
def require(module: str, *, package: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency.

    Raises:
        MissingDependencyError: ``module`` is not installed (names ``package`` and the extra).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package, extra=extra, purpose=purpose) from exc


# -------------------------------------------------------------------------------------- reading
def value_dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """Dims of a tensor ``ValueInfoProto``: an int (static), a str (symbol) or ``None`` (unknown)."""
    out: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def batch_sizes_for(model: onnx.ModelProto, default: Sequence[int] = DEFAULT_BATCH_SIZES) -> tuple[int, ...]:
    """Batch sizes ``model`` can be checked at: ``default`` if dim 0 of every input is dynamic.

    If some input has a static dim 0, that size is the only one a check can use.
    """
    static = set()
    for v in _graph_inputs(model):
        dims = value_dims(v)
        if dims and isinstance(dims[0], int):
            static.add(dims[0])
    if not static:
        return tuple(default)
    return (min(static),)


# ---------------------------------------------------------------------------------------- names
def clean_name(name: str) -> str:
    """Strip a TensorFlow port suffix: ``"dense:0"`` -> ``"dense"`` (``"x:1"`` stays, it is a port)."""
    return name[:-2] if name.endswith(":0") else name


def rename_tensors(model: onnx.ModelProto, mapping: Mapping[str, str]) -> onnx.ModelProto:
    """Rename tensors everywhere in ``model`` (in place) and return it.

    Raises:
        ConversionError: a new name is already used by a tensor that is not being renamed.
    """
    mapping = {k: v for k, v in mapping.items() if k != v}
    if not mapping:
        return model
    used = tensor_names(model)
    clashes = sorted(v for v in set(mapping.values()) if v in used and v not in mapping)
    if clashes or len(set(mapping.values())) != len(mapping):
        raise ConversionError(
            f"cannot rename tensors {dict(mapping)}: the names {clashes or 'given'} are already taken",
            hint="choose input/output names that do not collide with each other or internal tensors",
        )
    for g in walk_graphs(model.graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                node.input[i] = mapping.get(name, name)
            for i, name in enumerate(node.output):
                node.output[i] = mapping.get(name, name)
        for seq in (g.input, g.output, g.value_info, g.initializer):
            for item in seq:
                item.name = mapping.get(item.name, item.name)
    return model


# --------------------------------------------------------------------------------- symbolic dims
def _typed_values(model: onnx.ModelProto) -> Iterable[onnx.ValueInfoProto]:
    g = model.graph
    yield from g.input
    yield from g.output
    yield from g.value_info


def rename_dims(model: onnx.ModelProto, mapping: Mapping[str, str]) -> onnx.ModelProto:
    """Rename symbolic dims (in place), also inside expressions such as ``2*s0``; return ``model``."""
    if not mapping:
        return model

    def sub(param: str) -> str:
        if param in mapping:
            return mapping[param]
        return _SYMBOL_TOKEN.sub(lambda m: mapping.get(m.group(0), m.group(0)), param)

    for v in _typed_values(model):
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param:
                d.dim_param = sub(d.dim_param)
    return model


def _set_symbol(dim: onnx.TensorShapeProto.Dimension, symbol: str) -> None:
    dim.ClearField("dim_value")
    dim.dim_param = symbol


def unify_batch_dim(
    model: onnx.ModelProto, symbol: str = "batch", *, inputs: Collection[str] | None = None
) -> onnx.ModelProto:
    """Give dim 0 of every dynamic graph input and output one symbol (in place); return ``model``.

    ``inputs``: only these graph inputs take part (those proven batch-major, see
    ``converters._batch``); default: all of them.

    Inputs: a dynamic dim 0 (a symbol or unknown) becomes ``symbol``; each old symbol is renamed
    to ``symbol`` everywhere (inputs, outputs, value_info, inside expressions), so an output that
    the exporter already tied to the input follows. Outputs: a dim 0 that is still unknown, or a
    symbol no input uses (tf2onnx's unlinked ``unk__19``), becomes ``symbol``; a dim 0 that is a
    symbol of another input axis (e.g. ``seq``) is left alone, and a static dim 0 is never touched.
    """
    all_inputs = _graph_inputs(model)
    chosen = [v for v in all_inputs if inputs is None or v.name in inputs]
    old: dict[str, str] = {}
    for v in chosen:
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            if dims[0].dim_param and dims[0].dim_param != symbol:
                old[dims[0].dim_param] = symbol
            _set_symbol(dims[0], symbol)
    rename_dims(model, old)
    input_symbols = {d for v in all_inputs for d in value_dims(v) if isinstance(d, str)}
    if not any(isinstance(value_dims(v)[0], str) for v in chosen if value_dims(v)):
        return model  # no input has a dynamic batch: outputs have nothing to be tied to
    for v in model.graph.output:
        dims = v.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            continue
        param = dims[0].dim_param
        if not param or param not in input_symbols:
            if param:
                rename_dims(model, {param: symbol})
            _set_symbol(dims[0], symbol)
    return model


# -------------------------------------------------------------------------------------- metadata
def set_producer(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """Record the source framework (``onnxstitch.source``) and onnxstitch as producer; return ``model``."""
    from onnxstitch import __version__

    exporter = f"{model.producer_name} {model.producer_version}".strip()
    model.producer_name = "onnxstitch"
    model.producer_version = __version__
    if exporter and not model.doc_string:
        model.doc_string = f"converted from {source} (exporter: {exporter})"
    _meta.set_prop(model, _meta.SOURCE, source)
    return model


def record_layouts(model: onnx.ModelProto, layouts: Mapping[str, str]) -> onnx.ModelProto:
    """Record ``{tensor: layout}`` for rank-3/4/5 graph inputs/outputs (in place); return ``model``.

    Layouts: ``NLC``/``NCL`` (rank 3), ``NHWC``/``NCHW`` (rank 4), ``NDHWC``/``NCDHW`` (rank 5).

    Raises:
        ConversionError: every problem at once: a tensor that is no graph input/output, a layout
            name that is not one of those, a layout of another rank than the tensor's.
    """
    from onnxstitch import _layouts

    ends = {v.name: v for v in [*_graph_inputs(model), *model.graph.output]}
    problems = []
    for name, layout in layouts.items():
        if name not in ends:
            problems.append(f"{name!r} is not a graph input or output (those are: {sorted(ends)})")
            continue
        problem = _layouts.check(layout, len(value_dims(ends[name])), what=repr(name))
        if problem:
            problems.append(problem)
    if problems:
        raise ConversionError(
            "cannot record layouts: " + "; ".join(problems),
            hint="layouts={'tensor': 'NHWC'} names a rank-3/4/5 input or output of the converted model "
            "(NLC/NCL, NHWC/NCHW, NDHWC/NCDHW)",
        )
    for name, layout in layouts.items():
        _meta.set_layout(model, name, layout)
    return model


# -------------------------------------------------------------------------------------- versions
def max_runtime_opset() -> int:
    """The highest ai.onnx opset the installed onnxruntime runs (the one probe, ``files._limits``)."""
    from onnxstitch.files._limits import ort_max_opset

    return ort_max_opset()


def check_opset(opset: int | None, *, what: str) -> int | None:
    """Pass ``None`` through; check an explicit opset against onnxruntime.

    Raises:
        VersionError: ``opset`` is below 7 or above what the installed onnxruntime runs.
    """
    if opset is None:
        return None
    top = max_runtime_opset()
    if not isinstance(opset, int) or isinstance(opset, bool) or not 7 <= opset <= top:
        raise VersionError(
            f"{what}: opset {opset!r} is not one the installed onnxruntime can run",
            hint=f"pass an opset between 7 and {top}, or leave it unset for the exporter's default",
        )
    return opset


# ---------------------------------------------------------------------------------------- checks
def drop_unused_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove (in place) opset imports of domains no node uses, e.g. tf2onnx's ``ai.onnx.ml``.

    The default domain always stays; so do the domains of model-local functions and of every node
    in the graph, its subgraphs and the functions.
    """
    used = {""} | {f.domain for f in model.functions}
    for graph in walk_graphs(model.graph):
        used.update(node.domain for node in graph.node)
    for function in model.functions:
        used.update(node.domain for node in function.node)
        for node in function.node:
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    used.update(n.domain for g in walk_graphs(sub) for n in g.node)
    keep = [o for o in model.opset_import if o.domain in used]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return model


def finalize(model: onnx.ModelProto, *, what: str) -> onnx.ModelProto:
    """Drop unused opset imports, run the full ``onnx.checker`` and strict shape inference.

    Returns the inferred (new) model; ``model`` itself must be one the caller owns.

    Models past protobuf's 2 GB limit are checked through a temporary file with external data.

    Raises:
        ConversionError: the model is invalid (names ``what`` and the checker's reason).
    """
    drop_unused_opsets(model)
    try:
        if model.ByteSize() < _PROTOBUF_LIMIT:
            onnx.checker.check_model(model, full_check=True)
            return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        with tempfile.TemporaryDirectory(prefix="onnxstitch-") as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
            onnx.checker.check_model(str(path), full_check=True)
            onnx.shape_inference.infer_shapes_path(str(path), check_type=True, strict_mode=True)
            return onnx.load(str(path))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(
            f"{what}: the exported ONNX model is invalid: {exc}",
            hint="report the model to the exporter's project, or try another opset",
        ) from exc


# ------------------------------------------------------------------------------------ validation
def example_feed_sets(
    model: onnx.ModelProto,
    examples: Mapping[str, Any],
    *,
    batch_sizes: Sequence[int] | None = None,
    seed: int = 0,
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Validation feeds made from the user's example inputs (``{graph input name: array}``).

    The examples themselves, then at each batch size (:func:`batch_sizes_for`) the examples with
    their rows repeated to that size (inputs whose dim 0 is static keep theirs) and perturbed:
    float inputs get seeded normal noise of the input's own spread (its standard deviation, or its
    magnitude, or 1 for all zeros), so an all-zero example still gives varied feeds; integer inputs
    are drawn from the values the examples hold (token ids stay valid ids), except inputs with at
    most two values (a 0/1 mask, a flag, token types), whose rows are kept as given: a mask's
    pattern (right padding) is part of what the model is fed.
    """
    arrays = {name: np.asarray(value) for name, value in examples.items()}
    sizes = tuple(batch_sizes) if batch_sizes is not None else batch_sizes_for(model)
    static0 = {v.name for v in _graph_inputs(model) if (d := value_dims(v)) and isinstance(d[0], int)}
    sets = [("the example inputs", arrays)]
    for k, size in enumerate(sizes):
        rng = np.random.default_rng(seed + k)
        feed = {}
        for name, a in arrays.items():
            rows = a if a.ndim == 0 or name in static0 else np.take(a, np.arange(size) % a.shape[0], axis=0)
            feed[name] = _perturbed(rows, rng)
        sets.append((f"the examples repeated to batch {size} and perturbed (seed {seed + k})", feed))
    return sets


def _perturbed(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if a.size == 0:
        return a.copy()
    if np.issubdtype(a.dtype, np.floating):
        finite = a[np.isfinite(a)].astype(np.float64)
        spread = float(finite.std()) if finite.size else 0.0
        if spread == 0.0:
            spread = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        return (a + rng.standard_normal(a.shape) * spread).astype(a.dtype)
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        held = np.unique(a)
        if held.size <= 2:  # a mask or a flag: its pattern (e.g. right padding) is kept, row by row
            return a.copy()
        return rng.choice(held, size=a.shape).astype(a.dtype)
    return a.copy()


def user_feed_sets(
    model: onnx.ModelProto, validation_inputs: Any, *, what: str
) -> list[tuple[str, dict[str, Any]]]:
    """Normalise ``validation_inputs=`` to described feed sets keyed by graph input name.

    Accepted: one input set or a list of them; a set is a dict ``{input name: array}``, one array
    (a one-input model) or a tuple/list of arrays in input order. Torch tensors are accepted.

    Raises:
        InputError: a set does not fit the model's inputs (names or count).
    """
    from onnxstitch.runtime._feeds import to_numpy

    names = [v.name for v in _graph_inputs(model)]
    one = isinstance(validation_inputs, Mapping) or not isinstance(validation_inputs, tuple | list)
    sets = [validation_inputs] if one else list(validation_inputs)
    out: list[tuple[str, dict[str, Any]]] = []
    for i, given in enumerate(sets):
        if isinstance(given, Mapping):
            feed = {str(k): to_numpy(str(k), v) for k, v in given.items()}
        else:
            values = list(given) if isinstance(given, tuple | list) else [given]
            if len(values) != len(names):
                raise InputError(
                    f"{what}: validation_inputs[{i}] has {len(values)} arrays for the inputs {names}",
                    hint="give each set as a dict {input name: array}, or a tuple in input order",
                )
            feed = {n: to_numpy(n, v) for n, v in zip(names, values, strict=True)}
        unknown = sorted(set(feed) - set(names))
        if unknown or set(feed) != set(names):
            raise InputError(
                f"{what}: validation_inputs[{i}] names {sorted(feed)}, the model's inputs are {names}",
                hint="give each set as a dict {input name: array} with every input",
            )
        out.append((f"validation_inputs[{i}]", feed))
    if not out:
        raise InputError(f"{what}: validation_inputs is empty", hint="give at least one input set, or None")
    return out


def validate(
    model: onnx.ModelProto,
    reference: Callable[..., Any],
    *,
    what: str,
    batch_sizes: Sequence[int] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    feeds: Any = None,
    metric: str = DEFAULT_METRIC,
) -> Any:
    """Compare ``model`` with ``reference`` on feed sets; raise on any mismatch.

    ``feeds``: described feed sets ``[(description, {name: array})]`` (from
    :func:`example_feed_sets` or :func:`user_feed_sets`); default: seeded random inputs at
    ``batch_sizes`` (default :func:`batch_sizes_for`). ``reference`` is called with the model's
    inputs as positional numpy arrays, in graph-input order (see ``onnxstitch.runtime.verification``,
    which also defines ``metric``).

    Returns:
        The passing ``VerifyReport``.

    Raises:
        ValidationError: some output differs beyond the tolerance, or is uninformative (carries the
            per-output table and the feeds used).
        StitchError: the reference or the ONNX model could not run (message names ``what``).
    """
    from onnxstitch.runtime.verification import compare_on, random_feeds

    if feeds is None:
        sizes = tuple(batch_sizes) if batch_sizes is not None else batch_sizes_for(model)
        try:
            feeds = [
                (f"seeded random inputs (seed {i}), batch {b}", random_feeds(model, b, seed=i))
                for i, b in enumerate(sizes)
            ]
        except InputError as exc:  # e.g. a string input: no random data stands for real words
            raise ConversionError(
                f"{what}: validation needs inputs of its own: {exc.args[0].splitlines()[0]}",
                hint="give real inputs to validate on, e.g. validation_inputs={'words': "
                "np.array([['cat', 'dog']], dtype=object)}",
            ) from exc
    logger.info(
        "validating %s on %d feed set(s) (%s, rtol=%g, atol=%g)", what, len(feeds), metric, rtol, atol
    )
    try:
        report = compare_on(model, reference, feeds, rtol=rtol, atol=atol, metric=metric)
    except StitchError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"{what}: validation could not run: {type(exc).__name__}: {exc}",
            hint="check that the native model runs on the validation feeds; give inputs it accepts "
            "with validation_inputs=",
        ) from exc
    if not report:
        raise ValidationError(
            f"{what}: the converted ONNX model does not compute what the native model computes:\n{report}",
            report=report,
            hint=_mismatch_hint(report),
        )
    return report


def _mismatch_hint(report: Any) -> str:
    if all("uninformative" in r.note for r in report.failures):
        return (
            "the failing outputs barely vary on these feeds, so nothing was proven: validate on inputs "
            "that exercise the model (validation_inputs=) or give it trained(-like) weights and "
            "BatchNorm statistics"
        )
    return (
        "a deterministic model matches to float precision, so this is a wrong conversion: do not ship "
        "it; if the model is random by design (dropout or noise at inference), make it deterministic "
        "before converting; loosen rtol/atol only for numerical noise, e.g. fp16 weights"
    )
