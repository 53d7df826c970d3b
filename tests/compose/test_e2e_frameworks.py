"""End-to-end: real Keras and torch models, converted, merged, and checked against the native pipeline.

The reference of each merged model is what a user would write without onnxstitch: the frameworks'
own forward passes chained in Python, with the explicit ``permute`` between NHWC and NCHW.
Tiny models, converted once per module; tolerance rtol 1e-4 / atol 1e-5 (fp32).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import onnxstitch as ox  # noqa: E402
from onnxstitch import _meta  # noqa: E402

pytestmark = pytest.mark.slow

RTOL, ATOL = 1e-4, 1e-5


# ----------------------------------------------------------------------------------- native models
class ConvHead(torch.nn.Module):
    """NCHW feature map (4 channels) -> 5 scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class ConvTrunk(torch.nn.Module):
    """NCHW image (3 channels) -> NCHW feature map (4 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(image))


class Mlp(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n_in, 8), torch.nn.Tanh(), torch.nn.Linear(8, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Fuse(torch.nn.Module):
    """Two score vectors -> fused scores (the fan-in part)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(10, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([a, b], dim=1))


def _keras_backbone() -> Any:
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    out = keras.layers.MaxPooling2D(2, name="features")(x)
    return keras.Model(inp, out)


def _keras_conv_head() -> Any:
    inp = keras.Input((8, 8, 4), name="x")
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(5, name="logits")(x))


def _keras_mlp() -> Any:
    inp = keras.Input((6,), name="v")
    x = keras.layers.Dense(8, activation="tanh")(inp)
    return keras.Model(inp, keras.layers.Dense(5, name="scores")(x))


@pytest.fixture(scope="module")
def native() -> dict[str, Any]:
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    return {
        "kb": _keras_backbone(),
        "kh": _keras_conv_head(),
        "km": _keras_mlp(),
        "th": ConvHead().eval(),
        "tt": ConvTrunk().eval(),
        "tm": Mlp(6, 5).eval(),
        "tmlp64": Mlp(64, 5).eval(),
        "fuse": Fuse().eval(),
    }


@pytest.fixture(scope="module")
def converted(native: dict[str, Any]) -> dict[str, onnx.ModelProto]:
    t = torch.randn
    return {
        "kb": ox.from_keras(native["kb"]),
        "kh": ox.from_keras(native["kh"]),
        "km": ox.from_keras(native["km"]),
        "th": ox.from_torch(native["th"], (t(1, 4, 4, 4),), output_names=["logits"]),
        "tt": ox.from_torch(native["tt"], (t(1, 3, 8, 8),), output_names=["features"]),
        "tm": ox.from_torch(native["tm"], (t(1, 6),), output_names=["scores"]),
        "tmlp64": ox.from_torch(native["tmlp64"], (t(1, 64),), output_names=["scores"]),
        "fuse": ox.from_torch(native["fuse"], (t(1, 5), t(1, 5)), output_names=["fused"]),
    }


