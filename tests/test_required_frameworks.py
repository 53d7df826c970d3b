"""In CI a missing framework fails the suite instead of skipping it (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
PYTEST = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
PYTEST += ["--continue-on-collection-errors"]

# torch hidden the way a broken install hides it: importorskip at module level and inside a test
_MODULE_SKIP = """
import sys
sys.modules["torch"] = None
import pytest
torch = pytest.importorskip("torch")

def test_uses_torch():
    assert torch
"""
_TEST_SKIP = """
import sys
import pytest

def test_uses_tensorflow(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    pytest.importorskip("tensorflow")

def test_other_optional_package():
    pytest.importorskip("no_such_package_here")
"""


def _pytest(folder: Path, *, require: bool) -> subprocess.CompletedProcess[str]:
    # CI=true (or BUILD_NUMBER) makes pytest print untruncated reports, which repeat the messages
    # counted below: the inner run's output must not depend on where the outer one runs
    dropped = {"ONNXSTITCH_REQUIRE_FRAMEWORKS", "CI", "BUILD_NUMBER"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    if require:
        env["ONNXSTITCH_REQUIRE_FRAMEWORKS"] = "1"
    return subprocess.run(
        [*PYTEST, str(folder)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_module_skip.py").write_text(_MODULE_SKIP)
    (tmp_path / "test_test_skip.py").write_text(_TEST_SKIP)
    return tmp_path


def test_missing_frameworks_skip_on_a_developer_machine(suite: Path) -> None:
    proc = _pytest(suite, require=False)
    assert proc.returncode == 0, proc.stdout
    assert "3 skipped" in proc.stdout


def test_missing_frameworks_fail_in_ci(suite: Path) -> None:
    proc = _pytest(suite, require=True)
    assert proc.returncode == 1, proc.stdout
    # the module-level and the in-test skip of a framework fail; another optional package still skips
    assert "1 failed, 1 skipped, 1 error" in proc.stdout, proc.stdout
    assert proc.stdout.count("ONNXSTITCH_REQUIRE_FRAMEWORKS=1 but a required framework is missing") == 2
