"""What a merge must get right beyond the seams: functions, subgraphs, external data, extract/replace.

Each test here failed on 0.1.0 (issue 12, "What was seen" 2-5, and issue 10 item 6).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.parser
import pytest
from compose_helpers import assert_valid, linear, parse, run
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch.cli import app
from onnxstitch.compose._merge import read_spec
from onnxstitch.errors import ModelFileError, SpecError, UnsafeModelError, VersionError
from onnxstitch.files.external import iter_tensors, uses_external_data

TOL = {"rtol": 1e-5, "atol": 1e-6}


# -- functions ---------------------------------------------------------------------------------------
def _with_functions(name: str, op: str) -> onnx.ModelProto:
    """A part whose graph calls local ``H``, which calls local ``F`` (= ``op``); same text in every part."""
    return parse(f"""
        <ir_version: 10, opset_import: ["" : 18, "local" : 1]>
        {name} (float[N, 4] x) => (float[N, 4] y) {{ y = local.H(x) }}
        <domain: "local", opset_import: ["" : 18, "local" : 1]>
        F (x) => (y) {{ y = {op}(x) }}
        <domain: "local", opset_import: ["" : 18, "local" : 1]>
        H (x) => (y) {{ y = local.F(x) }}
        """)


def test_same_named_functions_bind_to_their_own_part() -> None:
    """b's H (same text as a's) calls b's F, not a's: H differs too and must be renamed with it."""
    a, b = _with_functions("a", "Relu"), _with_functions("b", "Neg")
    merged = ox.chain({"a": a, "b": b})
    assert_valid(merged)
    x = np.array([[1, -2, 3, -4]], np.float32)
    expected = run(b, {"x": run(a, {"x": x})["y"]})["y"]
    np.testing.assert_allclose(run(merged, {"x": x})["y"], expected)
    assert sorted(f.name for f in merged.functions) == ["F", "H", "b/F", "b/H"]


def test_identical_functions_stored_once() -> None:
    a, b = _with_functions("a", "Relu"), _with_functions("b", "Relu")
    merged = ox.chain({"a": a, "b": b})
    assert sorted(f.name for f in merged.functions) == ["F", "H"]
    x = np.array([[1, -2, 3, -4]], np.float32)
    np.testing.assert_allclose(run(merged, {"x": x})["y"], np.maximum(x, 0))


# -- subgraphs and versions --------------------------------------------------------------------------
def test_if_branch_op_converted_between_opsets() -> None:
    """ReduceSum moved ``axes`` from an attribute to an input at opset 13: the branch is converted."""
    a = parse("""
        <ir_version: 7, opset_import: ["" : 12]>
        a (float[N, 4] x, bool c) => (float[N, 1] y) {
          y = If(c) <then_branch = g1 () => (float[N, 1] t) { t = ReduceSum<axes = [1], keepdims = 1>(x) },
                     else_branch = g2 () => (float[N, 1] e) { e = ReduceMax<axes = [1], keepdims = 1>(x) }>
        }""")
    b = parse('<ir_version: 10, opset_import: ["" : 18]> b (float[N, 1] y) => (float[N, 1] z) { z = Neg(y) }')
    merged = ox.merge({"a": a, "b": b}, ["a:y->b:y"])
    assert_valid(merged)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        np.testing.assert_allclose(run(merged, feeds)["z"], -run(a, feeds)["y"])


def test_if_branch_op_of_other_domain_is_version_checked() -> None:
    """An ai.onnx.ml op that changed between the parts' ml opsets, inside a branch, is refused."""
    a = parse("""
        <ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 2]>
        a (int64[N] x, bool c) => (int64[N] y) {
          y = If(c) <then_branch = g1 () => (int64[N] t) {
                        t = ai.onnx.ml.LabelEncoder<keys_int64s = [1, 2], values_int64s = [5, 6]>(x) },
                     else_branch = g2 () => (int64[N] e) { e = Identity(x) }>
        }""")
    b = parse("""
        <ir_version: 10, opset_import: ["" : 17, "ai.onnx.ml" : 4]>
        b (int64[N] y) => (int64[N] z) {
          z = ai.onnx.ml.LabelEncoder<keys_int64s = [5], values_int64s = [7], default_int64 = 0>(y)
        }""")
    with pytest.raises(VersionError, match=r"part 'a'.*LabelEncoder.*ai\.onnx\.ml"):
        ox.merge({"a": a, "b": b}, ["a:y->b:y"])


