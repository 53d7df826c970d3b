"""Write a merged model as a Triton Inference Server model repository.

Layout (the format Triton and KServe's Triton runtime read)::

    REPOSITORY/NAME/config.pbtxt
    REPOSITORY/NAME/VERSION/model.onnx      (+ model.onnx.data when the weights are external)

The config is generated from the model's signature: every input and output with its ``TYPE_*`` and
dims. When dim 0 of every input and output is one shared symbol (the ``batch`` dim onnxstitch's
converters and composer give only to a dim the model shows to be the batch), ``max_batch_size`` is
set, the batch dim is left out of ``dims`` and dynamic batching is on; other symbolic dims are
``-1``. Otherwise batching is off (``onnxstitch inspect`` says why).

Variants (an int8 or fp16 model beside the float32 one, same signature, hence the same config) are
written either as further versions of the model, with a ``version_policy`` that serves exactly those
versions, or as models of their own named ``NAME_VARIANT`` (:func:`deploy_triton`'s ``variants``).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
_VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MAX_BATCH_SIZE = 64
#: how ``deploy_triton`` writes ``variants``: as versions of the one model, or as models of their own
VARIANTS_AS = ("versions", "models")

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
    variant: str | None = None
    """The variant this entry holds (a key of ``deploy_triton``'s ``variants``), None for the model."""
    variants: dict[str, TritonDeployment] = field(default_factory=dict)
    """What was written for each variant: the same model name at another version (``variants_as=
    "versions"``), or the model ``NAME_VARIANT`` (``"models"``)."""

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


def _check_variants(
    variants: Mapping[str, ModelLike] | None, variants_as: str, name: str
) -> dict[str, onnx.ModelProto]:
    """The variants' models, after their keys (and ``variants_as``) were checked; every problem at once.

    Raises:
        DeployError: an unknown ``variants_as``, or keys that cannot name a variant.
    """
    if variants_as not in VARIANTS_AS:
        raise DeployError(f"variants_as={variants_as!r} is not one of {', '.join(map(repr, VARIANTS_AS))}")
    if not variants:
        return {}
    bad = [key for key in variants if not isinstance(key, str) or not _VARIANT_RE.match(key)]
    if variants_as == "models":
        bad += [key for key in variants if key not in bad and not _NAME_RE.match(f"{name}_{key}")]
    if bad:
        raise DeployError(
            f"variant name(s) {', '.join(map(repr, bad))} cannot be used (for model {name!r})",
            hint="name a variant with 1-64 characters from A-Z a-z 0-9 _ . - starting with a letter or "
            "digit, e.g. 'int8' or 'fp16'",
        )
    return {key: as_model(model) for key, model in variants.items()}


def _signature_lines(model: onnx.ModelProto) -> list[str]:
    inputs, outputs = model_signature(model)
    return [
        f"{role} {s.name!r}: {s.data_type} {list(s.shape)}"
        for role, specs in (("input", inputs), ("output", outputs))
        for s in specs
    ]


def _variant_problems(
    config_text: str,
    model: onnx.ModelProto,
    variants: dict[str, onnx.ModelProto],
    name: str,
    options: dict[str, Any],
) -> list[str]:
    """Why each variant would need another ``config.pbtxt`` than the model (empty when none does)."""
    problems: list[str] = []
    for key, variant in variants.items():
        try:
            text, _ = triton_config(variant, name=name, **options)
        except DeployError as exc:
            problems.append(f"variant {key!r}: {str(exc).splitlines()[0]}")
            continue
        if text == config_text:
            continue
        ours, theirs = _signature_lines(model), _signature_lines(variant)
        changed = [f"model has {line}" for line in ours if line not in theirs]
        changed += [f"variant has {line}" for line in theirs if line not in ours]
        detail = "; ".join(changed) or "the batching its signature allows differs"
        problems.append(f"variant {key!r} does not have the model's signature: {detail}")
    return problems


def _with_version_policy(config_text: str, versions: list[int], labels: list[str]) -> str:
    """``config_text`` serving exactly ``versions`` (Triton's default serves only the newest one)."""
    served = ", ".join(map(str, versions))
    which = "; ".join(f"version {v}: {label}" for v, label in zip(versions, labels, strict=True))
    policy = f"version_policy: {{ specific: {{ versions: [ {served} ] }} }}\n# {which}"
    head, _, rest = config_text.partition("\n")  # after the name line
    return f"{head}\n{policy}\n{rest}"


@dataclass
class _Entry:
    result: TritonDeployment
    proto: onnx.ModelProto

    @property
    def version_dir(self) -> Path:
        return self.result.model_dir / str(self.result.version)


def _plan(
    proto: onnx.ModelProto,
    variants: dict[str, onnx.ModelProto],
    root: Path,
    *,
    name: str,
    version: int | str,
    variants_as: str,
    dry_run: bool,
    options: dict[str, Any],
) -> list[_Entry]:
    """What to write: the model first, then each variant, each with its config text and version."""
    first, previous = _resolve_version(version, root, name)
    text, mbs = triton_config(proto, name=name, **options)
    problems = _variant_problems(text, proto, variants, name, options)
    if problems:
        raise DeployError(
            f"the variants of model {name!r} must have its inputs and outputs (one config.pbtxt serves "
            "them all):\n  " + "\n  ".join(problems),
            hint="quantize or convert with the inputs and outputs kept as they are (ox.quantize and "
            "ox.to_fp16 keep them), or deploy the variant under a name of its own",
        )
    inputs, outputs = model_signature(proto)
    verdict = batching([(s.name, s.shape) for s in inputs], [(s.name, s.shape) for s in outputs])
    off = "" if verdict else verdict.reason

    def entry(
        model: onnx.ModelProto, model_name: str, number: int, config: str, variant: str | None
    ) -> _Entry:
        result = TritonDeployment(
            root, model_name, number, config, mbs, dry_run=dry_run, batching_off=off, variant=variant
        )
        return _Entry(result, model)

    if variants_as == "versions" and variants:
        versions = [first + i for i in range(len(variants) + 1)]
        text = _with_version_policy(text, versions, ["the model", *(f"variant {k!r}" for k in variants)])
        entries = [entry(proto, name, first, text, None)]
        entries += [
            entry(m, name, n, text, k) for n, (k, m) in zip(versions[1:], variants.items(), strict=True)
        ]
    else:
        entries = [entry(proto, name, first, text, None)]
        for key, variant in variants.items():
            model_name = f"{name}_{key}"
            number, _ = _resolve_version(version, root, model_name)
            entries.append(
                entry(variant, model_name, number, triton_config(variant, name=model_name, **options)[0], key)
            )
    entries[0].result.previous = previous
    entries[0].result.variants = {e.result.variant: e.result for e in entries[1:] if e.result.variant}
    return entries


def _write_version(entry: _Entry) -> None:
    """Write the version into a fresh sibling folder, then swap it in: a failure leaves nothing behind."""
    version_dir = entry.version_dir
    entry.result.model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.result.version}.", dir=entry.result.model_dir))
    try:
        save(entry.proto, staging / "model.onnx")
        if version_dir.exists():
            shutil.rmtree(version_dir)
        staging.rename(version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
    variants: Mapping[str, ModelLike] | None = None,
    variants_as: str = "versions",
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
        variants: more models with the same inputs and outputs, by variant name, e.g.
            ``{"int8": ox.quantize(m, calib)}``; each must give the same ``config.pbtxt`` as
            ``model`` (a variant whose signature differs is refused, naming it).
        variants_as: ``"versions"``: the variants are the next versions of model ``name`` (the model
            at ``version``, the variants at ``version + 1``, ``+ 2``… in the order given), and the
            config serves exactly these versions (``version_policy: { specific: … }``; a comment in
            it says which version is which). A request that names no version gets the highest one,
            so clients name the version. ``"models"``: each variant is a model of its own,
            ``NAME_VARIANT``, at the same ``version`` (``"next"`` is resolved per model).
            (``onnxstitch serve`` serves one version per model, the newest. A dynamically
            quantized variant scales activations per batch: under the dynamic batcher its answers
            depend on the requests batched with it; a statically quantized one's do not.)
        dry_run: compute the config and the file list, write nothing.
        force: replace an existing version folder, and a ``config.pbtxt`` that differs from the
            one this model needs (it is shared by every version of the model).

    Returns:
        A :class:`TritonDeployment` naming the files and the config text; its ``variants`` hold one
        per variant.

    Raises:
        DeployError: bad name/version/options/variant names, an existing version or a different
            existing config without ``force``, a model signature Triton cannot serve, or a variant
            whose signature differs from the model's.
    """
    root = Path(repository)
    options: dict[str, Any] = {
        "max_batch_size": max_batch_size,
        "instances": instances,
        "device": device,
        "accelerator": accelerator,
    }
    validate_model_name(name)
    proto = as_model(model)
    protos = _check_variants(variants, variants_as, name)
    entries = _plan(
        proto,
        protos,
        root,
        name=name,
        version=version,
        variants_as=variants_as,
        dry_run=dry_run,
        options=options,
    )
    for entry in entries:
        result = entry.result
        if entry.version_dir.exists() and not force:
            what = f"variant {result.variant!r}: " if result.variant else ""
            raise DeployError(
                f"{what}version {result.version} of model {result.name!r} already exists in {root}",
                hint="pass a new --version, or --force to replace it",
            )
    for entry in entries:
        _check_shared_config(entry.result, force=force)
        entry.result.files = [entry.result.config_path, entry.result.model_path]
    main = entries[0].result
    if dry_run:
        return main
    for entry in entries:
        _write_version(entry)
    for entry in entries:
        result = entry.result
        tmp_config = result.config_path.with_name(".config.pbtxt.tmp")
        tmp_config.write_text(result.config_text)
        tmp_config.replace(result.config_path)
        result.files = [result.config_path, *sorted(p for p in entry.version_dir.rglob("*") if p.is_file())]
        logger.info("wrote Triton model %r version %d to %s", result.name, result.version, root)
    return main
