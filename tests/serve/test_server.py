"""``onnxstitch serve`` as a real subprocess, called with NVIDIA's tritonclient and raw HTTP.

Two servers per module: ``adder`` (a model file, adaptive batching, a 1 MiB body limit, no request
timeout, one worker process) and ``slow`` (a Triton repository written by ``deploy_triton``, a 0.5 s
request timeout, the model in the server process, bound to 127.0.0.2).
"""

from __future__ import annotations

import concurrent.futures
import errno
import gzip
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import psutil
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

import onnxstitch as ox
from onnxstitch.runtime.deploy import deploy_triton
from onnxstitch.runtime.deploy.triton import triton_config

from ._models import ADD, SLOW, model
from ._server import Server, running

pytestmark = pytest.mark.serve

LEAKS = ("/tmp", "/work", "/root", "/home", ".onnx", "Traceback")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def add_model() -> onnx.ModelProto:
    return model(ADD)


@pytest.fixture(scope="module")
def local(add_model: onnx.ModelProto) -> ox.Session:
    return ox.Session(add_model, device="cpu")


@pytest.fixture(scope="module")
def adder(add_model: onnx.ModelProto, workdir: Path) -> Iterator[Server]:
    path = workdir / "add model.onnx"
    onnx.save(add_model, path)
    args = (
        "--name",
        "adder",
        "--max-batch-size",
        "8",
        "--max-batch-time",
        "0.005",
        "--max-body-mb",
        "1",
        "--timeout",
        "0",
    )
    with running(path, workdir / "adder.log", *args) as server:
        yield server


@pytest.fixture(scope="module")
def slow(workdir: Path) -> Iterator[Server]:
    deploy_triton(model(SLOW), workdir / "repo", name="slow", version=2)
    args = ("--host", "127.0.0.2", "--timeout", "0.5", "--workers", "0", "--threads", "1", "--device", "cpu")
    with running(workdir / "repo", workdir / "slow.log", *args, host="127.0.0.2") as server:
        yield server


def feeds(i: int) -> dict[str, np.ndarray]:
    """Distinct inputs for request ``i`` (1-3 rows)."""
    rows = 1 + i % 3
    x = np.random.default_rng(i).standard_normal((rows, 4)).astype(np.float32)
    n = (1000 * i + np.arange(rows, dtype=np.int64)).reshape(rows, 1)
    return {"x": x, "n": n}


def http_infer(
    client: thttp.InferenceServerClient, data: dict[str, np.ndarray], *, binary: bool = True
) -> dict[str, np.ndarray]:
    inputs = []
    for name, array in data.items():
        tensor = thttp.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [thttp.InferRequestedOutput(o, binary_data=binary) for o in ("y", "z")]
    result = client.infer("adder", inputs, outputs=outputs)
    return {o: result.as_numpy(o) for o in ("y", "z")}


def post(server: Server, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        text = response.read()
    finally:
        connection.close()
    return response.status, json.loads(text) if text else None


def assert_clean_error(status: int, body: Any, *, expected: int, needles: tuple[str, ...] = ()) -> None:
    assert status == expected, body
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    for needle in needles:
        assert needle in body["error"], (needle, body["error"])
    for leak in LEAKS:
        assert leak not in body["error"], (leak, body["error"])


def json_request(inputs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


def good_inputs() -> list[dict[str, Any]]:
    return [
        {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [0.5] * 8},
        {"name": "n", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]},
    ]


def replace(**changes: dict[str, Any]) -> list[dict[str, Any]]:
    inputs = good_inputs()
    for item in inputs:
        item.update(changes.get(item["name"], {}))
    return inputs


MALFORMED: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "wrong name": (
        json_request([{**good_inputs()[0], "name": "image"}, good_inputs()[1]]),
        ("'image'", "'x'"),
    ),
    "wrong dtype": (json_request(replace(x={"datatype": "FP64"})), ("'x'", "FP64", "FP32")),
    "wrong static dim": (json_request(replace(x={"shape": [1, 8]})), ("'x'", "dim 1")),
    "wrong rank": (json_request(replace(x={"shape": [8]})), ("'x'", "rank")),
    "missing input": (json_request(good_inputs()[:1]), ("missing input 'n'",)),
    "non-numeric data": (json_request(replace(x={"data": ["a"] * 8})), ("'x'", "non-numeric")),
    "count vs payload": (json_request(replace(n={"data": [1, 2, 3]})), ("'n'", "2 elements", "3")),
    "batch disagrees": (json_request(replace(n={"shape": [1, 1], "data": [1]})), ("'n'", "batch")),
    "float into int": (json_request(replace(n={"data": [1.5, 2.5]})), ("'n'", "INT64")),
    "no datatype": (json_request([{"name": "x", "shape": [2, 4], "data": [0.0] * 8}]), ("'x'", "'datatype'")),
    "not json": (b"{inputs: nope", ("not valid JSON",)),
    "not an object": (b"[1, 2, 3]", ("JSON object",)),
}


