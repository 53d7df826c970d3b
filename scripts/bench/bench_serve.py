"""``onnxstitch serve`` throughput and latency, with and without adaptive batching, next to a direct
``ox.Session`` loop (issue 5, "Done when").

A small MLP (256 -> 512 -> 256, batch 1 per request) is run four ways at concurrency 1 and 8:
(a) ``ox.Session.run`` called directly (8 threads share the session at concurrency 8);
(b) ``onnxstitch serve`` without batching, NVIDIA ``tritonclient`` HTTP with binary tensors, the
    model in one worker process (the default), and (b0) in the server process (``--workers 0``);
(c) the same with ``--max-batch-size 8`` (adaptive batching, 2 ms window);
(d) (b) over gRPC;
(e) with ``--kserve-python PY``: the alternative measured for the choice of server, KServe 0.21's
    ``ModelServer`` with the same onnxruntime model (no batching in its Python server; it binds
    0.0.0.0 for the minute it runs), installed in its own virtualenv (its pins clash with MLServer's).
Each server is a real ``onnxstitch serve`` subprocess on 127.0.0.1; every answer is checked against
the direct run. Throughput is requests per second over the whole run; latencies are per request.
Writes the ``serve`` section of docs/benchmarks.md.

    python3 scripts/bench/bench_serve.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report

CONCURRENCY = (1, 8)

KSERVE_SERVER = """
import sys, uuid
import onnxruntime as ort
from kserve import InferOutput, InferResponse, Model, ModelServer

class Mlp(Model):
    def __init__(self, path):
        super().__init__("mlp")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload, headers=None, response_headers=None):
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        (y,) = self.session.run(None, feeds)
        out = InferOutput(name="y", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=True)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                             infer_outputs=[out], use_binary_outputs=True)

if __name__ == "__main__":
    ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), workers=1,
                enable_docs_url=False).start([Mlp(sys.argv[1])])
