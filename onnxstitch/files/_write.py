"""``save``: atomic writes, external data for big weights, never touching the caller's model.

The external-data helpers of ``onnx`` rewrite the tensors of the model they are given, in place.
Here the caller's model is only *read*: a shallow clone is built whose big initializers are stubs
(dims, type, name and an ``external_data`` pointer, no bytes), while the bytes are streamed from the
caller's tensors straight into the data file.  A 2 GB model therefore costs about one extra copy of
its largest tensor, not of all its weights.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import onnx
from onnx import numpy_helper

from onnxstitch.errors import ModelFileError, ModelTooLargeError
from onnxstitch.files._atomic import atomic_open
from onnxstitch.files._limits import PROTOBUF_LIMIT
from onnxstitch.files.external import iter_tensors, tensor_nbytes, uses_external_data

__all__ = ["ALIGNMENT", "AUTO_EXTERNAL_BYTES", "inline_bytes", "save_model"]

logger = logging.getLogger(__name__)

#: models whose serialized size passes this are written with external data when ``external_data=None``
AUTO_EXTERNAL_BYTES = 2_000_000_000
#: offsets of tensors in the data file are multiples of this
ALIGNMENT = 64

_DATA_FIELDS = frozenset(
    {"raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data"}
)


@dataclass
class _Pending:
    source: onnx.TensorProto
    stub: onnx.TensorProto


def _copy_fields(src: Any, dst: Any, skip: frozenset[str]) -> None:
    """Copy every set field of ``src`` into ``dst`` except ``skip`` (messages copied, not shared)."""
    for field in src.DESCRIPTOR.fields:  # not ListFields(): that would copy the skipped raw_data too
        if field.name in skip:
            continue
        if field.is_repeated:
            values = getattr(src, field.name)
            if len(values):
                getattr(dst, field.name).extend(values)
        elif src.HasField(field.name):
            if field.message_type is not None:
                getattr(dst, field.name).CopyFrom(getattr(src, field.name))
            else:
                setattr(dst, field.name, getattr(src, field.name))


def _nbytes(tensor: onnx.TensorProto) -> int:
    """Size of a tensor's data without touching it (``raw_data`` access copies; ``ByteSize`` encodes)."""
    known = tensor_nbytes(tensor)
    return int(tensor.ByteSize()) if known is None else known


def inline_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all tensor data stored inside ``model`` (a fast, copy-free estimate of its size)."""
    return sum(_nbytes(t) for t in iter_tensors(model) if not uses_external_data(t))


def _clone_node(node: onnx.NodeProto, clone: onnx.NodeProto, threshold: int, pending: list[_Pending]) -> None:
    """Fill the empty ``clone`` from ``node``, cloning subgraphs so their big initializers become stubs."""
    if not any(a.HasField("g") or len(a.graphs) for a in node.attribute):
        clone.CopyFrom(node)
        return
    _copy_fields(node, clone, frozenset({"attribute"}))
    for attr in node.attribute:
        new = clone.attribute.add()
        _copy_fields(attr, new, frozenset({"g", "graphs"}))
        if attr.HasField("g"):
            _clone_graph(attr.g, new.g, threshold, pending)
        for sub in attr.graphs:
            _clone_graph(sub, new.graphs.add(), threshold, pending)


def _clone_graph(
    graph: onnx.GraphProto, clone: onnx.GraphProto, threshold: int, pending: list[_Pending]
) -> None:
    """Fill the empty ``clone`` from ``graph`` (built in place: stubs must stay the ones filled later)."""
    _copy_fields(graph, clone, frozenset({"initializer", "node"}))
    for tensor in graph.initializer:
        if tensor.data_type != onnx.TensorProto.STRING and _nbytes(tensor) >= threshold:
            stub = clone.initializer.add()
            _copy_fields(tensor, stub, _DATA_FIELDS | {"external_data", "data_location"})
            pending.append(_Pending(tensor, stub))
        else:
            clone.initializer.append(tensor)
    for node in graph.node:
        _clone_node(node, clone.node.add(), threshold, pending)


def _split(model: onnx.ModelProto, threshold: int) -> tuple[onnx.ModelProto, list[_Pending]]:
    """Clone ``model`` with big initializers replaced by stubs; return the stubs to fill."""
    pending: list[_Pending] = []
    clone = onnx.ModelProto()
    _copy_fields(model, clone, frozenset({"graph"}))
    if model.HasField("graph"):
        _clone_graph(model.graph, clone.graph, threshold, pending)
    return clone, pending


def _tensor_bytes(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    array = numpy_helper.to_array(tensor)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _write_tensor(fh: BinaryIO, tensor: onnx.TensorProto) -> int:
    """Write one tensor's bytes; return how many. Its (one) copy dies when this returns."""
    data = _tensor_bytes(tensor)
    view = memoryview(data)
    for start in range(0, len(view), 1 << 26):
        fh.write(view[start : start + (1 << 26)])
    return len(data)


