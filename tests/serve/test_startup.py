"""``onnxstitch serve`` checks ports and the device before it starts anything, and picks its
batching from the repository's config (Triton's ``dynamic_batching``) or leaves it off."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from onnxstitch.runtime.deploy import deploy_triton
from onnxstitch.runtime.serve import resolve_target
from onnxstitch.runtime.serve._server import DEFAULT_BATCH_TIME, _batching
from onnxstitch.runtime.serve._source import ServedModel

from ._models import ADD, model
from ._server import free_port


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("startup") / "a.onnx"
    onnx.save(model(ADD), path)
    return path


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on a free loopback port with SO_REUSEPORT, as gRPC's own would."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "onnxstitch", "serve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


@pytest.mark.parametrize("taken", ["--port", "--grpc-port"])
def test_port_in_use_is_refused_before_starting(
    model_file: Path, listener: socket.socket, taken: str
) -> None:
    busy = listener.getsockname()[1]
    ports = {"--port": str(free_port()), "--grpc-port": str(free_port())} | {taken: str(busy)}
    done = _serve(str(model_file), *(x for item in ports.items() for x in item))
    assert done.returncode == 1, done.stderr
    message = " ".join(done.stderr.split())  # the console wraps long lines
    assert f"error: port {busy} on 127.0.0.1 is in use; pick another with {taken}" in message
    assert "Traceback" not in done.stderr and "serving" not in done.stderr


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is here")
def test_unavailable_device_is_one_error_before_starting(model_file: Path) -> None:
    done = _serve(str(model_file), "--device", "cuda", "--port", str(free_port()))
    assert done.returncode == 1, done.stderr
    message = " ".join(done.stderr.split())
    assert message.startswith("error: device 'cuda': requested provider CUDAExecutionProvider")
    assert "Traceback" not in done.stderr and "mlserver" not in done.stderr.lower()
    assert len(done.stderr.splitlines()) <= 5


def test_repository_batching_follows_its_config(tmp_path: Path) -> None:
    deploy_triton(model(ADD), tmp_path / "models", name="hybrid", max_batch_size=8)
    served = resolve_target(tmp_path / "models")
    assert (served.max_batch_size, served.max_batch_time) == (8, 100e-6)  # deploy_triton's 100 µs
    assert _batching(served, None, None) == (8, 100e-6)
    assert _batching(served, None, 0.01) == (8, 0.01)
    assert _batching(served, 0, None) == (0, 0.0)
    config = tmp_path / "models" / "hybrid" / "config.pbtxt"
    text = config.read_text()
    config.write_text(text[: text.index("dynamic_batching")])  # no dynamic batcher: Triton does not batch
    served = resolve_target(tmp_path / "models")
    assert served.max_batch_time is None
    assert _batching(served, None, None) == (0, 0.0)
    assert _batching(served, 4, None) == (4, DEFAULT_BATCH_TIME)


def test_model_file_batching_is_off_unless_asked(model_file: Path) -> None:
    served = resolve_target(model_file)
    assert _batching(served, None, None) == (0, 0.0)
    assert _batching(served, 8, None) == (8, DEFAULT_BATCH_TIME)
    assert _batching(served, 8, 0.0) == (0, 0.0)
    assert _batching(ServedModel("m", model_file, "1", 16, 0.0), None, None) == (0, 0.0)


@pytest.mark.serve
def test_a_server_whose_model_fails_to_load_is_an_error(model_file: Path) -> None:
    command = [sys.executable, "-m", "tests.serve._failing", str(model_file), str(free_port())]
    command.append(str(free_port()))
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "ServeError: the server for model 'a' stopped before it was ready" in done.stdout
    assert "announced: 0" in done.stdout
