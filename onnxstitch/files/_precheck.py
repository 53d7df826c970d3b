"""The checks a model *path* needs before onnxruntime opens it, without parsing it in Python.

A deploy process opens a model by its path and lets onnxruntime parse it; parsing it in Python
first would cost the import of ``onnx`` (more than onnxruntime itself takes to start) and a second
parse. What must happen before onnxruntime reads anything is the containment of external data:
onnxruntime follows a hardlink or a ``../`` location out of the model's folder. A tensor can only
name an external file through an ``external_data`` entry whose key is the string ``location``, and a
protobuf string is stored as its raw bytes, so a file in which the bytes ``location`` never occur
cannot make onnxruntime read another file. Only a file that contains them (or is in onnxruntime's
own ``.ort`` format) goes through the full check, :func:`onnxstitch.files.check_file`.

Everything else the full check refuses (a truncated or foreign file, an opset newer than
onnxruntime runs) onnxruntime refuses as well; the caller runs the full check *after* such a
refusal to raise the typed error that names the problem. This module must not import ``onnx``.
"""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path

from onnxstitch.errors import ModelFileError, ModelTooLargeError
from onnxstitch.files.sniff import HEAD_BYTES, describe_bytes

__all__ = ["PROTOBUF_LIMIT", "needs_full_check", "stat_model"]

#: protobuf cannot serialize or parse one message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1

#: the ``external_data`` key naming a tensor's file (onnx's external_data_helper and onnxruntime)
_LOCATION = b"location"
#: onnxruntime's own format: a flatbuffer with this file identifier at offset 4, or a ``.ort`` file
_ORT_FORMAT = b"ORTM"


def stat_model(path: Path) -> os.stat_result:
    """``stat`` of a model file that must be a regular file under protobuf's 2 GB limit.

    Raises:
        ModelFileError: missing, unreadable, a folder, or not a regular file.
        ModelTooLargeError: the file is 2 GB or more.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"model file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {str(path)!r}: {exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise ModelFileError(
            f"{str(path)!r} is a folder, not an ONNX model file",
            hint="name the .onnx file inside it (a Keras SavedModel folder converts with from_keras)",
        )
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{str(path)!r} is not a regular file (device, fifo or socket)")
    if st.st_size >= PROTOBUF_LIMIT:
        raise ModelTooLargeError(
            f"{path.name} is {st.st_size / 1e9:.2f} GB, past protobuf's 2 GB limit for one ONNX file",
            hint=(
                "an ONNX model this big must keep its weights in external data: save it with "
                "onnxstitch.save(model, path, external_data=True) "
                "(or onnx.save(..., save_as_external_data=True))"
            ),
        )
    return st


def needs_full_check(path: Path) -> bool:
    """Refuse what the first bytes show is not ONNX; say whether the file needs the full check.

    Returns:
        ``True`` when the file may name external data (the bytes ``location`` occur in it) or is in
        onnxruntime's ``.ort`` format: run :func:`onnxstitch.files.check_file` before onnxruntime
        opens it. ``False`` when onnxruntime can open it without reading any other file.

    Raises:
        ModelFileError: missing, not a regular file, unreadable, or recognisably not ONNX (empty,
            zip, pickle, HDF5, text ... named in the message).
        ModelTooLargeError: the file is 2 GB or more.
    """
    st = stat_model(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
            description = describe_bytes(head)
            if description is not None:
                raise ModelFileError(f"{path.name} is {description}")
            if path.suffix.lower() == ".ort" or head[4:8] == _ORT_FORMAT:
                return True
            if st.st_size <= len(head):
                return _LOCATION in head
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return buf.find(_LOCATION) != -1
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {str(path)!r}: {exc}") from exc
