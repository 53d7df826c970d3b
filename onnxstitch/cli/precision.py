"""``onnxstitch quantize`` and ``onnxstitch fp16``: precision per part, behind the accuracy gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from onnxstitch.cli._common import console, err_console, print_json, stage_progress

__all__ = ["parse_parts", "register"]


def parse_parts(items: list[str] | None, converted: str) -> dict[str, str] | None:
    """``["backbone", "head=fp32"]`` -> ``{"backbone": converted, "head": "fp32"}``; nothing -> ``None``."""
    if not items:
        return None
    parts: dict[str, str] = {}
    for item in items:
        key, sep, precision = item.partition("=")
        parts[key.strip()] = precision.strip() if sep else converted
    return parts


def quantize_command(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .onnx model (float32).")],
    calibration: Annotated[
        Path,
        typer.Option(
            "--calibration",
            "-c",
            exists=True,
            help="An .npz of arrays by input name (batched along dim 0), or a folder of .npy/.npz files.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", dir_okay=False, help="Where to write the int8 model.")
    ],
    part: Annotated[
        list[str] | None,
        typer.Option(
            "--part",
            "-p",
            help="Quantize this part (repeat), or PART=int8|int8-dynamic|fp32; default: what pays.",
        ),
    ] = None,
    holdout: Annotated[
        Path | None,
        typer.Option(
            exists=True, help="Samples to judge on (.npz or folder); default: 1 calibration sample in 4."
        ),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Lowest share of agreeing samples accepted.")
    ] = 0.99,
    rtol: Annotated[float, typer.Option(min=0.0, help="Tolerance of non-classifier outputs.")] = 0.05,
    quant_format: Annotated[str, typer.Option("--format", help="qdq or qoperator.")] = "qdq",
    per_channel: Annotated[bool, typer.Option(help="One scale per output channel of each weight.")] = True,
    reduce_range: Annotated[bool, typer.Option(help="7-bit weights (CPUs without VNNI).")] = False,
    method: Annotated[str, typer.Option(help="Calibration: minmax, entropy or percentile.")] = "minmax",
    min_conv_channels: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Convolutions with fewer input channels stay float32 (0: none); default: the thin "
            "ones (< 4) go int8 only where that times >= 10% faster here.",
        ),
    ] = None,
    global_pool: Annotated[
        bool, typer.Option(help="Pool in int8: Transpose→ReduceMean over H, W as GlobalAveragePool.")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the gate's report as JSON.")] = False,
) -> None:
    """Quantize to int8 (static, per part), check it against the float32 model, write it.

    Below --min-agreement: exit 1 with the gate's table and each part's agreement quantized alone.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onnxstitch.files import save
    from onnxstitch.precision import quantize, read_precision

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=json_out) as bar:
        task = bar.add_task("calibrating", total=None)
        with stage_progress("quantizing", quiet=json_out or err_console.is_terminal):
            result = quantize(
                str(model),
                str(calibration),
                parts=parse_parts(part, "int8"),
                holdout=None if holdout is None else str(holdout),
                min_agreement=min_agreement,
                rtol=rtol,
                format=quant_format,
                per_channel=per_channel,
                reduce_range=reduce_range,
                calibrate_method=method,
                min_conv_channels=min_conv_channels,
                global_pool=global_pool,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    save(result, output)
    _report(read_precision(result), output, json_out)


def fp16_command(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .onnx model (float32).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", dir_okay=False, help="Where to write the fp16 model.")
    ],
    part: Annotated[
        list[str] | None,
        typer.Option("--part", "-p", help="Convert this part (repeat), or PART=fp16|fp32; default: all."),
    ] = None,
    keep_io_types: Annotated[bool, typer.Option(help="Keep float32 inputs and outputs.")] = True,
    holdout: Annotated[
        Path | None, typer.Option(exists=True, help="Samples to judge on (.npz or folder); default: random.")
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Lowest share of agreeing samples accepted.")
    ] = 0.99,
    rtol: Annotated[float, typer.Option(min=0.0, help="Tolerance of non-classifier outputs.")] = 0.01,
    json_out: Annotated[bool, typer.Option("--json", help="Print the gate's report as JSON.")] = False,
) -> None:
    """Convert to float16 (for GPUs; per part), check it against the float32 model, write it."""
    from onnxstitch.files import save
    from onnxstitch.precision import read_precision, to_fp16

    with stage_progress("converting to float16", quiet=json_out):
        result = to_fp16(
            str(model),
            parts=parse_parts(part, "fp16"),
            keep_io_types=keep_io_types,
            holdout=None if holdout is None else str(holdout),
            min_agreement=min_agreement,
            rtol=rtol,
        )
    save(result, output)
    _report(read_precision(result), output, json_out)


def _report(record: dict[str, Any] | None, output: Path, json_out: bool) -> None:
    from onnxstitch.precision import PrecisionReport
    from onnxstitch.precision._speed import speed_note

    if json_out:
        print_json(record)
        return
    console.print(f"wrote {output}", markup=False)
    if record:
        console.print(str(PrecisionReport.from_dict(record)), markup=False, soft_wrap=True)
        note = speed_note(record["speed"], record["parts"], cli=True) if record.get("speed") else None
        if note:
            console.print(f"note: {note}", markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``quantize`` and ``fp16`` to the ``onnxstitch`` app."""
    app.command("quantize")(quantize_command)
    app.command("fp16")(fp16_command)
