"""One IR version and one opset per domain for every part of a merge.

The target opset of each domain is the highest among the parts (or ``opset=``), capped by what the
installed onnxruntime loads (asked of the one probe, :mod:`onnxstitch.files._limits`). Parts below the target
of ``ai.onnx`` go through ``onnx.version_converter``; for other domains (``ai.onnx.ml`` ...) a part is
raised only when none of its ops changed between the two versions. ``onnx.version_converter`` keeps
the ``ir_version`` and drops model-local functions: both are fixed here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx.defs
import onnx.helper
import onnx.version_converter

from onnxstitch.errors import VersionError
from onnxstitch.files import _limits

log = logging.getLogger(__name__)

ONNX_DOMAIN = ""
ML_DOMAIN = "ai.onnx.ml"
#: initializers bigger than this (serialized bytes) are kept out of the skeleton a part is worked on in
BIG_TENSOR_BYTES = 1024


@dataclass
class Part:
    """One part of a merge, ready to be stitched.

    Attributes:
        key: the part's key.
        model: a skeleton we own: the part's graph (converted to the target versions) with only the small
            initializers; the big ones are in ``weights``.
        weights: the part's big initializers, still the source model's protos (never modified unless
            ``owned``).
        owned: the source model was loaded by onnxstitch, so its weights may be released once copied.
        source: the model the part came from (its metadata, its original ``opset_import``).
        base_dir: the folder external data of ``weights`` is resolved against (the part file's own).
    """

    key: str
    model: onnx.ModelProto
    weights: list[onnx.TensorProto]
    owned: bool
    source: onnx.ModelProto
    base_dir: Path | None = None
    converted_from: dict[str, int] = field(default_factory=dict)


def domain_name(domain: str) -> str:
    return domain or "ai.onnx"


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    """``{domain: version}`` of a model (``""`` and ``"ai.onnx"`` both mean the default domain)."""
    out: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        out[domain] = max(out.get(domain, 0), entry.version)
    return out


def ort_max_ir_version() -> int:
    """Highest ONNX IR version the installed onnxruntime loads (the one probe, in ``files._limits``)."""
    return _limits.ort_max_ir_version()


def ort_max_opset(domain: str = ONNX_DOMAIN) -> int:
    """Highest opset of ``domain`` the installed onnxruntime and onnx both support."""
    schema_max = onnx.defs.onnx_opset_version() if domain == ONNX_DOMAIN else _domain_max(domain)
    return min(schema_max, _limits.ort_max_opset(domain))


def _domain_max(domain: str) -> int:
    return max(
        (s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.domain == domain), default=1
    )


def ir_for(targets: Mapping[str, int], part_ir_versions: Iterable[int]) -> int:
    """The merged IR version: the highest of the parts and of what the opsets need, capped by ORT."""
    ids = [onnx.helper.make_opsetid(d, v) for d, v in targets.items() if d in (ONNX_DOMAIN, ML_DOMAIN)]
    needed = onnx.helper.find_min_ir_version_for(ids, ignore_unknown=True)
    wanted = max([needed, *part_ir_versions])
    return min(wanted, ort_max_ir_version())


def targets_for(
    models: Mapping[str, onnx.ModelProto], opset: int | Mapping[str, int] | None
) -> dict[str, int]:
    """The target version of each domain.

    Raises:
        VersionError: ``opset=`` asks for more than onnxruntime (or onnx) supports.
    """
    wanted: dict[str, int] = {}
    for model in models.values():
        for domain, version in opsets(model).items():
            wanted[domain] = max(wanted.get(domain, 0), version)
    asked = {"": opset} if isinstance(opset, int) else dict(opset or {})
    asked = {("" if d == "ai.onnx" else d): v for d, v in asked.items()}
    for domain in (ONNX_DOMAIN, ML_DOMAIN):
        if domain not in wanted and domain not in asked:
            continue
        cap = ort_max_opset(domain)
        if domain in asked:
            if asked[domain] > cap:
                raise VersionError(
                    f"opset {asked[domain]} of {domain_name(domain)} was asked for, but the installed "
                    f"onnxruntime runs at most {cap}",
                    hint=f"pass opset={cap} or lower",
                )
            wanted[domain] = asked[domain]
        elif wanted[domain] > cap:
            log.info(
                "%s opset %d capped to %d (installed onnxruntime)", domain_name(domain), wanted[domain], cap
            )
            wanted[domain] = cap
    for domain, version in asked.items():
        wanted.setdefault(domain, version)
    return wanted


def make_part(
    key: str, source: onnx.ModelProto, owned: bool, targets: Mapping[str, int], base_dir: Path | None = None
) -> Part:
    """Split off the big weights, bring the skeleton to the target versions.

    Raises:
        VersionError: the part cannot be converted (names the part and the op).
    """
    skeleton, weights = split_weights(source)
    part = Part(key=key, model=skeleton, weights=weights, owned=owned, source=source, base_dir=base_dir)
    have = opsets(source)
    if ONNX_DOMAIN in targets and have.get(ONNX_DOMAIN, targets[ONNX_DOMAIN]) != targets[ONNX_DOMAIN]:
        part.model = _convert(key, skeleton, weights, have[ONNX_DOMAIN], targets[ONNX_DOMAIN])
        part.converted_from[ONNX_DOMAIN] = have[ONNX_DOMAIN]
    for domain, version in have.items():
        if domain != ONNX_DOMAIN and version != targets.get(domain, version):
            _check_unchanged(key, _nodes_of_domain(part.model, domain), domain, version, targets[domain])
            part.converted_from[domain] = version
    _restore_functions(part, source, targets)
    if owned:  # keep only the metadata: the loaded model's memory goes once its weights are stored
        part.source = onnx.ModelProto(metadata_props=source.metadata_props, opset_import=source.opset_import)
    del part.model.opset_import[:]
    for domain in sorted(set(have) | ({ONNX_DOMAIN} if ONNX_DOMAIN in targets else set())):
        part.model.opset_import.append(
            onnx.helper.make_opsetid(domain, targets.get(domain, have.get(domain, 1)))
        )
    return part


def split_weights(source: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A skeleton copy of ``source`` without its big initializers, and those initializers (not copied)."""
    skeleton = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(skeleton, name, getattr(source, name))
    skeleton.opset_import.extend(source.opset_import)
    skeleton.metadata_props.extend(source.metadata_props)
    src, dst = source.graph, skeleton.graph
    dst.name = src.name
    dst.node.extend(src.node)
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    dst.sparse_initializer.extend(src.sparse_initializer)
    weights: list[onnx.TensorProto] = []
    for tensor in src.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor_bytes(tensor) > BIG_TENSOR_BYTES:
            weights.append(tensor)
        else:
            dst.initializer.append(tensor)
    return skeleton, weights


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The size of a tensor's data, without touching the data (``ByteSize`` walks it: slow on big ones)."""
    count = 1
    for dim in tensor.dims:
        count *= dim
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return int(tensor.ByteSize())
    if tensor.data_type == onnx.TensorProto.STRING:
        return int(tensor.ByteSize())
    return int(count * itemsize)


def _convert(
    key: str, skeleton: onnx.ModelProto, weights: list[onnx.TensorProto], have: int, want: int
) -> onnx.ModelProto:
    """Convert the skeleton, with the big weights standing in as graph inputs of the same type."""
    work = onnx.ModelProto()
    work.CopyFrom(skeleton)
    del work.functions[:]
    known = {vi.name for vi in work.graph.input}
    placeholders = [t.name for t in weights if t.name not in known]
    for tensor in weights:
        if tensor.name in known:
            continue
        work.graph.input.append(
            onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
        )
    try:
        converted = onnx.version_converter.convert_version(work, want)
    except Exception as exc:  # the converter raises bare RuntimeError / ConvertError
        op = _op_from_message(str(exc)) or ", ".join(_changed_ops(skeleton, have, want)) or "unknown"
        raise VersionError(
            f"part {key!r} cannot be converted from ai.onnx opset {have} to {want} (op: {op}): {exc}",
            hint=f"export part {key!r} at opset {want} directly, or pass opset={have} to merge",
        ) from exc
    drop = set(placeholders)
    kept = [vi for vi in converted.graph.input if vi.name not in drop]
    del converted.graph.input[:]
    converted.graph.input.extend(kept)
    _restore_types(skeleton, converted)
    log.info("part %r converted from ai.onnx opset %d to %d", key, have, want)
    return converted


def _restore_types(skeleton: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """Put the declared types back: the converter names every unknown dim ``unk__N``."""
    g = skeleton.graph
    declared = {vi.name: vi for vi in [*g.value_info, *g.input, *g.output]}
    c = converted.graph
    for vi in [*c.input, *c.output, *c.value_info]:
        if vi.name in declared:
            vi.CopyFrom(declared[vi.name])


def _op_from_message(message: str) -> str | None:
    match = re.search(r"(?:op|Op|node)[^A-Za-z]*(?:type)?[^A-Za-z]*([A-Z][A-Za-z0-9]+)", message)
    return match.group(1) if match else None


def walk_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """Every node of ``nodes`` and of their subgraphs (``If``/``Loop``/``Scan`` bodies), at any depth."""
    for node in nodes:
        yield node
        for attr in node.attribute:
            for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                yield from walk_nodes(graph.node)


def _changed_ops(model: onnx.ModelProto, have: int, want: int) -> list[str]:
    ops = sorted({n.op_type for n in walk_nodes(model.graph.node) if n.domain in ("", "ai.onnx")})
    return [op for op in ops if not _same_schema(op, "", have, want)]


def _same_schema(op: str, domain: str, have: int, want: int) -> bool:
    try:
        return bool(
            onnx.defs.get_schema(op, have, domain).since_version
            == onnx.defs.get_schema(op, want, domain).since_version
        )
    except onnx.defs.SchemaError:
        return False


def _nodes_of_domain(model: onnx.ModelProto, domain: str) -> list[str]:
    return sorted({n.op_type for n in walk_nodes(model.graph.node) if n.domain == domain})


def _check_unchanged(key: str, ops: list[str], domain: str, have: int, want: int, where: str = "") -> None:
    changed = [op for op in ops if not _same_schema(op, domain, have, want)]
    if changed:
        raise VersionError(
            f"part {key!r}{where}: op(s) {', '.join(changed)} of {domain_name(domain)} differ between "
            f"opset {have} and {want}, and no converter exists for that domain",
            hint=f"export part {key!r} at {domain_name(domain)} opset {want}",
        )


def _restore_functions(part: Part, source: onnx.ModelProto, targets: Mapping[str, int]) -> None:
    """Put the model-local functions back (the converter drops them), at the target opsets."""
    del part.model.functions[:]
    for func in source.functions:
        copy = part.model.functions.add()
        copy.CopyFrom(func)
        for entry in copy.opset_import:
            domain = "" if entry.domain == "ai.onnx" else entry.domain
            want = targets.get(domain)
            if want is None or want == entry.version:
                continue
            ops = sorted({n.op_type for n in walk_nodes(func.node) if (n.domain or "") == domain})
            _check_unchanged(part.key, ops, domain, entry.version, want, f" (function {func.name!r})")
            entry.version = want
