"""``save``: atomic writes, external data for big weights, never touching the caller's model.

The external-data helpers of ``onnx`` rewrite the tensors of the model they are given, in place.
Here the caller's model is only *read*: a shallow clone is built whose big initializers are stubs
(dims, type, name and an ``external_data`` pointer, no bytes), while the bytes are streamed from the
caller's tensors straight into the data file.  Without external data the ``.onnx`` file is streamed
too: the model's header is serialized without its initializers, and each initializer is written
after it as its own protobuf field (field order is free in protobuf), its bytes straight from the
tensor.  Either way a model costs about one extra copy of its largest tensor, never a second
serialized copy of all its weights.

Tensors that stay on disk (marked by an :class:`~onnxstitch.files.external.ExternalStore`, as a
merge from paths leaves them) are copied file to file, through the hardened reader.
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
from onnxstitch.files.external import (
    ExternalStore,
    copy_ref,
    iter_ref,
    iter_tensors,
    tensor_nbytes,
    uses_external_data,
)

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


def _write_data(fh: BinaryIO, pending: list[_Pending], location: str, store: ExternalStore) -> None:
    offset = 0
    for item in pending:
        pad = (-offset) % ALIGNMENT
        if pad:
            fh.write(b"\0" * pad)
            offset += pad
        ref = store.ref_of(item.source)
        length = copy_ref(ref, fh) if ref is not None else _write_tensor(fh, item.source)
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = item.stub.external_data.add()
            entry.key = key
            entry.value = value
        item.stub.data_location = onnx.TensorProto.EXTERNAL
        offset += length


def _check_inline_size(total: int, name: str) -> None:
    if total >= PROTOBUF_LIMIT:
        raise ModelTooLargeError(
            f"{name}: {total / 1e9:.2f} GB of tensors would be stored inside the .onnx file, "
            "past protobuf's 2 GB limit",
            hint="save with external_data=True (tensors in Constant nodes stay inline: use initializers)",
        )


def _serialize(model: onnx.ModelProto, name: str) -> bytes:
    """A header (no big tensors) as bytes."""
    _check_inline_size(inline_bytes(model), name)
    try:
        return bytes(model.SerializeToString())
    except Exception as exc:
        raise ModelTooLargeError(
            f"{name}: the model cannot be serialized ({exc}); it is past protobuf's 2 GB limit",
            hint="save it with external_data=True",
        ) from exc


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_tag(message: Any, field: str) -> bytes:
    """The tag of a length-delimited field (wire type 2) of ``message``'s type."""
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


#: initializers of at least this many bytes are streamed; smaller ones are serialized whole
_STREAM_BYTES = 1 << 16


