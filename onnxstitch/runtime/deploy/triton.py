"""Write a merged model as a Triton Inference Server model repository.

Layout (the format Triton and KServe's Triton runtime read)::

    REPOSITORY/NAME/config.pbtxt
    REPOSITORY/NAME/VERSION/model.onnx      (+ model.onnx.data when the weights are external)

The config is generated from the model's signature: every input and output with its ``TYPE_*`` and
dims. When dim 0 of every input and output is one shared symbol (the ``batch`` dim onnxstitch's
converters and composer give only to a dim the model shows to be the batch), ``max_batch_size`` is
set, the batch dim is left out of ``dims`` and dynamic batching is on; other symbolic dims are
``-1``. Otherwise batching is off (``onnxstitch inspect`` says why).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxstitch._batching import batching
from onnxstitch.errors import DeployError
from onnxstitch.files import ModelLike, as_model, save

__all__ = [
    "TensorSpec",
    "TritonDeployment",
    "deploy_triton",
    "latest_version",
    "model_signature",
    "triton_config",
    "validate_model_name",
]

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TENSOR_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,255}$")
DEFAULT_MAX_BATCH_SIZE = 64

_TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.STRING: "TYPE_STRING",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton sees it: name, ``TYPE_*`` and full ONNX shape."""

    name: str
    data_type: str
    shape: tuple[int | str | None, ...]


@dataclass
class TritonDeployment:
    """What :func:`deploy_triton` wrote (or would write, with ``dry_run=True``)."""

    repository: Path
    name: str
    version: int
    config_text: str
    max_batch_size: int
    files: list[Path] = field(default_factory=list)
    dry_run: bool = False
    previous: Path | None = None
    """The model file of the newest version that was there before (``version="next"``), else None."""
    batching_off: str = ""  # why the model's signature keeps dynamic batching off ("" when it allows it)

    @property
    def model_dir(self) -> Path:
        """``REPOSITORY/NAME``."""
        return self.repository / self.name

    @property
    def config_path(self) -> Path:
        """``REPOSITORY/NAME/config.pbtxt``."""
        return self.model_dir / "config.pbtxt"

    @property
    def model_path(self) -> Path:
        """``REPOSITORY/NAME/VERSION/model.onnx``."""
        return self.model_dir / str(self.version) / "model.onnx"


def validate_model_name(name: str) -> str:
    """Return ``name`` if Triton (and a URL path) can serve it, else raise.

    Raises:
        DeployError: the name is empty, too long, or has characters outside ``[A-Za-z0-9_.-]``.
    """
    if not _NAME_RE.match(name) or name in {".", ".."}:
        raise DeployError(
            f"model name {name!r} cannot be served: a Triton model name is a folder name and part of "
            "the URL path",
            hint="use 1-128 characters from A-Z a-z 0-9 _ . - starting with a letter or digit",
        )
    return name


