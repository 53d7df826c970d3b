"""int8 against float32, merged hybrid against merged hybrid (issue 13, "Done when").

Two hybrids: the bench hybrid of ``bench_runtime.py`` (a ResNet-ish Keras backbone + torch MLP head,
random weights, 32×32×3 inputs) and the demo's digits hybrid (Keras CNN backbone + torch MLP head,
trained 15 epochs each on scikit-learn's digits; the top-1 agreement is taken on the 360 test
images against the native chain). Each variant is made with ``ox.quantize`` (the gate's threshold
set to 0 so that every variant is reported, not refused), run by onnxruntime on the CPU at batch
1, 8 and 64 in blocks rotated over rounds (the medians of all blocks), with the float32 merged model
in the same rounds. onnxruntime's profiler then says where the time goes and which ops stayed float.
Writes the ``quantize`` section of docs/benchmarks.md.

    python3 scripts/bench/bench_quantize.py [--quick] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import collections
import json
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

BATCHES = (1, 8, 64)
# (name, label, ox.quantize options or None for float32, session optimization level)
VARIANTS: tuple[tuple[str, str, dict[str, Any] | None, str], ...] = (
    ("fp32", "float32 merged", None, "all"),
    (
        "int8",
        "**int8, ox.quantize defaults** (QDQ, per-channel U8S8, MinMax; thin stem timed both ways; "
        "head fp32; global pool rewritten)",
        {},
        "all",
    ),
    (
        "no_pool",
        "int8, global pool left as Transpose→ReduceMean (`global_pool=False`)",
        {"global_pool": False},
        "all",
    ),
    ("stem_float", "int8, stem pinned float32 (`min_conv_channels=4`)", {"min_conv_channels": 4}, "all"),
    ("stem_int8", "int8, stem pinned int8 (`min_conv_channels=0`)", {"min_conv_channels": 0}, "all"),
    ("qoperator", "int8, QOperator format", {"format": "qoperator"}, "all"),
    ("per_tensor", "int8, per-tensor weights", {"per_channel": False}, "all"),
    ("reduce_range", "int8, reduce_range (7-bit weights)", {"reduce_range": True}, "all"),
    ("entropy", "int8, entropy calibration", {"calibrate_method": "entropy"}, "all"),
    ("all_parts", "int8, head quantized too", {"parts": "all"}, "all"),
    ("fp32_basic", "float32 merged, ORT optimization `basic`", None, "basic"),
    ("int8_basic", "int8 defaults, ORT optimization `basic`", {}, "basic"),
)
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
#: measured again on one thread by the calling thread's CPU time (other processes' load left out)
CPU_VARIANTS = ("fp32", "int8", "no_pool", "stem_float", "stem_int8")
#: the variants run on the larger models (ResNet-18) and on the ceiling model
SHORT_VARIANTS = ("fp32", "int8", "stem_float", "stem_int8")


# ----------------------------------------------------------------------------- the hybrids


def bench_hybrid(threads: int) -> dict[str, Any]:
    """The bench hybrid: merged model, native chain, calibration (random normal) and hold-out."""
    import bench_runtime as br

    br.set_threads(threads)
    models = br.build_models(br.Arch())
    backbone, head = models["backbone"], models["head"]

    def native(x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return np.asarray(head(torch.from_numpy(np.array(backbone.predict_on_batch(x)))).numpy())

    rng = np.random.default_rng(0)
    name = models["merged"].graph.input[0].name
    return {
        "label": "bench hybrid (Keras ResNet-ish backbone 32×32×3, widths 16/32/64 + torch MLP 64→256→10, "
        "random weights)",
        "model": models["merged"],
        "native": native,
        "input": name,
        "calibration": {name: rng.standard_normal((256, 32, 32, 3)).astype(np.float32)},
        "holdout": {name: rng.standard_normal((256, 32, 32, 3)).astype(np.float32)},
        "labels": None,
        "holdout_text": "256 random normal images (random weights: agreement only, no accuracy)",
    }


def digits_hybrid(threads: int) -> dict[str, Any]:
    """The demo's digits hybrid, trained as ``onnxstitch demo`` trains it (seed 0, 15 epochs)."""
    import onnxstitch as ox
    from onnxstitch.demo._data import load_digits_split
    from onnxstitch.demo._run import _convert
    from onnxstitch.demo._train import setup_frameworks, train_first, train_second

    data = load_digits_split()
    setup_frameworks(seed=0, threads=threads)
    parts = train_second(train_first("keras-torch", data, epochs=15), data, epochs=15)
    merged = ox.chain(_convert(parts))
    name = merged.graph.input[0].name
    return {
        "label": "demo digits hybrid (Keras CNN backbone 8×8×1 + torch MLP head, trained)",
        "model": merged,
        "native": parts.predict,
        "input": name,
        "calibration": {name: data.x_train[:512]},
        "holdout": {name: data.x_test},
        "labels": data.y_test,
        "holdout_text": f"the {len(data.y_test)} digits test images",
    }


