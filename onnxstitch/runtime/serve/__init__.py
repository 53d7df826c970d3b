"""``onnxstitch serve``: one ONNX model behind a KServe v2 / Open Inference Protocol server.

The server is MLServer (REST + gRPC, adaptive batching, worker processes) behind a small adapter;
see ``docs/serving.md``. ``pip install 'onnxstitch[serve]'`` installs it without any training
framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxstitch._lazy import lazy_exports

__all__ = ["ServedModel", "resolve_target", "serve"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "serve": "_server:serve",
        "resolve_target": "_source:resolve_target",
        "ServedModel": "_source:ServedModel",
    },
)

if TYPE_CHECKING:  # pragma: no cover
    from onnxstitch.runtime.serve._server import serve
    from onnxstitch.runtime.serve._source import ServedModel, resolve_target
