"""``onnxstitch merge`` and ``onnxstitch extract``: stitch parts into one model, take pieces back out.

    onnxstitch merge a=a.onnx b=b.onnx --link "a:y->b:x" -o m.onnx
    onnxstitch merge a=a.onnx b=b.onnx --chain --layout a:y=NHWC -o m.onnx
    onnxstitch merge spec.yaml -o m.onnx
    onnxstitch extract m.onnx --part head -o head.onnx
    onnxstitch extract m.onnx --input a/feat --output logits -o sub.onnx

Nothing is written unless the whole merge (or extract) succeeded.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onnxstitch.cli._common import console, err_console, import_object, print_json
from onnxstitch.errors import SpecError

if TYPE_CHECKING:
    import onnx

    from onnxstitch.compose._specfile import MergeSpec, PartSpec

__all__ = ["register"]

_SPEC_SUFFIXES = (".yaml", ".yml")
_ADAPTER_SUFFIX = ".adapter"  # the part tag of the adapters the merge inserts (compose._graph)


# ----------------------------------------------------------------------------------- arguments
def _parse_sources(sources: list[str]) -> dict[str, str]:
    parts: dict[str, str] = {}
    for text in sources:
        key, sep, path = text.partition("=")
        if not sep or not key.strip() or not path.strip():
            raise typer.BadParameter(
                f"{text!r} is not of the form key=path.onnx (or give one spec.yaml)", param_hint="SOURCES"
            )
        if key.strip() in parts:
            raise typer.BadParameter(f"part key {key.strip()!r} is given twice", param_hint="SOURCES")
        parts[key.strip()] = path.strip()
    return parts


def _parse_named(values: list[str], *, option: str, many: bool) -> dict[str, Any] | None:
    """``name=a:x,b:y`` (``many``) or ``name=a:x`` -> dict; None when the option was not given."""
    if not values:
        return None
    result: dict[str, Any] = {}
    for text in values:
        name, sep, ends = text.partition("=")
        items = [e.strip() for e in ends.split(",") if e.strip()]
        if not sep or not name.strip() or not items or (not many and len(items) != 1):
            form = "name=key:tensor[,key:tensor...]" if many else "name=key:tensor"
            raise typer.BadParameter(f"{text!r} is not of the form {form}", param_hint=option)
        result[name.strip()] = items if many else items[0]
    return result


# ----------------------------------------------------------------------------------- spec parts
def _example_tensors(part: PartSpec) -> dict[str, Any]:
    import numpy as np

    from onnxstitch.converters._common import require

    torch = require("torch", package="torch", extra="torch", purpose=f"converting part {part.key!r}")
    rng = np.random.default_rng(0)
    tensors = {}
    for name, (shape, dtype) in part.options["example_inputs"].items():
        if dtype.startswith("float"):
            array = rng.standard_normal(shape).astype(dtype)
        else:
            array = rng.integers(0, 2, size=shape).astype(dtype)
        tensors[name] = torch.from_numpy(array)
    return tensors


def _torch_model(part: PartSpec) -> onnx.ModelProto:
    from onnxstitch.converters import from_torch

    if isinstance(part.source, Path):  # a .pt2 file
        return from_torch(
            part.source, opset=part.options.get("opset"), trusted=bool(part.options.get("trusted"))
        )
    obj = import_object(str(part.source), what=f"part {part.key!r}")
    examples = _example_tensors(part)
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "forward")):
        obj = obj()  # an nn.Module class or a factory function
    if not hasattr(obj, "forward"):
        raise SpecError(
            f"part {part.key!r}: {part.source!r} gave a {type(obj).__name__}, not a torch.nn.Module",
            hint="name an nn.Module, an nn.Module class or a function returning one",
        )
    from onnxstitch.cli.convert import examples_hint_names_option

    with examples_hint_names_option(f"parts.{part.key}.example_inputs", prefix=f"part {part.key!r}: "):
        return from_torch(  # positional, in the spec's order; the spec's names become the input names
            obj,
            tuple(examples.values()),
            input_names=list(examples),
            output_names=part.options.get("output_names"),
            opset=part.options.get("opset"),
        )


def _check_torch_import(part: PartSpec) -> str | None:
    """A spec problem when a torch part's factory cannot be imported (before any conversion)."""
    from onnxstitch.errors import StitchError

    if part.kind != "torch" or isinstance(part.source, Path):
        return None
    try:
        import_object(str(part.source), what=f"parts.{part.key}.torch")
    except StitchError as exc:
        return str(exc).replace("\n  fix: ", "; ")
    return None