def resnet18(threads: int) -> dict[str, Any]:
    """torch's ResNet-18 layout (tests/torch_resnet.py, torchvision's layer for layer), 112×112×3,
    random weights with BatchNorm statistics set (outputs of order 1), converted by ``ox.from_torch``:
    a real architecture, whose 7×7 3-channel stem behaves unlike the toy hybrids' 3×3 ones."""
    import torch

    import onnxstitch as ox

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    try:
        import torch_resnet
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    net = torch_resnet.ResNet18(num_classes=10).eval()
    with torch.no_grad():
        for m in net.modules():
            if (
                isinstance(m, torch.nn.BatchNorm2d)
                and m.running_mean is not None
                and m.running_var is not None
            ):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
    model = ox.from_torch(net, torch.randn(1, 3, 112, 112), input_names=["image"])

    def native(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(net(torch.from_numpy(x)).numpy())

    rng = np.random.default_rng(0)
    return {
        "label": "ResNet-18 (torch, 112×112×3, random weights, BatchNorm statistics set)",
        "model": model,
        "native": native,
        "input": "image",
        "calibration": {"image": rng.standard_normal((64, 3, 112, 112)).astype(np.float32)},
        "holdout": {"image": rng.standard_normal((64, 3, 112, 112)).astype(np.float32)},
        "labels": None,
        "holdout_text": "64 random normal images (random weights: agreement only, no accuracy)",
        "variants": SHORT_VARIANTS,
    }


def digits_body(threads: int) -> dict[str, Any]:
    """The ceiling: the digits backbone without its stem — conv 32→32 on 8×8, max pool, conv 32→64
    on 4×4, global pool — fed 32-channel NHWC maps. What int8 gains on exactly those layers when no
    stem, head or layout change is left around them (random weights, ReLU'd random inputs)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["maps"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw")]
    inits = []
    x = "nchw"
    for i, (cin, cout) in enumerate(((32, 32), (32, 64))):
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.full(cout, 0.1, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"conv{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"),
        ]
        x = f"relu{i}"
        if i == 0:
            nodes.append(
                helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[2, 2], strides=[2, 2], name="pool")
            )
            x = "pool"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["features"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_body",
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 8, 8, 32])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    import onnxstitch as ox

    reference = ox.Session(model, device="cpu", threads=threads)

    def native(x: np.ndarray) -> np.ndarray:
        return np.asarray(reference.run({"maps": x})["features"])

    def maps(n: int) -> np.ndarray:
        return np.maximum(rng.standard_normal((n, 8, 8, 32)), 0).astype(np.float32)

    return {
        "label": "the ceiling: the digits backbone's int8 layers alone (no stem, head or layout change)",
        "model": model,
        "native": native,
        "input": "maps",
        "calibration": {"maps": maps(256)},
        "holdout": {"maps": maps(256)},
        "labels": None,
        "holdout_text": "256 random ReLU'd maps (agreement of the 64 features' argmax, no accuracy)",
        "variants": ("fp32", "int8"),
    }


# ----------------------------------------------------------------------------- the variants


def make_variants(h: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each variant's model, gate record and top-1 against the native chain and the labels."""
    import onnxstitch as ox
    from onnxstitch.precision import read_precision

    model = h["model"]
    parts = list(dict.fromkeys(p for p in (_meta_part(n) for n in model.graph.node) if p))
    native = h["native"](h["holdout"][h["input"]])
    out: dict[str, dict[str, Any]] = {}
    for name, _, options, level in VARIANTS:
        if name not in h.get("variants", [v[0] for v in VARIANTS]):
            continue
        if options is None:
            q, record, seconds = model, None, 0.0
        else:
            opts = dict(options)
            if opts.get("parts") == "all":
                opts["parts"] = parts
            started = time.perf_counter()
            q = ox.quantize(
                model,
                h["calibration"],
                holdout=h["holdout"],
                reference=h["native"],
                min_agreement=0.0,
                **opts,
            )
            seconds = time.perf_counter() - started
            record = read_precision(q)
        session = ox.Session(q, device="cpu", threads=h["threads"], optimization=level)
        x = h["holdout"][h["input"]]
        first = session.output_names[0]
        logits = np.concatenate(
            [session.run({h["input"]: x[i : i + 64]})[first] for i in range(0, len(x), 64)]
        )
        agree = float((logits.argmax(1) == native.argmax(1)).mean())
        acc = None if h["labels"] is None else float((logits.argmax(1) == h["labels"]).mean())
        out[name] = {
            "model": q,
            "session": session,
            "record": record,
            "agree": agree,
            "accuracy": acc,
            "seconds": seconds,
            "level": level,
        }
        print(
            f"  {name}: top-1 vs native {agree:.4f}" + (f", accuracy {acc:.4f}" if acc is not None else ""),
            flush=True,
        )
    return out


def _meta_part(node: Any) -> str | None:
    from onnxstitch import _meta

    return _meta.get_part(node)


def measure(
    variants: dict[str, dict[str, Any]], h: dict[str, Any], rounds: int, repeats: dict[int, int]
) -> dict[int, dict[str, float]]:
    """Median ms per variant and batch: blocks of consecutive runs, rotated over ``rounds``."""
    x = h["holdout"][h["input"]]
    times: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    for _ in range(rounds):
        for name, v in variants.items():
            run: Callable[[dict[str, np.ndarray]], Any] = v["session"].run
            for batch in BATCHES:
                feed = {h["input"]: np.ascontiguousarray(x[:batch])}
                for _ in range(3):
                    run(feed)
                for _ in range(repeats[batch]):
                    started = time.perf_counter()
                    run(feed)
                    times[(name, batch)].append((time.perf_counter() - started) * 1000)
    return {b: {n: statistics.median(times[(n, b)]) for n in variants} for b in BATCHES}


def measure_cpu(
    variants: dict[str, dict[str, Any]], h: dict[str, Any], repeats: dict[int, int]
) -> dict[int, dict[str, float]]:
    """Median CPU ms of the calling thread per run, one intra-op thread, one run of each variant in
    turn (shuffled): a shared machine's other processes take wall time, not this thread's CPU time."""
    import random

    import onnxstitch as ox

    names = [n for n in CPU_VARIANTS if n in variants]
    sessions = {n: ox.Session(variants[n]["model"], device="cpu", threads=1) for n in names}
    x = h["holdout"][h["input"]]
    out: dict[int, dict[str, float]] = {}
    for batch in BATCHES:
        feed = {h["input"]: np.ascontiguousarray(x[:batch])}
        for n in names:
            for _ in range(3):
                sessions[n].run(feed)
        times: dict[str, list[float]] = collections.defaultdict(list)
        order, rng = list(names), random.Random(batch)
        for _ in range(repeats[batch]):
            rng.shuffle(order)
            for n in order:
                started = time.thread_time()
                sessions[n].run(feed)
                times[n].append((time.thread_time() - started) * 1000)
        out[batch] = {n: statistics.median(times[n]) for n in names}
    return out


def profile(model: Any, h: dict[str, Any], batch: int, runs: int) -> dict[str, Any]:
    """onnxruntime's profiler at ``batch``: ms per op type, and the float ops left in the int8 graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = h["threads"]
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / "bench_quantize_profile")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {h["input"]: np.ascontiguousarray(h["holdout"][h["input"]][:batch])}
    for _ in range(runs):
        session.run(None, feed)
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink()
    per_op: collections.Counter[str] = collections.Counter()
    floats: set[str] = set()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            per_op[op] += e["dur"] / runs / 1000
            types = [next(iter(t)) for t in e["args"].get("output_type_shape", [])]
            if "float" in types and op not in QUANT_OPS:
                floats.add(op)
    total = sum(per_op.values())
    return {"total": total, "ops": per_op.most_common(6), "float_ops": sorted(floats)}


# ----------------------------------------------------------------------------- the report


def section(results: list[dict[str, Any]], threads: int, rounds: int, wall: float) -> str:
    lines = [
        "## int8 against float32 (scripts/bench/bench_quantize.py)",
        "",
        f"Machine: {_report.machine_line()}, AVX-512 VNNI; onnxruntime {_ort_version()}, {threads} threads. "
        f"Each variant made with `ox.quantize` (gate threshold 0 so that every variant is shown), "
        f"milliseconds per batch: medians over {rounds} rounds of blocks, the float32 merged model in the "
        f"same rounds; ratio = float32 merged / variant. {_load_line()} Run took {wall:.0f} s.",
    ]
    for r in results:
        h, m, v = r["hybrid"], r["medians"], r["variants"]
        lines += [
            "",
            f"### {h['label']}",
            "",
            f"Top-1 against the native chain on {h['holdout_text']}.",
            "",
            "| variant | top-1 vs native | "
            + ("accuracy | " if h["labels"] is not None else "")
            + " | ".join(f"batch {b} ms (×)" for b in BATCHES)
            + " |",
            "| --- | ---: | "
            + ("---: | " if h["labels"] is not None else "")
            + " | ".join("---:" for _ in BATCHES)
            + " |",
        ]
        for name, label, _, _ in VARIANTS:
            if name not in v:
                continue
            cells = [f"{m[b][name]:.3f} ({m[b]['fp32'] / m[b][name]:.2f}×)" for b in BATCHES]
            acc = f"{v[name]['accuracy']:.2%} | " if h["labels"] is not None else ""
            lines.append(f"| {label} | {v[name]['agree']:.2%} | {acc}" + " | ".join(cells) + " |")
        cpu = r.get("cpu")
        if cpu:
            names = list(cpu[BATCHES[0]])
            labels = {n: label for n, label, _, _ in VARIANTS}
            lines += [
                "",
                "The same on one intra-op thread, timed by the calling thread's CPU time (what other "
                "processes take from this one is left out; one run of each variant in turn, medians):",
                "",
                "| variant (1 thread, CPU time) | " + " | ".join(f"batch {b} ms (×)" for b in BATCHES) + " |",
                "| --- | " + " | ".join("---:" for _ in BATCHES) + " |",
            ]
            for name in names:
                cells = [f"{cpu[b][name]:.3f} ({cpu[b]['fp32'] / cpu[b][name]:.2f}×)" for b in BATCHES]
                lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
        thin = ((v["int8"].get("record") or {}).get("settings") or {}).get("thin_convs")
        if thin:
            lines += ["", f"The defaults' stem decision: {_thin_text(thin)}."]
        p32, p8 = r["profile_fp32"], r["profile_int8"]
        lines += [
            "",
            f"Profile at batch 64 (kernel time per run): float32 {p32['total']:.2f} ms — "
            + ", ".join(f"{op} {ms:.2f}" for op, ms in p32["ops"])
            + f"; int8 defaults {p8['total']:.2f} ms — "
            + ", ".join(f"{op} {ms:.2f}" for op, ms in p8["ops"])
            + f". Ops still computing in float in the int8 graph: {', '.join(p8['float_ops']) or 'none'}.",
        ]
    digits = next((r for r in results if r["hybrid"]["labels"] is not None), None)
    if digits is not None:
        m, v = digits["medians"], digits["variants"]
        lines += [
            "",
            "| target (issue 13, digits hybrid, defaults) | measured | met |",
            "| --- | --- | --- |",
        ]
        for text, value, need in (
            ("≥ 2.5× faster than float32 at batch 64", m[64]["fp32"] / m[64]["int8"], 2.5),
            ("≥ 1.5× faster than float32 at batch 1", m[1]["fp32"] / m[1]["int8"], 1.5),
            ("≥ 99 % top-1 agreement with the native chain (360 test images)", v["int8"]["agree"], 0.99),
        ):
            shown = f"{value:.2%}" if need < 1 else f"{value:.2f}×"
            lines.append(f"| {text} | {shown} | {'yes' if value >= need else 'NO'} |")
    ceiling = next((r for r in results if r["hybrid"].get("key") == "ceiling"), None)
    if ceiling is not None:
        m, c = ceiling["medians"], ceiling["cpu"]
        lines += [
            "",
            f"The ceiling, the digits' int8 layers alone: {m[1]['fp32'] / m[1]['int8']:.2f}× at batch 1 and "
            f"{m[64]['fp32'] / m[64]['int8']:.2f}× at batch 64 (2 threads, wall clock; one thread by CPU "
            f"time {c[1]['fp32'] / c[1]['int8']:.2f}× and {c[64]['fp32'] / c[64]['int8']:.2f}×).",
        ]
    lines += ["", LIMITS]
    return "\n".join(lines)


def _thin_text(thin: dict[str, Any]) -> str:
    from onnxstitch.precision._stem import thin_line

    return thin_line(thin)


LIMITS = (
    "What limits it: on the digits hybrid, its own int8 layers. The ceiling model runs exactly those "
    "layers (32→32 channels on 8×8, 32→64 on 4×4) with nothing around them: the whole model cannot gain "
    "more than they do, and at batch 64 they gain about what the whole model reaches with the stem and "
    "head around them. Layers this small keep onnxruntime's int8 convolution (QLinearConv, U8S8 on "
    "MLAS's VNNI kernels) far from VNNI's 4× int8:float32 peak; ResNet-18's 64-512 channels on 28×28 "
    "to 4×4 maps reach 3.1-3.2×. At batch 1 a run of the digits model takes 20-25 µs, of which "
    "onnxruntime's fixed cost per run from Python is about 6 µs and the rest mostly per-node cost; int8 "
    "reduces neither. The stem is timed both ways by default: ResNet-18's 7×7 3-channel stem goes int8 "
    "(with it float32 the int8 model ran at 1.7× instead of 3.1×: the layout changes and quantize "
    "around a float stem cost more than it saves); the digits' 1-channel 3×3 stem stays float32 "
    "(int8 there was slower). What stays float: the thin stem where it does not pay, the small torch "
    "head (what pays), the layout work around a float stem (ReorderOutput, Transpose) and torch's "
    "global average pool (ReduceMean over H, W; Keras' Transpose → ReduceMean is rewritten to pool in "
    "int8). ORT optimization `basic` leaves the QDQ pairs unfused and the float convolutions out of the "
    "blocked NCHWc layout: 1.5-4× slower than at `all` (the default of `ox.Session`)."
)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _load_line() -> str:
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    busy = load > (os.cpu_count() or 1)
    return f"Load average (1 min) at the end: {load:.1f}" + (
        " — the machine was shared and busy, so the ratios are noisy." if busy else "."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke run)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--only", choices=("bench", "digits", "resnet18", "ceiling"), default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    repeats = {1: 20, 8: 8, 64: 2} if args.quick else {1: 100, 8: 40, 64: 8}
    started = time.perf_counter()
    results = []
    builders = {"digits": digits_hybrid, "bench": bench_hybrid, "resnet18": resnet18, "ceiling": digits_body}
    for key in builders:
        if args.only not in (None, key):
            continue
        print(f"building the {key} hybrid …", flush=True)
        h = builders[key](args.threads)
        h["threads"] = args.threads
        h["key"] = key
        variants = make_variants(h)
        medians = measure(variants, h, rounds, repeats)
        cpu = measure_cpu(variants, h, {b: max(3 * n, 30) for b, n in repeats.items()})
        for b in BATCHES:
            print(
                f"  batch {b}: "
                + ", ".join(f"{n} {medians[b]['fp32'] / t:.2f}×" for n, t in medians[b].items())
                + " | 1 thread, CPU time: "
                + ", ".join(f"{n} {cpu[b]['fp32'] / t:.2f}×" for n, t in cpu[b].items()),
                flush=True,
            )
        results.append(
            {
                "hybrid": h,
                "variants": variants,
                "medians": medians,
                "cpu": cpu,
                "profile_fp32": profile(h["model"], h, 64, 20),
                "profile_int8": profile(variants["int8"]["model"], h, 64, 20),
            }
        )
    text = section(results, args.threads, rounds, time.perf_counter() - started)
    print(text)
    if not args.no_write and args.only is None:
        print(f"wrote {_report.write_section('quantize', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
