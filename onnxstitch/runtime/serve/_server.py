"""``serve``: one ONNX model behind MLServer (KServe v2 / Open Inference Protocol, REST + gRPC).

MLServer brings the protocol, gRPC, adaptive batching and worker processes; this module adds what
onnxstitch promises on top: a loopback default host, requests checked against the model before it
runs (over REST and gRPC), a body-size limit, a request timeout that cancels the run, a fixed,
read-only model repository, and error bodies without paths.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import onnx

from onnxstitch.errors import MissingDependencyError, ServeError
from onnxstitch.runtime._feeds import TensorInfo
from onnxstitch.runtime.serve._protocol import numpy_to_v2
from onnxstitch.runtime.serve._source import ServedModel, resolve_target

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
    host: str, port: int, grpc_port: int, workers: int, timeout: float | None, max_body: int
) -> None:
    problems = []
    for label, value in (("port", port), ("grpc_port", grpc_port)):
        if not 0 < value < 65536:
            problems.append(f"{label} must be between 1 and 65535, got {value}")
    if port == grpc_port:
        problems.append(f"port and grpc_port must differ, both are {port}")
    if workers < 0:
        problems.append(f"workers must be 0 (run in the server process) or more, got {workers}")
    if timeout is not None and timeout <= 0:
        problems.append(f"timeout must be positive, got {timeout}")
    if max_body < 1024:
        problems.append(f"max_body_bytes must be at least 1024, got {max_body}")
    if not host:
        problems.append("host must not be empty")
    if problems:
        raise ServeError("invalid serve options: " + "; ".join(problems))


def serve(
    target: str | os.PathLike[str],
    *,
    name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int = 8001,
    max_batch_size: int | None = None,
    max_batch_time: float = 0.002,
    workers: int = 1,
    timeout: float | None = 60.0,
    max_body_bytes: int = 64 * 2**20,
    device: str = "cpu",
    threads: int | None = None,
    on_start: Callable[[ServedModel], None] | None = None,
) -> int:
    """Serve one ONNX model over the KServe v2 / Open Inference Protocol until SIGTERM or SIGINT.

    Args:
        target: a ``.onnx`` file, a Triton model repository folder, or one model's folder in it.
        name: the model name (default: the repository's model, or the file's stem).
        host: the address to bind; loopback unless told otherwise.
        port: the REST (HTTP) port.
        grpc_port: the gRPC port.
        max_batch_size: adaptive batching: up to this many concurrent requests (each of any number
            of rows) are concatenated along dim 0 into one run (MLServer's meaning, not Triton's
            row cap); 0 or 1: off. Default: the repository config's ``max_batch_size``, off for a
            bare file.
        max_batch_time: seconds a request waits for others to batch with.
        workers: inference worker processes (0: run the model in the server process).
        timeout: seconds after which a run is cancelled and the request answered 504 (``None``: none).
        max_body_bytes: largest request body accepted (413 beyond, also after gzip inflation).
        device: onnxruntime device of the workers (``"cpu"``, ``"cuda"``, ...).
        threads: intra-op threads per worker (default: onnxruntime's).
        on_start: called with the resolved model just before the server starts.

    Returns:
        0 once the server stopped cleanly.

    Raises:
        ServeError: the target, name or an option is invalid, or the model cannot be batched.
        MissingDependencyError: MLServer is not installed (``pip install 'onnxstitch[serve]'``).
        ServeError: also when ``tritonclient.grpc`` was imported in this process before: its copy
            of the protocol's protobuf messages clashes with MLServer's (run the server in its own
            process, as the command line does).
        ModelFileError: the model file cannot be read.
    """
    _check_options(host, port, grpc_port, workers, timeout, max_body_bytes)
    served = resolve_target(target, name=name)
    from onnxstitch.files import load
    from onnxstitch.files.manifest import manifest_path

    proto = load(served.path, verify=manifest_path(served.path).is_file())
    inputs, outputs = model_signature(proto)
    del proto
    batch = (served.max_batch_size or 0) if max_batch_size is None else max_batch_size
    _check_batching(batch, inputs, outputs)
    _import_mlserver()
    if on_start is not None:
        on_start(served)
    from onnxstitch.runtime.serve._mlserver import run_server

    options = {
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "workers": workers,
        "max_body_bytes": max_body_bytes,
        "max_batch_size": batch if batch > 1 else 0,
        "max_batch_time": max_batch_time if batch > 1 else 0.0,
        "extra": {"timeout": timeout, "device": device, "threads": threads},
        "inputs": _metadata(inputs),
        "outputs": _metadata(outputs),
    }
    asyncio.run(run_server(served, inputs, options, runtime=_RUNTIME, platform=_PLATFORM))
    logger.info("server for model %r stopped", served.name)
    return 0
