"""``merge``, ``chain`` and ``replace``: stitch ONNX parts into one checked ONNX model.

The pipeline (DESIGN.md, "Rules at a seam"), each stage entered once, in this order — see
``_merge_sources``:

1. load: the parts (paths through the hardened reader, their weights left on disk);
2. wiring: links, merged inputs and outputs checked and resolved into a plan (every problem at once);
3. versions: every part brought to one IR version and one opset per domain;
4. seams: dtype, rank, dims and layouts checked at every seam (every problem at once);
5. dims: the dim classes named, the merged outputs' dims filled (the one place dims are decided);
6. build: the merged graph (scoped names, adapters, functions, weights stored once);
7. check: the full ONNX checker on a weight-less skeleton;
8. save: with ``save_to=``, the weights are copied file to file; else they are read into the result.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import onnx

from onnxstitch import _meta
from onnxstitch.compose import _dims
from onnxstitch.compose._graph import GraphBuilder, _Weights
from onnxstitch.compose._seams import SeamChecker, SeamResult
from onnxstitch.compose._spec import Link, Plan, check_keys, graph_inputs, resolve
from onnxstitch.compose._versions import Part, ir_for, make_part, targets_for, tensor_bytes
from onnxstitch.compose._weights import check_in_memory, check_merged, load_path
from onnxstitch.errors import ModelFileError, SeamError, SpecError, VersionError
from onnxstitch.files import ModelLike
from onnxstitch.files.external import ExternalStore

__all__ = ["Link", "chain", "merge", "replace"]

log = logging.getLogger(__name__)

#: model metadata key holding the resolved wiring of a merged model (used by ``extract`` and ``replace``)
SPEC_KEY = _meta.SPEC

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
    store = ExternalStore()
    sources = _load_all(models, store)
    return _merge_sources(
        sources,
        links,
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        optimize=optimize,
        store=store,
        save_to=save_to,
        layouts=layouts,
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
    store = ExternalStore()
    sources = _load_all(models, store)
    keys = list(sources)
    problems: list[str] = []
    links: list[Link] = []
    for src, dst in itertools.pairwise(keys):
        outs = [vi.name for vi in sources[src][0].graph.output]
        ins = [vi.name for vi in graph_inputs(sources[dst][0])]
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
    return _merge_sources(
        sources,
        links,
        inputs=None,
        outputs=None,
        opset=opset,
        optimize=optimize,
        store=store,
        save_to=save_to,
        layouts=layouts,
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
    store = ExternalStore()
    sources = _load_all(models, store)
    del model, models
    opset = spec.get("opset")
    return _merge_sources(
        sources,
        [Link(*ln) for ln in spec["links"]],
        inputs={n: [f"{k}:{t}" for k, t in ends] for n, ends in spec["inputs"].items()},
        outputs={n: f"{k}:{t}" for n, (k, t) in spec["outputs"].items()},
        opset=opset if isinstance(opset, int | dict) else None,
        optimize=bool(spec.get("optimize", False)),
        store=store,
        save_to=save_to,
    )


def read_spec(model: onnx.ModelProto) -> dict[str, Any]:
    """The wiring recorded in a merged model.

    Raises:
        SpecError: the model carries no recorded wiring (not built by ``merge``).
    """
    raw = _meta.get_props(model).get(SPEC_KEY)
    if not raw:
        raise SpecError("this model was not built by onnxstitch.merge (no recorded parts/wiring)")
    spec: dict[str, Any] = json.loads(raw)
    return spec


# -- internals --------------------------------------------------------------------------------------


def _load_all(models: Mapping[str, ModelLike], store: ExternalStore) -> dict[str, _Source]:
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


def _merge_sources(
    sources: Mapping[str, _Source],
    links: Sequence[str | Link],
    *,
    inputs: Mapping[str, str | Sequence[str]] | None,
    outputs: Mapping[str, str] | None,
    opset: int | Mapping[str, int] | None,
    optimize: bool,
    store: ExternalStore,
    save_to: PathLike | None = None,
    layouts: Mapping[str, str] | None = None,
) -> onnx.ModelProto | Path:
    """The pipeline after ``load``: wiring, versions, seams, dims, build, check, save (in this order)."""
    ios = {
        k: ([vi.name for vi in graph_inputs(m)], [vi.name for vi in m.graph.output])
        for k, (m, _, _) in sources.items()
    }
    plan = resolve(ios, links, inputs, outputs)  # wiring
    targets = targets_for({k: m for k, (m, _, _) in sources.items()}, opset)  # versions
    parts = _make_parts(sources, targets)
    owned_ir = [s[0].ir_version for s in sources.values()]
    if isinstance(sources, dict):
        sources.clear()  # ours (from _load_all): drop loaded models so their memory can go part by part
    seams = SeamChecker(  # seams
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
    _name_dims(parts, plan, seams)  # dims: the classes are named before the build uses them
    ir_version = ir_for(targets, owned_ir)
    stream = save_to is not None and not optimize
    weights = _Weights(onnx.GraphProto(), store, stream=stream)
    builder = GraphBuilder(parts, plan, seams.adapters, seams.dims, ir_version, targets, weights)  # build
    merged = builder.build(list(parts))
    if not stream:
        store.inline(merged)  # the result is self-contained: nothing in it points at a part's files
    _record_spec(merged, plan, parts, builder, list(parts), opset=opset, optimize=optimize)
    seams.record_declared(merged, plan)
    if builder.weights.shared:
        log.info("%d identical initializer(s) stored once", builder.weights.shared)
    _check(merged, parts)  # check
    _fill_output_dims(merged)  # dims: the merged outputs' unknown dims, from shape inference
    if optimize:
        merged = _optimized(merged)
    if save_to is None:
        return merged
    return _save(merged, Path(save_to), store)  # save


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


def _make_parts(sources: Mapping[str, _Source], targets: Mapping[str, int]) -> dict[str, Part]:
    parts: dict[str, Part] = {}
    problems: list[VersionError] = []
    for key, (model, owned, folder) in sources.items():
        try:
            parts[key] = make_part(key, model, owned, targets, folder)
        except VersionError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise VersionError("several parts cannot be converted:\n  " + "\n  ".join(str(p) for p in problems))
    return parts


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
    _meta.set_prop(merged, SPEC_KEY, json.dumps(spec))


def _check(merged: onnx.ModelProto, parts: Mapping[str, Part]) -> None:
    """Run the full checker; blame an invalid part, else report what our seam checks could not see."""
    try:
        check_merged(merged)
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


def _fill_output_dims(merged: onnx.ModelProto) -> None:
    """Give the merged outputs' unknown dims what shape inference knows (e.g. after an adapter).

    Only dims with neither a value nor a symbol are filled; declared dims are never changed. Runs on
    a weight-less skeleton, so the weights are not copied.
    """
    from onnxstitch.compose._extract import _typed

    unknown = [
        out
        for out in merged.graph.output
        if any(not d.HasField("dim_value") and not d.dim_param for d in out.type.tensor_type.shape.dim)
    ]
    if not unknown:
        return
    inferred = _typed(merged)
    for out in unknown:
        known = inferred.get(out.name)
        if known is None or known is out:
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


def _optimized(merged: onnx.ModelProto) -> onnx.ModelProto:
    """``optimize()`` the merged model; parity is re-checked in onnxruntime below 2 GB."""
    from onnxstitch.compose._optimize import optimize as run_optimize

    in_memory = sum(tensor_bytes(t) for t in merged.graph.initializer) < 2**31 - 2**24
    if not in_memory:
        log.warning("model past 2 GB: parity of the optimized model not re-checked in memory")
    return run_optimize(merged, check_parity=in_memory)