def test_ready_live_and_loopback_only(adder: Server) -> None:
    client = thttp.InferenceServerClient(adder.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("adder")
    assert not client.is_model_ready("missing")
    listening = [
        c.laddr
        for c in psutil.Process(adder.process.pid).net_connections(kind="inet")
        if c.status == "LISTEN"
    ]
    assert {a.port for a in listening} == {adder.port, adder.grpc_port}
    # gRPC listens on an IPv6 socket bound to the IPv4-mapped loopback address
    assert {a.ip.removeprefix("::ffff:") for a in listening} == {"127.0.0.1"}


def test_grpc_port_is_not_shared(adder: Server) -> None:
    # gRPC's default SO_REUSEPORT would let a second server bind the port and take half the calls
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError) as info:
            sock.bind(("127.0.0.1", adder.grpc_port))
    assert info.value.errno == errno.EADDRINUSE


def test_ready_line_comes_once_ready_and_routine_noise_is_quiet(adder: Server) -> None:
    line = f"serving adder (version 1) on http://127.0.0.1:{adder.port}"
    deadline = time.monotonic() + 10  # ready over HTTP may come a moment before the line
    while line not in (log := " ".join(adder.log.read_text().split())) and time.monotonic() < deadline:
        time.sleep(0.1)
    announced = log.index(line)
    for earlier in ("HTTP server running", "gRPC server running", "Loaded model 'adder'"):
        assert log.index(earlier) < announced, earlier
    assert log.count("Loaded model 'adder' successfully") == 1  # not again from the worker
    assert "inference streaming" not in log  # batching is on: MLServer's notice about streaming


def test_server_and_model_metadata(adder: Server) -> None:
    client = thttp.InferenceServerClient(adder.url)
    server = client.get_server_metadata()
    assert (server["name"], server["version"]) == ("onnxstitch", ox.__version__)
    meta = client.get_model_metadata("adder")
    assert meta["name"] == "adder" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "n", "datatype": "INT64", "shape": [-1, 1]},
    ]
    assert meta["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "z", "datatype": "INT64", "shape": [-1, 1]},
    ]
    grpc_meta = tgrpc.InferenceServerClient(adder.grpc_url).get_model_metadata("adder", as_json=True)
    assert [i["name"] for i in grpc_meta["inputs"]] == ["x", "n"]


def test_repository_index_load_and_refused_unload(adder: Server) -> None:
    client = thttp.InferenceServerClient(adder.url)
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [("adder", "READY")]
    client.load_model("adder")
    with pytest.raises(InferenceServerException, match="cannot be unloaded") as info:
        client.unload_model("adder")
    assert info.value.status() == "403"
    with pytest.raises(InferenceServerException) as missing:
        client.load_model("other")
    assert missing.value.status() == "404"
    assert client.is_model_ready("adder")


def _config_json(text: str) -> dict[str, Any]:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    return dict(json_format.MessageToDict(config, preserving_proto_field_name=True))


def test_model_config_of_a_file_is_what_deploy_would_write(adder: Server, add_model: onnx.ModelProto) -> None:
    client = thttp.InferenceServerClient(adder.url)
    text, _ = triton_config(add_model, name="adder", max_batch_size=8, max_queue_delay_us=5000)
    expected = _config_json(text)
    assert client.get_model_config("adder") == expected
    assert expected["max_batch_size"] == 8 and expected["input"][0]["dims"] == ["4"]
    assert client.get_model_config("adder", "1") == expected
    with pytest.raises(InferenceServerException, match="Model nope not found") as info:
        client.get_model_config("nope")
    assert info.value.status() == "404"


