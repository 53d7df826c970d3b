"""Side by side: a Keras CNN backbone + torch MLP head, run four ways (issue 4, item 6).

(a) the native chain as a user writes it: Keras ``predict_on_batch`` (and ``model(x)``), then the torch
    head under ``inference_mode``;
(b) two onnxruntime sessions with a numpy hand-off (own thread pools, and a shared pool);
(c) the merged model (``ox.from_keras`` + ``ox.from_torch`` + ``ox.chain``) in one session;
(d) the same architecture written in torch alone and exported as one graph (the reference for
    "the seam costs nothing"); eager torch for information.

Threads are set explicitly and equally for TensorFlow, torch and onnxruntime. Each variant runs in
blocks of consecutive repeats, the blocks rotated over three rounds so machine noise hits them alike;
medians and ratios from one run.
Writes the ``runtime`` section of docs/benchmarks.md and docs/benchmarks_runtime.png.

    python3 scripts/bench/bench_runtime.py [--quick] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report

DOCS = Path(__file__).resolve().parents[2] / "docs"
PLOT = DOCS / "benchmarks_runtime.png"
BATCHES = (1, 8, 64)
# (name, label) in display order
VARIANTS = (
    ("native_predict", "(a) Keras predict_on_batch + torch"),
    ("native_call", "(a') Keras model(x) + torch"),
    ("two_sessions", "(b) two ORT sessions, own pools"),
    ("two_sessions_shared", "(b') two ORT sessions, shared pool"),
    ("merged", "(c) merged model, one session"),
    ("torch_onnx", "(d) torch-only twin, one ONNX graph"),
    ("torch_eager", "torch-only twin, eager"),
)


class Arch:
    """The hybrid's shape: image size, stage widths, blocks per stage, stem, head sizes."""

    def __init__(
        self,
        *,
        size: int = 32,
        widths: Sequence[int] = (16, 32, 64),
        blocks: int = 1,
        large_stem: bool = False,
        hidden: int = 256,
        classes: int = 10,
    ) -> None:
        self.size, self.widths, self.blocks = size, tuple(widths), blocks
        self.large_stem, self.hidden, self.classes = large_stem, hidden, classes

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


# ----------------------------------------------------------------------------- the models


def keras_backbone(arch: Arch) -> Any:
    """A ResNet-ish Keras CNN (NHWC): image [batch, S, S, 3] -> features [batch, widths[-1]]."""
    import keras
    from keras import layers

    def conv_bn(x: Any, width: int, kernel: int, stride: int, relu: bool = True) -> Any:
        x = layers.Conv2D(width, kernel, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    inputs = keras.Input((arch.size, arch.size, 3), name="image")
    x = conv_bn(inputs, arch.widths[0], 3, 2 if arch.large_stem else 1)
    if arch.large_stem:
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, width in enumerate(arch.widths):
        for block in range(arch.blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = conv_bn(x, width, 3, stride)
            y = conv_bn(y, width, 3, 1, relu=False)
            if stride != 1 or shortcut.shape[-1] != width:
                shortcut = conv_bn(shortcut, width, 1, stride, relu=False)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    features = layers.GlobalAveragePooling2D(name="features")(x)
    model = keras.Model(inputs, features, name="backbone")
    rng = np.random.default_rng(0)  # non-trivial BN statistics so the parity check means something
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    1 + 0.1 * rng.standard_normal(gamma.shape).astype("float32"),
                    0.1 * rng.standard_normal(beta.shape).astype("float32"),
                    0.1 * rng.standard_normal(mean.shape).astype("float32"),
                    1 + 0.1 * rng.random(var.shape).astype("float32"),
                ]
            )
    return model


def torch_head(arch: Arch) -> Any:
    """The torch MLP head: features [batch, widths[-1]] -> logits [batch, classes]."""
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(arch.widths[-1], arch.hidden)
            self.fc2 = nn.Linear(arch.hidden, arch.classes)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(features)))

    torch.manual_seed(0)
    return Head().eval()


def torch_twin(arch: Arch) -> Any:
    """The same architecture written in torch alone (NCHW): image [batch, 3, S, S] -> logits."""
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)
        )

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.a, self.b = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1)
            self.short = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.b(torch.relu(self.a(x))) + self.short(x))

    class Twin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            stem: list[nn.Module] = [conv_bn(3, arch.widths[0], 3, 2 if arch.large_stem else 1), nn.ReLU()]
            if arch.large_stem:
                stem.append(nn.MaxPool2d(3, 2, 1))
            blocks: list[nn.Module] = []
            cin = arch.widths[0]
            for stage, width in enumerate(arch.widths):
                for block in range(arch.blocks):
                    blocks.append(Block(cin, width, 2 if stage > 0 and block == 0 else 1))
                    cin = width
            self.body = nn.Sequential(*stem, *blocks)
            self.fc1 = nn.Linear(cin, arch.hidden)
            self.fc2 = nn.Linear(arch.hidden, arch.classes)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            features = self.body(image).mean(dim=(2, 3))
            return self.fc2(torch.relu(self.fc1(features)))

    torch.manual_seed(1)
    return Twin().eval()


