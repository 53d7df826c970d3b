"""Turn each Keras/TensorFlow source into one traceable ``tf.function`` with a flat signature.

Every source (a Keras model object, a ``.keras``/``.h5`` file, a SavedModel directory, a
``tf.function``) becomes a :class:`Traced`: a ``tf.function`` taking the inputs as flat positional
tensors with safe placeholder names (``in_000`` ...) and returning a dict of safe output names
(``out_000`` ...), plus the clean names those placeholders get in the ONNX graph, an eager reference
for validation and the layouts known from the source. The user's model is only *called*, never
edited: no renaming, no recompiling, no re-building of a built model.

TensorFlow and Keras are imported lazily inside the functions.
"""

from __future__ import annotations

import inspect
import json
import logging
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxstitch.converters._keras_layouts import layer_layouts
from onnxstitch.converters._tf_ops import op_family, scan_graph_def, scan_saved_model
from onnxstitch.errors import ConversionError, InputError, ModelFileError, UnsafeModelError

logger = logging.getLogger(__name__)

KERAS_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")
MAX_CONFIG_BYTES = 64 * 2**20  # a model's architecture JSON; a bigger one is a zip bomb, not a model

# One input described by the user: a tf.TensorSpec, or (shape, dtype) with dtype a numpy-style name.
SpecLike = Any
Signature = SpecLike | Sequence[SpecLike] | Mapping[str, SpecLike]


@dataclass
class Traced:
    """A source ready for tf2onnx.

    Attributes:
        function: a ``tf.function`` over flat positional tensors returning ``{safe_out: tensor}``.
        specs: its input signature (``tf.TensorSpec`` named ``in_000``, ``in_001``, ...).
        input_names: the clean ONNX name of each input, in order.
        output_names: filled in when ``function`` is traced: the clean name of each output, in order.
        reference: eager native computation: numpy arrays in input order -> list in output order.
        layer_layouts: ``{input/output name: layouts}`` that the Keras layers give evidence for
            (``converters._keras_layouts``); ``None`` for graphs and tf.functions.
        what: a label of the source for messages.
        trackable: the object owning the function's variables and lookup tables (the Keras model,
            the loaded SavedModel, the tf.function), where tf2onnx looks for tables to export.
    """

    function: Any
    specs: list[Any]
    input_names: list[str]
    output_names: list[str]
    reference: Callable[..., list[np.ndarray[Any, Any]]]
    layer_layouts: dict[str, set[str]] | None = None
    what: str = "model"
    trackable: Any = None


def safe_in(i: int) -> str:
    """Placeholder name of input ``i`` inside TensorFlow (always a valid TF op name)."""
    return f"in_{i:03d}"


def safe_out(i: int) -> str:
    """Placeholder name of output ``i``; zero-padded so TF's sorted dict order is the output order."""
    return f"out_{i:03d}"


# ------------------------------------------------------------------------------------- signatures
def normalize_signature(signature: Signature, tf: Any) -> tuple[list[Any], list[str | None], str]:
    """Normalize a user signature to ``(specs, names, structure)``.

    ``structure`` is "single", "list" or "dict" (how to call a Keras model with the inputs).

    Raises:
        InputError: an entry is neither a ``tf.TensorSpec`` nor ``(shape, dtype)``.
    """
    if isinstance(signature, Mapping):
        items = list(signature.items())
        specs = [_one_spec(v, tf, where=repr(k)) for k, v in items]
        return specs, [str(k) for k, _ in items], "dict"
    if _is_one_spec(signature, tf):
        spec = _one_spec(signature, tf, where="input_signature")
        return [spec], [spec.name or None], "single"
    if isinstance(signature, Sequence) and not isinstance(signature, str | bytes):
        specs = [_one_spec(v, tf, where=f"input_signature[{i}]") for i, v in enumerate(signature)]
        return specs, [s.name or None for s in specs], "list"
    raise InputError(
        f"input_signature must be a tf.TensorSpec, a (shape, dtype) pair, or a list/dict of them; "
        f"got {type(signature).__name__}",
        hint="e.g. input_signature=[tf.TensorSpec((None, 224, 224, 3), tf.float32, name='image')]",
    )


def _is_one_spec(value: Any, tf: Any) -> bool:
    if isinstance(value, tf.TensorSpec):
        return True
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], Sequence)
        and (isinstance(value[1], str) or not isinstance(value[1], Sequence | tf.TensorSpec))
    )


