"""The part-level picture: ``describe(m)["graph"]``, ``inspect --graph`` (SVG/PNG) and ``--mermaid``."""

from __future__ import annotations

import builtins
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch import _meta
from onnxstitch.cli import app
from onnxstitch.errors import InputError, MissingDependencyError
from onnxstitch.files.describe import describe
from onnxstitch.files.draw import draw, mermaid

RUNNER = CliRunner()


def _parse(text: str, source: str, layouts: dict[str, str], **weights: np.ndarray) -> onnx.ModelProto:
    model = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 20]>' + text)
    for name, value in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    _meta.set_prop(model, _meta.SOURCE, source)
    for tensor, layout in layouts.items():
        _meta.set_layout(model, tensor, layout)
    return model


@pytest.fixture(scope="module")
def dag() -> onnx.ModelProto:
    """Keras-like NHWC backbone feeding a torch-like NCHW conv head (automatic Transpose) and an
    NHWC side branch: three parts, a DAG, two merged outputs."""
    rng = np.random.default_rng(0)
    backbone = _parse(
        "k (float[batch, 4, 4, 3] image) => (float[batch, 4, 4, 3] feat) { feat = Mul(image, s) }",
        "keras", {"image": "NHWC", "feat": "NHWC"}, s=rng.standard_normal(3),
    )  # fmt: skip
    head = _parse(
        "t (float[batch, 3, 4, 4] x) => (float[batch, 2, 4, 4] logits) { logits = Conv(x, w) }",
        "torch", {"x": "NCHW", "logits": "NCHW"}, w=rng.standard_normal((2, 3, 1, 1)),
    )  # fmt: skip
    side = _parse(
        "s (float[batch, 4, 4, 3] x) => (float[batch, 4, 4, 3] y) { y = Abs(x) }", "onnx", {"x": "NHWC"}
    )
    return ox.merge(
        {"backbone": backbone, "head": head, "side": side},
        links=["backbone:feat->head:x", "backbone:feat->side:x"],
        inputs={"image": ["backbone:image"]},
        outputs={"logits": "head:logits", "mask": "side:y"},
    )


@pytest.fixture(scope="module")
def hybrid() -> onnx.ModelProto:
    """The demo's shape: a backbone, a head and the user's softmax adapter after it."""
    rng = np.random.default_rng(1)
    backbone = _parse(
        "b (float[batch, 4] image) => (float[batch, 3] features) { features = MatMul(image, w) }",
        "keras", {}, w=rng.standard_normal((4, 3)),
    )  # fmt: skip
    head = _parse(
        "h (float[batch, 3] features) => (float[batch, 2] x) { x = MatMul(features, w) }",
        "torch", {}, w=rng.standard_normal((3, 2)),
    )  # fmt: skip
    return ox.chain({"backbone": backbone, "head": head, "probs": ox.adapters.softmax(axis=1)})


def _ids(graph: dict[str, Any]) -> set[str]:
    return {b["id"] for key in ("parts", "adapters", "inputs", "outputs") for b in graph[key]}


def test_dag_structure_has_every_part_seam_and_the_automatic_transpose(dag: onnx.ModelProto) -> None:
    graph = describe(dag)["graph"]
    parts = {p["part"]: p for p in graph["parts"]}
    assert list(parts) == ["backbone", "head", "side"]
    assert parts["backbone"]["source"] == "keras" and parts["head"]["source"] == "torch"
    assert parts["head"]["parameters"] == 6 and parts["head"]["precision"] == "float32"
    assert parts["head"]["opsets"] == {"ai.onnx": 20}
    [adapter] = graph["adapters"]
    assert adapter == {"id": "adapter:head:x", "kind": "automatic", "ops": ["Transpose"], "nodes": 1,
                       "into": "head:x"}  # fmt: skip
    seams = {(s["from"], s["to"]): s for s in graph["seams"]}
    assert set(seams) == {("backbone:feat", "head:x"), ("backbone:feat", "side:x")}
    to_head = seams[("backbone:feat", "head:x")]
    assert to_head["layout"] == "NHWC→NCHW" and to_head["via"] == "adapter:head:x"
    assert to_head["dtype"] == "float32" and to_head["shape"] == ["batch", 4, 4, 3]
    assert (
        seams[("backbone:feat", "side:x")]["layout"] == "NHWC"
        and seams[("backbone:feat", "side:x")]["via"] is None
    )
    assert [(i["name"], i["to"], i["layout"]) for i in graph["inputs"]] == [
        ("image", ["backbone:image"], "NHWC")
    ]
    assert [(o["name"], o["from"]) for o in graph["outputs"]] == [
        ("logits", "head:logits"),
        ("mask", "side:y"),
    ]
    edges = {(e["from"], e["to"]) for e in graph["edges"]}
    assert ("part:backbone", "adapter:head:x") in edges and ("adapter:head:x", "part:head") in edges
    assert ("part:backbone", "part:side") in edges and ("part:head", "output:logits") in edges
    assert {x for e in edges for x in e} == _ids(graph)  # every box is connected, no dangling ids


