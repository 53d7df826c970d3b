"""Cold start of a deploy process: bare onnxruntime vs onnxstitch (issue 13, item 7).

Each sample is a fresh Python process that imports, opens a session on a model file and computes one
result; nothing is warm but the OS file cache (both variants read the same files):

- bare: ``import onnxruntime; onnxruntime.InferenceSession(path)`` + ``run``;
- onnxstitch: ``import onnxstitch as ox; ox.Session(path)`` + ``run`` (with its file checks).

Both load their feed from the same ``.npz`` with numpy. Two models: a small merged model (two tiny
parts chained by ``ox.chain``) and the demo's digits hybrid (Keras CNN backbone + torch MLP head,
``hybrid.onnx`` from ``onnxstitch demo``). Rounds interleave the variants (their order alternates);
medians of the process wall time (interpreter start included, as a deploy sees it) and of the time
from the first import to the first result measured inside the process. An empty interpreter
(``python -c pass``) is timed alongside for reference.
Writes the ``coldstart`` section of docs/benchmarks.md.

    python3 scripts/bench/bench_coldstart.py [--rounds 21] [--demo-dir DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report

ROOT = Path(__file__).resolve().parents[2]

_CHILD = {
    "empty": "pass",
    "bare": (
        "import time; t0 = time.perf_counter()\n"
        "import numpy as np, onnxruntime as ort\n"
        "feeds = dict(np.load({feeds!r}))\n"
        "s = ort.InferenceSession({model!r})\n"
        "s.run(None, feeds)\n"
        "print(time.perf_counter() - t0)\n"
    ),
    "onnxstitch": (
        "import time; t0 = time.perf_counter()\n"
        "import numpy as np, onnxstitch as ox\n"
        "feeds = dict(np.load({feeds!r}))\n"
        "s = ox.Session({model!r})\n"
        "s.run(feeds)\n"
        "print(time.perf_counter() - t0)\n"
    ),
}
VARIANTS = ("bare", "onnxstitch")


def small_merged(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Two tiny MLP parts chained into one model (a few KB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import onnxstitch as ox

    rng = np.random.default_rng(0)

    def part(name: str, n_in: int, n_out: int, x: str, y: str) -> onnx.ModelProto:
        w = numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", [x, "w"], ["h"]), helper.make_node("Relu", ["h"], [y])],
            name,
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", n_in])],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", n_out])],
            [w],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)

    merged = ox.chain({"a": part("a", 64, 32, "x", "feat"), "b": part("b", 32, 10, "feat", "y")})
    path = ox.save(merged, folder / "small.onnx")
    return path, {"x": rng.standard_normal((1, 64)).astype(np.float32)}


def demo_hybrid(folder: Path, demo_dir: Path | None) -> tuple[Path, dict[str, np.ndarray]]:
    """The demo's merged digits model (trained for one epoch here unless ``demo_dir`` has one)."""
    import onnxruntime as ort

    if demo_dir is None or not (demo_dir / "hybrid.onnx").is_file():
        from onnxstitch.demo import run_demo

        demo_dir = demo_dir or folder / "demo"
        run_demo(demo_dir, epochs=1, repeats=3)
    path = demo_dir / "hybrid.onnx"
    inp = ort.InferenceSession(str(path)).get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    return path, {inp.name: np.random.default_rng(0).random(shape, dtype=np.float32)}


def _sample(variant: str, model: Path, feeds: Path) -> tuple[float, float]:
    """(process wall seconds, in-process seconds from import to first result)."""
    code = _CHILD[variant].format(model=str(model), feeds=str(feeds))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} on {model.name} failed:\n{proc.stderr[-3000:]}")
    inner = float(proc.stdout.strip().splitlines()[-1]) if variant != "empty" else 0.0
    return wall, inner


def measure(models: dict[str, tuple[Path, Path]], rounds: int) -> dict[str, Any]:
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    empty: list[float] = []
    for r in range(rounds):
        empty.append(_sample("empty", Path(), Path())[0])
        for label, (model, feeds) in models.items():
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                samples.setdefault((label, variant), []).append(_sample(variant, model, feeds))
    rows: dict[str, Any] = {"empty_ms": statistics.median(empty) * 1e3, "models": {}}
    for label in models:
        row = {}
        for variant in VARIANTS:
            walls, inners = zip(*samples[(label, variant)], strict=True)
            row[variant] = {
                "wall_ms": statistics.median(walls) * 1e3,
                "inner_ms": statistics.median(inners) * 1e3,
            }
        row["wall_ratio"] = row["onnxstitch"]["wall_ms"] / row["bare"]["wall_ms"]
        row["inner_ratio"] = row["onnxstitch"]["inner_ms"] / row["bare"]["inner_ms"]
        rows["models"][label] = row
    return rows


def markdown(results: dict[str, Any], rounds: int, load: str) -> str:
    lines = [
        "## Cold start of a deploy process (`scripts/bench/bench_coldstart.py`)",
        "",
        f"{_report.machine_line()}; load average before the run: {load}. A fresh process per sample:",
        "import, open a session on the model file, compute one result (batch 1). `bare` is",
        "`onnxruntime.InferenceSession(path)`; `onnxstitch` is `ox.Session(path)` with its file checks.",
        f"Medians of {rounds} interleaved rounds; `process` is the wall time of the whole process (an",
        f"empty interpreter takes {results['empty_ms']:.0f} ms), `in process` runs from the first import",
        "to the first result.",
        "",
        "| model | bare process | onnxstitch process | ratio | bare in process | onnxstitch in process "
        "| ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, row in results["models"].items():
        bare, ox = row["bare"], row["onnxstitch"]
        lines.append(
            f"| {label} | {bare['wall_ms']:.0f} ms | {ox['wall_ms']:.0f} ms | {row['wall_ratio']:.2f}× "
            f"| {bare['inner_ms']:.0f} ms | {ox['inner_ms']:.0f} ms | {row['inner_ratio']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds (default 21)")
    parser.add_argument("--demo-dir", type=Path, help="an `onnxstitch demo` output folder to reuse")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models: dict[str, tuple[Path, Path]] = {}
        for label, (path, feeds) in (
            ("small merged (2 parts)", small_merged(folder)),
            ("demo hybrid (Keras CNN + torch MLP)", demo_hybrid(folder, args.demo_dir)),
        ):
            npz = folder / f"feeds{len(models)}.npz"
            np.savez(npz, **feeds)  # type: ignore[arg-type]
            models[label] = (path, npz)
        results = measure(models, args.rounds)
    text = markdown(results, args.rounds, load)
    print(text)
    if not args.no_write:
        print(f"wrote {_report.write_section('coldstart', text)}")


if __name__ == "__main__":
    main()
