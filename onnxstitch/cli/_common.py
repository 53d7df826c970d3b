"""Shared helpers of the CLI commands: consoles, JSON output, `module:attr` loading, hints in the
command line's own words, and stage progress of long work."""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.text import Text

from onnxstitch.errors import StitchError

# Width of a console that writes to a pipe or a file: wide enough that no error line or table row is
# ever wrapped (Rich would wrap at 80 columns), while a terminal keeps its own width.
UNWRAPPED_WIDTH = 10_000


# exit status of a command whose reader went away (`onnxstitch inspect m.onnx | head`): what a shell
# reports for the Unix tools that SIGPIPE ends (128 + 13), with no message
BROKEN_PIPE_EXIT = 141


def quiet_broken_pipe() -> None:
    """stdout's reader is gone: point stdout at /dev/null so that no later flush fails loudly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # no real stdout (a test runner's buffer)
        pass


class _CliConsole(Console):
    """A Rich console that wraps at the terminal's width on a terminal and nowhere otherwise, and
    ends the command quietly when its reader goes away."""

    def on_broken_pipe(self) -> None:
        """Rich's own handler exits 1; a Unix tool whose reader left exits quietly (141)."""
        self.quiet = True
        quiet_broken_pipe()
        raise SystemExit(BROKEN_PIPE_EXIT)

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self.is_terminal or self._width is not None or "COLUMNS" in self._environ:
            return size  # type: ignore[no-any-return]
        return ConsoleDimensions(UNWRAPPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


console: Console = _CliConsole(highlight=False)
err_console: Console = _CliConsole(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout, nothing else (for machines)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def import_object(spec: str, *, what: str) -> Any:
    """Import ``package.module:attr`` (the user's own code, named explicitly on the command line).

    Raises:
        StitchError: the spec is malformed, or the module or attribute does not exist.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise StitchError(
            f"{what} {spec!r} is not of the form 'package.module:name'",
            hint="name a module importable from the current directory and an attribute in it",
        )
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StitchError(
            f"{what} {spec!r}: cannot import module {module_name!r}: {exc}",
            hint="run from the folder that holds the module, or install it",
        ) from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = sorted(n for n in dir(module) if not n.startswith("_"))
            raise StitchError(
                f"{what} {spec!r}: module {module_name!r} has no attribute {part!r}",
                hint=f"available names: {', '.join(names[:30])}",
            ) from None
    return obj


# The Python API's spelling of an option -> the command line's (hints are written for the API).
_API_TO_FLAGS = (
    (re.compile(r"\bvalidate=False\b"), "--no-validate"),
    (re.compile(r"\btrusted=True\b"), "--trusted"),
    (re.compile(r"\b(rtol|atol|opset)=(?=\S)"), r"--\1 "),
    (re.compile(r"\b(rtol|atol|opset)=(?!\S)"), r"--\1"),
    (re.compile(r"(?<![-\w])(rtol|atol)/(rtol|atol)\b"), r"--\1/--\2"),
    (
        re.compile(r"\bpass op_handlers=(\{[^}]*\})"),
        r"convert in Python with from_keras(..., op_handlers=\1)",
    ),
)


def cli_words(text: str) -> str:
    """Rewrite the Python API's option spellings in ``text`` as command-line flags."""
    for pattern, flag in _API_TO_FLAGS:
        text = pattern.sub(flag, text)
    return text


@contextmanager
def hints_as_flags() -> Iterator[None]:
    """Re-raise a :class:`StitchError` with its message and hint in the command line's words."""
    try:
        yield
    except StitchError as exc:
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (cli_words(exc.args[0]), *exc.args[1:])
        if exc.hint:
            exc.hint = cli_words(exc.hint)
        raise


class _StageHandler(logging.Handler):
    """Shows each INFO record of the library as the current stage of a long command."""

    def __init__(self, show: Any) -> None:
        super().__init__(logging.INFO)
        self.show = show

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.show(record.getMessage())
        except Exception:  # a display problem must never break the work
            self.handleError(record)


@contextmanager
def stage_progress(title: str, *, quiet: bool = False, logger_name: str = "onnxstitch") -> Iterator[None]:
    """Progress of long work on stderr: the library's INFO records are its stages.

    On a terminal: a spinner, the title and the current stage on one line, and a running clock.
    Otherwise (a pipe, CI logs): one line per stage with the elapsed seconds. ``quiet`` shows nothing
    (``--json``). The library logger's level is raised to INFO for the block only, then put back.
    """
    if quiet:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    started = time.monotonic()
    display: Progress | None = None
    if err_console.is_terminal:
        display = bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        task = bar.add_task(f"{title} …", total=None)

        def show(stage: str) -> None:  # one line: cut to leave room for the spinner and the clock
            text = Text(f"{title}: {stage}")
            text.truncate(max(err_console.width - 12, 20), overflow="ellipsis")
            bar.update(task, description=text.plain)
    else:
        err_console.print(f"{title} …", markup=False, highlight=False)

        def show(stage: str) -> None:
            err_console.print(f"{title} [{time.monotonic() - started:5.1f} s] {stage}", markup=False)

    library = logging.getLogger(logger_name)
    level = library.level
    handler = _StageHandler(show)
    library.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        library.setLevel(logging.INFO)
    try:
        if display is not None:
            with display:
                yield
        else:
            yield
    finally:
        library.removeHandler(handler)
        library.setLevel(level)
