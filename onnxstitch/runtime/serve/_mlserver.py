"""The adapter around MLServer: request checks in its data plane, a fixed read-only repository,
the REST middleware, and the server's life cycle."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import inspect
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from fastapi import status
from mlserver import MLServer
from mlserver.errors import MLServerError, ModelNotFound
from mlserver.grpc import GRPCServer
from mlserver.grpc import utils as grpc_utils
from mlserver.grpc.dataplane_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from mlserver.grpc.model_repository import ModelRepositoryServicer
from mlserver.grpc.model_repository_pb2_grpc import add_ModelRepositoryServiceServicer_to_server
from mlserver.grpc.servicers import InferenceServicer
from mlserver.handlers import DataPlane, ModelRepositoryHandlers
from mlserver.parallel.errors import WorkerError
from mlserver.repository import ModelRepository
from mlserver.settings import ModelParameters, ModelSettings, Settings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

from onnxstitch import __version__
from onnxstitch.errors import InputError, ServeError
from onnxstitch.runtime._feeds import TensorInfo
from onnxstitch.runtime.serve._middleware import ProtocolMiddleware
from onnxstitch.runtime.serve._protocol import check_raw_sizes, decode_inputs
from onnxstitch.runtime.serve._runtime import (
    BadRequest,
    RunFailed,
    RunTimedOut,
    quiet_mlserver,
    request_tensors,
)
from onnxstitch.runtime.serve._source import ServedModel

__all__ = ["run_server"]

logger = logging.getLogger(__name__)

_OUR_ERRORS = {cls.__module__ + "." + cls.__name__: cls for cls in (BadRequest, RunTimedOut)}


class _ValidatingDataPlane:
    """MLServer's data plane, with every request to our model checked (against the signature of
    the version it asks for; the newest without one) before it is queued."""

    def __init__(
        self, inner: DataPlane, model_name: str, signatures: dict[str, list[TensorInfo]], default: str
    ) -> None:
        self._inner = inner
        self._model_name = model_name
        self._signatures = signatures
        self._default = default

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await attribute(*args, **kwargs)
            except ModelNotFound as exc:
                raise _NotFound(str(exc)) from None

        return call

    async def ready(self) -> bool:
        """Ready once every served version is loaded (MLServer says ready with none loaded yet)."""
        try:
            for version in self._signatures:
                if not await self._inner.model_ready(self._model_name, version):
                    return False
        except ModelNotFound:
            return False
        return True

    async def infer(
        self, payload: InferenceRequest, name: str, version: str | None = None
    ) -> InferenceResponse:
        signature = self._signatures.get(version or self._default)
        if name == self._model_name and signature is not None:
            try:
                decode_inputs(signature, request_tensors(payload))
            except InputError as exc:
                raise BadRequest(str(exc)) from None
        try:
            return await self._inner.infer(payload, name, version)
        except WorkerError as exc:
            raise _unwrap(exc, name) from None
        except ModelNotFound as exc:
            raise _NotFound(str(exc)) from None

    async def infer_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise MLServerError("streaming inference is not served; use /infer", status.HTTP_404_NOT_FOUND)


class _NotFound(ModelNotFound):  # type: ignore[misc]
    """MLServer's ``ModelNotFound`` without the gap an empty version leaves ("with version  not")."""

    def __init__(self, msg: str) -> None:
        MLServerError.__init__(self, re.sub(r" with version +not found", " not found", msg), 404)


