"""Adapters: tiny ONNX models that sit at a seam and reshape, retype or combine tensors.

Each function returns a NEW, fully checked ``onnx.ModelProto`` built at ai.onnx opset 18 (IR 8) that
chains and merges like any other part: its input is ``"x"`` (or ``"x0"`` .. ``"x{n-1}"`` for the
adapters that combine several tensors) and its output ``"y"``. Dim 0 is the symbolic ``"batch"``
dim wherever the rank is known; the other dims are left unnamed (neither a value nor a symbol), so
an adapter fits any part and never claims two unrelated dims are equal. The merge unifies them with
the part on the other side of the seam.

ONNX requires every graph input and output to declare its rank, and the merge checks it at each
seam. Adapters that work at any rank take ``rank=``: ``cast``, ``reshape``, ``softmax``, ``mean``
and ``concat`` default to rank 2 (``[batch, features]``: logits, embeddings), ``flatten`` and
``normalize`` to rank 4 (images, feature maps). Pass ``rank=`` for anything else; the merge names
the adapter and the rank it needs when they disagree.

Every adapter records ``onnxstitch.source = "adapter"`` and names its graph after the call that
built it (``adapter.transpose(0,3,1,2)``), which ``inspect`` shows.

Example::

    import onnxstitch as ox

    hybrid = ox.chain({
        "backbone": keras_part,                         # NHWC feature map
        "to_nchw": ox.adapters.transpose((0, 3, 1, 2)),
        "head": torch_part,                             # NCHW input
    })
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxstitch import _meta
from onnxstitch.errors import AdapterError

__all__ = [
    "DTYPES",
    "AdapterError",
    "cast",
    "concat",
    "flatten",
    "mean",
    "normalize",
    "reshape",
    "softmax",
    "transpose",
]

OPSET = 18
IR_VERSION = 8
SOURCE = "adapter"

DTypeLike = str | np.dtype[Any] | type
Dim = int | str | None

# the element types an adapter may be built for, by name
DTYPES: dict[str, int] = {
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "int8": TensorProto.INT8,
    "int16": TensorProto.INT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "uint32": TensorProto.UINT32,
    "uint64": TensorProto.UINT64,
    "bool": TensorProto.BOOL,
}
_FLOAT_DTYPES = ("float16", "float32", "float64")
_NUMERIC_DTYPES = tuple(name for name in DTYPES if name != "bool")


# ---------------------------------------------------------------------------------------------
# argument checks


def _dtype_name(dtype: DTypeLike, *, what: str, allowed: Sequence[str] = tuple(DTYPES)) -> str:
    """Return the canonical name (a key of ``DTYPES``) of ``dtype``, checked against ``allowed``."""
    name: str | None
    if isinstance(dtype, str):
        name = dtype.strip().lower()
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
    if name == "bool_":
        name = "bool"
    if name is None or name not in allowed:
        raise AdapterError(
            f"{what}: unknown or unsupported dtype {dtype!r}",
            hint=f"use one of: {', '.join(allowed)}",
        )
    return name


def _check_int(value: Any, *, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise AdapterError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _check_rank(rank: int, *, what: str, minimum: int = 1) -> int:
    rank = _check_int(rank, what=f"{what}: rank")
    if rank < minimum:
        raise AdapterError(f"{what}: rank must be at least {minimum}, got {rank}")
    return rank


def _check_axis(axis: int, rank: int, *, what: str) -> int:
    """Check ``axis`` against ``rank`` and return it unchanged."""
    axis = _check_int(axis, what=f"{what}: axis")
    if not -rank <= axis < rank:
        raise AdapterError(
            f"{what}: axis {axis} is out of range for rank {rank}",
            hint=f"use an axis in [{-rank}, {rank - 1}]",
        )
    return axis


def _check_n(n: int, *, what: str) -> int:
    n = _check_int(n, what=f"{what}: n")
    if n < 2:
        raise AdapterError(
            f"{what}: n must be at least 2 (the number of inputs to combine), got {n}",
            hint="with a single tensor no adapter is needed: link it directly",
        )
    return n


def _open_dims(rank: int) -> list[Dim]:
    """``[batch, ?, ?, ...]``."""
    return ["batch", *([None] * (rank - 1))]


def _fmt(values: Sequence[Any]) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# ---------------------------------------------------------------------------------------------
# model building


def _build(
    title: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
) -> onnx.ModelProto:
    """Make the adapter model, tag it and run the full checker on it."""
    graph = helper.make_graph(nodes, title, inputs, outputs, initializer=list(initializers))
    graph.doc_string = f"onnxstitch {title}"
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="onnxstitch",
        doc_string=title,
    )
    _meta.set_prop(model, _meta.SOURCE, SOURCE)
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name: str, dtype: str, dims: Sequence[Dim]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, DTYPES[dtype], list(dims))


# ---------------------------------------------------------------------------------------------
# the adapters


def transpose(perm: Sequence[int], *, dtype: DTypeLike = "float32") -> onnx.ModelProto:
    """Permute the axes of ``x``: ``y = x.transpose(perm)``.

    ``transpose((0, 3, 1, 2))`` turns an NHWC tensor (Keras) into NCHW (torch);
    ``transpose((0, 2, 3, 1))`` goes back. The input has rank ``len(perm)``, dim 0 ``"batch"``.

    Args:
        perm: a permutation of ``0 .. rank-1``.
        dtype: element type of ``x`` and ``y`` (any of ``DTYPES``).

    Returns:
        A new ModelProto ``x -> y``.

    Raises:
        AdapterError: ``perm`` is not a permutation of ``0 .. len(perm)-1``, or ``dtype`` is unknown.
    """
    what = "adapters.transpose"
    try:
        values = [_check_int(p, what=f"{what}: perm entry") for p in perm]
    except TypeError:
        raise AdapterError(f"{what}: perm must be a sequence of integers, got {perm!r}") from None
    if not values or sorted(values) != list(range(len(values))):
        raise AdapterError(
            f"{what}: {tuple(values)} is not a valid permutation",
            hint=f"give each axis 0..{max(len(values), 1) - 1} once, e.g. (0, 3, 1, 2) for NHWC -> NCHW",
        )
    name = _dtype_name(dtype, what=what)
    in_dims: list[Dim] = ["batch", *([None] * (len(values) - 1))]
    out_dims = [in_dims[p] for p in values]
    title = f"adapter.transpose({_fmt(values)})"
    node = helper.make_node("Transpose", ["x"], ["y"], name="transpose", perm=values)
    return _build(title, [node], [_vi("x", name, in_dims)], [_vi("y", name, out_dims)])


def cast(dtype: DTypeLike, *, from_dtype: DTypeLike = "float32", rank: int = 2) -> onnx.ModelProto:
    """Convert the element type: ``y = x.astype(dtype)``.

    Args:
        dtype: the element type of ``y``.
        from_dtype: the element type of ``x`` (default float32).
        rank: the rank of ``x`` (default 2: ``[batch, ?]``).

    Returns:
        A new ModelProto ``x -> y``.

    Raises:
        AdapterError: an unknown dtype (the valid ones are listed), both dtypes equal, or a bad rank.
    """
    what = "adapters.cast"
    to_name = _dtype_name(dtype, what=what)
    from_name = _dtype_name(from_dtype, what=f"{what}: from_dtype")
    if to_name == from_name:
        raise AdapterError(
            f"{what}: x is already {from_name}",
            hint="set from_dtype= to the element type of the tensor you cast, or drop the adapter",
        )
    dims = _open_dims(_check_rank(rank, what=what))
    title = f"adapter.cast({from_name}->{to_name})"
    node = helper.make_node("Cast", ["x"], ["y"], name="cast", to=DTYPES[to_name])
    return _build(title, [node], [_vi("x", from_name, dims)], [_vi("y", to_name, dims)])


def reshape(shape: Sequence[int], *, dtype: DTypeLike = "float32", rank: int = 2) -> onnx.ModelProto:
    """Reshape ``x`` to ``shape`` with ONNX semantics: ``0`` copies the input's dim, ``-1`` is inferred.

    ``reshape((0, -1))`` keeps the batch dim and flattens the rest; ``reshape((0, 64, 4, 4))``
    unflattens a 1024-vector per sample. Dim 0 of ``y`` is ``"batch"`` when ``shape[0] == 0``.

    Args:
        shape: the target shape; entries ``> 0``, ``0`` (copy) or one ``-1`` (infer).
        dtype: element type of ``x`` and ``y``.
        rank: the rank of ``x`` (default 2: ``[batch, ?]``).

    Returns:
        A new ModelProto ``x -> y``.

    Raises:
        AdapterError: an empty shape, an entry below -1, more than one -1, a 0 past the input's
            rank, or an unknown dtype.
    """
    what = "adapters.reshape"
    try:
        values = [_check_int(s, what=f"{what}: shape entry") for s in shape]
    except TypeError:
        raise AdapterError(f"{what}: shape must be a sequence of integers, got {shape!r}") from None
    in_rank = _check_rank(rank, what=what)
    problems = []
    if not values:
        problems.append("the shape is empty")
    if any(v < -1 for v in values):
        problems.append("entries must be > 0, 0 (copy the input's dim) or -1 (infer)")
    if values.count(-1) > 1:
        problems.append("at most one entry may be -1")
    if any(v == 0 and i >= in_rank for i, v in enumerate(values)):
        problems.append(f"a 0 (copy) entry lies past the input's rank {in_rank}")
    if problems:
        raise AdapterError(f"{what}: bad shape {tuple(values)}: " + "; ".join(problems))
    name = _dtype_name(dtype, what=what)
    out_dims: list[Dim] = [v if v > 0 else None for v in values]
    if values[0] == 0:
        out_dims[0] = "batch"
    target = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name="shape")
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    title = f"adapter.reshape({_fmt(values)})"
    return _build(title, [node], [_vi("x", name, _open_dims(in_rank))], [_vi("y", name, out_dims)], [target])


def flatten(*, dtype: DTypeLike = "float32", rank: int = 4) -> onnx.ModelProto:
    """Flatten every dim after the batch dim: ``y = x.reshape(len(x), -1)`` (ONNX ``Flatten``, axis 1).

    Args:
        dtype: element type of ``x`` and ``y``.
        rank: the rank of ``x`` (at least 2; default 4: a feature map).

    Returns:
        A new ModelProto ``x -> y`` with ``y`` of shape ``[batch, ?]``.

    Raises:
        AdapterError: an unknown dtype or a rank below 2.
    """
    what = "adapters.flatten"
    in_rank = _check_rank(rank, what=what, minimum=2)
    name = _dtype_name(dtype, what=what)
    node = helper.make_node("Flatten", ["x"], ["y"], name="flatten", axis=1)
    return _build(
        "adapter.flatten()",
        [node],
        [_vi("x", name, _open_dims(in_rank))],
        [_vi("y", name, ["batch", None])],
    )


def _channel_axis(axis: int | None, layout: str | None, rank: int, *, what: str) -> int:
    """Resolve the channel axis of ``normalize`` from ``axis`` or ``layout`` (positive, not 0)."""
    if layout is not None:
        if layout not in _meta.LAYOUTS:
            raise AdapterError(
                f"{what}: unknown layout {layout!r}", hint=f"use one of: {', '.join(_meta.LAYOUTS)}"
            )
        if rank != len(layout):
            raise AdapterError(
                f"{what}: layout={layout!r} describes rank-{len(layout)} tensors, got rank={rank}",
                hint=f"pass rank={len(layout)}" if rank == 4 else "use a layout of the tensor's rank",
            )
        from_layout = 1 if layout[1] == "C" else rank - 1
        if axis is not None and axis % rank != from_layout:
            raise AdapterError(
                f"{what}: axis={axis} contradicts layout={layout!r} (channels at axis {from_layout})",
                hint="give either axis= or layout=, not both",
            )
        return from_layout
    resolved = _check_axis(1 if axis is None else axis, rank, what=what) % rank
    if resolved == 0:
        raise AdapterError(
            f"{what}: axis 0 is the batch dim, not a channel axis", hint="use axis=1 (NCHW) or -1"
        )
    return resolved


def normalize(
    mean: Sequence[float],
    std: Sequence[float],
    *,
    axis: int | None = None,
    layout: str | None = None,
    rank: int = 4,
    dtype: DTypeLike = "float32",
) -> onnx.ModelProto:
    """Per-channel normalisation: ``y = (x - mean) / std`` along the channel axis.

    The channel axis is 1 by default (NCHW, torch's convention). For a Keras image (NHWC) pass
    ``layout="NHWC"`` (or ``axis=-1``). Giving ``layout=`` also records it on ``x`` and ``y``
    (``onnxstitch.layout.x``), so the merge can check it at the seam and insert a Transpose where the
    neighbour's layout differs; ``axis=`` alone records nothing.

    Example: ``normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))`` for ImageNet NCHW input.

    Args:
        mean: one value per channel.
        std: one value per channel, each > 0.
        axis: the channel axis (default 1); ``layout`` and ``axis`` must agree when both are given.
        layout: ``"NCHW"`` (channels at 1) or ``"NHWC"`` (channels at 3) for rank-4 tensors;
            ``"NCL"``/``"NLC"`` (rank 3) and ``"NCDHW"``/``"NDHWC"`` (rank 5) with ``rank=``.
        rank: the rank of ``x`` (default 4).
        dtype: a float element type of ``x`` and ``y``.

    Returns:
        A new ModelProto ``x -> y``; the channel dim of ``x`` is static (``len(mean)``).

    Raises:
        AdapterError: mean/std empty, of different lengths, not finite, a std <= 0, a bad axis,
            layout or rank, or a non-float dtype.
    """
    what = "adapters.normalize"
    try:
        mean_arr = np.asarray(mean, dtype=np.float64).reshape(-1)
        std_arr = np.asarray(std, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise AdapterError(
            f"{what}: mean and std must be sequences of numbers, got {mean!r}, {std!r}"
        ) from None
    problems = []
    if mean_arr.size == 0:
        problems.append("mean is empty")
    if mean_arr.size != std_arr.size:
        problems.append(f"mean has {mean_arr.size} values but std has {std_arr.size}")
    if not (np.isfinite(mean_arr).all() and np.isfinite(std_arr).all()):
        problems.append("mean and std must be finite")
    if (std_arr <= 0).any():
        problems.append("every std must be > 0")
    if problems:
        raise AdapterError(f"{what}: " + "; ".join(problems), hint="give one mean and one std per channel")
    in_rank = _check_int(rank, what=f"{what}: rank")
    if in_rank < 2:
        raise AdapterError(f"{what}: rank must be at least 2, got {in_rank}")
    channel = _channel_axis(axis, layout, in_rank, what=what)
    name = _dtype_name(dtype, what=what, allowed=_FLOAT_DTYPES)
    np_dtype = np.dtype(name)
    bshape = (mean_arr.size,) + (1,) * (in_rank - 1 - channel)
    inits = [
        numpy_helper.from_array(mean_arr.astype(np_dtype).reshape(bshape), name="mean"),
        numpy_helper.from_array(std_arr.astype(np_dtype).reshape(bshape), name="std"),
    ]
    dims: list[Dim] = ["batch", *([None] * (in_rank - 1))]
    dims[channel] = int(mean_arr.size)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centered"], name="sub_mean"),
        helper.make_node("Div", ["centered", "std"], ["y"], name="div_std"),
    ]
    where = f"layout={layout}" if layout is not None else f"axis={channel}"
    title = f"adapter.normalize(mean=({_fmt(mean_arr.tolist())}), std=({_fmt(std_arr.tolist())}), {where})"
    model = _build(title, nodes, [_vi("x", name, dims)], [_vi("y", name, dims)], inits)
    if layout is not None:
        _meta.set_layout(model, "x", layout)
        _meta.set_layout(model, "y", layout)
    return model


def softmax(axis: int = -1, *, dtype: DTypeLike = "float32", rank: int = 2) -> onnx.ModelProto:
    """Softmax along ``axis``: ``y = exp(x) / exp(x).sum(axis, keepdims=True)`` (numerically stable).

    Args:
        axis: the axis to normalise over (default the last).
        dtype: a float element type of ``x`` and ``y``.
        rank: the rank of ``x`` (default 2: ``[batch, ?]``).

    Returns:
        A new ModelProto ``x -> y`` (same shape).

    Raises:
        AdapterError: an axis out of range for ``rank``, or a non-float dtype.
    """
    what = "adapters.softmax"
    in_rank = _check_rank(rank, what=what)
    axis = _check_axis(axis, in_rank, what=what)
    name = _dtype_name(dtype, what=what, allowed=_FLOAT_DTYPES)
    dims = _open_dims(in_rank)
    node = helper.make_node("Softmax", ["x"], ["y"], name="softmax", axis=axis)
    return _build(f"adapter.softmax(axis={axis})", [node], [_vi("x", name, dims)], [_vi("y", name, dims)])


def mean(n: int, *, dtype: DTypeLike = "float32", rank: int = 2) -> onnx.ModelProto:
    """Elementwise mean of ``n`` tensors ``x0`` .. ``x{n-1}`` (with broadcasting): an ensemble average.

    Args:
        n: the number of inputs (at least 2).
        dtype: a float element type of the inputs and ``y``.
        rank: the rank of the inputs (default 2: ``[batch, ?]``).

    Returns:
        A new ModelProto ``x0, .., x{n-1} -> y``.

    Raises:
        AdapterError: ``n`` below 2, a bad rank, or a non-float dtype.
    """
    what = "adapters.mean"
    n = _check_n(n, what=what)
    dims = _open_dims(_check_rank(rank, what=what))
    name = _dtype_name(dtype, what=what, allowed=_FLOAT_DTYPES)
    names = [f"x{i}" for i in range(n)]
    node = helper.make_node("Mean", names, ["y"], name="mean")
    return _build(f"adapter.mean({n})", [node], [_vi(x, name, dims) for x in names], [_vi("y", name, dims)])


def concat(n: int, axis: int = -1, *, dtype: DTypeLike = "float32", rank: int = 2) -> onnx.ModelProto:
    """Concatenate ``n`` tensors ``x0`` .. ``x{n-1}`` along ``axis`` (default the last, features).

    Args:
        n: the number of inputs (at least 2).
        axis: the axis to concatenate along; not the batch axis 0.
        dtype: element type of the inputs and ``y``.
        rank: the rank of the inputs (default 2: ``[batch, ?]``).

    Returns:
        A new ModelProto ``x0, .., x{n-1} -> y``.

    Raises:
        AdapterError: ``n`` below 2, an axis out of range or equal to the batch axis, or an unknown dtype.
    """
    what = "adapters.concat"
    n = _check_n(n, what=what)
    in_rank = _check_rank(rank, what=what)
    axis = _check_axis(axis, in_rank, what=what)
    if axis % in_rank == 0:
        raise AdapterError(
            f"{what}: axis {axis} is the batch axis", hint="concatenate features along axis=-1 or 1"
        )
    name = _dtype_name(dtype, what=what)
    dims = _open_dims(in_rank)
    names = [f"x{i}" for i in range(n)]
    node = helper.make_node("Concat", names, ["y"], name="concat", axis=axis)
    title = f"adapter.concat({n}, axis={axis})"
    return _build(title, [node], [_vi(x, name, dims) for x in names], [_vi("y", name, dims)])


# public adapter builders by name, for specs (``{adapter: transpose, perm: [0, 3, 1, 2]}``)
BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "transpose": transpose,
    "cast": cast,
    "reshape": reshape,
    "flatten": flatten,
    "normalize": normalize,
    "softmax": softmax,
    "mean": mean,
    "concat": concat,
}