def _as_tf_dtype(dtype: Any, tf: Any) -> Any:
    try:
        return tf.as_dtype(dtype)  # "float32", np.float32, tf.float32
    except TypeError:
        return tf.as_dtype(np.dtype(dtype))  # "f4", "<f4", ...


def _one_spec(value: Any, tf: Any, *, where: str) -> Any:
    if isinstance(value, tf.TensorSpec):
        return value
    if _is_one_spec(value, tf):
        shape, dtype = value
        try:
            return tf.TensorSpec([None if d is None else int(d) for d in shape], _as_tf_dtype(dtype, tf))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: cannot read {value!r} as (shape, dtype): {exc}") from exc
    raise InputError(
        f"{where}: expected a tf.TensorSpec or a (shape, dtype) pair, got {value!r}",
        hint="e.g. ((None, 32), 'float32')",
    )


def placeholder_specs(specs: Sequence[Any], tf: Any) -> list[Any]:
    """The same specs, renamed ``in_000`` ... (the names TensorFlow and tf2onnx see)."""
    return [tf.TensorSpec(s.shape, s.dtype, name=safe_in(i)) for i, s in enumerate(specs)]


def dedupe(names: Sequence[str], taken: Sequence[str] = ()) -> list[str]:
    """Make ``names`` unique among themselves and ``taken`` by suffixing ``_1``, ``_2``, ..."""
    seen = set(taken)
    out = []
    for name in names:
        new, k = name, 1
        while new in seen:
            new, k = f"{name}_{k}", k + 1
        if new != name:
            logger.warning("tensor name %r is taken; the ONNX tensor is called %r", name, new)
        seen.add(new)
        out.append(new)
    return out


# ----------------------------------------------------------------------------------- outputs
def flatten_outputs(result: Any, default_names: Sequence[str]) -> tuple[list[Any], list[str]]:
    """Flatten a model's result into tensors and names (dict keys, else ``default_names``)."""
    if isinstance(result, Mapping):
        return list(result.values()), [str(k) for k in result]
    if isinstance(result, list | tuple):
        tensors = list(result)
        if len(default_names) == len(tensors):
            return tensors, list(default_names)
        return tensors, [f"output_{i}" for i in range(len(tensors))]
    return [result], [default_names[0] if len(default_names) == 1 else "output"]


def _to_numpy(value: Any) -> np.ndarray[Any, Any]:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def make_traced(
    forward: Callable[[list[Any]], Any],
    specs: list[Any],
    input_names: list[str],
    default_outputs: Sequence[str],
    tf: Any,
    *,
    what: str,
) -> Traced:
    """Wrap ``forward(flat_tensors) -> result`` into a :class:`Traced`.

    ``forward`` is traced once by TensorFlow (to name the outputs) and called eagerly for the reference.
    """
    out_names: list[str] = []

    def graph_fn(*args: Any) -> dict[str, Any]:
        tensors, names = flatten_outputs(forward(list(args)), default_outputs)
        out_names[:] = dedupe(names, taken=input_names)
        return {safe_out(i): t for i, t in enumerate(tensors)}

    function = tf.function(graph_fn, input_signature=placeholder_specs(specs, tf))

    def reference(*arrays: Any) -> list[np.ndarray[Any, Any]]:
        args = [tf.convert_to_tensor(a, dtype=s.dtype) for a, s in zip(arrays, specs, strict=True)]
        tensors, _ = flatten_outputs(forward(args), default_outputs)
        return [_to_numpy(t) for t in tensors]

    return Traced(function, function.input_signature, list(input_names), out_names, reference, None, what)


def trace(traced: Traced) -> None:
    """Trace ``traced.function`` now (fills ``output_names``), wrapping TensorFlow's errors.

    Raises:
        ConversionError: tracing failed (wrong signature for the model, a Python error in it).
    """
    try:
        traced.function.get_concrete_function(*traced.specs)
    except Exception as exc:
        sig = [
            (n, tuple(s.shape), s.dtype.name) for n, s in zip(traced.input_names, traced.specs, strict=True)
        ]
        raise ConversionError(
            f"{traced.what}: TensorFlow could not trace the model with the input signature {sig}: "
            f"{type(exc).__name__}: {exc}",
            hint="check input_signature (shapes, dtypes, number of inputs) against the model's call()",
        ) from exc