def _write_data(fh: BinaryIO, pending: list[_Pending], location: str) -> None:
    offset = 0
    for item in pending:
        pad = (-offset) % ALIGNMENT
        if pad:
            fh.write(b"\0" * pad)
            offset += pad
        length = _write_tensor(fh, item.source)
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = item.stub.external_data.add()
            entry.key = key
            entry.value = value
        item.stub.data_location = onnx.TensorProto.EXTERNAL
        offset += length


def _serialize(model: onnx.ModelProto, name: str) -> bytes:
    inline = inline_bytes(model)
    if inline >= PROTOBUF_LIMIT:
        raise ModelTooLargeError(
            f"{name}: {inline / 1e9:.2f} GB of tensors would be stored inside the .onnx file, "
            "past protobuf's 2 GB limit",
            hint="save with external_data=True (tensors in Constant nodes stay inline: use initializers)",
        )
    try:
        return bytes(model.SerializeToString())
    except Exception as exc:
        raise ModelTooLargeError(
            f"{name}: the model cannot be serialized ({exc}); it is past protobuf's 2 GB limit",
            hint="save it with external_data=True",
        ) from exc


def _decide_external(model: onnx.ModelProto, external_data: bool | None) -> bool:
    if external_data is not None:
        return external_data
    return inline_bytes(model) > AUTO_EXTERNAL_BYTES


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise ModelFileError(
            f"cannot save to {str(path)!r}: it is a folder", hint="name a file such as model.onnx"
        )
    if not path.parent.is_dir():
        raise ModelFileError(
            f"cannot save to {str(path)!r}: folder {str(path.parent)!r} does not exist",
            hint="create the folder first",
        )


def _check_no_unloaded(model: onnx.ModelProto, name: str) -> None:
    unloaded = [t.name for t in iter_tensors(model) if uses_external_data(t)]
    if unloaded:
        shown = ", ".join(repr(n) for n in unloaded[:5])
        raise ModelFileError(
            f"cannot save {name}: tensor(s) {shown} still point to external data that was never loaded "
            "(their location would be resolved against the new folder, or the working directory)",
            hint="load the model with onnxstitch.load(path), which reads its external data safely",
        )


def save_model(
    model: onnx.ModelProto, path: Path, *, external_data: bool | None, size_threshold: int
) -> list[str]:
    """Write ``model`` to ``path`` atomically; return the external data file names written.

    Raises:
        ModelFileError: the target folder is missing, or the model has unloaded external data.
        ModelTooLargeError: the model cannot fit protobuf's 2 GB limit even with external data.
    """
    name = path.name
    _check_target(path)
    _check_no_unloaded(model, name)
    if not _decide_external(model, external_data):
        data = _serialize(model, name)
        with atomic_open(path) as fh:
            fh.write(data)
        return []
    location = name + ".data"
    clone, pending = _split(model, max(0, size_threshold))
    if not pending:
        logger.info("%s: no initializer reaches %d bytes; saving without external data", name, size_threshold)
        with atomic_open(path) as fh:
            fh.write(_serialize(clone, name))
        return []
    with atomic_open(path.with_name(location)) as data_fh:
        _write_data(data_fh, pending, location)
        header = _serialize(clone, name)
    with atomic_open(path) as fh:
        fh.write(header)
    logger.info("%s: %d tensors written to %s", name, len(pending), location)
    return [location]


def remove_quietly(path: Path) -> None:
    """Remove a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
