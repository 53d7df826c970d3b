"""External data, contained: every tensor's ``location`` is checked before one byte is read.

ONNX keeps big weights outside the ``.onnx`` file, in files named by each tensor's
``external_data`` entries (``location``, ``offset``, ``length``).  A hostile model can name any
file: ``../../home/user/.ssh/id_rsa``, ``/etc/passwd``, a symlink, or a *hardlink* to a file outside
the folder (onnxruntime follows hardlinks).  Here the location must be a plain relative path to a
regular file inside the model's folder, reached without symlinks, with one link only, and the
offset and length must lie inside that file and match the tensor's declared size.  Only then are
the bytes read — by us, through a file descriptor opened with ``O_NOFOLLOW`` and re-checked
(same inode) — into the tensor, so the returned model is self-contained.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

import onnx
from onnx import helper

from onnxstitch.errors import ModelFileError, UnsafeModelError

__all__ = [
    "REF_KEY",
    "ExternalRef",
    "ExternalStore",
    "check_external_data",
    "copy_ref",
    "iter_ref",
    "iter_tensors",
    "load_external_data",
    "read_ref",
    "tensor_nbytes",
    "uses_external_data",
]

#: the private ``external_data`` key of :class:`ExternalStore`'s markers
REF_KEY = "onnxstitch.ref"

_COPY_HINT = "make it a plain file in the model's folder (copy it: `cp data data.tmp && mv data.tmp data`)"


@dataclass(frozen=True)
class ExternalRef:
    """One validated external-data reference.

    Attributes:
        tensor: the tensor's name.
        location: the location as written in the model.
        path: the file it names, resolved, inside the model folder.
        offset: where the tensor's bytes start.
        length: how many bytes.
        device: ``st_dev`` of the file when checked.
        inode: ``st_ino`` of the file when checked.
        name: the location as a clean relative POSIX path (``weights/w.bin``), for manifests.
        links_ok: the caller trusted the folder's layout (symlinks, hardlinks allowed).
    """

    tensor: str
    location: str
    path: Path
    offset: int
    length: int
    device: int
    inode: int
    name: str = ""
    links_ok: bool = False


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        if len(node.attribute):
            yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from _graph_tensors(sub)


def iter_tensors(model: onnx.ModelProto, *, top_initializers: bool = True) -> Iterator[onnx.TensorProto]:
    """Yield every tensor of ``model``: initializers, sparse ones, attributes, subgraphs, functions.

    With ``top_initializers=False`` the main graph's (dense) initializers are left out.
    """
    if model.HasField("graph"):
        if top_initializers:
            yield from _graph_tensors(model.graph)
        else:
            for sparse in model.graph.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            for node in model.graph.node:
                if len(node.attribute):
                    yield from _node_tensors(node)
    for function in model.functions:
        for node in function.node:
            if len(node.attribute):
                yield from _node_tensors(node)


def uses_external_data(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor`` keeps its bytes in an external file."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL


# element types packed below one byte per element: bits per element
_SUB_BYTE_BITS: dict[int, int] = {
    int(getattr(onnx.TensorProto, name)): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a fixed-size tensor's data takes, from its dims and type (its data is not touched).

    Returns ``None`` for strings and unknown types.
    """
    try:
        np_dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if tensor.data_type == onnx.TensorProto.STRING or any(d < 0 for d in tensor.dims):
        return None
    count = int(math.prod(tensor.dims))
    bits = _SUB_BYTE_BITS.get(int(tensor.data_type))
    if bits is not None:
        return (count * bits + 7) // 8
    return count * int(np_dtype.itemsize)


