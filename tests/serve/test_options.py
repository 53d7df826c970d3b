"""``serve()`` refuses bad options, unbatchable models and a missing MLServer before starting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnxstitch.errors import ServeError
from onnxstitch.runtime.serve import serve
from onnxstitch.runtime.serve._server import model_signature

from ._models import ADD, SLOW, model


def test_all_bad_options_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(model(ADD), path)
    with pytest.raises(ServeError) as info:
        serve(
            path, port=9000, grpc_port=9000, workers=-1, timeout=-1.0, max_body_bytes=10, max_batch_time=-1.0
        )
    message = str(info.value)
    for needle in ("must differ", "workers must be 0", "timeout must be positive", "max_body_bytes"):
        assert needle in message
    for needle in ("max_batch_time must be 0 or more",):
        assert needle in message
    with pytest.raises(ServeError, match="port must be between 1 and 65535"):
        serve(path, port=70000, grpc_port=9001)


def test_batching_needs_a_symbolic_dim_0(tmp_path: Path) -> None:
    path = tmp_path / "slow.onnx"
    onnx.save(model(SLOW), path)  # input 'steps' has a static dim 0
    with pytest.raises(ServeError, match=r"batching needs a symbolic dim 0.*steps"):
        serve(path, max_batch_size=4, port=9002, grpc_port=9003)


def test_signature_skips_initializers_and_keeps_symbols() -> None:
    inputs, outputs = model_signature(model(ADD))
    assert [(i.name, str(i.dtype), i.shape) for i in inputs] == [
        ("x", "float32", ("batch", 4)),
        ("n", "int64", ("batch", 1)),
    ]
    assert [o.name for o in outputs] == ["y", "z"]


def test_missing_mlserver_names_the_extra(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(model(ADD), path)
    code = (
        "import sys; sys.modules['mlserver'] = None\n"
        "from onnxstitch.errors import MissingDependencyError\n"
        "from onnxstitch.runtime.serve import serve\n"
        "try:\n"
        f"    serve({str(path)!r}, port=9004, grpc_port=9005)\n"
        "except MissingDependencyError as exc:\n"
        "    print('MISSING', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "MISSING" in done.stdout, done.stderr[-2000:]
    assert "onnxstitch[serve]" in done.stdout


def test_clash_with_tritonclient_grpc_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(model(ADD), path)
    code = (
        "import tritonclient.grpc\n"
        "from onnxstitch.errors import ServeError\n"
        "from onnxstitch.runtime.serve import serve\n"
        "try:\n"
        f"    serve({str(path)!r}, port=9006, grpc_port=9007)\n"
        "except ServeError as exc:\n"
        "    print('CLASH', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "CLASH" in done.stdout, done.stderr[-2000:]
    assert "in its own process" in done.stdout


def test_server_modules_import_no_training_framework() -> None:
    code = (
        "import sys\n"
        "import onnxstitch.cli\n"
        "import onnxstitch.runtime.serve._mlserver, onnxstitch.runtime.serve._runtime\n"
        "import onnxstitch.runtime.session, onnxstitch.files\n"
        "frameworks = {'torch', 'tensorflow', 'keras', 'tf2onnx'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in frameworks))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
