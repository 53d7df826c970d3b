"""What the installed onnxruntime can run (the ONE probe of it), and protobuf's size limit.

onnxruntime has no API that reports the newest IR version it runs, and its error messages change
between releases.  So we *ask it*: a one-node ``Identity`` model stamped with a given opset (or IR
version) either loads or is refused.  Support is monotonic (an older stamp always loads), so a
bisection finds the maximum in ~8 probes of a few milliseconds each.

Every probe session is made with the thread settings the process allows *now*: once a session ran on
onnxruntime's process-wide thread pool (``ox.Session(m, shared_threads=True)``), onnxruntime refuses
sessions with pools of their own, and before it exists it refuses the opposite.  A known-good model
(opset 7, IR 7) decides which of the two works; if neither does, the installation is broken and a
:class:`VersionError` is raised.  Answers are cached for the life of the process, failures never are.
The probe sessions are made through onnxruntime's binding directly, so nothing is printed (the
Python wrapper prints an "EP Error" banner on a refused session).

``compose`` (the merge's version caps), ``converters`` (the ``opset=`` check) and ``runtime``
all ask these functions; there is no other probe.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import onnx
from onnx import TensorProto, helper

from onnxstitch.errors import VersionError
from onnxstitch.files._precheck import PROTOBUF_LIMIT

__all__ = [
    "PROTOBUF_LIMIT",
    "check_versions",
    "ort_max_ir_version",
    "ort_max_opset",
]

logger = logging.getLogger(__name__)

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _probe_model(*, opset: int, ir_version: int, domain: str = "") -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    imports = [helper.make_opsetid("", opset if domain in _DEFAULT_DOMAINS else 13)]
    if domain not in _DEFAULT_DOMAINS:
        imports.append(helper.make_opsetid(domain, opset))
    model = helper.make_model(graph, opset_imports=imports, ir_version=ir_version)
    return bytes(model.SerializeToString())


def _session_loads(payload: bytes, *, per_session_threads: bool) -> bool:
    """Whether onnxruntime makes a CPU session of ``payload`` with these thread settings."""
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state as c_api

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.use_per_session_threads = per_session_threads
    if per_session_threads:
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
    try:
        session = c_api.InferenceSession(options, payload, False, False)
        session.initialize_session(["CPUExecutionProvider"], [{}], set())
    except Exception:  # onnxruntime's Fail / InvalidGraph / RuntimeError: refused
        return False
    return True


def _probe() -> Callable[[bytes], bool]:
    """A loader with the thread settings this process allows now (decided on a known-good model).

    Raises:
        VersionError: onnxruntime loads not even an opset-7, IR-7 model (a broken installation).
    """
    baseline = _probe_model(opset=7, ir_version=7)
    for per_session in (True, False):  # False: the process-wide pool exists (Session(shared_threads=True))
        if _session_loads(baseline, per_session_threads=per_session):
            return functools.partial(_session_loads, per_session_threads=per_session)
    raise VersionError(
        "onnxruntime cannot load a one-node opset-7 model with either thread setting; "
        "the installation is broken",
        hint="reinstall onnxruntime (pip install --force-reinstall onnxruntime)",
    )


def _bisect(accepts: Callable[[int], bool], low: int, high: int) -> int:
    """Largest ``n`` in ``[low, high]`` with ``accepts(n)``; ``low`` must be accepted."""
    while low < high:
        mid = (low + high + 1) // 2
        if accepts(mid):
            low = mid
        else:
            high = mid - 1
    return low


@functools.lru_cache(maxsize=8)
def ort_max_opset(domain: str = "") -> int:
    """Return the newest opset of ``domain`` the installed onnxruntime loads (28 for ai.onnx on 1.32).

    Args:
        domain: ``""`` (or ``"ai.onnx"``) for the default domain, or e.g. ``"ai.onnx.ml"``.

    Raises:
        VersionError: onnxruntime cannot even load an opset-7 model (a broken installation); not
            cached, the next call probes again.
    """
    loads = _probe()
    if domain in _DEFAULT_DOMAINS:
        found = _bisect(lambda n: loads(_probe_model(opset=n, ir_version=7 if n < 15 else 8)), 7, 200)
    elif not loads(_probe_model(opset=1, ir_version=8, domain=domain)):
        found = 0  # onnxruntime knows no version of this domain
    else:
        found = _bisect(lambda n: loads(_probe_model(opset=n, ir_version=8, domain=domain)), 1, 200)
    logger.debug("onnxruntime runs %s opsets up to %d", domain or "ai.onnx", found)
    return found


@functools.lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """Return the newest ONNX IR version the installed onnxruntime loads (14 for onnxruntime 1.32).

    Raises:
        VersionError: onnxruntime cannot even load an IR-7 model (a broken installation); not
            cached, the next call probes again.
    """
    loads = _probe()
    found = _bisect(lambda n: loads(_probe_model(opset=13, ir_version=n)), 7, 200)
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