def test_hybrid_structure_shows_the_user_adapter_as_its_own_box(hybrid: onnx.ModelProto) -> None:
    graph = ox.describe(hybrid)["graph"]
    assert [p["part"] for p in graph["parts"]] == ["backbone", "head"]
    [adapter] = graph["adapters"]
    assert adapter["kind"] == "user" and adapter["id"] == "part:probs" and adapter["ops"] == ["Softmax"]
    assert [(s["from"], s["to"]) for s in graph["seams"]] == [
        ("backbone:features", "head:features"), ("head:x", "probs:x")
    ]  # fmt: skip
    assert {x for e in graph["edges"] for x in (e["from"], e["to"])} == _ids(graph)


def test_a_model_that_was_not_merged_is_one_box() -> None:
    single = _parse("m (float[2] a) => (float[2] b) { b = Relu(a) }", "torch", {})
    graph = describe(single)["graph"]
    assert [p["part"] for p in graph["parts"]] == ["model"] and graph["seams"] == [] == graph["adapters"]
    assert [e["label"].split("\n")[0] for e in graph["edges"]] == ["a", "b"]


@pytest.mark.parametrize("fixture", ["dag", "hybrid"])
def test_svg_parses_and_names_every_box(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model = request.getfixturevalue(fixture)
    out = tmp_path / "parts.svg"
    result = RUNNER.invoke(app, ["inspect", str(ox.save(model, tmp_path / "m.onnx")), "--graph", str(out)])
    assert result.exit_code == 0, result.output
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    links = [v for el in root.iter() for k, v in el.attrib.items() if k.endswith("href")]
    assert links and all(v.startswith("#") for v in links)  # glyphs are inside: nothing to fetch
    assert not [el for el in root.iter() if el.tag.endswith("image")]
    styles = " ".join(el.text or "" for el in root.iter() if el.tag.endswith("style"))
    assert "@import" not in styles and "url(" not in styles
    text = mermaid(describe(model)["graph"])
    for box in _ids(describe(model)["graph"]):
        assert box.replace(":", "_").replace(".", "_") in text


def test_png_and_mermaid(dag: onnx.ModelProto, tmp_path: Path) -> None:
    path = ox.save(dag, tmp_path / "m.onnx")
    png = tmp_path / "parts.png"
    assert RUNNER.invoke(app, ["inspect", str(path), "--graph", str(png)]).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = RUNNER.invoke(app, ["inspect", str(path), "--mermaid"])
    assert result.exit_code == 0
    assert result.output.startswith("```mermaid\nflowchart LR\n")
    assert 'part_backbone -- "feat<br/>float32[batch, 4, 4, 3] NHWC→NCHW" --> adapter_head_x' in result.output
    with pytest.raises(InputError, match="SVG or PNG"):
        draw(describe(dag)["graph"], tmp_path / "parts.pdf")
    bad = RUNNER.invoke(app, ["inspect", str(path), "--graph", str(tmp_path / "parts.gif")])
    assert bad.exit_code == 1 and "SVG or PNG" in bad.output


def test_missing_matplotlib_says_what_to_install(
    dag: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(MissingDependencyError, match="matplotlib") as info:
        draw(describe(dag)["graph"], tmp_path / "parts.svg")
    assert "onnxstitch[picture]" in (info.value.hint or "")
