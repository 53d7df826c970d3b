"""Property: a merge of a random DAG of tiny parts computes what running the parts one by one computes."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx
import onnx.parser
import pytest
from compose_helpers import assert_valid, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxstitch as ox
from onnxstitch import _meta as ox_meta
from onnxstitch._layouts import BY_RANK, other, perm
from onnxstitch.errors import SeamError

UNARY = ["Relu", "Tanh", "Neg", "Abs", "Sigmoid", "Linear", "Func:Relu", "Func:Neg", "If:1", "If:0"]
BINARY = ["Add", "Mul", "Sub"]
VERSIONS = [(8, 15), (8, 17), (10, 18), (10, 20)]


def _part(i: int, op: str, version: tuple[int, int]) -> onnx.ModelProto:
    ir, opset = version
    header = f'<ir_version: {ir}, opset_import: ["" : {opset}]>'
    if op.startswith("Func:"):  # local functions F and H (H calls F); every such part names them alike
        imports = f'opset_import: ["" : {opset}, "local" : 1]'
        return onnx.parser.parse_model(f"""
            <ir_version: {ir}, {imports}>
            p{i} (float[N, 4] x) => (float[N, 4] y) {{ y = local.H(x) }}
            <domain: "local", {imports}>
            F (a) => (b) {{ b = {op[5:]}(a) }}
            <domain: "local", {imports}>
            H (a) => (b) {{ t = local.F(a)
              b = Sigmoid(t) }}""")
    if op.startswith("If:"):  # an If on a constant condition; its branches read the part's input
        return onnx.parser.parse_model(f"""
            {header}
            p{i} (float[N, 4] x) => (float[N, 4] y) {{
              c = Constant<value = bool {{{op[3:]}}}>()
              y = If(c) <then_branch = g1 () => (float[N, 4] t) {{ t = Relu(x) }},
                         else_branch = g2 () => (float[N, 4] e) {{ e = Neg(x) }}>
            }}""")
    if op in BINARY:
        sig = "(float[batch, 4] p, float[batch, 4] q) => (float[batch, 4] y)"
        text = f"{header}\np{i} {sig} {{ y = {op}(p, q) }}"
        return onnx.parser.parse_model(text)
    if op != "Linear":
        return onnx.parser.parse_model(f"{header}\np{i} (float[N, 4] x) => (float[N, 4] y) {{ y = {op}(x) }}")
    model = onnx.parser.parse_model(
        f"{header}\np{i} (float[batch, 4] x) => (float[batch, 4] y) {{ y = MatMul(x, W) }}"
    )
    weights = np.random.default_rng(i).standard_normal((4, 4)).astype(np.float32) / 2
    model.graph.initializer.append(onnx.numpy_helper.from_array(weights, "W"))
    return model


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[onnx.ModelProto], list[list[int]], bool, bool]:
    n = draw(st.integers(min_value=1, max_value=5))
    parts, sources = [], []
    for i in range(n):
        op = draw(st.sampled_from(UNARY + BINARY))
        parts.append(_part(i, op, draw(st.sampled_from(VERSIONS))))
        arity = 2 if op in BINARY else 1
        sources.append([draw(st.integers(min_value=-1, max_value=i - 1)) for _ in range(arity)])
    return parts, sources, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_random_dag_matches_parts_run_one_by_one(case):
    parts, sources, share_input, name_outputs = case
    keys = [f"p{i}" for i in range(len(parts))]
    links, external = [], []
    for i, (part, srcs) in enumerate(zip(parts, sources, strict=True)):
        for vi, src in zip(part.graph.input, srcs, strict=True):
            if src < 0:
                external.append((keys[i], vi.name))
            else:
                links.append(f"p{src}:y->{keys[i]}:{vi.name}")
    inputs = {"x": [f"{k}:{t}" for k, t in external]} if share_input and external else None
    consumed = {link.split("->")[0].split(":")[0] for link in links}
    outputs = {f"out{i}": f"{k}:y" for i, k in enumerate(keys)} if name_outputs else None
    before = [p.SerializeToString() for p in parts]
    merged = ox.merge(dict(zip(keys, parts, strict=True)), links, inputs=inputs, outputs=outputs)
    assert [p.SerializeToString() for p in parts] == before
    assert_valid(merged)

    rng = np.random.default_rng(0)
    shared = rng.standard_normal((3, 4)).astype(np.float32)
    feeds = {
        vi.name: (shared if inputs else rng.standard_normal((3, 4)).astype(np.float32))
        for vi in merged.graph.input
    }
    got = run(merged, feeds)

    merged_in = {end: name for name, ends in (inputs or {}).items() for end in ends}
    values: dict[str, np.ndarray] = {}
    free = [f"{k}:{t}" for k, t in external]
    for i, (part, srcs) in enumerate(zip(parts, sources, strict=True)):
        part_feeds = {}
        for vi, src in zip(part.graph.input, srcs, strict=True):
            end = f"{keys[i]}:{vi.name}"
            if src >= 0:
                part_feeds[vi.name] = values[f"p{src}"]
            elif end in merged_in:
                part_feeds[vi.name] = feeds[merged_in[end]]
            else:
                clean = (
                    vi.name if sum(e.endswith(f":{vi.name}") for e in free) == 1 else f"{keys[i]}.{vi.name}"
                )
                part_feeds[vi.name] = feeds[clean]
        values[keys[i]] = run(part, part_feeds)["y"]
    if name_outputs:
        expected = {f"out{i}": values[k] for i, k in enumerate(keys)}
    else:
        unlinked = [k for k in keys if k not in consumed]
        expected = {("y" if len(unlinked) == 1 else f"{k}.y"): values[k] for k in unlinked}
    assert set(got) == set(expected)
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


LOGICAL = (2, 3, 4, 5)  # N, C, H, W: distinct sizes, so a wrong layout never fits by accident
TO_PHYSICAL = {"NCHW": (0, 1, 2, 3), "NHWC": (0, 2, 3, 1)}
DTYPES = {"float": np.float32, "double": np.float64}


def _layout_part(i: int, op: str, dtype: str, layout: str, declared: bool) -> onnx.ModelProto:
    shape = ", ".join(["batch", *(str(LOGICAL[a]) for a in TO_PHYSICAL[layout][1:])])
    model = onnx.parser.parse_model(
        f"""
        <ir_version: 10, opset_import: ["" : 20]>
        q{i} ({dtype}[{shape}] x) => ({dtype}[{shape}] y) {{ y = {op}(x) }}"""
    )
    if declared:
        ox_meta.set_layout(model, "x", layout)
        ox_meta.set_layout(model, "y", layout)
    return model


@st.composite
def layout_chains(draw: st.DrawFn) -> list[tuple[str, str, str, bool]]:
    n = draw(st.integers(min_value=2, max_value=4))
    dtypes = sorted(
        draw(st.lists(st.sampled_from(["float", "double"]), min_size=n, max_size=n)),
        key=["float", "double"].index,
    )
    return [
        (
            draw(st.sampled_from(["Neg", "Abs", "Relu"])),
            dtypes[i],
            draw(st.sampled_from(["NCHW", "NHWC"])),
            draw(st.booleans()),
        )
        for i in range(n)
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout_chains())
def test_random_layout_and_dtype_seams(chain):
    """Known, differing layouts get a Transpose, float32 -> float64 a Cast; unknown differing layouts fail."""
    parts = {f"q{i}": _layout_part(i, *spec) for i, spec in enumerate(chain)}
    must_fail = any(a[2] != b[2] and not (a[3] and b[3]) for a, b in itertools.pairwise(chain))
    if must_fail:
        with pytest.raises(SeamError):
            ox.chain(parts)
        return
    merged = ox.chain(parts)
    assert_valid(merged)
    logical = np.random.default_rng(1).standard_normal(LOGICAL)
    x = np.transpose(logical, TO_PHYSICAL[chain[0][2]]).astype(DTYPES[chain[0][1]])
    value = x
    for i, (op, dtype, layout, _) in enumerate(chain):
        if i:
            prev = chain[i - 1][2]
            if prev != layout:  # back to logical NCHW, then to this part's layout
                value = np.transpose(np.transpose(value, np.argsort(TO_PHYSICAL[prev])), TO_PHYSICAL[layout])
            value = value.astype(DTYPES[dtype])
        value = {"Neg": np.negative, "Abs": np.abs, "Relu": lambda v: np.maximum(v, 0)}[op](value)
    got = run(merged, {"x": x})["y"]
    assert got.dtype == value.dtype
    np.testing.assert_allclose(got, value, rtol=1e-6, atol=1e-7)


SIZES = {  # logical sizes, channels first: (C, L) / (C, H, W)
    (3, True): (4, 4),  # C = L
    (3, False): (5, 3),
    (4, True): (3, 3, 3),  # C = H = W
    (4, False): (5, 2, 3),
}


@st.composite
def layout_seams(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "rank": draw(st.sampled_from([3, 4])),
        "coinciding": draw(st.booleans()),
        "p_first": draw(st.booleans()),  # the producer's real layout: channels first?
        "c_first": draw(st.booleans()),
        "p_known": draw(st.sampled_from(["no", "recorded", "declared"])),
        "c_known": draw(st.sampled_from(["no", "recorded", "declared"])),
    }


def _physical(sizes: tuple[int, ...], first: bool) -> tuple[int, ...]:
    return sizes if first else (*sizes[1:], sizes[0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout_seams())
def test_layout_seams_transposed_refused_or_left_to_the_shapes(case):
    """Coinciding shapes on purpose: known on both sides -> transposed right; on one -> refused when
    both ways fit; on none -> the shapes decide (fed as is when equal, refused when only a transpose fits)."""
    rank, sizes = case["rank"], SIZES[(case["rank"], case["coinciding"])]
    last, first = BY_RANK[rank]
    lp, lc = (first if case["p_first"] else last), (first if case["c_first"] else last)
    pdims, cdims = _physical(sizes, case["p_first"]), _physical(sizes, case["c_first"])
    p = onnx.parser.parse_model(
        f'<ir_version: 10, opset_import: ["" : 20]>\np (float[batch, {", ".join(map(str, pdims))}] x)'
        f" => (float[batch, {', '.join(map(str, pdims))}] feat) {{ feat = Neg(x) }}"
    )
    c = onnx.parser.parse_model(
        f'<ir_version: 10, opset_import: ["" : 20]>\nc (float[batch, {", ".join(map(str, cdims))}] x)'
        f" => (float[batch, {', '.join(map(str, cdims))}] y) {{ y = Abs(x) }}"
    )
    declared = {}
    for model, end, tensor, layout, known in (
        (p, "p:feat", "feat", lp, case["p_known"]),
        (c, "c:x", "x", lc, case["c_known"]),
    ):
        if known == "recorded":
            ox_meta.set_layout(model, tensor, layout)
        elif known == "declared":
            declared[end] = layout
    n_known = (case["p_known"] != "no") + (case["c_known"] != "no")
    if n_known == 2:
        outcome = "transposed"
    elif n_known == 1:
        outcome = "refused" if case["coinciding"] or lp != lc else "as is"
    else:
        outcome = "as is" if case["coinciding"] or lp == lc else "refused"
    if outcome == "refused":
        with pytest.raises(SeamError) as info:
            ox.chain({"p": p, "c": c}, layouts=declared)
        (problem,) = info.value.problems
        assert problem.startswith(f"p:feat (float32[batch,{','.join(map(str, pdims))}]) -> c:x")
        if lp != lc:
            flip = perm(lp, lc)
        else:  # the known end's layout to (or from) the other one
            flip = perm(lp, other(lp)) if case["p_known"] != "no" else perm(other(lc), lc)
        assert f"ox.adapters.transpose({flip})" in problem
        if n_known == 1 and case["coinciding"]:
            assert "ambiguous layout" in problem and "layouts={" in problem
        return
    merged = ox.chain({"p": p, "c": c}, layouts=declared)
    assert_valid(merged)
    x = np.random.default_rng(0).standard_normal((2, *pdims)).astype(np.float32)
    transposes = [n for n in merged.graph.node if n.op_type == "Transpose"]
    if outcome == "transposed" and lp != lc:
        assert len(transposes) == 1
        want = np.abs(np.transpose(-x, perm(lp, lc)))
    else:  # the same layout, or left to the shapes: fed as it is
        assert not transposes
        want = np.abs(-x)
    np.testing.assert_allclose(run(merged, {"x": x})["y"], want, rtol=1e-6, atol=1e-7)