# ----------------------------------------------------------------------------------- helpers
def _torch(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a torch function on numpy arrays, return numpy."""

    def wrapped(*arrays: np.ndarray) -> Any:
        with torch.no_grad():
            out = fn(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        return [o.numpy() for o in out] if isinstance(out, tuple | list) else out.numpy()

    return wrapped


def _keras(model: Any, x: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(model(np.asarray(x), training=False)))  # a writable copy


def _check(model: onnx.ModelProto, reference: Callable[..., Any]) -> None:
    onnx.checker.check_model(model, full_check=True)
    report = ox.verify(model, reference, rtol=RTOL, atol=ATOL)
    report.raise_for_mismatch()
    assert report.rows, "verify compared nothing"


def _inserted(model: onnx.ModelProto) -> list[tuple[str, list[int]]]:
    """(op, perm) of every node the merge inserted at a seam."""
    return [
        (n.op_type, [int(v) for a in n.attribute for v in a.ints])
        for n in model.graph.node
        if (_meta.get_part(n) or "").endswith(".adapter")
    ]


# ----------------------------------------------------------------------------------- (a)
def test_keras_backbone_into_torch_conv_head_auto_transpose(
    native: dict[str, Any], converted: dict[str, onnx.ModelProto]
) -> None:
    merged = ox.chain({"backbone": converted["kb"], "head": converted["th"]})
    assert _inserted(merged) == [("Transpose", [0, 3, 1, 2])]
    assert [i.name for i in merged.graph.input] == ["image"]
    assert merged.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert merged.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    def reference(image: np.ndarray) -> np.ndarray:
        features = _keras(native["kb"], image)  # NHWC
        with torch.no_grad():
            return native["th"](features.permute(0, 3, 1, 2)).numpy()  # the user's own permute

    _check(merged, reference)
    optimized = ox.optimize(merged)
    assert sum(n.op_type == "Transpose" for n in optimized.graph.node) < sum(
        n.op_type == "Transpose" for n in merged.graph.node
    )
    _check(optimized, reference)


def test_keras_backbone_into_torch_mlp_head_explicit_adapters(
    native: dict[str, Any], converted: dict[str, onnx.ModelProto]
) -> None:
    merged = ox.chain(
        {
            "backbone": converted["kb"],
            "to_nchw": ox.adapters.transpose((0, 3, 1, 2)),
            "flat": ox.adapters.flatten(),
            "mlp": converted["tmlp64"],
        }
    )
    assert _inserted(merged) == []  # the user's adapters, nothing automatic

    def reference(image: np.ndarray) -> np.ndarray:
        features = _keras(native["kb"], image).permute(0, 3, 1, 2)
        with torch.no_grad():
            return native["tmlp64"](torch.flatten(features, 1)).numpy()

    _check(merged, reference)


# ----------------------------------------------------------------------------------- (b)
def test_torch_trunk_into_keras_conv_head_auto_transpose(
    native: dict[str, Any], converted: dict[str, onnx.ModelProto]
) -> None:
    merged = ox.chain({"trunk": converted["tt"], "head": converted["kh"]})
    assert _inserted(merged) == [("Transpose", [0, 2, 3, 1])]

    def reference(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            features = native["tt"](torch.from_numpy(image))  # NCHW
        return np.asarray(native["kh"](features.permute(0, 2, 3, 1).numpy(), training=False))

    _check(merged, reference)


# ----------------------------------------------------------------------------------- (c)
def test_keras_and_torch_share_one_input_averaged(
    native: dict[str, Any], converted: dict[str, onnx.ModelProto]
) -> None:
    merged = ox.merge(
        {"k": converted["km"], "t": converted["tm"], "avg": ox.adapters.mean(2)},
        ["k:scores->avg:x0", "t:scores->avg:x1"],
        inputs={"v": ["k:v", "t:x"]},
        outputs={"scores": "avg:y"},
    )
    assert [i.name for i in merged.graph.input] == ["v"]
    assert [o.name for o in merged.graph.output] == ["scores"]
    assert _meta.get_parts(merged) == ["k", "t", "avg"]

    def reference(v: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = native["tm"](torch.from_numpy(v))
        return ((_keras(native["km"], v) + t) / 2).numpy()

    _check(merged, reference)


# ----------------------------------------------------------------------------------- (d)
def test_three_part_dag_with_fan_in(native: dict[str, Any], converted: dict[str, onnx.ModelProto]) -> None:
    merged = ox.merge(
        {"k": converted["km"], "t": converted["tm"], "fuse": converted["fuse"]},
        ["k:scores->fuse:a", "t:scores->fuse:b"],
        inputs={"v": ["k:v", "t:x"]},
    )
    assert [o.name for o in merged.graph.output] == ["fused"]
    parts = {_meta.get_part(n) for n in merged.graph.node}
    assert parts == {"k", "t", "fuse"}

    def reference(v: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return native["fuse"](_keras(native["km"], v), native["tm"](torch.from_numpy(v))).numpy()

    _check(merged, reference)


# ----------------------------------------------------------------------------------- (e)
def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(onnx.numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer)


def test_two_copies_of_one_torch_model_store_weights_once(
    native: dict[str, Any], converted: dict[str, onnx.ModelProto]
) -> None:
    single = converted["tm"]
    merged = ox.merge(
        {"left": single, "right": single},
        inputs={"v": ["left:x", "right:x"]},
        outputs={"a": "left:scores", "b": "right:scores"},
    )
    assert _initializer_bytes(single) > 0
    assert _initializer_bytes(merged) == _initializer_bytes(single)
    assert len(merged.graph.node) == 2 * len(single.graph.node)

    def reference(v: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = native["tm"](torch.from_numpy(v)).numpy()
        return [out, out]

    _check(merged, reference)
    # the two copies are independent parts: each comes back out whole
    left = ox.extract(merged, part="left")
    assert _initializer_bytes(left) == _initializer_bytes(single)


# ----------------------------------------------------------------------------------- spec file
HEAD_MODULE = """
import torch


def make_head() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(6, 5),
    ).eval()
"""

SPEC = """
parts:
  backbone: {keras: backbone.keras}
  head:
    torch: e2e_heads:make_head
    example_inputs: {x: "1x4x4x4:float32"}
    output_names: [logits]
  probs: {adapter: softmax, axis: -1}
links:
  - backbone:features->head:x
  - head:logits->probs:x
outputs: {probs: probs:y}
optimize: true
"""


def test_cli_merge_spec_with_keras_and_torch_sources(
    native: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from onnxstitch.cli import app

    native["kb"].save(tmp_path / "backbone.keras")
    (tmp_path / "e2e_heads.py").write_text(HEAD_MODULE)
    (tmp_path / "spec.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(app, ["merge", "spec.yaml", "-o", "hybrid.onnx", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])  # after the "converting" lines
    assert list(summary["parts"]) == ["backbone", "head", "probs"]
    assert [a["op"] for a in summary["adapters_inserted"]] == ["Transpose"]  # NHWC -> NCHW at the seam
    assert summary["optimized_from_nodes"] > summary["nodes"]  # and optimize cancelled the pair
    import e2e_heads  # the user's module, as the spec named it

    head = e2e_heads.make_head()

    def reference(image: np.ndarray) -> np.ndarray:
        features = _keras(native["kb"], image).permute(0, 3, 1, 2)
        with torch.no_grad():
            return torch.softmax(head(features), dim=-1).numpy()

    _check(onnx.load(str(tmp_path / "hybrid.onnx")), reference)
