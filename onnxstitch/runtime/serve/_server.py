"""``serve``: one ONNX model behind MLServer (KServe v2 / Open Inference Protocol, REST + gRPC).

MLServer brings the protocol, gRPC, adaptive batching and worker processes; this module adds what
onnxstitch promises on top: a loopback default host, requests checked against the model before it
runs (over REST and gRPC), a body-size limit, a request timeout that cancels the run, a fixed,
read-only model repository, and error bodies without paths.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import onnx

from onnxstitch.errors import MissingDependencyError, ServeError
from onnxstitch.runtime._feeds import TensorInfo
from onnxstitch.runtime.serve._protocol import numpy_to_v2
from onnxstitch.runtime.serve._source import ServedModel, model_config_json, resolve_target

__all__ = ["model_signature", "serve"]

logger = logging.getLogger(__name__)

_RUNTIME = "onnxstitch.runtime.serve._runtime.OnnxModel"
_PLATFORM = "onnxruntime_onnx"


def model_signature(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs (initializers excluded) and outputs as :class:`TensorInfo`.

    Raises:
        ServeError: an input or output is not a plain tensor of a numeric type.
    """
    from onnx.helper import tensor_dtype_to_np_dtype

    initializers = {init.name for init in model.graph.initializer}

    def info(value: onnx.ValueInfoProto) -> TensorInfo:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor.elem_type in (0, onnx.TensorProto.BFLOAT16):
            raise ServeError(
                f"tensor {value.name!r} is not a numeric tensor; only such tensors can be served"
            )
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        )
        return TensorInfo(value.name, tensor_dtype_to_np_dtype(tensor.elem_type), dims)

    inputs = [info(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [info(v) for v in model.graph.output]


def _metadata(infos: list[TensorInfo]) -> list[dict[str, Any]]:
    return [
        {
            "name": i.name,
            "datatype": numpy_to_v2(i.dtype),
            "shape": [d if isinstance(d, int) else -1 for d in i.shape],
        }
        for i in infos
    ]


#: the wait for other requests when batching is asked for and no repository says how long
DEFAULT_BATCH_TIME = 0.0001


def _batching(
    served: ServedModel, max_batch_size: int | None, max_batch_time: float | None
) -> tuple[int, float]:
    """MLServer's ``max_batch_size`` and ``max_batch_time``: both 0 when batching is off.

    A repository's config decides what is not given, as Triton would: batching only with a
    ``dynamic_batching`` block, waiting its ``max_queue_delay_microseconds``.
    """
    if max_batch_size is None:
        max_batch_size = (served.max_batch_size or 0) if served.max_batch_time is not None else 0
    if max_batch_time is None:
        max_batch_time = served.max_batch_time if served.max_batch_time is not None else DEFAULT_BATCH_TIME
    if max_batch_size <= 1 or max_batch_time <= 0:
        return 0, 0.0
    return max_batch_size, max_batch_time


def _check_batching(max_batch_size: int, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
    if max_batch_size <= 1:
        return
    fixed = [str(t) for t in inputs + outputs if not t.shape or isinstance(t.shape[0], int)]
    if fixed:
        raise ServeError(
            f"batching needs a symbolic dim 0 on every input and output; these have none: {', '.join(fixed)}",
            hint="serve with --max-batch-size 0, or export the model with a dynamic batch dim",
        )


def _import_mlserver() -> None:
    try:
        import mlserver.grpc.dataplane_pb2  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("mlserver", extra="serve", purpose="onnxstitch serve") from exc
    except TypeError as exc:  # protobuf: "duplicate symbol 'inference.ServerLiveRequest'"
        raise ServeError(
            f"MLServer cannot load its protocol messages in this process: {exc}",
            hint="tritonclient.grpc (or another copy of the v2 protocol) was imported here first; "
            "run `onnxstitch serve` in its own process",
        ) from exc


def _check_options(
    host: str,
    port: int,
    grpc_port: int,
    workers: int,
    timeout: float | None,
    max_body: int,
    max_batch_time: float | None = None,
) -> None:
    problems = []
    for label, value in (("port", port), ("grpc_port", grpc_port)):
        if not 0 < value < 65536:
            problems.append(f"{label} must be between 1 and 65535, got {value}")
    if port == grpc_port:
        problems.append(f"port and grpc_port must differ, both are {port}")
    if workers < 0:
        problems.append(f"workers must be 0 (run in the server process) or more, got {workers}")
    if max_batch_time is not None and max_batch_time < 0:
        problems.append(f"max_batch_time must be 0 or more, got {max_batch_time}")
    if timeout is not None and timeout <= 0:
        problems.append(f"timeout must be positive, got {timeout}")
    if max_body < 1024:
        problems.append(f"max_body_bytes must be at least 1024, got {max_body}")
    if not host:
        problems.append("host must not be empty")
    if problems:
        raise ServeError("invalid serve options: " + "; ".join(problems))


def _check_ports(host: str, ports: dict[str, int]) -> None:
    """Each port can be bound on ``host`` by this process alone (no ``SO_REUSEPORT`` sharing).

    ``SO_REUSEADDR`` is set as the servers set it, so a port left in ``TIME_WAIT`` is not refused;
    a socket listening on the port (even one with ``SO_REUSEPORT``, as gRPC sets by default) is.

    Raises:
        ServeError: the host does not resolve, or a port is in use (every problem listed).
    """
    problems = []
    for flag, port in ports.items():
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            raise ServeError(f"host {host!r} does not resolve: {exc.strerror}") from None
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    problems.append(f"port {port} on {host} is in use; pick another with {flag}")
                else:
                    problems.append(f"port {port} on {host} cannot be bound ({exc.strerror}); see {flag}")
    if problems:
        raise ServeError("; ".join(problems))


def _check_device(model: onnx.ModelProto, device: str, threads: int | None) -> None:
    """Open the model once on ``device`` here, so that a bad device or model fails before any server.

    Raises:
        DeviceError: the device is unknown or unavailable.
        StitchError: onnxruntime cannot load the model.
    """
    from onnxstitch.runtime.session import Session

    session = Session(model, device=device, threads=threads)
    del session


def serve(
    target: str | os.PathLike[str],
    *,
    name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int = 8001,
    max_batch_size: int | None = None,
    max_batch_time: float | None = None,
    workers: int = 1,
    timeout: float | None = 60.0,
    max_body_bytes: int = 64 * 2**20,
    device: str = "cpu",
    threads: int | None = None,
    on_start: Callable[[ServedModel], None] | None = None,
) -> int:
    """Serve one ONNX model over the KServe v2 / Open Inference Protocol until SIGTERM or SIGINT.

    From a Triton repository, every version its ``version_policy`` selects is served (the newest
    only by default, as Triton): ``/v2/models/NAME/versions/V/...`` (gRPC: ``model_version``)
    reaches version V, an unversioned request the newest.

    Args:
        target: a ``.onnx`` file, a Triton model repository folder, or one model's folder in it.
        name: the model name (default: the repository's model, or the file's stem).
        host: the address to bind; loopback unless told otherwise.
        port: the REST (HTTP) port.
        grpc_port: the gRPC port.
        max_batch_size: adaptive batching: up to this many concurrent requests (each of any number
            of rows) are concatenated along dim 0 into one run (MLServer's meaning, not Triton's
            row cap); 0 or 1: off. Default: the repository config's ``max_batch_size`` when it
            has a ``dynamic_batching`` block (as Triton), off for a bare file.
        max_batch_time: seconds a request waits for others to batch with (0: batching off).
            Default: the repository's ``max_queue_delay_microseconds``, else 100 µs.
        workers: inference worker processes (0: run the model in the server process).
        timeout: seconds after which a run is cancelled and the request answered 504 (``None``: none).
        max_body_bytes: largest request body accepted (413 beyond, also after gzip inflation).
        device: onnxruntime device of the workers (``"cpu"``, ``"cuda"``, ...).
        threads: intra-op threads per worker (default: onnxruntime's).
        on_start: called with the resolved model once the server is ready: both ports listen and
            the model is loaded.

    Returns:
        0 once the server stopped cleanly.

    Raises:
        ServeError: the target, name or an option is invalid, a port is in use, the model cannot
            be batched, a version the repository's ``version_policy`` lists has no folder, or the
            server stopped before it was ready.
        DeviceError: ``device`` is unknown or unavailable (checked before any server starts).
        MissingDependencyError: MLServer is not installed (``pip install 'onnxstitch[serve]'``).
        ServeError: also when ``tritonclient.grpc`` was imported in this process before: its copy
            of the protocol's protobuf messages clashes with MLServer's (run the server in its own
            process, as the command line does).
        ModelFileError: the model file cannot be read.
    """
    _check_options(host, port, grpc_port, workers, timeout, max_body_bytes, max_batch_time)
    _check_ports(host, {"--port": port, "--grpc-port": grpc_port})
    served = resolve_target(target, name=name)
    from onnxstitch.files import load
    from onnxstitch.files.manifest import manifest_path

    batch, wait = _batching(served, max_batch_size, max_batch_time)
    signatures: dict[str, list[TensorInfo]] = {}
    metadata: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    config = None
    for version, path in served.served_versions():  # each served version, checked before any server
        proto = load(path, verify=manifest_path(path).is_file())
        inputs, outputs = model_signature(proto)
        _check_batching(batch, inputs, outputs)
        _import_mlserver()
        _check_device(proto, device, threads)
        if version == served.version:
            config = model_config_json(
                served, proto, max_batch_size=batch, max_batch_time=wait, device=device
            )
        signatures[version] = inputs
        metadata[version] = (_metadata(inputs), _metadata(outputs))
        del proto
    from onnxstitch.runtime.serve._mlserver import run_server

    options = {
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "workers": workers,
        "max_body_bytes": max_body_bytes,
        "max_batch_size": batch,
        "max_batch_time": wait,
        "extra": {"timeout": timeout, "device": device, "threads": threads},
        "config": config,
        "inputs": {version: pair[0] for version, pair in metadata.items()},
        "outputs": {version: pair[1] for version, pair in metadata.items()},
    }
    try:
        asyncio.run(
            run_server(served, signatures, options, runtime=_RUNTIME, platform=_PLATFORM, on_ready=on_start)
        )
    except SystemExit as exc:  # uvicorn exits the process when it cannot bind
        raise ServeError(
            f"the server for model {served.name!r} stopped (exit status {exc.code}); see the log above"
        ) from None
    logger.info("server for model %r stopped", served.name)
    return 0