# ------------------------------------------------------------------------------------- files
def scan_keras_file(path: Path) -> list[str]:
    """Return the names of ``Lambda`` layers in a ``.keras``/``.h5`` file's config, without loading it.

    Raises:
        ModelFileError: the file is not a readable Keras archive / HDF5 file.
    """
    config = _read_keras_config(path)
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                cfg = node.get("config")
                found.append(str(cfg.get("name", "?")) if isinstance(cfg, dict) else "?")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found


def _read_keras_config(path: Path) -> Any:
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                size = archive.getinfo("config.json").file_size
                if size > MAX_CONFIG_BYTES:
                    raise ModelFileError(
                        f"{str(path)!r}: config.json claims {size} bytes (limit {MAX_CONFIG_BYTES}); "
                        "not a Keras model config"
                    )
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
            if raw is None:
                raise ModelFileError(
                    f"{str(path)!r} is an HDF5 file without a Keras model config (weights only?)",
                    hint="load the architecture in Python, load_weights() into it, pass the model object",
                )
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{str(path)!r} is not a readable Keras model file: {exc}") from exc


def load_keras_file(path: Path, *, trusted: bool) -> Any:
    """Load a ``.keras``/``.h5`` file with Keras ``safe_mode`` on unless ``trusted``.

    Raises:
        UnsafeModelError: the file holds a ``Lambda`` layer (or anything else safe mode refuses).
        ModelFileError: Keras cannot read the file.
    """
    import keras

    if not trusted:
        lambdas = scan_keras_file(path)
        if lambdas:
            raise UnsafeModelError(
                f"{str(path)!r} contains Lambda layer(s) {lambdas}: loading it would run arbitrary "
                "Python code stored in the file, so it was not loaded",
                hint="convert a trusted model from code: build it in Python (keras.Model / Sequential "
                "with the Lambda defined in your source), load_weights() if needed, and pass the model "
                "object to from_keras; or pass trusted=True if you wrote this file yourself",
            )
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=not trusted)
    except ValueError as exc:
        if "safe_mode" in str(exc):
            raise UnsafeModelError(
                f"{str(path)!r}: Keras safe mode refused to load it: {exc}",
                hint="convert a trusted model from code and pass the object, or pass trusted=True",
            ) from exc
        raise _load_error(path, exc) from exc
    except (OSError, TypeError, KeyError, AttributeError) as exc:
        raise _load_error(path, exc) from exc


def _load_error(path: Path, exc: BaseException) -> ModelFileError:
    """Keras' deserialization errors embed whole configs: keep the innermost reason only."""
    text = str(exc)
    marker = "Exception encountered: "
    reason = text[text.rindex(marker) + len(marker) :] if marker in text else text
    reason = reason.split("Full object config:")[0].strip()
    if len(reason) > 600:
        reason = reason[:600] + " ..."
    return ModelFileError(
        f"{str(path)!r}: Keras could not load the model: {reason}",
        hint="custom layers must be registered (@keras.saving.register_keras_serializable) and imported "
        "before loading; or build the model in Python and pass the object",
    )


# ----------------------------------------------------------------------------------- Keras models
def keras_input_names(model: Any) -> tuple[list[Any], list[str], Any] | None:
    """``(keras_tensors, names, structure)`` of a model with known inputs, else ``None``.

    Names are the keys of dict inputs, else the input layers' names (what Keras itself uses),
    never ``keras_tensor_3``.
    """
    import keras

    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    struct = getattr(model, "_inputs_struct", None)
    flat = keras.tree.flatten(struct) if struct is not None else list(inputs)
    if isinstance(struct, Mapping) and len(struct) == len(flat):
        return flat, dedupe([str(k) for k in sorted(struct)]), struct  # keras.tree sorts dict keys
    names = []
    for i, t in enumerate(flat):
        history = getattr(t, "_keras_history", None)
        layer = history[0] if history else None
        names.append(getattr(layer, "name", None) or getattr(t, "name", None) or f"input_{i}")
    return flat, names, struct


def keras_default_outputs(model: Any) -> list[str]:
    """Output names Keras knows (functional ``output_names``; Sequential: the last layer's name)."""
    names = getattr(model, "output_names", None)
    if names:
        return [str(n) for n in names]
    layers = getattr(model, "layers", None)
    if layers and type(model).__name__ == "Sequential":
        return [str(layers[-1].name)]
    return ["output"]


