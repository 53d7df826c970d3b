"""merge/chain: versions, scoping, DAGs, purity, provenance — and onnx.compose's failures done right."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnx.compose
import pytest
from compose_helpers import assert_valid, dims, linear, parse, run, snapshot

import onnxstitch as ox
from onnxstitch import _meta
from onnxstitch.compose._versions import ort_max_opset
from onnxstitch.errors import VersionError

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _x(rng, n=3, k=4):
    return rng.standard_normal((n, k)).astype(np.float32)


def test_ir8_opset15_with_ir10_opset20_refused_by_onnx_compose_merged_by_us(rng):
    a = linear("a", 4, 5, 0, ir=8, opset=15)  # what tf2onnx emits
    b = linear("b", 5, 3, 1, ir=10, opset=20)  # what torch's exporter emits
    with pytest.raises(ValueError, match=r"IR version|opset"):
        onnx.compose.merge_models(a, b, io_map=[("y", "x")])
    merged = ox.chain({"a": a, "b": b})
    assert_valid(merged)
    assert merged.ir_version == 10
    assert [(o.domain, o.version) for o in merged.opset_import] == [("", 20)]
    x = _x(rng)
    want = run(b, {"x": run(a, {"x": x})["y"]})["y"]
    np.testing.assert_allclose(run(merged, {"x": x})["y"], want, **TOL)


def test_opset_capped_and_explicit(rng):
    a, b = linear("a", 4, 4, 0, opset=15), linear("b", 4, 2, 1, opset=17)
    merged = ox.chain({"a": a, "b": b}, opset=16)
    assert [(o.domain, o.version) for o in merged.opset_import] == [("", 16)]
    assert_valid(merged)
    too_high = ort_max_opset() + 1
    with pytest.raises(VersionError, match=f"opset {too_high} of ai.onnx was asked for"):
        ox.chain({"a": a, "b": b}, opset=too_high)


def test_unconvertible_part_names_part_and_op():
    gelu = parse(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        g (float[batch, 4] x) => (float[batch, 4] y) { y = Gelu(x) }"""
    )
    with pytest.raises(VersionError) as info:
        ox.merge({"g": gelu}, opset=12)
    assert "part 'g'" in str(info.value)
    assert "Gelu" in str(info.value)


def test_model_local_functions_survive_conversion(rng):
    with_fn = parse(
        """
        <ir_version: 8, opset_import: ["" : 15, "local" : 1]>
        f (float[batch, 4] x) => (float[batch, 4] y) { y = local.Twice(x) }
        <domain: "local", opset_import: ["" : 15]>
        Twice (a) => (b) { b = Add(a, a) }"""
    )
    merged = ox.chain({"f": with_fn, "b": linear("b", 4, 2, 1, opset=20)})
    assert [f.name for f in merged.functions] == ["Twice"]
    assert {(o.domain, o.version) for o in merged.opset_import} == {("", 20), ("local", 1)}
    assert_valid(merged)
    x = _x(rng)
    want = run(linear("b", 4, 2, 1, opset=20), {"x": 2 * x})["y"]
    np.testing.assert_allclose(run(merged, {"x": x})["y"], want, **TOL)


def test_ml_domain_one_opset_per_domain(rng):
    def scaler(version: int) -> onnx.ModelProto:
        return parse(
            f"""
            <ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : {version}]>
            s (float[batch, 4] x) => (float[batch, 4] y) {{
              y = ai.onnx.ml.Scaler<offset = [1.0], scale = [2.0]>(x)
            }}"""
        )

    merged = ox.chain({"a": scaler(1), "b": scaler(3)})
    assert sorted((o.domain, o.version) for o in merged.opset_import) == [("", 17), ("ai.onnx.ml", 3)]
    assert_valid(merged)
    x = _x(rng)
    np.testing.assert_allclose(run(merged, {"x": x})["y"], ((x - 1) * 2 - 1) * 2, **TOL)


