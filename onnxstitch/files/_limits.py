"""What the installed onnxruntime can run, and protobuf's size limit.

onnxruntime has no API that reports the newest ``ai.onnx`` opset or IR version it runs, and its
error messages change between releases.  So we *ask it*: a one-node ``Identity`` model stamped with
a given opset (or IR version) either makes an ``InferenceSession`` or is refused.  Support is
monotonic (an older stamp always loads), so a bisection finds the maximum in ~8 probes of a few
milliseconds each; the answer is cached for the life of the process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import onnx
from onnx import TensorProto, helper

from onnxstitch.errors import VersionError

__all__ = [
    "PROTOBUF_LIMIT",
    "check_versions",
    "ort_max_ir_version",
    "ort_max_opset",
]

logger = logging.getLogger(__name__)

#: protobuf cannot serialize or parse one message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _probe_model(*, opset: int, ir_version: int) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    return bytes(model.SerializeToString())


def _ort_accepts(*, opset: int, ir_version: int) -> bool:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(
            _probe_model(opset=opset, ir_version=ir_version), options, providers=["CPUExecutionProvider"]
        )
    except Exception:
        return False
    return True


def _bisect(accepts: Callable[[int], bool], low: int, high: int) -> int:
    """Largest ``n`` in ``[low, high]`` with ``accepts(n)``; ``low`` must be accepted."""
    while low < high:
        mid = (low + high + 1) // 2
        if accepts(mid):
            low = mid
        else:
            high = mid - 1
    return low


@functools.lru_cache(maxsize=1)
def ort_max_opset() -> int:
    """Return the newest ``ai.onnx`` opset the installed onnxruntime loads (28 for onnxruntime 1.32).

    Raises:
        VersionError: onnxruntime cannot even load an opset-7 model (a broken installation).
    """
    if not _ort_accepts(opset=7, ir_version=7):
        raise VersionError("onnxruntime cannot load a one-node opset-7 model; the installation is broken")
    found = _bisect(lambda n: _ort_accepts(opset=n, ir_version=7 if n < 15 else 8), 7, 200)
    logger.debug("onnxruntime runs ai.onnx opsets up to %d", found)
    return found


@functools.lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """Return the newest ONNX IR version the installed onnxruntime loads (14 for onnxruntime 1.32).

    Raises:
        VersionError: onnxruntime cannot even load an IR-7 model (a broken installation).
    """
    if not _ort_accepts(opset=13, ir_version=7):
        raise VersionError("onnxruntime cannot load a one-node IR-7 model; the installation is broken")
    found = _bisect(lambda n: _ort_accepts(opset=13, ir_version=n), 7, 200)
    logger.debug("onnxruntime runs IR versions up to %d", found)
    return found


def check_versions(model: onnx.ModelProto, *, name: str) -> None:
    """Refuse a model stamped with an IR version or ``ai.onnx`` opset beyond onnxruntime.

    Args:
        model: the parsed model (only its header is read).
        name: how to call the model in the message (a file name or a part key).

    Raises:
        VersionError: the IR version or the ``ai.onnx`` opset is newer than onnxruntime runs.
    """
    problems: list[str] = []
    max_ir = ort_max_ir_version()
    if model.ir_version > max_ir:
        problems.append(f"IR version {model.ir_version} (onnxruntime runs up to {max_ir})")
    max_opset = ort_max_opset()
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS and entry.version > max_opset:
            problems.append(f"ai.onnx opset {entry.version} (onnxruntime runs up to {max_opset})")
    if problems:
        import onnxruntime as ort

        raise VersionError(
            f"{name} is stamped with {' and '.join(problems)}; onnxruntime {ort.__version__} cannot run it",
            hint=(
                "re-export the model at a lower opset (e.g. opset=18), or convert it with "
                "onnx.version_converter, or upgrade onnxruntime"
            ),
        )
