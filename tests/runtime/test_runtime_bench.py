"""bench(): rows per batch size, percentiles ordered, options honoured, bad arguments refused."""

from __future__ import annotations

from typing import Any

import onnx
import pytest

from onnxstitch.errors import DeviceError, StitchError
from onnxstitch.runtime.benchmark import BenchResult, bench, peak_rss_mb


def test_bench_rows(mlp_model: onnx.ModelProto) -> None:
    seen: list[tuple[int, int]] = []
    result = bench(
        mlp_model,
        batch_sizes=(1, 3),
        threads=1,
        warmup=1,
        repeats=4,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert isinstance(result, BenchResult)
    assert seen == [(1, 2), (2, 2)]
    assert [r.batch for r in result.rows] == [1, 3]
    for row in result.rows:
        assert row.repeats == 4
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        # all samples over all the time: a slow outlier lowers it (batch / p50 would ignore it)
        assert row.throughput == pytest.approx(row.batch * 1000 / row.mean_ms)
    assert result.providers == ("CPUExecutionProvider",)
    assert result.threads == 1 and result.device == "cpu"
    assert result.session_seconds > 0
    assert result.peak_rss_mb >= 1
    text = str(result)
    assert "samples/s (batch/mean)" in text
    assert "p50 ms" in text and "threads=1" in text and "graph 'mlp'" in text
    assert result.to_dict()["rows"][1]["batch"] == 3


def test_bench_from_path(mlp_path: Any) -> None:
    result = bench(mlp_path, batch_sizes=(2,), repeats=1, warmup=0, optimization="disabled")
    assert result.model == str(mlp_path) and len(result.rows) == 1


def test_bench_bad_arguments(mlp_model: onnx.ModelProto) -> None:
    with pytest.raises(StitchError, match="batch sizes must be positive"):
        bench(mlp_model, batch_sizes=(1, 0))
    with pytest.raises(StitchError, match="batch sizes must be positive"):
        bench(mlp_model, batch_sizes=())
    with pytest.raises(StitchError, match="need repeats >= 1"):
        bench(mlp_model, repeats=0)
    with pytest.raises(DeviceError, match="unknown device"):
        bench(mlp_model, device="npu")


def test_peak_rss_positive() -> None:
    assert peak_rss_mb() > 1