def call_param_names(model: Any) -> list[str]:
    """Names of the positional parameters of ``model.call`` (for unnamed subclassed inputs)."""
    try:
        params = inspect.signature(model.call).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("training", "mask")
    ]


def _pack(struct: Any, structure: str, names: Sequence[str], args: list[Any]) -> Any:
    import keras

    if struct is not None:
        return keras.tree.pack_sequence_as(struct, args)
    if structure == "dict":
        return dict(zip(names, args, strict=True))
    if len(args) == 1:
        return args[0]
    return list(args)


def _built_specs(model: Any, tf: Any, what: str) -> list[Any]:
    """Specs of a built model without known inputs (subclassed), from its build config."""
    config = model.get_build_config() if hasattr(model, "get_build_config") else None
    shape = (config or {}).get("input_shape")
    if shape is None:
        raise ConversionError(
            f"{what} has no known input shape (a subclassed model called with several inputs?)",
            hint="pass input_signature=[tf.TensorSpec((None, ...), tf.float32, name='x'), ...]",
        )
    shapes = [shape] if all(d is None or isinstance(d, int) for d in shape) else list(shape)
    return [tf.TensorSpec([None, *list(s)[1:]], tf.float32) for s in shapes]


def trace_keras_model(model: Any, signature: Signature | None, tf: Any) -> Traced:
    """A :class:`Traced` calling ``model(inputs, training=False)`` (the model itself is not edited).

    Raises:
        ConversionError: Keras is not on the TensorFlow backend; the model was never built (no
            weights yet); no signature can be derived.
        InputError: the signature does not fit the model's inputs.
    """
    import keras

    what = f"Keras model {getattr(model, 'name', '?')!r}"
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ConversionError(
            f"{what}: Keras runs on the {backend!r} backend, and tf2onnx converts TensorFlow graphs only",
            hint="run the conversion with KERAS_BACKEND=tensorflow (set before keras is imported), e.g. on "
            "a .keras file saved from this process",
        )
    if not model.built:
        raise ConversionError(
            f"{what} has not been built: its weights do not exist yet",
            hint="call it once on a batch or model.build(input_shape) (or load trained weights) first",
        )
    known = keras_input_names(model)
    struct: Any = None
    if signature is not None:
        specs, given, structure = normalize_signature(signature, tf)
        fallback = known[1] if known and len(known[1]) == len(specs) else call_param_names(model)
        if known and len(known[1]) == len(specs):
            struct, structure = known[2], "list"  # the model's own structure, not the signature's
        elif known:
            raise InputError(
                f"{what} takes {len(known[1])} input(s) {known[1]}, input_signature gives {len(specs)}",
                hint="give one spec per model input, in the order of model.inputs",
            )
    elif known is not None:
        tensors, fallback, struct = known
        specs = [tf.TensorSpec([None, *list(t.shape)[1:]], tf.as_dtype(t.dtype)) for t in tensors]
        given, structure = [None] * len(specs), "list"
    else:
        specs, structure = _built_specs(model, tf, what), "single"
        given, fallback = [None] * len(specs), call_param_names(model)
        structure = "single" if len(specs) == 1 else "list"
    names = _fill_names(given, fallback, len(specs))

    def forward(args: list[Any]) -> Any:
        return model(_pack(struct, structure, names, args), training=False)

    traced = make_traced(forward, specs, names, keras_default_outputs(model), tf, what=what)
    traced.layer_layouts = layer_layouts(model, names, keras_default_outputs(model))
    traced.trackable = model
    return traced


def _fill_names(given: Sequence[str | None], fallback: Sequence[str], n: int) -> list[str]:
    """Input names: the signature's, else the model's (or ``call``'s parameters), else ``input_i``."""
    names = []
    for i in range(n):
        if given[i]:
            names.append(str(given[i]))
        elif len(fallback) == n:
            names.append(fallback[i])
        elif len(fallback) == 1:
            names.append(f"{fallback[0]}_{i}")
        else:
            names.append("input" if n == 1 else f"input_{i}")
    return dedupe(names)


