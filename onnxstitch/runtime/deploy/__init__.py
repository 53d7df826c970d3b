"""Deployment artefacts: Triton model repositories and KServe manifests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxstitch._lazy import lazy_exports

__all__ = ["deploy_kserve", "deploy_triton"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {"deploy_triton": "triton:deploy_triton", "deploy_kserve": "kserve:deploy_kserve"},
)

if TYPE_CHECKING:  # pragma: no cover
    from onnxstitch.runtime.deploy.kserve import deploy_kserve
    from onnxstitch.runtime.deploy.triton import deploy_triton
