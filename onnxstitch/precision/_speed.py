"""Whether a conversion pays: the converted model timed against the float32 model on this machine.

The gate says whether the result still agrees; this says whether it is faster. Both models run in
one onnxruntime CPU session each (``ox.Session``'s defaults, idle threads not spinning), on the
hold-out samples batched (up to :data:`MAX_BATCH` of them per run): a few warm-up runs, then
blocks of runs model after model, the median of each. The speed of the result is recorded and, for
int8 slower than float32, warned about; it never changes the result. What the timing does decide,
by default, is whether the thin convolutions of an int8 part go int8 too (:mod:`._stem`).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxstitch.precision._calibration import Feeds

__all__ = [
    "MAX_BATCH",
    "fixed_batch",
    "measure_speed",
    "speed_line",
    "speed_note",
    "time_models",
    "timing_batch",
    "warn_speed",
]

logger = logging.getLogger(__name__)

MAX_BATCH = 64
BUDGET_S = 1.0
WARMUP = 2
MIN_RUNS = 3
MAX_RUNS = 200
#: timed runs per block (at most), and the seconds a block aims at
BLOCK_RUNS = 20
BLOCK_S = 0.02


def fixed_batch(model: onnx.ModelProto) -> bool:
    """Whether an input's first (batch) dimension is a fixed number."""
    return any(
        i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].HasField("dim_value")
        for i in model.graph.input
    )


def timing_batch(model: onnx.ModelProto, holdout: Sequence[Feeds]) -> Feeds:
    """The hold-out samples as one batch of up to :data:`MAX_BATCH` (the first hold-out feed when an
    input's batch dimension is fixed)."""
    fixed = fixed_batch(model)
    if fixed or len(holdout) == 1:
        return {k: v[:MAX_BATCH] if not fixed else v for k, v in holdout[0].items()}
    return {k: np.concatenate([f[k] for f in holdout])[:MAX_BATCH] for k in holdout[0]}


def time_models(
    models: Sequence[onnx.ModelProto | Path],
    feed: Feeds,
    *,
    budget_s: float = BUDGET_S,
    max_runs: int = MAX_RUNS,
    cpu_time: bool = False,
) -> tuple[list[float], int]:
    """Median milliseconds per run of each model on ``feed``, and the runs timed of each.

    One CPU session each (``ox.Session``'s defaults, but idle threads do not spin), a few warm-up
    runs, then blocks of runs (about :data:`BLOCK_S` seconds each), model after model, until
    ``budget_s`` seconds have passed (at least :data:`MIN_RUNS`, at most ``max_runs`` timed runs of
    each model). A float16 model whose inputs are float16 (``keep_io_types=False``) gets the
    float samples cast. ``cpu_time``: one intra-op thread (the calling one), timed by its CPU time
    instead of the wall clock, so that other processes' load does not weigh in (the steadiest
    measure on a busy machine: docs/benchmarks.md)."""
    from onnxstitch.runtime.session import Session

    # spinning off: an idle session's intra-op threads would otherwise spin on the cores the other
    # model is timed on (measured on 2 cores: the bench hybrid's float32 model, 4.4-4.7 ms a batch
    # of 64 alone, took 6.8-10.9 ms timed against a spinning int8 session)
    threads = 1 if cpu_time else None
    sessions = [Session(m, device="cpu", spinning=False, threads=threads) for m in models]
    feeds = []
    for session in sessions:
        dtypes = {i.name: i.dtype for i in session.inputs}
        feeds.append(
            {
                k: v.astype(dtypes[k]) if k in dtypes and v.dtype != dtypes[k] and v.dtype.kind == "f" else v
                for k, v in feed.items()
            }
        )
    for _ in range(WARMUP):
        for session, f in zip(sessions, feeds, strict=True):
            session.run(f)
    # blocks of runs, model after model, the first run of each block not timed (caches, wake-up)
    first = []
    for session, f in zip(sessions, feeds, strict=True):
        t0 = time.perf_counter()
        session.run(f)
        first.append(time.perf_counter() - t0)
    clock = time.thread_time if cpu_time else time.perf_counter
    block = max(1, min(BLOCK_RUNS, int(BLOCK_S / max(max(first), 1e-6))))
    times: list[list[float]] = [[] for _ in sessions]
    start = time.perf_counter()
    while len(times[0]) < max_runs and (len(times[0]) < MIN_RUNS or time.perf_counter() - start < budget_s):
        for i, (session, f) in enumerate(zip(sessions, feeds, strict=True)):
            session.run(f)
            for _ in range(block):
                t0 = clock()
                session.run(f)
                times[i].append(clock() - t0)
    return [statistics.median(t) * 1000.0 for t in times], len(times[0])


