"""``onnxstitch diff`` and ``onnxstitch replace``: what changed between two versions, and swapping a part."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxstitch.cli._common import console, print_json
from onnxstitch.errors import StitchError

__all__ = ["register"]


def diff_command(
    old: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The model deployed today.")],
    new: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The candidate model.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the diff as JSON (stable keys).")] = False,
) -> None:
    """Compare two versions of a (merged) model part by part: identical, weights changed (with the
    largest relative change per tensor), structure changed (nodes added/removed by op type), signature
    or seam changed; merged inputs/outputs and opsets too. Exit 0 when identical, 1 when they differ."""
    from onnxstitch.files.diff import diff

    result = diff(old, new)
    if json_out:
        print_json({"old": str(old), "new": str(new), **result.to_dict()})
    else:
        for line in result.lines():
            console.print(line, markup=False)
    raise typer.Exit(code=0 if result.identical else 1)


def _parse_replacement(text: str) -> tuple[str, str]:
    key, sep, path = text.partition("=")
    if not sep or not key or not path:
        raise typer.BadParameter(f"{text!r} is not of the form PART=NEW_PART.onnx (e.g. head=new_head.onnx)")
    return key, path


def replace_command(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The merged .onnx model.")],
    replacement: Annotated[
        str, typer.Argument(metavar="PART=NEW.onnx", help="The part to swap and its new model file.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="The merged .onnx to write.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the diff against MODEL as JSON.")] = False,
) -> None:
    """Swap one part of a merged model for a new version (e.g. a retrained head), with the recorded
    wiring; the seams are checked again. Prints what changed."""
    from onnxstitch.compose import replace
    from onnxstitch.files.diff import diff

    key, path = _parse_replacement(replacement)
    new_part = Path(path)
    if not new_part.is_file():
        raise typer.BadParameter(f"new part {path!r} is not a file", param_hint="PART=NEW.onnx")
    if out.resolve() == model.resolve():
        raise StitchError(f"--out {out} would overwrite the merged model", hint="write to a new file")
    written = replace(model, key, new_part, save_to=out)
    result = diff(model, written)
    if json_out:
        print_json({"output": str(written), **result.to_dict()})
        return
    console.print(f"wrote {written} (part {key!r} replaced)", markup=False)
    for line in result.lines():
        console.print(f"  {line}", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``diff`` and ``replace`` to the ``onnxstitch`` app."""
    app.command("replace")(replace_command)
    app.command("diff")(diff_command)
