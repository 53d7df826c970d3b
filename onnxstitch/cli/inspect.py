"""``onnxstitch inspect``: what a model file holds — signature, versions, size, parts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from onnxstitch.cli._common import console, print_json

__all__ = ["register", "render"]


def _shape(shape: list[int | str | None] | None) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _signature_table(summary: dict[str, Any]) -> Table:
    table = Table(title="signature", title_justify="left")
    for column in ("", "name", "dtype", "shape", "layout"):
        table.add_column(column)
    for kind in ("inputs", "outputs"):
        for row in summary[kind]:
            cells = (kind[:-1], row["name"], row["dtype"], _shape(row["shape"]), row["layout"] or "")
            table.add_row(*(Text(c) for c in cells))
    return table


def _parts_table(parts: list[dict[str, Any]], precision: dict[str, str]) -> Table:
    table = Table(title="parts (provenance)", title_justify="left")
    columns = [("part", "left"), ("nodes", "right"), ("parameters", "right"), ("op types", "left")]
    if precision:
        columns.insert(1, ("precision", "left"))
    for column, justify in columns:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in parts:
        ops = ", ".join(f"{op}×{n}" for op, n in list(row["op_types"].items())[:6])
        more = len(row["op_types"]) - 6
        cells = [
            row["part"],
            str(row["nodes"]),
            f"{row['parameters']:,}",
            ops + (f", +{more}" if more > 0 else ""),
        ]
        if precision:
            cells.insert(1, precision.get(row["part"], "-"))
        table.add_row(*(Text(c) for c in cells))
    return table


def _precision_line(record: dict[str, Any]) -> str:
    parts = ", ".join(f"{p} {v}" for p, v in record["parts"].items())
    gate = record.get("gate") or {}
    if gate.get("agreement") is None:
        return f"precision  {parts}"
    verdict = "passed" if gate.get("passed") else "FAILED"
    speed = record.get("speed") or {}
    pace = (
        f"; {speed['ratio']:.2f}x the float32 speed at batch {speed['batch']} where it was converted"
        if speed.get("ratio") is not None
        else ""
    )
    return (
        f"precision  {parts}; gate {verdict}: lowest agreement {gate['agreement']:.4f} "
        f"(min {gate.get('min_agreement')}){pace}"
    )


def render(summary: dict[str, Any]) -> list[Any]:
    """The human-readable view of a :func:`~onnxstitch.files.describe.describe` summary."""
    lines: list[Any] = []
    info = summary.get("file")
    if info:
        extra = sum(f["size_bytes"] for f in info["external_data"])
        size = _human(info["size_bytes"]) + (f" + {_human(extra)} external data" if extra else "")
        lines.append(f"file       {info['path']} ({size})")
    opsets = ", ".join(f"{d} {v}" for d, v in summary["opsets"].items())
    lines.append(f"IR         {summary['ir_version']}    opsets: {opsets}")
    producer = " ".join(x for x in (summary["producer"]["name"], summary["producer"]["version"]) if x)
    lines.append(f"source     {summary['source'] or 'unknown'}    producer: {producer or 'unknown'}")
    lines.append(
        f"graph      {summary['nodes']} nodes, {summary['parameters']:,} parameters "
        f"({_human(summary['parameter_bytes'])})"
    )
    top = ", ".join(f"{op}×{n}" for op, n in list(summary["op_types"].items())[:8])
    lines.append(f"op types   {top or '-'}")
    if "session" in summary:
        lines.append(f"sandbox    onnxruntime session created ({', '.join(summary['session']['providers'])})")
    batch = summary.get("batching")
    if batch:
        state = f"on along {batch['dim']!r}" if batch["dim"] else "off"
        lines.append(f"batching   {state}: {batch['reason']}")
    record = summary.get("precision")
    if record:
        lines.append(_precision_line(record))
    lines.append(_signature_table(summary))
    if summary["parts"]:
        lines.append(_parts_table(summary["parts"], record["parts"] if record else {}))
    return lines


def inspect_command(
    model: Annotated[Path, typer.Argument(dir_okay=False, help="The .onnx model file.")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON (stable keys).")
    ] = False,
    sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox",
            help="Load the model and open an onnxruntime session in a subprocess with time and memory "
            "limits (for untrusted files).",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="--sandbox: seconds before the child is killed.")
    ] = 60.0,
    memory_mb: Annotated[int, typer.Option(min=1, help="--sandbox: memory the model may use, in MB.")] = 4096,
    verify: Annotated[
        bool, typer.Option("--verify", help="Refuse the model unless it matches its sha256 manifest.")
    ] = False,
    graph: Annotated[
        Path | None,
        typer.Option(
            "--graph",
            dir_okay=False,
            help="Draw the parts, seams and adapters to this .svg or .png file (needs matplotlib).",
        ),
    ] = None,
    mermaid: Annotated[
        bool, typer.Option("--mermaid", help="Print the part-level picture as a Mermaid block for Markdown.")
    ] = False,
) -> None:
    """Show a model's inputs/outputs (dtypes, symbolic dims), IR and opsets, size, parameters,
    layouts, source framework and its breakdown by part."""
    if sandbox:
        from onnxstitch.files.sandbox import check_in_subprocess

        summary = check_in_subprocess(model, timeout=timeout, memory_mb=memory_mb, verify=verify)
    else:
        from onnxstitch.files.describe import describe_file

        summary = describe_file(model, verify=verify)
    if graph is not None:
        from onnxstitch.files.draw import draw

        draw(summary["graph"], graph, title=model.name)
    if mermaid:
        from onnxstitch.files.draw import mermaid as to_mermaid

        sys.stdout.write("```mermaid\n" + to_mermaid(summary["graph"]) + "```\n")
        return
    if json_out:
        print_json(summary)
        return
    if graph is not None:
        console.print(f"drew {graph}", markup=False)
    for line in render(summary):
        if isinstance(line, str):
            console.print(line, markup=False)
        else:
            console.print(line)


def register(app: typer.Typer) -> None:
    """Add ``inspect`` to the ``onnxstitch`` app."""
    app.command("inspect")(inspect_command)
