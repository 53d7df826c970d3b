"""``onnxstitch verify``: compare an ONNX model with a native reference function."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from onnxstitch.cli._common import console, err_console, import_object, print_json

__all__ = ["register"]


def verify_command(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .onnx model to check.")],
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            "-r",
            help="package.module:function, called with the model's inputs as numpy arrays in graph order.",
        ),
    ],
    rtol: Annotated[float, typer.Option(min=0.0, help="Relative tolerance.")] = 1e-4,
    atol: Annotated[float, typer.Option(min=0.0, help="Absolute tolerance.")] = 1e-5,
    batch_sizes: Annotated[
        str, typer.Option(help="Batch sizes of the random feeds, comma-separated.")
    ] = "1,7",
    seed: Annotated[int, typer.Option(help="Seed of the random feeds.")] = 0,
    feeds: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="An .npz of feeds (by input name) instead of random ones."
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="cpu (default: exact parity with the reference, unlike `run`/`bench`'s auto), "
            "cuda, tensorrt or auto."
        ),
    ] = "cpu",
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run the model and the reference on the same feeds; exit 1 when an output differs."""
    from onnxstitch.cli.bench import parse_ints
    from onnxstitch.cli.run import load_feeds
    from onnxstitch.runtime.verification import verify

    function = import_object(reference, what="reference")
    sizes = parse_ints(batch_sizes, option="--batch-sizes")
    given = None if feeds is None else load_feeds([str(feeds)])
    with err_console.status("verifying", spinner="dots") if not json_out else nullcontext():
        report = verify(
            model, function, given, rtol=rtol, atol=atol, batch_sizes=sizes, seed=seed, device=device
        )
    if json_out:
        print_json(report.to_dict())
    else:
        console.print(str(report), markup=False, soft_wrap=True)
    if not report:
        if not json_out:
            err_console.print("[bold red]error:[/] the model does not match the reference (see the table)")
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add ``verify`` to the ``onnxstitch`` app."""
    app.command("verify")(verify_command)
