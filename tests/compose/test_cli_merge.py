"""`onnxstitch merge` / `onnxstitch extract` and the YAML merge spec."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from onnxstitch import _meta
from onnxstitch.cli import app
from onnxstitch.compose._specfile import load_spec, parse_shape, parse_spec
from onnxstitch.errors import SpecError

runner = CliRunner()

A = """<ir_version: 8, opset_import: ["" : 18]>
a (float[batch,4] x) => (float[batch,4] y) { y = Relu(x) }"""
B = """<ir_version: 8, opset_import: ["" : 17]>
b (float[batch,4] x) => (float[batch,4] logits) { logits = Neg(x) }"""
C = """<ir_version: 8, opset_import: ["" : 18]>
c (float[batch,4] p, float[batch,4] q) => (float[batch,4] s) { s = Add(p, q) }"""
# NHWC -> NCHW inside the trunk's last node and back in the head's first: a Transpose pair at the seam
TRUNK = """<ir_version: 8, opset_import: ["" : 18]>
trunk (float[batch,2,3,4] image) => (float[batch,3,4,2] feat) { feat = Transpose<perm=[0,2,3,1]>(image) }"""
HEAD = """<ir_version: 8, opset_import: ["" : 18]>
head (float[batch,3,4,2] x) => (float[batch,2,3,4] out) { t = Transpose<perm=[0,3,1,2]>(x)
  out = Relu(t) }"""

TORCH_MODULE = """
import torch


class Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def make_head() -> Head:
    return Head()


not_a_module = 3
"""


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    for name, text in {"a": A, "b": B, "c": C, "trunk": TRUNK, "head": HEAD}.items():
        onnx.save(onnx.parser.parse_model(text), str(tmp_path / f"{name}.onnx"))
    return tmp_path


def _invoke(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _out(result: Any) -> str:
    """The CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


# ----------------------------------------------------------------------------- inline merge
def test_merge_inline_link(parts: Path) -> None:
    out = parts / "m.onnx"
    result = _invoke(
        "merge", f"a={parts / 'a.onnx'}", f"b={parts / 'b.onnx'}", "--link", "a:y->b:x", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert "parts: a (1 nodes), b (1 nodes)" in _out(result)
    assert "seams: 1" in _out(result)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain == ""] == [18]
    np.testing.assert_array_equal(_run(out, {"x": X})["logits"], -np.maximum(X, 0))


def test_merge_bad_link_lists_valid_names_and_writes_nothing(parts: Path) -> None:
    out = parts / "m.onnx"
    result = _invoke(
        "merge", f"a={parts / 'a.onnx'}", f"b={parts / 'b.onnx'}", "--link", "a:yy->b:x", "-o", out
    )
    assert result.exit_code == 1
    assert "error:" in _out(result)
    assert "'yy'" in _out(result) and "'y'" in _out(result)  # the bad name and the valid ones
    assert "Traceback" not in _out(result)
    assert not out.exists()


def test_merge_malformed_link_exits_1(parts: Path) -> None:
    out = parts / "m.onnx"
    result = _invoke(
        "merge", f"a={parts / 'a.onnx'}", f"b={parts / 'b.onnx'}", "--link", "a.y=>b.x", "-o", out
    )
    assert result.exit_code == 1
    assert "link" in _out(result)
    assert not out.exists()