def test_grpc_statuses_and_messages_are_clean(adder: Server) -> None:
    client = tgrpc.InferenceServerClient(adder.grpc_url)
    calls = {
        "ready": (lambda: client.is_model_ready("nope"), "NOT_FOUND", "Model nope not found"),
        "metadata": (lambda: client.get_model_metadata("nope"), "NOT_FOUND", "Model nope not found"),
        "unload": (lambda: client.unload_model("adder"), "PERMISSION_DENIED", "cannot be unloaded"),
    }
    for label, (call, code, needle) in calls.items():
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == f"StatusCode.{code}", label
        message = str(info.value.message())
        assert needle in message and "  " not in message and "class" not in message, label
    assert client.is_model_ready("adder")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_inference_equals_session(adder: Server, local: ox.Session, binary: bool) -> None:
    client = thttp.InferenceServerClient(adder.url)
    for i in range(3):
        data = feeds(i)
        got = http_infer(client, data, binary=binary)
        want = local.run(data)
        np.testing.assert_array_equal(got["y"], want["y"])
        np.testing.assert_array_equal(got["z"], want["z"])
        assert got["y"].dtype == np.float32 and got["z"].dtype == np.int64


def test_binary_response_uses_the_extension(adder: Server) -> None:
    x, n = feeds(5)["x"], feeds(5)["n"]
    head = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            },
            {
                "name": "n",
                "datatype": "INT64",
                "shape": list(n.shape),
                "parameters": {"binary_data_size": n.nbytes},
            },
        ],
        "parameters": {"binary_data_output": True},
    }
    text = json.dumps(head).encode()
    connection = http.client.HTTPConnection(adder.host, adder.port, timeout=30)
    connection.request(
        "POST",
        "/v2/models/adder/infer",
        body=text + x.tobytes() + n.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(text))},
    )
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 200
    length = int(response.getheader("Inference-Header-Content-Length"))
    outputs = json.loads(body[:length])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in outputs] == [x.nbytes, n.nbytes]
    y = np.frombuffer(body[length : length + x.nbytes], dtype="<f4").reshape(x.shape)
    np.testing.assert_array_equal(y, 2 * x + n.astype(np.float32))


def test_grpc_inference_equals_session(adder: Server, local: ox.Session) -> None:
    client = tgrpc.InferenceServerClient(adder.grpc_url)
    data = feeds(7)
    inputs = []
    for name, dtype in (("x", "FP32"), ("n", "INT64")):
        tensor = tgrpc.InferInput(name, list(data[name].shape), dtype)
        tensor.set_data_from_numpy(data[name])
        inputs.append(tensor)
    result = client.infer("adder", inputs)
    want = local.run(data)
    np.testing.assert_array_equal(result.as_numpy("y"), want["y"])
    np.testing.assert_array_equal(result.as_numpy("z"), want["z"])


def test_requested_output_subset(adder: Server) -> None:
    data = feeds(2)
    status, body = post(
        adder,
        "/v2/models/adder/infer",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": k,
                        "datatype": "FP32" if k == "x" else "INT64",
                        "shape": list(v.shape),
                        "data": v.ravel().tolist(),
                    }
                    for k, v in data.items()
                ],
                "outputs": [{"name": "z"}],
            }
        ).encode(),
    )
    assert status == 200, body
    assert [o["name"] for o in body["outputs"]] == ["z"]
    assert body["outputs"][0]["data"] == (data["n"] + 1).ravel().tolist()
    status, body = post(
        adder,
        "/v2/models/adder/infer",
        json.dumps({"inputs": good_inputs(), "outputs": [{"name": "w"}]}).encode(),
    )
    assert_clean_error(status, body, expected=400, needles=("'w'",))


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_400_naming_the_input(adder: Server, case: str) -> None:
    body, needles = MALFORMED[case]
    status, answer = post(adder, "/v2/models/adder/infer", body)
    assert_clean_error(status, answer, expected=400, needles=needles)
    assert adder.live()


