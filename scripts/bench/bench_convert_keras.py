"""Time converting a ResNet-18-sized Keras model to ONNX with ``from_keras`` (seconds, peak RSS).

Each repeat runs in a fresh Python process, so peak RSS is that of one conversion (TensorFlow's own
footprint included, reported separately as the "import + build" baseline). Medians of the repeats.

    python3 scripts/bench/bench_convert_keras.py [--repeats 3] [--no-write]

Writes the ``convert-keras`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine_line, write_section

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import keras
from onnxstitch.converters import from_keras

def block(x, filters, stride):
    shortcut = x
    y = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False)(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = keras.layers.BatchNormalization()(y)
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
validate = sys.argv[1] == "validate"
onnx_model = from_keras(model, validate=validate)
t2 = time.perf_counter()
peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"setup_s": t1 - t0, "convert_s": t2 - t1, "params": params,
                  "base_rss_mb": base_rss / 1024, "peak_rss_mb": peak_rss / 1024,
                  "onnx_mb": onnx_model.ByteSize() / 2**20}))
"""


def run_once(mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], check=True, capture_output=True, text=True, timeout=900
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args()
    rows = []
    for mode in ("convert", "validate"):
        runs = [run_once(mode) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append((mode, med))
        print(mode, json.dumps(med))
    params = int(rows[0][1]["params"])
    lines = [
        "## Converting a Keras model (`scripts/bench/bench_convert_keras.py`)",
        "",
        f"ResNet-18-sized Keras functional model ({params / 1e6:.1f} M parameters, 224x224x3 NHWC input), "
        f"`from_keras` through tf2onnx, opset 18. Median of {args.repeats} runs, each in a fresh process.",
        "",
        "| what | seconds | peak RSS (MB) | RSS before converting (MB) | ONNX size (MB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    labels = {"convert": "convert (validate=False)", "validate": "convert + validate (batch 1 and 7)"}
    for mode, med in rows:
        lines.append(
            f"| {labels[mode]} | {med['convert_s']:.2f} | {med['peak_rss_mb']:.0f} | "
            f"{med['base_rss_mb']:.0f} | {med['onnx_mb']:.1f} |"
        )
    lines += [
        "",
        f"Setup (import TensorFlow + build the model): {rows[0][1]['setup_s']:.1f} s.",
        machine_line(),
    ]
    if args.write:
        write_section("convert-keras", "\n".join(lines))


if __name__ == "__main__":
    main()
