"""``ox.score`` throughput and memory on the digits hybrid (issue 14, "Done when").

The demo's Keras -> PyTorch digits hybrid (``onnxstitch demo``, 1 training epoch: the weights do not
change the speed) scores generated Parquet (an ``id`` column and an ``image`` column of 64 floats
per row, row groups of 64 Ki rows) four ways, at the smallest size:

(a) a hand-written loop: ``ParquetFile.iter_batches`` -> ``onnxruntime.InferenceSession.run`` ->
    ``ParquetWriter`` (the same reading and writing, no checks);
(b) ``ox.score(engine="local")``;
(c) ``ox.score(engine="ray")`` with 1 actor, and (d) with 2 actors, each call starting a local Ray
    (2 CPUs) and shutting it down, as the command does.

Every way writes the same outputs (checked). Then the peak RSS of ``ox.score(engine="local")`` in a
fresh process (``/usr/bin/time -f %M``) at every size: the same at every size means it streams.
Writes the ``score`` section of docs/benchmarks.md.

    python3 scripts/bench/bench_score.py [--rows 1000000 10000000] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report

REPO = Path(__file__).resolve().parents[2]
BATCH = 4096
ROW_GROUP = 65536


def _hybrid(folder: Path) -> Path:
    from onnxstitch.demo import run_demo

    run_demo(folder / "demo", epochs=1, repeats=2)
    return folder / "demo" / "hybrid.onnx"


def _generate(path: Path, rows: int, input_name: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    chunk = 1 << 20
    schema = pa.schema([("id", pa.int64()), (input_name, pa.list_(pa.float32(), 64))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            pixels = rng.random((n, 64), dtype=np.float32) * 16.0
            table = pa.table(
                {
                    "id": np.arange(start, start + n, dtype=np.int64),
                    input_name: pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 64),
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=ROW_GROUP)


def _hand_loop(model: Path, source: Path, output: Path, input_name: str, shape: tuple[int, ...]) -> None:
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    writer = None
    for batch in pq.ParquetFile(source).iter_batches(batch_size=BATCH):
        pixels = batch.column(input_name).flatten().to_numpy().reshape(-1, *shape)
        outs = sess.run(names, {input_name: pixels})
        cols = [batch.column("id")] + [
            pa.FixedSizeListArray.from_arrays(pa.array(o.reshape(-1)), o.shape[1]) for o in outs
        ]
        table = pa.Table.from_arrays(cols, names=["id", *names])
        if writer is None:
            writer = pq.ParquetWriter(output, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def _median(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _same_outputs(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    return bool(pq.read_table(a).equals(pq.read_table(b)))


def _peak_rss_mb(model: Path, source: Path, output: Path) -> float:
    code = (
        "import onnxstitch as ox, sys; "
        f"ox.score(sys.argv[1], sys.argv[2], output=sys.argv[3], batch_size={BATCH})"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-c", code, str(model), str(source), str(output)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def _ray_start_seconds() -> float:
    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.shutdown()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of (a) and (b); Ray runs once")
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs/benchmarks.md")
    args = parser.parse_args()

    import onnxstitch as ox

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        folder = Path(tmp)
        model = _hybrid(folder)
        info = ox.Session(model).inputs[0]
        shape = tuple(int(d) for d in info.shape[1:])  # type: ignore[arg-type]
        sources = {}
        for rows in sorted(args.rows):
            sources[rows] = folder / f"digits-{rows}.parquet"
            started = time.perf_counter()
            _generate(sources[rows], rows, info.name)
            size = sources[rows].stat().st_size / 1e9
            print(
                f"generated {rows:,} rows ({size:.2f} GB) in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
        rows = min(args.rows)
        src = sources[rows]
        out = folder / "out"
        out.mkdir()
        t_hand = _median(lambda: _hand_loop(model, src, out / "hand.parquet", info.name, shape), args.repeats)
        print(f"hand loop {rows / t_hand:,.0f} rows/s", flush=True)
        t_local = _median(
            lambda: ox.score(model, src, output=out / "local.parquet", batch_size=BATCH, keep=["id"]),
            args.repeats,
        )
        print(f"local {rows / t_local:,.0f} rows/s", flush=True)
        assert _same_outputs(out / "hand.parquet", out / "local.parquet")
        t_start = _ray_start_seconds()
        t_ray = {}
        for actors in (1, 2):
            started = time.perf_counter()
            ox.score(
                model,
                src,
                output=out / f"ray{actors}.parquet",
                engine="ray",
                actors=actors,
                num_cpus=2,
                batch_size=BATCH,
            )
            t_ray[actors] = time.perf_counter() - started
            print(f"ray x{actors} {rows / t_ray[actors]:,.0f} rows/s", flush=True)
            assert _same_outputs(out / "local.parquet", out / f"ray{actors}.parquet")
        rss = {}
        for n, path in sources.items():
            rss[n] = _peak_rss_mb(model, path, out / f"rss-{n}.parquet")
            print(f"peak RSS at {n:,} rows: {rss[n]:.0f} MB", flush=True)
    _write(rows, t_hand, t_local, t_ray, t_start, rss, load, args)


def _write(
    rows: int,
    t_hand: float,
    t_local: float,
    t_ray: dict[int, float],
    t_start: float,
    rss: dict[int, float],
    load: tuple[float, float, float],
    args: argparse.Namespace,
) -> None:
    lines = [
        "## Scoring a dataset (`ox.score`)",
        "",
        "`scripts/bench/bench_score.py`: the demo's digits hybrid (Keras CNN -> PyTorch MLP) over generated "
        f"Parquet (64 floats per row, row groups of {ROW_GROUP:,}), batches of {BATCH}. "
        f"{_report.machine_line()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} when it "
        "started (a shared machine).",
        "",
        f"Throughput at {rows:,} rows (read Parquet, run, write Parquet; median of {args.repeats} for (a) "
        "and (b), one run each for Ray, which starts and stops its local Ray inside the timing, as the "
        "command does):",
        "",
        "| way | seconds | rows/s | vs hand loop |",
        "| --- | ---: | ---: | ---: |",
    ]
    ways = [("(a) hand-written loop over `ort.InferenceSession`", t_hand), ("(b) `ox.score`, local", t_local)]
    ways += [
        (f"({'c' if a == 1 else 'd'}) `ox.score`, Ray, {a} actor{'s' * (a > 1)}", t) for a, t in t_ray.items()
    ]
    for name, t in ways:
        lines.append(f"| {name} | {t:.1f} | {rows / t:,.0f} | {t_hand / t:.2f}x |")
    per_row = {a: (t - t_local) / rows * 1e6 for a, t in t_ray.items()}
    lines += [
        "",
        f"Ray's overhead, said plainly: starting and stopping a local Ray alone takes {t_start:.1f} s; over "
        f"{rows:,} rows the Ray engine costs {per_row[1]:+.1f} us per row with 1 actor and "
        f"{per_row[2]:+.1f} us with 2 against the local engine on the same 2 cores (its reading, "
        "object-store copies and actors run in processes that share those cores, and every output "
        "batch comes back to the driver, which writes the file). Each actor's session runs 1 intra-op thread "
        "(`threads`), the local engine's onnxruntime's default (one per core). On one machine Ray does not "
        "pay; its use is more machines than one (not measured here).",
        "",
        'Peak RSS of `ox.score(engine="local")` in a fresh process (`/usr/bin/time -f %M`):',
        "",
        "| rows | Parquet size | peak RSS |",
        "| ---: | ---: | ---: |",
    ]
    for n, mb in rss.items():
        lines.append(f"| {n:,} | {n * 64 * 4 / 1e9:.2f} GB of floats | {mb:.0f} MB |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        _report.write_section("score", text)


if __name__ == "__main__":
    main()