def test_merge_inputs_and_outputs(parts: Path) -> None:
    out = parts / "m.onnx"
    result = _invoke(
        "merge",
        f"a={parts / 'a.onnx'}",
        f"b={parts / 'b.onnx'}",
        f"c={parts / 'c.onnx'}",
        "--link",
        "a:y->c:p",
        "--link",
        "b:logits->c:q",
        "--input",
        "image=a:x,b:x",
        "--output",
        "total=c:s",
        "-o",
        out,
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["inputs"] == ["image"]
    assert summary["outputs"] == ["total"]
    assert summary["parts"] == {"a": 1, "b": 1, "c": 1}
    assert summary["seams"] == 2
    assert summary["adapters_inserted"] == []
    assert summary["optimized_from_nodes"] is None
    assert summary["bytes"] == out.stat().st_size
    np.testing.assert_allclose(_run(out, {"image": X})["total"], np.maximum(X, 0) - X, rtol=1e-6)


def test_merge_chain_and_opset(parts: Path) -> None:
    out = parts / "m.onnx"
    result = _invoke(
        "merge", f"a={parts / 'a.onnx'}", f"b={parts / 'b.onnx'}", "--chain", "--opset", "18", "-o", out
    )
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    assert _meta.get_parts(model) == ["a", "b"]
    np.testing.assert_array_equal(_run(out, {"x": X})["logits"], -np.maximum(X, 0))


def test_merge_optimize_cancels_the_seam_transposes(parts: Path) -> None:
    plain, optimized = parts / "plain.onnx", parts / "opt.onnx"
    args = [f"trunk={parts / 'trunk.onnx'}", f"head={parts / 'head.onnx'}", "--link", "trunk:feat->head:x"]
    assert _invoke("merge", *args, "-o", plain).exit_code == 0
    result = _invoke("merge", *args, "--optimize", "-o", optimized)
    assert result.exit_code == 0, result.output
    assert "optimized: 3 -> 1 nodes" in _out(result)
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    assert ops == ["Relu"]
    assert [n.op_type for n in onnx.load(str(plain)).graph.node].count("Transpose") == 2
    x = np.random.default_rng(1).standard_normal((2, 2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(optimized, {"image": x})["out"], np.maximum(x, 0))


def test_merge_reports_the_adapters_it_inserted(tmp_path: Path) -> None:
    producer = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 18]>
        k (float[batch,5,6,2] image) => (float[batch,5,6,2] feat) { feat = Relu(image) }"""
    )
    consumer = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 18]>
        t (float[batch,2,5,6] x) => (float[batch,2,5,6] y) { y = Neg(x) }"""
    )
    _meta.set_layout(producer, "feat", "NHWC")
    _meta.set_layout(consumer, "x", "NCHW")
    onnx.save(producer, str(tmp_path / "k.onnx"))
    onnx.save(consumer, str(tmp_path / "t.onnx"))
    out = tmp_path / "m.onnx"
    result = _invoke("merge", f"k={tmp_path / 'k.onnx'}", f"t={tmp_path / 't.onnx'}", "--chain", "-o", out)
    assert result.exit_code == 0, result.output
    assert "adapters inserted: Transpose (t/x@transpose)" in _out(result)
    x = np.random.default_rng(3).standard_normal((2, 5, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"image": x})["y"], -np.maximum(x, 0).transpose(0, 3, 1, 2))


def _square_parts(tmp_path: Path) -> tuple[Path, Path]:
    """A plain part making [batch,4,4,4] (no layout) and an NCHW consumer: an ambiguous seam."""
    producer = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 18]>
        k (float[batch,4,4,4] image) => (float[batch,4,4,4] feat) { feat = Relu(image) }"""
    )
    consumer = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 18]>
        t (float[batch,4,4,4] x) => (float[batch,4,4,4] y) { y = Neg(x) }"""
    )
    _meta.set_layout(consumer, "x", "NCHW")
    onnx.save(producer, str(tmp_path / "k.onnx"))
    onnx.save(consumer, str(tmp_path / "t.onnx"))
    return tmp_path / "k.onnx", tmp_path / "t.onnx"


def test_merge_layout_option_settles_an_ambiguous_seam(tmp_path: Path) -> None:
    k, t = _square_parts(tmp_path)
    out = tmp_path / "m.onnx"
    refused = _invoke("merge", f"k={k}", f"t={t}", "--chain", "-o", out)
    assert refused.exit_code == 1 and not out.exists()
    assert "ambiguous layout: t:x is NCHW, k:feat records no layout" in _out(refused)
    assert "layouts=" in _out(refused)
    result = _invoke("merge", f"k={k}", f"t={t}", "--chain", "--layout", "k:feat=NHWC", "-o", out)
    assert result.exit_code == 0, result.output
    assert "adapters inserted: Transpose" in _out(result)
    x = np.random.default_rng(3).standard_normal((2, 4, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"image": x})["y"], -np.maximum(x, 0).transpose(0, 3, 1, 2))
    bad = _invoke("merge", f"k={k}", f"t={t}", "--chain", "--layout", "k:feat=CHW", "-o", out)
    assert bad.exit_code == 1 and "key:tensor=NCHW|NHWC" in _out(bad)


