"""``onnxstitch demo``: train a Keras + PyTorch hybrid natively and ship it as one verified ONNX model."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onnxstitch.cli._common import console
from onnxstitch.demo import DEFAULT_EPOCHS, FLAVOURS

if TYPE_CHECKING:
    from onnxstitch.demo import DemoResult, ProgressEvent

__all__ = ["Flavour", "demo_command", "register"]


class Flavour(StrEnum):
    """The two pairings of ``--flavour`` (values: ``onnxstitch.demo.FLAVOURS``)."""

    keras_torch = FLAVOURS[0]
    torch_keras = FLAVOURS[1]


class _StageDisplay:
    """A rich progress display with one line per stage: spinner, bar (epochs), outcome, time."""

    def __init__(self, flavour: str) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from onnxstitch.demo import stages

        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[detail]}"),
            console=console,
        )
        add = self.progress.add_task
        self.tasks = {key: add(title, total=1, start=False, detail="") for key, title in stages(flavour)}

    def __call__(self, event: ProgressEvent) -> None:
        task = self.tasks[event.stage]
        if not self.progress.tasks[task].started:
            self.progress.start_task(task)
        self.progress.update(task, total=event.total, completed=event.completed, detail=event.detail)
        if event.finished:
            self.progress.stop_task(task)


def _summary(result: DemoResult) -> Any:
    """The final panel: what happened, for someone who has never used onnxstitch, and where to look."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    fw = {"keras": "Keras", "torch": "PyTorch"}
    first, second = fw[result.first_framework], fw[result.second_framework]
    kind_first = "CNN backbone" if result.first_framework == "keras" else "conv trunk"
    kind_second = "MLP head" if result.second_framework == "torch" else "conv head"
    seam = "×".join(map(str, result.feature_shape))
    adapter = (
        f"\n   At the seam ox.chain inserted a layout adapter by itself ({result.adapters[0]}): "
        f"the {first} part emits NCHW, the {second} part expects NHWC."
        if result.adapters
        else ""
    )
    story = (
        f"1. Trained a {first} {kind_first} in {first} on {result.n_train:,} digit images "
        f"(test accuracy {100 * result.first_accuracy:.1f} % with a temporary classifier).\n"
        f"2. Trained a {second} {kind_second} in {second} on the {kind_first}'s {seam} features.\n"
        f"3. Converted both to ONNX and chained them into ONE model, hybrid.onnx "
        f"(input {result.input_name!r} {result.input_layout}, output {result.output_name!r}).{adapter}\n"
        f"4. Checked it against the two frameworks run one after the other: same predicted digit on "
        f"[bold]{result.same_predictions}/{result.n_test}[/] test images, largest logit difference "
        f"{result.max_abs_error:.1e}.\n"
        f"{_int8_step(result)}"
        f"{6 if result.int8_accuracy is not None else 5}. Timed them and wrote a Triton model repository, "
        "a report and a plot."
    )
    table = _numbers(result, first, second)
    contended = [r for r in result.latency if r.native_ms > 2 * r.parts_ms]
    note = (
        f"[dim]At batch {', '.join(str(r.batch) for r in contended)} the native chain is slowed by the two "
        f"frameworks' thread pools competing for the cores: its parts, each timed alone, take "
        f"{', '.join(f'{r.parts_ms:.2f} ms' for r in contended)} in total (report.md has both).[/]"
        if contended
        else ""
    )
    out = result.out_dir
    files = Table(box=None, padding=(0, 2), show_header=False)
    for path, what in (
        (result.files["model"], "the merged model (open it in Netron, or `onnxstitch inspect`)"),
        (result.files["triton"], "a Triton model repository entry (config.pbtxt + 1/model.onnx)"),
        (result.files["report"], "all the numbers, the verification table, the model part by part"),
        (result.files["plot"], "latency bars and the confusion matrix"),
    ):
        files.add_row(str(path), what)
    if "model_int8" in result.files:
        files.add_row(str(result.files["model_int8"]), "the int8 merged model (ox.quantize, gate passed)")
    nxt = (
        f"onnxstitch inspect {out / 'hybrid.onnx'}\n"
        f"onnxstitch serve {out / 'hybrid.onnx'}   # a KServe v2 server that tritonclient talks to\n"
        "docs/tutorial.md walks through these steps in Python"
    )
    title = f"[bold]onnxstitch demo ({result.flavour}, seed {result.seed}, {result.epochs} epochs)[/]"
    return Panel(
        Group(story, "", table, *[note][: bool(note)], "", "[bold]Files[/]", files, "", "[bold]Next[/]", nxt),
        title=title,
        expand=False,
    )


