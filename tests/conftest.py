"""Shared test configuration: a seeded RNG, and frameworks that CI requires.

``pytest.importorskip("torch")`` (and TensorFlow, Keras, tf2onnx, onnxscript) skips a module or a
test where the framework is missing, which is right on a developer's machine with a partial
install. In CI (``ONNXSTITCH_REQUIRE_FRAMEWORKS=1``, set by ``.ci/run``) such a skip is turned into
a failure, so a broken install cannot turn the converter suites into silent skips.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import numpy as np
import pytest

REQUIRED_FRAMEWORKS = frozenset(
    {"torch", "tensorflow", "keras", "tf2onnx", "onnxscript", "transformers", "pyarrow", "ray"}
)
_IMPORT_SKIP = re.compile(r"could not import '([\w.]+)'")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _missing_framework(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The skip reason, if ``report`` is a skip because a required framework could not be imported."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2])
    found = _IMPORT_SKIP.search(reason)
    if found is None or found.group(1).split(".")[0] not in REQUIRED_FRAMEWORKS:
        return None
    return reason


def _fail_if_required(report: pytest.CollectReport | pytest.TestReport) -> None:
    if os.environ.get("ONNXSTITCH_REQUIRE_FRAMEWORKS") != "1":
        return
    reason = _missing_framework(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"ONNXSTITCH_REQUIRE_FRAMEWORKS=1 but a required framework is missing: {reason} "
            "(install them: make install)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail_if_required(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    _fail_if_required(outcome.get_result())
