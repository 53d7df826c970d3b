"""Keep torch from importing ``triton`` into a process that has TensorFlow loaded.

The default PyPI torch build installs the ``triton`` package. TensorFlow and triton each carry
their own copy of LLVM, and once TensorFlow's is loaded, ``import triton`` aborts the whole process
("LLVM ERROR: inconsistency in registered CommandLine options", exit 134, or a segfault); the other
order works. Nothing onnxstitch does with torch needs triton (it compiles GPU kernels), but torch
imports it on the way: ``torch._dynamo`` (every ``torch.export`` / ``torch.onnx.export``),
``torch._inductor.runtime.triton_compat``, ``torch.utils.flop_counter``, and ``torch.optim``'s first
``step()`` (through ``torch._compile``) all probe for it when they are first imported.

:func:`no_triton_beside_tensorflow` makes ``import triton`` raise ``ImportError`` for the duration of
a block, with Python's own mechanism (a ``None`` entry in ``sys.modules``: ``import`` raises
``ModuleNotFoundError`` and ``importlib.util.find_spec`` returns ``None``), so torch takes the
branch it takes on a machine without triton. It does so only while TensorFlow is loaded and triton
is not, i.e. exactly when importing triton would kill the process; otherwise it does nothing.

Side effects, stated plainly: ``sys.modules`` is process-wide, so another thread that imports
triton during the block gets the ``ImportError`` too (instead of the crash it would get anyway), and
the torch modules first imported during the block remember "no triton" for the rest of the process
(``torch.utils._triton.has_triton_package`` is cached): in that process ``torch.compile`` falls back
as on a CPU-only machine. That state is the only one such a process can be in; a program that needs
triton kernels and TensorFlow together must import torch's compiler (``import torch._dynamo``) before
TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["no_triton_beside_tensorflow", "triton_would_clash"]

logger = logging.getLogger(__name__)

_TRITON = "triton"


def triton_would_clash() -> bool:
    """True when TensorFlow is loaded in this process and triton is not (importing it would abort)."""
    return "tensorflow" in sys.modules and sys.modules.get(_TRITON, None) is None


@contextlib.contextmanager
def no_triton_beside_tensorflow() -> Iterator[bool]:
    """Make ``import triton`` fail with ``ImportError`` in the block, if TensorFlow is loaded.

    Yields:
        Whether triton was hidden (``False``: TensorFlow is not loaded, or triton already is).
    """
    if not triton_would_clash() or _TRITON in sys.modules:
        # nothing to do, or someone already hid it (an outer block): leave their entry alone
        yield False
        return
    logger.debug("TensorFlow is loaded: hiding triton from torch (its LLVM clashes with TensorFlow's)")
    sys.modules[_TRITON] = None  # type: ignore[assignment]
    try:
        yield True
    finally:
        if _TRITON in sys.modules and sys.modules[_TRITON] is None:
            del sys.modules[_TRITON]