def build_models(arch: Arch) -> dict[str, Any]:
    """Native models and their ONNX forms: backbone, head, merged hybrid, torch twin."""
    import torch

    import onnxstitch as ox

    backbone, head, twin = keras_backbone(arch), torch_head(arch), torch_twin(arch)
    started = time.perf_counter()
    k_onnx = ox.from_keras(backbone)
    t_onnx = ox.from_torch(head, (torch.zeros(2, arch.widths[-1]),))
    merged = ox.chain({"backbone": k_onnx, "head": t_onnx})
    twin_onnx = ox.from_torch(twin, (torch.zeros(2, 3, arch.size, arch.size),))
    print(f"converted and merged in {time.perf_counter() - started:.1f} s", flush=True)
    return {
        "backbone": backbone,
        "head": head,
        "twin": twin,
        "backbone_onnx": k_onnx,
        "head_onnx": t_onnx,
        "merged": merged,
        "twin_onnx": twin_onnx,
    }


# ----------------------------------------------------------------------------- the runners


def set_threads(threads: int) -> None:
    """Same number of intra-op threads everywhere, one inter-op thread (before any work)."""
    import tensorflow as tf
    import torch

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)


def runners(models: dict[str, Any], threads: int) -> dict[str, Callable[[np.ndarray], Any]]:
    """One callable per variant: image batch (NHWC numpy) -> logits."""
    import torch

    from onnxstitch.runtime.session import Session

    backbone, head, twin = models["backbone"], models["head"], models["twin"]
    k_in, t_in = models["backbone_onnx"].graph.input[0].name, models["head_onnx"].graph.input[0].name
    k_sess = Session(models["backbone_onnx"], device="cpu", threads=threads)
    t_sess = Session(models["head_onnx"], device="cpu", threads=threads)
    merged = Session(models["merged"], device="cpu", threads=threads)
    twin_sess = Session(models["twin_onnx"], device="cpu", threads=threads)
    # last: once the process-wide pool exists, onnxruntime puts every later session on it
    k_shared = Session(models["backbone_onnx"], device="cpu", threads=threads, shared_threads=True)
    t_shared = Session(models["head_onnx"], device="cpu", threads=threads, shared_threads=True)
    m_in, w_in = merged.input_names[0], twin_sess.input_names[0]

    def native_predict(x: np.ndarray) -> Any:
        feats = backbone.predict_on_batch(x)
        with torch.inference_mode():
            return head(torch.from_numpy(np.array(feats))).numpy()

    def native_call(x: np.ndarray) -> Any:
        feats = backbone(x, training=False)
        with torch.inference_mode():
            return head(torch.from_numpy(np.array(feats))).numpy()

    def two(a: Session, b: Session) -> Callable[[np.ndarray], Any]:
        return lambda x: b.run({t_in: next(iter(a.run({k_in: x}).values()))})

    def eager(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return twin(torch.from_numpy(x)).numpy()

    return {
        "native_predict": native_predict,
        "native_call": native_call,
        "two_sessions": two(k_sess, t_sess),
        "two_sessions_shared": two(k_shared, t_shared),
        "merged": lambda x: merged.run({m_in: x}),
        "torch_onnx": lambda x: twin_sess.run({w_in: np.ascontiguousarray(x.transpose(0, 3, 1, 2))}),
        "torch_eager": lambda x: eager(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
    }


def measure(
    run: dict[str, Callable[[np.ndarray], Any]],
    arch: Arch,
    batches: Sequence[int],
    warmup: int,
    repeats: int,
    rounds: int = 3,
) -> dict[int, dict[str, float]]:
    """Median ms per variant and batch.

    Each variant runs in a block of consecutive repeats (so a previous variant's spinning thread pool
    does not land in its timings), and the blocks rotate over ``rounds`` rounds so slow drifts of the
    machine hit every variant alike.
    """
    rng = np.random.default_rng(0)
    medians: dict[int, dict[str, float]] = {}
    per_round = max(1, repeats // rounds)
    for batch in batches:
        x = rng.standard_normal((batch, arch.size, arch.size, 3)).astype(np.float32)
        times: dict[str, list[float]] = {name: [] for name in run}
        for _ in range(rounds):
            for name, fn in run.items():
                for _ in range(warmup):
                    fn(x)
                for _ in range(per_round):
                    start = time.perf_counter()
                    fn(x)
                    times[name].append((time.perf_counter() - start) * 1000)
        medians[batch] = {name: statistics.median(t) for name, t in times.items()}
        line = ", ".join(f"{n} {v:.2f}" for n, v in medians[batch].items())
        print(f"batch {batch}: {line} (ms)", flush=True)
    return medians


# ----------------------------------------------------------------------------- the report


def targets(medians: dict[int, dict[str, float]]) -> list[tuple[str, str, bool]]:
    """The targets of issue 4: (statement, measured, met)."""
    out = []
    for batch in sorted(medians):
        m = medians[batch]
        ratio = m["merged"] / m["torch_onnx"]
        out.append((f"merged ≤ 1.05 × torch-only reference, batch {batch}", f"{ratio:.2f}×", ratio <= 1.05))
    for batch, need in ((64, 2.5), (1, 5.0)):
        if batch in medians:
            m = medians[batch]
            speedup = m["native_predict"] / m["merged"]
            out.append(
                (f"merged ≥ {need} × faster than native chain (predict_on_batch), batch {batch}",
                 f"{speedup:.1f}×", speedup >= need)
            )  # fmt: skip
    return out


def markdown(
    medians: dict[int, dict[str, float]], arch: Arch, threads: int, repeats: int, parity: str
) -> str:
    batches = sorted(medians)
    lines = [
        "## Runtime: the hybrid four ways (scripts/bench/bench_runtime.py)",
        "",
        f"Machine: {_report.machine_line()}. Threads: {threads} (TensorFlow, torch and onnxruntime alike), "
        f"median of {repeats} repeats (blocks per variant, rotated over 3 rounds), milliseconds per batch. "
        "Model: Keras ResNet-ish CNN "
        f"backbone ({arch.size}×{arch.size}×3, widths {list(arch.widths)}, {arch.blocks} block(s) per stage) "
        f"+ torch MLP head ({arch.widths[-1]}→{arch.hidden}→{arch.classes}). {_load_line()}",
        "",
        "| variant | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- | " + " | ".join("---" for _ in batches) + " |",
    ]
    for name, label in VARIANTS:
        cells = [f"{medians[b][name]:.2f} ({medians[b][name] / medians[b]['merged']:.2f}×)" for b in batches]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "In brackets: time relative to (c), the merged model (above 1 = slower than merged).",
        "",
        "| target (issue 4) | measured | met |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {t} | {v} | {'yes' if ok else 'NO'} |" for t, v, ok in targets(medians)]
    lines += [
        "",
        f"Parity of the merged model against the native chain: {parity}",
        "",
        f"![runtime]({PLOT.name})",
    ]
    return "\n".join(lines)


def _load_line() -> str:
    """The machine's load when the report is written: ratios mean little on a busy machine."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return ""
    busy = load > (os.cpu_count() or 1)
    return f"Load average (1 min) at the end: {load:.1f}" + (
        " — the machine was busy, so the ratios are noisy." if busy else "."
    )


def plot(medians: dict[int, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted(medians)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(VARIANTS)
    for i, (name, label) in enumerate(VARIANTS):
        xs = [j + i * width for j in range(len(batches))]
        ax.bar(xs, [medians[b][name] for b in batches], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_yscale("log")
    ax.set_ylabel("median ms per batch (log)")
    ax.set_title("Keras backbone + torch head: native chain vs onnxruntime")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run, ~1 minute)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(argv)
    repeats = args.repeats or (6 if args.quick else 30)
    batches = tuple(int(b) for b in args.batches.split(","))
    set_threads(args.threads)
    import onnxstitch as ox

    arch = Arch()
    models = build_models(arch)
    run = runners(models, args.threads)
    reference = run["native_predict"]
    report = ox.verify(models["merged"], lambda x: reference(x), rtol=1e-3, atol=1e-4)
    worst = max((r.max_abs or 0.0) for r in report.rows)
    parity = f"{'✓' if report else '✗'} at batch 1 and 7 (max abs err {worst:.2g}, rtol 1e-3, atol 1e-4)"
    print(report, flush=True)
    medians = measure(run, arch, batches, warmup=1 if args.quick else 3, repeats=repeats)
    text = markdown(medians, arch, args.threads, repeats, parity)
    print(text)
    if not args.no_write:
        plot(medians, PLOT)
        print(f"wrote {_report.write_section('runtime', text)} and {PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