def _check_location(tensor: str, location: str) -> PurePosixPath:
    """Refuse absolute, parent-relative and odd locations; return the relative path."""
    where = f"tensor {tensor!r} external data location {location!r}"
    if not location:
        raise ModelFileError(f"{where}: empty location", hint="re-save the model with onnxstitch.save")
    if "\x00" in location:
        raise UnsafeModelError(f"{where} contains a NUL byte", hint="this model file is corrupt or hostile")
    windows = PureWindowsPath(location)
    posix = PurePosixPath(location.replace("\\", "/"))
    if posix.is_absolute() or windows.is_absolute() or windows.drive or location.startswith(("/", "\\")):
        raise UnsafeModelError(
            f"{where} is an absolute path; external data must lie in the model's folder",
            hint="re-save it with relative external data: onnxstitch.save(model, path, external_data=True)",
        )
    if ".." in posix.parts:
        raise UnsafeModelError(
            f"{where} climbs out of the model's folder with '..'",
            hint="external data must be a file in the model's folder; do not load this file",
        )
    return posix


def _stat_trusted(where: str, current: Path) -> tuple[Path, os.stat_result]:
    """Stat through links (the caller trusts the folder's layout); only existence and kind checked."""
    try:
        st = current.stat()
    except FileNotFoundError:
        raise ModelFileError(f"{where}: file {str(current)!r} does not exist") from None
    except OSError as exc:
        raise ModelFileError(f"{where}: cannot read {str(current)!r}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeModelError(f"{where}: {str(current)!r} is not a regular file (device, fifo or folder)")
    return current.resolve(), st


def _walk_inside(
    root: Path, tensor: str, location: str, rel: PurePosixPath, *, links_ok: bool
) -> tuple[Path, os.stat_result]:
    """Follow ``rel`` from ``root`` one component at a time, refusing symlinks; stat the file."""
    where = f"tensor {tensor!r} external data {location!r}"
    current = root
    parts = [p for p in rel.parts if p not in ("", ".")]
    if not parts:
        raise ModelFileError(f"{where} names the model's folder, not a file")
    if links_ok:
        return _stat_trusted(where, root.joinpath(*parts))
    for index, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise ModelFileError(
                f"{where}: file {str(current)!r} does not exist",
                hint="copy the model's data file next to the .onnx file, under the name the model expects",
            ) from None
        except OSError as exc:
            raise ModelFileError(f"{where}: cannot read {str(current)!r}: {exc}") from exc
        if stat.S_ISLNK(st.st_mode):
            kind = "the data file" if index == len(parts) - 1 else f"parent folder {part!r}"
            raise UnsafeModelError(
                f"{where}: {kind} is a symlink; symlinked external data is refused", hint=_COPY_HINT
            )
        if index < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise ModelFileError(f"{where}: {str(current)!r} is not a folder")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeModelError(f"{where}: {str(current)!r} is not a regular file (device, fifo or folder)")
    if st.st_nlink > 1:
        raise UnsafeModelError(
            f"{where}: {str(current)!r} is a hardlink ({st.st_nlink} links); it may be a file from outside "
            "the model's folder, and onnxruntime would follow it",
            hint=_COPY_HINT,
        )
    resolved = current.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UnsafeModelError(f"{where} resolves to {str(resolved)!r}, outside the model's folder")
    return resolved, st


def _parse_int(tensor: str, location: str, key: str, raw: str) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        raise ModelFileError(
            f"tensor {tensor!r} external data {location!r}: {key} {raw!r} is not a number",
            hint="the model file is corrupt; re-export it",
        ) from None
    if value < 0:
        raise ModelFileError(
            f"tensor {tensor!r} external data {location!r}: negative {key} {value}",
            hint="the model file is corrupt; re-export it",
        )
    return value


def _check_tensor(root: Path, tensor: onnx.TensorProto, *, links_ok: bool) -> ExternalRef:
    entries = {e.key: e.value for e in tensor.external_data}
    name = tensor.name or "<unnamed>"
    location = entries.get("location", "")
    rel = _check_location(name, location)
    path, st = _walk_inside(root, name, location, rel, links_ok=links_ok)
    offset = _parse_int(name, location, "offset", entries.get("offset", "0"))
    size = st.st_size
    if offset > size:
        raise ModelFileError(
            f"tensor {name!r} external data {location!r}: offset {offset} is past the file's end "
            f"({size} bytes)",
            hint="the data file is truncated or belongs to another model",
        )
    length = _parse_int(name, location, "length", entries["length"]) if "length" in entries else size - offset
    if offset + length > size:
        raise ModelFileError(
            f"tensor {name!r} external data {location!r}: offset {offset} + length {length} is past the "
            f"file's end ({size} bytes)",
            hint="the data file is truncated or belongs to another model",
        )
    expected = tensor_nbytes(tensor)
    if expected is not None and expected != length:
        raise ModelFileError(
            f"tensor {name!r} external data {location!r}: {length} bytes stored, but its shape "
            f"{list(tensor.dims)} and type need {expected}",
            hint="the data file does not belong to this model; re-export it",
        )
    clean = "/".join(p for p in rel.parts if p not in ("", "."))
    return ExternalRef(name, location, path, offset, length, st.st_dev, st.st_ino, clean, links_ok)


def check_external_data(
    model: onnx.ModelProto, model_dir: str | os.PathLike[str], *, trusted_layout: bool = False
) -> list[ExternalRef]:
    """Validate every external-data reference of ``model`` against ``model_dir``; read nothing.

    Args:
        model: a model parsed without its external data.
        model_dir: the folder of the ``.onnx`` file; the only place data may come from.
        trusted_layout: allow symlinks and hardlinks on the way to the data files, wherever they
            lead (a Hugging Face cache links snapshots to blobs). Absolute and ``..`` locations,
            special files and offsets/lengths are still checked.

    Returns:
        One :class:`ExternalRef` per external tensor, in model order.

    Raises:
        UnsafeModelError: a location is absolute, climbs out with ``..``, goes through a symlink,
            is a hardlink, is not a regular file, or resolves outside the folder.
        ModelFileError: a data file is missing, or an offset/length is malformed or past its end.
    """
    root = Path(model_dir)
    return [
        _check_tensor(root, t, links_ok=trusted_layout) for t in iter_tensors(model) if uses_external_data(t)
    ]


_CHUNK = 1 << 24


@contextlib.contextmanager
def _open_checked(ref: ExternalRef) -> Iterator[int]:
    """A descriptor on ``ref``'s file, opened without following links and re-checked (same inode)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    where = f"tensor {ref.tensor!r} external data {ref.location!r}"
    try:
        fd = os.open(ref.path, flags)
    except OSError as exc:
        raise UnsafeModelError(f"{where}: cannot open {str(ref.path)!r} safely: {exc}") from exc
    try:
        st = os.fstat(fd)
        swapped = (st.st_dev, st.st_ino) != (ref.device, ref.inode) or not stat.S_ISREG(st.st_mode)
        if swapped or (st.st_nlink > 1 and not ref.links_ok):
            raise UnsafeModelError(f"{where}: {str(ref.path)!r} changed while the model was being loaded")
        if ref.offset + ref.length > st.st_size:
            raise ModelFileError(f"{where}: file shrank while the model was being loaded")
        yield fd
    finally:
        os.close(fd)


def _pread_all(fd: int, ref: ExternalRef, start: int, size: int) -> bytes:
    data = os.pread(fd, size, ref.offset + start)  # one read; the kernel caps one call near 2 GiB
    if len(data) == size:
        return data
    chunks, position = [data], start + len(data)
    while position < start + size:
        chunk = os.pread(fd, start + size - position, ref.offset + position)
        if not chunk:
            raise ModelFileError(
                f"tensor {ref.tensor!r} external data {ref.location!r}: unexpected end of file"
            )
        chunks.append(chunk)
        position += len(chunk)
    return b"".join(chunks)


def read_ref(ref: ExternalRef, start: int = 0, size: int | None = None) -> bytes:
    """The bytes of a validated reference (or ``size`` of them from ``start``), read safely.

    Raises:
        UnsafeModelError: the data file was swapped (other inode, a link) since it was checked.
        ModelFileError: the data file shrank since it was checked.
    """
    size = ref.length - start if size is None else min(size, ref.length - start)
    with _open_checked(ref) as fd:
        return _pread_all(fd, ref, start, max(0, size))


def iter_ref(ref: ExternalRef, chunk: int = _CHUNK) -> Iterator[bytes]:
    """The bytes of a validated reference in chunks (one open, checked like :func:`read_ref`)."""
    with _open_checked(ref) as fd:
        for start in range(0, ref.length, chunk):
            yield _pread_all(fd, ref, start, min(chunk, ref.length - start))


def copy_ref(ref: ExternalRef, out: BinaryIO) -> int:
    """Append a validated reference's bytes to ``out``, file to file (in the kernel where it can).

    ``out`` must be a file opened for writing, positioned at its end. Returns the bytes copied.

    Raises:
        UnsafeModelError, ModelFileError: as :func:`read_ref`.
    """
    out.flush()
    copied = 0
    with _open_checked(ref) as fd:
        try:
            while copied < ref.length:
                step = min(_CHUNK * 8, ref.length - copied)
                n = os.copy_file_range(fd, out.fileno(), step, ref.offset + copied)
                if n <= 0:
                    break
                copied += n
        except (OSError, AttributeError):  # another file system, an old kernel, not Linux: user space
            pass
        out.seek(0, os.SEEK_END)  # the buffered file's idea of its position follows the kernel's
        for start in range(copied, ref.length, _CHUNK):
            out.write(_pread_all(fd, ref, start, min(_CHUNK, ref.length - start)))
    return ref.length


class ExternalStore:
    """Tensors that stay on disk: each points, by a private marker, at its validated :class:`ExternalRef`.

    A model adopted here keeps its external tensors as references (nothing is read); copies of those
    tensors (into a merged model, into subgraphs) carry the marker along, so every one of them is
    read, later, from its OWN model's folder through :func:`read_ref` — never by resolving its
    ``location`` against some other folder. Markers found in a model before adoption are dropped,
    so only the ones written here are trusted.
    """

    def __init__(self) -> None:
        self._refs: list[ExternalRef] = []

    def __bool__(self) -> bool:
        return bool(self._refs)

    def adopt(self, model: onnx.ModelProto, refs: list[ExternalRef]) -> None:
        """Mark the external tensors of ``model`` (ours) with ``refs`` (from :func:`check_external_data`)."""
        for tensor in iter_tensors(model):
            if any(e.key == REF_KEY for e in tensor.external_data):
                kept = [(e.key, e.value) for e in tensor.external_data if e.key != REF_KEY]
                del tensor.external_data[:]
                for key, value in kept:
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
        tensors = [t for t in iter_tensors(model) if uses_external_data(t)]
        for tensor, ref in zip(tensors, refs, strict=True):
            entry = tensor.external_data.add()
            entry.key, entry.value = REF_KEY, str(len(self._refs))
            self._refs.append(ref)

    def ref_of(self, tensor: onnx.TensorProto) -> ExternalRef | None:
        """The reference a marked external tensor stands for, or ``None``."""
        if not uses_external_data(tensor):
            return None
        for entry in tensor.external_data:
            if entry.key == REF_KEY:
                index = int(entry.value)
                return self._refs[index] if 0 <= index < len(self._refs) else None
        return None

    def inline(self, model: onnx.ModelProto, *, top_initializers: bool = True) -> None:
        """Read every marked tensor of ``model`` (a model we own), wherever it sits, into the tensor.

        With ``top_initializers=False`` the main graph's initializers are left on disk.
        """
        for tensor in iter_tensors(model, top_initializers=top_initializers):
            ref = self.ref_of(tensor)
            if ref is not None:
                tensor.raw_data = read_ref(ref)
                del tensor.external_data[:]
                tensor.ClearField("data_location")


def load_external_data(model: onnx.ModelProto, refs: list[ExternalRef]) -> None:
    """Read the validated bytes of ``refs`` into ``model``'s tensors, in place (a model we own).

    Raises:
        UnsafeModelError: a data file was swapped between the check and the read.
        ModelFileError: a data file shrank between the check and the read.
    """
    tensors = [t for t in iter_tensors(model) if uses_external_data(t)]
    for tensor, ref in zip(tensors, refs, strict=True):
        tensor.raw_data = read_ref(ref)
        del tensor.external_data[:]
        tensor.ClearField("data_location")