def test_merge_spec_layouts(tmp_path: Path) -> None:
    k, t = _square_parts(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"parts: {{k: {k.name}, t: {t.name}}}\nchain: true\nlayouts: {{'k:feat': NCHW}}\n")
    out = tmp_path / "m.onnx"
    result = _invoke("merge", spec, "-o", out)
    assert result.exit_code == 0, result.output
    assert "adapters inserted: none" in _out(result)
    x = np.random.default_rng(3).standard_normal((2, 4, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"image": x})["y"], -np.maximum(x, 0))
    assert _invoke("merge", spec, "--layout", "k:feat=NHWC", "-o", out).exit_code == 2


@pytest.mark.parametrize(
    "args",
    [
        ["a.onnx"],  # no key=
        ["a=a.onnx", "a=b.onnx"],  # a key twice
        ["spec.yaml", "b=b.onnx"],  # a spec with other sources
        ["a=a.onnx", "--input", "image"],  # malformed --input
        ["a=a.onnx", "--output", "o=a:y,a:y"],  # an output takes one tensor
        ["a=a.onnx", "b=b.onnx", "--chain", "--link", "a:y->b:x"],
    ],
)
def test_merge_usage_errors_exit_2(parts: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(parts)
    (parts / "spec.yaml").write_text("parts: {a: a.onnx}\n")
    result = _invoke("merge", *args, "-o", "m.onnx")
    assert result.exit_code == 2, result.output
    assert not (parts / "m.onnx").exists()


def test_merge_missing_part_file_exits_1(parts: Path) -> None:
    out = parts / "m.onnx"
    result = _invoke("merge", f"a={parts / 'nope.onnx'}", "-o", out)
    assert result.exit_code == 1
    assert "nope.onnx" in _out(result)
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"hello world, this is text\n", "garbage.onnx is a text file, not an ONNX model"),
        (b"PK\x03\x04" + bytes(40), "garbage.onnx is a zip archive"),
    ],
)
def test_merge_part_that_is_not_onnx_is_named(parts: Path, content: bytes, what: str) -> None:
    (parts / "garbage.onnx").write_bytes(content)
    out = parts / "m.onnx"
    result = _invoke("merge", f"a={parts / 'a.onnx'}", f"b={parts / 'garbage.onnx'}", "--chain", "-o", out)
    assert result.exit_code == 1
    assert f"error: part 'b': {what}" in _out(result)
    assert "protobuf" not in result.output and "parsing message" not in result.output
    assert not out.exists()


def test_merge_spec_onnx_part_that_is_text(parts: Path) -> None:
    (parts / "notes.onnx").write_text("parts: not a model\n")
    spec = _write_spec(parts, "parts: {a: a.onnx, b: notes.onnx}\nchain: true\n")
    result = _invoke("merge", spec, "-o", parts / "m.onnx")
    assert result.exit_code == 1
    assert "part 'b': notes.onnx is a YAML text file, not an ONNX model" in _out(result)


def test_merge_without_links_warns_but_succeeds(parts: Path) -> None:
    out = parts / "m.onnx"
    result = _invoke("merge", f"a={parts / 'a.onnx'}", f"b={parts / 'b.onnx'}", "-o", out)
    assert result.exit_code == 0, result.output
    assert "warning: no links: the parts are not connected; did you mean --chain (or --link)?" in " ".join(
        result.stderr.split()
    )
    assert "seams: 0" in _out(result) and out.exists()
    linked = _invoke("merge", f"a={parts / 'a.onnx'}", f"b={parts / 'b.onnx'}", "--chain", "-o", out)
    assert linked.exit_code == 0 and "warning" not in linked.output
    spec = _write_spec(parts, "parts: {a: a.onnx, b: b.onnx}\n")
    from_spec = _invoke("merge", spec, "-o", out)
    assert from_spec.exit_code == 0 and "did you mean chain: true (or links:)?" in " ".join(
        from_spec.stderr.split()
    )
    single = _invoke("merge", f"a={parts / 'a.onnx'}", "-o", out)
    assert single.exit_code == 0 and "warning" not in single.output


