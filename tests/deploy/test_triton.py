"""deploy_triton: the repository layout and a config.pbtxt that Triton's own schema parses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import onnxstitch as ox
from onnxstitch.errors import DeployError
from onnxstitch.runtime.deploy.triton import triton_config


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_batched_model_gets_max_batch_size_and_drops_batch_dim(tmp_path: Path, batched: onnx.ModelProto):
    result = ox.deploy_triton(batched, tmp_path / "repo", name="hybrid")
    assert result.config_path == tmp_path / "repo" / "hybrid" / "config.pbtxt"
    assert result.model_path == tmp_path / "repo" / "hybrid" / "1" / "model.onnx"
    cfg = parse(result.config_path.read_text())
    assert cfg.name == "hybrid"
    assert cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 64
    inputs = {i.name: i for i in cfg.input}
    assert inputs["image"].data_type == mc.TYPE_FP32
    assert list(inputs["image"].dims) == [3, 8, 8]
    assert inputs["ids"].data_type == mc.TYPE_INT64
    assert list(inputs["ids"].dims) == [2]
    outputs = {o.name: o for o in cfg.output}
    assert list(outputs["logits"].dims) == [10]
    # a [batch] tensor uses Triton's documented idiom: dims [1] + reshape to []
    assert list(outputs["total"].dims) == [1]
    assert outputs["total"].HasField("reshape")
    assert list(outputs["total"].reshape.shape) == []
    assert cfg.HasField("dynamic_batching")
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cfg.instance_group[0].count == 1
    # the model written is the model given, loadable and runnable
    written = ox.load(result.model_path)
    assert written.graph == batched.graph
    sess = ox.Session(result.model_path, device="cpu")
    out = sess.run({"image": np.ones((2, 3, 8, 8), np.float32), "ids": np.ones((2, 2), np.int64)})
    assert out["total"].tolist() == [2, 2]


def test_unbatched_model_keeps_full_dims_with_minus_one(tmp_path: Path, unbatched: onnx.ModelProto):
    result = ox.deploy_triton(unbatched, tmp_path, name="plain")
    cfg = parse(result.config_text)
    assert cfg.max_batch_size == 0
    assert list(cfg.input[0].dims) == [4, -1]
    assert list(cfg.output[0].dims) == [4, -1]
    assert not cfg.HasField("dynamic_batching")


def test_explicit_options_gpu_tensorrt_instances(batched: onnx.ModelProto):
    text, mbs = triton_config(
        batched, name="m", max_batch_size=16, instances=3, device="gpu", accelerator="tensorrt"
    )
    cfg = parse(text)
    assert mbs == cfg.max_batch_size == 16
    group = cfg.instance_group[0]
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and group.count == 3
    accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt"
    assert accel.parameters["precision_mode"] == "FP16"


def test_max_batch_size_zero_turns_batching_off(batched: onnx.ModelProto):
    cfg = parse(triton_config(batched, name="m", max_batch_size=0)[0])
    assert cfg.max_batch_size == 0
    assert list(cfg.input[0].dims) == [-1, 3, 8, 8]
    assert not cfg.HasField("dynamic_batching")


def test_batching_refused_without_shared_batch_dim(unbatched: onnx.ModelProto):
    with pytest.raises(DeployError, match=r"shared batch symbol.*input 'x' has the static dim 0 4"):
        triton_config(unbatched, name="m", max_batch_size=8)


@pytest.mark.parametrize("name", ["", "../escape", "a b", "with/slash", "ümlaut", ".hidden", "x" * 200])
def test_unsafe_model_names_refused(tmp_path: Path, batched: onnx.ModelProto, name: str):
    with pytest.raises(DeployError, match="cannot be served"):
        ox.deploy_triton(batched, tmp_path / "repo", name=name)
    assert not (tmp_path / "repo").exists()


def test_unsupported_dtypes_and_names_all_reported(tmp_path: Path):
    model = onnx.parser.parse_model(
        """<ir_version: 9, opset_import: ["" : 19]>
        g (float8e4m3fn[batch, 2] a, float[batch, 2] "bad name") => (float8e4m3fn[batch, 2] b) {
            b = Identity (a)
        }"""
    )
    with pytest.raises(DeployError) as info:
        ox.deploy_triton(model, tmp_path / "repo", name="m")
    text = str(info.value)
    assert "input 'a': dtype FLOAT8E4M3FN has no Triton TYPE_*" in text
    assert "output 'b': dtype FLOAT8E4M3FN" in text
    assert "input 'bad name': name must match" in text
    assert not (tmp_path / "repo").exists()


def test_existing_version_never_overwritten_without_force(tmp_path: Path, batched, unbatched):
    ox.deploy_triton(batched, tmp_path, name="m")
    before = (tmp_path / "m" / "1" / "model.onnx").read_bytes()
    with pytest.raises(DeployError, match="version 1 of model 'm' already exists"):
        ox.deploy_triton(unbatched, tmp_path, name="m")
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == before
    ox.deploy_triton(unbatched, tmp_path, name="m", force=True)
    assert ox.load(tmp_path / "m" / "1" / "model.onnx").graph == unbatched.graph
    # a new version with the same config sits beside the old one
    ox.deploy_triton(unbatched, tmp_path, name="m", version=2)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "config.pbtxt"]


def test_new_version_never_changes_the_shared_config_without_force(tmp_path: Path, batched):
    ox.deploy_triton(batched, tmp_path, name="m")
    config = (tmp_path / "m" / "config.pbtxt").read_text()
    with pytest.raises(DeployError, match=r"already has a config.pbtxt that differs") as info:
        ox.deploy_triton(batched, tmp_path, name="m", version=2, max_batch_size=128, instances=2)
    assert "-max_batch_size: 64" in str(info.value) and "+max_batch_size: 128" in str(info.value)
    assert (tmp_path / "m" / "config.pbtxt").read_text() == config
    assert not (tmp_path / "m" / "2").exists()
    ox.deploy_triton(batched, tmp_path, name="m", version=2, max_batch_size=128, force=True)
    assert "max_batch_size: 128" in (tmp_path / "m" / "config.pbtxt").read_text()


def test_dry_run_writes_nothing(tmp_path: Path, batched: onnx.ModelProto):
    result = ox.deploy_triton(batched, tmp_path / "repo", name="m", dry_run=True)
    assert result.dry_run
    assert result.files == [result.config_path, result.model_path]
    assert parse(result.config_text).max_batch_size == 64
    assert not (tmp_path / "repo").exists()


def test_input_model_not_mutated_and_path_accepted(tmp_path: Path, batched: onnx.ModelProto):
    before = batched.SerializeToString()
    path = tmp_path / "in.onnx"
    ox.save(batched, path)
    ox.deploy_triton(path, tmp_path / "repo", name="from_path")
    ox.deploy_triton(batched, tmp_path / "repo", name="from_proto")
    assert batched.SerializeToString() == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": 0}, "version must be a positive integer"),
        ({"device": "tpu"}, "device 'tpu'"),
        ({"accelerator": "tensorrt"}, "needs device='gpu'"),
        ({"instances": 0}, "instances must be at least 1"),
        ({"max_batch_size": -1}, "max_batch_size must be >= 0"),
    ],
)
def test_bad_options(tmp_path: Path, batched, kwargs, match):
    with pytest.raises(DeployError, match=match):
        ox.deploy_triton(batched, tmp_path / "repo", name="m", **kwargs)
    assert not (tmp_path / "repo").exists()
