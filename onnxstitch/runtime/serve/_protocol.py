"""The Open Inference Protocol (KServe v2) side of ``serve``: datatypes, request checks, binary data.

Everything here is plain Python + numpy, independent of the server that hosts it, so the checks a
request meets are the same over REST and gRPC and can be tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxstitch.errors import InputError
from onnxstitch.runtime._feeds import TensorInfo, _check_one, check_feeds

__all__ = [
    "RequestTensor",
    "check_raw_sizes",
    "decode_binary",
    "decode_inputs",
    "encode_binary",
    "numpy_to_v2",
    "v2_to_numpy",
]

_V2: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NUMPY = {dtype: name for name, dtype in _V2.items()}
# which numpy kinds of JSON data each element kind accepts (no strings, no floats into ints)
_ACCEPTS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


@dataclass(frozen=True)
class RequestTensor:
    """One input of an inference request, as the client sent it (``data`` already flat or nested)."""

    name: str
    datatype: str
    shape: Sequence[Any]
    data: Any


def numpy_to_v2(dtype: np.dtype[Any]) -> str:
    """The protocol's datatype name (``"FP32"``) of a numpy dtype; ``"BYTES"`` for strings."""
    return _NUMPY.get(np.dtype(dtype), "BYTES")


def v2_to_numpy(datatype: str) -> np.dtype[Any] | None:
    """The numpy dtype of a protocol datatype name, or ``None`` if it has none (``BYTES``, unknown)."""
    return _V2.get(datatype)


def _shape_problem(tensor: RequestTensor) -> str | None:
    shape = tensor.shape
    if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
        return f"input {tensor.name!r}: shape must be a list of non-negative integers"
    return None


def _decode_one(tensor: RequestTensor, info: TensorInfo) -> tuple[np.ndarray[Any, Any] | None, list[str]]:
    """The tensor as an array of the model's dtype and the request's shape, or its problems."""
    want = numpy_to_v2(info.dtype)
    problems = []
    if tensor.datatype != want:
        problems.append(f"input {tensor.name!r}: datatype {tensor.datatype!r}, the model expects {want}")
    shape_problem = _shape_problem(tensor)
    if shape_problem:
        problems.append(shape_problem)
    if problems:
        return None, problems
    if want == "BYTES":
        return None, [f"input {tensor.name!r}: BYTES inputs are not served"]
    if isinstance(tensor.data, np.ndarray):
        raw = tensor.data
    else:
        try:
            raw = np.asarray(tensor.data if isinstance(tensor.data, list) else [tensor.data])
        except (ValueError, TypeError):
            return None, [f"input {tensor.name!r}: data is not a flat or rectangular list of numbers"]
    if raw.size and raw.dtype.kind not in _ACCEPTS[info.dtype.kind]:
        kind = "numbers" if raw.dtype.kind in "biuf" else "non-numeric values"
        return None, [f"input {tensor.name!r}: data holds {kind} of type {raw.dtype}, not {want} values"]
    count = math.prod(tensor.shape)
    if raw.size != count:
        return None, [
            f"input {tensor.name!r}: shape {list(tensor.shape)} holds {count} elements, "
            f"the data has {raw.size}"
        ]
    if info.dtype.kind in "iu" and raw.size and raw.dtype != info.dtype:
        limits = np.iinfo(info.dtype)
        if int(raw.min()) < limits.min or int(raw.max()) > limits.max:
            return None, [f"input {tensor.name!r}: values outside the range of {want}"]
    return raw.astype(info.dtype, copy=False).reshape(tuple(tensor.shape)), []


def decode_inputs(
    signature: Sequence[TensorInfo], tensors: Sequence[RequestTensor]
) -> dict[str, np.ndarray[Any, Any]]:
    """Check a request's inputs against the model's and return them as arrays.

    Checks names (unknown, missing, duplicated), datatypes, shapes (rank, static dims, shared
    symbolic dims), element count against the data given, and that the data is numbers of the
    right kind. Every problem is collected before one error is raised.

    Raises:
        InputError: the request does not match the model; the message names each input at fault.
    """
    by_name = {info.name: info for info in signature}
    problems: list[str] = []
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    seen: set[str] = set()
    symbols: dict[str, tuple[int, str]] = {}
    for tensor in tensors:
        if tensor.name in seen:
            problems.append(f"input {tensor.name!r} is given twice")
            continue
        seen.add(tensor.name)
        info = by_name.get(tensor.name)
        if info is None:
            valid = ", ".join(repr(n) for n in by_name)
            problems.append(f"unknown input {tensor.name!r} (the model's inputs are: {valid})")
            continue
        array, found = _decode_one(tensor, info)
        problems.extend(found)
        if array is not None:
            arrays[tensor.name] = array
        if _shape_problem(tensor) is None:  # the shape against the model's, whatever else is wrong
            shaped = array if array is not None else _stand_in(info, tensor.shape)
            problems.extend(_check_one(info, shaped, symbols))
    for info in signature:
        if info.name not in seen:
            problems.append(
                f"missing input {info.name!r}: expected {numpy_to_v2(info.dtype)}{list(info.shape)}"
            )
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise InputError(f"{len(problems)} problem(s) with the request:\n{lines}")
    try:
        check_feeds(signature, arrays)  # a last check; the loop above has found what it would
    except InputError as exc:
        raise InputError(str(exc).replace("with the feeds", "with the request")) from None
    return arrays


def _stand_in(info: TensorInfo, shape: Sequence[int]) -> np.ndarray[Any, Any]:
    """A read-only array of ``shape`` in the model's dtype that takes no memory (shape checks only)."""
    return np.broadcast_to(np.zeros((), dtype=info.dtype), tuple(shape))


def decode_binary(name: str, datatype: str, shape: Sequence[Any], raw: bytes) -> list[Any]:
    """Elements of one input sent with the binary tensor extension, as a flat list.

    Raises:
        InputError: the datatype has no fixed element size or the byte count does not match the shape.
    """
    dtype = v2_to_numpy(datatype)
    if dtype is None:
        raise InputError(f"input {name!r}: binary data of datatype {datatype!r} is not served")
    if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"input {name!r}: shape must be a list of non-negative integers")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InputError(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, got {len(raw)}"
        )
    values: list[Any] = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).tolist()
    return values


def check_raw_sizes(inputs: Sequence[tuple[str, str, Sequence[Any]]], sizes: Sequence[int]) -> None:
    """Check gRPC ``raw_input_contents`` (one byte string per input, in order) against the shapes.

    Raises:
        InputError: the number of raw contents differs from the inputs', or an input's byte count
            does not match its shape and datatype (every problem listed).
    """
    if len(sizes) != len(inputs):
        raise InputError(f"the request has {len(inputs)} input(s) but {len(sizes)} raw content(s)")
    problems = []
    for (name, datatype, shape), size in zip(inputs, sizes, strict=True):
        dtype = v2_to_numpy(datatype)
        if dtype is None:
            problems.append(f"input {name!r}: raw data of datatype {datatype!r} is not served")
        elif size != (needed := math.prod(shape) * dtype.itemsize):
            problems.append(
                f"input {name!r}: shape {list(shape)} of {datatype} needs {needed} bytes, got {size}"
            )
    if problems:
        raise InputError(
            f"{len(problems)} problem(s) with the request:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def encode_binary(datatype: str, data: Any) -> bytes | None:
    """Little-endian bytes of an output's data for the binary tensor extension (``None``: keep JSON)."""
    dtype = v2_to_numpy(datatype)
    if dtype is None:
        return None
    return np.asarray(data, dtype=dtype.newbyteorder("<")).tobytes()
