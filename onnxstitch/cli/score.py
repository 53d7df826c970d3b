"""``onnxstitch score``: score a dataset (Parquet, or .npy/.npz files) with a model, locally or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onnxstitch.cli._common import console, err_console, print_json
from onnxstitch.errors import StitchError

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Task
    from rich.text import Text

__all__ = ["parse_map", "register"]


def parse_map(specs: list[str]) -> dict[str, str]:
    """``["col=input", ...]`` -> ``{col: input}``.

    Raises:
        StitchError: a spec is not ``col=input``, or a column is mapped twice.
    """
    mapping: dict[str, str] = {}
    for spec in specs:
        col, sep, inp = spec.partition("=")
        if not sep or not col or not inp:
            raise StitchError(f"--map {spec!r}: expected column=input", hint="e.g. --map pixels=image")
        if col in mapping:
            raise StitchError(f"--map: column {col!r} is mapped twice")
        mapping[col] = inp
    return mapping


def _rows_per_second_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f} rows/s")

    return RowsPerSecond()


def score_command(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .onnx model.")],
    source: Annotated[
        Path,
        typer.Option(
            "--input", "-i", exists=True, help="A Parquet file or folder, or a folder of .npy/.npz files."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The Parquet file to write."),
    ],
    engine: Annotated[
        str, typer.Option(help="local (stream in this process) or ray (Ray Data actors).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray: the cluster to join (auto, ray://host:10001); default: a local Ray."),
    ] = None,
    actors: Annotated[int, typer.Option(min=1, help="Ray: actors, each with one session.")] = 1,
    num_cpus: Annotated[
        int | None, typer.Option(min=1, help="Ray: CPUs of the local Ray (default: all).")
    ] = None,
    maps: Annotated[
        list[str] | None,
        typer.Option("--map", help="column=input for a column not named after its input; repeatable."),
    ] = None,
    keep: Annotated[
        list[str] | None,
        typer.Option(
            help="A column to carry to the output (default: every column that feeds no input); repeatable."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per model run.")] = 1024,
    device: Annotated[str, typer.Option(help="cpu, cuda, auto or tensorrt.")] = "cpu",
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads per session.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Score every row of the input with MODEL and write the outputs (and the id columns) as Parquet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onnxstitch.runtime.scoring import score

    columns = parse_map(maps or [])
    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        _rows_per_second_column(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=json_out or engine != "local",
    ) as bar:
        task = bar.add_task("scoring", total=None)
        result = score(
            model,
            source,
            output=output,
            engine=engine,
            batch_size=batch_size,
            columns=columns or None,
            keep=keep,
            device=device,
            threads=threads,
            address=address,
            actors=actors,
            num_cpus=num_cpus,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if json_out:
        print_json(
            {
                "output": str(result.output),
                "engine": result.engine,
                "rows": result.rows,
                "seconds": result.seconds,
                "setup_seconds": result.setup_seconds,
                "score_seconds": result.score_seconds,
                "rows_per_second": result.rows_per_second,
                "columns": list(result.columns),
            }
        )
        return
    # the rate counts the scoring only: on a few rows the set-up (session, Ray) is most of the time
    console.print(
        f"scored {result.rows:,} rows in {result.seconds:.2f} s (setup {result.setup_seconds:.2f} s; "
        f"{result.rows_per_second:,.0f} rows/s scoring, {result.engine}) -> {result.output}  "
        f"(columns: {', '.join(result.columns)})"
    )


def register(app: typer.Typer) -> None:
    """Add ``score`` to the ``onnxstitch`` app."""
    app.command("score")(score_command)
