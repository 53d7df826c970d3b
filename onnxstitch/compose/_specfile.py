"""Merge specifications in YAML: parse, check every field, report every problem at once.

A spec names the parts, the links between them, the merged inputs and outputs, the opset and
whether to optimize. It is read with ``yaml.safe_load`` only (no Python objects, no tags)::

    parts:
      backbone: backbone.onnx                      # an .onnx file, relative to the spec file
      to_nchw: {adapter: transpose, perm: [0, 3, 1, 2]}
      head:
        torch: mypkg.heads:make_head               # an nn.Module, or a callable returning one
        example_inputs: {x: "1x64x8x8:float32"}    # forward's inputs in order: name -> "AxBxC[:dtype]"
      keras_part: {keras: model.keras}             # .keras / .h5 file or SavedModel directory
      other: {onnx: other.onnx}                    # the long form of an .onnx part
    links:
      - backbone:features->to_nchw:x
      - to_nchw:y->head:x
    inputs: {image: backbone:image}                # or a list of "key:tensor" fed by one input
    outputs: {logits: head:output}
    layouts: {"other:y": NHWC}                     # a layout a part does not record
    opset: 18
    optimize: true

This module only parses and checks; converting ``torch``/``keras`` parts is the caller's job (the
command line does it with :mod:`onnxstitch.converters`), because ``compose`` never imports a
training framework.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import yaml

from onnxstitch import _meta
from onnxstitch.compose import adapters
from onnxstitch.errors import SpecError

__all__ = ["PART_KINDS", "MergeSpec", "PartSpec", "load_spec", "parse_shape", "parse_spec"]

TOP_LEVEL = {
    "parts": "mapping of part key -> part",
    "links": 'list of "key:tensor->key:tensor"',
    "inputs": 'mapping of merged input name -> "key:tensor" or a list of them',
    "outputs": 'mapping of merged output name -> "key:tensor"',
    "opset": "integer",
    "optimize": "true or false",
    "chain": "true or false (wire the parts in order, one tensor per seam)",
    "layouts": 'mapping of "key:tensor" -> a layout the part does not record (NHWC, NCHW, NLC, ...)',
}
# the options each kind of part takes, besides the kind key itself
PART_KINDS: dict[str, dict[str, str]] = {
    "onnx": {},
    "torch": {
        "example_inputs": 'mapping of input name -> "AxBxC[:dtype]"',
        "output_names": "list of strings",
        "opset": "integer",
        "trusted": "true or false (load a .pt2 that runs pickled code)",
    },
    "keras": {
        "opset": "integer",
        "trusted": "true or false (load a .keras file with Lambda layers)",
    },
    "adapter": {},  # the adapter's own arguments, checked against its signature
}
_SHAPE = re.compile(r"^\s*(\d+(?:\s*x\s*\d+)*)\s*(?::\s*(\w+))?\s*$")


@dataclass(frozen=True)
class PartSpec:
    """One part of a spec.

    Attributes:
        key: the part's key.
        kind: ``"onnx"``, ``"torch"``, ``"keras"`` or ``"adapter"``.
        source: a resolved path (onnx, keras, torch ``.pt2``), a ``"module:attr"`` (torch), or the
            adapter's name.
        options: the kind's options (adapter: its keyword arguments), already type-checked.
    """

    key: str
    kind: str
    source: str | Path
    options: dict[str, Any] = field(default_factory=dict)

    def adapter_model(self) -> onnx.ModelProto:
        """Build the adapter of an ``adapter`` part.

        Raises:
            AdapterError: the arguments do not build the adapter.
        """
        return adapters.BUILDERS[str(self.source)](**self.options)


@dataclass(frozen=True)
class MergeSpec:
    """A checked merge specification (the arguments of ``ox.merge`` / ``ox.chain``, parts unbuilt)."""

    parts: dict[str, PartSpec]
    links: list[str] = field(default_factory=list)
    inputs: dict[str, list[str]] | None = None
    outputs: dict[str, str] | None = None
    opset: int | None = None
    optimize: bool = False
    chain: bool = False
    origin: str = "<spec>"
    layouts: dict[str, str] | None = None


def parse_shape(text: Any, *, where: str) -> tuple[tuple[int, ...], str]:
    """Parse ``"1x3x32x32:float32"`` (dtype optional, default float32) into ``(shape, dtype)``.

    Raises:
        SpecError: the text is not of that form or names an unknown dtype.
    """
    match = _SHAPE.match(text) if isinstance(text, str) else None
    if match is None:
        raise SpecError(f'{where}: {text!r} is not a shape like "1x3x32x32:float32"')
    dtype = (match.group(2) or "float32").lower()
    if dtype not in adapters.DTYPES:
        raise SpecError(f"{where}: unknown dtype {dtype!r}; valid: {', '.join(adapters.DTYPES)}")
    return tuple(int(d) for d in re.split(r"\s*x\s*", match.group(1))), dtype


# checks a parsed part beyond the spec's syntax (the CLI imports torch factories): a problem or None
PartCheck = Callable[[PartSpec], str | None]


def load_spec(path: str | os.PathLike[str], *, check_part: PartCheck | None = None) -> MergeSpec:
    """Read and check a YAML merge spec; file paths in it are relative to the spec's folder.

    Args:
        path: the ``.yaml`` file.
        check_part: called with each part that parsed; a string it returns is one more problem,
            listed with the others (compose never imports a framework: the caller may).

    Raises:
        SpecError: the file is missing or not YAML, or the spec has problems (all listed at once).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file {str(p)!r}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        for mark in (getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)):
            if mark is not None:  # PyYAML names a string stream "<unicode string>"
                mark.name = str(p)
        raise SpecError(f"spec file {str(p)!r} is not valid YAML: {exc}") from exc
    return parse_spec(data, base_dir=p.resolve().parent, origin=str(p), check_part=check_part)


