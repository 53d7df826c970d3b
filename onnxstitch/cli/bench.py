"""``onnxstitch bench``: latency percentiles, throughput, session time and memory of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxstitch.cli._common import console, err_console, print_json
from onnxstitch.errors import StitchError

__all__ = ["parse_ints", "register"]


def parse_ints(text: str, *, option: str) -> tuple[int, ...]:
    """Parse ``"1,8,64"`` into ``(1, 8, 64)``.

    Raises:
        StitchError: an item is not a positive integer.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items or not all(item.isdigit() and int(item) > 0 for item in items):
        raise StitchError(
            f"{option} {text!r} is not a comma-separated list of positive integers", hint="e.g. 1,8,64"
        )
    return tuple(int(item) for item in items)


def bench_command(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The .onnx model to measure.")],
    batch: Annotated[str, typer.Option("--batch", "-b", help="Batch sizes, comma-separated.")] = "1,8,64",
    device: Annotated[
        str, typer.Option(help="auto (the best available, as in `run`), cpu, cuda or tensorrt.")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads (default: one per core).")
    ] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs per batch size.")] = 3,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per batch size.")] = 20,
    optimization: Annotated[str, typer.Option(help="all, extended, basic or disabled.")] = "all",
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Measure latency (p50/p90/p99), throughput, session-creation time and peak memory.

    Throughput (samples/s) is all samples over all the timed runs' time: batch / mean latency.
    """
    from rich.progress import Progress
    from rich.table import Table

    from onnxstitch.runtime.benchmark import bench

    sizes = parse_ints(batch, option="--batch")
    with Progress(console=err_console, transient=True, disable=json_out) as bar:
        task = bar.add_task("benchmarking", total=len(sizes))
        result = bench(
            model,
            batch_sizes=sizes,
            device=device,
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            optimization=optimization,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    if json_out:
        print_json(result.to_dict())
        return
    table = Table(title=f"{model.name} on {result.providers[0]} (threads={threads or 'default'})")
    for column in ("batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s (batch/mean)"):
        table.add_column(column, justify="right")
    for r in result.rows:
        table.add_row(
            str(r.batch),
            f"{r.p50_ms:.3f}",
            f"{r.p90_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.mean_ms:.3f}",
            f"{r.throughput:.1f}",
        )
    console.print(table)
    console.print(
        f"session creation {result.session_seconds * 1000:.1f} ms, peak RSS {result.peak_rss_mb:.0f} MiB"
    )


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the ``onnxstitch`` app."""
    app.command("bench")(bench_command)
