"""``merge``, ``chain`` and ``replace``: stitch ONNX parts into one checked ONNX model.

The pipeline (DESIGN.md, "Rules at a seam"): ``_pipeline`` enters each stage once, in this order,
and each stage is one function that says whether it changes what it is given (as onnx-ir's passes
do: ``InPlacePass`` / ``FunctionalPass``; only objects the merge made itself are ever changed):

1. load (functional): the parts — paths through the hardened reader, their weights left on disk;
2. wiring (functional): links (``chain``: each part's single output to the next part's single
   input), merged inputs and outputs checked and resolved into a plan (every problem at once);
3. versions (in place on the loaded sources, which it empties): every part brought to one IR
   version and one opset per domain;
4. seams (functional): dtype, rank, dims and layouts checked at every seam (every problem at once),
   then the dim classes named (the one place dims are decided);
5. build (in place on the parts, whose loaded weights it releases): the merged graph (scoped names,
   adapters, functions, weights stored once) and its recorded wiring;
6. check (in place on the merged model): the full ONNX checker on a weight-less skeleton, the merged
   outputs' unknown dims filled from its shape inference; then, only with ``optimize=True``, the
   optimize stage (functional: a new model, parity re-checked);
7. save (functional): with ``save_to=``, weights copied file to file; else the result is returned.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar, overload

import onnx
import onnx.checker
import onnx.shape_inference

from onnxstitch import _meta
from onnxstitch.compose import _dims
from onnxstitch.compose._graph import GraphBuilder, _Weights
from onnxstitch.compose._seams import SeamChecker, SeamResult
from onnxstitch.compose._spec import Link, Plan, check_keys, graph_inputs, read_spec, resolve
from onnxstitch.compose._versions import Part, ir_for, make_part, targets_for, tensor_bytes
from onnxstitch.compose._weights import (
    CHECK_INLINE_BYTES,
    check_in_memory,
    check_merged,
    load_path,
    weightless,
)
from onnxstitch.errors import ModelFileError, SeamError, SpecError, VersionError
from onnxstitch.files import ModelLike
from onnxstitch.files.external import ExternalStore

__all__ = ["Link", "chain", "merge", "replace"]

log = logging.getLogger(__name__)

_Source = tuple[onnx.ModelProto, bool, Path | None]
PathLike = str | os.PathLike[str]


@overload
def merge(
    models: Mapping[str, ModelLike],
    links: Sequence[str | Link] = (),
    *,
    inputs: Mapping[str, str | Sequence[str]] | None = None,
    outputs: Mapping[str, str] | None = None,
    opset: int | Mapping[str, int] | None = None,
    optimize: bool = False,
    layouts: Mapping[str, str] | None = None,
    save_to: None = None,
) -> onnx.ModelProto: ...


@overload
def merge(
    models: Mapping[str, ModelLike],
    links: Sequence[str | Link] = (),
    *,
    inputs: Mapping[str, str | Sequence[str]] | None = None,
    outputs: Mapping[str, str] | None = None,
    opset: int | Mapping[str, int] | None = None,
    optimize: bool = False,
    layouts: Mapping[str, str] | None = None,
    save_to: PathLike,
) -> Path: ...


def merge(
    models: Mapping[str, ModelLike],
    links: Sequence[str | Link] = (),
    *,
    inputs: Mapping[str, str | Sequence[str]] | None = None,
    outputs: Mapping[str, str] | None = None,
    opset: int | Mapping[str, int] | None = None,
    optimize: bool = False,
    layouts: Mapping[str, str] | None = None,
    save_to: PathLike | None = None,
) -> onnx.ModelProto | Path:
    """Stitch several ONNX models ("parts") into one, along explicit links.

    Names: every tensor, node and initializer of part ``key`` is renamed ``"key/name"``; the merged
    model's inputs and outputs keep clean names. A part input that no link feeds and no ``inputs=``
    entry names becomes a merged input under its own name; a part output that no link consumes
    becomes a merged output under its own name (all of them unless ``outputs=`` is given). When such
    a default name is used by several parts, each one is called ``"key.name"`` instead.
    Part inputs that are also initializers (old IR < 4 defaults) are constants, not merged inputs.

    Weights: parts given as paths are read by the same hardened reader as ``ox.load`` (external data
    only from the part's own folder: no ``..``, absolute paths, symlinks or hardlinks; offsets and
    lengths checked against each tensor's shape), and their weights stay on disk until each tensor is
    copied into the merged model, so the merge holds one copy of the weights; identical initializers
    are stored once. The result holds every weight in memory: past 2 GB, save it with ``ox.save``
    (external data automatically) and check it by path, not in memory. For big models pass
    ``save_to=``: the merged model is written there and the weights of the parts given as paths go
    file to file, never into memory.

    Args:
        models: part key -> ``ModelProto`` or path to an ``.onnx`` file. Keys must not contain
            ``:``, ``/`` or ``->``. The same model may appear under several keys.
        links: ``"key:output->key:input"`` strings or :class:`Link` objects.
        inputs: merged input name -> one ``"key:input"`` or a list of them (one input feeding several
            parts). A merged input takes the dtype, shape and layout of the first part input listed;
            the others are checked against it like seams (a known, different layout gets a Transpose,
            a widening dtype a Cast; anything else is a SeamError).
        outputs: merged output name -> ``"key:output"``; when given, exactly these are the outputs.
        opset: target ``ai.onnx`` opset (int) or ``{domain: version}``; default: the highest among
            the parts, capped by what the installed onnxruntime runs.
        optimize: run :func:`onnxstitch.compose.optimize` on the result and check parity on random feeds
            (this needs the weights in memory, also with ``save_to=``).
        layouts: ``{"key:tensor": layout}`` for part inputs/outputs whose layout the part does not
            record (or records wrongly): ``NLC``/``NCL`` (rank 3), ``NHWC``/``NCHW`` (rank 4),
            ``NDHWC``/``NCDHW`` (rank 5). Declared over recorded; used by the seam checks (a
            Transpose where both ends are known and differ; an ambiguous seam is refused).
        save_to: write the merged model to this ``.onnx`` path (atomically; with external data in
            ``<name>.onnx.data`` past 2 GB, as ``ox.save``) instead of returning it.

    Returns:
        A new ``ModelProto``; the given models are never modified. With ``save_to=``, the path written.

    Raises:
        SpecError: malformed links, unknown parts or tensors, inputs fed twice, name clashes (all at
            once); a ``layouts=`` entry naming no part input/output or no layout of its rank.
        CycleError: the links form a cycle (the message names it: ``a -> b -> a``).
        VersionError: a part cannot be brought to the target opset, or ``opset=`` exceeds onnxruntime.
        SeamError: dtype/rank/dim/layout problems at the seams (every seam's problems at once).
        ModelFileError: a part file is missing or unreadable, a part is not a valid ONNX model, its
            external data is missing or does not match its tensors, or the ``save_to`` folder is missing.
        UnsafeModelError: a part's external data leaves its folder (``..``, absolute, symlink, hardlink).
        ValidationError: ``optimize=True`` changed the outputs.
    """
    return _pipeline(
        models,
        links,
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        optimize=optimize,
        layouts=layouts,
        save_to=save_to,
    )


@overload
def chain(
    models: Mapping[str, ModelLike],
    *,
    opset: int | Mapping[str, int] | None = None,
    optimize: bool = False,
    layouts: Mapping[str, str] | None = None,
    save_to: None = None,
) -> onnx.ModelProto: ...


@overload
def chain(
    models: Mapping[str, ModelLike],
    *,
    opset: int | Mapping[str, int] | None = None,
    optimize: bool = False,
    layouts: Mapping[str, str] | None = None,
    save_to: PathLike,
) -> Path: ...


def chain(
    models: Mapping[str, ModelLike],
    *,
    opset: int | Mapping[str, int] | None = None,
    optimize: bool = False,
    layouts: Mapping[str, str] | None = None,
    save_to: PathLike | None = None,
) -> onnx.ModelProto | Path:
    """Merge parts one after the other: each part's single output feeds the next part's single input.

    Args:
        models: part key -> model, in chain order.
        opset: as for :func:`merge`.
        optimize: as for :func:`merge`.
        layouts: as for :func:`merge`: ``{"key:tensor": layout}``, e.g. ``{"a:feat": "NHWC"}``.
        save_to: as for :func:`merge`: write the merged model there, weights file to file.

    Returns:
        A new ``ModelProto``; with ``save_to=``, the path written.

    Raises:
        SpecError: a part (other than the ends) has several inputs or outputs — use ``merge`` with links.
        CycleError, VersionError, SeamError, ModelFileError, ValidationError: as for :func:`merge`.
    """
    return _pipeline(
        models,
        None,
        inputs=None,
        outputs=None,
        opset=opset,
        optimize=optimize,
        layouts=layouts,
        save_to=save_to,
    )


@overload
def replace(merged: ModelLike, key: str, new_part: ModelLike, *, save_to: None = None) -> onnx.ModelProto: ...


@overload
def replace(merged: ModelLike, key: str, new_part: ModelLike, *, save_to: PathLike) -> Path: ...


def replace(
    merged: ModelLike, key: str, new_part: ModelLike, *, save_to: PathLike | None = None
) -> onnx.ModelProto | Path:
    """Swap part ``key`` of a merged model for ``new_part`` (e.g. a retrained head); seams are re-checked.

    The other parts are taken back out with :func:`onnxstitch.compose.extract` and merged again with
    the recorded wiring (same links, merged input and output names) and the original merge's
    ``opset=`` and ``optimize=``.

    Args:
        merged: a model built by :func:`merge` or :func:`chain`.
        key: the part to swap.
        new_part: the new model for that key (its inputs/outputs must keep the linked names).
        save_to: as for :func:`merge`.

    Returns:
        A new merged ``ModelProto``; with ``save_to=``, the path written.

    Raises:
        SpecError: ``merged`` is not a merged model, or has no part ``key`` (lists the parts), or the
            new part lacks a linked tensor (lists its tensors).
        SeamError, VersionError, ModelFileError: as for :func:`merge`.
    """
    from onnxstitch.compose._extract import extract
    from onnxstitch.files import as_model

    model = as_model(merged)
    spec = read_spec(model)
    parts = [str(k) for k in spec["parts"]]
    if key not in parts:
        raise SpecError(f"merged model has no part {key!r}; its parts are {', '.join(map(repr, parts))}")
    models: dict[str, ModelLike] = {k: (new_part if k == key else extract(model, part=k)) for k in parts}
    del model
    opset = spec.get("opset")
    return _pipeline(
        models,
        [Link(*ln) for ln in spec["links"]],
        inputs={n: [f"{k}:{t}" for k, t in ends] for n, ends in spec["inputs"].items()},
        outputs={n: f"{k}:{t}" for n, (k, t) in spec["outputs"].items()},
        opset=opset if isinstance(opset, int | dict) else None,
        optimize=bool(spec.get("optimize", False)),
        layouts=None,
        save_to=save_to,
    )


# -- the pipeline -----------------------------------------------------------------------------------


def _pipeline(
    models: Mapping[str, ModelLike],
    links: Sequence[str | Link] | None,
    *,
    inputs: Mapping[str, str | Sequence[str]] | None,
    outputs: Mapping[str, str] | None,
    opset: int | Mapping[str, int] | None,
    optimize: bool,
    layouts: Mapping[str, str] | None,
    save_to: PathLike | None,
) -> onnx.ModelProto | Path:
    """``merge``'s stages, each entered once, in order; ``links=None``: a chain (``chain``'s wiring)."""
    store = ExternalStore()
    sources = _load(models, store)
    plan = _wiring(sources, links, inputs, outputs)
    versioned = _versions(sources, opset)
    seams = _seams(versioned, plan, layouts)
    stream = save_to is not None and not optimize
    merged = _build(versioned, plan, seams, store, stream=stream, opset=opset, optimize=optimize)
    _check(merged, versioned.parts)
    if optimize:
        merged = _optimized(merged)
    if save_to is None:
        return merged
    return _save(merged, Path(save_to), store)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _stage(name: str, *, in_place: bool) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Mark a function as the stage ``name`` of the pipeline (entering it is logged at DEBUG).

    ``in_place``: the stage changes objects it is given (as onnx-ir's ``InPlacePass``; only objects
    the merge itself made, never the caller's models); otherwise it leaves them alone and returns new
    ones (``FunctionalPass``).
    """

    def mark(func: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(func)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            log.debug("merge stage %s (%s)", name, "in place" if in_place else "functional")
            return func(*args, **kwargs)

        return run

    return mark


@dataclass
class _Versioned:
    """The parts brought to one IR version and one opset per domain (what ``versions`` returns)."""

    parts: dict[str, Part]
    targets: dict[str, int]
    ir_version: int


@_stage("load", in_place=False)
def _load(models: Mapping[str, ModelLike], store: ExternalStore) -> dict[str, _Source]:
    """Paths through the hardened reader (weights stay on disk, adopted by ``store``); protos checked."""
    if not isinstance(models, Mapping) or not models:
        raise SpecError(
            "merge needs a non-empty mapping {key: model}", hint='ox.merge({"a": a, "b": b}, ...)'
        )
    problems = check_keys(list(models))
    if problems:
        raise SpecError("invalid part keys:\n  " + "\n  ".join(problems))
    sources: dict[str, _Source] = {}
    failures: list[ModelFileError] = []
    for key, model in models.items():
        if not isinstance(model, onnx.ModelProto | str | os.PathLike):
            raise SpecError(f"part {key!r} must be an onnx.ModelProto or a path, got {type(model).__name__}")
        try:
            if isinstance(model, onnx.ModelProto):
                check_in_memory(key, model)
                sources[key] = (model, False, None)
            else:
                loaded, folder = load_path(key, model, store)
                sources[key] = (loaded, True, folder)
        except ModelFileError as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise type(failures[0])("several parts cannot be read:\n  " + "\n  ".join(str(f) for f in failures))
    return sources


@_stage("wiring", in_place=False)
def _wiring(
    sources: Mapping[str, _Source],
    links: Sequence[str | Link] | None,
    inputs: Mapping[str, str | Sequence[str]] | None,
    outputs: Mapping[str, str] | None,
) -> Plan:
    """Links, merged inputs and outputs checked and resolved into a plan (every problem at once)."""
    ios = {
        k: ([vi.name for vi in graph_inputs(m)], [vi.name for vi in m.graph.output])
        for k, (m, _, _) in sources.items()
    }
    return resolve(ios, _chain_links(ios) if links is None else links, inputs, outputs)


def _chain_links(ios: Mapping[str, tuple[list[str], list[str]]]) -> list[Link]:
    """Each part's single output feeds the next part's single input."""
    problems: list[str] = []
    links: list[Link] = []
    for src, dst in itertools.pairwise(ios):
        outs, ins = ios[src][1], ios[dst][0]
        if len(outs) != 1:
            problems.append(f"part {src!r} has {len(outs)} outputs {outs}; chain needs exactly one")
        if len(ins) != 1:
            problems.append(f"part {dst!r} has {len(ins)} inputs {ins}; chain needs exactly one")
        if len(outs) == 1 and len(ins) == 1:
            links.append(Link(src, outs[0], dst, ins[0]))
    if problems:
        raise SpecError(
            "cannot chain these parts:\n  " + "\n  ".join(problems),
            hint='use ox.merge(models, links=["a:out->b:in", ...]) to say which tensors connect',
        )
    return links


@_stage("versions", in_place=True)
def _versions(sources: dict[str, _Source], opset: int | Mapping[str, int] | None) -> _Versioned:
    """Every part converted to the target opsets and IR version (the given models are not touched).

    In place on ``sources`` (the merge's own mapping): it is emptied, so that a loaded part's memory
    can go as soon as its weights are stored.
    """
    targets = targets_for({k: m for k, (m, _, _) in sources.items()}, opset)
    ir_version = ir_for(targets, [m.ir_version for m, _, _ in sources.values()])
    parts: dict[str, Part] = {}
    problems: list[VersionError] = []
    for key, (model, owned, folder) in sources.items():
        try:
            parts[key] = make_part(key, model, owned, targets, folder)
        except VersionError as exc:
            problems.append(exc)
    sources.clear()
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise VersionError("several parts cannot be converted:\n  " + "\n  ".join(str(p) for p in problems))
    return _Versioned(parts, targets, ir_version)


@_stage("seams", in_place=False)
def _seams(versioned: _Versioned, plan: Plan, layouts: Mapping[str, str] | None) -> SeamResult:
    """Dtype, rank, dims and layouts at every seam (every problem at once); the dim classes named."""
    parts = versioned.parts
    seams = SeamChecker(
        {k: p.model for k, p in parts.items()}, {k: p.source for k, p in parts.items()}, layouts
    ).check(plan)
    if seams.problems:
        raise SeamError(
            f"{len(seams.problems)} problem(s) at the seams:\n  " + "\n  ".join(seams.problems),
            problems=seams.problems,
            hint="insert the suggested adapter (ox.adapters.*) as a part of its own, declare a layout "
            '(layouts={"key:tensor": "NHWC"}), or fix the part'
            if any("ox.adapters." in p for p in seams.problems)
            else "no adapter fits: fix the part that produces or takes the tensor so their dims agree",
        )
    _name_dims(parts, plan, seams)
    return seams


@_stage("build", in_place=True)
def _build(
    versioned: _Versioned,
    plan: Plan,
    seams: SeamResult,
    store: ExternalStore,
    *,
    stream: bool,
    opset: int | Mapping[str, int] | None,
    optimize: bool,
) -> onnx.ModelProto:
    """The merged graph (scoped names, adapters, functions, weights stored once) and its metadata.

    In place only on the parts: a loaded part's weights are released once stored. With ``stream``,
    weights still on disk stay there (copied file to file by ``save``); else the result is
    self-contained: nothing in it points at a part's files.
    """
    parts = versioned.parts
    weights = _Weights(onnx.GraphProto(), store, stream=stream)
    builder = GraphBuilder(
        parts, plan, seams.adapters, seams.dims, versioned.ir_version, versioned.targets, weights
    )
    merged = builder.build(list(parts))
    if not stream:
        store.inline(merged)
    _record_spec(merged, plan, parts, builder, list(parts), opset=opset, optimize=optimize)
    seams.record_declared(merged, plan)
    if builder.weights.shared:
        log.info("%d identical initializer(s) stored once", builder.weights.shared)
    return merged


@_stage("check", in_place=True)
def _check(merged: onnx.ModelProto, parts: Mapping[str, Part]) -> None:
    """The full checker on a weight-less skeleton; then the merged outputs' unknown dims filled in place.

    When an output has unknown dims, the checker's own strict shape inference is run by hand (
    ``check_model(full_check=True)`` is the plain check followed by exactly that inference) and its
    result fills them: one inference either way. Blames an invalid part, else reports what the seam
    checks could not see.
    """
    unknown = any(
        not d.HasField("dim_value") and not d.dim_param
        for out in merged.graph.output
        for d in out.type.tensor_type.shape.dim
    )
    skeleton = weightless(merged, inline_limit=CHECK_INLINE_BYTES)
    try:
        if unknown:
            onnx.checker.check_model(skeleton)
            inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True)
        else:
            onnx.checker.check_model(skeleton, full_check=True)
    except Exception as exc:  # onnx's ValidationError / InferenceError
        for key, part in parts.items():
            try:
                check_merged(part.model)
            except Exception as part_exc:
                raise ModelFileError(f"part {key!r} is not a valid ONNX model: {part_exc}") from part_exc
        raise SeamError(
            f"the merged model fails the ONNX checker: {exc}",
            problems=[str(exc)],
            hint="a seam whose shapes are not declared may disagree; check the parts' output shapes",
        ) from exc
    if unknown:
        _fill_output_dims(merged, {vi.name: vi for vi in inferred.graph.output})


@_stage("save", in_place=False)
def _save(merged: onnx.ModelProto, path: Path, store: ExternalStore) -> Path:
    """Write the merged model; tensors still on disk are copied file to file (``ox.save``'s rules)."""
    from onnxstitch.files import manifest
    from onnxstitch.files._write import remove_quietly, save_model

    try:
        save_model(merged, path, external_data=None, size_threshold=1024, store=store)
    finally:
        del merged
    remove_quietly(manifest.manifest_path(path))
    log.info("merged model written to %s", path)
    return path


# -- pieces of the stages ---------------------------------------------------------------------------


def _name_dims(parts: Mapping[str, Part], plan: Plan, seams: SeamResult) -> None:
    """Name the dim classes: the merged inputs' own symbols first (so ``batch`` stays ``batch``)."""
    preferred: list[tuple[tuple[str, ...], str]] = []
    for ends in plan.merged_inputs.values():
        for key, tensor in ends:
            vi = next(v for v in graph_inputs(parts[key].model) if v.name == tensor)
            for dim in vi.type.tensor_type.shape.dim:
                if dim.WhichOneof("value") == "dim_param" and dim.dim_param:
                    preferred.append((("sym", key, dim.dim_param), dim.dim_param))
    for key, part in parts.items():
        graph = part.model.graph
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            if vi.type.WhichOneof("value") != "tensor_type":
                continue
            for dim in vi.type.tensor_type.shape.dim:
                if dim.WhichOneof("value") == "dim_param" and dim.dim_param:
                    seams.dims.find(("sym", key, dim.dim_param))
    for key, part in parts.items():  # symbols flow through each part, not only across seams
        _dims.link_through_part(seams.dims, key, part.model, part.weights)
    seams.dims.name_classes(preferred)
    models = {k: p.model for k, p in parts.items()}
    _dims.name_proven_batch(
        seams.dims,
        _dims.interface_dim0(models, [ends[0] for ends in plan.merged_inputs.values()], "in"),
        _dims.interface_dim0(models, plan.merged_outputs.values(), "out"),
    )


def _record_spec(
    merged: onnx.ModelProto,
    plan: Plan,
    parts: Mapping[str, Part],
    builder: GraphBuilder,
    keys: list[str],
    *,
    opset: int | Mapping[str, int] | None,
    optimize: bool,
) -> None:
    part_inputs = {k: [vi.name for vi in graph_inputs(p.model)] for k, p in parts.items()}
    part_outputs = {k: [vi.name for vi in p.model.graph.output] for k, p in parts.items()}
    io = {k: {name: builder.renames[k](name) for name in [*part_inputs[k], *part_outputs[k]]} for k in parts}
    spec = {
        "part_inputs": part_inputs,
        "part_outputs": part_outputs,
        "io": io,
        "parts": keys,
        "links": [[ln.src_part, ln.src_tensor, ln.dst_part, ln.dst_tensor] for ln in plan.links],
        "inputs": {n: [list(e) for e in ends] for n, ends in plan.merged_inputs.items()},
        "outputs": {n: list(end) for n, end in plan.merged_outputs.items()},
        "layouts": {k: _meta.get_layouts(p.source) for k, p in parts.items()},
        "sources": {k: _meta.get_source(p.source) for k, p in parts.items()},
        "opset": dict(opset) if isinstance(opset, Mapping) else opset,
        "optimize": optimize,
    }
    _meta.set_prop(merged, _meta.SPEC, json.dumps(spec))


def _fill_output_dims(merged: onnx.ModelProto, inferred: Mapping[str, onnx.ValueInfoProto]) -> None:
    """Give the merged outputs' unknown dims what shape inference knows (e.g. after an adapter).

    Only dims with neither a value nor a symbol are filled; declared dims are never changed.
    """
    for out in merged.graph.output:
        known = inferred.get(out.name)
        if known is None:
            continue
        dims = known.type.tensor_type.shape.dim
        mine = out.type.tensor_type.shape.dim
        if len(dims) != len(mine):
            continue
        for d, k in zip(mine, dims, strict=True):
            if not d.HasField("dim_value") and not d.dim_param:
                if k.HasField("dim_value"):
                    d.dim_value = k.dim_value
                elif k.dim_param:
                    d.dim_param = k.dim_param


@_stage("optimize", in_place=False)
def _optimized(merged: onnx.ModelProto) -> onnx.ModelProto:
    """``optimize()`` the merged model; parity is re-checked in onnxruntime below 2 GB."""
    from onnxstitch.compose._optimize import optimize as run_optimize

    in_memory = sum(tensor_bytes(t) for t in merged.graph.initializer) < 2**31 - 2**24
    if not in_memory:
        log.warning("model past 2 GB: parity of the optimized model not re-checked in memory")
    return run_optimize(merged, check_parity=in_memory)