def measure_speed(
    float_model: onnx.ModelProto,
    converted: onnx.ModelProto | Path,
    holdout: Sequence[Feeds],
    *,
    precision: str,
    budget_s: float = BUDGET_S,
    float_source: onnx.ModelProto | Path | None = None,
) -> dict[str, Any]:
    """Median milliseconds per batch of both models: ``{"batch", "float32_ms", "quantized_ms",
    "ratio" (float32_ms / quantized_ms: above 1 the converted model is faster), "runs", "device",
    "precision"}``. Timing stops after ``budget_s`` seconds of runs (at least a few each).
    ``converted`` and ``float_source`` (default ``float_model``) may be paths (models past 2 GB)."""
    feed = timing_batch(float_model, holdout)
    source = float_model if float_source is None else float_source
    (float_ms, quant_ms), runs = time_models([source, converted], feed, budget_s=budget_s)
    batch = len(next(iter(feed.values()))) if feed else 1
    return {
        "batch": batch,
        "float32_ms": round(float_ms, 3),
        "quantized_ms": round(quant_ms, 3),
        "ratio": round(float_ms / quant_ms, 3) if quant_ms > 0 else float("inf"),
        "runs": runs,
        "device": "cpu",
        "precision": precision,
    }


def speed_line(speed: Mapping[str, Any]) -> str:
    """``speed (batch 64, this machine's CPU): float32 22.6 ms, int8 28.6 ms per batch: 0.79x``."""
    precision = speed.get("precision", "converted")
    return (
        f"speed (batch {speed['batch']}, this machine's {str(speed.get('device', 'cpu')).upper()}, "
        f"median of {speed.get('runs', '?')}): float32 {speed['float32_ms']:.3g} ms, {precision} "
        f"{speed['quantized_ms']:.3g} ms per batch: {speed['ratio']:.2f}x the float32 speed"
    )


def speed_note(speed: Mapping[str, Any], parts: Mapping[str, str], *, cli: bool) -> str | None:
    """What to tell the user when the converted model is slower than float32, or ``None``.

    ``parts`` is the ``{part: precision}`` choice; ``cli`` phrases the advice as command-line options
    (else as ``ox.quantize`` arguments)."""
    ratio = float(speed["ratio"])
    if ratio >= 1.0:
        return None
    precision = str(speed.get("precision", "int8"))
    head = f"{precision} is {ratio:.2f}x the float32 speed at batch {speed['batch']} on this machine"
    if precision in ("fp16", "float16"):
        return f"{head} (on CPU; fp16 is meant for GPUs)"
    converted = [p for p, v in parts.items() if v != "fp32"]
    if cli:
        keep = " ".join(f"--part {p}=fp32" for p in converted)
    else:
        keep = "parts=" + repr({p: "fp32" for p in converted})
    return (
        f"{head}: it does not pay here; keep the part{'s' if len(converted) > 1 else ''} float32 "
        f"({keep}) or try it on the deploy target (int8 pays on wide convolutions and CPUs with "
        f"VNNI; thin and depthwise convolutions stay float32, each with quantize/dequantize around it)"
    )


def warn_speed(speed: Mapping[str, Any], parts: Mapping[str, str]) -> str | None:
    """Log :func:`speed_note` (a WARNING for int8, INFO for fp16 on CPU) and return it."""
    note = speed_note(speed, parts, cli=False)
    if note is not None:
        fp16 = speed.get("precision") in ("fp16", "float16")
        logger.log(logging.INFO if fp16 else logging.WARNING, "%s", note)
    return note
