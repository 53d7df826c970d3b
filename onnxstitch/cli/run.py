"""``onnxstitch run``: run a model on inputs from .npy/.npz files and save its outputs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onnxstitch.cli._common import console, err_console, print_json
from onnxstitch.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["check_output_path", "load_feeds", "register", "save_outputs"]


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive


def _looks_like(head: bytes) -> str:
    from onnxstitch.files.sniff import looks_like_text

    if not head:
        return "it is empty"
    return "it looks like text" if looks_like_text(head) else "its first bytes are not NumPy's"


def _load_array_file(path: Path) -> Any:
    import numpy as np

    if not path.is_file():
        raise InputError(f"input file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.startswith((_NPY_MAGIC, _ZIP_MAGIC)):
        kind = ".npz" if path.suffix == ".npz" else ".npy"
        raise InputError(
            f"{path.name} is not a NumPy {kind} file ({_looks_like(head)})",
            hint="save arrays with numpy.save (one array, .npy) or numpy.savez (several, .npz)",
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"input file {str(path)!r} is not a readable .npy/.npz file: {exc}",
            hint="save arrays with numpy.save / numpy.savez (pickled object arrays are refused)",
        ) from exc


def load_feeds(specs: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    """Read feeds from ``name=file.npy`` and ``file.npz`` specs (an .npz gives all its arrays).

    Raises:
        InputError: a spec is malformed, a file is missing or unreadable, or a name is given twice.
    """
    import numpy as np

    feeds: dict[str, np.ndarray[Any, Any]] = {}
    problems: list[str] = []
    for spec in specs:
        name, sep, file = spec.partition("=")
        if sep:
            if not name or not file:
                problems.append(f"--input {spec!r}: expected name=file.npy")
                continue
            loaded = _load_array_file(Path(file))
            if isinstance(loaded, np.lib.npyio.NpzFile):
                problems.append(f"--input {spec!r}: a name= spec takes one .npy array, give the .npz alone")
                continue
            pairs = [(name, loaded)]
        else:
            loaded = _load_array_file(Path(spec))
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                problems.append(
                    f"--input {spec!r}: a bare file must be an .npz; name a .npy as name=file.npy"
                )
                continue
            with loaded:
                pairs = [(key, loaded[key]) for key in loaded.files]
        for key, array in pairs:
            if key in feeds:
                problems.append(f"input {key!r} is given more than once")
            feeds[key] = np.asarray(array)
    if problems:
        raise InputError("bad --input:\n" + "\n".join(f"  - {p}" for p in problems))
    return feeds


def check_output_path(path: Path, n_outputs: int) -> None:
    """Check ``--output`` before any work: an .npz (any outputs) or an .npy (exactly one output).

    Raises:
        InputError: a folder, another suffix, or .npy for a model with several outputs.
    """
    if path.is_dir():
        raise InputError(
            f"--output {str(path)!r} is a folder; name the file to write in it",
            hint=f"e.g. --output {path / 'outputs.npz'}",
        )
    if path.suffix == ".npy" and n_outputs != 1:
        raise InputError(
            f"--output {str(path)!r}: an .npy file holds one array, the model has {n_outputs} outputs",
            hint=f"use an .npz file, e.g. --output {path.with_suffix('.npz')}",
        )
    if path.suffix not in (".npz", ".npy"):
        raise InputError(
            f"--output {str(path)!r} must end in .npz (all outputs by name)"
            + (" or .npy (the one output)" if n_outputs == 1 else ""),
            hint=f"e.g. --output {path.with_name(path.name + '.npz')}",
        )


def save_outputs(outputs: dict[str, Any], path: Path) -> Path:
    """Save outputs under their names: an .npz of all, or an .npy when there is exactly one.

    Raises:
        InputError: as :func:`check_output_path`.
    """
    import numpy as np

    check_output_path(path, len(outputs))
    if path.suffix == ".npz":
        np.savez(path, **outputs)
    else:
        np.save(path, next(iter(outputs.values())))
    return path


def _summary(outputs: dict[str, Any], seconds: float, providers: list[str]) -> None:
    from rich.table import Table

    table = Table(title=f"outputs ({seconds * 1000:.1f} ms on {providers[0]})")
    for column in ("output", "dtype", "shape", "min", "mean", "max"):
        table.add_column(column)
    for name, value in outputs.items():
        numeric = value.size and value.dtype.kind in "biuf"
        stats = (
            [f"{value.min():.4g}", f"{value.astype('float64').mean():.4g}", f"{value.max():.4g}"]
            if numeric
            else ["-"] * 3
        )
        table.add_row(name, str(value.dtype), "x".join(map(str, value.shape)) or "scalar", *stats)
    console.print(table)


def run_command(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .onnx model to run.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="name=file.npy for one input, or file.npz for several; repeatable."
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Save outputs to this .npz.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or tensorrt.")] = "auto",
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads (default: one per core).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Run in batches of this many rows.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Run MODEL on the given inputs; print a summary and optionally save the outputs."""
    from rich.progress import Progress

    from onnxstitch.runtime.session import Session

    feeds = load_feeds(inputs or [])
    session = Session(model, device=device, threads=threads)
    if output is not None:
        check_output_path(output, len(session.outputs))
    started = time.perf_counter()
    if batch_size is None:
        outputs = session.run(feeds)
    else:
        with Progress(console=err_console, transient=True, disable=json_out) as bar:
            task = bar.add_task("running", total=None)
            outputs = session.run_batched(
                feeds, batch_size, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
    seconds = time.perf_counter() - started
    if output is not None:
        save_outputs(outputs, output)
    if json_out:
        print_json(
            {
                "providers": session.providers,
                "seconds": seconds,
                "outputs": {n: {"dtype": str(v.dtype), "shape": list(v.shape)} for n, v in outputs.items()},
                "saved": None if output is None else str(output),
            }
        )
        return
    _summary(outputs, seconds, session.providers)
    if output is not None:
        console.print(f"saved {len(outputs)} output(s) to {output}")


def register(app: typer.Typer) -> None:
    """Add ``run`` to the ``onnxstitch`` app."""
    app.command("run")(run_command)
