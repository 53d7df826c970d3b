"""Measure what onnx-ir costs per merge part, against today's proto route (issue 12, "compose on onnx-ir").

For one part of 200 nodes (bench_merge's ``_small_part``) and a chain of 20 such parts, medians of
repeats of the CPU time, in one process so the ratios are side by side:

* ``ir.serde.deserialize_model`` and ``ir.serde.serialize_model`` of one part (a round trip);
* renaming every value of one part in IR (``value.name = "key/" + name``) and every node;
* today's per-part proto work in ``merge``: ``split_weights`` + nodes extended into the merged graph
  + ``rename_node`` on each (the string renamer);
* an IR merge pipeline: every part deserialized once, its values renamed and its nodes moved into
  one ``ir.Graph``, the linked inputs replaced by the producers' values, serialized once;
* initializer dedup by onnx-ir's ``DeduplicateHashedInitializersPass`` on the merged model: it needs
  the merged model in IR, so the route is deserialize + pass + serialize (today: ``_Weights`` dedups
  while the graph is built, reading external data only when two samples match);
* loading one part from a path whose 8 weights are external data: ``ir.load`` (external tensors
  memory-mapped, no checks of ours) against compose's ``load_path`` (the hardened reader: weights
  left on disk, containment/hardlink/offset checks);
* ``ox.chain`` of the 20 parts (today's merge, whole) — the budget is ~2 ms per part.

Usage: ``python3 scripts/bench/measure_ir.py`` (prints JSON, writes the "merge-ir" section of
docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section
from bench_merge import _small_part

_LABELS = {
    "ir_deserialize_ms_per_part": "`ir.serde.deserialize_model` (proto -> IR)",
    "ir_serialize_ms_per_part": "`ir.serde.serialize_model` (IR -> proto)",
    "ir_round_trip_ms_per_part": "round trip (the two above)",
    "ir_deserialize_and_rename_ms_per_part": "deserialize + rename every value and node in IR",
    "proto_split_extend_rename_ms_per_part": "today: `split_weights` + nodes copied + string renamer",
    "ir_pipeline_ms_per_part": "IR merge: each part deserialized once, renamed, wired, serialized once",
    "ir_dedup_route_ms_per_part": "initializer dedup by onnx-ir's pass (merged model to IR and back)",
    "ir_load_path_ms": "`ir.load` of a part with 8 external weights (memory-mapped, unchecked)",
    "hardened_load_path_ms": "today: `load_path` of that part (hardened reader, weights on disk)",
    "ox_chain_ms_per_part": "**today's `ox.chain`, whole (the budget: ~2 ms)**",
}

N_PARTS = 20


def _median_ms(fn: Callable[[], object], repeats: int = 15) -> float:
    """Median CPU time of ``fn`` (process time: other processes' turns on a shared machine not counted)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1000 * statistics.median(times)


def _ir_pipeline(parts: dict[str, onnx.ModelProto]) -> onnx.ModelProto:
    """Convert each part once, rename and wire in IR, serialize once (a chain: y of one feeds x of next)."""
    keys = list(parts)
    merged = ir.Graph([], [], nodes=[], name="+".join(keys), opset_imports={"": 20})
    previous: ir.Value | None = None
    for key in keys:
        model = ir.serde.deserialize_model(parts[key])
        graph = model.graph
        for value in [*graph.inputs, *graph.initializers.values()]:
            value.name = f"{key}/{value.name}"
        for node in graph:
            node.name = f"{key}/{node.name or node.op_type}"
            for out in node.outputs:
                out.name = f"{key}/{out.name}"
        (x,) = graph.inputs
        if previous is not None:
            x.replace_all_uses_with(previous)
        else:
            graph.inputs.clear()
            merged.inputs.append(x)
        nodes = list(graph)
        graph.remove(nodes)
        merged.extend(nodes)
        previous = graph.outputs[0]
        graph.outputs.clear()
    assert previous is not None
    merged.outputs.append(previous)
    return ir.serde.serialize_model(ir.Model(merged, ir_version=10))


def _part_on_disk(folder: Path) -> Path:
    """The 200-node part with eight 64x64 float weights added, saved with external data."""
    import numpy as np
    import onnx.numpy_helper

    model = _small_part(0, 200)
    rng = np.random.default_rng(0)
    for i in range(8):
        w = onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), f"w{i}")
        model.graph.initializer.append(w)
    path = folder / "part.onnx"
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def main() -> None:
    from onnx_ir.passes.common import DeduplicateHashedInitializersPass

    from onnxstitch import chain
    from onnxstitch.compose._graph import _renamer, rename_node
    from onnxstitch.compose._versions import split_weights

    part = _small_part(0, 200)
    parts = {f"p{i}": _small_part(i, 200) for i in range(N_PARTS)}

    def ir_rename() -> None:
        model = ir.serde.deserialize_model(part)
        g = model.graph
        for v in g.inputs:
            v.name = f"k/{v.name}"
        for node in g:
            node.name = f"k/{node.name}"
            for out in node.outputs:
                out.name = f"k/{out.name}"

    def proto_part() -> None:
        skeleton, _ = split_weights(part)
        merged = onnx.GraphProto()
        merged.node.extend(skeleton.graph.node)
        rename = _renamer("k", {})
        for node in merged.node:
            node.name = f"k/{node.name}"
            rename_node(node, rename, {})

    merged_proto = chain(parts)

    def ir_dedup() -> None:
        merged_ir = ir.serde.deserialize_model(merged_proto)
        DeduplicateHashedInitializersPass()(merged_ir)
        ir.serde.serialize_model(merged_ir)

    from onnxstitch.compose._weights import load_path
    from onnxstitch.files.external import ExternalStore

    folder = Path(tempfile.mkdtemp(prefix="measure_ir_"))
    on_disk = _part_on_disk(folder)

    model = ir.serde.deserialize_model(part)
    deser = _median_ms(lambda: ir.serde.deserialize_model(part))
    ser = _median_ms(lambda: ir.serde.serialize_model(model))
    rows = {
        "ir_deserialize_ms_per_part": deser,
        "ir_serialize_ms_per_part": ser,
        "ir_round_trip_ms_per_part": deser + ser,
        "ir_deserialize_and_rename_ms_per_part": _median_ms(ir_rename),
        "proto_split_extend_rename_ms_per_part": _median_ms(proto_part),
        "ir_pipeline_ms_per_part": _median_ms(lambda: _ir_pipeline(parts), 7) / N_PARTS,
        "ir_dedup_route_ms_per_part": _median_ms(ir_dedup, 7) / N_PARTS,
        "ir_load_path_ms": _median_ms(lambda: ir.load(on_disk)),
        "hardened_load_path_ms": _median_ms(lambda: load_path("p", on_disk, ExternalStore())),
        "ox_chain_ms_per_part": _median_ms(lambda: chain(parts), 7) / N_PARTS,
        "parts": N_PARTS,
        "nodes_per_part": 200,
        "onnx_ir": ir.__version__,
    }
    shutil.rmtree(folder)
    merged = _ir_pipeline(parts)
    onnx.checker.check_model(merged, full_check=True)
    print(json.dumps(rows, indent=2))
    load = os.getloadavg()[0]
    lines = [
        "## merge on onnx-ir: what it would cost",
        "",
        f"`python3 scripts/bench/measure_ir.py` — {machine_line()}, onnx-ir {ir.__version__}; CPU ms per "
        f"part of 200 nodes (median of repeats; load average {load:.1f} while measured), {N_PARTS} parts.",
        "",
        "| step | CPU ms per part |",
        "| --- | ---: |",
        *[f"| {label} | {rows[key]:.2f} |" for key, label in _LABELS.items()],
        "",
        "onnx-ir builds a Python object per node and value: deserializing one part costs about as much",
        "as today's whole merge of it, and a merge done in IR several times the budget, so compose keeps",
        "`ModelProto`s and renames with one string renamer (C-level repeated-field assignment; exact,",
        "since ONNX forbids a subgraph to shadow an outer name) — see `onnxstitch/compose/_graph.py`.",
        "Loading a part from its path into IR (`ir.load`) is not cheaper than the hardened reader either.",
    ]
    print(f"wrote {write_section('merge-ir', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
