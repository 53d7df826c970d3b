"""``run_demo``: a Keras + PyTorch hybrid, trained natively, shipped as one verified ONNX model.

Only the public API is used past training (``import onnxstitch as ox``): ``ox.from_keras``,
``ox.from_torch``, ``ox.chain``, ``ox.verify``, ``ox.quantize``, ``ox.Session``, ``ox.save``,
``ox.deploy_triton``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import onnxstitch as ox
from onnxstitch.demo import DEFAULT_EPOCHS, FLAVOURS
from onnxstitch.demo._data import Digits, load_digits_split
from onnxstitch.demo._int8 import Int8Outcome, quantize_merged
from onnxstitch.demo._report import confusion_matrix, render_report, write_plot
from onnxstitch.demo._train import NativeParts, setup_frameworks, train_first, train_second
from onnxstitch.errors import MissingDependencyError, StitchError

__all__ = ["DemoResult", "LatencyRow", "ProgressEvent", "run_demo", "stages"]

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 64)
#: tolerances of the parity check between the native chain and the merged model (float32 logits)
RTOL = 1e-4
ATOL = 1e-4


@dataclass(frozen=True)
class ProgressEvent:
    """One step of the demo, for a progress display.

    Attributes:
        stage: the stage key (see :func:`stages`).
        title: what the stage does, for people.
        completed: steps done so far in this stage (epochs while training, else 0 or 1).
        total: steps of this stage.
        finished: the stage is over (``detail`` then holds its outcome).
        detail: a short status line ("epoch 3/15 · accuracy 0.94", "max abs error 2.1e-06").
    """

    stage: str
    title: str
    completed: int
    total: int
    finished: bool = False
    detail: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class LatencyRow:
    """Median latencies at one batch size (ms).

    Attributes:
        batch: the batch size.
        native_ms: the native chain, first part then second part, as one Python call.
        merged_ms: the merged ONNX model in one onnxruntime session.
        parts_ms: the two native parts each timed alone, added up (no hand-off between frameworks).
        int8_ms: the int8 merged model (``ox.quantize``) in one onnxruntime session, if it was made.
    """

    batch: int
    native_ms: float
    merged_ms: float
    parts_ms: float
    int8_ms: float | None = None

    @property
    def speedup(self) -> float:
        """How many times faster the merged model is than the native chain."""
        return self.native_ms / self.merged_ms

    @property
    def int8_speedup(self) -> float | None:
        """How many times faster the int8 merged model is than the float32 one (None without it)."""
        return None if self.int8_ms is None else self.merged_ms / self.int8_ms


@dataclass
class DemoResult:
    """Everything the demo measured and wrote.

    ``files`` maps a short name (``model``, ``triton``, ``triton_config``, ``plot``, ``report``, and
    ``model_int8`` when the int8 model passed its gate) to each written path; ``native`` holds the
    two trained parts in their own frameworks. The ``int8_*`` numbers are those of the merged model
    quantized by ``ox.quantize`` (``int8_accuracy`` is None when it was not made).
    """

    flavour: str
    seed: int
    epochs: int
    threads: int
    repeats: int
    n_train: int
    n_test: int
    first_framework: str
    second_framework: str
    first_accuracy: float
    feature_shape: tuple[int, ...]
    input_name: str = ""
    input_layout: str = ""
    input_shape: tuple[int | str | None, ...] = ()
    output_name: str = ""
    native_accuracy: float = 0.0
    merged_accuracy: float = 0.0
    same_predictions: int = 0
    max_abs_error: float = float("nan")
    verified: bool = False
    verify_table: str = ""
    int8_parts: dict[str, str] = field(default_factory=dict)
    int8_accuracy: float | None = None
    int8_same_predictions: int = 0
    int8_passed: bool = False
    int8_gate: str = ""
    latency: list[LatencyRow] = field(default_factory=list)
    summary: str = ""
    adapters: list[str] = field(default_factory=list)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((10, 10), dtype=np.int64))
    files: dict[str, Path] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    native: NativeParts | None = field(default=None, repr=False)

    @property
    def predictions_equal(self) -> bool:
        """The merged model predicts the native chain's class on every test image."""
        return self.same_predictions == self.n_test

    @property
    def out_dir(self) -> Path:
        """The folder the demo wrote to."""
        return self.files["report"].parent


