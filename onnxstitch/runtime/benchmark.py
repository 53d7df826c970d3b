"""Latency and throughput of an ONNX model under onnxruntime: ``bench(model, batch_sizes=...)``."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from onnxstitch.errors import StitchError

__all__ = ["BenchResult", "BenchRow", "bench", "peak_rss_mb"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRow:
    """Timings of one batch size.

    Attributes:
        batch: the batch size.
        p50_ms: median latency of one run, in milliseconds.
        p90_ms: 90th percentile latency.
        p99_ms: 99th percentile latency.
        mean_ms: mean latency.
        throughput: samples per second over all timed runs: total samples / total time, i.e.
            ``batch / mean`` (not ``batch / p50``, which a few slow runs would not lower).
        repeats: number of timed runs.
    """

    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    repeats: int


@dataclass(frozen=True)
class BenchResult:
    """What :func:`bench` measured.

    Attributes:
        model: a label of the model.
        device: the device asked for.
        providers: onnxruntime's providers of the session, in priority order.
        threads: the intra-op threads asked for (``None``: onnxruntime's default).
        session_seconds: time to create the session (load, optimise, initialise).
        peak_rss_mb: the process's peak resident memory after the runs, in MiB.
        rows: one :class:`BenchRow` per batch size.
    """

    model: str
    device: str
    providers: tuple[str, ...]
    threads: int | None
    session_seconds: float
    peak_rss_mb: float
    rows: tuple[BenchRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form of the result."""
        data = asdict(self)
        data["providers"] = list(self.providers)
        data["rows"] = [asdict(r) for r in self.rows]
        return data

    def __str__(self) -> str:
        head = (
            f"bench {self.model} on {self.providers[0] if self.providers else self.device} "
            f"(threads={self.threads or 'default'}): session {self.session_seconds * 1000:.1f} ms, "
            f"peak RSS {self.peak_rss_mb:.0f} MiB"
        )
        lines = [head, "batch  p50 ms  p90 ms  p99 ms  mean ms  samples/s (batch/mean)"]
        for r in self.rows:
            lines.append(
                f"{r.batch:>5}  {r.p50_ms:>6.3f}  {r.p90_ms:>6.3f}  {r.p99_ms:>6.3f}  {r.mean_ms:>7.3f}  "
                f"{r.throughput:>9.1f}"
            )
        return "\n".join(lines)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (current RSS where the peak is not known)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak) / (1024 * 1024 if sys.platform == "darwin" else 1024)
    except ImportError:  # Windows: no resource module
        import psutil

        return float(psutil.Process(os.getpid()).memory_info().rss) / 2**20


def _time_runs(run: Callable[[], object], warmup: int, repeats: int) -> np.ndarray[Any, Any]:
    for _ in range(warmup):
        run()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        run()
        times[i] = time.perf_counter() - start
    return times * 1000.0


def bench(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = (1, 8, 64),
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 20,
    optimization: str = "all",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BenchResult:
    """Measure ``model``'s latency at each batch size on seeded random feeds.

    Args:
        model: an ``onnx.ModelProto`` or a path.
        batch_sizes: batch sizes to measure (dim 0 and ``batch`` dims take them).
        device: see :class:`~onnxstitch.runtime.session.Session`.
        threads: intra-op threads (``None``: onnxruntime's default).
        warmup: untimed runs before the timed ones, per batch size.
        repeats: timed runs per batch size.
        optimization: onnxruntime graph optimisation level.
        seed: seed of the random feeds.
        progress: called as ``progress(done, total)`` after each batch size.

    Returns:
        The timings per batch size, session-creation time and peak memory.

    Raises:
        StitchError: ``batch_sizes`` is empty or holds a non-positive size, or ``warmup``/``repeats``
            are out of range.
        DeviceError: ``device`` is unavailable.
        ModelFileError: the model cannot be loaded.
    """
    from onnxstitch.files import as_model
    from onnxstitch.runtime.session import Session
    from onnxstitch.runtime.verification import random_feeds

    bad = [b for b in batch_sizes if b < 1]
    if not batch_sizes or bad:
        raise StitchError(
            f"batch sizes must be positive numbers, got {list(batch_sizes)}", hint="e.g. 1,8,64"
        )
    if repeats < 1 or warmup < 0:
        raise StitchError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    session = Session(model, device=device, threads=threads, optimization=optimization)
    label = f"graph {model.graph.name!r}" if isinstance(model, onnx.ModelProto) else str(model)
    proto = as_model(model)  # for the signature; the session itself reads a path directly
    rows = []
    for done, batch in enumerate(batch_sizes, start=1):
        feeds = random_feeds(proto, batch, seed=seed)
        times = _time_runs(lambda feeds=feeds: session.run(feeds), warmup, repeats)  # type: ignore[misc]
        p50, p90, p99 = (float(v) for v in np.percentile(times, [50, 90, 99]))
        mean = float(times.mean())  # throughput: all samples over all the timed runs' time
        rows.append(
            BenchRow(batch, p50, p90, p99, mean, batch * repeats * 1000.0 / float(times.sum()), repeats)
        )
        logger.debug("bench %s batch %d: p50 %.3f ms", label, batch, p50)
        if progress is not None:
            progress(done, len(batch_sizes))
    return BenchResult(
        label, device, tuple(session.providers), threads, session.creation_seconds, peak_rss_mb(), tuple(rows)
    )
