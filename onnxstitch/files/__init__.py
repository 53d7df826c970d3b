"""Reading and writing ONNX model files safely.

``load`` refuses garbage and hostile files with a typed error *before* parsing what it can refuse
(empty, zip, pickle, HDF5, text...), refuses models newer than the installed onnxruntime, keeps
external data inside the model's folder and reads it itself, and can verify a sha256 manifest.
``save`` writes atomically, never mutates the model it is given, and moves big weights to external
data. ``as_model`` is what every public function that accepts "``ModelProto`` or path" calls.

Submodules: :mod:`~onnxstitch.files.sniff` (what a file looks like), :mod:`~onnxstitch.files.external`
(external data, contained), :mod:`~onnxstitch.files.manifest` (sha256 manifests),
:mod:`~onnxstitch.files.archive` (model bundles), :mod:`~onnxstitch.files.sandbox` (load in a
subprocess with limits), :mod:`~onnxstitch.files.describe` (the summary ``inspect`` prints),
:mod:`~onnxstitch.files._limits` (what onnxruntime runs).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from onnxstitch.errors import ModelFileError

if TYPE_CHECKING:
    import onnx

__all__ = ["ModelLike", "as_model", "check_file", "load", "save"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    ModelLike: TypeAlias = onnx.ModelProto | str | os.PathLike[str]


def __getattr__(name: str) -> Any:
    # ``onnx`` is imported on first use, not with this package: ``ox.Session(path)`` never needs it
    if name == "ModelLike":
        import onnx

        alias = onnx.ModelProto | str | os.PathLike[str]
        globals()[name] = alias
        return alias
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_path(path: object, *, what: str) -> Path:
    if isinstance(path, (str, os.PathLike)):
        return Path(path)
    raise ModelFileError(
        f"{what} must be an onnx.ModelProto or a path to an .onnx file, not {type(path).__name__}",
        hint="pass the model object or the file's path",
    )


def load(
    path: str | os.PathLike[str], *, verify: bool = False, trusted_external_data: bool = False
) -> onnx.ModelProto:
    """Load an ONNX model file safely, with its external data, into one self-contained ModelProto.

    Steps, each refusing with a typed error: the file is sniffed before parsing (empty, zip, pickle,
    HDF5, gzip/tar, text such as JSON/YAML/HTML/Python are named in the message; nothing is
    unpickled or unpacked); with ``verify`` its sha256 is checked against ``<path>.sha256.json``;
    the protobuf is parsed; an IR version or ``ai.onnx`` opset newer than the installed onnxruntime
    runs is refused; every external-data reference is validated (a relative path to a regular,
    single-link file inside the model's folder, no symlinks on the way, offset and length inside the
    file and matching the tensor); ``onnx.checker`` runs on the file; then the external bytes are
    read by us into the tensors.

    External data is always read into memory, so the returned model never points at files that a
    later step would resolve against another folder.  A file of 2 GB or more cannot be one protobuf.

    Args:
        path: the ``.onnx`` file. External data files must sit in its folder.
        verify: refuse the model unless its bytes (and its external data's) match the manifest
            written by ``save(..., manifest=True)``.
        trusted_external_data: you trust the folder's layout: external data may be reached
            through symlinks and hardlinks, wherever they lead (a Hugging Face cache links
            snapshots to blobs). Absolute and ``..`` locations, special files, offsets and lengths
            are still checked.

    Returns:
        A new ModelProto with all weights inline.

    Raises:
        ModelFileError: missing, empty, not ONNX (what it looks like is named), truncated, invalid,
            or external data missing / malformed.
        UnsafeModelError: external data would be read from outside the folder (``..``, absolute,
            symlink, hardlink, not a regular file).
        IntegrityError: ``verify`` and the manifest is missing or the bytes changed.
        VersionError: IR version or opset beyond the installed onnxruntime.
        ModelTooLargeError: the ``.onnx`` file itself is 2 GB or more.
    """
    from onnxstitch.files._read import load_model

    p = _as_path(path, what="path")
    model = load_model(p, verify=verify, trusted_layout=trusted_external_data)
    logger.debug("loaded %s (%d nodes)", p, len(model.graph.node))
    return model


def check_file(path: str | os.PathLike[str], *, trusted_external_data: bool = False) -> list[Path]:
    """Validate a model file and its external-data references without reading any weights.

    For callers that hand a *path* to onnxruntime (which would follow a hardlink): call this first.
    ``trusted_external_data`` as in :func:`load`.

    Returns:
        The external data files the model uses (resolved, inside its folder).

    Raises:
        ModelFileError, UnsafeModelError, VersionError, ModelTooLargeError: as :func:`load`.
    """
    from onnxstitch.files._read import external_refs

    _, refs = external_refs(_as_path(path, what="path"), trusted_layout=trusted_external_data)
    return sorted({ref.path for ref in refs})


def save(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    manifest: bool = False,
    external_data: bool | None = None,
    size_threshold: int = 1024,
) -> Path:
    """Save ``model`` to ``path`` atomically, without mutating it.

    Each file is written to a temp file in the target folder, synced, then renamed over the target,
    so a crash or an error never leaves a half-written model.  With external data, initializers of
    ``size_threshold`` bytes or more go to ``<name>.onnx.data`` (64-byte aligned) next to the model.

    Args:
        model: the model to write (never modified).
        path: the target ``.onnx`` file; its folder must exist.
        manifest: also write ``<name>.onnx.sha256.json`` with the sha256 of every file written, for
            ``load(..., verify=True)``. Without it, a stale manifest at that name is removed.
        external_data: ``True`` always writes big initializers to ``<name>.onnx.data``; ``False``
            never does; ``None`` (default) does when the model is past 2 GB (2·10⁹ bytes).
        size_threshold: initializers smaller than this many bytes stay inline.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ModelFileError: ``model`` is not a ModelProto, the folder is missing, or the model still
            refers to external data that was never loaded.
        ModelTooLargeError: the model does not fit protobuf's 2 GB limit (``external_data=False``,
            or big tensors inside nodes rather than initializers).
    """
    import onnx

    from onnxstitch.files import manifest as _manifest
    from onnxstitch.files._write import remove_quietly, save_model

    if not isinstance(model, onnx.ModelProto):
        raise ModelFileError(f"save() needs an onnx.ModelProto, not {type(model).__name__}")
    p = _as_path(path, what="path")
    data_files = save_model(model, p, external_data=external_data, size_threshold=size_threshold)
    if manifest:
        _manifest.write_manifest(p, data_files)
    else:
        remove_quietly(_manifest.manifest_path(p))
    return p


def as_model(model: ModelLike) -> onnx.ModelProto:
    """Return ``model`` itself if it is a ``ModelProto`` (callers must not mutate it), else ``load`` it.

    Raises:
        ModelFileError: ``model`` is neither a ModelProto nor a path, or as :func:`load`.
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    return load(_as_path(model, what="model"))


def _external_files_of(path: Path) -> list[str]:
    """External data file names (relative to the folder) of the model at ``path``, validated."""
    from onnxstitch.files._read import external_refs

    _, refs = external_refs(path)
    return sorted({ref.name for ref in refs})