def stages(flavour: str) -> list[tuple[str, str]]:
    """The demo's stages as ``(key, title)`` pairs, in order, for ``flavour``."""
    if flavour == "keras-torch":
        first, second = "the Keras backbone (Keras)", "the PyTorch head (PyTorch)"
    else:
        first, second = "the PyTorch trunk (PyTorch)", "the Keras head (Keras)"
    return [
        ("data", "Load the digits (scikit-learn)"),
        ("train_first", f"Train {first}"),
        ("train_second", f"Train {second}"),
        ("convert", "Convert both to ONNX"),
        ("chain", "Chain into one model (ox.chain)"),
        ("verify", "Verify vs native chain (ox.verify)"),
        ("quantize", "Quantize to int8 (ox.quantize)"),
        ("latency", "Time native chain vs merged"),
        ("write", "Write model, Triton repo, report"),
    ]


class _Stages:
    """Reports stage starts, steps and ends to the callback and records each stage's seconds."""

    def __init__(self, flavour: str, progress: ProgressCallback | None, seconds: dict[str, float]) -> None:
        self.titles = dict(stages(flavour))
        self.progress = progress
        self.seconds = seconds

    def emit(
        self, stage: str, completed: int, total: int, *, finished: bool = False, detail: str = ""
    ) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(stage, self.titles[stage], completed, total, finished, detail))

    @contextmanager
    def run(self, stage: str, total: int = 1) -> Iterator[list[str]]:
        """Time one stage; the body may append its outcome line to the yielded list."""
        self.emit(stage, 0, total)
        started = time.perf_counter()
        outcome: list[str] = []
        yield outcome
        self.seconds[stage] = time.perf_counter() - started
        logger.info("demo stage %s done in %.1f s", stage, self.seconds[stage])
        self.emit(stage, total, total, finished=True, detail=" · ".join(outcome))

    def epochs(self, stage: str) -> Callable[[int, int, dict[str, float]], None]:
        def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
            acc = metrics.get("accuracy")
            detail = f"epoch {epoch}/{total}" + ("" if acc is None else f" · train accuracy {acc:.3f}")
            self.emit(stage, epoch, total, detail=detail)

        return on_epoch


