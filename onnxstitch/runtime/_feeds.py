"""Feed handling for :class:`~onnxstitch.runtime.session.Session`: tensor descriptions, torch
tensors and the checks made before a model runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxstitch.errors import InputError

__all__ = ["TensorInfo", "check_feeds", "is_torch_tensor", "ort_type_to_numpy", "to_numpy"]

logger = logging.getLogger(__name__)

Dim = int | str | None

_ORT_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(np.object_),
}


@dataclass(frozen=True)
class TensorInfo:
    """Name, element type and shape of one model input or output.

    Attributes:
        name: the tensor's name in the graph.
        dtype: its numpy element type.
        shape: one entry per axis: an ``int`` for a static dim, the symbol's name (``"batch"``) for
            a symbolic dim, ``None`` for a dim that is neither.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[Dim, ...]

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def ort_type_to_numpy(type_str: str) -> np.dtype[Any]:
    """Return the numpy dtype of an onnxruntime type string such as ``"tensor(float)"``.

    Raises:
        InputError: the type is not a tensor type numpy can represent (sequence, map, bfloat16).
    """
    try:
        return _ORT_TYPES[type_str]
    except KeyError:
        raise InputError(
            f"tensor type {type_str!r} has no numpy equivalent",
            hint="onnxstitch sessions run models whose inputs and outputs are plain numeric tensors",
        ) from None


def is_torch_tensor(value: object) -> bool:
    """True if ``value`` is a ``torch.Tensor`` (decided without importing torch)."""
    return type(value).__module__.startswith("torch") and hasattr(value, "data_ptr")


def to_numpy(name: str, value: object) -> np.ndarray[Any, Any]:
    """Return ``value`` as a numpy array, copying a torch tensor to the host only if it is not there.

    Raises:
        InputError: ``value`` cannot be turned into an array (e.g. a bfloat16 tensor).
    """
    if isinstance(value, np.ndarray):
        return value
    if is_torch_tensor(value):
        tensor: Any = value
        try:
            if tensor.device.type != "cpu":
                logger.debug("input %r: copying a %s tensor to the host", name, tensor.device)
            return np.asarray(tensor.detach().cpu().numpy())
        except (TypeError, RuntimeError) as exc:
            raise InputError(
                f"input {name!r}: torch tensor of dtype {tensor.dtype} cannot be converted to numpy: {exc}",
                hint="convert it to a numpy-compatible dtype first, e.g. tensor.float()",
            ) from exc
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"input {name!r}: cannot be converted to an array: {exc}") from exc


def _describe(shape: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _dtype_of(value: object) -> np.dtype[Any] | None:
    """Numpy dtype of an array or torch tensor (``None`` if torch's dtype has no numpy twin)."""
    if is_torch_tensor(value):
        import torch  # only reached when the value is already a torch tensor

        mapping = {
            torch.float32: np.float32,
            torch.float16: np.float16,
            torch.float64: np.float64,
            torch.int8: np.int8,
            torch.int16: np.int16,
            torch.int32: np.int32,
            torch.int64: np.int64,
            torch.uint8: np.uint8,
            torch.bool: np.bool_,
        }
        found = mapping.get(value.dtype)  # type: ignore[attr-defined]
        return None if found is None else np.dtype(found)
    return np.asarray(value).dtype if not isinstance(value, np.ndarray) else value.dtype


def _shape_of(value: object) -> tuple[int, ...]:
    if is_torch_tensor(value) or isinstance(value, np.ndarray):
        return tuple(int(d) for d in value.shape)  # type: ignore[attr-defined]
    return tuple(np.asarray(value).shape)


def check_feeds(inputs: Sequence[TensorInfo], feeds: Mapping[str, object]) -> dict[str, int]:
    """Check ``feeds`` against the model's ``inputs``; collect every problem and raise once.

    Returns:
        The size bound to each symbolic dim by the feeds.

    Raises:
        InputError: a name is missing or unknown, or a dtype, rank, static dim or symbolic dim
            disagrees; the message lists each input at fault and what it expects.
    """
    if not isinstance(feeds, Mapping):
        raise InputError(
            f"feeds must be a dict of input name -> array, got {type(feeds).__name__}",
            hint=f"pass {{{', '.join(repr(i.name) for i in inputs)}: ...}}",
        )
    problems: list[str] = []
    expected = {info.name: info for info in inputs}
    valid = ", ".join(repr(n) for n in expected)
    for name in feeds:
        if name not in expected:
            problems.append(f"unknown input {name!r} (the model's inputs are: {valid})")
    for info in inputs:
        if info.name not in feeds:
            problems.append(f"missing input {info.name!r}: expected {info.dtype}{_describe(info.shape)}")
    symbols: dict[str, tuple[int, str]] = {}
    for info in inputs:
        if info.name in feeds:
            problems.extend(_check_one(info, feeds[info.name], symbols))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise InputError(
            f"{len(problems)} problem(s) with the feeds:\n{lines}",
            hint="the model expects " + "; ".join(str(i) for i in inputs),
        )
    return {sym: size for sym, (size, _) in symbols.items()}


def _check_one(info: TensorInfo, value: object, symbols: dict[str, tuple[int, str]]) -> list[str]:
    """Problems of one feed; binds the symbolic dims it fixes into ``symbols``."""
    out: list[str] = []
    dtype = _dtype_of(value)
    shape = _shape_of(value)
    want = f"expected {info.dtype}{_describe(info.shape)}"
    if dtype != info.dtype:
        got = getattr(value, "dtype", dtype)
        out.append(f"input {info.name!r}: dtype {got}, {want} (cast it, e.g. x.astype(np.{info.dtype}))")
    if len(shape) != len(info.shape):
        out.append(f"input {info.name!r}: rank {len(shape)} (shape {_describe(shape)}), {want}")
        return out
    for axis, (got_dim, dim) in enumerate(zip(shape, info.shape, strict=True)):
        if isinstance(dim, int) and dim >= 0 and got_dim != dim:
            out.append(f"input {info.name!r}: dim {axis} is {got_dim}, {want} (dim {axis} must be {dim})")
        elif isinstance(dim, str):
            seen = symbols.get(dim)
            if seen is None:
                symbols[dim] = (got_dim, f"{info.name!r} dim {axis}")
            elif seen[0] != got_dim:
                out.append(
                    f"input {info.name!r}: dim {axis} ({dim!r}) is {got_dim}, but {seen[1]} "
                    f"already set {dim!r} to {seen[0]} (inputs sharing a symbol must agree)"
                )
    return out