def _write_streamed(fh: BinaryIO, model: onnx.ModelProto, name: str, store: ExternalStore) -> None:
    """Write ``model`` as one protobuf without ever holding it serialized.

    Layout: the model's fields but ``graph``; then the ``graph`` field, made of the graph's fields
    but ``initializer``, then each initializer as one ``initializer`` field — a big one as its
    data-less stub followed by its ``raw_data`` field, whose bytes are written straight from the
    tensor (or copied from its file). Protobuf parsers accept fields in any order.
    """
    head = onnx.ModelProto()
    _copy_fields(model, head, frozenset({"graph"}))
    _copy_fields(model.graph, head.graph, frozenset({"initializer"}))
    store.inline(head)  # marked tensors in nodes/subgraphs/functions: read into our copy (they are small)
    total = inline_bytes(head)
    graph_bytes = head.graph.SerializeToString()
    init_tag = _field_tag(head.graph, "initializer")
    head.ClearField("graph")
    entries: list[tuple[bytes, onnx.TensorProto | None, int]] = []  # (serialized head, source, bytes)
    for tensor in model.graph.initializer:
        ref = store.ref_of(tensor)
        size = ref.length if ref is not None else _nbytes(tensor)
        total += size
        if ref is None and (size < _STREAM_BYTES or tensor.data_type == onnx.TensorProto.STRING):
            entries.append((tensor.SerializeToString(), None, 0))
            continue
        stub = onnx.TensorProto()
        _copy_fields(tensor, stub, _DATA_FIELDS | {"external_data", "data_location"})
        entries.append(
            (stub.SerializeToString() + _field_tag(stub, "raw_data") + _varint(size), tensor, size)
        )
    _check_inline_size(total, name)
    graph_len = len(graph_bytes) + sum(
        len(init_tag) + len(_varint(len(body) + size)) + len(body) + size for body, _, size in entries
    )
    fh.write(head.SerializeToString())
    fh.write(_field_tag(head, "graph") + _varint(graph_len))
    fh.write(graph_bytes)
    for body, source, size in entries:
        fh.write(init_tag + _varint(len(body) + size) + body)
        if source is None:
            continue
        ref = store.ref_of(source)
        chunks = iter_ref(ref) if ref is not None else [_tensor_bytes(source)]
        written = 0
        for chunk in chunks:
            view = memoryview(chunk)
            for start in range(0, len(view), 1 << 26):
                fh.write(view[start : start + (1 << 26)])
            written += len(chunk)
        if written != size:
            raise ModelFileError(
                f"{name}: tensor {source.name!r} holds {written} bytes, but its shape "
                f"{list(source.dims)} and type need {size}",
                hint="the tensor is corrupt; rebuild it with onnx.numpy_helper.from_array",
            )


def _decide_external(model: onnx.ModelProto, external_data: bool | None, store: ExternalStore) -> bool:
    if external_data is not None:
        return external_data
    on_disk = sum(ref.length for t in iter_tensors(model) if (ref := store.ref_of(t)) is not None)
    return inline_bytes(model) + on_disk > AUTO_EXTERNAL_BYTES


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


def _check_no_unloaded(model: onnx.ModelProto, name: str, store: ExternalStore) -> None:
    unloaded = [t.name for t in iter_tensors(model) if uses_external_data(t) and store.ref_of(t) is None]
    if unloaded:
        shown = ", ".join(repr(n) for n in unloaded[:5])
        raise ModelFileError(
            f"cannot save {name}: tensor(s) {shown} still point to external data that was never loaded "
            "(their location would be resolved against the new folder, or the working directory)",
            hint="load the model with onnxstitch.load(path), which reads its external data safely",
        )


def save_model(
    model: onnx.ModelProto,
    path: Path,
    *,
    external_data: bool | None,
    size_threshold: int,
    store: ExternalStore | None = None,
) -> list[str]:
    """Write ``model`` to ``path`` atomically; return the external data file names written.

    Args:
        model: the model (never modified).
        path: the target file.
        external_data: as :func:`onnxstitch.files.save`.
        size_threshold: as :func:`onnxstitch.files.save`.
        store: where tensors of ``model`` that stay on disk are read from (copied file to file).

    Raises:
        ModelFileError: the target folder is missing, or the model has unloaded external data.
        ModelTooLargeError: the model cannot fit protobuf's 2 GB limit even with external data.
    """
    store = store if store is not None else ExternalStore()
    name = path.name
    _check_target(path)
    _check_no_unloaded(model, name, store)
    if not _decide_external(model, external_data, store):
        with atomic_open(path) as fh:
            _write_streamed(fh, model, name, store)
        return []
    location = name + ".data"
    clone, pending = _split(model, max(0, size_threshold))
    store.inline(clone)  # small marked tensors (below the threshold, in nodes): inline, in our clone
    if not pending:
        logger.info("%s: no initializer reaches %d bytes; saving without external data", name, size_threshold)
        with atomic_open(path) as fh:
            fh.write(_serialize(clone, name))
        return []
    with atomic_open(path.with_name(location)) as data_fh:
        _write_data(data_fh, pending, location, store)
        header = _serialize(clone, name)
    with atomic_open(path) as fh:
        fh.write(header)
    logger.info("%s: %d tensors written to %s", name, len(pending), location)
    return [location]


def remove_quietly(path: Path) -> None:
    """Remove a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
