"""Weights of a merge: loading parts without doubling memory, external data, checking big models.

* A part given as a path is read by the ONE hardened reader of :mod:`onnxstitch.files` (the same
  checks as ``ox.load``: the file is sniffed and its versions checked, and every external reference
  must be a plain, single-link file inside the part's own folder, reached without symlinks, its
  offset and length inside the file and matching the tensor's dims). Nothing is read yet: the part's
  external tensors are adopted by an :class:`~onnxstitch.files.external.ExternalStore`, which reads
  each one later from its OWN part's folder (never resolved against the working directory, so two
  parts that both use ``weights.bin`` each keep their own numbers). External tensors that are not
  top-level initializers (``Constant`` attributes, subgraph initializers, sparse values, functions)
  are read into the part at once: they are re-homed by construction. Top-level initializers stay on
  disk until the merged model is built (in memory) or written (file to file, ``save_to=``).
* A part given as a ``ModelProto`` must carry its data in memory (``onnx.load`` does that by default);
  unresolved external references there cannot be resolved safely and are an error naming the part.
* The merged model is checked (full checker, strict shape inference) on a skeleton in which the big
  initializers stand in as graph inputs of the same type, so the check works past protobuf's 2 GB.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import onnx
import onnx.checker
import onnx.helper

from onnxstitch.compose._versions import tensor_bytes
from onnxstitch.errors import ModelFileError, ModelTooLargeError, VersionError
from onnxstitch.files.external import ExternalStore, iter_ref, iter_tensors, read_ref, uses_external_data

log = logging.getLogger(__name__)

CHECK_INLINE_BYTES = 1024
_SAMPLE = 1 << 16


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def load_path(key: str, path: str | os.PathLike[str], store: ExternalStore) -> tuple[onnx.ModelProto, Path]:
    """Load a part file through the hardened reader, its top-level external weights left on disk.

    Raises:
        ModelFileError: the file is missing, empty or not an ONNX model, or external data is missing,
            malformed, or does not match its tensor.
        UnsafeModelError: an external data reference leaves the part's folder (``..``, absolute,
            symlink, hardlink, special file).
        VersionError: the part is stamped newer than the installed onnxruntime runs.
        ModelTooLargeError: the ``.onnx`` file itself is 2 GB or more.
    """
    from onnxstitch.files._read import external_refs

    p = Path(path)
    try:
        model, refs = external_refs(p)
    except (ModelFileError, VersionError, ModelTooLargeError) as exc:
        raise type(exc)(f"part {key!r}: {exc}") from exc
    store.adopt(model, refs)
    store.inline(model, top_initializers=False)
    return model, p.resolve().parent


def check_in_memory(key: str, model: onnx.ModelProto) -> None:
    """Refuse a ``ModelProto`` part whose external data was never loaded (its folder is unknown).

    Raises:
        ModelFileError: some tensor (initializer, attribute, subgraph, sparse, function) still refers
            to an external file.
    """
    missing = [t.name or "<unnamed>" for t in iter_tensors(model) if uses_external_data(t)]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ModelFileError(
            f"part {key!r} was given as a ModelProto whose external data ({shown}) is not loaded, "
            "and its folder is unknown",
            hint="pass the part as a path to its .onnx file (or onnx.load it with its external data)",
        )


def payload(tensor: onnx.TensorProto) -> bytes:
    """The bytes that define an in-memory tensor's value (raw data, or the serialized typed fields)."""
    if tensor.HasField("raw_data"):
        return bytes(tensor.raw_data)
    bare = onnx.TensorProto()
    bare.CopyFrom(tensor)
    bare.ClearField("name")
    bare.ClearField("doc_string")
    data: bytes = bare.SerializeToString(deterministic=True)
    return data


def sample_of(data: bytes) -> bytes:
    """A cheap fingerprint: length, first and last 64 KiB."""
    head, tail = data[:_SAMPLE], data[-_SAMPLE:]
    return hashlib.sha256(len(data).to_bytes(8, "little") + head + tail).digest()


def stored_sample(tensor: onnx.TensorProto, store: ExternalStore) -> bytes:
    """:func:`sample_of` the tensor's value, reading only its ends when it is still on disk."""
    ref = store.ref_of(tensor)
    if ref is None:
        return sample_of(payload(tensor))
    head = read_ref(ref, 0, _SAMPLE)
    tail = read_ref(ref, max(0, ref.length - _SAMPLE))
    return hashlib.sha256(ref.length.to_bytes(8, "little") + head + tail).digest()


def stored_digest(tensor: onnx.TensorProto, store: ExternalStore) -> bytes:
    """sha256 of the tensor's value, streamed from disk when it is still there."""
    ref = store.ref_of(tensor)
    if ref is None:
        return hashlib.sha256(payload(tensor)).digest()
    digest = hashlib.sha256()
    for chunk in iter_ref(ref):
        digest.update(chunk)
    return digest.digest()


def inline_copy(tensor: onnx.TensorProto, data: bytes, name: str, into: onnx.TensorProto) -> None:
    """Fill ``into`` with ``tensor``'s metadata and ``data`` as raw data (external references dropped)."""
    into.name = name
    into.data_type = tensor.data_type
    into.dims.extend(tensor.dims)
    if tensor.doc_string:
        into.doc_string = tensor.doc_string
    into.raw_data = data


def weightless(
    model: onnx.ModelProto, *, inline_limit: int = -1, weights: Iterable[onnx.TensorProto] = ()
) -> onnx.ModelProto:
    """A skeleton of ``model`` for the checker and shape inference: its initializers as typed inputs.

    Initializers of at most ``inline_limit`` bytes (and not external) stay; the others become graph
    inputs of the same type and shape, so the skeleton is small whatever the weights weigh.
    ``weights``: initializers of the model kept out of it (a part's big ones), treated the same. The
    one skeleton builder of compose's checks and inference (the merged model's check, ``extract``'s
    types, the dims through a part).
    """
    skeleton = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(skeleton, name, getattr(model, name))
    for name in ("opset_import", "metadata_props", "functions"):
        getattr(skeleton, name).extend(getattr(model, name))
    src, graph = model.graph, skeleton.graph
    graph.name = src.name
    for name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, name).extend(getattr(src, name))
    declared = {vi.name for vi in src.input}
    for tensor in itertools.chain(src.initializer, weights):
        if not is_external(tensor) and tensor_bytes(tensor) <= inline_limit:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    return skeleton


def check_merged(model: onnx.ModelProto) -> None:
    """Full checker + strict shape inference on a skeleton of ``model`` (works past 2 GB).

    Raises:
        onnx.checker.ValidationError / onnx.shape_inference.InferenceError: the model is invalid.
    """
    onnx.checker.check_model(weightless(model, inline_limit=CHECK_INLINE_BYTES), full_check=True)