def trace_tf_function(function: Any, signature: Signature | None, tf: Any) -> Traced:
    """A :class:`Traced` for a ``tf.function`` (its own input_signature, or the one given).

    Raises:
        InputError: the function has no input signature and none was given.
    """
    what = f"tf.function {getattr(function, '__name__', '?')!r}"
    if signature is None:
        signature = getattr(function, "input_signature", None)
    if signature is None:
        raise InputError(
            f"{what} has no input_signature",
            hint="decorate it with @tf.function(input_signature=[...]) or pass input_signature=[...]",
        )
    specs, given, _ = normalize_signature(list(signature), tf)
    python_fn = getattr(function, "python_function", function)
    try:
        params = [p for p in inspect.signature(python_fn).parameters if p != "self"]
    except (TypeError, ValueError):
        params = []
    names = _fill_names(given, params if len(params) == len(specs) else [], len(specs))

    def forward(args: list[Any]) -> Any:
        return function(*args)

    traced = make_traced(forward, specs, names, ["output"], tf, what=what)
    traced.trackable = function
    return traced


def unsafe_listing(found: Mapping[str, Sequence[str]]) -> str:
    """``"ReadFile (reads files; at fn/ReadFile); ..."``: each denied op, what it can do, where."""
    return "; ".join(
        f"{op} ({op_family(op) or 'touches files'}; at {', '.join(where)})"
        for op, where in sorted(found.items())
    )


def refuse_unsafe_graph(traced: Traced, *, trusted: bool) -> None:
    """Refuse a traced function whose graph can touch files, the network or Python (unless trusted).

    Called after tracing (which runs only the caller's own Python) and before anything runs the graph
    (validation calls the model; tf2onnx folds constants).

    Raises:
        UnsafeModelError: denied ops were found and ``trusted`` is off.
    """
    if trusted:
        return
    concrete = traced.function.get_concrete_function(*traced.specs)
    found = scan_graph_def(concrete.graph.as_graph_def())
    if found:
        raise UnsafeModelError(
            f"{traced.what} holds TensorFlow ops that can touch files, the network or Python: "
            f"{unsafe_listing(found)}; it was not run",
            hint="keep file, network and Python-callback work out of the model (preprocessing), or pass "
            "trusted=True if you wrote this code yourself",
        )


def trace_saved_model(path: Path, signature: Signature | None, tf: Any, *, trusted: bool = False) -> Traced:
    """A :class:`Traced` for a SavedModel directory's serving signature.

    Unless ``trusted``, a SavedModel holding ops that can read or write files, reach the network or
    call Python (:data:`~onnxstitch.converters._tf_ops.UNSAFE_TF_OPS`) is refused before TensorFlow
    loads it (loading runs initializer functions).

    Raises:
        UnsafeModelError: such ops were found and ``trusted`` is off.
        ModelFileError: TensorFlow cannot load it, or it has no (unambiguous) serving signature.
    """
    what = f"SavedModel {str(path)!r}"
    if not trusted:
        unsafe = scan_saved_model(path)
        if unsafe:
            raise UnsafeModelError(
                f"{what} holds TensorFlow ops that can touch files, the network or Python: "
                f"{unsafe_listing(unsafe)}; loading or running it could act outside the model, so it was "
                "not loaded",
                hint="convert a trusted model from code (build it in Python and pass the object), or pass "
                "trusted=True if you produced this SavedModel yourself",
            )
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelFileError(f"{what}: TensorFlow could not load it: {exc}") from exc
    sigs = dict(loaded.signatures)
    if "serving_default" in sigs:
        key = "serving_default"
    elif len(sigs) == 1:
        key = next(iter(sigs))
    else:
        raise ModelFileError(
            f"{what} has no 'serving_default' signature; it has {sorted(sigs)}",
            hint="export it with a serving signature (model.export(path) or tf.saved_model.save(..., "
            "signatures=...))",
        )
    concrete = sigs[key]
    kwargs = dict(concrete.structured_input_signature[1])
    names = list(kwargs)
    specs = [kwargs[n] for n in names]
    if signature is not None:
        specs, given, _ = normalize_signature(signature, tf)
        if len(specs) != len(names):
            raise InputError(f"{what} takes inputs {names}, input_signature gives {len(specs)}")
        names = [str(g) if g else n for g, n in zip(given, names, strict=True)]
    arg_names = list(kwargs)

    def forward(args: list[Any]) -> Any:
        _ = loaded  # keep the loaded object (and its variables) alive with the function
        return concrete(**dict(zip(arg_names, args, strict=True)))

    traced = make_traced(forward, specs, dedupe(names), ["output"], tf, what=what)
    traced.trackable = loaded
    return traced
