"""from_torch with the real torch exporters and onnxruntime (tiny seeded modules, shared conversions)."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import pathlib
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from torch_models import (  # noqa: E402
    CNN,
    MLP,
    Broken,
    ClipLarge,
    ClipLargeCond,
    DataDependent,
    HalvingLoop,
    Noisy,
    Pair,
    Tokens,
    TokenTypes,
    TracedOutputs,
    TwoTower,
    Unexportable,
    seeded,
)

import onnxstitch as ox  # noqa: E402
from onnxstitch import _meta  # noqa: E402
from onnxstitch.converters import _common  # noqa: E402
from onnxstitch.converters._common import value_dims  # noqa: E402
from onnxstitch.errors import (  # noqa: E402
    ConversionError,
    MissingDependencyError,
    ModelFileError,
    UnsafeModelError,
    ValidationError,
    VersionError,
)


def _dims(model: onnx.ModelProto) -> dict[str, list[Any]]:
    return {v.name: value_dims(v) for v in [*model.graph.input, *model.graph.output]}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _torch_out(module: Any, *arrays: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        out = module(*[torch.from_numpy(a) for a in arrays])
    out = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in out]


def _torch_ref(module: Any) -> Any:
    """The module as a numpy reference (inputs in graph order)."""

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        return _torch_out(module, *arrays)

    return run


def _snapshot(module: Any) -> dict[str, Any]:
    return {
        "training": {n: m.training for n, m in module.named_modules()},
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in module.named_parameters()},
        "grads": {n: p.grad for n, p in module.named_parameters()},
        "ids": {n: id(p) for n, p in module.named_parameters()},
    }


def _same_snapshot(a: dict[str, Any], b: dict[str, Any]) -> bool:
    same_state = a["state"].keys() == b["state"].keys() and all(
        torch.equal(a["state"][k], b["state"][k]) for k in a["state"]
    )
    return same_state and all(a[k] == b[k] for k in ("training", "requires_grad", "grads", "ids"))


# ------------------------------------------------------------------------------ shared conversions
@pytest.fixture(scope="module")
def mlp_case(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An MLP left in train mode with a frozen layer, converted with the cwd in an empty folder."""
    module = seeded(MLP)
    module.train()
    module.fc1.weight.requires_grad_(False)
    before = _snapshot(module)
    cwd = tmp_path_factory.mktemp("cwd")
    old = Path.cwd()
    os.chdir(cwd)
    try:
        model = ox.from_torch(module, torch.randn(2, 6))
    finally:
        os.chdir(old)
    yield {"module": module, "model": model, "before": before, "cwd": cwd}


@pytest.fixture(scope="module")
def cnn_case() -> dict[str, Any]:
    module = seeded(CNN)  # left in train mode: Dropout and BatchNorm would differ if exported so
    return {"module": module, "model": ox.from_torch(module, (torch.randn(2, 3, 16, 16),))}


@pytest.fixture(scope="module")
def two_tower_case() -> dict[str, Any]:
    module = seeded(TwoTower).eval()
    example = {"meta": torch.randn(3, 5), "image": torch.randn(3, 3, 12, 12)}  # not in forward's order
    model = ox.from_torch(module, example, output_names=["probs", "scores"])
    return {"module": module, "model": model}


@pytest.fixture(scope="module")
def tokens_case() -> dict[str, Any]:
    module = seeded(Tokens).eval()
    model = ox.from_torch(
        module,
        (torch.randn(2, 7, 4), torch.ones(2, 7)),
        dynamic_dims={"tokens": {0: "n", 1: "seq"}, "mask": {0: "n", -1: "seq"}},
    )
    return {"module": module, "model": model}


