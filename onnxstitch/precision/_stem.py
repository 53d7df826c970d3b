"""Whether the thin convolutions of a static int8 part (the stem) go int8 too: measured, not guessed.

A convolution with few input channels (a 1- or 3-channel stem) is slow in onnxruntime's int8
kernel, measured alone; but kept float32 it leaves the rest of the int8 graph a float island to
leave and re-enter: onnxruntime lays the int8 convolutions out NHWC and the float ones in its
blocked NCHWc layout, and the layout changes (ReorderOutput, Transpose) plus the quantize around
them cost more than the stem saves on some models and less on others. Measured on one AVX-512
VNNI CPU (docs/benchmarks.md): the bench hybrid's 3-channel stem 32×32 ran 1.21× float32 at batch
64 kept float32 and 1.55× quantized (its input Transpose then cancels against the int8 layout);
the digits hybrid's 1-channel stem 8×8 the other way round (1.77× against 1.41×).

So, by default (``min_conv_channels=None``), :func:`choose_thin` quantizes the model both ways and
times both on this machine (on one thread, by its CPU time, so that other processes' load does not
decide),
at batch 1 and at the timing batch of :mod:`._speed`; the stem goes
int8 only when that is faster by :data:`MARGIN` or more (geometric mean of the two batches' time
ratios), so that timing noise does not flip a close call. The decision and its timings are
recorded in the result's ``onnxstitch.precision`` settings (``thin_convs``); an explicit
``min_conv_channels`` pins it without timing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import onnx

from onnxstitch.errors import StitchError
from onnxstitch.precision._calibration import Feeds
from onnxstitch.precision._speed import fixed_batch, time_models, timing_batch

__all__ = ["MARGIN", "THIN_CHANNELS", "choose_thin", "thin_line"]

logger = logging.getLogger(__name__)

#: a convolution with fewer input channels per group than this is "thin"
THIN_CHANNELS = 4
#: the int8 stem must be at least this much faster (geometric mean over the batches) to be chosen
MARGIN = 1.10
#: seconds of timing per batch size
BUDGET_S = 0.5


def choose_thin(
    convert: Callable[[Collection[str]], onnx.ModelProto],
    thin: Collection[str],
    holdout: Sequence[Feeds],
    *,
    budget_s: float = BUDGET_S,
) -> tuple[set[str], dict[str, Any]]:
    """The convolutions to keep float32 (``thin`` or none) and the record of why.

    Timed at batch 1 and at the timing batch (only the latter where the batch dimension is fixed).
    Where quantizing the thin convolutions fails, they stay float32 and the record says so.

    Args:
        convert: quantizes the model keeping the named convolutions float32 (raises ``StitchError``).
        thin: the thin convolutions of the static int8 parts (not empty).
        holdout: the samples timed on (the hold-out set of the gate).
    """
    kept = convert(thin)
    try:
        quantized = convert(())
    except StitchError as exc:  # onnxruntime's tools cannot quantize them: they stay float32
        logger.info("thin convolutions %s stay float32: quantizing them failed: %s", sorted(thin), exc)
        return set(thin), {
            "convs": sorted(thin),
            "decided": f"quantizing them failed ({type(exc).__name__})",
            "chosen": "float32",
        }
    big = timing_batch(kept, holdout)
    batches = [big]
    rows = len(next(iter(big.values()))) if big else 1
    if rows > 1 and not fixed_batch(kept):
        batches.insert(0, {k: v[:1] for k, v in big.items()})
    timings: dict[str, dict[str, float]] = {"kept_float32_ms": {}, "int8_ms": {}}
    ratios = []
    for feed in batches:
        batch = str(len(next(iter(feed.values()))) if feed else 1)
        (kept_ms, int8_ms), _ = time_models([kept, quantized], feed, budget_s=budget_s, cpu_time=True)
        timings["kept_float32_ms"][batch] = round(kept_ms, 4)
        timings["int8_ms"][batch] = round(int8_ms, 4)
        ratios.append(kept_ms / int8_ms if int8_ms > 0 else math.inf)
    gain = math.prod(ratios) ** (1.0 / len(ratios))
    chosen = "int8" if gain >= MARGIN else "float32"
    record = {
        "convs": sorted(thin),
        "decided": "by CPU time on this machine",
        **timings,
        "int8_gain": round(gain, 3),
        "margin": MARGIN,
        "chosen": chosen,
    }
    logger.info(
        "thin convolutions %s: int8 %.2fx their float32 speed (geometric mean over batches %s): %s",
        sorted(thin),
        gain,
        "/".join(timings["int8_ms"]),
        "quantized" if chosen == "int8" else "kept float32",
    )
    return (set() if chosen == "int8" else set(thin)), record


def thin_line(record: dict[str, Any]) -> str:
    """``thin convolutions (1): kept float32: int8 0.88x their float32 speed (one thread's CPU time,
    batch 1/64; int8 needs 1.10x)``."""
    chosen = "quantized int8" if record.get("chosen") == "int8" else "kept float32"
    if "int8_gain" not in record:
        return f"thin convolutions ({len(record.get('convs', []))}): {chosen}: {record.get('decided', '')}"
    batches = "/".join(record.get("int8_ms", {}))
    return (
        f"thin convolutions ({len(record.get('convs', []))}): {chosen}: int8 "
        f"{float(record.get('int8_gain', 0.0)):.2f}x their float32 speed (one thread's CPU time, "
        f"batch {batches}; int8 needs {float(record.get('margin', MARGIN)):.2f}x)"
    )