"""


def build_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((256, 512)) / 16).astype(np.float32)
    w2 = (rng.standard_normal((512, 256)) / 22).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(path: Path, *args: str, kserve_python: str | None = None) -> Iterator[tuple[str, str]]:
    port, grpc_port = _free_port(), _free_port()
    if kserve_python is None:
        command = [sys.executable, "-m", "onnxstitch", "serve", str(path), "--port", str(port)]
        command += ["--grpc-port", str(grpc_port), "--threads", "1", *args]
    else:
        script = path.parent / "kserve_server.py"
        script.write_text(KSERVE_SERVER)
        command = [kserve_python, str(script), str(path), str(port), str(grpc_port)]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(process, log, port)
            yield f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process: subprocess.Popen[bytes], log: Any, port: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited: {log.read().decode()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("server not ready in 120 s")
        time.sleep(0.3)


def measure(
    call: Callable[[int], np.ndarray], inputs: list[np.ndarray], want: list[np.ndarray], workers: int
):
    """Run ``call(i)`` for every request from ``workers`` threads; (req/s, p50 ms, p99 ms)."""
    latencies: list[float] = []

    def one(i: int) -> None:
        start = time.perf_counter()
        got = call(i)
        latencies.append(time.perf_counter() - start)
        if not np.allclose(got, want[i], rtol=1e-5, atol=1e-5):
            raise RuntimeError(f"request {i}: wrong answer")

    for i in range(min(20, len(inputs))):  # warm-up, untimed
        call(i)
    latencies.clear()
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(len(inputs))))
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1e3
    return len(inputs) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def http_caller(url: str, inputs: list[np.ndarray]) -> Callable[[int], np.ndarray]:
    import threading

    import tritonclient.http as thttp

    local = threading.local()

    def call(i: int) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = thttp.InferenceServerClient(url)
        tensor = thttp.InferInput("x", list(inputs[i].shape), "FP32")
        tensor.set_data_from_numpy(inputs[i], binary_data=True)
        result = local.client.infer(
            "mlp", [tensor], outputs=[thttp.InferRequestedOutput("y", binary_data=True)]
        )
        return result.as_numpy("y")

    return call


def grpc_caller(url: str, inputs: list[np.ndarray]) -> Callable[[int], np.ndarray]:
    import tritonclient.grpc as tgrpc

    client = tgrpc.InferenceServerClient(url)

    def call(i: int) -> np.ndarray:
        tensor = tgrpc.InferInput("x", list(inputs[i].shape), "FP32")
        tensor.set_data_from_numpy(inputs[i])
        return client.infer("mlp", [tensor]).as_numpy("y")

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    parser.add_argument("--kserve-python", help="python of a virtualenv with kserve==0.21.0 and onnxruntime")
    args = parser.parse_args()
    import onnxstitch as ox

    requests = 200 if args.quick else 1000
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1, 256)).astype(np.float32) for _ in range(requests)]
    model = build_model()
    session = ox.Session(model, device="cpu", threads=1)
    want = [session.run({"x": x})["y"] for x in inputs]
    rows: list[tuple[str, int, tuple[float, float, float]]] = []
    for workers in CONCURRENCY:
        rows.append(
            (
                "(a) ox.Session.run, direct",
                workers,
                measure(lambda i: session.run({"x": inputs[i]})["y"], inputs, want, workers),
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlp.onnx"
        onnx.save(model, path)
        with server(path, "--max-batch-size", "0") as (url, grpc_url):
            for workers in CONCURRENCY:
                rows.append(
                    (
                        "(b) serve, HTTP, no batching",
                        workers,
                        measure(http_caller(url, inputs), inputs, want, workers),
                    )
                )
            for workers in CONCURRENCY:
                rows.append(
                    (
                        "(d) serve, gRPC, no batching",
                        workers,
                        measure(grpc_caller(grpc_url, inputs), inputs, want, workers),
                    )
                )
        with server(path, "--max-batch-size", "0", "--workers", "0") as (url, _):
            for workers in CONCURRENCY:
                call = http_caller(url, inputs)
                rows.append(
                    (
                        "(b0) serve, HTTP, no batching, --workers 0",
                        workers,
                        measure(call, inputs, want, workers),
                    )
                )
        with server(path, "--max-batch-size", "8", "--max-batch-time", "0.002") as (url, _):
            for workers in CONCURRENCY:
                rows.append(
                    (
                        "(c) serve, HTTP, batching <= 8 requests",
                        workers,
                        measure(http_caller(url, inputs), inputs, want, workers),
                    )
                )
        if args.kserve_python:
            with server(path, kserve_python=args.kserve_python) as (url, _):
                for workers in CONCURRENCY:
                    call = http_caller(url, inputs)
                    rows.append(
                        ("(e) KServe 0.21 ModelServer, HTTP", workers, measure(call, inputs, want, workers))
                    )
    report(rows, requests, quick=args.quick, write=not args.no_write)


def report(
    rows: list[tuple[str, int, tuple[float, float, float]]], requests: int, *, quick: bool, write: bool
) -> None:
    direct = {w: r[0] for name, w, r in rows if name.startswith("(a)")}
    lines = [
        "## Serving (`scripts/bench/bench_serve.py`)",
        "",
        f"Machine: {_report.machine_line()}. MLP 256→512→256, one row per request, {requests} requests per "
        "cell, every answer checked; server: `onnxstitch serve` (MLServer 1.7.1, one worker process, "
        "1 onnxruntime thread), client: NVIDIA `tritonclient` (binary tensors) in the same machine."
        + (" **Quick run** (`--quick`): indicative only." if quick else ""),
        "",
        "| variant | concurrency | req/s | p50 ms | p99 ms | req/s vs direct |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, workers, (rate, p50, p99) in sorted(rows, key=lambda r: (r[0].split(")")[0], r[1])):
        lines.append(
            f"| {name} | {workers} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {rate / direct[workers]:.2f}× |"
        )
    lines += [
        "",
        "The server's cost per request is HTTP/gRPC framing, request checks, and a hop to the worker "
        "process; adaptive batching trades a few ms of waiting for fewer model runs under concurrency.",
    ]
    text = "\n".join(lines)
    print(text)
    if write:
        print(f"written to {_report.write_section('serve', text)}")


if __name__ == "__main__":
    main()
