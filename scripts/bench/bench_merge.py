"""Benchmark of onnxstitch.merge: memory on big parts (merge *and* save), time against the number of parts.

1. Two parts of ~1.2 GB of weights each (saved with external data, both files named ``weights.bin``
   in their own folders). Each route runs in a FRESH process under ``/usr/bin/time -f %M`` (peak RSS
   as the OS counts it; a child of a big parent would inherit its high-water mark), against a
   baseline process that only imports onnxstitch and onnxruntime and asks the onnxruntime probe:
   (a) ``ox.chain(paths, save_to=out)`` — the streaming route: weights copied file to file
       (target: at most 0.25x the weights above the baseline);
   (b) ``ox.save(ox.chain({k: ox.load(p)}), out)`` — two parts in memory, one merged copy
       (target: at most 2.2x the weights above the baseline);
   (c) ``ox.save(ox.chain(paths), out)`` — merged in memory from paths, then saved.
   Each merged model is checked by path with the full ONNX checker, and (a)'s is run in onnxruntime
   against the parts run one by one.
2. Chains of 10, 20 and 50 parts of ~200 nodes each are merged; the median time of several runs is
   reported with the time per part (linear growth: a flat time per part).

Usage: ``python3 scripts/bench/bench_merge.py [--quick | --scaling-only]`` (``--quick``: ~134 MB
parts, fewer repeats; the docs report the full run). Writes the "merge" section of
docs/benchmarks.md; ``--scaling-only`` runs only item 2 and prints it (nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
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
REPO = Path(__file__).resolve().parents[2]

_PRELUDE = """
import sys, time
import onnxruntime
import onnxstitch as ox
from onnxstitch.files._limits import ort_max_ir_version, ort_max_opset
ort_max_ir_version(); ort_max_opset()
a, b, out = sys.argv[1:4]
t0 = time.perf_counter()
"""

ROUTES = {
    "baseline": "pass",
    "stream": 'ox.chain({"a": a, "b": b}, save_to=out)',
    "load_chain_save": 'ox.save(ox.chain({"a": ox.load(a), "b": ox.load(b)}), out)',
    "chain_save": 'ox.save(ox.chain({"a": a, "b": b}), out)',
}

_PARITY = r"""
import sys
import numpy as np, onnxruntime as ort
x = np.random.default_rng(0).standard_normal((1, int(sys.argv[4]))).astype(np.float32)
got = ort.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
want = x
for path in sys.argv[1:3]:
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": want})[0]
print(float(np.max(np.abs(got - want))))
"""


def _run_route(route: str, paths: list[Path], out: Path) -> tuple[int, float]:
    """Peak RSS (bytes, from the OS) and wall seconds of one route in a fresh process."""
    code = _PRELUDE + ROUTES[route] + "\nprint(time.perf_counter() - t0)\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = ["/usr/bin/time", "-f", "maxrss_kb=%M", sys.executable, "-c", code, *map(str, paths), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"route {route} failed:\n{proc.stderr[-3000:]}")
    kb = next(int(line.split("=")[1]) for line in proc.stderr.splitlines() if line.startswith("maxrss_kb="))
    return kb * 1024, float(proc.stdout.strip().splitlines()[-1])


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


def bench_big(tmp: Path, n_weights: int) -> dict[str, object]:
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
    rows: dict[str, dict[str, float]] = {}
    base, _ = _run_route("baseline", paths, tmp / "none.onnx")
    for route in ("stream", "load_chain_save", "chain_save"):
        out = tmp / route / "model.onnx"
        out.parent.mkdir()
        peak, seconds = _run_route(route, paths, out)
        onnx.checker.check_model(str(out), full_check=True)
        data = out.parent / "model.onnx.data"
        rows[route] = {
            "peak_gb": peak / 1e9,
            "above_base": (peak - base) / weight_bytes,
            "seconds": seconds,
            "merged_gb": (data.stat().st_size if data.exists() else out.stat().st_size) / 1e9,
        }
        if route == "stream":
            rows[route]["max_abs_err"] = _parity(paths, out)
        for file in out.parent.iterdir():  # keep the disk free for the next route
            file.unlink()
    return {"weights_gb": weight_bytes / 1e9, "base_gb": base / 1e9, "routes": rows}


def _parity(parts: list[Path], merged: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", _PARITY, *map(str, parts), str(merged), str(DIM)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


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
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            ox.chain(parts)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        median = statistics.median(times)
        rows.append(
            {
                "parts": count,
                "nodes": count * 200,
                "seconds": median,
                "ms_per_part": 1000 * median / count,
                "cpu_ms_per_part": 1000 * statistics.median(cpu) / count,
            }
        )
    return rows


_LABELS = {
    "stream": ("`ox.chain(paths, save_to=out)` (streaming)", "≤ 0.25x"),
    "load_chain_save": ("`ox.load` ×2 + `ox.chain` + `ox.save`", "≤ 2.2x"),
    "chain_save": ("`ox.chain(paths)` + `ox.save`", "–"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~134 MB parts and fewer repeats")
    parser.add_argument(
        "--scaling-only", action="store_true", help="only the merge time of 10/20/50 parts; nothing written"
    )
    args = parser.parse_args()
    if args.scaling_only:
        rows = bench_scaling([10, 20, 50], repeats=5)
        print(json.dumps({"scaling": rows, "load_average": os.getloadavg()[0]}, indent=2))
        return
    n_weights = 2 if args.quick else 18  # 18 x 64 MiB = 1.2 GB per part
    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        big = bench_big(Path(tmp), n_weights)
    rows = bench_scaling([10, 20, 50], repeats=3 if args.quick else 5)
    load = os.getloadavg()[0]
    print(json.dumps({"big": big, "scaling": rows, "load_average": load}, indent=2))
    routes: dict[str, dict[str, float]] = big["routes"]  # type: ignore[assignment]
    weights_gb = float(big["weights_gb"])  # type: ignore[arg-type]
    lines = [
        "## merge",
        "",
        f"`python3 scripts/bench/bench_merge.py{' --quick' if args.quick else ''}` — {machine_line()}",
        "",
        f"Two parts of {weights_gb / 2:.2f} GB of weights each (external data, both `weights.bin`), "
        "each route in a fresh process, peak RSS from the OS (`/usr/bin/time -f %M`), merge *and* save; "
        f"the baseline process (imports, onnxruntime probe) peaks at {float(big['base_gb']):.2f} GB "  # type: ignore[arg-type]
        f"and the ratios count what each route adds to it, against the {weights_gb:.2f} GB of weights.",
        "",
        "| route | peak RSS (GB) | above baseline / weights | target | seconds | merged weights (GB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {_LABELS[k][0]} | {r['peak_gb']:.2f} | **{r['above_base']:.2f}x** | {_LABELS[k][1]} | "
            f"{r['seconds']:.1f} | {r['merged_gb']:.2f} |"
            for k, r in routes.items()
        ],
        "",
        "Every merged model passed `onnx.checker.check_model(path, full_check=True)`; the streamed one ran "
        "in onnxruntime and matched the parts run one by one "
        f"(max abs err {routes['stream']['max_abs_err']:.1e}).",
        "",
        f"Merge time (in memory, no save; load average {load:.1f} on {os.cpu_count()} cores while timed, so "
        "the CPU time of the merging process is shown too: it does not count other processes' turns):",
        "",
        "| parts (200 nodes each) | nodes | merge time, median (s) | ms per part | CPU ms per part |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {r['parts']} | {r['nodes']} | {r['seconds']:.3f} | {r['ms_per_part']:.1f} | "
            f"{r['cpu_ms_per_part']:.1f} |"
            for r in rows
        ],
    ]
    path = write_section("merge", "\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