def test_symbolic_batch_kept_through_seams_unlike_expand_out_dim(rng):
    a = linear("a", 4, 5, 0, sym="batch")
    b = linear("b", 5, 3, 1, sym="N")
    expanded = onnx.compose.expand_out_dim(a, 0)  # onnx.compose's way of adding a dim
    assert dims(expanded.graph.output[0]) == [1, 0, 5]  # the symbolic batch became a static 0
    merged = ox.chain({"a": a, "b": b})
    assert dims(merged.graph.input[0]) == ["batch", 4]
    assert dims(merged.graph.output[0]) == ["batch", 3]
    value_info = {vi.name: dims(vi) for vi in merged.graph.value_info}
    assert value_info["a/y"] == ["batch", 5]
    assert len(run(merged, {"x": _x(rng, n=7)})["y"]) == 7


def test_static_dim_binds_symbol():
    a = linear("a", 4, 5, 0, sym="batch")
    b = linear("b", 5, 3, 1, sym="1")
    b.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    b.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    merged = ox.chain({"a": a, "b": b})
    assert dims(merged.graph.input[0]) == [2, 4]
    assert_valid(merged)


def test_two_copies_of_one_model_weights_stored_once(rng):
    m = linear("m", 4, 4, 0)
    merged = ox.merge({"one": m, "two": m}, inputs={"x": ["one:x", "two:x"]})
    assert len(merged.graph.initializer) == len(m.graph.initializer)
    assert [o.name for o in merged.graph.output] == ["one.y", "two.y"]
    assert_valid(merged)
    x = _x(rng)
    out = run(merged, {"x": x})
    want = run(m, {"x": x})["y"]
    np.testing.assert_allclose(out["one.y"], want, **TOL)
    np.testing.assert_allclose(out["two.y"], want, **TOL)


def test_chain_of_one_model_twice_scoped(rng):
    m = linear("m", 4, 4, 0)
    merged = ox.chain({"first": m, "second": m})
    names = {n.name for n in merged.graph.node}
    assert any(n.startswith("first/") for n in names)
    assert any(n.startswith("second/") for n in names)
    x = _x(rng)
    np.testing.assert_allclose(run(merged, {"x": x})["y"], run(m, {"x": run(m, {"x": x})["y"]})["y"], **TOL)


