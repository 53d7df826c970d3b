"""The wiring of merge: link parsing, unknown names, inputs fed twice, cycles, naming."""

from __future__ import annotations

import pytest
from compose_helpers import linear

import onnxstitch as ox
from onnxstitch.compose import Link
from onnxstitch.errors import CycleError, SpecError


@pytest.fixture(scope="module")
def ab():
    return {"a": linear("a", 4, 4, 0), "b": linear("b", 4, 3, 1)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:y->b:x", Link("a", "y", "b", "x")),
        ("  a : y  ->  b : x ", Link("a", "y", "b", "x")),
        ("a:Identity:0->b:x", Link("a", "Identity:0", "b", "x")),
    ],
)
def test_link_parse(text, expected):
    assert Link.parse(text) == expected
    assert (
        str(expected)
        == f"{expected.src_part}:{expected.src_tensor}->{expected.dst_part}:{expected.dst_tensor}"
    )


@pytest.mark.parametrize("text", ["a:y", "a:y->b", "a->b:x", "a:y->b:x->c:z", ":y->b:x", "a:->b:x", ""])
def test_link_parse_malformed_shows_form(text):
    with pytest.raises(SpecError, match="key:tensor->key:tensor"):
        Link.parse(text)


def test_unknown_key_and_tensor_list_valid_names_all_at_once(ab):
    with pytest.raises(SpecError) as info:
        ox.merge(ab, ["a:nope->b:x", "c:y->b:x", "a:y->b:missing", "garbage"])
    msg = str(info.value)
    assert "part 'a' has no output 'nope'; its outputs are 'y'" in msg
    assert "unknown part 'c'; the parts are 'a', 'b'" in msg
    assert "part 'b' has no input 'missing'; its inputs are 'x'" in msg
    assert "malformed link 'garbage'" in msg


def test_link_objects_accepted(ab):
    merged = ox.merge(ab, [Link("a", "y", "b", "x")])
    assert [i.name for i in merged.graph.input] == ["x"]
    assert [o.name for o in merged.graph.output] == ["y"]


def test_input_fed_twice(ab):
    with pytest.raises(SpecError, match=r"input b:x is fed twice"):
        ox.merge(ab, ["a:y->b:x"], inputs={"img": ["b:x"]})


def test_cycle_named():
    parts = {"a": linear("a", 4, 4, 0), "b": linear("b", 4, 4, 1), "c": linear("c", 4, 4, 2)}
    with pytest.raises(CycleError) as info:
        ox.merge(parts, ["a:y->b:x", "b:y->c:x", "c:y->a:x"])
    assert "a -> b -> c -> a" in str(info.value)
    assert info.value.cycle == ["a", "b", "c", "a"]


def test_self_link_is_a_cycle(ab):
    with pytest.raises(CycleError, match="a -> a"):
        ox.merge({"a": linear("a", 4, 4, 0)}, ["a:y->a:x"])


def test_explicit_names_clash(ab):
    with pytest.raises(SpecError, match="'z' is named both as a merged input and as a merged output"):
        ox.merge(ab, ["a:y->b:x"], inputs={"z": "a:x"}, outputs={"z": "b:y"})


def test_default_name_clash_uses_key_dot_name():
    a, b = linear("a", 4, 4, 0), linear("b", 4, 4, 1)
    merged = ox.merge({"a": a, "b": b})  # nothing linked: both x, both y clash
    assert [i.name for i in merged.graph.input] == ["a.x", "b.x"]
    assert [o.name for o in merged.graph.output] == ["a.y", "b.y"]


def test_explicit_outputs_only_those(ab):
    merged = ox.merge(
        ab, ["a:y->b:x"], inputs={"features": "a:x"}, outputs={"logits": "b:y", "hidden": "a:y"}
    )
    assert [i.name for i in merged.graph.input] == ["features"]
    assert [o.name for o in merged.graph.output] == ["logits", "hidden"]


def test_bad_keys_and_empty():
    with pytest.raises(SpecError, match="non-empty mapping"):
        ox.merge({})
    with pytest.raises(SpecError, match="must not contain"):
        ox.merge({"a:b": linear("a", 4, 4, 0)})
    with pytest.raises(SpecError, match=r"must be an onnx\.ModelProto or a path"):
        ox.merge({"a": 42})  # type: ignore[dict-item]


def test_chain_needs_single_io():
    two_out = linear("a", 4, 4, 0)
    extra = two_out.graph.output.add()
    extra.CopyFrom(two_out.graph.output[0])
    extra.name = "u"
    with pytest.raises(
        SpecError, match=r"part 'a' has 2 outputs \['y', 'u'\]; chain needs exactly one"
    ) as info:
        ox.chain({"a": two_out, "b": linear("b", 4, 2, 1)})
    assert "links=" in str(info.value)
