"""The CUDA path of :class:`~onnxstitch.runtime.session.Session`: IO binding, no host copies.

CUDA torch tensors are bound by pointer; numpy inputs are copied to the device once. Outputs are
either copied to the host (numpy) or handed to torch through DLPack (or written straight into torch
tensors allocated on the device when every output dim is known from the feeds).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxstitch.errors import MissingDependencyError
from onnxstitch.runtime._feeds import is_torch_tensor, to_numpy

if TYPE_CHECKING:  # pragma: no cover
    from onnxstitch.runtime.session import Session

__all__ = ["run_bound"]

logger = logging.getLogger(__name__)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch", extra="torch", purpose="returning outputs on the GPU") from exc
    return torch


def _bind_inputs(session: Session, binding: Any, feeds: Mapping[str, Any]) -> list[Any]:
    """Bind every feed; returns objects that must stay alive until the run is over."""
    keep: list[Any] = []
    dtypes = {i.name: i.dtype for i in session.inputs}
    synced: set[Any] = set()
    for name, value in feeds.items():
        if is_torch_tensor(value) and value.device.type == "cuda":
            tensor = value.detach().contiguous()
            if tensor.device not in synced:  # torch's kernels run on its own stream: let them finish
                _torch().cuda.current_stream(tensor.device).synchronize()
                synced.add(tensor.device)
            keep.append(tensor)
            binding.bind_input(
                name,
                "cuda",
                tensor.device.index or 0,
                dtypes[name].type,
                tuple(tensor.shape),
                tensor.data_ptr(),
            )
        else:
            array = np.ascontiguousarray(to_numpy(name, value))
            keep.append(array)
            binding.bind_cpu_input(name, array)
    return keep


def _known_shape(shape: Sequence[int | str | None], symbols: Mapping[str, int]) -> tuple[int, ...] | None:
    dims: list[int] = []
    for d in shape:
        if isinstance(d, int) and d >= 0:
            dims.append(d)
        elif isinstance(d, str) and d in symbols:
            dims.append(symbols[d])
        else:
            return None
    return tuple(dims)


def run_bound(
    session: Session,
    feeds: Mapping[str, Any],
    names: Sequence[str],
    symbols: Mapping[str, int],
    output_device: str,
    run_options: Any,
) -> dict[str, Any]:
    """Run ``session`` with IO binding (called by ``Session.run`` on a CUDA session).

    Raises:
        MissingDependencyError: torch is needed for ``output_device="cuda"`` and is missing.
        RunTimeoutError: the run was cancelled.
        StitchError: onnxruntime failed.
    """
    sess = session._sess
    binding = sess.io_binding()
    keep = _bind_inputs(session, binding, feeds)
    infos = {o.name: o for o in session.outputs}
    preallocated: dict[str, Any] = {}
    if output_device == "cuda":
        torch = _torch()
        device = torch.device("cuda", session.device_id)
        for name in names:
            shape = _known_shape(infos[name].shape, symbols)
            if shape is None:
                binding.bind_output(name, "cuda", session.device_id)
                continue
            tensor = torch.empty(shape, dtype=_torch_dtype(torch, infos[name].dtype), device=device)
            preallocated[name] = tensor
            binding.bind_output(
                name, "cuda", session.device_id, infos[name].dtype.type, shape, tensor.data_ptr()
            )
    else:
        for name in names:
            binding.bind_output(name, "cpu")
    binding.synchronize_inputs()
    session._call(lambda: sess.run_with_iobinding(binding, run_options))
    binding.synchronize_outputs()
    del keep
    values = binding.get_outputs()
    if output_device == "cpu":
        return {name: value.numpy() for name, value in zip(names, values, strict=True)}
    result: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        if name in preallocated:
            result[name] = preallocated[name]
        elif hasattr(value, "__dlpack__"):
            result[name] = torch.from_dlpack(value)
        else:  # an onnxruntime without DLPack: one copy through the host
            logger.warning("output %r: onnxruntime lacks DLPack; copying through the host", name)
            result[name] = torch.from_numpy(value.numpy()).to(device)
    return result


def _torch_dtype(torch: Any, dtype: np.dtype[Any]) -> Any:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
