"""onnxstitch: convert models from any framework to ONNX, stitch them into one graph, run and ship it.

The public API is imported lazily: ``import onnxstitch`` imports neither torch nor TensorFlow, and
only pulls in what a name needs the first time it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from onnxstitch.errors import StitchError

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself
_LAZY: dict[str, tuple[str, str | None]] = {
    # files
    "load": ("onnxstitch.files", "load"),
    "save": ("onnxstitch.files", "save"),
    "diff": ("onnxstitch.files.diff", "diff"),
    "describe": ("onnxstitch.files.describe", "describe"),
    # converters
    "from_torch": ("onnxstitch.converters", "from_torch"),
    "from_keras": ("onnxstitch.converters", "from_keras"),
    # compose
    "merge": ("onnxstitch.compose", "merge"),
    "chain": ("onnxstitch.compose", "chain"),
    "extract": ("onnxstitch.compose", "extract"),
    "replace": ("onnxstitch.compose", "replace"),
    "optimize": ("onnxstitch.compose", "optimize"),
    "Link": ("onnxstitch.compose", "Link"),
    "adapters": ("onnxstitch.compose.adapters", None),
    # runtime
    "Session": ("onnxstitch.runtime", "Session"),
    "verify": ("onnxstitch.runtime", "verify"),
    "VerifyReport": ("onnxstitch.runtime", "VerifyReport"),
    "bench": ("onnxstitch.runtime", "bench"),
    "deploy_triton": ("onnxstitch.runtime.deploy", "deploy_triton"),
    "deploy_kserve": ("onnxstitch.runtime.deploy", "deploy_kserve"),
    # precision
    "quantize": ("onnxstitch.precision", "quantize"),
    "to_fp16": ("onnxstitch.precision", "to_fp16"),
    "PrecisionReport": ("onnxstitch.precision", "PrecisionReport"),
    "score": ("onnxstitch.runtime.scoring", "score"),
    "ScoreResult": ("onnxstitch.runtime.scoring", "ScoreResult"),
    # errors module
    "errors": ("onnxstitch.errors", None),
}

__all__ = ["StitchError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'onnxstitch' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from onnxstitch import errors as errors
    from onnxstitch.compose import Link as Link
    from onnxstitch.compose import adapters as adapters
    from onnxstitch.compose import chain as chain
    from onnxstitch.compose import extract as extract
    from onnxstitch.compose import merge as merge
    from onnxstitch.compose import optimize as optimize
    from onnxstitch.compose import replace as replace
    from onnxstitch.converters import from_keras as from_keras
    from onnxstitch.converters import from_torch as from_torch
    from onnxstitch.files import load as load
    from onnxstitch.files import save as save
    from onnxstitch.files.describe import describe as describe
    from onnxstitch.files.diff import diff as diff
    from onnxstitch.precision import PrecisionReport as PrecisionReport
    from onnxstitch.precision import quantize as quantize
    from onnxstitch.precision import to_fp16 as to_fp16
    from onnxstitch.runtime import Session as Session
    from onnxstitch.runtime import VerifyReport as VerifyReport
    from onnxstitch.runtime import bench as bench
    from onnxstitch.runtime import verify as verify
    from onnxstitch.runtime.deploy import deploy_kserve as deploy_kserve
    from onnxstitch.runtime.deploy import deploy_triton as deploy_triton
    from onnxstitch.runtime.scoring import ScoreResult as ScoreResult
    from onnxstitch.runtime.scoring import score as score
