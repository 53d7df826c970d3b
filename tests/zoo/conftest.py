"""The real-architecture suite: cases marked ``heavy`` run only with ``ONNXSTITCH_ZOO_HEAVY=1``."""

from __future__ import annotations

import os

import pytest
from zoo_helpers import HEAVY_ENV


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(HEAVY_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"heavy zoo case: set {HEAVY_ENV}=1 to run it (CI does, in its own step)")
    for item in items:
        if item.get_closest_marker("heavy") is not None:
            item.add_marker(skip)