def _sniffed(key: str, path: str | Path) -> Path:
    """``path``, after its first bytes showed it may be an ONNX model (text, zip, pickle... are named).

    The merge itself loads the part with its external data left on disk; this only catches a file
    that is plainly something else, with the same words ``inspect`` uses.
    """
    import onnx

    from onnxstitch.errors import ModelFileError
    from onnxstitch.files.sniff import HEAD_BYTES, describe_bytes, describe_text, looks_like_text

    p = Path(path)
    if not p.is_file():
        return p  # the merge says that it is missing
    with open(p, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    what = describe_bytes(head)
    if what is None and looks_like_text(head):
        try:  # a protobuf's head can look like text: only a file that does not parse is text
            onnx.load(str(p), load_external_data=False)
        except Exception:
            what = describe_text(head)
    if what is not None:
        raise ModelFileError(f"part {key!r}: {p.name} is {what}")
    return p


def _build_part(part: PartSpec) -> onnx.ModelProto | Path:
    if part.kind == "onnx":
        return _sniffed(part.key, part.source)
    if part.kind == "adapter":
        return part.adapter_model()
    if part.kind == "torch":
        return _torch_model(part)
    from onnxstitch.converters import from_keras

    return from_keras(part.source, opset=part.options.get("opset"), trusted=bool(part.options.get("trusted")))


def _spec_models(spec: MergeSpec) -> dict[str, onnx.ModelProto | Path]:
    models: dict[str, onnx.ModelProto | Path] = {}
    if any(part.kind == "keras" for part in spec.parts.values()):
        from onnxstitch.cli.convert import import_tensorflow_quietly

        import_tensorflow_quietly()
    for key, part in spec.parts.items():
        if part.kind in ("torch", "keras"):
            err_console.print(f"converting part {key!r} ({part.kind}: {part.source})", highlight=False)
        models[key] = _build_part(part)
    return models


# ----------------------------------------------------------------------------------- summary
def _size(path: Path) -> int:
    from onnxstitch.files import check_file

    try:
        files = check_file(path)
    except Exception:  # the summary must not fail a merge that succeeded
        files = [path]
    return sum(f.stat().st_size for f in {path, *files} if f.exists())


def _written(path: Path) -> onnx.ModelProto:
    """The merged model just written, for the summary (its weights are not read)."""
    from onnxstitch.files._read import load_header

    return load_header(path)


def _inserted(model: onnx.ModelProto) -> list[dict[str, str]]:
    """The adapters the merge inserted at the seams (tagged ``<key>.adapter``)."""
    from onnxstitch import _meta

    return [
        {"node": n.name, "op": n.op_type}
        for n in model.graph.node
        if (_meta.get_part(n) or "").endswith(_ADAPTER_SUFFIX)
    ]


def _summary(
    model: onnx.ModelProto, out: Path, *, links: int, inserted: list[dict[str, str]]
) -> dict[str, Any]:
    from onnxstitch import _meta

    by_part = Counter(_meta.get_part(n) or "?" for n in model.graph.node)
    keys = _meta.get_parts(model) or sorted(k for k in by_part if not k.endswith(_ADAPTER_SUFFIX))
    return {
        "output": str(out),
        "parts": {k: by_part.get(k, 0) for k in keys},
        "seams": links,
        "adapters_inserted": inserted,
        "inputs": [
            i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
        ],
        "outputs": [o.name for o in model.graph.output],
        "nodes": len(model.graph.node),
        "bytes": _size(out),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    parts = ", ".join(f"{k} ({n} nodes)" for k, n in summary["parts"].items())
    console.print(f"wrote {summary['output']} ({summary['bytes'] / 1e6:.2f} MB, {summary['nodes']} nodes)")
    console.print(f"  parts:    {parts}")
    console.print(f"  seams:    {summary['seams']}")
    if summary["optimized_from_nodes"] is not None:
        console.print(f"  optimized: {summary['optimized_from_nodes']} -> {summary['nodes']} nodes")
    adapters = ", ".join(f"{a['op']} ({a['node']})" for a in summary["adapters_inserted"]) or "none"
    console.print(f"  adapters inserted: {adapters}")
    console.print(f"  inputs:   {', '.join(summary['inputs'])}")
    console.print(f"  outputs:  {', '.join(summary['outputs'])}")


# ----------------------------------------------------------------------------------- commands
def merge_command(
    sources: Annotated[
        list[str],
        typer.Argument(help="key=path.onnx for each part, or a single spec.yaml.", show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="The merged .onnx to write.")],
    link: Annotated[
        list[str] | None, typer.Option("--link", "-l", help='A seam "key:tensor->key:tensor" (repeatable).')
    ] = None,
    input_: Annotated[
        list[str] | None,
        typer.Option("--input", help='A merged input fed to parts: "name=a:x,b:x" (repeatable).'),
    ] = None,
    output: Annotated[
        list[str] | None, typer.Option("--output", help='A merged output: "name=key:tensor" (repeatable).')
    ] = None,
    opset: Annotated[int | None, typer.Option(min=1, help="Target ai.onnx opset (default: highest).")] = None,
    optimize: Annotated[
        bool | None, typer.Option("--optimize/--no-optimize", help="Clean the seams after merging.")
    ] = None,
    chain: Annotated[
        bool, typer.Option("--chain", help="Wire the parts in the order given, one tensor per seam.")
    ] = False,
    layout: Annotated[
        list[str] | None,
        typer.Option(
            "--layout",
            help='A layout the part does not record: "key:tensor=NHWC" (NCHW, NLC, NCL, NDHWC, NCDHW; '
            "repeatable).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Stitch ONNX parts (or a YAML spec's parts) into one validated ONNX model."""
    from onnxstitch.compose import chain as run_chain
    from onnxstitch.compose import merge as run_merge
    from onnxstitch.compose import optimize as run_optimize
    from onnxstitch.files import save

    job = _job(sources, link or [], input_ or [], output or [], chain=chain, layouts=layout or [])
    if not job.chain and not job.links and len(job.models) > 1:  # legal, but rarely meant
        meant = "chain: true (or links:)" if _is_spec(sources) else "--chain (or --link)"
        err_console.print(
            f"[yellow]warning:[/] no links: the parts are not connected; did you mean {meant}?",
            highlight=False,
        )
    opset = job.opset if opset is None else opset
    optimize = job.optimize if optimize is None else optimize
    with err_console.status("merging", spinner="dots") if not json_out else nullcontext():
        # without --optimize the merge writes `out` itself: the parts' weights go file to file
        target = None if optimize else out
        if job.chain:
            result = run_chain(job.models, opset=opset, layouts=job.layouts or {}, save_to=target)
        else:
            result = run_merge(
                job.models,
                job.links,
                inputs=job.inputs,
                outputs=job.outputs,
                opset=opset,
                layouts=job.layouts or {},
                save_to=target,
            )
        merged = _written(out) if isinstance(result, Path) else result
        inserted = _inserted(merged)
        nodes_before = len(merged.graph.node)
        if optimize:  # here rather than merge(optimize=True): the summary reports what was inserted
            merged = run_optimize(merged)
            save(merged, out)
    seams = max(len(job.models) - 1, 0) if job.chain else len(job.links)
    summary = _summary(merged, out, links=seams, inserted=inserted)
    summary["optimized_from_nodes"] = nodes_before if optimize else None
    if json_out:
        print_json(summary)
    else:
        _print_summary(summary)


@dataclass
class _Job:
    """What to merge, from the command line or a spec file."""

    models: dict[str, Any]
    links: list[str] = field(default_factory=list)
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    opset: int | None = None
    optimize: bool = False
    chain: bool = False
    layouts: dict[str, str] | None = None


def _is_spec(sources: list[str]) -> bool:
    return len(sources) == 1 and sources[0].lower().endswith(_SPEC_SUFFIXES)


def _job(
    sources: list[str],
    links: list[str],
    inputs: list[str],
    outputs: list[str],
    *,
    chain: bool,
    layouts: list[str],
) -> _Job:
    from onnxstitch.cli.convert import parse_layouts
    from onnxstitch.compose._specfile import load_spec

    if _is_spec(sources):
        if links or inputs or outputs or chain or layouts:
            raise typer.BadParameter(
                "--link/--input/--output/--chain/--layout go into the spec file when merging a spec",
                param_hint="SOURCES",
            )
        spec = load_spec(sources[0], check_part=_check_torch_import)
        return _Job(
            dict(_spec_models(spec)),
            spec.links,
            spec.inputs,
            spec.outputs,
            spec.opset,
            spec.optimize,
            spec.chain,
            spec.layouts,
        )
    if any(s.lower().endswith(_SPEC_SUFFIXES) for s in sources):
        raise typer.BadParameter("a spec file must be the only source", param_hint="SOURCES")
    if chain and (links or inputs or outputs):
        raise typer.BadParameter("--chain wires the parts itself: drop --link/--input/--output")
    return _Job(
        {key: _sniffed(key, path) for key, path in _parse_sources(sources).items()},
        list(links),
        _parse_named(inputs, option="--input", many=True),
        _parse_named(outputs, option="--output", many=False),
        chain=chain,
        layouts=parse_layouts(layouts, form="key:tensor"),
    )


def extract_command(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The (merged) .onnx model.")],
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="The .onnx to write.")],
    part: Annotated[str | None, typer.Option("--part", help="Take this part of a merged model.")] = None,
    input_: Annotated[
        list[str] | None, typer.Option("--input", help="A tensor that becomes an input (repeatable).")
    ] = None,
    output: Annotated[
        list[str] | None, typer.Option("--output", help="A tensor that becomes an output (repeatable).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Take one part back out of a merged model, or cut the subgraph between tensors."""
    from onnxstitch.compose import extract
    from onnxstitch.files import save

    result = extract(model, part=part, inputs=input_ or None, outputs=output or None)
    save(result, out)
    summary: dict[str, Any] = {
        "output": str(out),
        "nodes": len(result.graph.node),
        "inputs": [i.name for i in result.graph.input],
        "outputs": [o.name for o in result.graph.output],
        "bytes": _size(out),
    }
    if json_out:
        print_json(summary)
        return
    console.print(f"wrote {out} ({summary['bytes'] / 1e6:.2f} MB, {summary['nodes']} nodes)")
    console.print(f"  inputs:   {', '.join(summary['inputs'])}")
    console.print(f"  outputs:  {', '.join(summary['outputs'])}")


def register(app: typer.Typer) -> None:
    """Add ``merge`` and ``extract`` to the ``onnxstitch`` app."""
    app.command("merge")(merge_command)
    app.command("extract")(extract_command)
