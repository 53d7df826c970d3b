"""extract (a part back out, any subgraph) and replace (swap a part, seams re-checked)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from compose_helpers import assert_valid, linear, parse, run

import onnxstitch as ox
from onnxstitch import _meta
from onnxstitch.errors import SeamError, SpecError

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _adder() -> onnx.ModelProto:
    return parse(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        c (float[batch, 3] p, float[batch, 3] q) => (float[batch, 3] logits) {
          s = Add(p, q)
          logits = Mul(s, s)
        }"""
    )


@pytest.fixture(scope="module")
def dag():
    parts = {"a": linear("a", 4, 3, 0), "b": linear("b", 4, 3, 1, act="Tanh"), "c": _adder()}
    merged = ox.merge(
        parts, ["a:y->c:p", "b:y->c:q"], inputs={"image": ["a:x", "b:x"]}, outputs={"logits": "c:logits"}
    )
    return parts, merged


@pytest.mark.parametrize("key", ["a", "b", "c"])
def test_extract_part_gives_back_the_original(dag, key, rng):
    parts, merged = dag
    part = ox.extract(merged, part=key)
    assert_valid(part)
    original = parts[key]
    assert [i.name for i in part.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in part.graph.output] == [o.name for o in original.graph.output]
    assert not any(_meta.get_part(n) for n in part.graph.node)
    feeds = {
        i.name: rng.standard_normal((2, 4 if key != "c" else 3)).astype(np.float32)
        for i in original.graph.input
    }
    for name, value in run(original, feeds).items():
        np.testing.assert_allclose(run(part, feeds)[name], value, **TOL)


def test_extract_part_keeps_layouts_and_source():
    head = linear("head", 4, 2, 1)
    _meta.set_layout(head, "x", "NCHW")
    _meta.set_prop(head, _meta.SOURCE, "torch")
    merged = ox.chain({"a": linear("a", 4, 4, 0), "head": head})
    back = ox.extract(merged, part="head")
    assert _meta.get_layouts(back) == {"x": "NCHW"}
    assert _meta.get_source(back) == "torch"


def test_extract_unknown_part_lists_parts(dag):
    _, merged = dag
    with pytest.raises(SpecError, match="no part 'z'; its parts are 'a', 'b', 'c'"):
        ox.extract(merged, part="z")
    with pytest.raises(SpecError, match=r"not built by onnxstitch\.merge"):
        ox.extract(linear("a", 4, 3, 0), part="a")


def test_extract_subgraph(dag, rng):
    _, merged = dag
    cut = ox.extract(merged, inputs=["a/y", "b/y"], outputs=["logits"])
    assert_valid(cut)
    assert [i.name for i in cut.graph.input] == ["a/y", "b/y"]
    p, q = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(run(cut, {"a/y": p, "b/y": q})["logits"], (p + q) ** 2, **TOL)
    branch = ox.extract(merged, outputs=["a/y"])
    assert [i.name for i in branch.graph.input] == ["image"]
    assert {t.name for t in branch.graph.initializer} == {"a/W", "a/B"}
    assert_valid(branch)


def test_extract_errors(dag):
    _, merged = dag
    with pytest.raises(SpecError, match="unknown output tensor 'logit'; valid names include 'logits'"):
        ox.extract(merged, outputs=["logit"])
    with pytest.raises(SpecError, match=r"depend on tensor\(s\) \['image'\]"):
        ox.extract(merged, inputs=["a/y"], outputs=["logits"])
    with pytest.raises(SpecError, match="either part= or inputs=/outputs="):
        ox.extract(merged, part="a", outputs=["logits"])
    with pytest.raises(SpecError, match="needs part= or outputs="):
        ox.extract(merged)


def test_replace_swaps_a_part(dag, rng):
    parts, merged = dag
    new_b = linear("b", 4, 3, 7, act="Sigmoid")
    before = merged.SerializeToString()
    swapped = ox.replace(merged, "b", new_b)
    assert merged.SerializeToString() == before
    assert_valid(swapped)
    assert [i.name for i in swapped.graph.input] == ["image"]
    assert [o.name for o in swapped.graph.output] == ["logits"]
    x = rng.standard_normal((2, 4)).astype(np.float32)
    want = run(parts["c"], {"p": run(parts["a"], {"x": x})["y"], "q": run(new_b, {"x": x})["y"]})["logits"]
    np.testing.assert_allclose(run(swapped, {"image": x})["logits"], want, **TOL)


def test_replace_rechecks_seams(dag):
    _, merged = dag
    with pytest.raises(SeamError, match=r"b:y \(float32\[batch,5\]\) -> c:q \(float32\[batch,3\]\)"):
        ox.replace(merged, "b", linear("b", 4, 5, 7))
    with pytest.raises(SpecError, match="no part 'z'"):
        ox.replace(merged, "z", linear("b", 4, 3, 7))
