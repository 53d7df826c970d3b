"""PyTorch → ONNX: :func:`from_torch`.

The module is exported with ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript); only
when that fails is the TorchScript exporter tried, with a warning that says why. The result is one
self-contained ``ModelProto`` (weights inside, no ``.onnx.data`` file anywhere), with clean
input/output names, one symbol per dynamic dim shared by inputs and outputs, layout metadata, and
checked against the torch module on seeded random inputs.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxstitch import _layouts
from onnxstitch.converters import _batch, _common, _torchscript
from onnxstitch.converters._triton_guard import no_triton_beside_tensorflow
from onnxstitch.errors import ConversionError, ModelFileError, UnsafeModelError

__all__ = ["from_torch"]

logger = logging.getLogger(__name__)

_BATCH = "batch"
_LARGE_BYTES = 1_800_000_000  # past this the proto goes through a temp dir with external data


@dataclass
class _Source:
    """What is exported: a module copy (or an ExportedProgram) and how to run it as the reference."""

    exportable: Any  # torch.nn.Module | torch.export.ExportedProgram
    run: Callable[..., Any]
    label: str  # for messages: the module class or the .pt2 path
    param_names: list[str]  # forward's positional parameter names (for default input names)
    is_program: bool
    graph_name: str = "torch"  # the module class or the .pt2 file's stem


@no_triton_beside_tensorflow()  # torch.export imports torch._dynamo, which probes for triton
def from_torch(
    module_or_path: Any,
    example_inputs: Any = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
    opset: int | None = None,
    validate: bool = True,
    trusted: bool = False,
    layouts: Mapping[str, str] | None = None,
    rtol: float = _common.DEFAULT_RTOL,
    atol: float = _common.DEFAULT_ATOL,
    validation_inputs: Any = None,
    metric: str = _common.DEFAULT_METRIC,
) -> onnx.ModelProto:
    """Convert a ``torch.nn.Module`` (or a trusted ``torch.export`` ``.pt2`` file) to ONNX.

    The caller's module is never touched: a deep copy is put in ``eval()`` mode and exported.

    Args:
        module_or_path: a ``torch.nn.Module``, or the path of a ``.pt2`` file written by
            ``torch.export.save`` (needs ``trusted=True``).
        example_inputs: a tensor, a tuple of tensors (forward's positional arguments) or a dict
            ``{parameter name: tensor}``. Optional for a ``.pt2`` file (its own examples are used).
        input_names: graph input names; default: forward's parameter names.
        output_names: graph output names; default ``output`` (one output) or ``output_0``, ``output_1``…
        dynamic_dims: ``{input name: {axis: symbol}}``; the same symbol is the same dimension. Default:
            dim 0 of every input is the dynamic ``batch``. ``{}`` makes every dim static; an input
            left out of a non-empty mapping is fully static. Not for a ``.pt2`` (fixed at export).
        opset: the ai.onnx opset; default: the exporter's (checked against onnxruntime's newest).
        validate: run the module and the ONNX model on the same inputs and compare every output:
            the example inputs, then the examples with their rows repeated to batch 1 and 7 (only
            the static size when dim 0 is static) and perturbed (floats: noise of their own spread;
            integers and bools: drawn from the values the examples hold).
        trusted: allow loading a ``.pt2`` file, which can execute pickled code (see Raises).
        layouts: ``{tensor: layout}`` overriding the detected layouts (``NCL``/``NLC``,
            ``NCHW``/``NHWC``, ``NCDHW``/``NDHWC``). Detected from evidence only: a rank-3/4/5 input
            that feeds an op with a data format (convolution, pooling, batch/instance norm,
            depth-to-space...) and an output that one produces, through ops that move no axis and
            through transposes (``onnxstitch._layouts``); a ``Linear``, attention or ``permute``
            of an input records nothing.
        rtol: relative tolerance of the validation (default 1e-4, fp32 scale).
        atol: absolute tolerance of the validation (default 1e-5).
        validation_inputs: the inputs to validate on instead: a list of input sets, each in a form
            ``example_inputs`` takes (one tensor or dict alone is one set).
        metric: ``"scaled"`` (default): per output, ``max|onnx - torch| <= atol + rtol *
            max|torch|``; ``"elementwise"``: every element, ``|onnx - torch| <= atol + rtol *
            |torch|``. An output that is constant to within the tolerance fails as uninformative.

    Returns:
        A new, self-contained ``onnx.ModelProto`` with ``onnxstitch.source = "torch"``.

    Raises:
        MissingDependencyError: torch (or onnxscript, needed by the exporter) is not installed.
        UnsafeModelError: a ``.pt2`` path without ``trusted=True``.
        ModelFileError: the path does not exist or is not a ``.pt2`` file.
        ConversionError: bad example inputs (including ones the module fails to run on), names or
            dynamic dims, or both exporters failed
            (the message names the module class and the reason).
        VersionError: ``opset`` is beyond what the installed onnxruntime runs.
        ValidationError: the ONNX model's outputs differ from torch's beyond the tolerances, or
            an output is uninformative on the feeds (the message lists the feeds used).
    """
    torch = _common.require("torch", package="torch", extra="torch", purpose="converting a PyTorch model")
    _common.check_opset(opset, what="from_torch")
    source = _source(torch, module_or_path, trusted=trusted)
    if example_inputs is None:
        example_inputs = _program_examples(source)
    args, kwargs, names = _normalize_inputs(torch, source, example_inputs)
    if input_names is not None:
        names = _check_names(list(input_names), len(names), what="input_names", label=source.label)
    dims = _dynamic_spec(source, args, kwargs, names, dynamic_dims)
    _check_runs(torch, source, args, kwargs)
    proof = _batch_proof(torch, source, args, kwargs) if dynamic_dims is None else None
    if proof is not None:
        dims = _batch.split_unproven(dims, names, proof)
    model, traced = _export(torch, source, args, kwargs, names, dims, opset)
    model = _clean_up(model, source, names, output_names, dims)
    if traced:
        _torchscript.tie_traced_outputs(model, source.label)
    if proof is not None:
        _batch.apply_proof(model, proof)
    model.graph.name = source.graph_name
    detected = _layouts.detect(model)
    _common.record_layouts(model, {**detected, **dict(layouts or {})})
    _common.set_producer(model, "torch")
    model = _common.finalize(model, what=source.label)
    if validate:
        feeds = _validation_feeds(torch, source, model, args, kwargs, names, validation_inputs)
        reference = _reference(torch, source, args, kwargs)
        _common.validate(
            model, reference, what=source.label, rtol=rtol, atol=atol, feeds=feeds, metric=metric
        )
    return model


# -------------------------------------------------------------------------------------- sources
def _source(torch: Any, obj: Any, *, trusted: bool) -> _Source:
    if isinstance(obj, torch.nn.Module):
        label = f"torch module {type(obj).__name__}"
        try:
            copied = copy.deepcopy(obj)
        except Exception as exc:
            raise ConversionError(
                f"{label} cannot be copied ({type(exc).__name__}: {exc}); onnxstitch exports a copy so "
                "that your module is never put in eval() mode behind your back",
                hint="make the module deep-copyable, or call .eval() yourself and export a copy",
            ) from exc
        copied.eval()
        params = _forward_params(copied.forward)
        return _Source(copied, copied, label, params, is_program=False, graph_name=type(obj).__name__)
    if isinstance(obj, str | os.PathLike):
        return _load_pt2(torch, Path(obj), trusted=trusted)
    raise ConversionError(
        f"from_torch expects a torch.nn.Module or a .pt2 path, got {type(obj).__name__}",
        hint="pass the nn.Module itself, or the path of a file written by torch.export.save",
    )


def _load_pt2(torch: Any, path: Path, *, trusted: bool) -> _Source:
    label = f"torch program {str(path)!r}"
    if path.suffix != ".pt2":
        raise ModelFileError(
            f"{str(path)!r} is not a .pt2 file; from_torch reads only torch.export programs from disk",
            hint="load the model in your own code and pass the nn.Module, or torch.export.save it as .pt2",
        )
    if not path.is_file():
        raise ModelFileError(f"{str(path)!r} does not exist or is not a file")
    if not trusted:
        raise UnsafeModelError(
            f"refusing to load {str(path)!r}: torch.export.load falls back to unpickling with "
            "weights_only=False, so a .pt2 file can run arbitrary code when it is loaded",
            hint="pass trusted=True (CLI: --trusted) only for a file you or someone you trust wrote; "
            "otherwise rebuild the module in code and pass the nn.Module",
        )
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelFileError(f"{str(path)!r} is not a loadable torch.export program: {exc}") from exc
    module = program.module()
    params = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    return _Source(program, module, label, params, is_program=True, graph_name=path.stem)


def _program_examples(source: _Source) -> Any:
    if not source.is_program:
        raise ConversionError(
            f"{source.label}: example_inputs are needed to export a module",
            hint="pass example tensors, e.g. from_torch(model, torch.randn(1, 3, 224, 224))",
        )
    args, kwargs = source.exportable.example_inputs
    return dict(kwargs) if kwargs and not args else tuple(args)


def _forward_params(forward: Callable[..., Any]) -> list[str]:
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in sig.parameters.values() if p.kind in kinds]


# --------------------------------------------------------------------------------------- inputs
def _normalize_inputs(
    torch: Any, source: _Source, example: Any
) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    """Return (args, kwargs, input names) with tensors only, names in graph-input order."""
    if isinstance(example, torch.Tensor):
        example = (example,)
    if isinstance(example, Mapping):
        args: tuple[Any, ...] = ()
        kwargs = dict(example)
        names = list(kwargs)
        params = set(source.param_names)
        unknown = [n for n in names if params and n not in params and not _accepts_kwargs(source)]
        if unknown:
            raise ConversionError(
                f"{source.label}: example_inputs names {unknown} are not parameters of forward",
                hint=f"forward's parameters are {source.param_names}",
            )
        order = {n: i for i, n in enumerate(source.param_names)}
        kwargs = dict(sorted(kwargs.items(), key=lambda kv: order.get(kv[0], len(order))))
        names = list(kwargs)
    elif isinstance(example, tuple | list):
        args, kwargs = tuple(example), {}
        names = [
            source.param_names[i] if i < len(source.param_names) else f"input_{i}" for i in range(len(args))
        ]
    else:
        raise ConversionError(
            f"{source.label}: example_inputs must be a tensor, a tuple of tensors or a dict of tensors, "
            f"got {type(example).__name__}",
            hint="e.g. from_torch(model, (torch.randn(1, 3, 224, 224),))",
        )
    bad = [
        n for n, t in zip(names, [*args, *kwargs.values()], strict=True) if not isinstance(t, torch.Tensor)
    ]
    if bad:
        raise ConversionError(
            f"{source.label}: example inputs {bad} are not torch tensors",
            hint="every example input must be a torch.Tensor; bake other arguments into the module",
        )
    return args, kwargs, names


def _accepts_kwargs(source: _Source) -> bool:
    try:
        sig = inspect.signature(getattr(source.run, "forward", source.run))
    except (TypeError, ValueError, AttributeError):
        return False
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _check_names(names: list[str], count: int, *, what: str, label: str) -> list[str]:
    problems = []
    if len(names) != count:
        problems.append(f"{len(names)} names given for {count} tensors")
    if len(set(names)) != len(names):
        problems.append("names repeat")
    if any(not isinstance(n, str) or not n for n in names):
        problems.append("names must be non-empty strings")
    if problems:
        raise ConversionError(
            f"{label}: {what} {names}: " + "; ".join(problems), hint=f"give {count} unique names"
        )
    return names


def _dynamic_spec(
    source: _Source,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: list[str],
    dynamic_dims: Mapping[str, Mapping[int, str]] | None,
) -> dict[str, dict[int, str]]:
    """``{input name: {axis >= 0: symbol}}`` after checking names and axes."""
    tensors = dict(zip(names, [*args, *kwargs.values()], strict=True))
    if source.is_program and dynamic_dims is not None:
        raise ConversionError(
            f"{source.label}: dynamic_dims cannot change a .pt2 program: its dynamic dims were fixed "
            "when it was exported",
            hint="export it again with torch.export.export(..., dynamic_shapes=...), or pass the nn.Module",
        )
    if dynamic_dims is None:
        return {n: {0: _BATCH} for n, t in tensors.items() if t.dim() >= 1}
    problems: list[str] = []
    spec: dict[str, dict[int, str]] = {}
    for name, axes in dynamic_dims.items():
        if name not in tensors:
            problems.append(f"{name!r} is not an input (inputs: {names})")
            continue
        rank, spec[name] = tensors[name].dim(), {}
        for axis, symbol in dict(axes).items():
            if not isinstance(axis, int) or not -rank <= axis < rank:
                problems.append(f"{name!r}: axis {axis!r} is out of range for rank {rank}")
            elif not isinstance(symbol, str) or not symbol:
                problems.append(f"{name!r}: axis {axis}: symbol {symbol!r} must be a non-empty string")
            else:
                spec[name][axis % rank] = symbol
    if problems:
        raise ConversionError(
            f"{source.label}: bad dynamic_dims: " + "; ".join(problems),
            hint="dynamic_dims={'input': {0: 'batch', 1: 'seq'}}; {} makes every dim static",
        )
    return {n: a for n, a in spec.items() if a}


def _check_runs(torch: Any, source: _Source, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run the module once on the examples, so that bad examples are reported as such, not as an
    exporter failure (the exporters' messages blame export-ability and dynamic dims).
    """
    try:
        with torch.no_grad():
            source.run(*args, **kwargs)
    except Exception as exc:
        params = source.param_names
        takes = f"{len(params)}: {', '.join(params)}" if params else "see its signature"
        raise ConversionError(
            f"{source.label}: the module fails on the example inputs: {_reason(exc)}",
            hint=f"{EXAMPLES_HINT} and the number of inputs forward takes ({takes})",
        ) from exc


