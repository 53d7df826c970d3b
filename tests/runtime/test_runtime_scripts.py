"""scripts/bench/bench_runtime.py report pieces and scripts/gpu_check.py end to end (CPU mode)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_CHECK = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def bench_runtime() -> Any:
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    try:
        return importlib.import_module("bench_runtime")
    finally:
        sys.path.remove(str(ROOT / "scripts" / "bench"))


def _medians(merged: float, reference: float, native: float) -> dict[str, float]:
    base = {
        name: 10.0 for name, _ in (("native_call", ""), ("two_sessions", ""), ("two_sessions_shared", ""))
    }
    return {**base, "torch_eager": 50.0, "merged": merged, "torch_onnx": reference, "native_predict": native}


def test_targets_and_markdown(bench_runtime: Any, tmp_path: Path) -> None:
    medians = {1: _medians(1.0, 1.0, 6.0), 8: _medians(2.0, 1.5, 5.0), 64: _medians(4.0, 4.0, 12.0)}
    found = {t: (v, ok) for t, v, ok in bench_runtime.targets(medians)}
    assert found["merged ≤ 1.05 × torch-only reference, batch 1"] == ("1.00×", True)
    assert found["merged ≤ 1.05 × torch-only reference, batch 8"] == ("1.33×", False)
    assert found["merged ≥ 2.5 × faster than native chain (predict_on_batch), batch 64"] == ("3.0×", True)
    assert found["merged ≥ 5.0 × faster than native chain (predict_on_batch), batch 1"] == ("6.0×", True)
    text = bench_runtime.markdown(medians, bench_runtime.Arch(), 2, 9, "✓")
    assert "| (c) merged model, one session | 1.00 (1.00×) | 2.00 (1.00×) | 4.00 (1.00×) |" in text
    assert "| merged ≤ 1.05 × torch-only reference, batch 8 | 1.33× | NO |" in text
    assert "Threads: 2" in text and "median of 9 repeats" in text
    png = tmp_path / "plot.png"
    bench_runtime.plot(medians, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GPU_CHECK), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("gpuprep")
    done = _run(["--prepare", str(folder), "--small"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["arch.json", "hybrid.onnx", "reference.npz"]
    return folder


@pytest.mark.slow
def test_gpu_check_cpu_mode(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _run([str(prepared), "--device", "cpu", "--quick"], env={**os.environ, "OUT": str(out)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (out / "gpu.md").read_text()
    assert "| ORT CPU vs native chain |" in text and "| ORT cpu fp16 vs ORT CPU fp32 |" in text
    assert text.count("✓ |") == 6 and "✗" not in text  # incl. the two NHWC-kernel sessions
    rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 4 |"))]
    assert len(rows) == 2
    for row in rows:  # CUDA-only variants are n/a on CPU, the rest are numbers
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(cells[i] == "n/a" for i in (2, 3, 5, 6, 8))
        assert all(float(cells[i]) > 0 for i in (1, 4, 7))


@pytest.mark.slow
@pytest.mark.gpu
def test_gpu_check_cuda_mode(cuda: None, prepared: Path, tmp_path: Path) -> None:
    done = _run([str(prepared), "--device", "cuda", "--quick"], env={**os.environ, "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ORT CUDA IO binding vs ORT CPU" in (tmp_path / "gpu.md").read_text()


def test_gpu_check_needs_a_folder() -> None:
    done = _run([])
    assert done.returncode == 2 and "give the folder written by --prepare" in done.stderr
