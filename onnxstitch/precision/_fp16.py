"""``to_fp16``: float16 per part through onnxruntime's float16 converter, behind the accuracy gate."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxstitch.errors import MissingDependencyError, StitchError
from onnxstitch.precision._calibration import Calibration, Feeds, check_informative, load_calibration
from onnxstitch.precision._flow import gated, quiet_root_logger
from onnxstitch.precision._large import infer_by_path, is_large
from onnxstitch.precision._parts import choose, named_copy, node_parts

__all__ = ["ALWAYS_FP32", "to_fp16"]

logger = logging.getLogger(__name__)

#: ops kept in float32 on top of onnxruntime's own block list (its ``DEFAULT_OP_BLOCK_LIST``: ML
#: ops, TopK, Range, CumSum, Min/Max, Resize's ancestor Upsample …): reductions of many terms and
#: normalizations whose sums or variances overflow or lose the small terms in float16
ALWAYS_FP32 = (
    "ReduceSum",
    "ReduceMean",
    "ReduceProd",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "InstanceNormalization",
    "Exp",
    "Pow",
    "Log",
)


def to_fp16(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    parts: Mapping[str, str] | Iterable[str] | str | None = None,
    keep_io_types: bool = True,
    op_block_list: Sequence[str] | None = None,
    holdout: Calibration | None = None,
    reference: Callable[..., Any] | None = None,
    min_agreement: float = 0.99,
    rtol: float = 0.01,
) -> onnx.ModelProto:
    """Convert a model (or some of its parts) to float16, for GPUs, and refuse it if it no longer agrees.

    The converter is onnxruntime's ``onnxruntime.transformers.float16`` (the onnxconverter-common
    converter, maintained inside onnxruntime; no extra dependency): float initializers and tensors
    become float16, a Cast is put at every border with a node kept in float32. Kept in float32:
    the nodes of the parts not converted, onnxruntime's default block list, :data:`ALWAYS_FP32`
    (long reductions, softmax, normalizations, exp/log/pow) and ``op_block_list``.

    The gate is ``quantize``'s: the float16 model against the float32 model (and ``reference``)
    on ``holdout`` (default: seeded random inputs at batch 8 and 32); classifier-like outputs by
    top-1 agreement, the others by the share of samples within ``rtol * max|expected|``. It runs on the CPU,
    where onnxruntime runs float16 graphs too (the CPU tests prove the graph right without a GPU).

    A model past 2 GB (more than ``onnxstitch.precision._large.LARGE_BYTES`` of tensors) gets its
    shape inference through a file with external data, and the gate's sessions open files; the
    result holds its weights in memory (save it with ``ox.save``, which writes external data past 2 GB).

    Args:
        model: a ``ModelProto`` (never modified) or a path.
        parts: ``{part: "fp16" | "fp32"}``, a part name or a list of them (fp16), or ``None``: all.
        keep_io_types: keep the model's inputs and outputs float32 (Casts inside).
        op_block_list: more op types to keep in float32.
        holdout: samples to judge on, in any form ``quantize``'s calibration takes.
        reference: the native chain, called as ``ox.verify`` calls it.
        min_agreement: the lowest share of agreeing samples accepted, per output and comparison.
        rtol: tolerance of non-classifier outputs, relative to the output's ``max|expected|``.

    Returns:
        A new ``ModelProto``: node provenance kept, ``onnxstitch.precision`` recorded.

    Raises:
        PrecisionError: the float16 model agrees less than ``min_agreement`` (report and per-part
            attribution attached).
        InputError: ``holdout`` lacks an input or has a wrong dtype or shape (naming the tensor).
        SpecError: an unknown part or precision.
        MissingDependencyError: onnxruntime's float16 converter cannot be imported.
        StitchError: the converter failed.
    """
    from onnxstitch.files import as_model

    try:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "onnxruntime", extra="gpu", purpose="ox.to_fp16") from exc
    original = as_model(model)
    work = named_copy(original)
    choice = choose(work, parts, allowed=("fp16", "fp32"), converted="fp16")
    blocked = sorted({*DEFAULT_OP_BLOCK_LIST, *ALWAYS_FP32, *(op_block_list or ())})
    if holdout is None:
        held = _random_holdout(work)
        held_text = "seeded random inputs, batches 8 and 32"
    else:
        held = load_calibration(holdout, work, what="holdout")
        check_informative(held, what="holdout")
        held_text = f"{sum(len(next(iter(f.values()))) for f in held)} given sample(s)"
    parts_of = node_parts(work)
    # the converter's shape inference serializes the model, impossible past 2 GB: infer through a file
    # once instead (the converter does the same when given a path), and convert without it
    large = is_large(work)
    if large:
        logger.info("past 2 GB: shape inference through a file with external data")
        with tempfile.TemporaryDirectory(prefix="onnxstitch-fp16-") as folder:
            source = infer_by_path(work, Path(folder))
    else:
        source = work

    def convert(c: Mapping[str, str]) -> onnx.ModelProto:
        keep = [n.name for n, p in zip(work.graph.node, parts_of, strict=True) if c[p] != "fp16"]
        try:
            with quiet_root_logger():
                fresh = onnx.ModelProto()  # the converter may edit what it is given
                fresh.CopyFrom(source)
                out: onnx.ModelProto = convert_float_to_float16(
                    fresh,
                    keep_io_types=keep_io_types,
                    op_block_list=blocked,
                    node_block_list=keep,
                    disable_shape_infer=large,
                )
            _sort_nodes(out.graph)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise StitchError(
                f"float16 conversion failed for parts {dict(c)}: {type(exc).__name__}: {exc}",
                hint="keep the failing part in float32 (parts={...: 'fp32'})",
            ) from exc
        return out

    settings = {
        "converter": "onnxruntime.transformers.float16",
        "keep_io_types": keep_io_types,
        "op_block_list": blocked,
    }
    logger.info("converting parts %s to float16", choice)
    return gated(
        original,
        work,
        choice,
        convert,
        held,
        held_text,
        reference=reference,
        min_agreement=min_agreement,
        rtol=rtol,
        settings=settings,
        what="float16",
    )


def _random_holdout(model: onnx.ModelProto) -> list[Feeds]:
    from onnxstitch.runtime.verification import random_feeds

    return [random_feeds(model, batch, seed=seed) for seed, batch in enumerate((8, 32))]


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the outer scope, roughly: all they read."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_inputs(inner))
    return names


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes topologically, keeping the given order where it is free (in place).

    The float16 converter appends the Casts of the graph inputs at the end of the node list:
    onnxruntime sorts the nodes itself, but ``onnx.checker`` requires them sorted.
    """
    import heapq

    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    needs: list[set[int]] = []
    users: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        deps = {producer[x] for x in (*node.input, *_subgraph_inputs(node)) if x in producer} - {i}
        needs.append(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, deps in enumerate(needs) if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users.get(i, []):
            needs[j].discard(i)
            if not needs[j]:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):  # a cycle: leave the order as the converter wrote it
        return
    sorted_nodes = [onnx.NodeProto() for _ in order]
    for target, i in zip(sorted_nodes, order, strict=True):
        target.CopyFrom(nodes[i])
    del graph.node[:]
    graph.node.extend(sorted_nodes)