# -- external data -----------------------------------------------------------------------------------
def _externalize(model: onnx.ModelProto, folder: Path, name: str = "weights.bin") -> Path:
    """Save ``model`` in ``folder`` with EVERY tensor (constants, subgraphs, sparse values) in ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with open(folder / name, "wb") as fh:
        for tensor in iter_tensors(copy):
            if not tensor.HasField("raw_data"):
                array = onnx.numpy_helper.to_array(tensor)
                tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
            data = tensor.raw_data
            entries = {"location": name, "offset": str(fh.tell()), "length": str(len(data))}
            fh.write(data)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in entries.items():
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    path = folder / "model.onnx"
    onnx.save_model(copy, str(path))
    return path


def _with_constant_and_branch(name: str, shift: float) -> onnx.ModelProto:
    """y = If(c, x + k + s, x + k): a Constant ``k`` and an initializer ``s`` inside a branch."""
    model = onnx.parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : 18]>
        {name} (float[N, 4] x, bool c) => (float[N, 4] y) {{
          k = Constant<value = float[4] {{{shift}, {shift + 1}, {shift + 2}, {shift + 3}}}>()
          t = Add(x, k)
          y = If(c) <then_branch = g1 () => (float[N, 4] u) {{ u = Add(t, s) }},
                     else_branch = g2 () => (float[N, 4] e) {{ e = Identity(t) }}>
        }}""")
    branch = model.graph.node[2].attribute[0].g
    branch.initializer.append(onnx.numpy_helper.from_array(np.full(4, 10 * shift, np.float32), "s"))
    values = onnx.numpy_helper.from_array(np.array([1000 * shift], np.float32), "sp")
    indices = onnx.numpy_helper.from_array(np.array([2], np.int64), "sp_indices")
    model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, [4]))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_constants_and_subgraph_initializers_read_from_their_own_folder(tmp_path: Path) -> None:
    """Two parts keep constants, branch weights and sparse values in files both called weights.bin."""
    a, b = _with_constant_and_branch("a", 1.0), _with_constant_and_branch("b", 100.0)
    pa, pb = _externalize(a, tmp_path / "a"), _externalize(b, tmp_path / "b")
    assert sum(uses_external_data(t) for t in iter_tensors(onnx.load(str(pa), load_external_data=False))) == 4
    merged = ox.merge(
        {"a": pa, "b": pb}, ["a:y->b:x"], inputs={"x": "a:x", "c": ["a:c", "b:c"]}, outputs={"y": "b:y"}
    )
    assert not any(uses_external_data(t) for t in iter_tensors(merged))
    sparse = {
        s.values.name: onnx.numpy_helper.to_array(s.values).tolist() for s in merged.graph.sparse_initializer
    }
    assert sparse == {"a/sp": [1000.0], "b/sp": [100000.0]}
    x = np.ones((2, 4), np.float32)
    for c in (True, False):
        mid = run(a, {"x": x, "c": np.array(c)})["y"]
        expected = run(b, {"x": mid, "c": np.array(c)})["y"]
        np.testing.assert_allclose(run(merged, {"x": x, "c": np.array(c)})["y"], expected, **TOL)


def _linked_part(tmp_path: Path, how: str) -> Path:
    """Part b saved with external data whose weights.bin is a hard or symbolic link to a file outside."""
    path = _externalize(linear("b", 4, 2, 1), tmp_path / "b")
    outside = tmp_path / "outside.bin"
    (path.parent / "weights.bin").rename(outside)
    (os.link if how == "hardlink" else os.symlink)(outside, path.parent / "weights.bin")
    return path