#: what MLServer's gRPC error handler lacks: its other statuses fall back to UNKNOWN
_GRPC_CODES = {
    status.HTTP_403_FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    status.HTTP_413_REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    status.HTTP_501_NOT_IMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    status.HTTP_504_GATEWAY_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _grpc_code(exc: MLServerError) -> grpc.StatusCode:
    return _GRPC_CODES.get(exc.status_code) or grpc_utils.STATUS_CODE_MAPPING.get(
        exc.status_code, grpc.StatusCode.UNKNOWN
    )


def _unwrap(exc: WorkerError, name: str) -> MLServerError:
    """Our own error raised in a worker process, without the class path MLServer prefixes."""
    prefix, sep, message = str(exc).partition(": ")
    cls = _OUR_ERRORS.get(prefix)
    if sep and cls is not None:
        return cls(message)
    logger.error("model %r failed in a worker: %s", name, exc)
    return RunFailed(f"model {name!r} failed while running the request (see the server log)")


class _FixedRepository(ModelRepository):  # type: ignore[misc]
    """The one model this server was started with (one settings object per served version)."""

    def __init__(self, settings: builtins.list[ModelSettings]) -> None:
        self._settings = settings

    async def list(self) -> builtins.list[ModelSettings]:
        return builtins.list(self._settings)

    async def find(self, name: str) -> builtins.list[ModelSettings]:
        if name != self._settings[0].name:
            raise ModelNotFound(name)
        return builtins.list(self._settings)


class _ReadOnlyRepositoryHandlers(ModelRepositoryHandlers):  # type: ignore[misc]
    """Index as usual; ``load`` of the served model is a no-op, ``unload`` is refused."""

    async def load(self, name: str) -> bool:
        await self._repository.find(name)
        return True

    async def unload(self, name: str) -> bool:
        await self._repository.find(name)
        raise MLServerError(
            f"model {name!r} cannot be unloaded: this server's repository is fixed at start",
            status.HTTP_403_FORBIDDEN,
        )


class _CheckedInferenceServicer(InferenceServicer):  # type: ignore[misc]
    """MLServer's gRPC servicer; raw tensor contents whose size disagrees with their shape get
    ``INVALID_ARGUMENT`` naming the input (MLServer itself fails on them with ``INTERNAL``)."""

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await super().ModelReady(request, context)
        except MLServerError as exc:  # MLServer leaves these to gRPC: UNKNOWN, with its class name
            await context.abort(_grpc_code(exc), str(exc))

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.raw_input_contents:
            inputs = [(i.name, i.datatype, list(i.shape)) for i in request.inputs]
            try:
                check_raw_sizes(inputs, [len(raw) for raw in request.raw_input_contents])
            except InputError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return await super().ModelInfer(request, context)


class _CheckedGRPCServer(GRPCServer):  # type: ignore[misc]
    """MLServer's gRPC server with the checked servicer (metrics, tracing and access logs are off)."""

    def _create_server(self) -> grpc.aio.Server:
        self._inference_servicer = _CheckedInferenceServicer(
            self._data_plane, self._model_repository_handlers
        )
        self._model_repository_servicer = ModelRepositoryServicer(self._model_repository_handlers)
        self._interceptors: list[Any] = []
        self._server = grpc.aio.server(ThreadPoolExecutor(max_workers=5), options=self._get_options())
        add_GRPCInferenceServiceServicer_to_server(self._inference_servicer, self._server)
        add_ModelRepositoryServiceServicer_to_server(self._model_repository_servicer, self._server)
        self._server.add_insecure_port(f"{self._settings.host}:{self._settings.grpc_port}")
        return self._server

    def _get_options(self) -> list[tuple[str, Any]]:
        # gRPC sets SO_REUSEPORT by default: a second server on the same port would bind too and
        # take half the traffic; without it, binding a port in use fails
        return [*super()._get_options(), ("grpc.so_reuseport", 0)]


class _Server(MLServer):  # type: ignore[misc]
    def __init__(
        self,
        settings: Settings,
        models: list[ModelSettings],
        signatures: dict[str, list[TensorInfo]],
        hide: list[str],
        config: dict[str, Any] | None,
    ) -> None:
        self._config = config
        self.signalled: bool | None = None  # whether the first stop came from a signal
        # MLServer's gRPC handlers look their status codes up here at each error
        grpc_utils.STATUS_CODE_MAPPING.update(_GRPC_CODES)
        self._served_settings = models
        self._signatures = signatures
        self._hide = hide
        super().__init__(settings)

    async def stop(self, sig: int | None = None) -> None:
        """Stop the servers; ``sig`` is set when a signal (SIGTERM, SIGINT) asked for it.

        MLServer stops without one when the model fails to load (and uvicorn then raises SIGINT
        in the process: only the first stop tells why).
        """
        if self.signalled is None:
            self.signalled = sig is not None
        await super().stop(sig)

    def _create_servers(self) -> None:
        inner = self._data_plane  # type: ignore[has-type]
        newest = self._served_settings[-1]
        default = list(self._signatures)[-1]  # the newest served version, as in MLServer
        self._data_plane = _ValidatingDataPlane(inner, newest.name, self._signatures, default)
        self._model_repository_handlers = _ReadOnlyRepositoryHandlers(
            repository=_FixedRepository(self._served_settings), model_registry=self._model_registry
        )
        super()._create_servers()
        self._grpc_server = _CheckedGRPCServer(
            self._settings, self._data_plane, self._model_repository_handlers
        )
        self._rest_server._app.add_middleware(
            ProtocolMiddleware,
            max_body_bytes=self._settings.grpc_max_message_length,
            hide=self._hide,
            model_name=newest.name,
            config=self._config,
            versions=list(self._signatures),
        )


def _per_version(value: Any, served: ServedModel) -> dict[str, Any]:
    """``value`` keyed by served version: as given when it is a dict, else the same for each."""
    if isinstance(value, dict):
        return value
    return {version: value for version, _ in served.served_versions()}


def _settings(
    served: ServedModel, options: dict[str, Any], runtime: str, platform: str
) -> tuple[Settings, list[ModelSettings]]:
    settings = Settings(
        debug=False,
        host=options["host"],
        http_port=options["port"],
        grpc_port=options["grpc_port"],
        grpc_max_message_length=options["max_body_bytes"],
        parallel_workers=options["workers"],
        metrics_endpoint=None,
        gzip_enabled=False,
        cors_settings=None,
        kafka_enabled=False,
        tracing_server=None,
        cache_enabled=False,
        server_name="onnxstitch",
        server_version=__version__,
        model_repository_root=str(served.path.parent),
        load_models_at_startup=False,
    )
    inputs = _per_version(options["inputs"], served)
    outputs = _per_version(options["outputs"], served)
    versions = [version for version, _ in served.served_versions()]
    models = [
        ModelSettings(
            name=served.name,
            implementation=runtime,
            platform=platform,
            versions=versions,
            inputs=[MetadataTensor(**t) for t in inputs[version]],
            outputs=[MetadataTensor(**t) for t in outputs[version]],
            max_batch_size=options["max_batch_size"],
            max_batch_time=options["max_batch_time"],
            parameters=ModelParameters(uri=str(path), version=version, extra=options["extra"]),
        )
        for version, path in served.served_versions()
    ]
    return settings, models


async def _listening(host: str, port: int) -> bool:
    """Something accepts connections on ``host:port`` (a wildcard host is reached on loopback)."""
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), timeout=2.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _ready(server: _Server, settings: Settings) -> bool:
    return bool(
        await server._data_plane.ready()
        and await _listening(settings.host, settings.http_port)
        and await _listening(settings.host, settings.grpc_port)
    )