def _adder() -> onnx.ModelProto:
    return parse(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        c (float[batch, 3] p, float[batch, 3] q) => (float[batch, 3] logits) {
          s = Add(p, q)
          logits = Mul(s, s)
        }"""
    )


def test_three_part_dag_with_fan_in_and_shared_input(rng):
    a, b, c = linear("a", 4, 3, 0), linear("b", 4, 3, 1, act="Tanh"), _adder()
    merged = ox.merge(
        {"a": a, "b": b, "c": c},
        ["a:y->c:p", "b:y->c:q"],
        inputs={"image": ["a:x", "b:x"]},
        outputs={"logits": "c:logits"},
    )
    assert_valid(merged)
    assert [i.name for i in merged.graph.input] == ["image"]
    x = _x(rng)
    want = run(c, {"p": run(a, {"x": x})["y"], "q": run(b, {"x": x})["y"]})["logits"]
    np.testing.assert_allclose(run(merged, {"image": x})["logits"], want, **TOL)


def test_nothing_mutated():
    a, b, c = linear("a", 4, 3, 0, opset=15, ir=8), linear("b", 4, 3, 1), _adder()
    _meta.set_layout(a, "y", "NCHW")
    before = snapshot(a, b, c)
    ox.merge({"a": a, "b": b, "c": c}, ["a:y->c:p", "b:y->c:q"], inputs={"image": ["a:x", "b:x"]})
    ox.chain({"a": a, "c": linear("c", 3, 2, 3)})
    assert snapshot(a, b, c) == before


def test_provenance_and_metadata():
    a = linear("a", 4, 3, 0)
    _meta.set_layout(a, "x", "NCHW")
    merged = ox.chain({"a": a, "b": linear("b", 3, 2, 1)})
    assert {_meta.get_part(n) for n in merged.graph.node} == {"a", "b"}
    assert all(_meta.get_part(n) for n in merged.graph.node)
    props = _meta.get_props(merged)
    assert json.loads(props[_meta.PARTS]) == ["a", "b"]
    assert props[_meta.SOURCE] == "merged"
    assert _meta.get_layouts(merged) == {"x": "NCHW"}
    scoped = [t.name for t in merged.graph.initializer]
    assert sorted(scoped) == ["a/B", "a/W", "b/B", "b/W"]


def test_output_named_twice_and_passthrough(rng):
    a, b = linear("a", 4, 4, 0), linear("b", 4, 2, 1)
    merged = ox.merge({"a": a, "b": b}, ["a:y->b:x"], outputs={"h1": "a:y", "h2": "a:y", "out": "b:y"})
    assert_valid(merged)
    x = _x(rng)
    out = run(merged, {"x": x})
    np.testing.assert_array_equal(out["h1"], out["h2"])
    np.testing.assert_allclose(out["out"], run(b, {"x": out["h1"]})["y"], **TOL)


def test_info_log_for_conversion(caplog):
    with caplog.at_level(logging.INFO, logger="onnxstitch.compose"):
        ox.chain({"a": linear("a", 4, 4, 0, opset=15), "b": linear("b", 4, 2, 1)})
    assert "part 'a' converted from ai.onnx opset 15 to 20" in caplog.text


def _stages(caplog) -> list[str]:
    return [r.getMessage().split()[2] for r in caplog.records if r.getMessage().startswith("merge stage ")]


def test_stages_entered_once_in_order(tmp_path, caplog):
    """merge reads as its pipeline: load, wiring, versions, seams, build, check, (optimize,) save."""
    a, b = linear("a", 4, 4, 0, opset=15), linear("b", 4, 2, 1)
    with caplog.at_level(logging.DEBUG, logger="onnxstitch.compose._merge"):
        ox.chain({"a": a, "b": b}, save_to=tmp_path / "m.onnx")
    assert _stages(caplog) == ["load", "wiring", "versions", "seams", "build", "check", "save"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="onnxstitch.compose._merge"):
        ox.merge({"a": a, "b": b}, ["a:y->b:x"], optimize=True)
    assert _stages(caplog) == ["load", "wiring", "versions", "seams", "build", "check", "optimize"]


def test_subgraphs_scoped_and_outer_scope_renamed(rng):
    branchy = parse(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        br (float[batch, 4] x, bool flag) => (float[batch, 4] y) {
          t = Neg(x)
          y = If(flag) <
            then_branch = g1 () => (float[batch, 4] out1) { out1 = Abs(t) },
            else_branch = g2 () => (float[batch, 4] out2) { out2 = Relu(t) }
          >
        }"""
    )
    merged = ox.merge(
        {"a": branchy, "b": branchy}, inputs={"x": ["a:x", "b:x"], "flag": ["a:flag", "b:flag"]}
    )
    assert_valid(merged)
    x = _x(rng)
    for flag in (True, False):
        out = run(merged, {"x": x, "flag": np.array(flag)})
        want = np.abs(-x) if flag else np.maximum(-x, 0)
        np.testing.assert_allclose(out["a.y"], want, **TOL)
        np.testing.assert_allclose(out["b.y"], want, **TOL)