def _numbers(result: DemoResult, first: str, second: str) -> Any:
    """Accuracy and latency: native chain, merged model and, when it was made, the int8 model."""
    from rich.table import Table

    int8 = result.int8_accuracy is not None
    table = Table(box=None, padding=(0, 2))
    table.add_column("", no_wrap=True)
    table.add_column(f"native\n{first} → {second}", justify="right", no_wrap=True)
    table.add_column("merged\nONNX model", justify="right", no_wrap=True)
    table.add_column("", justify="right", no_wrap=True)  # the speed-up, apart: the numbers line up
    if int8:
        table.add_column("int8\nmerged", justify="right", no_wrap=True)
        table.add_column("", justify="right", no_wrap=True)
    table.add_row(
        "test accuracy",
        f"{100 * result.native_accuracy:.2f} %",
        f"{100 * result.merged_accuracy:.2f} %",
        "",
        *([f"{100 * (result.int8_accuracy or 0.0):.2f} %", ""] if int8 else []),
    )
    for row in result.latency:
        speedup = row.int8_speedup
        table.add_row(
            f"latency, batch {row.batch}",
            f"{row.native_ms:.2f} ms",
            f"{row.merged_ms:.2f} ms",
            f"[green]({row.speedup:.1f}× faster)[/]",
            *(
                [f"{row.int8_ms:.2f} ms", f"[green]({speedup:.1f}× vs merged)[/]"]
                if int8 and row.int8_ms is not None and speedup is not None
                else ([] if not int8 else ["", ""])
            ),
        )
    return table


def _int8_step(result: DemoResult) -> str:
    """Step 5 of the story: what ox.quantize made of the merged model ("" when it did not run)."""
    if result.int8_accuracy is None:
        return ""
    quantized = ", ".join(f"{p} {v}" for p, v in result.int8_parts.items())
    verdict = (
        "passed its accuracy gate"
        if result.int8_passed
        else "[bold]refused by its accuracy gate[/] (not written)"
    )
    return (
        f"5. Quantized it to int8 with ox.quantize ({quantized}): same digit as the native chain on "
        f"[bold]{result.int8_same_predictions}/{result.n_test}[/] test images, {verdict}.\n"
    )


def demo_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the model, Triton repository, report and plot.")
    ] = Path("demo-out"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of each part.")] = DEFAULT_EPOCHS,
    seed: Annotated[int, typer.Option(help="Seed of every RNG; the same seed gives the same models.")] = 0,
    flavour: Annotated[
        Flavour,
        typer.Option(
            help="keras-torch: Keras backbone → PyTorch head; torch-keras: PyTorch trunk → Keras head."
        ),
    ] = Flavour.keras_torch,
) -> None:
    """Train a Keras + PyTorch hybrid on handwritten digits and ship it as one verified ONNX model.

    Each part is trained in its own framework, then both are converted and chained into one ONNX
    model, checked against the two frameworks on every test image and timed. Written to --out: the
    model, a Triton model repository, a report and a plot. No network; about a minute on 2 cores.
    """
    # torch.onnx warns that torchvision is missing (only its detection ops need it)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

    from onnxstitch.cli.convert import import_tensorflow_quietly
    from onnxstitch.demo import run_demo
    from onnxstitch.demo._run import check_dependencies, check_out_dir

    check_dependencies()  # before TensorFlow's import (seconds) and the training (a minute)
    check_out_dir(out)
    name = flavour.value
    console.print(f"[bold]onnxstitch demo[/] ({name}): two frameworks, one ONNX model → {out}{os.sep}\n")
    import_tensorflow_quietly()  # TensorFlow's start-up chatter, twice, would break the progress display
    display = _StageDisplay(name)
    with display.progress:
        result = run_demo(out, epochs=epochs, seed=seed, flavour=name, progress=display)
    console.print()
    # prose: wrapped at a readable width in a pipe too (the console itself never wraps there)
    sized = console.is_terminal or "COLUMNS" in os.environ
    console.print(_summary(result), width=console.width if sized else 100)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``onnxstitch`` app."""
    app.command("demo")(demo_command)