def _shape(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    dims: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def model_signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Return the graph inputs and outputs of ``model`` as Triton tensor specs.

    Raises:
        DeployError: listing every input/output Triton cannot serve (non-tensor types, dtypes
            Triton has no ``TYPE_*`` for, unknown rank, names outside a safe alphabet).
    """
    initializers = {t.name for t in model.graph.initializer}
    problems: list[str] = []

    def convert(vi: onnx.ValueInfoProto, role: str) -> TensorSpec | None:
        if not _TENSOR_NAME_RE.match(vi.name):
            problems.append(
                f"{role} {vi.name!r}: name must match [A-Za-z0-9_][A-Za-z0-9_.:/-]* "
                "(rename it, e.g. with the `outputs=`/`inputs=` names of ox.merge)"
            )
        if vi.type.WhichOneof("value") != "tensor_type":
            problems.append(f"{role} {vi.name!r}: a {vi.type.WhichOneof('value')} is not a tensor")
            return None
        elem = vi.type.tensor_type.elem_type
        if elem not in _TRITON_TYPES:
            type_name = onnx.TensorProto.DataType.Name(elem)
            problems.append(
                f"{role} {vi.name!r}: dtype {type_name} has no Triton TYPE_* "
                "(insert ox.adapters.cast('float32') or another supported dtype)"
            )
            return None
        if not vi.type.tensor_type.HasField("shape"):
            problems.append(f"{role} {vi.name!r}: unknown rank; Triton needs the rank in config.pbtxt")
            return None
        return TensorSpec(vi.name, _TRITON_TYPES[elem], _shape(vi))

    inputs = [convert(vi, "input") for vi in model.graph.input if vi.name not in initializers]
    outputs = [convert(vi, "output") for vi in model.graph.output]
    if problems:
        raise DeployError(
            "the model cannot be served by Triton:\n  " + "\n  ".join(problems),
            hint="fix the listed inputs/outputs (names, dtypes) before deploying",
        )
    return [s for s in inputs if s], [s for s in outputs if s]


def _tensor_block(spec: TensorSpec, batched: bool) -> str:
    dims = list(spec.shape[1:] if batched else spec.shape)
    dims_text = ", ".join("-1" if not isinstance(d, int) else str(d) for d in dims)
    lines = ["  {", f'    name: "{spec.name}"', f"    data_type: {spec.data_type}"]
    if batched and not dims:
        # a [batch] tensor: Triton needs non-empty dims; the documented idiom is dims [1] + reshape []
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines.append(f"    dims: [ {dims_text} ]")
    lines.append("  }")
    return "\n".join(lines)


def triton_config(
    model: ModelLike,
    *,
    name: str,
    max_batch_size: int | None = None,
    instances: int = 1,
    device: str = "cpu",
    accelerator: str | None = None,
    max_queue_delay_us: int = 100,
) -> tuple[str, int]:
    """Build the ``config.pbtxt`` text for ``model``; returns ``(text, max_batch_size)``.

    Args:
        model: the model (``ModelProto`` or path).
        name: the Triton model name.
        max_batch_size: largest batch Triton may form; default 64 when the model has a shared batch
            dim, 0 (no batching) otherwise. 0 turns batching off.
        instances: model instances per device.
        device: "cpu" or "gpu".
        accelerator: for "gpu": None/"cuda" (onnxruntime's CUDA provider) or "tensorrt"
            (onnxruntime's TensorRT provider, FP16).
        max_queue_delay_us: how long the dynamic batcher waits to form a batch.

    Raises:
        DeployError: bad name, options, or a signature Triton cannot serve.
    """
    validate_model_name(name)
    if device not in {"cpu", "gpu"}:
        raise DeployError(f"device {device!r} is not one of 'cpu', 'gpu'")
    if accelerator not in {None, "cuda", "tensorrt"}:
        raise DeployError(f"accelerator {accelerator!r} is not one of 'cuda', 'tensorrt'")
    if accelerator is not None and device != "gpu":
        raise DeployError(f"accelerator {accelerator!r} needs device='gpu'")
    if instances < 1:
        raise DeployError(f"instances must be at least 1, got {instances}")
    proto = as_model(model)
    inputs, outputs = model_signature(proto)
    verdict = batching([(s.name, s.shape) for s in inputs], [(s.name, s.shape) for s in outputs])
    if max_batch_size is None:
        max_batch_size = DEFAULT_MAX_BATCH_SIZE if verdict else 0
        if not verdict:
            logger.info("%s: dynamic batching off: %s", name, verdict.reason)
    if max_batch_size < 0:
        raise DeployError(f"max_batch_size must be >= 0, got {max_batch_size}")
    if max_batch_size > 0 and not verdict:
        raise DeployError(
            f"max_batch_size={max_batch_size} needs dim 0 of every input and output to be one shared "
            f"batch symbol; {verdict.reason}",
            hint="deploy with max_batch_size=0, or export the parts with a dynamic 'batch' dim 0 that "
            "reaches the outputs",
        )
    batched = max_batch_size > 0
    kind = "KIND_GPU" if device == "gpu" else "KIND_CPU"
    parts = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor_block(s, batched) for s in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(s, batched) for s in outputs) + "\n]",
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]",
    ]
    if batched:
        parts.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    if accelerator == "tensorrt":
        parts.append(
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
            '      name : "tensorrt"\n'
            '      parameters { key: "precision_mode" value: "FP16" }\n'
            '      parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
            "    } ]\n  }\n}"
        )
    return "\n".join(parts) + "\n", max_batch_size


def _check_shared_config(result: TritonDeployment, *, force: bool) -> None:
    """All versions of a Triton model share one config.pbtxt: never change it behind their back."""
    if force or not result.config_path.exists():
        return
    current = result.config_path.read_text()
    if current == result.config_text:
        return
    changed = [
        line
        for line in difflib.unified_diff(
            current.splitlines(), result.config_text.splitlines(), "current", "new", lineterm="", n=0
        )
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    raise DeployError(
        f"model {result.name!r} in {result.repository} already has a config.pbtxt that differs from this "
        f"version's; every version of a Triton model shares it:\n  " + "\n  ".join(changed[:12]),
        hint="deploy under another --name, or pass --force to replace the config for every version",
    )


def latest_version(repository: str | os.PathLike[str], name: str) -> int | None:
    """The highest numeric version folder of model ``name`` in ``repository`` that holds a
    ``model.onnx``, or None when there is none."""
    model_dir = Path(repository) / validate_model_name(name)
    if not model_dir.is_dir():
        return None
    versions = [
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "model.onnx").is_file()
    ]
    return max(versions, default=None)


def _resolve_version(version: int | str, root: Path, name: str) -> tuple[int, Path | None]:
    if version == "next":
        latest = latest_version(root, name)
        if latest is None:
            return 1, None
        return latest + 1, root / name / str(latest) / "model.onnx"
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DeployError(f"version must be a positive integer or 'next', got {version!r}")
    return version, None


def deploy_triton(
    model: ModelLike,
    repository: str | os.PathLike[str],
    *,
    name: str,
    version: int | str = 1,
    max_batch_size: int | None = None,
    instances: int = 1,
    device: str = "cpu",
    accelerator: str | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> TritonDeployment:
    """Write ``model`` as a Triton model repository entry ``REPOSITORY/NAME/VERSION/model.onnx``.

    Writes nothing when any check fails, and never overwrites an existing version unless
    ``force=True``. The model file is written atomically, with external data when it is past 2 GB.

    Args:
        model: the (merged) model, ``ModelProto`` or path.
        repository: the repository root (created if missing).
        name: the model name (folder name, URL path element): ``[A-Za-z0-9_.-]``.
        version: the version folder, a positive integer, or ``"next"``: one past the newest version
            already there (1 in an empty repository), written beside the old ones, which stay
            loadable; the result's ``previous`` names the newest old model (``ox.diff`` it).
        max_batch_size: see :func:`triton_config`.
        instances: model instances per device.
        device: "cpu" or "gpu".
        accelerator: for GPU: "cuda" (default) or "tensorrt".
        dry_run: compute the config and the file list, write nothing.
        force: replace an existing version folder, and a ``config.pbtxt`` that differs from the
            one this model needs (it is shared by every version of the model).

    Returns:
        A :class:`TritonDeployment` naming the files and the config text.

    Raises:
        DeployError: bad name/version/options, an existing version or a different existing
            config without ``force``, or a model signature Triton cannot serve.
    """
    root = Path(repository)
    version, previous = _resolve_version(version, root, name)
    proto = as_model(model)
    text, mbs = triton_config(
        proto,
        name=name,
        max_batch_size=max_batch_size,
        instances=instances,
        device=device,
        accelerator=accelerator,
    )
    inputs, outputs = model_signature(proto)
    verdict = batching([(s.name, s.shape) for s in inputs], [(s.name, s.shape) for s in outputs])
    off = "" if verdict else verdict.reason
    result = TritonDeployment(
        root, name, version, text, mbs, dry_run=dry_run, batching_off=off, previous=previous
    )
    version_dir = result.model_dir / str(version)
    if version_dir.exists() and not force:
        raise DeployError(
            f"version {version} of model {name!r} already exists in {root}",
            hint="pass a new --version, or --force to replace it",
        )
    _check_shared_config(result, force=force)
    result.files = [result.config_path, result.model_path]
    if dry_run:
        return result
    result.model_dir.mkdir(parents=True, exist_ok=True)
    # write the version into a fresh sibling folder, then swap it in: a failure leaves nothing behind
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=result.model_dir))
    try:
        save(proto, staging / "model.onnx")
        if version_dir.exists():
            shutil.rmtree(version_dir)
        staging.rename(version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    tmp_config = result.config_path.with_name(".config.pbtxt.tmp")
    tmp_config.write_text(text)
    tmp_config.replace(result.config_path)
    result.files = [result.config_path, *sorted(p for p in version_dir.rglob("*") if p.is_file())]
    logger.info("wrote Triton model %r version %d to %s", name, version, root)
    return result