def test_clashing_functions_renamed(rng):
    def with_fn(op: str) -> onnx.ModelProto:
        return parse(
            f"""
            <ir_version: 10, opset_import: ["" : 20, "local" : 1]>
            f (float[batch, 4] x) => (float[batch, 4] y) {{ y = local.Act(x) }}
            <domain: "local", opset_import: ["" : 20]>
            Act (a) => (b) {{ b = {op}(a) }}"""
        )

    merged = ox.chain({"p": with_fn("Neg"), "q": with_fn("Exp")})
    assert sorted(f.name for f in merged.functions) == ["Act", "q/Act"]
    assert_valid(merged)
    x = _x(rng)
    np.testing.assert_allclose(run(merged, {"x": x})["y"], np.exp(-x), rtol=1e-5)


def test_output_layouts_carried():
    b = linear("b", 4, 4, 1)
    _meta.set_layout(b, "y", "NHWC")
    merged = ox.chain({"a": linear("a", 4, 4, 0), "b": b})
    assert _meta.get_layouts(merged) == {"y": "NHWC"}


def test_optimize_true_keeps_outputs(rng):
    p = parse(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        p (float[batch, 4, 4, 3] x) => (float[batch, 4, 4, 3] feat) {
          t = Transpose<perm = [0, 3, 1, 2]>(x)
          u = Relu(t)
          feat = Transpose<perm = [0, 2, 3, 1]>(u)
        }""",
        layouts={"feat": "NHWC", "x": "NHWC"},
    )
    c = parse(
        """
        <ir_version: 10, opset_import: ["" : 20]>
        c (float[batch, 3, 4, 4] x) => (float[batch, 3, 4, 4] y) { y = Neg(x) }""",
        layouts={"x": "NCHW"},
    )
    plain = ox.chain({"p": p, "c": c})
    optimized = ox.chain({"p": p, "c": c}, optimize=True)
    assert_valid(optimized)
    n_transposes = sum(n.op_type == "Transpose" for n in optimized.graph.node)
    assert n_transposes < sum(n.op_type == "Transpose" for n in plain.graph.node)
    assert all(_meta.get_part(n) for n in optimized.graph.node)
    x = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(run(optimized, {"x": x})["y"], run(plain, {"x": x})["y"], **TOL)


def test_big_initializers_checked_and_stored(rng):
    a, b = linear("a", 64, 64, 0), linear("b", 64, 8, 1)  # 16 KiB weights: past the inline threshold
    merged = ox.chain({"a": a, "b": b})
    assert_valid(merged)
    assert sorted(t.name for t in merged.graph.initializer) == ["a/B", "a/W", "b/B", "b/W"]
    x = _x(rng, n=2, k=64)
    np.testing.assert_allclose(run(merged, {"x": x})["y"], run(b, {"x": run(a, {"x": x})["y"]})["y"], **TOL)


def test_conversion_does_not_invent_dim_names():
    """onnx.version_converter names unknown dims 'unk__N'; a converted part keeps its declared types."""
    anon = parse(
        """
        <ir_version: 8, opset_import: ["" : 15]>
        m (float[batch, ?] x) => (float[batch, ?] y) { y = Neg(x) }"""
    )
    merged = ox.chain({"a": anon, "b": linear("b", 4, 2, 1, opset=20)})
    # not a made-up name: the unknown dim flows through Neg to the seam, which binds it to 4
    assert dims(merged.graph.input[0]) == ["batch", 4]
    assert dims(next(vi for vi in merged.graph.value_info if vi.name == "a/y")) == ["batch", 4]  # seam-bound
    text = onnx.printer.to_text(merged)
    assert "unk__" not in text


def test_unknown_output_dims_filled_by_inference_after_an_adapter():
    """An adapter's output dims are unknown; the merged output gets what inference knows."""
    head = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[batch, 4] x) => (float[batch, 3] y) {
            w = Constant <value = float[4, 3] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}> ()
            y = MatMul (x, w)
        }"""
    )
    softmax = ox.adapters.softmax(axis=-1)
    assert not softmax.graph.output[0].type.tensor_type.shape.dim[1].HasField("dim_value")
    merged = ox.chain({"head": head, "probs": softmax})
    dims = merged.graph.output[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value) == ("batch", 3)
