"""The MLServer runtime that runs an ONNX model with :class:`~onnxstitch.runtime.session.Session`.

MLServer loads this class by its import path, in each inference worker process. Only onnxruntime
runs the model here; no training framework is imported.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from typing import Any

from fastapi import status
from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from onnxstitch.errors import InputError, RunTimeoutError, StitchError
from onnxstitch.runtime.serve._protocol import RequestTensor, decode_inputs, numpy_to_v2

__all__ = ["BadRequest", "OnnxModel", "RunFailed", "RunTimedOut", "quiet_mlserver", "request_tensors"]

logger = logging.getLogger(__name__)


class BadRequest(MLServerError):  # type: ignore[misc]
    """400: the request does not match the model's inputs (the message names the input)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, status.HTTP_400_BAD_REQUEST)


class RunTimedOut(MLServerError):  # type: ignore[misc]
    """504: the run did not finish within the request timeout and was cancelled."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, status.HTTP_504_GATEWAY_TIMEOUT)


class RunFailed(MLServerError):  # type: ignore[misc]
    """500: onnxruntime failed while running a valid request (details in the server log only)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, status.HTTP_500_INTERNAL_SERVER_ERROR)


class _DropMessages(logging.Filter):
    """Drops MLServer's log records that say nothing to users of this server."""

    def __init__(self, noise: tuple[str, ...]) -> None:
        super().__init__()
        self.noise = noise

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.noise)


def quiet_mlserver(*, worker: bool = False) -> None:
    """MLServer's routine notices off in this process; its warnings about real problems stay.

    Streaming is not served, so the notice that adaptive batching does not apply to it is noise;
    a worker's "Loaded model" repeats the server process's own.
    """
    noise: tuple[str, ...] = ("not supported for inference streaming",)
    if worker:
        noise += ("Loaded model",)
    mlserver_logger = logging.getLogger("mlserver")  # MLServer logs everything on this one logger
    for old in [f for f in mlserver_logger.filters if isinstance(f, _DropMessages)]:
        mlserver_logger.removeFilter(old)
    mlserver_logger.addFilter(_DropMessages(noise))


def request_tensors(payload: InferenceRequest) -> list[RequestTensor]:
    """The inputs of an MLServer request as protocol-neutral tensors."""
    return [
        RequestTensor(inp.name, str(getattr(inp.datatype, "value", inp.datatype)), inp.shape, _data(inp.data))
        for inp in payload.inputs
    ]


def _data(data: Any) -> Any:
    return getattr(data, "root", data)


class OnnxModel(MLModel):  # type: ignore[misc]
    """Runs one ONNX model; ``settings.parameters.extra`` holds ``timeout``, ``device``, ``threads``."""

    async def load(self) -> bool:
        from onnxstitch.runtime.session import Session

        quiet_mlserver(worker=multiprocessing.parent_process() is not None)
        extra = dict(self.settings.parameters.extra or {})
        self._timeout: float | None = extra.get("timeout")
        self._session = Session(
            self.settings.parameters.uri,
            device=str(extra.get("device", "cpu")),
            threads=extra.get("threads"),
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        try:
            feeds = decode_inputs(self._session.inputs, request_tensors(payload))
            names = [out.name for out in payload.outputs or []] or None
            results = await asyncio.to_thread(self._run, feeds, names)
        except InputError as exc:
            raise BadRequest(str(exc)) from None
        outputs = [
            ResponseOutput(
                name=name,
                shape=list(array.shape),
                datatype=numpy_to_v2(array.dtype),
                data=array.reshape(-1).tolist(),
            )
            for name, array in results.items()
        ]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

    def _run(self, feeds: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
        try:
            return self._session.run(feeds, outputs=names, timeout=self._timeout)
        except InputError:
            raise
        except StitchError as exc:
            if isinstance(exc, RunTimeoutError):
                raise RunTimedOut(
                    f"model {self.name!r} did not finish within the request timeout of {self._timeout} s; "
                    "the run was cancelled"
                ) from None
            logger.error("model %r failed: %s", self.name, exc)
            raise RunFailed(
                f"model {self.name!r} failed while running the request (see the server log)"
            ) from None
