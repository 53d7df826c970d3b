"""The sandbox's child process: load one model under resource limits and report as JSON.

Started by :func:`onnxstitch.files.sandbox.check_in_subprocess` with a fresh, isolated interpreter
(``python -I``); reads its request as JSON on stdin and writes one JSON object on stdout.
Not a public entry point.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def _vm_mb() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


def _limit(memory_mb: int, cpu_s: int) -> None:
    """Cap address space (on top of what the interpreter and libraries use), CPU time and writes."""
    budget = (_vm_mb() + memory_mb) << 20
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # the child never writes a file


def _work(request: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    from onnxstitch.files import load
    from onnxstitch.files.describe import describe

    path = request["path"]
    model = load(path, verify=bool(request["verify"]))
    summary = describe(model, path=path)
    if request["session"]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        summary["session"] = {
            "providers": session.get_providers(),
            "inputs": [i.name for i in session.get_inputs()],
            "outputs": [o.name for o in session.get_outputs()],
        }
    return summary


def main() -> None:
    """Run one request from stdin; print ``{"ok": true, "summary": ...}`` or the error."""
    request = json.loads(sys.stdin.read())
    import onnx  # noqa: F401 - imported before the limits, with the rest of the stack
    import onnxruntime  # noqa: F401

    import onnxstitch.files.describe  # noqa: F401
    from onnxstitch.errors import StitchError

    _limit(int(request["memory_mb"]), int(request["cpu_s"]))
    try:
        reply: dict[str, Any] = {"ok": True, "summary": _work(request)}
    except StitchError as exc:
        reply = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    except MemoryError:
        reply = {"ok": False, "error": "MemoryError", "message": "out of memory"}
    except Exception as exc:  # onnxruntime's own errors: reported, typed by the parent
        text = str(exc)
        kind = "MemoryError" if "bad_alloc" in text else "RuntimeError"
        reply = {"ok": False, "error": kind, "message": f"{type(exc).__name__}: {text}"}
    sys.stdout.write(json.dumps(reply, default=str))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