# the start of _check_runs' hint (the CLI names its option in it)
EXAMPLES_HINT = "check the example input shapes/dtypes"


# --------------------------------------------------------------------------------------- export
def _export(
    torch: Any,
    source: _Source,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: list[str],
    dims: dict[str, dict[int, str]],
    opset: int | None,
) -> tuple[onnx.ModelProto, bool]:
    """Export with dynamo; fall back to TorchScript (modules only) when dynamo fails.

    Returns:
        The model, and whether it came from the TorchScript exporter.
    """
    _common.require("onnxscript", package="onnxscript", extra="torch", purpose="exporting torch to ONNX")
    try:
        return _export_dynamo(torch, source, args, kwargs, names, dims, opset), False
    except Exception as exc:
        reason = _reason(exc)
        if source.is_program:
            raise ConversionError(
                f"{source.label}: torch.onnx.export (dynamo) failed: {reason}",
                hint="check that the program exports with torch.onnx.export(program, dynamo=True)",
            ) from exc
        logger.warning(
            "%s: the dynamo exporter failed (%s); falling back to the TorchScript exporter",
            source.label,
            reason,
        )
        try:
            model = _torchscript.export_torchscript(
                torch, source.exportable, args, kwargs, names, dims, opset
            )
        except _torchscript.UnfaithfulTrace as unfaithful:
            raise ConversionError(
                f"{source.label}: forward takes a data-dependent branch, loop or value, which an export "
                f"would bake in for the example inputs only: {unfaithful}. The dynamo exporter failed "
                f"on it ({reason}); the TorchScript exporter traces the one path the examples take, "
                "so the model is not exported",
                hint="write the branch with torch.cond(pred, true_fn, false_fn, (x,)) (exported as an "
                "ONNX If with both branches), or compute both results and pick with torch.where; a "
                "loop needs a trip count that does not depend on tensor values",
            ) from exc
        except Exception as exc2:
            raise ConversionError(
                f"{source.label} could not be exported to ONNX: dynamo exporter: {reason}; "
                f"TorchScript exporter: {_reason(exc2)}",
                hint="make forward export with torch.export.export (no data-dependent Python control "
                "flow, tensors in and out), or mark dims static with dynamic_dims={}",
            ) from exc2
        return model, True


