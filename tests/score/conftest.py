"""Session-wide models of the ox.score tests."""

from __future__ import annotations

import onnx
import pytest
import scoredata


@pytest.fixture(scope="session")
def model() -> onnx.ModelProto:
    return scoredata.model()


@pytest.fixture(scope="session")
def lookup_model() -> onnx.ModelProto:
    return scoredata.lookup_model()
