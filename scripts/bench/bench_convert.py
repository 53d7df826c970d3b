"""Time converting a ResNet-18-sized PyTorch model and the same network in Keras to ONNX.

Both networks are built in code (torchvision is not needed): ResNet-18 layout, 224x224x3 input,
~11.7M parameters. Each conversion runs in a **fresh Python process**, so its peak RSS
(``ru_maxrss``) is that of one conversion plus the framework's own footprint, which is reported
separately ("RSS before"). Medians of ``--repeats`` runs, with and without the parity check.

    python3 scripts/bench/bench_convert.py [--repeats 3] [--frameworks torch,keras] [--no-write]

Writes the ``convert`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine_line, write_section

TORCH_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from torch import nn
import onnxstitch as ox

class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))

class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        cfg = [(64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
               (256, 512, 2), (512, 512, 1)]
        self.blocks = nn.Sequential(*[Block(*c) for c in cfg])
        self.fc = nn.Linear(512, 1000)

    def forward(self, image):
        return self.fc(self.blocks(self.stem(image)).mean(dim=(2, 3)))

torch.manual_seed(0)
model = ResNet18().eval()
params = sum(p.numel() for p in model.parameters())
example = torch.randn(1, 3, 224, 224)
t1 = time.perf_counter()
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
onnx_model = ox.from_torch(model, example, validate=sys.argv[1] == "validate")
t2 = time.perf_counter()
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"setup_s": t1 - t0, "convert_s": t2 - t1, "params": params,
                  "base_rss_mb": base_rss / 1024, "peak_rss_mb": peak_rss / 1024,
                  "onnx_mb": onnx_model.ByteSize() / 2**20}))
"""

KERAS_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import keras
import onnxstitch as ox

def block(x, filters, stride):
    shortcut = x
    y = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False)(x)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
    y = keras.layers.BatchNormalization()(keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, stride, use_bias=False)(shortcut)
        shortcut = keras.layers.BatchNormalization()(shortcut)
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))

keras.utils.set_random_seed(0)
image = keras.Input((224, 224, 3), name="image")
x = keras.layers.Conv2D(64, 7, 2, padding="same", use_bias=False)(image)
x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
x = keras.layers.MaxPooling2D(3, 2, padding="same")(x)
for filters, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
    x = block(x, filters, stride)
x = keras.layers.GlobalAveragePooling2D()(x)
model = keras.Model(image, keras.layers.Dense(1000, name="logits")(x), name="resnet18")
params = model.count_params()
t1 = time.perf_counter()
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
onnx_model = ox.from_keras(model, validate=sys.argv[1] == "validate")
t2 = time.perf_counter()
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"setup_s": t1 - t0, "convert_s": t2 - t1, "params": params,
                  "base_rss_mb": base_rss / 1024, "peak_rss_mb": peak_rss / 1024,
                  "onnx_mb": onnx_model.ByteSize() / 2**20}))
"""

CHILDREN = {"torch": TORCH_CHILD, "keras": KERAS_CHILD}


def run_child(framework: str, mode: str) -> dict[str, Any]:
    """One conversion in a fresh interpreter; returns its JSON measurements."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILDREN[framework], mode],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{framework} ({mode}) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(lines[-1]))


def measure(frameworks: list[str], repeats: int) -> list[dict[str, Any]]:
    """Median measurements per (framework, mode); runs interleaved so drift hits all alike."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(repeats):
        for framework in frameworks:
            for mode in ("convert", "validate"):
                result = run_child(framework, mode)
                runs.setdefault((framework, mode), []).append(result)
                print(
                    f"[{r + 1}/{repeats}] {framework:5s} {mode:8s} {result['convert_s']:6.2f} s  "
                    f"peak RSS {result['peak_rss_mb']:7.0f} MB",
                    flush=True,
                )
    rows = []
    for (framework, mode), results in runs.items():

        def med(key: str, results: list[dict[str, Any]] = results) -> float:
            return statistics.median(float(x[key]) for x in results)

        rows.append(
            {
                "framework": framework,
                "validate": mode == "validate",
                "convert_s": med("convert_s"),
                "min_s": min(float(x["convert_s"]) for x in results),
                "setup_s": med("setup_s"),
                "base_rss_mb": med("base_rss_mb"),
                "peak_rss_mb": med("peak_rss_mb"),
                "params": int(results[0]["params"]),
                "onnx_mb": results[0]["onnx_mb"],
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], repeats: int, wall_s: float) -> str:
    """The docs/benchmarks.md section."""
    lines = [
        "## Converting a ResNet-18-sized model (`scripts/bench/bench_convert.py`)",
        "",
        f"Machine: {machine_line()}. ResNet-18 layout built in code (224x224x3, "
        f"{rows[0]['params'] / 1e6:.1f}M parameters) in PyTorch (`ox.from_torch`, dynamo exporter) and "
        "in Keras (`ox.from_keras`, tf2onnx). Each conversion in a fresh process; median of "
        f"{repeats} run(s) (total wall time {wall_s:.0f} s). *Validate* adds the parity check "
        "(native vs onnxruntime at batch 1 and 7). *RSS before* is the process after importing the "
        "framework and building the model; *peak RSS* is the whole process's maximum.",
        "",
        "| framework | validate | convert s (median) | convert s (min) | RSS before MB | peak RSS MB "
        "| ONNX MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['framework']} | {'yes' if r['validate'] else 'no'} | {r['convert_s']:.1f} | "
            f"{r['min_s']:.1f} | {r['base_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['onnx_mb']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frameworks", default="torch,keras", help="comma-separated: torch, keras")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    args = parser.parse_args()
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = sorted(set(frameworks) - set(CHILDREN))
    if unknown or args.repeats < 1:
        raise SystemExit(f"unknown frameworks {unknown} (choose from {sorted(CHILDREN)}) or repeats < 1")
    start = time.perf_counter()
    rows = measure(frameworks, args.repeats)
    text = markdown(rows, args.repeats, time.perf_counter() - start)
    print(text)
    if not args.no_write:
        print(f"wrote {write_section('convert', text)}")


if __name__ == "__main__":
    main()