def _reason(exc: BaseException) -> str:
    """A one-line reason: the innermost interesting cause of an exporter error."""
    cause = exc
    while cause.__cause__ is not None and cause.__cause__ is not cause:
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:400]


def _dim_objects(torch: Any, dims: dict[str, dict[int, str]]) -> dict[str, Any]:
    """One ``torch.export.Dim`` per symbol (same symbol, same Dim), named with a valid identifier."""
    objects: dict[str, Any] = {}
    for axes in dims.values():
        for symbol in axes.values():
            if symbol not in objects:
                ident = re.sub(r"\W", "_", symbol)
                ident = ident if ident and not ident[0].isdigit() else f"d_{ident}"
                taken = {d.__name__ for d in objects.values()}
                while ident in taken:
                    ident += "_"
                objects[symbol] = torch.export.Dim(ident)
    return objects


def _export_dynamo(
    torch: Any,
    source: _Source,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: list[str],
    dims: dict[str, dict[int, str]],
    opset: int | None,
) -> onnx.ModelProto:
    shapes: Any = None
    if not source.is_program:
        objects = _dim_objects(torch, dims)
        per_input = [{a: objects[s] for a, s in dims.get(n, {}).items()} or None for n in names]
        shapes = dict(zip(kwargs, per_input, strict=True)) if kwargs else tuple(per_input)
    with (
        tempfile.TemporaryDirectory(prefix="onnxstitch-torch-") as tmp,
        warnings.catch_warnings(),
        _torchscript.quiet_logger(*_torchscript.TORCH_LOGGERS),
        _torchscript.stderr_to_debug_log(),
    ):
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        program = torch.onnx.export(
            source.exportable,
            args,
            None,
            kwargs=kwargs or None,
            dynamo=True,
            external_data=False,
            dynamic_shapes=shapes,
            opset_version=opset,
            optimize=True,
            verbose=False,
            report=False,
            artifacts_dir=tmp,
        )
        if _weight_bytes(source) < _LARGE_BYTES:
            proto: onnx.ModelProto = program.model_proto
            return proto
        path = Path(tmp) / "model.onnx"
        program.save(str(path), external_data=True)
        return onnx.load(str(path), load_external_data=True)


