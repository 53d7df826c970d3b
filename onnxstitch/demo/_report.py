"""The demo's outputs for people: ``report.md`` and a PNG plot (matplotlib, Agg canvas, no window)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxstitch.errors import MissingDependencyError

if TYPE_CHECKING:
    from onnxstitch.demo._run import DemoResult

__all__ = ["confusion_matrix", "render_report", "write_plot"]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``m[i, j]`` = how many images of class ``i`` were predicted as ``j``."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


_FRAMEWORK = {"keras": "Keras", "torch": "PyTorch"}


def _names(result: DemoResult) -> tuple[str, str]:
    first = "Keras backbone" if result.flavour == "keras-torch" else "PyTorch trunk"
    second = "PyTorch head" if result.flavour == "keras-torch" else "Keras head"
    return first, second


def render_report(result: DemoResult) -> str:
    """The Markdown text of ``report.md``: data, training, accuracy, parity, latency, parts, files."""
    first, second = _names(result)
    fw1, fw2 = _FRAMEWORK[result.first_framework], _FRAMEWORK[result.second_framework]
    timed_int8 = all(r.int8_ms is not None for r in result.latency) and bool(result.latency)
    lat_rows = "\n".join(
        f"| {r.batch} | {r.native_ms:.3f} | {r.parts_ms:.3f} | {r.merged_ms:.3f} | {r.speedup:.1f}× |"
        + (f" {r.int8_ms:.3f} | {r.int8_speedup:.1f}× |" if timed_int8 else "")
        for r in result.latency
    )
    lat_head = (
        "| batch | native chain (ms) | native parts alone, summed (ms) | merged model (ms) "
        "| speed-up vs chain |"
    )
    lat_rule = "| --- | --- | --- | --- | --- |"
    if timed_int8:
        lat_head += " int8 merged model (ms) | int8 speed-up vs merged |"
        lat_rule += " --- | --- |"
    adapters = (
        "\n".join(f"- `{a}`" for a in result.adapters)
        if result.adapters
        else "- none: the seam carries a plain feature vector, nothing to adapt"
    )
    files = "\n".join(f"- {name}: `{path}`" for name, path in result.files.items())
    seam = "×".join(map(str, result.feature_shape))
    int8_row, int8_text = _int8_section(result)
    int8_note = (
        " The int8 model runs the same graph with int8 kernels where `ox.quantize` put them; the digits"
        " model is tiny (8×8 images), so they have little time to save here."
        if timed_int8
        else ""
    )
    drawn = result.files.get("picture")
    picture = f"\n![the merged model's parts, seams and adapters]({drawn.name})\n" if drawn else ""
    return f"""# onnxstitch demo: {first} + {second} ({result.flavour})

Two models trained separately, each in its own framework, shipped as **one** ONNX model.

- **Data**: scikit-learn's handwritten digits, {result.n_train:,} training and {result.n_test:,} test images
  (8×8, one channel), stratified split with a fixed seed.
- **Training** (`--seed {result.seed}`, {result.epochs} epochs per part): the {first} was trained in {fw1}
  with a temporary classifier on top (test accuracy {_pct(result.first_accuracy)}); the {second} was then
  trained in {fw2} on the {first}'s features ({seam} per image).
- **Conversion and merge**: `ox.from_{result.first_framework}`, `ox.from_{result.second_framework}`, then
  `ox.chain` → `hybrid.onnx`: input `{result.input_name}` ({result.input_layout}, shape
  {list(result.input_shape)}), output `{result.output_name}`.

## Accuracy on the {result.n_test} test images

| model | accuracy |
| --- | --- |
| native chain ({fw1} → {fw2}, in Python) | {_pct(result.native_accuracy)} |
| merged ONNX model (`hybrid.onnx`, onnxruntime) | {_pct(result.merged_accuracy)} |{int8_row}

Predicted classes identical on **{result.same_predictions} / {result.n_test}** test images; largest
absolute difference of the logits: **{result.max_abs_error:.2e}**.
{int8_text}
## Verification (`ox.verify`, the whole test set as one batch)

```text
{result.verify_table}
```

