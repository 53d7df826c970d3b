"""Fixtures of the files tests: tiny real ONNX models written to tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from _files_models import make_model


@pytest.fixture
def model() -> onnx.ModelProto:
    return make_model()


@pytest.fixture
def external_model(tmp_path: Path) -> Callable[..., Path]:
    """Write a model whose ``w`` lives in ``data_name`` (raw float32 bytes), with any ``location``."""

    def write(
        *,
        folder: Path | None = None,
        location: str = "w.bin",
        data_name: str | None = "w.bin",
        offset: str | None = "0",
        length: str | None = None,
    ) -> Path:
        folder = folder or tmp_path / "model"
        folder.mkdir(parents=True, exist_ok=True)
        m = make_model()
        w = m.graph.initializer[0]
        raw = w.raw_data
        if data_name is not None:
            (folder / data_name).write_bytes(raw)
        w.ClearField("raw_data")
        w.data_location = onnx.TensorProto.EXTERNAL
        entries = {"location": location, "offset": offset, "length": length or str(len(raw))}
        for key, value in entries.items():
            if value is not None:
                e = w.external_data.add()
                e.key, e.value = key, value
        target = folder / "m.onnx"
        target.write_bytes(m.SerializeToString())
        return target

    return write
