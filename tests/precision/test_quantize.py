"""ox.quantize on a real Keras + torch hybrid: parts, the gate, calibration forms, typed errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _precision_models import Hybrid, images, mlp
from onnx import TensorProto

import onnxstitch as ox
from onnxstitch import _meta
from onnxstitch.errors import InputError, PrecisionError, SpecError
from onnxstitch.precision import PrecisionReport, part_precisions, read_precision

QUANT_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "QLinearAdd",
    "DynamicQuantizeMatMul",
}


def _initializer_types(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: t.data_type for t in model.graph.initializer}


def assert_float32_nodes(model: onnx.ModelProto, part: str) -> int:
    """Every node of ``part`` is a float op whose weights are float32; returns how many were checked."""
    types = _initializer_types(model)
    checked = 0
    for node in model.graph.node:
        if _meta.get_part(node) != part:
            continue
        assert node.op_type not in QUANT_OPS, f"{part} node {node.name} is {node.op_type}"
        for name in node.input:
            if name in types:
                assert types[name] in (TensorProto.FLOAT, TensorProto.INT64), (node.name, name, types[name])
        checked += 1
    return checked


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return next(iter(ox.Session(model, device="cpu").run({model.graph.input[0].name: x}).values()))


def test_default_quantizes_the_backbone_and_keeps_the_small_head(hybrid: Hybrid) -> None:
    before = hybrid.model.SerializeToString()
    q = ox.quantize(hybrid.model, {hybrid.input: images(64, 1)}, reference=hybrid.reference)
    assert hybrid.model.SerializeToString() == before  # the caller's model is untouched
    onnx.checker.check_model(q, full_check=True)
    assert part_precisions(q) == {"backbone": "int8", "head": "fp32"}
    backbone_ops = {n.op_type for n in q.graph.node if _meta.get_part(n) == "backbone"}
    assert {"QuantizeLinear", "DequantizeLinear"} <= backbone_ops
    types = _initializer_types(q)
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    stem = [n.name for n in convs if types.get(n.input[1]) == TensorProto.FLOAT]  # the 1-channel stem?
    settings = read_precision(q)["settings"]  # type: ignore[index]
    assert settings["kept_fp32"] == stem and len(stem) == (settings["thin_convs"]["chosen"] == "float32")
    assert all(_meta.get_part(n) in ("backbone", "head") for n in q.graph.node)
    assert assert_float32_nodes(q, "head") == 3
    record = read_precision(q)
    assert record is not None
    report = PrecisionReport.from_dict(record)
    assert report.passed and {r.against for r in report.rows} == {"float32 model", "native reference"}
    assert record["settings"]["format"] == "qdq" and record["settings"]["per_channel"] is True
    x = images(16, 7)
    np.testing.assert_allclose(
        _run(q, x), _run(hybrid.model, x), atol=0.05 * np.abs(_run(hybrid.model, x)).max()
    )
    assert _meta.get_parts(q) == ["backbone", "head"]  # the model's own metadata survives


def test_parts_keeps_the_head_float32_node_by_node(hybrid: Hybrid) -> None:
    q = ox.quantize(
        hybrid.model,
        {hybrid.input: images(64, 1)},
        parts={"backbone": "int8", "head": "fp32"},
        format="qoperator",
        min_conv_channels=0,
    )
    ox.Session(q, device="cpu")
    onnx.checker.check_model(q, full_check=True)
    assert assert_float32_nodes(q, "head") == 3
    backbone = [n for n in q.graph.node if _meta.get_part(n) == "backbone"]
    assert [n.op_type for n in backbone].count("QLinearConv") == 2  # min_conv_channels=0: the stem too
    both = ox.quantize(
        hybrid.model, {hybrid.input: images(64, 1)}, parts=["backbone", "head"], min_agreement=0.0
    )
    assert part_precisions(both) == {"backbone": "int8", "head": "int8"}
    head_ops = {n.op_type for n in both.graph.node if _meta.get_part(n) == "head"}
    assert head_ops & QUANT_OPS


def test_the_gate_refuses_an_all_zero_calibration_naming_the_part(hybrid: Hybrid) -> None:
    zeros = {hybrid.input: np.zeros((32, 8, 8, 1), np.float32)}
    with pytest.raises(PrecisionError) as caught:
        ox.quantize(hybrid.model, zeros, holdout={hybrid.input: images(64, 2)}, parts=["backbone", "head"])
    error = caught.value
    assert set(error.attribution) == {"backbone", "head"}
    worst = min(error.attribution, key=lambda p: error.attribution[p])
    assert error.attribution[worst] < 0.99
    assert f"part {worst!r} costs the most" in str(error) and "keep part" in str(error)
    assert not error.report.passed and "output 'output'" in str(error.report)


def test_a_constant_holdout_is_refused_naming_the_input(hybrid: Hybrid) -> None:
    with pytest.raises(InputError, match="'image' is constant"):
        ox.quantize(hybrid.model, {hybrid.input: np.zeros((32, 8, 8, 1), np.float32)})


def test_every_calibration_form_gives_the_same_model(hybrid: Hybrid, tmp_path: Path) -> None:
    data = images(48, 3)
    hold = {hybrid.input: images(16, 4)}
    batches = [{hybrid.input: data[i : i + 16]} for i in range(0, 48, 16)]
    np.savez(tmp_path / "calib.npz", **{hybrid.input: data})
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / f"{hybrid.input}.npy", data)
    (tmp_path / "npz").mkdir()
    for i, b in enumerate(batches):
        np.savez(tmp_path / "npz" / f"{i}.npz", **b)
    forms = [
        {hybrid.input: data},
        iter(batches),
        tmp_path / "calib.npz",
        str(tmp_path / "npy"),
        tmp_path / "npz",
    ]
    x = images(8, 5)
    calls: list[tuple[int, int]] = []
    outputs = [  # the stem pinned: whether it goes int8 by default is timed (tests/precision/test_stem.py)
        _run(
            ox.quantize(
                hybrid.model,
                form,
                holdout=hold,
                min_conv_channels=4,
                progress=lambda d, t: calls.append((d, t)),
            ),
            x,
        )
        for form in forms
    ]
    assert calls[:3] == [(1, 3), (2, 3), (3, 3)]  # one call per calibration batch (16 samples each)
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


def test_bad_calibration_names_the_tensor(hybrid: Hybrid) -> None:
    with pytest.raises(InputError, match=r"missing input\(s\) \['image'\]"):
        ox.quantize(hybrid.model, [{"pixels": images(4, 0)}])
    with pytest.raises(InputError, match=r"input 'image' has shape \[4, 8, 8\]"):
        ox.quantize(hybrid.model, {hybrid.input: images(4, 0)[..., 0]})
    with pytest.raises(InputError, match="'image' is int64"):
        ox.quantize(hybrid.model, {hybrid.input: np.ones((4, 8, 8, 1), np.int64)})
    with pytest.raises(SpecError, match=r"unknown part\(s\) \['neck'\]"):
        ox.quantize(hybrid.model, {hybrid.input: images(8, 0)}, parts={"neck": "int8"})
    with pytest.raises(SpecError, match="unknown precision"):
        ox.quantize(hybrid.model, {hybrid.input: images(8, 0)}, parts={"head": "int4"})


def test_matmul_parts_get_dynamic_int8_and_unnamed_nodes_are_handled(tmp_path: Path) -> None:
    model = mlp(512, names=False)
    before = model.SerializeToString()
    x = np.random.default_rng(1).standard_normal((64, 512)).astype(np.float32)
    q = ox.quantize(model, {"x": x}, min_agreement=0.9)
    assert model.SerializeToString() == before and all(not n.name for n in model.graph.node)
    assert part_precisions(q) == {"model": "int8-dynamic"}
    assert "DynamicQuantizeLinear" in {n.op_type for n in q.graph.node}
    onnx.checker.check_model(q, full_check=True)
    small = ox.quantize(mlp(64, names=True), {"x": x[:, :64]})
    assert part_precisions(small) == {"model": "fp32"}
    assert not {n.op_type for n in small.graph.node} & QUANT_OPS


def test_a_regression_output_is_judged_within_rtol() -> None:
    model = mlp(512, names=True, out=1)
    x = np.random.default_rng(2).standard_normal((40, 512)).astype(np.float32)
    q = ox.quantize(model, {"x": x}, parts={"model": "int8-dynamic"}, rtol=0.05)
    report = PrecisionReport.from_dict(read_precision(q) or {})
    (row,) = report.rows
    assert row.metric == "within rtol 0.05" and row.samples == 10  # 1 sample in 4 held out
    assert report.holdout == "10 of 40 calibration samples held out (1 in 4)"
    assert row.passed and 0 < row.max_rel <= 0.05
    with pytest.raises(PrecisionError) as caught:
        ox.quantize(model, {"x": x}, parts={"model": "int8-dynamic"}, rtol=1e-6)
    assert caught.value.attribution.keys() == {"model"} and "within rtol 1e-06" in str(caught.value)
