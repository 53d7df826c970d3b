"""``load``: sniff, (verify), parse, check versions and structure, contain external data, check."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.descriptor import FieldDescriptor

from onnxstitch.errors import IntegrityError, ModelFileError
from onnxstitch.files import manifest as _manifest
from onnxstitch.files._limits import check_versions
from onnxstitch.files._precheck import PROTOBUF_LIMIT, stat_model
from onnxstitch.files.external import ExternalRef, check_external_data, load_external_data
from onnxstitch.files.sniff import HEAD_BYTES, describe_bytes, describe_text, looks_like_text

__all__ = ["external_refs", "load_header", "load_model"]

logger = logging.getLogger(__name__)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {str(path)!r}: {exc}") from exc


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:
        head = data[:HEAD_BYTES]
        if looks_like_text(head):
            raise ModelFileError(f"{name} is {describe_text(head)}") from exc
        raise ModelFileError(
            f"{name} is not a valid ONNX model: the protobuf is truncated or corrupt "
            f"({len(data)} bytes; {exc})",
            hint="download or export the model again",
        ) from exc
    return model


def _bad_string(message: Any, path: str) -> str | None:
    """The path of the first string field that is not valid UTF-8 (protobuf hands it over as bytes)."""
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if field.is_repeated else [value]
            if any(isinstance(v, bytes) for v in values):
                return where
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            children = value if field.is_repeated else [value]
            for index, child in enumerate(children):
                found = _bad_string(child, f"{where}[{index}]" if field.is_repeated else where)
                if found:
                    return found
    return None


def _check_strings(model: onnx.ModelProto, name: str) -> None:
    found = _bad_string(model, "model")
    if found:
        raise ModelFileError(
            f"{name} is corrupt: the text of {found} is not valid UTF-8",
            hint="download or export the model again",
        )


def _check_structure(model: onnx.ModelProto, name: str, head: bytes) -> None:
    graph = model.graph if model.HasField("graph") else None
    if graph is None or (not graph.node and not graph.output):
        what = (
            describe_text(head)
            if looks_like_text(head)
            else "not an ONNX model (truncated, or some other file whose bytes happen to parse as protobuf)"
        )
        raise ModelFileError(
            f"{name} has no graph{'' if graph is None else ' nodes or outputs'}: it is {what}",
            hint="download or export the model again",
        )


def _check_model(path: Path) -> None:
    """``onnx.checker`` on the file, after its external data was validated and before it is read.

    The path form checks external files by location without reading them, so a model of any size
    is checked at the cost of its ``.onnx`` file alone.
    """
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx's ValidationError and protobuf errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"{path.name} is not a valid ONNX model: {first}",
            hint="re-export the model; the checker's message above names the node or tensor at fault",
        ) from exc


def _verify_model_bytes(manifest: dict[str, str], path: Path, data: bytes) -> None:
    expected = manifest.get(path.name)
    target = _manifest.manifest_path(path).name
    if expected is None:
        raise IntegrityError(f"{path.name} is not listed in its manifest {target}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(
            f"{path.name} changed since the manifest {target} was written (sha256 {actual[:16]}…, "
            f"expected {expected[:16]}…); refusing to load it",
            hint="restore the original file, or re-download the model from a source you trust",
        )


def _read_header(path: Path, *, verify: bool) -> tuple[onnx.ModelProto, dict[str, str] | None]:
    """Everything up to (not including) external data: stat, verify, sniff, parse, versions."""
    stat_model(path)
    name = path.name
    manifest = _manifest.read_manifest(path) if verify else None
    data = _read(path)
    if manifest is not None:
        _verify_model_bytes(manifest, path, data)
    description = describe_bytes(data[:HEAD_BYTES])
    if description is not None:
        raise ModelFileError(f"{name} is {description}")
    model = _parse(data, name)
    _check_structure(model, name, data[:HEAD_BYTES])
    _check_strings(model, name)
    check_versions(model, name=name)
    return model, manifest


def external_refs(path: Path, *, trusted_layout: bool = False) -> tuple[onnx.ModelProto, list[ExternalRef]]:
    """Parse ``path`` without its external data and validate every external reference.

    Raises:
        ModelFileError, UnsafeModelError, VersionError, ModelTooLargeError: as :func:`load_model`.
    """
    model, _ = _read_header(path, verify=False)
    return model, check_external_data(model, path.parent, trusted_layout=trusted_layout)


def _check_loaded(model: onnx.ModelProto, name: str) -> None:
    """``onnx.checker`` in memory (for trusted layouts, which onnx's path form refuses)."""
    from onnxstitch.files._write import inline_bytes

    if inline_bytes(model) >= PROTOBUF_LIMIT:
        logger.info("%s: past 2 GB in memory; onnx.checker skipped", name)
        return
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx's ValidationError and protobuf errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{name} is not a valid ONNX model: {first}") from exc


def load_model(path: Path, *, verify: bool, trusted_layout: bool = False) -> onnx.ModelProto:
    """The body of :func:`onnxstitch.files.load`."""
    model, manifest = _read_header(path, verify=verify)
    refs = check_external_data(model, path.parent, trusted_layout=trusted_layout)
    if manifest is not None:
        for rel in sorted({ref.name for ref in refs}):
            _manifest.verify_file(manifest, path, rel)
    if trusted_layout and refs:
        load_external_data(model, refs)
        _check_loaded(model, path.name)
        return model
    _check_model(path)
    load_external_data(model, refs)
    return model


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: Any, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """``(field number, field start, payload start, field end)`` of each field in ``buf[start:end]``."""
    out = []
    pos = start
    while pos < end:
        key, body = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(buf, body)
        elif wire == 1:
            stop = body + 8
        elif wire == 5:
            stop = body + 4
        elif wire == 2:
            length, body = _varint(buf, body)
            stop = body + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, pos, body, stop))
        pos = stop
    return out


def _without(buf: Any, start: int, end: int, skip: int, keep: Any = None) -> bytes:
    """The fields of ``buf[start:end]`` but field ``skip``; ``keep(payload_start, end)`` rewrites those."""
    parts: list[bytes] = []
    for number, first, body, stop in _fields(buf, start, end):
        if number != skip:
            parts.append(bytes(buf[first:stop]))
        elif keep is not None:
            _, tag_end = _varint(buf, first)
            inner = keep(body, stop)
            parts.append(bytes(buf[first:tag_end]) + _encode_varint(len(inner)) + inner)
    return b"".join(parts)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def load_header(path: Path) -> onnx.ModelProto:
    """The model at ``path`` without the bytes of its initializers (their ``raw_data``), for summaries.

    The file is memory-mapped and walked field by field, so a model holding 2 GB of weights inline
    costs about its graph's size, not its weights'. Initializers keep their name, type and dims.

    Raises:
        ModelFileError: the file cannot be read or is not a protobuf.
    """
    import mmap

    graph_no = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    init_no = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    raw_no = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:

            def graph(start: int, end: int) -> bytes:
                return _without(buf, start, end, init_no, lambda s, e: _without(buf, s, e, raw_no))

            header = _without(buf, 0, len(buf), graph_no, graph)
    except (OSError, ValueError, IndexError) as exc:
        raise ModelFileError(f"cannot read {str(path)!r} as an ONNX model: {exc}") from exc
    return _parse(header, path.name)
