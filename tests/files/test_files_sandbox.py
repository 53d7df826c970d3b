"""The sandbox: a real child interpreter with real rlimits, real onnxruntime, real crashes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from _files_models import make_model
from onnx import helper, numpy_helper

from onnxstitch import files
from onnxstitch.errors import IntegrityError, ModelFileError, SandboxError, UnsafeModelError
from onnxstitch.files.sandbox import _explain_exit, check_in_subprocess


def _time_bomb() -> onnx.ModelProto:
    """Tiny file; at session creation onnxruntime constant-folds two 8192² MatMuls (minutes of CPU)."""
    shape = numpy_helper.from_array(np.array([8192, 8192], np.int64), "shape")
    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["a"], value=one),
        helper.make_node("MatMul", ["a", "a"], ["b"]),
        helper.make_node("MatMul", ["b", "b"], ["c"]),
        helper.make_node("ReduceSum", ["c"], ["s"], keepdims=0),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        [shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_good_model_summary_and_session(tmp_path: Path) -> None:
    target = files.save(make_model(), tmp_path / "m.onnx", external_data=True)
    summary = check_in_subprocess(target, timeout=60)
    assert summary["session"] == {"providers": ["CPUExecutionProvider"], "inputs": ["x"], "outputs": ["y"]}
    assert summary["parameters"] == 272
    assert summary["file"]["external_data"] == [{"file": "m.onnx.data", "size_bytes": 1024}]
    assert "session" not in check_in_subprocess(target, session=False)


def test_load_errors_come_back_typed(tmp_path: Path) -> None:
    (tmp_path / "z.onnx").write_bytes(b"PK\x03\x04" + b"\0" * 30)
    with pytest.raises(ModelFileError, match=r"z\.onnx is a zip archive"):
        check_in_subprocess(tmp_path / "z.onnx")
    target = files.save(make_model(), tmp_path / "m.onnx")
    with pytest.raises(IntegrityError, match="no manifest"):
        check_in_subprocess(target, verify=True)
    raw = onnx.load(
        str(files.save(make_model(), tmp_path / "e.onnx", external_data=True)), load_external_data=False
    )
    raw.graph.initializer[0].external_data[0].value = "../../etc/passwd"
    (tmp_path / "e.onnx").write_bytes(raw.SerializeToString())
    with pytest.raises(UnsafeModelError, match="climbs out"):
        check_in_subprocess(tmp_path / "e.onnx")


def test_onnxruntime_refusal_is_a_sandbox_error(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)],
        ir_version=10,
    )
    target = files.save(m, tmp_path / "custom.onnx")
    with pytest.raises(SandboxError, match=r"onnxruntime refused custom\.onnx"):
        check_in_subprocess(target)


def test_time_bomb_is_killed_and_caller_survives(tmp_path: Path) -> None:
    target = files.save(_time_bomb(), tmp_path / "bomb.onnx")
    assert target.stat().st_size < 1000
    with pytest.raises(SandboxError, match=r"bomb\.onnx in the sandbox timed out after 3 s"):
        check_in_subprocess(target, timeout=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.onnx"]


def test_memory_limit(tmp_path: Path) -> None:
    big = make_model(n=2048)  # 16 MiB of weights
    target = files.save(big, tmp_path / "big.onnx")
    with pytest.raises(SandboxError, match=r"memory limit \(8 MB\)"):
        check_in_subprocess(target, memory_mb=8, session=False)
    assert check_in_subprocess(target, memory_mb=512, session=False)["parameters"] == 2048 * 2048 + 2048


def test_child_ignores_python_files_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "onnx.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    target = files.save(make_model(), tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    assert check_in_subprocess(target)["nodes"] == 2
    assert not marker.exists()


def test_crash_signal_is_named() -> None:
    crashed = subprocess.run(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], check=False
    )
    assert crashed.returncode == -signal.SIGSEGV
    err = _explain_exit(crashed.returncode, "x.onnx", memory_mb=64, timeout=5)
    assert isinstance(err, SandboxError)
    assert str(err).startswith("onnxruntime crashed while loading x.onnx (signal 11, SIGSEGV)")
    assert "CPU time" in str(_explain_exit(-signal.SIGXCPU, "x.onnx", memory_mb=64, timeout=5))
    assert "status 3" in str(_explain_exit(3, "x.onnx", memory_mb=64, timeout=5))


def test_bad_limits() -> None:
    with pytest.raises(Exception, match="must be positive"):
        check_in_subprocess("x.onnx", timeout=0)
