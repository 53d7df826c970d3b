"""A small multi-input model (ONNX text) and Parquet sources of it for the ox.score tests
(imported by the tests as ``scoredata``; the fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.parser
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

MODEL_TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
scorer (float[N, 3] x, float[N, 3, 4, 4] img, int64[N] k) => (float[N, 3] y, float[N, 3] pooled,
                                                             float[N, 3, 4, 4] act, int64[N] k2)
{
  two = Constant <value = float {2.0}> ()
  y = Mul(x, two)
  axes = Constant <value = int64[2] {2, 3}> ()
  pooled = ReduceMean <keepdims = 0> (img, axes)
  act = Relu(img)
  one = Constant <value = int64 {1}> ()
  k2 = Add(k, one)
}
"""

# Gather from a table of 5: a row whose index is past 4 fails in onnxruntime
LOOKUP_TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
lookup (int64[N] idx) => (float[N] value)
{
  table = Constant <value = float[5] {0.0, 1.0, 2.0, 3.0, 4.0}> ()
  value = Gather(table, idx)
}
"""


def model() -> onnx.ModelProto:
    m = onnx.parser.parse_model(MODEL_TEXT)
    onnx.checker.check_model(m, full_check=True)
    return m


def lookup_model() -> onnx.ModelProto:
    m = onnx.parser.parse_model(LOOKUP_TEXT)
    onnx.checker.check_model(m, full_check=True)
    return m


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return {
        "id": np.arange(n, dtype=np.int64) * 10 + 7,
        "x": rng.standard_normal((n, 3)).astype(np.float32),
        "img": rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
        "k": rng.integers(0, 1000, n).astype(np.int64),
    }


def fixed_list(array: np.ndarray[Any, Any]) -> Any:
    """One fixed-size list level per dim after the batch (nested for rank > 2)."""
    values = pa.array(np.ascontiguousarray(array).reshape(-1))
    for size in reversed(array.shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    return values


def img_column(img: np.ndarray[Any, Any], layout: str) -> Any:
    n = img.shape[0]
    if layout == "tensor":
        return pa.FixedShapeTensorArray.from_numpy_ndarray(img)
    if layout == "nested":
        return fixed_list(img)
    if layout == "flat":
        return fixed_list(img.reshape(n, -1))
    if layout == "list":
        return pa.array(list(img.reshape(n, -1)), type=pa.list_(pa.float32()))
    raise ValueError(layout)


def table_of(data: dict[str, np.ndarray[Any, Any]], layout: str = "tensor") -> Any:
    return pa.table(
        {
            "id": data["id"],
            "x": fixed_list(data["x"]),
            "img": img_column(data["img"], layout),
            "k": data["k"],
        }
    )


def write_folder(table: Any, folder: Path, files: int, row_group_size: int) -> Path:
    """``table`` split into ``files`` Parquet files whose names sort in row order."""
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // files)
    for i in range(files):
        pq.write_table(
            table.slice(i * step, step), folder / f"part-{i:03d}.parquet", row_group_size=row_group_size
        )
    return folder


def tensor(column: Any) -> np.ndarray[Any, Any]:
    """A fixed-size list (flat) or fixed_shape_tensor column of an output file back to numpy."""
    arr = column.combine_chunks()
    if isinstance(arr.type, pa.FixedShapeTensorType):
        return np.asarray(arr.to_numpy_ndarray())
    if pa.types.is_fixed_size_list(arr.type):
        return np.asarray(arr.flatten().to_numpy()).reshape(len(arr), arr.type.list_size)
    return np.asarray(arr.to_numpy())