def parse_spec(
    data: Any,
    *,
    base_dir: str | os.PathLike[str],
    origin: str = "<spec>",
    check_part: PartCheck | None = None,
) -> MergeSpec:
    """Check an already-parsed spec (a mapping); paths are resolved against ``base_dir``.

    ``check_part`` as in :func:`load_spec`.

    Raises:
        SpecError: every problem of the spec, one per line, with the valid choices.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise SpecError(
            f"{origin}: a spec must be a mapping with the keys {', '.join(TOP_LEVEL)}, "
            f"got {type(data).__name__}",
            hint="start from the example in docs/seams.md",
        )
    for key in data:
        if key not in TOP_LEVEL:
            problems.append(f"unknown top-level key {key!r}; valid keys: {', '.join(TOP_LEVEL)}")
    parts = _parts(data.get("parts"), Path(base_dir), problems)
    if check_part is not None:
        problems.extend(p for p in map(check_part, parts.values()) if p)
    raw_parts = data.get("parts")
    declared = [str(k) for k in raw_parts] if isinstance(raw_parts, Mapping) else []
    links = _str_list(data.get("links", []), "links", problems)
    for link in links:
        _check_link(link, declared, problems)
    inputs = _inputs(data.get("inputs"), declared, problems)
    outputs = _outputs(data.get("outputs"), declared, problems)
    opset = _typed(data.get("opset"), int, "opset", problems)
    optimize = _typed(data.get("optimize", False), bool, "optimize", problems)
    chain = _typed(data.get("chain", False), bool, "chain", problems)
    layouts = _layouts(data.get("layouts"), declared, problems)
    if chain and links:
        problems.append("chain: true wires the parts in order; remove links, or chain")
    if problems:
        raise SpecError(
            f"{origin}: {len(problems)} problem(s) in the merge spec:\n  - " + "\n  - ".join(problems),
            hint="see docs/seams.md for the spec format",
        )
    return MergeSpec(
        parts=parts,
        links=links,
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        optimize=bool(optimize),
        chain=bool(chain),
        origin=origin,
        layouts=layouts,
    )


# -- pieces -------------------------------------------------------------------------------------


def _typed(value: Any, kind: type, where: str, problems: list[str]) -> Any:
    if value is None:
        return None
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        problems.append(f"{where} must be {'an integer' if kind is int else 'true or false'}, got {value!r}")
        return None
    return value


def _str_list(value: Any, where: str, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where} must be a list of strings, got {value!r}")
        return []
    return list(value)


def _endpoint_key(text: str) -> str:
    return text.partition(":")[0].strip()


def _check_endpoint(text: str, where: str, parts: Sequence[str], problems: list[str]) -> None:
    key, sep, tensor = (s.strip() for s in text.partition(":"))
    if not sep or not key or not tensor:
        problems.append(f'{where}: {text!r} is not of the form "key:tensor"')
    elif parts and key not in parts:
        problems.append(f"{where}: unknown part {key!r}; parts: {', '.join(parts)}")


def _check_link(link: str, parts: Sequence[str], problems: list[str]) -> None:
    sides = link.split("->")
    if len(sides) != 2:
        problems.append(f'link {link!r} is not of the form "key:tensor->key:tensor"')
        return
    for side in sides:
        _check_endpoint(side, f"link {link!r}", parts, problems)


def _inputs(value: Any, parts: Sequence[str], problems: list[str]) -> dict[str, list[str]] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(f'inputs must be a mapping of name -> "key:tensor" (or a list), got {value!r}')
        return None
    result: dict[str, list[str]] = {}
    for name, ends in value.items():
        ends_list = _str_list(ends, f"inputs.{name}", problems)
        for end in ends_list:
            _check_endpoint(end, f"inputs.{name}", parts, problems)
        result[str(name)] = ends_list
    return result


def _outputs(value: Any, parts: Sequence[str], problems: list[str]) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(f'outputs must be a mapping of name -> "key:tensor", got {value!r}')
        return None
    result: dict[str, str] = {}
    for name, end in value.items():
        if not isinstance(end, str):
            problems.append(f'outputs.{name} must be a "key:tensor" string, got {end!r}')
            continue
        _check_endpoint(end, f"outputs.{name}", parts, problems)
        result[str(name)] = end
    return result


def _layouts(value: Any, parts: Sequence[str], problems: list[str]) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(f'layouts must be a mapping of "key:tensor" -> layout, got {value!r}')
        return None
    result: dict[str, str] = {}
    for end, layout in value.items():
        end = str(end)
        _check_endpoint(end, f"layouts.{end}", parts, problems)
        if layout not in _meta.LAYOUTS:
            problems.append(f"layouts.{end}: {layout!r} is not a layout; valid: {', '.join(_meta.LAYOUTS)}")
            continue
        result[end] = str(layout)
    return result


def _parts(value: Any, base: Path, problems: list[str]) -> dict[str, PartSpec]:
    if value is None:
        problems.append(
            "missing 'parts': a mapping of part key -> .onnx path or {onnx|torch|keras|adapter: ...}"
        )
        return {}
    if not isinstance(value, Mapping) or not value:
        problems.append(f"parts must be a non-empty mapping of part key -> part, got {value!r}")
        return {}
    parts: dict[str, PartSpec] = {}
    for key, entry in value.items():
        if not isinstance(key, str) or not key or ":" in key or "/" in key or "->" in key:
            problems.append(f"part key {key!r} must be a non-empty string without ':', '/' or '->'")
            continue
        part = _part(key, entry, base, problems)
        if part is not None:
            parts[key] = part
    return parts


def _part(key: str, entry: Any, base: Path, problems: list[str]) -> PartSpec | None:
    where = f"parts.{key}"
    if isinstance(entry, str):
        entry = {"onnx": entry}
    if not isinstance(entry, Mapping):
        problems.append(
            f"{where} must be a path to an .onnx file or a mapping with one of: {', '.join(PART_KINDS)}"
        )
        return None
    kinds = [k for k in entry if k in PART_KINDS]
    if len(kinds) != 1:
        found = f"found {kinds}" if kinds else f"found keys {list(entry)}"
        problems.append(f"{where} must name exactly one part kind of: {', '.join(PART_KINDS)} ({found})")
        return None
    kind = kinds[0]
    options = {k: v for k, v in entry.items() if k != kind}
    source = entry[kind]
    if kind == "adapter":
        return _adapter_part(key, source, options, problems)
    for name in options:
        if name not in PART_KINDS[kind]:
            valid = ", ".join(PART_KINDS[kind]) or "none"
            problems.append(f"{where}: unknown option {name!r} for a {kind} part; valid options: {valid}")
    if not isinstance(source, str) or not source:
        problems.append(f"{where}.{kind} must be a non-empty string, got {source!r}")
        return None
    if kind == "torch" and not source.endswith(".pt2"):
        return _torch_part(key, source, options, problems)
    path = (base / source).resolve()
    if not path.exists():
        problems.append(f"{where}: file {source!r} does not exist (looked for {str(path)!r})")
        return None
    return PartSpec(key, kind, path, _common_options(where, options, problems))


def _common_options(where: str, options: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    if "opset" in options:
        checked["opset"] = _typed(options["opset"], int, f"{where}.opset", problems)
    if "trusted" in options:
        checked["trusted"] = bool(_typed(options["trusted"], bool, f"{where}.trusted", problems))
    if "output_names" in options:
        checked["output_names"] = (
            _str_list(options["output_names"], f"{where}.output_names", problems) or None
        )
    return checked


def _torch_part(key: str, source: str, options: Mapping[str, Any], problems: list[str]) -> PartSpec | None:
    where = f"parts.{key}"
    module, sep, attr = source.partition(":")
    if not sep or not module or not attr:
        problems.append(
            f"{where}.torch must be 'package.module:factory' or a path to a .pt2 file, got {source!r}"
        )
        return None
    checked = _common_options(where, options, problems)
    examples = options.get("example_inputs")
    if not isinstance(examples, Mapping) or not examples:
        problems.append(f'{where}: a torch module needs example_inputs: {{name: "1x3x32x32:float32", ...}}')
        return None
    parsed: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, text in examples.items():
        try:
            parsed[str(name)] = parse_shape(text, where=f"{where}.example_inputs.{name}")
        except SpecError as exc:
            problems.append(str(exc))
    checked["example_inputs"] = parsed
    return PartSpec(key, "torch", source, checked)


def _adapter_part(key: str, name: Any, options: dict[str, Any], problems: list[str]) -> PartSpec | None:
    where = f"parts.{key}"
    if name not in adapters.BUILDERS:
        problems.append(f"{where}: unknown adapter {name!r}; adapters: {', '.join(adapters.BUILDERS)}")
        return None
    part = PartSpec(key, "adapter", name, dict(options))
    try:
        part.adapter_model()
    except TypeError as exc:  # wrong or missing argument names
        params = ", ".join(inspect.signature(adapters.BUILDERS[name]).parameters)
        problems.append(f"{where}: bad arguments for adapter {name!r} ({exc}); it takes: {params}")
        return None
    except SpecError as exc:  # AdapterError: bad values
        problems.append(f"{where}: {exc}")
        return None
    return part
