"""The documented routes survive the default PyPI torch build, which installs ``triton``.

TensorFlow and triton each carry LLVM: with TensorFlow loaded first, ``import triton`` kills the
process (exit 134 or a segfault). CI's torch is the CPU build, without triton, so these tests build
a throwaway virtualenv on top of this environment (``--system-site-packages``) with the ``triton``
wheel that torch's default build requires, and run each route there in a fresh process.

The wheel (~200 MB) is cached in ``$ONNXSTITCH_WHEEL_CACHE`` (default ``~/.cache/onnxstitch/wheels``)
and fetched with pip when missing. When it cannot be fetched the tests skip, unless
``ONNXSTITCH_REQUIRE_TRITON_CLASH=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # a failure in CI: see tests/conftest.py
pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[2]
# torch's default (CUDA) Linux build pins one triton release; see its metadata (`Requires-Dist`)
TRITON_FOR_TORCH = {"2.13.0": "3.7.1"}

pytestmark = pytest.mark.slow


def _cache() -> Path:
    default = Path.home() / ".cache" / "onnxstitch" / "wheels"
    return Path(os.environ.get("ONNXSTITCH_WHEEL_CACHE", default))


def _unavailable(reason: str) -> None:
    if os.environ.get("ONNXSTITCH_REQUIRE_TRITON_CLASH") == "1":
        pytest.fail(f"ONNXSTITCH_REQUIRE_TRITON_CLASH=1 but {reason}")
    pytest.skip(reason)


def _triton_wheel() -> Path:
    version = TRITON_FOR_TORCH.get(torch.__version__.split("+")[0])
    assert version, f"torch {torch.__version__}: add the triton release its default build pins"
    cache = _cache()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    found = sorted(cache.glob(f"triton-{version}-{tag}-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        fetch = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        proc = subprocess.run(
            [*fetch, f"triton=={version}", "-d", str(cache)], capture_output=True, text=True, check=False
        )
        found = sorted(cache.glob(f"triton-{version}-{tag}-*.whl"))
        if proc.returncode != 0 or not found:
            _unavailable(f"the triton {version} wheel could not be fetched: {proc.stderr.strip()[-300:]}")
    return found[-1]


@pytest.fixture(scope="module")
def clash_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with this environment's packages plus triton: TensorFlow + the default torch build."""
    if not sys.platform.startswith("linux"):
        pytest.skip("triton wheels exist for Linux only")
    wheel = _triton_wheel()
    venv = tmp_path_factory.mktemp("clash") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    return python


def _readme_example() -> str:
    """README's Python example: the block that converts a torch head after importing Keras."""
    spec = importlib.util.spec_from_file_location("readme_runner", ROOT / "tests" / "test_readme.py")
    assert spec is not None and spec.loader is not None
    runner = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(runner)
    blocks = runner.parse_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    return str(next(b.code for b in blocks if b.lang == "python" and "ox.from_torch" in b.code))


def _run(python: Path, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd)]),  # this checkout, and the test's modules
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _script(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run(python, ["-c", textwrap.dedent(code)], cwd)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_the_clash_is_real_there(clash_python: Path, tmp_path: Path) -> None:
    """torch in that venv finds triton, and TensorFlow first then triton kills the process."""
    probe = "import torch.utils._triton as t, triton; print(t.has_triton_package(), triton.__version__)"
    version = TRITON_FOR_TORCH[torch.__version__.split("+")[0]]
    assert _ok(_script(clash_python, probe, tmp_path)).split() == ["True", version]
    crash = _script(clash_python, "import tensorflow, triton", tmp_path)
    assert crash.returncode != 0, "import tensorflow; import triton no longer crashes: the guard may be moot"


def test_readme_example_runs(clash_python: Path, tmp_path: Path) -> None:
    """README's Python example imports Keras (TensorFlow) first, then converts a torch head."""
    out = _ok(_script(clash_python, _readme_example(), tmp_path))
    assert "all outputs match" in out
    assert (tmp_path / "hybrid.onnx").is_file()


def test_demo_runs(clash_python: Path, tmp_path: Path) -> None:
    """The demo trains Keras (TensorFlow loaded), then torch: torch.optim imports torch._dynamo."""
    out = _ok(_run(clash_python, ["-m", "onnxstitch", "demo", "--epochs", "1", "--out", "demo"], tmp_path))
    assert (tmp_path / "demo" / "hybrid.onnx").is_file(), out


def test_from_torch_in_either_order_and_the_cli(clash_python: Path, tmp_path: Path) -> None:
    (tmp_path / "both.py").write_text(
        textwrap.dedent(
            """
            import tensorflow as tf  # a user module that uses both frameworks
            import torch

            def make() -> torch.nn.Module:
                torch.manual_seed(0)
                return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
            """
        )
    )
    torch_first = """
        import torch, onnxstitch as ox
        m = ox.from_torch(torch.nn.Linear(4, 2), torch.randn(2, 4))
        import keras
        inp = keras.Input((4,), name="x")
        k = ox.from_keras(keras.Model(inp, keras.layers.Dense(2)(inp)))
        m2 = ox.from_torch(torch.nn.Linear(4, 2), torch.randn(2, 4))
        print("ok", len(m.graph.node) > 0, len(k.graph.node) > 0, len(m2.graph.node) > 0)
    """
    assert _ok(_script(clash_python, torch_first, tmp_path)).split() == ["ok", "True", "True", "True"]
    cli = ["-m", "onnxstitch", "convert", "torch", "both:make", "-e", "2x4", "-o", "m.onnx"]
    _ok(_run(clash_python, cli, tmp_path))
    assert (tmp_path / "m.onnx").is_file()