## Latency (CPU, {result.threads} thread(s), median of {result.repeats} runs)

{lat_head}
{lat_rule}
{lat_rows}

The native chain is what a user writes without onnxstitch: the {fw1} forward pass, a hand-off
through numpy, then the {fw2} forward pass (Keras `predict_on_batch`, PyTorch under
`inference_mode`), in one process. Each part timed alone shows what the frameworks cost without
the hand-off; the chain costs more because two frameworks' thread pools share the cores (their idle
workers keep spinning after a call). The merged model is one onnxruntime session. These numbers come
from a demo run on whatever else the machine was doing: `docs/benchmarks.md` has the careful
measurements.{int8_note}

## The merged model, part by part
{picture}
```text
{result.summary}
```

Adapters inserted automatically at the seam:
{adapters}

## Files

{files}
"""


def _int8_section(result: DemoResult) -> tuple[str, str]:
    """The int8 row of the accuracy table and its paragraph with the gate's table ("" without int8)."""
    if result.int8_accuracy is None:
        return "", ""
    quantized = ", ".join(f"{p} {v}" for p, v in result.int8_parts.items()) or "no part"
    written = result.files.get("model_int8")
    name = f"`{written.name}`" if written else "not written: refused by the gate"
    row = f"\n| int8 merged model ({name}; {quantized}) | {_pct(result.int8_accuracy)} |"
    verdict = (
        "passed it"
        if result.int8_passed
        else "**refused** it, so it is not written (the numbers show what int8 would cost)"
    )
    text = f"""
**int8** (`ox.quantize`, calibrated on training images; {quantized}): predicted class identical to
the native chain's on **{result.int8_same_predictions} / {result.n_test}** test images. Its accuracy
gate (top-1 agreement with the float32 model and with the native chain on the test images) {verdict}:

```text
{result.int8_gate}
```
"""
    return row, text


def write_plot(result: DemoResult, path: Path) -> Path:
    """Write a PNG: latency bars (native vs merged) next to the merged model's confusion matrix.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    figure(result).savefig(path, dpi=110)
    return path


def figure(result: DemoResult) -> Any:
    """The demo's matplotlib ``Figure`` (what :func:`write_plot` saves).

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", extra="demo", purpose="the demo's plot") from exc
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_lat, ax_cm = fig.subplots(1, 2, width_ratios=(1, 1.1))
    batches = [r.batch for r in result.latency]
    xs = np.arange(len(batches))
    native = [r.native_ms for r in result.latency]
    merged = [r.merged_ms for r in result.latency]
    int8 = [r.int8_ms for r in result.latency]
    series = [("native chain", native, "#d62728"), ("merged ONNX model", merged, "#1f77b4")]
    if int8 and all(v is not None for v in int8):
        series.append(("int8 merged model", [float(v or 0.0) for v in int8], "#2ca02c"))
    width = 0.8 / len(series)
    for k, (label, values, colour) in enumerate(series):
        bars = ax_lat.bar(xs + (k - (len(series) - 1) / 2) * width, values, width, label=label, color=colour)
        ax_lat.bar_label(bars, fmt="%.2f", fontsize=8)
    ax_lat.set_xticks(xs, [f"batch {b}" for b in batches])
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("median latency (ms, log scale)")
    ax_lat.set_title(f"Latency on CPU ({result.threads} thread(s))")
    ax_lat.legend()
    matrix = result.confusion
    ax_cm.imshow(matrix, cmap="Blues")
    for i, j in zip(*np.nonzero(matrix), strict=True):
        colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
        ax_cm.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax_cm.set_xticks(range(matrix.shape[1]))
    ax_cm.set_yticks(range(matrix.shape[0]))
    ax_cm.set_xlabel("predicted digit")
    ax_cm.set_ylabel("true digit")
    ax_cm.set_title(  # two lines: one is wider than the axes and was cut off at the figure's edge
        f"Merged model: {_pct(result.merged_accuracy)} test accuracy\n"
        f"same digit as native on {result.same_predictions}/{result.n_test} test images"
    )
    fig.suptitle(f"onnxstitch demo ({result.flavour})")
    return fig