# ----------------------------------------------------------------------------- spec files
def _write_spec(folder: Path, text: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_merge_spec_with_adapter_inputs_outputs(
    parts: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spec = _write_spec(
        parts,
        """
        parts:
          a: a.onnx
          b: {onnx: b.onnx}
          avg: {adapter: mean, n: 2}
        links:
          - a:y->avg:x0
          - b:logits->avg:x1
        inputs:
          image: [a:x, b:x]
        outputs:
          mean: avg:y
        opset: 18
        optimize: true
        """,
    )
    out = tmp_path_factory.mktemp("elsewhere") / "m.onnx"  # paths in the spec are relative to the spec
    result = _invoke("merge", spec, "-o", out)
    assert result.exit_code == 0, result.output
    assert "avg (1 nodes)" in _out(result)
    np.testing.assert_allclose(_run(out, {"image": X})["mean"], (np.maximum(X, 0) - X) / 2, rtol=1e-6)


def test_merge_spec_cli_overrides_opset_and_optimize(parts: Path) -> None:
    spec = _write_spec(
        parts,
        """
        parts: {trunk: trunk.onnx, head: head.onnx}
        chain: true
        optimize: true
        """,
    )
    out = parts / "m.onnx"
    result = _invoke("merge", spec, "--no-optimize", "--opset", "18", "-o", out)
    assert result.exit_code == 0, result.output
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("Transpose") == 2
    result = _invoke("merge", spec, "-o", out)
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Relu"]


def test_merge_spec_with_torch_part(parts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    (parts / "myheads.py").write_text(TORCH_MODULE)
    monkeypatch.chdir(parts)
    monkeypatch.syspath_prepend(str(parts))
    spec = _write_spec(
        parts,
        """
        parts:
          a: a.onnx
          head:
            torch: myheads:make_head
            example_inputs: {x: "2x4:float32"}
            output_names: [scores]
        links: [a:y->head:x]
        """,
    )
    out = parts / "m.onnx"
    result = _invoke("merge", spec, "-o", out)
    assert result.exit_code == 0, result.output
    sys.modules.pop("myheads", None)
    from myheads import make_head  # the user's own module

    with torch.no_grad():
        want = make_head()(torch.from_numpy(np.maximum(X, 0))).numpy()
    np.testing.assert_allclose(_run(out, {"x": X})["scores"], want, rtol=1e-4, atol=1e-5)


def test_merge_spec_with_pt2_part_trusted_and_opset(parts: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3).eval()
    program = torch.export.export(head, (torch.randn(2, 4),))
    torch.export.save(program, str(parts / "head.pt2"))
    spec_text = """
        parts:
          a: a.onnx
          head: {torch: head.pt2, trusted: %s, opset: 18}
        links: [a:y->head:input]
        """
    refused = _invoke("merge", _write_spec(parts, spec_text % "false"), "-o", parts / "m.onnx")
    assert refused.exit_code == 1
    assert "trusted" in _out(refused)
    assert not (parts / "m.onnx").exists()
    result = _invoke("merge", _write_spec(parts, spec_text % "true"), "-o", parts / "m.onnx")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(parts / "m.onnx"))
    assert [o.version for o in model.opset_import if o.domain == ""] == [18]  # the part's opset option
    x = X[:2]  # the .pt2 was exported with a static batch of 2
    with torch.no_grad():
        want = head(torch.from_numpy(np.maximum(x, 0))).numpy()
    np.testing.assert_allclose(_run(parts / "m.onnx", {"x": x})["output"], want, rtol=1e-4, atol=1e-5)


def test_merge_spec_torch_attr_not_a_module(parts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    (parts / "myheads2.py").write_text(TORCH_MODULE)
    monkeypatch.chdir(parts)
    monkeypatch.syspath_prepend(str(parts))
    spec = _write_spec(parts, 'parts: {h: {torch: "myheads2:not_a_module", example_inputs: {x: "1x4"}}}\n')
    result = _invoke("merge", spec, "-o", parts / "m.onnx")
    assert result.exit_code == 1
    assert "not a torch.nn.Module" in _out(result)


def test_merge_malformed_yaml_exits_1(parts: Path) -> None:
    spec = _write_spec(parts, "parts: {a: a.onnx\nlinks: [\n")
    result = _invoke("merge", spec, "-o", parts / "m.onnx")
    assert result.exit_code == 1
    assert "not valid YAML" in _out(result)
    assert f'in "{spec}", line 1, column 8' in _out(result)
    assert "<unicode string>" not in result.output
    assert not (parts / "m.onnx").exists()


def test_merge_spec_errors_all_listed_exit_1(parts: Path) -> None:
    spec = _write_spec(
        parts,
        """
        parts:
          a: missing.onnx
          b: {tensorflow: b.pb}
        links: "a:y->c:x"
        opset: eighteen
        extra: 1
        """,
    )
    result = _invoke("merge", spec, "-o", parts / "m.onnx")
    assert result.exit_code == 1
    for piece in ("5 problem(s)", "missing.onnx", "tensorflow", "unknown part 'c'", "opset", "'extra'"):
        assert piece in _out(result), piece
    assert not (parts / "m.onnx").exists()


def test_merge_spec_lists_bad_torch_factories_with_other_problems(
    parts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (parts / "myheads3.py").write_text(TORCH_MODULE)
    monkeypatch.chdir(parts)
    monkeypatch.syspath_prepend(str(parts))
    spec = _write_spec(
        parts,
        """
        parts:
          a: a.onnx
          s: {adapter: sofmax}
          h: {torch: "myheads3:make_hed", example_inputs: {x: "1x4"}}
          g: {torch: "no_such_module_xyz:make", example_inputs: {x: "1x4"}}
          ok: {torch: "myheads3:make_head", example_inputs: {x: "1x4"}}
        chain: true
        """,
    )
    result = _invoke("merge", spec, "-o", parts / "m.onnx")
    assert result.exit_code == 1
    text = _out(result)
    assert "3 problem(s)" in text and "unknown adapter 'sofmax'" in text
    assert "parts.h.torch 'myheads3:make_hed': module 'myheads3' has no attribute 'make_hed'" in text
    assert "available names: Head, make_head" in text
    assert "parts.g.torch 'no_such_module_xyz:make': cannot import module" in text
    assert "converting part" not in result.output  # found before any conversion


def test_merge_spec_torch_examples_the_module_fails_on(
    parts: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    (parts / "myheads4.py").write_text(TORCH_MODULE)
    monkeypatch.chdir(parts)
    monkeypatch.syspath_prepend(str(parts))
    spec = _write_spec(parts, 'parts: {h: {torch: "myheads4:make_head", example_inputs: {x: "1x17"}}}\n')
    result = _invoke("merge", spec, "-o", parts / "m.onnx")
    assert result.exit_code == 1
    text = _out(result)
    assert "part 'h': torch module Head: the module fails on the example inputs: RuntimeError: mat1" in text
    assert "check the example input shapes/dtypes (parts.h.example_inputs)" in text
    assert "Traceback" not in capfd.readouterr().err  # no exporter ran: no fake-tensor traceback


def test_yaml_tags_are_refused(parts: Path) -> None:
    spec = _write_spec(parts, "parts: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(spec)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


SPEC_ERRORS = [
    ([1, 2], "a spec must be a mapping"),
    ({"parts": {"a": "a.onnx"}, "link": []}, "unknown top-level key 'link'; valid keys: parts, links"),
    ({}, "missing 'parts'"),
    ({"parts": []}, "parts must be a non-empty mapping"),
    ({"parts": {"a:b": "a.onnx"}}, "must be a non-empty string without"),
    (
        {"parts": {"a": 3}},
        "must be a path to an .onnx file or a mapping with one of: onnx, torch, keras, adapter",
    ),
    ({"parts": {"a": {"tf": "x"}}}, "must name exactly one part kind of: onnx, torch, keras, adapter"),
    ({"parts": {"a": {"onnx": "a.onnx", "keras": "k.keras"}}}, "exactly one part kind"),
    ({"parts": {"a": "nope.onnx"}}, "file 'nope.onnx' does not exist"),
    (
        {"parts": {"a": {"onnx": "a.onnx", "opset": 18}}},
        "unknown option 'opset' for a onnx part; valid options: none",
    ),
    ({"parts": {"a": {"keras": "a.onnx", "trusted": "yes"}}}, "parts.a.trusted must be true or false"),
    ({"parts": {"a": {"keras": "a.onnx", "batch": 1}}}, "valid options: opset, trusted"),
    ({"parts": {"a": {"onnx": 5}}}, "parts.a.onnx must be a non-empty string"),
    ({"parts": {"a": {"adapter": "rotate"}}}, "unknown adapter 'rotate'; adapters: transpose, cast"),
    ({"parts": {"a": {"adapter": "transpose"}}}, "bad arguments for adapter 'transpose'"),
    ({"parts": {"a": {"adapter": "transpose", "perm": [0, 0]}}}, "not a valid permutation"),
    ({"parts": {"a": {"adapter": "cast", "dtype": "f32"}}}, "use one of: float16"),
    ({"parts": {"t": {"torch": "nocolon"}}}, "must be 'package.module:factory' or a path to a .pt2"),
    ({"parts": {"t": {"torch": "m:f"}}}, "needs example_inputs"),
    ({"parts": {"t": {"torch": "m:f", "example_inputs": {"x": "1x3xbig"}}}}, "is not a shape like"),
    ({"parts": {"t": {"torch": "m:f", "example_inputs": {"x": "1x3:float99"}}}}, "unknown dtype 'float99'"),
    ({"parts": {"t": {"torch": "m:f", "example_inputs": {"x": "1"}, "output_names": 3}}}, "must be a list"),
    ({"parts": {"a": "a.onnx"}, "links": [3]}, "links must be a list of strings"),
    ({"parts": {"a": "a.onnx"}, "links": ["a:y=>b:x"]}, "is not of the form"),
    ({"parts": {"a": "a.onnx"}, "links": ["a:y->:x"]}, 'is not of the form "key:tensor"'),
    ({"parts": {"a": "a.onnx"}, "links": ["a:y->z:x"]}, "unknown part 'z'; parts: a"),
    ({"parts": {"a": "a.onnx"}, "inputs": ["a:x"]}, "inputs must be a mapping"),
    ({"parts": {"a": "a.onnx"}, "inputs": {"i": "q:x"}}, "inputs.i: unknown part 'q'"),
    ({"parts": {"a": "a.onnx"}, "outputs": {"o": ["a:y"]}}, "outputs.o must be a"),
    ({"parts": {"a": "a.onnx"}, "outputs": "a:y"}, "outputs must be a mapping"),
    ({"parts": {"a": "a.onnx"}, "opset": True}, "opset must be an integer"),
    ({"parts": {"a": "a.onnx"}, "optimize": "yes"}, "optimize must be true or false"),
    ({"parts": {"a": "a.onnx"}, "chain": True, "links": ["a:y->a:x"]}, "chain: true wires the parts"),
    ({"parts": {"a": "a.onnx"}, "layouts": ["a:y"]}, 'layouts must be a mapping of "key:tensor" -> layout'),
    ({"parts": {"a": "a.onnx"}, "layouts": {"a:y": "CHW"}}, "layouts.a:y: 'CHW' is not a layout; valid: NLC"),
    ({"parts": {"a": "a.onnx"}, "layouts": {"z:y": "NHWC"}}, "layouts.z:y: unknown part 'z'"),
]


@pytest.mark.parametrize(("data", "message"), SPEC_ERRORS)
def test_each_spec_error(parts: Path, data: Any, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data, base_dir=parts, origin="s.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("s.yaml: ")


def test_parse_spec_resolves_everything(parts: Path) -> None:
    spec = parse_spec(
        {
            "parts": {
                "a": "a.onnx",
                "t": {"torch": "m:f", "example_inputs": {"x": "2x3x4:int64", "y": "5"}, "opset": 18},
                "k": {"keras": "b.onnx", "trusted": True},
                "n": {"adapter": "normalize", "mean": [0.5], "std": [0.25], "layout": "NHWC"},
            },
            "links": "a:y->n:x",
            "inputs": {"img": "a:x"},
            "outputs": {"o": "n:y"},
            "opset": 18,
        },
        base_dir=parts,
    )
    assert spec.parts["a"].source == (parts / "a.onnx").resolve()
    assert spec.parts["t"].options == {
        "opset": 18,
        "example_inputs": {"x": ((2, 3, 4), "int64"), "y": ((5,), "float32")},
    }
    assert spec.parts["k"].options == {"trusted": True}
    assert _meta.get_layouts(spec.parts["n"].adapter_model()) == {"x": "NHWC", "y": "NHWC"}
    assert spec.links == ["a:y->n:x"]
    assert spec.inputs == {"img": ["a:x"]}
    assert spec.outputs == {"o": "n:y"}
    assert (spec.opset, spec.optimize, spec.chain) == (18, False, False)


def test_parse_shape() -> None:
    assert parse_shape("1x3x32x32:float32", where="w") == ((1, 3, 32, 32), "float32")
    assert parse_shape(" 4 x 2 ", where="w") == ((4, 2), "float32")
    with pytest.raises(SpecError, match="w: 'ax2'"):
        parse_shape("ax2", where="w")


# ----------------------------------------------------------------------------- extract
@pytest.fixture
def merged(parts: Path) -> Path:
    out = parts / "m.onnx"
    result = _invoke(
        "merge",
        f"a={parts / 'a.onnx'}",
        f"b={parts / 'b.onnx'}",
        f"c={parts / 'c.onnx'}",
        "--link",
        "a:y->c:p",
        "--link",
        "b:logits->c:q",
        "--input",
        "image=a:x,b:x",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    return out


def test_extract_part(merged: Path) -> None:
    out = merged.parent / "b2.onnx"
    result = _invoke("extract", merged, "--part", "b", "-o", out)
    assert result.exit_code == 0, result.output
    assert "1 nodes" in _out(result)
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["x"]
    np.testing.assert_array_equal(_run(out, {"x": X})["logits"], -X)


def test_extract_subgraph_json(merged: Path) -> None:
    out = merged.parent / "sub.onnx"
    result = _invoke("extract", merged, "--input", "image", "--output", "a/y", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["inputs"] == ["image"] and summary["outputs"] == ["a/y"] and summary["nodes"] == 1
    np.testing.assert_array_equal(_run(out, {"image": X})["a/y"], np.maximum(X, 0))


def test_extract_unknown_part_exits_1_and_writes_nothing(merged: Path) -> None:
    out = merged.parent / "x.onnx"
    result = _invoke("extract", merged, "--part", "nope", "-o", out)
    assert result.exit_code == 1
    assert "nope" in _out(result) and "'a'" in _out(result)
    assert not out.exists()


# ----------------------------------------------------------------------------- console script
def test_console_script_merge_and_bad_link(parts: Path) -> None:
    exe = shutil.which("onnxstitch")
    command = [exe] if exe else [sys.executable, "-m", "onnxstitch"]
    out = parts / "m.onnx"
    base = [*command, "merge", f"a={parts / 'a.onnx'}", f"b={parts / 'b.onnx'}", "-o", str(out)]
    bad = subprocess.run([*base, "--link", "a:nope->b:x"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "'y'" in bad.stderr and "Traceback" not in bad.stderr
    assert not out.exists()
    good = subprocess.run([*base, "--link", "a:y->b:x"], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert "seams:    1" in good.stdout
    np.testing.assert_array_equal(_run(out, {"x": X})["logits"], -np.maximum(X, 0))
