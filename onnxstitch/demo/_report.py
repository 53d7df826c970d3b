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
    lat_rows = "\n".join(
        f"| {r.batch} | {r.native_ms:.3f} | {r.parts_ms:.3f} | {r.merged_ms:.3f} | {r.speedup:.1f}× |"
        for r in result.latency
    )
    adapters = (
        "\n".join(f"- `{a}`" for a in result.adapters)
        if result.adapters
        else "- none: the seam carries a plain feature vector, nothing to adapt"
    )
    files = "\n".join(f"- {name}: `{path}`" for name, path in result.files.items())
    seam = "×".join(map(str, result.feature_shape))
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
| merged ONNX model (`hybrid.onnx`, onnxruntime) | {_pct(result.merged_accuracy)} |

Predicted classes identical on **{result.same_predictions} / {result.n_test}** test images; largest
absolute difference of the logits: **{result.max_abs_error:.2e}**.

## Verification (`ox.verify`, the whole test set as one batch)

```text
{result.verify_table}
```

## Latency (CPU, {result.threads} thread(s), median of {result.repeats} runs)

| batch | native chain (ms) | native parts alone, summed (ms) | merged model (ms) | speed-up vs chain |
| --- | --- | --- | --- | --- |
{lat_rows}

The native chain is what a user writes without onnxstitch: the {fw1} forward pass, a hand-off
through numpy, then the {fw2} forward pass (Keras `predict_on_batch`, PyTorch under
`inference_mode`), in one process. Each part timed alone shows what the frameworks cost without
the hand-off; the chain costs more because two frameworks' thread pools share the cores (their idle
workers keep spinning after a call). The merged model is one onnxruntime session. These numbers come
from a demo run on whatever else the machine was doing: `docs/benchmarks.md` has the careful
measurements.

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
    bars_n = ax_lat.bar(xs - 0.2, native, 0.4, label="native chain", color="#d62728")
    bars_m = ax_lat.bar(xs + 0.2, merged, 0.4, label="merged ONNX model", color="#1f77b4")
    ax_lat.bar_label(bars_n, fmt="%.2f", fontsize=8)
    ax_lat.bar_label(bars_m, fmt="%.2f", fontsize=8)
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
