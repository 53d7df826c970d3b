"""Tiny ONNX parts built from ONNX text, and plain onnxruntime runs, for the compose tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx.parser
import onnx.shape_inference
import onnxruntime as ort

from onnxstitch import _meta


def parse(text: str, *, layouts: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """A model from ONNX text, checked, with optional layout metadata."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    for tensor, layout in (layouts or {}).items():
        _meta.set_layout(model, tensor, layout)
    return model


def run(model: onnx.ModelProto | str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model with plain onnxruntime on CPU; outputs by name."""
    payload = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def assert_valid(model: onnx.ModelProto) -> None:
    """Full checker, strict shape inference and an onnxruntime session."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        kind = d.WhichOneof("value")
        out.append(d.dim_value if kind == "dim_value" else d.dim_param if kind == "dim_param" else None)
    return out


def linear(
    name: str,
    n_in: int,
    n_out: int,
    seed: int,
    *,
    ir: int = 10,
    opset: int = 20,
    sym: str = "batch",
    x: str = "x",
    y: str = "y",
    act: str = "Relu",
) -> onnx.ModelProto:
    """``y = act(x @ W + b)`` with seeded weights as initializers."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    model = onnx.parser.parse_model(
        f"""
        <ir_version: {ir}, opset_import: ["" : {opset}]>
        {name} (float[{sym}, {n_in}] {x}) => (float[{sym}, {n_out}] {y}) {{
          t = MatMul({x}, W)
          u = Add(t, B)
          {y} = {act}(u)
        }}"""
    )
    model.graph.initializer.extend(
        [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(b, "B")]
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def snapshot(*models: onnx.ModelProto) -> list[bytes]:
    return [m.SerializeToString(deterministic=True) for m in models]
