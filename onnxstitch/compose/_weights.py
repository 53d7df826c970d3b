"""Weights of a merge: loading parts without doubling memory, external data, checking big models.

* A part given as a path is loaded *without* its external data; each external tensor is read from the
  part's OWN folder straight into the merged model when it is stored (never resolved against the
  working directory, so two parts that both use ``weights.bin`` each keep their own numbers), and
  the merge never holds a second full copy of the weights.
* A part given as a ``ModelProto`` must carry its data in memory (``onnx.load`` does that by default);
  unresolved external references there cannot be resolved safely and are an error naming the part.
* The merged model is checked (full checker, strict shape inference) on a skeleton in which the big
  initializers stand in as graph inputs of the same type, so the check works past protobuf's 2 GB.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import onnx.checker
import onnx.helper

from onnxstitch.compose._versions import tensor_bytes
from onnxstitch.errors import ModelFileError, UnsafeModelError

log = logging.getLogger(__name__)

CHECK_INLINE_BYTES = 1024


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def load_path(key: str, path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, Path]:
    """Load a part file with its external data left on disk; return the model and its folder.

    Raises:
        ModelFileError: the file is missing, empty or not an ONNX model.
        UnsafeModelError: an external data reference points outside the model's folder.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"part {key!r}: model file {str(p)!r} does not exist or is not a file")
    if p.stat().st_size == 0:
        raise ModelFileError(f"part {key!r}: model file {str(p)!r} is empty")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelFileError(f"part {key!r}: {str(p)!r} is not a readable ONNX model: {exc}") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelFileError(f"part {key!r}: {str(p)!r} holds no graph (not an ONNX model?)")
    folder = p.resolve().parent
    for tensor in _all_initializers(model):
        if is_external(tensor):
            _external_file(key, tensor, folder)
    return model, folder


def _all_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [*model.graph.initializer, *(s.values for s in model.graph.sparse_initializer)]


def check_in_memory(key: str, model: onnx.ModelProto) -> None:
    """Refuse a ``ModelProto`` part whose external data was never loaded (its folder is unknown).

    Raises:
        ModelFileError: some initializer still refers to an external file.
    """
    missing = [t.name for t in _all_initializers(model) if is_external(t)]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ModelFileError(
            f"part {key!r} was given as a ModelProto whose external data ({shown}) is not loaded, "
            "and its folder is unknown",
            hint="pass the part as a path to its .onnx file (or onnx.load it with its external data)",
        )


def _external_file(key: str, tensor: onnx.TensorProto, folder: Path) -> Path:
    location = _external_info(tensor).get("location", "")
    rel = Path(location)
    if not location or rel.is_absolute() or ".." in rel.parts:
        raise UnsafeModelError(
            f"part {key!r}: tensor {tensor.name!r} refers to external data {location!r} "
            "outside its model folder",
            hint="keep external data files next to the model, referenced by a relative name",
        )
    target = folder / rel
    if target.is_symlink() or not target.resolve().is_relative_to(folder):
        raise UnsafeModelError(
            f"part {key!r}: external data {location!r} of tensor {tensor.name!r} is a link"
        )
    if not target.is_file():
        raise ModelFileError(
            f"part {key!r}: external data file {str(target)!r} of tensor {tensor.name!r} does not exist"
        )
    return target


def read_external(key: str, tensor: onnx.TensorProto, folder: Path | None) -> bytes:
    """The bytes of an external tensor, read from the part's own folder.

    Raises:
        ModelFileError: no folder is known, or the file is shorter than the tensor says.
    """
    if folder is None:
        check_in_memory(key, onnx.ModelProto(graph=onnx.GraphProto(initializer=[tensor])))
        raise ModelFileError(f"part {key!r}: tensor {tensor.name!r} has no data")  # pragma: no cover
    info = _external_info(tensor)
    path = _external_file(key, tensor, folder)
    offset = int(info.get("offset", "0") or 0)
    length = info.get("length")
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read(int(length)) if length else fh.read()
    if length and len(data) != int(length):
        raise ModelFileError(
            f"part {key!r}: external data {str(path)!r} is truncated for tensor {tensor.name!r}"
        )
    return data


def inline_copy(tensor: onnx.TensorProto, data: bytes, name: str, into: onnx.TensorProto) -> None:
    """Fill ``into`` with ``tensor``'s metadata and ``data`` as raw data (external references dropped)."""
    into.name = name
    into.data_type = tensor.data_type
    into.dims.extend(tensor.dims)
    if tensor.doc_string:
        into.doc_string = tensor.doc_string
    into.raw_data = data


def check_merged(model: onnx.ModelProto) -> None:
    """Full checker + strict shape inference on a skeleton of ``model`` (works past 2 GB).

    Raises:
        onnx.checker.ValidationError / onnx.shape_inference.InferenceError: the model is invalid.
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
    for tensor in src.initializer:
        if is_external(tensor) or tensor_bytes(tensor) > CHECK_INLINE_BYTES:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
        else:
            graph.initializer.append(tensor)
    onnx.checker.check_model(skeleton, full_check=True)