def _weight_bytes(source: _Source) -> int:
    state = source.exportable.state_dict  # a dict on an ExportedProgram, a method on a Module
    state = state() if callable(state) else state
    return sum(int(t.numel()) * int(t.element_size()) for t in state.values() if hasattr(t, "numel"))


# ------------------------------------------------------------------------------------- clean up
def _clean_up(
    model: onnx.ModelProto,
    source: _Source,
    names: list[str],
    output_names: Sequence[str] | None,
    dims: dict[str, dict[int, str]],
) -> onnx.ModelProto:
    """Name inputs/outputs and symbols as asked (in place on the freshly exported model)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if len(inputs) != len(names):
        missing = [n for n in names if n not in {v.name for v in inputs}]
        raise ConversionError(
            f"{source.label}: the exported graph has {len(inputs)} inputs for {len(names)} example "
            f"inputs (dropped: {missing})",
            hint="an input forward never uses is dropped by the exporter; remove it from the examples",
        )
    outs = [v.name for v in model.graph.output]
    if output_names is None:
        wanted = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    else:
        wanted = _check_names(list(output_names), len(outs), what="output_names", label=source.label)
    mapping = dict(zip([v.name for v in inputs], names, strict=True))
    mapping.update(zip(outs, wanted, strict=True))
    _common.rename_tensors(model, _two_step(model, mapping))
    if source.is_program:
        dims = {
            v.name: {0: _BATCH}
            for v in inputs
            if v.type.tensor_type.shape.dim[:1] and not v.type.tensor_type.shape.dim[0].HasField("dim_value")
        }
    _common.rename_dims(model, _symbol_mapping(model, source, dims))
    return model


def _two_step(model: onnx.ModelProto, mapping: dict[str, str]) -> dict[str, str]:
    """Renames can swap names (x -> y, y -> x): go through unique temporary names when they overlap."""
    mapping = {k: v for k, v in mapping.items() if k != v}
    if not set(mapping.values()) & set(mapping):
        return mapping
    temp = {k: f"__onnxstitch_tmp_{i}" for i, k in enumerate(mapping)}
    _common.rename_tensors(model, temp)
    return {temp[k]: v for k, v in mapping.items()}


def _symbol_mapping(
    model: onnx.ModelProto, source: _Source, dims: dict[str, dict[int, str]]
) -> dict[str, str]:
    """Map the exporter's symbols (``s0``, ``s77``, ``batch_1``) to the asked ones, read off the inputs."""
    mapping: dict[str, str] = {}
    problems = []
    by_name = {v.name: _common.value_dims(v) for v in model.graph.input}
    for name, axes in dims.items():
        actual_dims = by_name.get(name, [])
        for axis, symbol in axes.items():
            actual = actual_dims[axis] if axis < len(actual_dims) else None
            if isinstance(actual, int):
                problems.append(f"{name!r} axis {axis} ({symbol!r}) was exported as the static size {actual}")
            elif isinstance(actual, str) and mapping.setdefault(actual, symbol) != symbol:
                problems.append(
                    f"{name!r} axis {axis}: the exporter found {symbol!r} equal to {mapping[actual]!r}"
                )
    if problems:
        raise ConversionError(
            f"{source.label}: dynamic dims do not survive export: " + "; ".join(problems),
            hint="the model ties these dims together or to a constant: give them one symbol, or keep "
            "them static (leave them out of dynamic_dims)",
        )
    return mapping


