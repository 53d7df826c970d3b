"""scripts/bench/bench_quantize.py: its timing, profiling and report on a tiny model (no training)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _precision_models import mlp

import onnxstitch as ox

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> Any:
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    try:
        return importlib.import_module("bench_quantize")
    finally:
        sys.path.remove(str(ROOT / "scripts" / "bench"))


def test_measure_profile_and_section(bench: Any) -> None:
    model = mlp(512, names=True)
    x = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
    q = ox.quantize(model, {"x": x}, min_agreement=0.0)
    h = {
        "input": "x",
        "holdout": {"x": x},
        "threads": 1,
        "labels": np.zeros(64, np.int64),
        "label": "tiny MLP",
        "holdout_text": "64 random rows",
    }
    variants = {
        name: {
            "model": model if options is None else q,
            "session": ox.Session(model if options is None else q, device="cpu", threads=1),
            "agree": 1.0,
            "accuracy": 0.1,
        }
        for name, _, options, _ in bench.VARIANTS
    }
    medians = bench.measure(variants, h, rounds=1, repeats={1: 2, 8: 2, 64: 1})
    assert set(medians) == set(bench.BATCHES) and all(v > 0 for m in medians.values() for v in m.values())
    cpu = bench.measure_cpu(variants, h, {1: 2, 8: 2, 64: 1})
    assert set(cpu[1]) == set(bench.CPU_VARIANTS) and all(v > 0 for m in cpu.values() for v in m.values())
    p32, p8 = bench.profile(model, h, 8, 2), bench.profile(q, h, 8, 2)
    assert p32["total"] > 0 and "MatMul" in dict(p32["ops"])
    assert "DynamicQuantizeMatMul" in dict(p8["ops"])  # onnxruntime fused the dynamic int8 MatMul
    result = {
        "hybrid": h,
        "variants": variants,
        "medians": medians,
        "cpu": cpu,
        "profile_fp32": p32,
        "profile_int8": p8,
    }
    ceiling = {**result, "hybrid": {**h, "key": "ceiling", "labels": None, "label": "the layers alone"}}
    text = bench.section([result, ceiling], 1, 1, 1.0)
    ratio = medians[64]["fp32"] / medians[64]["int8"]
    assert "The ceiling, the digits' int8 layers alone: " in text and f"{ratio:.2f}× at batch 64" in text
    assert "### tiny MLP" in text and "| float32 merged | 100.00% | 10.00% |" in text
    assert "| ≥ 99 % top-1 agreement with the native chain (360 test images) | 100.00% | yes |" in text
    assert bench.LIMITS in text and "| variant (1 thread, CPU time) |" in text
