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


def _bind_outputs(
    session: Session,
    binding: Any,
    names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...] | None],
    on_gpu: bool,
) -> dict[str, Any]:
    """Bind the outputs; returns the torch tensors preallocated for those whose shape is known."""
    if not on_gpu:
        for name in names:
            binding.bind_output(name, "cpu")
        return {}
    torch = _torch()
    device = torch.device("cuda", session.device_id)
    infos = {o.name: o for o in session.outputs}
    preallocated: dict[str, Any] = {}
    for name in names:
        shape = shapes.get(name)
        if shape is None:
            binding.bind_output(name, "cuda", session.device_id)
            continue
        tensor = torch.empty(shape, dtype=_torch_dtype(torch, infos[name].dtype), device=device)
        preallocated[name] = tensor
        binding.bind_output(name, "cuda", session.device_id, infos[name].dtype.type, shape, tensor.data_ptr())
    return preallocated


def run_bound(
    session: Session,
    feeds: Mapping[str, Any],
    names: Sequence[str],
    symbols: Mapping[str, int],
    output_device: str,
    run_options: Any,
) -> dict[str, Any]:
    """Run ``session`` with IO binding (called by ``Session.run`` on a CUDA session).

    Outputs whose declared shape the feeds determine are written straight into torch tensors
    allocated on the device; the others are allocated by onnxruntime and handed over by DLPack. If a
    declared output shape turns out wrong, the run is repeated with onnxruntime allocating them all.

    Raises:
        MissingDependencyError: torch is needed for ``output_device="cuda"`` and is missing.
        RunTimeoutError: the run was cancelled.
        StitchError: onnxruntime failed.
    """
    from onnxstitch.errors import RunTimeoutError, StitchError

    sess = session._sess
    on_gpu = output_device == "cuda"
    infos = {o.name: o for o in session.outputs}
    shapes = {name: _known_shape(infos[name].shape, symbols) for name in names}
    for attempt in range(2):
        binding = sess.io_binding()
        keep = _bind_inputs(session, binding, feeds)
        preallocated = _bind_outputs(session, binding, names, shapes, on_gpu)
        binding.synchronize_inputs()
        try:
            session._call(lambda: sess.run_with_iobinding(binding, run_options))  # noqa: B023
        except RunTimeoutError:
            raise
        except StitchError:
            if attempt or not preallocated:
                raise
            logger.warning("declared output shapes did not hold; letting onnxruntime allocate the outputs")
            shapes = dict.fromkeys(names)
            continue
        binding.synchronize_outputs()
        del keep
        break
    values = binding.get_outputs()
    if not on_gpu:
        return {name: value.numpy() for name, value in zip(names, values, strict=True)}
    torch = _torch()
    result: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        if name in preallocated:
            result[name] = preallocated[name]
        elif hasattr(value, "__dlpack__"):
            result[name] = torch.from_dlpack(value)
        else:  # an onnxruntime without DLPack: one copy through the host
            logger.warning("output %r: onnxruntime lacks DLPack; copying through the host", name)
            result[name] = torch.from_numpy(value.numpy()).to(torch.device("cuda", session.device_id))
    return result


def _torch_dtype(torch: Any, dtype: np.dtype[Any]) -> Any:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