# ------------------------------------------------------------------------------------------ tests
def test_mlp_names_batch_and_metadata(mlp_case: dict[str, Any]) -> None:
    model = mlp_case["model"]
    assert _dims(model) == {"features": ["batch", 6], "output": ["batch", 3]}
    assert _meta.get_source(model) == "torch"
    assert _meta.get_layouts(model) == {}  # no rank-4 tensors
    assert model.producer_name == "onnxstitch" and model.graph.name == "MLP"
    onnx.checker.check_model(model, full_check=True)


def test_mlp_parity_at_batch_1_and_7(mlp_case: dict[str, Any]) -> None:
    module = seeded(MLP).eval()  # same seed, same weights as the converted one
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        x = rng.standard_normal((batch, 6)).astype(np.float32)
        (got,) = _run(mlp_case["model"], {"features": x})
        (want,) = _torch_out(module, x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_callers_module_is_unchanged(mlp_case: dict[str, Any]) -> None:
    module = mlp_case["module"]
    assert module.training and module.fc1.training
    assert _same_snapshot(mlp_case["before"], _snapshot(module))
    assert module.fc1.weight.requires_grad is False and module.fc2.weight.requires_grad is True


def test_no_side_files_written(mlp_case: dict[str, Any]) -> None:
    assert list(mlp_case["cwd"].iterdir()) == []
    model = mlp_case["model"]
    assert all(
        not t.external_data and t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    )


def test_large_model_route_leaves_no_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # past ~1.8 GB of weights the exporter writes to a temp dir; lower the bar to take that route
    from onnxstitch.converters import _torch

    monkeypatch.setattr(_torch, "_LARGE_BYTES", 0)
    monkeypatch.chdir(tmp_path)
    model = ox.from_torch(seeded(MLP), torch.randn(2, 6))
    assert list(tmp_path.iterdir()) == []
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert sum(len(t.raw_data) for t in model.graph.initializer) >= (6 * 16 + 16 + 16 * 3 + 3) * 4


def test_cnn_eval_mode_parity_and_layouts(cnn_case: dict[str, Any]) -> None:
    model, module = cnn_case["model"], cnn_case["module"]
    assert module.training  # the caller's module stays in train mode
    assert _dims(model) == {
        "image": ["batch", 3, 16, 16],
        "output_0": ["batch", 4],
        "output_1": ["batch", 8, 16, 16],
    }
    assert _meta.get_layouts(model) == {"image": "NCHW", "output_1": "NCHW"}
    reference = seeded(CNN).eval()
    x = np.random.default_rng(1).standard_normal((7, 3, 16, 16)).astype(np.float32)
    for got, want in zip(_run(model, {"image": x}), _torch_out(reference, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    train_out = seeded(CNN).train()(torch.from_numpy(x))[0].detach().numpy()
    assert not np.allclose(train_out, _run(model, {"image": x})[0], atol=1e-3)  # train mode would differ


def test_multi_input_multi_output_names_and_order(two_tower_case: dict[str, Any]) -> None:
    model = two_tower_case["model"]
    assert [v.name for v in model.graph.input] == ["image", "meta"]  # forward's order, not the dict's
    assert _dims(model) == {
        "image": ["batch", 3, 12, 12],
        "meta": ["batch", 5],
        "probs": ["batch", 4],
        "scores": ["batch", 4],
    }
    assert _meta.get_layouts(model) == {"image": "NCHW"}
    rng = np.random.default_rng(2)
    image = rng.standard_normal((7, 3, 12, 12)).astype(np.float32)
    meta = rng.standard_normal((7, 5)).astype(np.float32)
    got = _run(model, {"image": image, "meta": meta})
    for g, w in zip(got, _torch_out(two_tower_case["module"], image, meta), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_custom_symbols_are_shared(tokens_case: dict[str, Any]) -> None:
    model = tokens_case["model"]
    assert _dims(model) == {"tokens": ["n", "seq", 4], "mask": ["n", "seq"], "output": ["n", "seq", 4]}
    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((3, 11, 4)).astype(np.float32)
    mask = (rng.random((3, 11)) > 0.5).astype(np.float32)
    (got,) = _run(model, {"tokens": tokens, "mask": mask})
    (want,) = _torch_out(tokens_case["module"], tokens, mask)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_static_dims_custom_input_name_and_opset() -> None:
    module = seeded(MLP).eval()
    model = ox.from_torch(module, torch.randn(3, 6), dynamic_dims={}, input_names=["x"], opset=18)
    assert _dims(model) == {"x": [3, 6], "output": [3, 3]}
    assert {o.domain: o.version for o in model.opset_import}[""] == 18


def test_input_left_out_of_dynamic_dims_is_static() -> None:
    model = ox.from_torch(Pair(), (torch.randn(2, 3), torch.randn(4, 5)), dynamic_dims={"a": {0: "batch"}})
    assert _dims(model) == {"a": ["batch", 3], "b": [4, 5], "output_0": ["batch", 3], "output_1": [4, 5]}


def test_both_exporters_failing_names_module_and_reasons(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConversionError) as info:
        ox.from_torch(Unexportable(), torch.rand(2, 3) + 1, validate=False)
    text = str(info.value)
    assert text.startswith("torch module Unexportable could not be exported to ONNX")
    assert (
        "dynamo exporter: DispatchError" in text and "TorchScript exporter: UnsupportedOperatorError" in text
    )
    assert "zeta" in text
    # torch's own loggers and its printed IR graphs stay off stderr: the error says it all
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("module", "example", "takes"),
    [
        (Broken(), torch.randn(2, 3), "(1: x)"),  # wrong inner size
        (seeded(CNN), torch.randn(2, 4, 16, 16), "(1: image)"),  # wrong channels
        (seeded(CNN), torch.randn(2, 3, 16, 16).half(), "(1: image)"),  # wrong dtype
        (Pair(), (torch.randn(2, 3),), "(2: a, b)"),  # forward's second argument missing
    ],
)
def test_module_failing_on_its_examples_says_so(module: Any, example: Any, takes: str) -> None:
    with pytest.raises(ConversionError) as info:
        ox.from_torch(module, example, validate=False)
    text = str(info.value)
    assert f"torch module {type(module).__name__}: the module fails on the example inputs: " in text
    assert info.value.hint == (
        f"check the example input shapes/dtypes and the number of inputs forward takes {takes}"
    )
    assert "dynamo" not in text and "dynamic_dims" not in text


def test_dynamo_failure_output_stays_off_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """torch.export prints the partial graph and logs errors itself; we keep one warning of ours."""
    before = logging.getLogger("torch").level
    with (
        caplog.at_level(logging.WARNING, logger="onnxstitch.converters._torch"),
        pytest.raises(ConversionError),
    ):
        ox.from_torch(DataDependent(), torch.ones(2, 3), dynamic_dims={}, validate=False)
    err = capfd.readouterr().err
    assert "def forward" not in err and "always_classified" not in err and "Traceback" not in err
    assert "TracerWarning" not in err  # reported in the error, not printed
    fallbacks = [r for r in caplog.records if "falling back to the TorchScript" in r.getMessage()]
    assert len(fallbacks) == 1
    assert logging.getLogger("torch").level == before  # the quieting is scoped


def _line_of(cls: type, text: str) -> int:
    source, first = inspect.getsourcelines(cls)
    return first + next(i for i, line in enumerate(source) if text in line)


@pytest.mark.parametrize("validate", [True, False])
def test_data_dependent_branch_is_refused_naming_the_line(validate: bool) -> None:
    """dynamo fails on `if x.abs().max() > 4`; TorchScript would trace the one branch the examples take."""
    with pytest.raises(ConversionError) as info:
        ox.from_torch(ClipLarge(), torch.randn(2, 5), validate=validate)
    text = str(info.value)
    assert text.startswith("torch module ClipLarge: forward takes a data-dependent branch")
    assert f"torch_models.py:{_line_of(ClipLarge, 'if x.abs().max() > 4:')}" in text
    assert "`if x.abs().max() > 4:` (converting a tensor to a Python boolean)" in text
    assert "GuardOnDataDependentSymNode" in text  # dynamo's reason
    assert info.value.hint is not None and "torch.cond" in info.value.hint
    assert "validate" not in info.value.hint


def test_data_dependent_loop_is_refused() -> None:
    with pytest.raises(ConversionError) as info:
        ox.from_torch(HalvingLoop(), torch.randn(2, 5) * 3)
    text = str(info.value)
    assert f"torch_models.py:{_line_of(HalvingLoop, 'for _ in range')}" in text
    assert "converting a tensor to a Python integer" in text


def test_torch_cond_converts_both_branches() -> None:
    module = ClipLargeCond()
    model = ox.from_torch(module, torch.randn(2, 5))
    assert "If" in {n.op_type for n in model.graph.node}
    for scale in (1.0, 10.0):  # all below 4, then some beyond
        x = (np.random.default_rng(3).standard_normal((6, 5)) * scale).astype(np.float32)
        np.testing.assert_allclose(_run(model, {"x": x})[0], _torch_out(module, x)[0], rtol=1e-6, atol=1e-6)


@pytest.fixture
def dynamo_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dynamo exporter fails (as on an op it lacks): the TorchScript fallback is taken."""
    from onnxstitch.converters import _torch

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("an op the dynamo exporter lacks")

    monkeypatch.setattr(_torch, "_export_dynamo", fail)


@pytest.mark.usefixtures("dynamo_fails")
def test_faithful_trace_is_still_a_fallback() -> None:
    """A trace that converts no tensor to a Python value is exported (and validated) as before."""
    model = ox.from_torch(seeded(MLP), torch.randn(2, 6))
    assert model.graph.output[0].name == "output"


def test_layout_override_wins() -> None:
    module = seeded(TwoTower).eval()
    model = ox.from_torch(
        module,
        (torch.randn(2, 3, 8, 8), torch.randn(2, 5)),
        layouts={"image": "NHWC"},
        validate=False,
    )
    assert _meta.get_layouts(model) == {"image": "NHWC"}


def test_nondeterministic_module_fails_validation_with_table() -> None:
    with pytest.raises(ValidationError) as info:
        ox.from_torch(Noisy(), torch.randn(2, 5))
    text = str(info.value)
    assert "Noisy" in text and "max abs err" in text and "✗" in text
    assert not info.value.report
    # the example (batch 2), then the example repeated to batch 1 and 7 and perturbed
    assert [r.batch for r in info.value.report.rows] == [2, 1, 7]
    assert "feeds #1: the example inputs: x float32[2,5]" in text


def test_tolerances_and_validate_flag_are_honoured() -> None:
    # torch.rand_like adds noise in [0, 1): atol=1 accepts it, validate=False skips the check
    model = ox.from_torch(Noisy(), torch.randn(2, 5), atol=1.0, rtol=0.0)
    assert _dims(model) == {"x": ["batch", 5], "output": ["batch", 5]}
    assert ox.from_torch(Noisy(), torch.randn(2, 5), validate=False).graph.output[0].name == "output"


def test_validation_feeds_come_from_the_examples() -> None:
    """Random integers 0..3 index past a 2-row token-type table; the examples' values do not."""
    module = seeded(TokenTypes).eval()
    ids = torch.tensor([[3, 17, 42, 9, 0]])
    types = torch.tensor([[0, 0, 1, 1, 1]])
    model = ox.from_torch(module, (ids, types), dynamic_dims={"ids": {0: "batch"}, "types": {0: "batch"}})
    with pytest.raises(ox.StitchError, match="out of data bounds"):  # what random feeds did (0..3)
        _common.validate(model, _torch_ref(module), what="m")
    sets = _common.example_feed_sets(model, {"ids": ids.numpy(), "types": types.numpy()})
    assert all(set(np.unique(f["ids"])) <= {0, 3, 9, 17, 42} for _, f in sets)


def test_validation_inputs_are_used_and_named_in_the_error() -> None:
    given = [torch.randn(3, 5), {"x": torch.randn(4, 5)}]
    with pytest.raises(ValidationError) as info:
        ox.from_torch(Noisy(), torch.randn(2, 5), validation_inputs=given)
    report = info.value.report
    assert [r.batch for r in report.rows] == [3, 4]
    assert [f.split(":")[0] for f in report.feeds] == ["validation_inputs[0]", "validation_inputs[1]"]
    assert "feeds #2: validation_inputs[1]: x float32[4,5] in [" in str(info.value)
    module = seeded(TokenTypes).eval()
    example = (torch.tensor([[1, 2]]), torch.tensor([[0, 0]]))
    ox.from_torch(
        module, example, validation_inputs=[(torch.tensor([[5, 6], [7, 8]]), torch.tensor([[0, 1]] * 2))]
    )
    with pytest.raises(ConversionError, match=r"validation_inputs\[0\] has 1 tensors"):
        ox.from_torch(module, example, validation_inputs=[(torch.tensor([[5, 6]]),)])


@pytest.mark.usefixtures("dynamo_fails")
def test_torchscript_fallback_says_why_and_links_batch(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="onnxstitch.converters._torch"):
        model = ox.from_torch(TracedOutputs(), torch.randn(2, 3, 4))
    messages = [r.getMessage() for r in caplog.records if "falling back to the TorchScript" in r.getMessage()]
    assert len(messages) == 1 and "TracedOutputs" in messages[0] and "dynamo exporter lacks" in messages[0]
    dims = _dims(model)
    # TorchScript names both output dims 0 like "Tile32_dim_0": the one that follows the batch is
    # linked to it, the data-dependent one (nonzero) is left alone
    assert dims["x"] == ["batch", 3, 4] and dims["output_0"] == ["batch", 4, 4]
    assert isinstance(dims["output_1"][0], str) and dims["output_1"][0] != "batch"
    x = np.random.default_rng(4).standard_normal((7, 3, 4)).astype(np.float32)
    got = _run(model, {"x": x})
    np.testing.assert_array_equal(got[0], np.tile(x[:, :2], (1, 2, 1)))
    np.testing.assert_array_equal(got[1], np.argwhere(x > 0))


# ------------------------------------------------------------------------------------------- .pt2
@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    module = seeded(MLP).eval()
    program = torch.export.export(
        module, (torch.randn(2, 6),), dynamic_shapes={"features": {0: torch.export.Dim("b")}}
    )
    path = tmp_path_factory.mktemp("pt2") / "mlp.pt2"
    torch.export.save(program, str(path))
    return path


class _Payload:
    """Pickles to a call that creates a marker file: what a hostile .pt2 could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


def _evil_copy(good: Path, evil: Path, marker: Path) -> None:
    payload = io.BytesIO()
    torch.save(_Payload(marker), payload)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            data = payload.getvalue() if name.endswith("sample_inputs/model.pt") else src.read(name)
            dst.writestr(name, data)


def test_pt2_refused_without_trusted_and_payload_not_run(pt2_file: Path, tmp_path: Path) -> None:
    evil, marker = tmp_path / "evil.pt2", tmp_path / "PWNED"
    _evil_copy(pt2_file, evil, marker)
    for path in (pt2_file, evil, str(evil)):
        with pytest.raises(UnsafeModelError, match="trusted=True"):
            ox.from_torch(path, torch.randn(2, 6))
    assert not marker.exists()
    # the payload is live: torch.export.load itself runs it (why trusted= exists)
    with contextlib.suppress(Exception):  # the archive is broken on purpose; the payload ran first
        torch.export.load(str(evil))
    assert marker.exists()


def test_pt2_accepted_with_trusted(pt2_file: Path) -> None:
    model = ox.from_torch(pt2_file, None, trusted=True)
    assert _dims(model) == {"features": ["batch", 6], "output": ["batch", 3]}
    x = np.random.default_rng(5).standard_normal((7, 6)).astype(np.float32)
    (want,) = _torch_out(seeded(MLP).eval(), x)
    np.testing.assert_allclose(_run(model, {"features": x})[0], want, rtol=1e-4, atol=1e-5)


def test_pt2_dynamic_dims_refused(pt2_file: Path) -> None:
    with pytest.raises(ConversionError, match="fixed when it was exported"):
        ox.from_torch(pt2_file, None, trusted=True, dynamic_dims={"features": {0: "n"}})


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        ox.from_torch(tmp_path / "missing.pt2", None, trusted=True)
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"not a \.pt2"):
        ox.from_torch(tmp_path / "weights.pt", None, trusted=True)


# ----------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dynamic_dims": {"nope": {0: "batch"}}}, r"'nope' is not an input \(inputs: \['features'\]\)"),
        ({"dynamic_dims": {"features": {2: "batch"}}}, "axis 2 is out of range"),
        ({"dynamic_dims": {"features": {0: ""}}}, "non-empty string"),
        ({"input_names": ["a", "b"]}, "2 names given for 1 tensors"),
    ],
)
def test_bad_arguments_fail_before_export(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConversionError, match=match):
        ox.from_torch(seeded(MLP), torch.randn(2, 6), **kwargs)


def test_bad_inputs_and_opset() -> None:
    with pytest.raises(ConversionError, match="example_inputs are needed"):
        ox.from_torch(seeded(MLP), None)
    with pytest.raises(ConversionError, match="not torch tensors"):
        ox.from_torch(seeded(MLP), (np.zeros((2, 6), np.float32),))
    with pytest.raises(ConversionError, match="not parameters of forward"):
        ox.from_torch(seeded(MLP), {"x": torch.randn(2, 6)})
    with pytest.raises(ConversionError, match=r"nn\.Module or a \.pt2 path"):
        ox.from_torch(object(), torch.randn(2, 6))
    with pytest.raises(VersionError, match="opset 99"):
        ox.from_torch(seeded(MLP), torch.randn(2, 6), opset=99)


def test_wrong_output_name_count(mlp_case: dict[str, Any]) -> None:
    with pytest.raises(ConversionError, match="output_names"):
        ox.from_torch(seeded(MLP), torch.randn(2, 6), output_names=["a", "b"], validate=False)


def test_missing_torch_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(MissingDependencyError, match="torch") as info:
        ox.from_torch(object(), None)
    assert info.value.extra == "torch" and "onnxstitch[torch]" in str(info.value)


# -------------------------------------------------------------------------------------------- gpu
@pytest.mark.gpu
def test_cuda_module_converts_and_validates_on_its_device() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    module = seeded(CNN).cuda()  # train mode, on the GPU; the copy is exported, then checked on the CPU
    model = ox.from_torch(module, torch.randn(2, 3, 16, 16, device="cuda"))  # default tolerances
    assert module.training and all(p.is_cuda for p in module.parameters())
    x = np.random.default_rng(6).standard_normal((7, 3, 16, 16)).astype(np.float32)
    got = _run(model, {"image": x})  # onnxruntime on CPU
    want = _torch_out(seeded(CNN).eval(), x)  # torch on CPU
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_export_logs_no_torchvision_noise() -> None:
    """The exporter's per-op 'torchvision is not installed' warnings are not shown to our users."""
    code = (
        "import torch, onnxstitch as ox\n"
        "m = ox.from_torch(torch.nn.Linear(4, 3), (torch.randn(2, 4),))\n"
        "print([i.name for i in m.graph.input])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "['input']" in done.stdout
    assert "torchvision is not installed" not in done.stderr