def _batch_proof(
    torch: Any, source: _Source, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _batch.BatchProof | None:
    """Which inputs' dim 0 is the batch, from runs of the module (see ``converters._batch``).

    Only for several inputs: one input's dim 0 reaches an output only where the exporter's symbolic
    shapes link them (dynamo), or ``_torchscript.tie_traced_outputs`` saw it follow (TorchScript).
    """
    tensors = [*args, *kwargs.values()]
    if sum(t.dim() >= 1 for t in tensors) < 2 or any(t.device.type != "cpu" for t in tensors):
        return None  # a module on an accelerator is not moved to the CPU for this
    try:
        examples = _batch.as_numpy(tensors)
    except (TypeError, RuntimeError):  # e.g. bfloat16 has no numpy dtype
        return None
    reference = _reference(torch, source, args, kwargs)
    return _batch.prove_batch(lambda arrays: reference(*arrays), examples, what=source.label)


# ------------------------------------------------------------------------------------ reference
def _validation_feeds(
    torch: Any,
    source: _Source,
    model: onnx.ModelProto,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: list[str],
    validation_inputs: Any,
) -> list[tuple[str, dict[str, Any]]] | None:
    """The feed sets of the validation: ``validation_inputs`` (each set in any form example_inputs
    takes), else the examples and their repeated, perturbed versions; ``None``: seeded random."""
    if validation_inputs is not None:
        one = isinstance(validation_inputs, torch.Tensor | Mapping)
        out = []
        for i, given in enumerate([validation_inputs] if one else list(validation_inputs)):
            v_args, v_kwargs, _ = _normalize_inputs(torch, source, given)
            tensors = [*v_args, *v_kwargs.values()]
            if len(tensors) != len(names):
                raise ConversionError(
                    f"{source.label}: validation_inputs[{i}] has {len(tensors)} tensors for {names}",
                    hint="validation_inputs is a list of input sets, each in a form example_inputs takes",
                )
            out.append((f"validation_inputs[{i}]", dict(zip(names, _batch.as_numpy(tensors), strict=True))))
        return out
    try:
        examples = dict(zip(names, _batch.as_numpy([*args, *kwargs.values()]), strict=True))
    except (TypeError, RuntimeError):  # e.g. bfloat16 has no numpy dtype: seeded random feeds
        return None
    return _common.example_feed_sets(model, examples)


def _reference(
    torch: Any, source: _Source, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[..., list[np.ndarray]]:
    """The torch side of the validation: numpy arrays in graph-input order -> outputs in order."""
    dtypes = [t.dtype for t in [*args, *kwargs.values()]]
    keys = list(kwargs)
    if not source.is_program and any(t.device.type != "cpu" for t in [*args, *kwargs.values()]):
        # our own copy: compare in plain fp32 on the CPU (GPU kernels may use TF32, which is no
        # property of the model), the same place onnxruntime runs the check
        source.exportable.cpu()

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        tensors = [
            torch.from_numpy(np.ascontiguousarray(a)).to(dtype=d) for a, d in zip(arrays, dtypes, strict=True)
        ]
        with torch.inference_mode():
            out = source.run(**dict(zip(keys, tensors, strict=True))) if keys else source.run(*tensors)
        leaves = torch.utils._pytree.tree_leaves(out)
        return [
            leaf.detach().cpu().numpy() if isinstance(leaf, torch.Tensor) else np.asarray(leaf)
            for leaf in leaves
        ]

    return run
