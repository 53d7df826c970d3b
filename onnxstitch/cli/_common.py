"""Shared helpers of the CLI commands: consoles, JSON output, `module:attr` loading."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from rich.console import Console

from onnxstitch.errors import StitchError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


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
