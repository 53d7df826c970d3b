"""sha256 manifests: detect a model whose bytes changed since it was saved.

``save(model, "m.onnx", manifest=True)`` writes ``m.onnx.sha256.json`` next to the model::

    {"format": "onnxstitch.sha256/1",
     "files": {"m.onnx": "<hex sha256>", "m.onnx.data": "<hex sha256>"}}

File names are relative to the model's folder.  A flipped weight bit passes ``onnx.checker`` and
runs; only a digest catches it.  ``load(path, verify=True)`` checks the model file before parsing
it and every external data file before reading it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from onnxstitch.errors import IntegrityError

__all__ = ["FORMAT", "manifest_path", "read_manifest", "sha256_file", "verify_file", "write_manifest"]

FORMAT = "onnxstitch.sha256/1"
_CHUNK = 1 << 20


def manifest_path(model_path: str | os.PathLike[str]) -> Path:
    """Return where the manifest of ``model_path`` lives: ``<model>.sha256.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".sha256.json")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _create_hint(model_path: Path) -> str:
    return (
        f"if you trust {model_path.name} as it is now, write a manifest with "
        f"onnxstitch.files.manifest.write_manifest({str(model_path)!r}) "
        "(or onnxstitch.save(model, path, manifest=True))"
    )


def write_manifest(model_path: str | os.PathLike[str], data_files: list[str] | None = None) -> Path:
    """Write (atomically) the sha256 manifest of a model file and its external data files.

    Args:
        model_path: the ``.onnx`` file.
        data_files: external data file names relative to the model's folder; ``None`` loads the model
            (safely, with every external-data check) to find them.

    Returns:
        The manifest's path.

    Raises:
        ModelFileError: ``data_files`` is ``None`` and the model cannot be loaded safely.
    """
    from onnxstitch.files._atomic import atomic_write_bytes

    p = Path(model_path)
    if data_files is None:
        from onnxstitch.files import _external_files_of

        data_files = _external_files_of(p)
    files = {p.name: sha256_file(p)}
    for name in sorted(set(data_files)):
        files[name] = sha256_file(p.parent / name)
    body = json.dumps({"format": FORMAT, "files": files}, indent=2, sort_keys=True) + "\n"
    target = manifest_path(p)
    atomic_write_bytes(target, body.encode("utf-8"))
    return target


def read_manifest(model_path: str | os.PathLike[str]) -> dict[str, str]:
    """Return ``{relative file name: sha256}`` from the manifest of ``model_path``.

    Raises:
        IntegrityError: the manifest is missing or malformed.
    """
    p = Path(model_path)
    target = manifest_path(p)
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(
            f"cannot verify {p.name}: no manifest {target.name} next to it", hint=_create_hint(p)
        ) from None
    except OSError as exc:
        raise IntegrityError(f"cannot read the manifest {str(target)!r}: {exc}") from exc
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise IntegrityError(
            f"manifest {target.name} is not valid JSON: {exc}", hint=_create_hint(p)
        ) from exc
    files = data.get("files") if isinstance(data, dict) else None
    ok = isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    if not ok or data.get("format") != FORMAT:
        raise IntegrityError(f"manifest {target.name} is not an {FORMAT} manifest", hint=_create_hint(p))
    return {str(k): str(v) for k, v in files.items()}  # type: ignore[union-attr]


def verify_file(manifest: dict[str, str], model_path: Path, name: str) -> None:
    """Check that file ``name`` (relative to the model's folder) matches ``manifest``.

    Raises:
        IntegrityError: the file is not listed, or its bytes changed.
    """
    target = manifest_path(model_path).name
    expected = manifest.get(name)
    if expected is None:
        raise IntegrityError(
            f"{name} is not listed in the manifest {target}; it was not part of the model when it was saved",
            hint=_create_hint(model_path),
        )
    actual = sha256_file(model_path.parent / name)
    if actual != expected:
        raise IntegrityError(
            f"{name} changed since the manifest {target} was written (sha256 {actual[:16]}…, "
            f"expected {expected[:16]}…); refusing to load it",
            hint="restore the original file, or re-download the model from a source you trust",
        )