@pytest.mark.parametrize("how", ["hardlink", "symlink"])
def test_linked_external_data_refused_by_every_route(tmp_path: Path, how: str) -> None:
    evil = _linked_part(tmp_path, how)
    a = linear("a", 4, 4, 0)
    match = f"part 'b'.*{how}"
    with pytest.raises(UnsafeModelError, match=match):
        ox.merge({"a": a, "b": evil}, ["a:y->b:x"])
    with pytest.raises(UnsafeModelError, match=match):
        ox.chain({"a": a, "b": evil})
    with pytest.raises(UnsafeModelError, match=match):
        ox.chain({"a": a, "b": evil}, save_to=tmp_path / "out.onnx")
    merged = ox.chain({"a": a, "b": linear("b", 4, 2, 1)})
    with pytest.raises(UnsafeModelError, match=match):
        ox.replace(merged, "b", evil)
    with pytest.raises(UnsafeModelError, match=how):
        ox.extract(evil, outputs=["y"])
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"parts:\n  a: {tmp_path / 'a.onnx'}\n  b: {evil}\nchain: true\n")
    onnx.save_model(a, str(tmp_path / "a.onnx"))
    result = CliRunner().invoke(app, ["merge", str(spec), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1, result.output
    assert how in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_external_length_must_match_the_tensor(tmp_path: Path) -> None:
    """No ``length`` and a longer file: 0.1.0 read to the end of the file, a wrong-sized tensor."""
    path = _externalize(linear("b", 4, 2, 1), tmp_path / "b")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        kept = [(e.key, e.value) for e in tensor.external_data if e.key != "length"]
        del tensor.external_data[:]
        for key, value in kept:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    onnx.save_model(model, str(path))
    with pytest.raises(ModelFileError, match=r"part 'b'.*bytes stored, but its shape"):
        ox.chain({"a": linear("a", 4, 4, 0), "b": path})


# -- extract and replace -----------------------------------------------------------------------------
def _two_inputs() -> onnx.ModelProto:
    return parse("""
        <ir_version: 10, opset_import: ["" : 18]>
        b (float[N, 4] x, float[N, 4] w) => (float[N, 4] y) { s = Sub(x, w)
          y = Mul(s, x) }""")


@pytest.mark.parametrize("fed_by", ["link", "input"])
def test_extract_part_with_two_inputs_fed_by_one_tensor(fed_by: str) -> None:
    a, b = linear("a", 4, 4, 0), _two_inputs()
    if fed_by == "link":
        merged = ox.merge({"a": a, "b": b}, ["a:y->b:x", "a:y->b:w"])
    else:
        merged = ox.merge({"b": b}, inputs={"z": ["b:x", "b:w"]})
    assert_valid(merged)
    back = ox.extract(merged, part="b")
    assert [vi.name for vi in back.graph.input] == ["x", "w"]
    assert_valid(back)
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((3, 4)).astype(np.float32),
        "w": rng.standard_normal((3, 4)).astype(np.float32),
    }
    np.testing.assert_allclose(run(back, feeds)["y"], run(b, feeds)["y"], **TOL)


def test_extract_refuses_a_cut_without_types() -> None:
    """A cut whose output type nobody knows (an op shape inference cannot type) is an error."""
    model = parse("""
        <ir_version: 10, opset_import: ["" : 18, "custom" : 1]>
        m (float[N, 4] x) => (float[N, 4] y) { t = custom.Mystery(x)
          y = Relu(x) }""")
    with pytest.raises(SpecError, match=r"'t'.*no known type"):
        ox.extract(model, outputs=["t"])


def test_replace_keeps_opset_and_optimize() -> None:
    a = linear("a", 4, 4, 0, opset=17, ir=8)
    b = linear("b", 4, 2, 1, opset=17, ir=8)
    merged = ox.chain({"a": a, "b": b}, opset=17, optimize=True)
    new_b = linear("b", 4, 2, 2, opset=18)
    replaced = ox.replace(merged, "b", new_b)
    assert {e.domain: e.version for e in replaced.opset_import}[""] == 17
    spec = read_spec(replaced)
    assert spec["opset"] == 17 and spec["optimize"] is True
    expected = ox.chain({"a": a, "b": new_b}, opset=17, optimize=True)
    assert sorted(n.op_type for n in replaced.graph.node) == sorted(n.op_type for n in expected.graph.node)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(
        run(replaced, {"x": x})["y"], run(new_b, {"x": run(a, {"x": x})["y"]})["y"], **TOL
    )


# -- the onnxruntime probe ---------------------------------------------------------------------------
def test_merge_after_a_shared_thread_pool_session(tmp_path: Path) -> None:
    """A session on onnxruntime's process-wide pool, then a merge that must probe onnxruntime."""
    a = linear("a", 4, 4, 0, opset=17, ir=8)
    b = linear("b", 4, 2, 1, opset=18)
    onnx.save_model(a, str(tmp_path / "a.onnx"))
    onnx.save_model(b, str(tmp_path / "b.onnx"))
    code = (
        "import numpy as np, onnxstitch as ox\n"
        f"s = ox.Session({str(tmp_path / 'a.onnx')!r}, device='cpu', shared_threads=True)\n"
        f"m = ox.chain({{'a': {str(tmp_path / 'a.onnx')!r}, 'b': {str(tmp_path / 'b.onnx')!r}}})\n"
        "out = ox.Session(m, device='cpu').run({'x': np.ones((2, 4), np.float32)})\n"
        "print('ok', [e.version for e in m.opset_import if e.domain == ''], out['y'].shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ok [18] (2, 2)" in done.stdout


# -- the streaming route -----------------------------------------------------------------------------
def _big_linear(name: str, seed: int, n: int = 256) -> onnx.ModelProto:
    """A part with a 256 KiB weight (bigger than the 64 KiB the dedup samples read from each end)."""
    return linear(name, n, n, seed)


def test_save_to_copies_weights_file_to_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """merge(save_to=) from paths: the weights are never read whole, the result equals the in-memory merge."""
    import onnxstitch.compose._graph as graph_module
    import onnxstitch.compose._weights as weights_module
    from onnxstitch.files import _write

    a, b = _big_linear("a", 0), _big_linear("b", 1)
    pa, pb = _externalize(a, tmp_path / "a"), _externalize(b, tmp_path / "b")
    in_memory = ox.chain({"a": pa, "b": pb})
    reads: list[int] = []
    real = weights_module.read_ref

    def counting(ref, start=0, size=None):  # type: ignore[no-untyped-def]
        data = real(ref, start, size)
        reads.append(len(data))
        return data

    monkeypatch.setattr(weights_module, "read_ref", counting)
    monkeypatch.setattr(graph_module, "read_ref", counting)
    monkeypatch.setattr(_write, "AUTO_EXTERNAL_BYTES", 1)  # as past 2 GB: external data
    (tmp_path / "out").mkdir()
    out = ox.chain({"a": pa, "b": pb}, save_to=tmp_path / "out" / "m.onnx")
    assert out == tmp_path / "out" / "m.onnx"
    assert (tmp_path / "out" / "m.onnx.data").stat().st_size >= 2 * 256 * 256 * 4
    assert max(reads) <= 1 << 16  # only the dedup samples: the weights went file to file
    saved = ox.load(out)
    assert [onnx.numpy_helper.to_array(t).tobytes() for t in saved.graph.initializer] == [
        onnx.numpy_helper.to_array(t).tobytes() for t in in_memory.graph.initializer
    ]
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    np.testing.assert_allclose(run(str(out), {"x": x})["y"], run(b, {"x": run(a, {"x": x})["y"]})["y"], **TOL)


def test_save_to_inline_and_with_in_memory_parts(tmp_path: Path) -> None:
    """Below 2 GB the .onnx holds the weights (streamed into it); ModelProto parts work too."""
    a = _big_linear("a", 0)
    pb = _externalize(_big_linear("b", 1), tmp_path / "b")
    out = ox.chain({"a": a, "b": pb}, save_to=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx.data").exists()
    saved = ox.load(out)
    expected = ox.chain({"a": a, "b": pb})
    assert saved.graph == expected.graph
    replaced = ox.replace(out, "b", _big_linear("b", 2), save_to=tmp_path / "r.onnx")
    assert len(ox.load(replaced).graph.initializer) == 4


def test_save_streams_an_in_memory_model(tmp_path: Path) -> None:
    """ox.save never holds the model serialized: Python's peak is about one tensor, not all weights."""
    import tracemalloc

    model = linear("a", 4, 4, 0)
    rng = np.random.default_rng(0)
    for i in range(8):  # 8 x 2 MiB
        model.graph.initializer.append(
            onnx.numpy_helper.from_array(rng.standard_normal(1 << 19).astype(np.float32), f"extra{i}")
        )
    tracemalloc.start()
    try:
        ox.save(model, tmp_path / "m.onnx", external_data=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20, f"peak {peak / 2**20:.1f} MiB while saving 16 MiB of weights"
    loaded = ox.load(tmp_path / "m.onnx")
    assert loaded == model


def test_save_to_stores_identical_weights_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two copies of one part, from paths, streamed: the shared weights are compared on disk, written once."""
    from onnxstitch.files import _write

    part = _big_linear("p", 0)
    pa, pb = _externalize(part, tmp_path / "a"), _externalize(part, tmp_path / "b")
    monkeypatch.setattr(_write, "AUTO_EXTERNAL_BYTES", 1)
    (tmp_path / "out").mkdir()
    out = ox.chain({"a": pa, "b": pb}, save_to=tmp_path / "out" / "m.onnx")
    assert (tmp_path / "out" / "m.onnx.data").stat().st_size < 2 * 256 * 256 * 4
    saved = ox.load(out)
    assert len(saved.graph.initializer) == 2
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    expected = run(part, {"x": run(part, {"x": x})["y"]})["y"]
    np.testing.assert_allclose(run(str(out), {"x": x})["y"], expected, **TOL)
