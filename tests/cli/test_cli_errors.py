"""Every command turns a user's bad path into one line and exit code 1, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx.parser

import onnxstitch as ox


def test_os_error_on_a_user_path_is_one_line_exit_1(tmp_path: Path):
    model = tmp_path / "m.onnx"
    ox.save(
        onnx.parser.parse_model(
            '<ir_version: 8, opset_import: ["" : 18]> g (float[batch, 3] x) => (float[batch, 3] y) '
            "{ y = Relu(x) }"
        ),
        model,
    )
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    done = subprocess.run(
        ["onnxstitch", "deploy", "triton", str(model), "-r", str(blocker / "repo"), "--name", "m"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "error: not a directory:" in done.stderr
    assert str(blocker) in done.stderr.replace("\n", "")