def test_tritonclient_sees_400(adder: Server) -> None:
    client = thttp.InferenceServerClient(adder.url)
    tensor = thttp.InferInput("x", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 4)))
    counts = thttp.InferInput("n", [1, 1], "INT64")
    counts.set_data_from_numpy(np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(InferenceServerException, match="'x'") as info:
        client.infer("adder", [tensor, counts])
    assert info.value.status() == "400"
    grpc_client = tgrpc.InferenceServerClient(adder.grpc_url)
    tensor = tgrpc.InferInput("x", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
    counts = tgrpc.InferInput("n", [1, 1], "INT64")
    counts.set_data_from_numpy(np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(InferenceServerException, match="'x'") as grpc_info:
        grpc_client.infer("adder", [tensor, counts])
    assert grpc_info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert adder.live()


def test_grpc_raw_contents_size_mismatch_is_invalid_argument(adder: Server) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="adder")
    for name, dtype, shape in (("x", "FP32", [1, 4]), ("n", "INT64", [1, 1])):
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, dtype
        tensor.shape.extend(shape)
    request.raw_input_contents.extend([np.zeros(3, np.float32).tobytes(), np.zeros(1, np.int64).tobytes()])
    with grpc.insecure_channel(adder.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x': shape [1, 4] of FP32 needs 16 bytes, got 12" in info.value.details()
    assert adder.live()


def test_binary_payload_size_mismatch_is_400(adder: Server) -> None:
    head = json.dumps(
        {
            "inputs": [
                {**good_inputs()[0], "data": None, "parameters": {"binary_data_size": 32}},
                good_inputs()[1],
            ]
        }
    ).encode()
    head = head.replace(b'"data": null, ', b"")
    status, body = post(
        adder,
        "/v2/models/adder/infer",
        head + b"\x00" * 24,
        {"Inference-Header-Content-Length": str(len(head))},
    )
    assert_clean_error(status, body, expected=400, needles=("'x'",))


def test_oversized_bodies_are_413(adder: Server) -> None:
    big = json_request(replace(x={"data": [0.5] * 400_000}))
    assert len(big) > 2**20
    status, body = post(adder, "/v2/models/adder/infer", big)
    assert_clean_error(status, body, expected=413, needles=("limit",))
    bomb = gzip.compress(b'{"inputs": [' + b" " * (4 * 2**20) + b"]}")
    assert len(bomb) < 2**20
    status, body = post(adder, "/v2/models/adder/infer", bomb, {"Content-Encoding": "gzip"})
    assert_clean_error(status, body, expected=413)
    connection = http.client.HTTPConnection(adder.host, adder.port, timeout=30)
    connection.request(
        "POST", "/v2/models/adder/infer", body=iter([big[: 2**19], big[2**19 :]]), encode_chunked=True
    )
    response = connection.getresponse()
    assert response.status == 413
    connection.close()
    status, body = post(
        adder,
        "/v2/models/adder/infer",
        gzip.compress(json_request(good_inputs())),
        {"Content-Encoding": "gzip"},
    )
    assert status == 200, body
    assert adder.live()


@pytest.mark.parametrize("path", ["/v2/models/nope/infer", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer"])
def test_unknown_model_is_404_without_paths(adder: Server, path: str) -> None:
    status, body = post(adder, path, json_request(good_inputs()))
    assert_clean_error(status, body, expected=404)


def _check_answer(client: thttp.InferenceServerClient, i: int, expected: dict[str, np.ndarray]) -> bool:
    got = http_infer(client, feeds(i))
    return bool(np.array_equal(got["y"], expected["y"]) and np.array_equal(got["z"], expected["z"]))


def test_concurrent_requests_have_no_cross_talk(adder: Server, local: ox.Session) -> None:
    expected = {i: local.run(feeds(i)) for i in range(1000)}

    def worker(start: int) -> list[int]:
        client = thttp.InferenceServerClient(adder.url)
        return [i for i in range(start, 1000, 16) if not _check_answer(client, i, expected[i])]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        wrong = [i for part in pool.map(worker, range(16), timeout=240) for i in part]
    assert wrong == []


def test_mixed_valid_and_malformed_load(adder: Server, local: ox.Session) -> None:
    total = 2000
    expected = {i: local.run(feeds(i)) for i in range(0, total, 3)}
    cases = sorted(MALFORMED)

    def worker(start: int) -> list[str]:
        client = thttp.InferenceServerClient(adder.url)
        problems = []
        for i in range(start, total, 16):
            if i % 3 == 0:
                if not _check_answer(client, i, expected[i]):
                    problems.append(f"request {i}: wrong answer")
                continue
            case = cases[i % len(cases)]
            status, body = post(adder, "/v2/models/adder/infer", MALFORMED[case][0])
            if not (400 <= status < 500 and isinstance(body, dict) and "error" in body):
                problems.append(f"request {i} ({case}): {status} {body}")
        return problems

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        problems = [p for part in pool.map(worker, range(16), timeout=300) for p in part]
    assert problems == []
    assert adder.live()


def _mapped_libraries(pid: int) -> str:
    process = psutil.Process(pid)
    maps = []
    for proc in [process, *process.children(recursive=True)]:
        maps.append(Path(f"/proc/{proc.pid}/maps").read_text())
    return "\n".join(maps)


def test_server_processes_load_no_training_framework(adder: Server) -> None:
    maps = _mapped_libraries(adder.process.pid)
    assert "onnxruntime" in maps  # the check can see libraries: the model runs on onnxruntime
    for framework in ("libtorch", "_pywrap_tensorflow", "libtensorflow"):
        assert framework not in maps


def test_sigterm_stops_server_and_workers(adder: Server) -> None:
    workers = psutil.Process(adder.process.pid).children(recursive=True)
    assert workers  # --workers 1: the model runs in a child process
    assert adder.stop(timeout=20) == 0
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []
    assert not adder.live()


def test_repository_is_served_on_the_host_given(slow: Server) -> None:
    client = thttp.InferenceServerClient(slow.url)
    meta = client.get_model_metadata("slow")
    assert meta["versions"] == ["2"]
    assert [i["name"] for i in meta["inputs"]] == ["x", "steps"]
    listening = {
        c.laddr.ip.removeprefix("::ffff:")
        for c in psutil.Process(slow.process.pid).net_connections(kind="inet")
        if c.status == "LISTEN"
    }
    assert listening == {"127.0.0.2"}


def _slow_request(steps: int) -> list[thttp.InferInput]:
    x = thttp.InferInput("x", [1, 4096], "FP32")
    x.set_data_from_numpy(np.linspace(-1, 1, 4096, dtype=np.float32).reshape(1, 4096))
    count = thttp.InferInput("steps", [1], "INT64")
    count.set_data_from_numpy(np.array([steps], dtype=np.int64))
    return [x, count]


def test_model_config_of_a_repository_is_its_config_pbtxt(slow: Server, workdir: Path) -> None:
    client = thttp.InferenceServerClient(slow.url)
    expected = _config_json((workdir / "repo" / "slow" / "config.pbtxt").read_text())
    assert client.get_model_config("slow") == expected and expected["name"] == "slow"


def test_timeout_cancels_the_run_and_server_stays_usable(slow: Server) -> None:
    client = thttp.InferenceServerClient(slow.url, network_timeout=60.0, connection_timeout=60.0)
    with pytest.raises(InferenceServerException, match=r"timeout of 0\.5 s") as info:
        client.infer("slow", _slow_request(10**9))
    assert info.value.status() == "504"
    for leak in LEAKS:
        assert leak not in str(info.value)
    result = client.infer("slow", _slow_request(3))
    x = np.linspace(-1, 1, 4096, dtype=np.float32).reshape(1, 4096)
    want = ox.Session(model(SLOW), device="cpu").run({"x": x, "steps": np.array([3], dtype=np.int64)})["y"]
    np.testing.assert_array_equal(result.as_numpy("y"), want)


def test_sigterm_stops_cleanly(slow: Server) -> None:
    assert slow.stop(timeout=15) == 0
    assert not slow.live()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("nope.onnx",), "neither a model file nor a repository"),
        (("{model}", "--name", "../etc"), "is not allowed"),
        (("{model}", "--port", "8000", "--grpc-port", "8000"), "must differ"),
    ],
)
def test_cli_refuses_bad_targets_and_options(
    workdir: Path, add_model: onnx.ModelProto, args: tuple[str, ...], needle: str
) -> None:
    path = workdir / "cli.onnx"
    onnx.save(add_model, path)
    command = [sys.executable, "-m", "onnxstitch", "serve", *(a.format(model=path) for a in args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert "error:" in done.stderr and needle in done.stderr
    assert "Traceback" not in done.stderr
