"""What a deploy process imports: ``import onnxstitch; ox.Session(path).run(...)`` (issue 13, item 7).

The cold start of such a process was 1.7-2x bare onnxruntime because the path went through ``onnx``
(and its protobuf descriptors) in Python. These tests pin the module set, not the time (the timing
is ``scripts/bench/bench_coldstart.py``): each runs a fresh interpreter and lists ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]

#: never needed to run a model file without external data (top-level names and exact modules)
NOT_ON_THE_RUNTIME_PATH = (
    "onnx",
    "onnx_ir",
    "google.protobuf",
    "torch",
    "tensorflow",
    "keras",
    "tf2onnx",
    "onnxscript",
    "rich",
    "typer",
    "click",
    "yaml",
    "jsonschema",
    "matplotlib",
    "ray",
    "pyarrow",
    "onnxruntime.quantization",
    "onnxruntime.transformers",
    "onnxstitch.compose",
    "onnxstitch.converters",
    "onnxstitch.cli",
    "onnxstitch.files._read",
    "onnxstitch.files._limits",
)


def _modules_after_first_result(path: Path) -> set[str]:
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "import onnxstitch as ox\n"
        f"s = ox.Session({str(path)!r})\n"
        "out = s.run({'x': np.ones((2, 4), np.float32)})\n"
        "assert out['y'].shape == (2, 5)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def _loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_session_on_a_path_imports_only_the_runtime(mlp_path: Path) -> None:
    modules = _modules_after_first_result(mlp_path)
    assert "onnxruntime" in modules and "onnxstitch.runtime.session" in modules
    found = [name for name in NOT_ON_THE_RUNTIME_PATH if _loaded(modules, name)]
    assert not found, f"imported on the deploy path: {found}"


def test_a_file_with_external_data_still_gets_the_full_check(
    tmp_path: Path, mlp_model: onnx.ModelProto
) -> None:
    """The control: a model naming external data goes through ``check_file`` (which parses it)."""
    model = onnx.ModelProto()
    model.CopyFrom(mlp_model)  # onnx.save with external data edits the model it is given
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    modules = _modules_after_first_result(tmp_path / "m.onnx")
    assert "onnxstitch.files._read" in modules and _loaded(modules, "onnx")


def test_onnxruntime_format_goes_through_the_full_check(tmp_path: Path) -> None:
    from onnxstitch.errors import ModelFileError
    from onnxstitch.files._precheck import needs_full_check

    ort_file = tmp_path / "m.ort"
    ort_file.write_bytes(b"\x1c\x00\x00\x00ORTM" + b"\x00" * 64)
    assert needs_full_check(ort_file)
    with pytest.raises(ModelFileError, match=r"m\.ort"):
        from onnxstitch.runtime import Session

        Session(ort_file, device="cpu")


def test_the_precheck_sees_location_anywhere_in_the_file(tmp_path: Path, mlp_model: onnx.ModelProto) -> None:
    from onnxstitch.files._precheck import needs_full_check

    plain = tmp_path / "plain.onnx"
    onnx.save(mlp_model, str(plain))
    assert not needs_full_check(plain)
    # past the first 4 KiB too (the rest of the file is memory-mapped and searched)
    big = onnx.ModelProto()
    big.CopyFrom(mlp_model)
    big.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(4096, np.float32), "pad"))
    big.graph.doc_string = "the word location, late in the file"
    padded = tmp_path / "padded.onnx"
    onnx.save(big, str(padded))
    assert padded.read_bytes().find(b"location") > 4096
    assert needs_full_check(padded)