async def run_server(
    served: ServedModel,
    signature: list[TensorInfo] | dict[str, list[TensorInfo]],
    options: dict[str, Any],
    *,
    runtime: str,
    platform: str,
    on_ready: Callable[[ServedModel], None] | None = None,
) -> None:
    """Start MLServer with the one model (each served version), call ``on_ready`` once it serves,
    return when it stopped.

    ``signature`` and ``options["inputs"]``/``["outputs"]`` are the model's, or dicts of them by
    version when the versions differ.

    Raises:
        ServeError: the server stopped (or failed) before it was ready.
    """
    settings, models = _settings(served, options, runtime, platform)
    folders = {served.path.parent.parent} | {path.parent for _, path in served.served_versions()}
    hide = sorted((str(f) for f in folders if len(f.parts) > 2), key=len, reverse=True)  # never '/' or '/tmp'
    quiet_mlserver()
    server = _Server(settings, models, _per_version(signature, served), hide, options.get("config"))
    task = asyncio.create_task(_start(server, models))
    while not task.done():
        if await _ready(server, settings):
            break
        await asyncio.wait({task}, timeout=0.2)
    if task.done() and not (server.signalled and task.exception() is None):  # signalled: clean stop
        failure = task.exception()
        detail = f": {failure}" if failure is not None and str(failure) else " (see the log above)"
        raise ServeError(f"the server for model {served.name!r} stopped before it was ready{detail}")
    logger.info(
        "serving model %r on http://%s:%s and grpc %s",
        served.name,
        settings.host,
        settings.http_port,
        settings.grpc_port,
    )
    if on_ready is not None and not task.done():
        on_ready(served)
    await task


async def _start(server: _Server, models: list[ModelSettings]) -> None:
    try:
        await server.start(models)
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        await server.stop()
        raise ServeError(f"the REST server could not start (exit status {exc.code})") from None
