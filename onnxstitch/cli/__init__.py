"""The ``onnxstitch`` command line: a thin layer of typer commands over the Python API.

One module per verb group; each defines ``register(app)``. Exit codes: 0 ok, 1 toolkit error
(a :class:`~onnxstitch.errors.StitchError`: message, no traceback), 2 usage error.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from onnxstitch.cli._common import BROKEN_PIPE_EXIT, err_console, quiet_broken_pipe
from onnxstitch.errors import StitchError

# verb modules under onnxstitch.cli, registered in this order (order of `--help`)
_COMMAND_MODULES = (
    "convert",
    "merge",
    "inspect",
    "diff",
    "run",
    "verify",
    "bench",
    "precision",
    "score",
    "deploy",
    "serve",
    "demo",
)


def _os_message(exc: OSError) -> str:
    """``[Errno 2] No such file or directory: 'x'`` → ``no such file or directory: x``."""
    reason = (exc.strerror or str(exc)).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    return f"{reason}: {where}" if where else reason


class _StitchGroup(TyperGroup):
    """Turns a StitchError (or an OS error on a user's path) below into one line and exit code 1;
    a closed stdout (``| head``) ends the command quietly."""

    def invoke(self, ctx: Any) -> Any:  # typer vendors click: its Context type is private
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            quiet_broken_pipe()
            raise typer.Exit(code=BROKEN_PIPE_EXIT) from None
        except StitchError as exc:
            message = str(exc)
        except OSError as exc:  # a path the user named: missing folder, no permission, a file not a dir
            message = _os_message(exc) + "\n  fix: check the path and its permissions"
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
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


__all__ = ["BROKEN_PIPE_EXIT", "app", "main"]


def main() -> None:
    """Entry point of the ``onnxstitch`` console script."""
    try:
        app()
    except BrokenPipeError:  # raised outside a command (while click prints help or usage)
        quiet_broken_pipe()
        sys.exit(BROKEN_PIPE_EXIT)
