"""Benchmark of onnxstitch.merge: memory on big parts, time against the number of parts.

1. Two parts of ~1.2 GB of weights each (saved with external data, both files named ``weights.bin``
   in their own folders) are merged in a fresh subprocess; the subprocess's peak RSS during the
   merge is compared with the total weight size (target: < 1.5x). The merged model (past 2 GB) is
   saved by ``ox.save`` with external data, checked by path with the full ONNX checker, loaded by
   onnxruntime and run once against the parts run one by one.
2. Chains of 10, 20 and 50 parts of ~200 nodes each are merged; the median time of several runs is
   reported with the time per part (linear growth: a flat time per part).

Usage: ``python3 scripts/bench/bench_merge.py [--quick]`` (``--quick``: ~120 MB parts, fewer repeats).
Writes the "merge" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section

DIM = 4096  # one [DIM, DIM] float32 weight = 64 MiB

_MERGE_CHILD = r"""
import json, sys, threading, time
import psutil
import onnxstitch as ox
from onnxstitch.compose._versions import ort_max_ir_version, ort_max_opset
ort_max_ir_version(); ort_max_opset()  # warm the probe cache outside the measurement
proc = psutil.Process()
base = proc.memory_info().rss
peak = [base]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.005)
sampler = threading.Thread(target=sample)
sampler.start()
t0 = time.perf_counter()
merged = ox.merge({"a": sys.argv[1], "b": sys.argv[2]}, ["a:y->b:x"])
seconds = time.perf_counter() - t0
done.set(); sampler.join()
peak[0] = max(peak[0], proc.memory_info().rss)
ox.save(merged, sys.argv[3], external_data=True)  # files.save: external data, never mutates
print(json.dumps({"base": base, "peak": peak[0], "seconds": seconds}))
"""


def _big_part(n_weights: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for i in range(n_weights):
        w = (rng.standard_normal((DIM, DIM), dtype=np.float32) / np.sqrt(DIM)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == n_weights - 1 else f"h{i}"
        nodes.append(onnx.helper.make_node("MatMul", [current, f"w{i}"], [out]))
        current = out
    graph = onnx.helper.make_graph(
        nodes,
        f"big{seed}",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", DIM])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", DIM])],
        inits,
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)], ir_version=10)


def bench_big(tmp: Path, n_weights: int) -> dict[str, float]:
    paths = []
    for key, seed in (("a", 1), ("b", 2)):
        folder = tmp / key
        folder.mkdir()
        path = folder / "model.onnx"
        onnx.save_model(
            _big_part(n_weights, seed), str(path), save_as_external_data=True, location="weights.bin"
        )
        paths.append(path)
    weight_bytes = sum((p.parent / "weights.bin").stat().st_size for p in paths)
    out = tmp / "merged" / "model.onnx"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _MERGE_CHILD, str(paths[0]), str(paths[1]), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    onnx.checker.check_model(str(out), full_check=True)
    max_err = _parity(paths, out)
    return {
        "weights_gb": weight_bytes / 1e9,
        "merged_gb": (out.parent / "model.onnx.data").stat().st_size / 1e9,
        "peak_gb": stats["peak"] / 1e9,
        "base_gb": stats["base"] / 1e9,
        "ratio": stats["peak"] / weight_bytes,
        "ratio_above_base": (stats["peak"] - stats["base"]) / weight_bytes,
        "seconds": stats["seconds"],
        "max_abs_err": max_err,
    }


def _parity(parts: list[Path], merged: Path) -> float:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, DIM)).astype(np.float32)
    got = ort.InferenceSession(str(merged), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = x
    for path in parts:
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": want})[0]
    return float(np.max(np.abs(got - want)))


def _small_part(i: int, n_nodes: int) -> onnx.ModelProto:
    nodes, current = [], "x"
    ops = ["Relu", "Neg", "Abs", "Sigmoid"]
    for j in range(n_nodes):
        out = "y" if j == n_nodes - 1 else f"t{j}"
        nodes.append(onnx.helper.make_node(ops[j % len(ops)], [current], [out]))
        current = out
    graph = onnx.helper.make_graph(
        nodes,
        f"p{i}",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)], ir_version=10)


def bench_scaling(counts: list[int], repeats: int) -> list[dict[str, float]]:
    import onnxstitch as ox

    rows = []
    for count in counts:
        parts = {f"p{i}": _small_part(i, 200) for i in range(count)}
        ox.chain(dict(list(parts.items())[:2]))  # warm-up (imports, onnxruntime probe)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ox.chain(parts)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        rows.append(
            {"parts": count, "nodes": count * 200, "seconds": median, "ms_per_part": 1000 * median / count}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~120 MB parts and fewer repeats")
    args = parser.parse_args()
    n_weights = 2 if args.quick else 18  # 18 x 64 MiB = 1.2 GB per part
    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        big = bench_big(Path(tmp), n_weights)
    rows = bench_scaling([10, 20, 50], repeats=3 if args.quick else 5)
    print(json.dumps({"big": big, "scaling": rows}, indent=2))
    lines = [
        "## merge",
        "",
        f"`python3 scripts/bench/bench_merge.py{' --quick' if args.quick else ''}` — {machine_line()}",
        "",
        f"Two parts of {big['weights_gb'] / 2:.2f} GB of weights each (external data, both `weights.bin`), "
        f"merged from their paths in a fresh process: peak RSS during the merge {big['peak_gb']:.2f} GB = "
        f"**{big['ratio']:.2f}x** the total weights ({big['weights_gb']:.2f} GB; target < 1.5x); "
        f"{big['ratio_above_base']:.2f}x counting only what the merge added to the "
        f"{big['base_gb']:.2f} GB the process held before; {big['seconds']:.1f} s. "
        f"The merged model ({big['merged_gb']:.2f} GB) was saved by `ox.save` with external data, passed "
        "`onnx.checker.check_model(path, full_check=True)`, loaded in onnxruntime and matched the parts "
        f"run one by one (max abs err {big['max_abs_err']:.1e}).",
        "",
        "| parts (200 nodes each) | nodes | merge time, median (s) | ms per part |",
        "| ---: | ---: | ---: | ---: |",
        *[f"| {r['parts']} | {r['nodes']} | {r['seconds']:.3f} | {r['ms_per_part']:.1f} |" for r in rows],
    ]
    path = write_section("merge", "\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
