"""Session: signature, feed validation, devices, batching, torch tensors, fp16, timeouts."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import parser

from onnxstitch.errors import DeviceError, InputError, ModelFileError, RunTimeoutError, StitchError
from onnxstitch.runtime.session import Session, TensorInfo, resolve_providers


def _feeds(batch: int = 2, seq: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((batch, 3)).astype(np.float32),
        "y": rng.standard_normal((batch, 3)).astype(np.float32),
        "t": rng.integers(0, 9, (batch, seq)).astype(np.int64),
    }


@pytest.fixture(scope="module")
def add_session(add_model: onnx.ModelProto) -> Session:
    return Session(add_model, device="cpu", threads=1)


def test_signature(add_session: Session) -> None:
    assert add_session.inputs == [
        TensorInfo("x", np.dtype(np.float32), ("batch", 3)),
        TensorInfo("y", np.dtype(np.float32), ("batch", 3)),
        TensorInfo("t", np.dtype(np.int64), ("batch", "seq")),
    ]
    assert add_session.outputs == [
        TensorInfo("z", np.dtype(np.float32), ("batch", 3)),
        TensorInfo("u", np.dtype(np.int64), ("batch", "seq")),
    ]
    assert add_session.input_names == ["x", "y", "t"]
    assert add_session.providers == ["CPUExecutionProvider"]
    assert "x: float32[batch, 3]" in repr(add_session)


def test_run_numpy(add_session: Session) -> None:
    feeds = _feeds()
    out = add_session.run(feeds)
    assert list(out) == ["z", "u"]
    np.testing.assert_array_equal(out["z"], feeds["x"] + feeds["y"])
    np.testing.assert_array_equal(out["u"], feeds["t"])
    only = add_session.run(feeds, outputs=["u"])
    assert list(only) == ["u"]


def test_run_does_not_mutate_feeds(add_session: Session) -> None:
    feeds = _feeds()
    before = {k: v.copy() for k, v in feeds.items()}
    add_session.run(feeds)
    assert list(feeds) == list(before)
    for k, v in feeds.items():
        np.testing.assert_array_equal(v, before[k])


def test_path_and_proto_agree(mlp_model: onnx.ModelProto, mlp_path: Any, mlp_ref: Any) -> None:
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    a = Session(mlp_model, device="cpu").run({"x": x})["y"]
    b = Session(mlp_path, device="cpu").run({"x": x})["y"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, mlp_ref(x), rtol=1e-5, atol=1e-6)


def _problems(session: Session, feeds: dict[str, Any]) -> str:
    with pytest.raises(InputError) as info:
        session.run(feeds)
    return str(info.value)


def test_missing_input(add_session: Session) -> None:
    feeds = _feeds()
    del feeds["t"]
    msg = _problems(add_session, feeds)
    assert "1 problem(s)" in msg
    assert "missing input 't': expected int64[batch, seq]" in msg


def test_unknown_input_lists_valid_names(add_session: Session) -> None:
    msg = _problems(add_session, {**_feeds(), "image": np.zeros(1)})
    assert "unknown input 'image' (the model's inputs are: 'x', 'y', 't')" in msg


def test_wrong_dtype(add_session: Session) -> None:
    msg = _problems(add_session, {**_feeds(), "x": np.zeros((2, 3), np.float64)})
    assert "input 'x': dtype float64, expected float32[batch, 3]" in msg


def test_wrong_rank(add_session: Session) -> None:
    msg = _problems(add_session, {**_feeds(), "y": np.zeros((2, 3, 1), np.float32)})
    assert "input 'y': rank 3 (shape [2, 3, 1]), expected float32[batch, 3]" in msg


def test_wrong_static_dim(add_session: Session) -> None:
    msg = _problems(add_session, {**_feeds(), "x": np.zeros((2, 5), np.float32)})
    assert "input 'x': dim 1 is 5" in msg
    assert "(dim 1 must be 3)" in msg


def test_inconsistent_symbolic_dim(add_session: Session) -> None:
    msg = _problems(add_session, {**_feeds(), "t": np.zeros((6, 4), np.int64)})
    assert "input 't': dim 0 ('batch') is 6, but 'x' dim 0 already set 'batch' to 2" in msg


def test_all_problems_reported_at_once(add_session: Session) -> None:
    feeds = {"x": np.zeros((2, 3), np.float64), "y": np.zeros((2,), np.float32), "q": np.zeros(1)}
    msg = _problems(add_session, feeds)
    assert "4 problem(s)" in msg
    for part in ("unknown input 'q'", "missing input 't'", "input 'x': dtype float64", "input 'y': rank 1"):
        assert part in msg


def test_feeds_not_a_dict(add_session: Session) -> None:
    with pytest.raises(InputError, match="feeds must be a dict"):
        add_session.run([np.zeros((2, 3), np.float32)])  # type: ignore[arg-type]


def test_unknown_output_name(add_session: Session) -> None:
    with pytest.raises(InputError, match=r"(?s)unknown output.*'w'.*outputs are: z, u"):
        add_session.run(_feeds(), outputs=["w"])


def test_device_errors(add_model: onnx.ModelProto) -> None:
    with pytest.raises(DeviceError, match="unknown device 'tpu'") as info:
        Session(add_model, device="tpu")
    assert "auto, cpu, cuda, tensorrt" in str(info.value)
    with pytest.raises(DeviceError, match="unknown device 'cpu:1'"):
        Session(add_model, device="cpu:1")
    import onnxruntime as ort

    available = ort.get_available_providers()
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if provider in available:
            continue
        with pytest.raises(DeviceError) as err:
            Session(add_model, device=device)
        assert f"requested provider {provider}, available: {available}" in str(err.value)


def test_auto_device(add_model: onnx.ModelProto) -> None:
    import onnxruntime as ort

    session = Session(add_model)
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert resolve_providers("auto")[0] == ("CUDAExecutionProvider" if has_cuda else "CPUExecutionProvider")
    assert session.providers[-1] == "CPUExecutionProvider"


def test_bad_options(add_model: onnx.ModelProto) -> None:
    with pytest.raises(StitchError, match="unknown optimization level 'max'"):
        Session(add_model, device="cpu", optimization="max")
    with pytest.raises(StitchError, match="threads must be a positive number"):
        Session(add_model, device="cpu", threads=0)


@pytest.mark.parametrize("level", ["disabled", "basic", "extended", "all"])
def test_optimization_levels_same_result(mlp_model: onnx.ModelProto, mlp_ref: Any, level: str) -> None:
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    out = Session(mlp_model, device="cpu", optimization=level, threads=1).run({"x": x})["y"]
    np.testing.assert_allclose(out, mlp_ref(x), rtol=1e-5, atol=1e-6)


def test_unreadable_model(tmp_path: Any) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        Session(tmp_path / "nope.onnx", device="cpu")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match=r"bad\.onnx"):
        Session(bad, device="cpu")


def test_external_data_outside_folder_refused(tmp_path: Any, mlp_model: onnx.ModelProto) -> None:
    from onnxstitch.errors import UnsafeModelError

    outside = tmp_path / "outside"
    inside = tmp_path / "model"
    outside.mkdir()
    inside.mkdir()
    escaped = onnx.ModelProto()
    escaped.CopyFrom(mlp_model)
    onnx.save(
        escaped, str(outside / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    moved = onnx.load(str(outside / "m.onnx"), load_external_data=False)
    for tensor in moved.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside/w.bin"
    onnx.save(moved, str(inside / "m.onnx"))
    with pytest.raises(UnsafeModelError):
        Session(inside / "m.onnx", device="cpu")
    ok = Session(outside / "m.onnx", device="cpu")  # external data next to the model is fine
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(ok.run({"x": x})["y"], Session(mlp_model, device="cpu").run({"x": x})["y"])


def test_run_batched(mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    session = Session(mlp_model, device="cpu", threads=1)
    x = np.random.default_rng(5).standard_normal((10, 4)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    out = session.run_batched({"x": x}, 4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]
    np.testing.assert_allclose(out["y"], mlp_ref(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["y"], session.run({"x": x})["y"])
    with pytest.raises(InputError, match="batch_size must be a positive number"):
        session.run_batched({"x": x}, 0)


def test_run_batched_needs_equal_rows(add_session: Session) -> None:
    feeds = _feeds(batch=4)
    out = add_session.run_batched(feeds, 3, outputs=["z"])
    assert list(out) == ["z"]
    np.testing.assert_array_equal(out["z"], feeds["x"] + feeds["y"])
    with pytest.raises(InputError, match="already set 'batch' to 4"):
        add_session.run_batched({**feeds, "t": np.zeros((5, 4), np.int64)}, 2)
    two = parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 18]> g (float[n, 2] p, float[m, 2] q) => (float[n, 2] r) '
        "{ r = Identity(p) }"
    )
    with pytest.raises(InputError, match="dim 0 sizes differ"):
        Session(two, device="cpu").run_batched(
            {"p": np.zeros((3, 2), np.float32), "q": np.zeros((4, 2), np.float32)}, 2
        )


def test_torch_cpu_tensors(add_session: Session) -> None:
    torch = pytest.importorskip("torch")
    feeds = _feeds()
    tensors = {k: torch.from_numpy(v.copy()) for k, v in feeds.items()}
    tensors["x"].requires_grad_(True)
    out = add_session.run(tensors)
    assert isinstance(out["z"], np.ndarray)
    np.testing.assert_array_equal(out["z"], feeds["x"] + feeds["y"])
    msg = _problems(add_session, {**tensors, "x": torch.zeros(2, 3, dtype=torch.float64)})
    assert "input 'x': dtype torch.float64, expected float32[batch, 3]" in msg
    msg = _problems(add_session, {**tensors, "x": torch.zeros(2, 3, dtype=torch.bfloat16)})
    assert "input 'x': dtype torch.bfloat16" in msg


def test_output_device_cuda_needs_cuda_session(add_session: Session) -> None:
    with pytest.raises(DeviceError, match="output_device='cuda' needs a CUDA session"):
        add_session.run(_feeds(), output_device="cuda")
    with pytest.raises(DeviceError, match="unknown output_device 'gpu'"):
        add_session.run(_feeds(), output_device="gpu")


def test_fp16(mlp_model: onnx.ModelProto, mlp_path: Any, mlp_ref: Any) -> None:
    x = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)
    before = mlp_model.SerializeToString()
    for source in (mlp_model, mlp_path):
        session = Session(source, device="cpu", fp16=True)
        assert session.inputs[0].dtype == np.float32
        out = session.run({"x": x})["y"]
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, mlp_ref(x), rtol=1e-2, atol=1e-2)
    assert mlp_model.SerializeToString() == before  # the caller's model is untouched


def test_timeout_cancels_and_session_stays_usable(slow_model: onnx.ModelProto) -> None:
    session = Session(slow_model, device="cpu", threads=1)
    x = np.ones((64, 64), np.float32)
    started = time.perf_counter()
    with pytest.raises(RunTimeoutError, match="cancelled"):
        session.run({"x": x, "n": np.array(10**9)}, timeout=0.2)
    assert time.perf_counter() - started < 30
    out = session.run({"x": x, "n": np.array(2)})["y"]
    np.testing.assert_allclose(out, np.tanh(np.tanh(x)), rtol=1e-6)
    with pytest.raises(StitchError, match="timeout must be positive"):
        session.run({"x": x, "n": np.array(2)}, timeout=0)


def test_terminate_from_another_thread(slow_model: onnx.ModelProto) -> None:
    session = Session(slow_model, device="cpu", threads=1)
    x = np.ones((64, 64), np.float32)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            session.run({"x": x, "n": np.array(10**9)})
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    worker = threading.Thread(target=target)
    worker.start()
    deadline = time.monotonic() + 10
    while not session._active and time.monotonic() < deadline:
        time.sleep(0.01)
    session.terminate()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], RunTimeoutError)


def test_shared_threads_in_fresh_process(mlp_path: Any) -> None:
    code = (
        "import numpy as np\n"
        "from onnxstitch.runtime.session import Session\n"
        f"a = Session({str(mlp_path)!r}, device='cpu', threads=1, shared_threads=True)\n"
        f"b = Session({str(mlp_path)!r}, device='cpu', threads=1, shared_threads=True)\n"
        "x = np.ones((2, 4), np.float32)\n"
        "assert (a.run({'x': x})['y'] == b.run({'x': x})['y']).all()\n"
        f"c = Session({str(mlp_path)!r}, device='cpu', threads=1)\n"
        "assert (a.run({'x': x})['y'] == c.run({'x': x})['y']).all()\n"
        "print('ok', a.run({'x': x})['y'].shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ok (2, 5)" in done.stdout


@pytest.mark.gpu
def test_cuda_numpy_and_iobinding(cuda: None, mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    import torch

    # TF32 off: exact fp32 math, so the CUDA provider matches the reference tightly
    session = Session(mlp_model, device="cuda", cuda_options={"use_tf32": "0"})
    assert session.on_cuda
    x = np.random.default_rng(7).standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["y"], mlp_ref(x), rtol=1e-5, atol=1e-5)
    # the provider's default (TF32 matmuls) is close, within TF32's 10-bit mantissa
    default = Session(mlp_model, device="cuda").run({"x": x})["y"]
    np.testing.assert_allclose(default, mlp_ref(x), rtol=5e-3, atol=5e-3)
    tx = torch.from_numpy(x).cuda()
    on_gpu = session.run({"x": tx}, output_device="cuda")["y"]
    assert on_gpu.device.type == "cuda"
    np.testing.assert_allclose(on_gpu.cpu().numpy(), mlp_ref(x), rtol=1e-3, atol=1e-3)
    to_host = session.run({"x": tx})["y"]
    assert isinstance(to_host, np.ndarray)
    np.testing.assert_allclose(to_host, mlp_ref(x), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_cuda_fp16(cuda: None, mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    session = Session(mlp_model, device="cuda", fp16=True)
    x = np.random.default_rng(8).standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["y"], mlp_ref(x), rtol=1e-2, atol=1e-2)


def test_spinning_option(mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    x = np.random.default_rng(12).standard_normal((3, 4)).astype(np.float32)
    key = "session.intra_op.allow_spinning"
    off = Session(mlp_model, device="cpu", threads=1, spinning=False)
    assert off._sess.get_session_options().get_session_config_entry(key) == "0"
    np.testing.assert_allclose(off.run({"x": x})["y"], mlp_ref(x), rtol=1e-5, atol=1e-6)
    on = Session(mlp_model, device="cpu", threads=1)
    with pytest.raises(RuntimeError, match="does not have configuration"):  # onnxruntime's default: spin
        on._sess.get_session_options().get_session_config_entry(key)


def test_io_binding_path_on_cpu(add_session: Session) -> None:
    """The binding code the CUDA path uses, exercised on CPU with numpy and torch inputs."""
    from onnxstitch.runtime._iobinding import run_bound

    feeds = _feeds()
    symbols = {"batch": 2, "seq": 4}
    with add_session._run_options(None) as run_options:
        out = run_bound(add_session, feeds, ["z", "u"], symbols, "cpu", run_options)
    np.testing.assert_array_equal(out["z"], feeds["x"] + feeds["y"])
    np.testing.assert_array_equal(out["u"], feeds["t"])
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(v.copy()) for k, v in feeds.items()}
    with add_session._run_options(None) as run_options:
        out = run_bound(add_session, tensors, ["u"], symbols, "cpu", run_options)
    assert list(out) == ["u"]
    np.testing.assert_array_equal(out["u"], feeds["t"])


def test_model_past_protobuf_limit_needs_a_path(
    mlp_model: onnx.ModelProto, mlp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxstitch.errors import ModelTooLargeError
    from onnxstitch.runtime import session as session_module

    monkeypatch.setattr(session_module, "_PROTOBUF_LIMIT", mlp_model.ByteSize())  # pretend 2 GB is this small
    with pytest.raises(ModelTooLargeError, match="pass the path"):
        Session(mlp_model, device="cpu")
    assert Session(mlp_path, device="cpu").output_names == ["y"]  # the path route is unaffected


@pytest.mark.gpu
def test_cuda_outputs_with_unknown_or_wrong_declared_shape(cuda: None) -> None:
    import torch

    model = parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 18]> g (float[batch, 3] x) => (float[batch, 7] y, float[n] z) '
        "{ y = Neg(x)\n s = Shape(x)\n f = Cast<to = 1>(s)\n z = Identity(f) }"
    )
    session = Session(model, device="cuda")
    x = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
    out = session.run({"x": x}, output_device="cuda")
    assert out["y"].device.type == "cuda" and tuple(out["y"].shape) == (2, 3)
    np.testing.assert_array_equal(out["y"].cpu().numpy(), -x.cpu().numpy())
    np.testing.assert_array_equal(out["z"].cpu().numpy(), [2.0, 3.0])
