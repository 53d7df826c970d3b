"""The ``onnxstitch`` command line: a thin layer of typer commands over the Python API.

One module per verb group; each defines ``register(app)``. Exit codes: 0 ok, 1 toolkit error
(a :class:`~onnxstitch.errors.StitchError`: message, no traceback), 2 usage error.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from onnxstitch.cli._common import err_console
from onnxstitch.errors import StitchError

# verb modules under onnxstitch.cli, registered in this order (order of `--help`)
_COMMAND_MODULES = (
    "convert",
    "merge",
    "inspect",
    "run",
    "verify",
    "bench",
    "deploy",
    "serve",
    "demo",
)


class _StitchGroup(TyperGroup):
    """Turns a StitchError anywhere below into a one-line message and exit code 1."""

    def invoke(self, ctx: Any) -> Any:  # typer vendors click: its Context type is private
        try:
            return super().invoke(ctx)
        except StitchError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
            raise typer.Exit(code=1) from None


def _build_app() -> typer.Typer:
    app = typer.Typer(
        name="onnxstitch",
        cls=_StitchGroup,
        help="Convert models to ONNX, stitch them into one graph, verify, run, deploy and serve it.",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
        add_completion=False,
    )
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"onnxstitch.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"onnxstitch.cli.{name}":
                raise
            continue
        module.register(app)
    return app


app = _build_app()


def main() -> None:
    """Entry point of the ``onnxstitch`` console script."""
    app()