def _check_options(flavour: str, epochs: int, repeats: int, threads: int | None) -> None:
    problems = []
    if flavour not in FLAVOURS:
        problems.append(f"unknown flavour {flavour!r} (choose {' or '.join(FLAVOURS)})")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        problems.append(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        problems.append(f"repeats must be a positive integer, got {repeats!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        problems.append(f"threads must be a positive integer, got {threads!r}")
    if problems:
        raise StitchError("invalid demo options: " + "; ".join(problems))


# (module, package to install, what the demo needs it for), checked before anything runs
DEPENDENCIES = (
    ("torch", "torch", "training the PyTorch part"),
    ("tensorflow", "tensorflow", "training the Keras part"),
    ("keras", "keras", "training the Keras part"),
    ("tf2onnx", "tf2onnx", "converting the Keras part"),
    ("sklearn", "scikit-learn", "the digits data set"),
    ("matplotlib", "matplotlib", "the plot"),
)


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_dependencies() -> None:
    """Check that every package the demo needs is installed, before a minute of training.

    Looks for the packages without importing them (milliseconds).

    Raises:
        MissingDependencyError: one or more are missing (all of them named, with what each is for).
    """
    missing = [(package, why) for module, package, why in DEPENDENCIES if not _installed(module)]
    if missing:
        names = ", ".join(package for package, _ in missing)
        uses = "; ".join(f"{package}: {why}" for package, why in missing)
        raise MissingDependencyError(names, extra="demo", purpose=f"The demo ({uses})")


def check_out_dir(out_dir: Path) -> None:
    """Create the output folder now, so a bad ``out_dir`` fails before a minute of training.

    Raises:
        StitchError: ``out_dir`` is a file, or cannot be created or written.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise StitchError(
            f"output folder {str(out_dir)!r} is an existing file", hint="name a folder (new or existing)"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".onnxstitch-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StitchError(
            f"cannot write to output folder {str(out_dir)!r}: {reason}",
            hint="name a folder you can create and write to",
        ) from exc


def _convert(parts: NativeParts) -> dict[str, Any]:
    """Convert both trained parts (validated against their framework by the converters)."""
    import torch

    if parts.first_framework == "keras":
        backbone = ox.from_keras(parts.first)
        head = ox.from_torch(
            parts.second,
            (torch.zeros(1, *parts.feature_shape),),
            input_names=["features"],
            output_names=["logits"],
        )
        return {"backbone": backbone, "head": head}
    trunk = ox.from_torch(
        parts.first, (torch.zeros(1, 1, 8, 8),), input_names=["image"], output_names=["features"]
    )
    return {"trunk": trunk, "head": ox.from_keras(parts.second)}


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` runs, after 3 warm-up runs.

    Each function is timed in a block of its own (never interleaved with another): a framework's
    idle worker threads keep spinning for a while after a call and would slow down the next one.
    """
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _accuracy(logits: np.ndarray, data: Digits) -> float:
    return float((logits.argmax(axis=1) == data.y_test).mean())


def _test_images(parts: NativeParts, data: Digits) -> np.ndarray:
    return _in_layout(parts, data.x_test)


def _in_layout(parts: NativeParts, images: np.ndarray) -> np.ndarray:
    if parts.input_layout == "NHWC":
        return images
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _verify(
    result: DemoResult, merged: Any, parts: NativeParts, images: np.ndarray, labels: np.ndarray
) -> Any:
    """Parity on the whole test set, accuracy of both, the confusion matrix; returns the session."""
    session = ox.Session(merged, device="cpu", threads=result.threads)
    result.input_name = session.inputs[0].name
    result.input_shape = tuple(session.inputs[0].shape)
    result.output_name = session.outputs[0].name
    report = ox.verify(merged, parts.predict, feeds={result.input_name: images}, rtol=RTOL, atol=ATOL)
    result.verified = bool(report)
    result.verify_table = str(report)
    native = parts.predict(images)
    logits = session.run({result.input_name: images})[result.output_name]
    result.max_abs_error = float(np.max(np.abs(logits - native)))
    result.same_predictions = int((logits.argmax(1) == native.argmax(1)).sum())
    result.native_accuracy = float((native.argmax(1) == labels).mean())
    result.merged_accuracy = float((logits.argmax(1) == labels).mean())
    result.confusion = confusion_matrix(labels, logits.argmax(1), 10)
    report.raise_for_mismatch()
    return session


def _quantize(
    result: DemoResult, merged: Any, parts: NativeParts, images: np.ndarray, data: Digits
) -> tuple[Int8Outcome, Any]:
    """The int8 merged model, its test accuracy and agreement with the native chain; its session."""
    int8 = quantize_merged(merged, parts.predict, result.input_name, _in_layout(parts, data.x_train), images)
    session = ox.Session(int8.model, device="cpu", threads=result.threads)
    predicted = session.run({result.input_name: images})[result.output_name].argmax(1)
    result.int8_parts = int8.parts
    result.int8_passed = int8.passed
    result.int8_gate = int8.gate
    result.int8_accuracy = float((predicted == data.y_test).mean())
    result.int8_same_predictions = int((predicted == parts.predict(images).argmax(1)).sum())
    return int8, session


def _latency(
    result: DemoResult, session: Any, parts: NativeParts, images: np.ndarray, int8_session: Any = None
) -> None:
    for batch in BATCH_SIZES:
        x = np.ascontiguousarray(images[:batch])
        feats = parts.run_first(x)
        feeds = {result.input_name: x}
        first_ms = _median_ms(partial(parts.run_first, x), result.repeats)
        second_ms = _median_ms(partial(parts.run_second, feats), result.repeats)
        native_ms = _median_ms(partial(parts.predict, x), result.repeats)
        merged_ms = _median_ms(partial(session.run, feeds), result.repeats)
        int8_ms = (
            None if int8_session is None else _median_ms(partial(int8_session.run, feeds), result.repeats)
        )
        result.latency.append(LatencyRow(batch, native_ms, merged_ms, first_ms + second_ms, int8_ms))


def _part_summary(merged: Any, frameworks: dict[str, str]) -> tuple[str, list[str]]:
    """The merged model broken down by part (a text table), and the adapters ox.chain inserted.

    ``frameworks`` maps each part key given to ``ox.chain`` to its framework; any other part of the
    merged model is an adapter the composer inserted at a seam.
    """
    from onnxstitch.files.describe import describe

    info = describe(merged)
    lines = [f"{'part':<14} {'from':<8} {'nodes':>5} {'parameters':>10}  op types"]
    adapters = []
    for row in info["parts"]:
        source = frameworks.get(row["part"], "adapter")
        ops = ", ".join(f"{op}×{n}" if n > 1 else op for op, n in row["op_types"].items())
        lines.append(f"{row['part']:<14} {source:<8} {row['nodes']:>5} {row['parameters']:>10,}  {ops}")
        if row["part"] not in frameworks:
            adapters.append(f"{row['part']}: {ops}")
    lines.append(f"{'total':<14} {'':<8} {info['nodes']:>5} {info['parameters']:>10,}")
    return "\n".join(lines), adapters


def _write_picture(merged: Any, path: Path) -> Path:
    """The merged model's parts, seams and adapters, drawn (what ``inspect --graph`` draws)."""
    from onnxstitch.files.draw import draw
    from onnxstitch.files.picture import part_graph

    return draw(part_graph(merged), path, title="hybrid.onnx: parts, seams and adapters")


def _write(result: DemoResult, merged: Any, out: Path, int8: Int8Outcome | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.files["model"] = ox.save(merged, out / "hybrid.onnx")
    stale = out / "hybrid.int8.onnx"
    if int8 is not None and int8.passed:  # a model the gate refused is not handed over
        result.files["model_int8"] = ox.save(int8.model, stale)
    elif stale.exists():
        stale.unlink()  # from an earlier demo run: it is not this run's model
    deployment = ox.deploy_triton(merged, out / "triton", name="hybrid", force=True)
    result.files["triton"] = deployment.model_dir
    result.files["triton_config"] = deployment.config_path
    result.files["plot"] = write_plot(result, out / "demo.png")
    result.files["picture"] = _write_picture(merged, out / "parts.svg")
    result.files["report"] = out / "report.md"
    result.files["report"].write_text(render_report(result), encoding="utf-8")


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    flavour: str = "keras-torch",
    threads: int | None = None,
    repeats: int = 30,
    progress: ProgressCallback | None = None,
) -> DemoResult:
    """Train a two-framework hybrid on the digits, merge it into one ONNX model, check and ship it.

    ``keras-torch``: a Keras CNN backbone (NHWC) trained in Keras, then a PyTorch MLP head trained
    in PyTorch on the backbone's features. ``torch-keras``: a PyTorch conv trunk (NCHW) trained in
    PyTorch, then a Keras conv head (NHWC) trained in Keras on the trunk's (transposed) features; the
    merged model gets the layout adapter (a Transpose) from ``ox.chain``. Both parts are converted
    and chained, the merged model is verified against the native chain on the whole test set, then
    quantized to int8 by ``ox.quantize`` (calibrated on training images, gated on the test images
    against the native chain), all three are timed at batch 1 and 64, and ``hybrid.onnx``
    (``hybrid.int8.onnx`` when the gate passed it), a Triton repository (``triton/hybrid``),
    ``report.md`` and ``demo.png`` are written to ``out_dir`` (earlier demo files there are replaced).

    Args:
        out_dir: the folder to write to (created if missing).
        epochs: training epochs of each part.
        seed: seeds Python, numpy, TensorFlow/Keras and torch; the same seed gives the same models.
        flavour: ``"keras-torch"`` or ``"torch-keras"``.
        threads: CPU threads for TensorFlow, torch and onnxruntime alike (default: up to 4).
        repeats: timed runs per batch size and model for the latency medians.
        progress: called with a :class:`ProgressEvent` at each stage's start, each epoch, and each
            stage's end.

    Returns:
        A :class:`DemoResult` with the numbers and the paths written.

    Raises:
        StitchError: invalid options, or ``out_dir`` cannot be created or written (checked first).
        MissingDependencyError: torch, tensorflow, scikit-learn or matplotlib is missing.
        ValidationError: the merged model disagrees with the native chain (never expected).
    """
    _check_options(flavour, epochs, repeats, threads)
    check_dependencies()
    check_out_dir(Path(out_dir))
    n_threads = threads or min(os.cpu_count() or 1, 4)
    seconds: dict[str, float] = {}
    st = _Stages(flavour, progress, seconds)
    with st.run("data") as outcome:
        data = load_digits_split()
        outcome.append(f"{len(data.y_train):,} train / {len(data.y_test):,} test")
    setup_frameworks(seed=seed, threads=n_threads)
    with st.run("train_first", total=epochs) as outcome:
        first = train_first(flavour, data, epochs=epochs, on_epoch=st.epochs("train_first"))
        outcome.append(f"test accuracy {first.accuracy:.3f}")
    with st.run("train_second", total=epochs) as outcome:
        parts = train_second(first, data, epochs=epochs, on_epoch=st.epochs("train_second"))
        outcome.append(f"chain test accuracy {_accuracy(parts.predict(_test_images(parts, data)), data):.3f}")
    result = DemoResult(
        flavour=flavour,
        seed=seed,
        epochs=epochs,
        threads=n_threads,
        repeats=repeats,
        n_train=len(data.y_train),
        n_test=len(data.y_test),
        first_framework=parts.first_framework,
        second_framework=parts.second_framework,
        first_accuracy=parts.first_accuracy,
        feature_shape=parts.feature_shape,
        input_layout=parts.input_layout,
        stage_seconds=seconds,
        native=parts,
    )
    with st.run("convert") as outcome:
        converted = _convert(parts)
        outcome.append("each matches its framework")
    with st.run("chain") as outcome:
        merged = ox.chain(converted)
        frameworks = dict(zip(converted, (parts.first_framework, parts.second_framework), strict=True))
        result.summary, result.adapters = _part_summary(merged, frameworks)
        adapters = ", ".join(a.split(": ", 1)[1] for a in result.adapters) or "no"
        outcome.append(f"{len(merged.graph.node)} nodes, {adapters} adapter")
    images = _test_images(parts, data)
    with st.run("verify") as outcome:
        session = _verify(result, merged, parts, images, data.y_test)
        outcome.append(f"{result.same_predictions}/{result.n_test} same")
        outcome.append(f"max err {result.max_abs_error:.1e}")
    with st.run("quantize") as outcome:
        int8, int8_session = _quantize(result, merged, parts, images, data)
        outcome.append(
            " · ".join(f"{p} {v}" for p, v in result.int8_parts.items() if v != "fp32") or "all fp32"
        )
        outcome.append(f"{result.int8_same_predictions}/{result.n_test} same")
        outcome.append("gate passed" if result.int8_passed else "refused by the gate")
    with st.run("latency", total=len(BATCH_SIZES)) as outcome:
        _latency(result, session, parts, images, int8_session)
        speedups = " / ".join(f"{r.speedup:.1f}×" for r in result.latency)
        batches = " / ".join(str(r.batch) for r in result.latency)
        outcome.append(f"merged {speedups} faster (batch {batches})")
    with st.run("write") as outcome:
        _write(result, merged, Path(out_dir), int8)
        outcome.append(f"{out_dir}{os.sep}")
    return result
