"""The Python example of docs/serving.md runs as written (ports swapped for free ones)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ._server import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


@pytest.mark.serve
def test_serving_doc_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert blocks, "docs/serving.md has no python example"
    code = blocks[0].replace("18000", str(free_port())).replace("18001", str(free_port()))
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "'name': 'scale'" in done.stdout
