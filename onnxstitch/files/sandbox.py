"""Load and validate an untrusted model in a subprocess with time and memory limits.

A model can make onnxruntime allocate gigabytes, spin for minutes or crash at session creation.
:func:`check_in_subprocess` runs ``load`` + ``describe`` + an ``onnxruntime.InferenceSession`` in a
fresh, isolated interpreter (``python -I``: no user site, no current folder on ``sys.path``) whose
address space, CPU time and file writes are capped with ``setrlimit``; a wall-clock timeout kills
it.  The caller gets the summary, the same typed error the child met, or a
:class:`~onnxstitch.errors.SandboxError` saying how the child died.  POSIX only.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from onnxstitch import errors
from onnxstitch.errors import SandboxError, StitchError

__all__ = ["DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT", "check_in_subprocess"]

DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_MB = 4096

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); from onnxstitch.files._sandbox_child import main; main()"
)


def _explain_exit(returncode: int, name: str, *, memory_mb: int, timeout: float) -> SandboxError:
    """Turn a child's death (negative return code: killed by a signal) into a SandboxError."""
    if returncode < 0:
        number = -returncode
        try:
            sig = signal.Signals(number).name
        except ValueError:
            sig = "unknown signal"
        if number == signal.SIGXCPU:
            return SandboxError(
                f"loading {name} used more than the sandbox's CPU time limit ({math.ceil(timeout)} s)",
                hint="raise --timeout if you trust the model and it is merely big",
            )
        if number == signal.SIGXFSZ:
            return SandboxError(f"loading {name} tried to write a file inside the sandbox; refused")
        if number == signal.SIGKILL:
            return SandboxError(
                f"the sandbox loading {name} was killed (signal {number}, SIGKILL; out of memory?)",
                hint=f"raise --memory-mb (now {memory_mb}) if you trust the model",
            )
        return SandboxError(
            f"onnxruntime crashed while loading {name} (signal {number}, {sig})",
            hint="the file is corrupt or hostile; do not load it in-process",
        )
    return SandboxError(f"the sandbox loading {name} exited with status {returncode} without a report")


def _reraise(reply: dict[str, Any], name: str, *, memory_mb: int) -> StitchError:
    kind, message = str(reply.get("error")), str(reply.get("message"))
    if kind == "MemoryError":
        return SandboxError(
            f"loading {name} ran out of the sandbox's memory limit ({memory_mb} MB): {message}",
            hint="raise --memory-mb if you trust the model and it is merely big",
        )
    cls = getattr(errors, kind, None)
    simple = (
        errors.ModelFileError,
        errors.UnsafeModelError,
        errors.IntegrityError,
        errors.ModelTooLargeError,
        errors.VersionError,
    )
    if isinstance(cls, type) and issubclass(cls, simple):
        return cls(message)
    return SandboxError(f"onnxruntime refused {name}: {message}")


def check_in_subprocess(
    path: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    verify: bool = False,
    session: bool = True,
) -> dict[str, Any]:
    """Load, describe and (with ``session``) open ``path`` in onnxruntime, in a limited subprocess.

    Args:
        path: the ``.onnx`` file.
        timeout: wall-clock seconds before the child is killed (also its CPU-time limit).
        memory_mb: address space the child may use on top of the interpreter and its libraries.
        verify: check the sha256 manifest, as ``load(..., verify=True)``.
        session: also create an ``onnxruntime.InferenceSession`` (the step that blows up).

    Returns:
        :func:`onnxstitch.files.describe.describe`'s summary, plus ``"session"``:
        ``{"providers", "inputs", "outputs"}`` when ``session``.

    Raises:
        ModelFileError, UnsafeModelError, IntegrityError, VersionError, ModelTooLargeError: what
            ``load`` raised in the child.
        SandboxError: the child timed out, ran out of memory, crashed (the signal is named), or
            onnxruntime refused the model.
    """
    p = Path(path)
    name = p.name
    if timeout <= 0 or memory_mb <= 0:
        raise StitchError(f"timeout and memory_mb must be positive, got {timeout} and {memory_mb}")
    request = {
        "path": str(p.absolute()),
        "verify": verify,
        "session": session,
        "memory_mb": memory_mb,
        "cpu_s": max(1, math.ceil(timeout)),
    }
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _BOOTSTRAP, _PACKAGE_ROOT],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SandboxError(
            f"loading {name} in the sandbox timed out after {timeout:g} s; the child was killed",
            hint="raise --timeout if you trust the model and it is merely big",
        ) from None
    if done.returncode != 0:
        raise _explain_exit(done.returncode, name, memory_mb=memory_mb, timeout=timeout)
    try:
        reply: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        tail = done.stderr.decode(errors="replace")[-500:]
        raise SandboxError(f"the sandbox loading {name} gave no readable report: {tail}") from None
    if not reply.get("ok"):
        raise _reraise(reply, name, memory_mb=memory_mb)
    summary: dict[str, Any] = reply["summary"]
    return summary
