"""The GPU check of issue 4: the merged Keras+torch hybrid on onnxruntime's CUDA provider vs eager torch.

Two modes:

* ``python3 scripts/gpu_check.py --prepare DIR`` (here, needs TensorFlow): builds the hybrid (a
  ResNet-18-like Keras backbone at 224x224 + a torch MLP head), converts and merges it with
  onnxstitch, checks it against the native chain and writes ``DIR/hybrid.onnx``, ``DIR/arch.json``
  and ``DIR/reference.npz`` (an input batch and the native chain's output), ~12 MB in all.
* ``python3 scripts/gpu_check.py DIR [--device cuda|cpu] [--quick]`` (on the GPU machine: needs only
  torch, onnxruntime-gpu, numpy and onnxstitch): measures, median ms per batch at batch 1, 64, 256,
  ORT CUDA with numpy in/out, ORT CUDA with IO binding (torch CUDA tensors in and out), the fp16
  session with IO binding, and an all-torch twin of the architecture in eager fp32 and fp16; checks
  parity of the CUDA outputs against onnxruntime on CPU and against the native chain; prints a
  markdown table and writes ``$OUT/gpu.md`` when ``OUT`` is set. ``--device cpu`` proves the script
  on a machine without a GPU (CUDA-only rows become "n/a").

Exit status: 0 when every parity check passes, 1 otherwise.

On the lent GPU machine (recipe of ../shared/gpu/README.md; ``/.gpu/`` is git-ignored):

1. here: ``python3 scripts/gpu_check.py --prepare .gpu/runtime`` (~13 MiB) and
   ``bash ../shared/gpu/split-ort-gpu.sh``;
2. one ``run`` per wheel piece, back to back: ``mkdir -p /tmp/w && cp .ortgpu/partNN /tmp/w/`` with
   carry ``[".ortgpu/partNN"]`` (part00 … part03);
3. last call, carry ``[".ortgpu/part04", ".gpu/runtime"]``, timeout_s 420::

     mkdir -p /tmp/w && cp .ortgpu/part04 /tmp/w/ &&
     cat /tmp/w/part* > /tmp/w/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl &&
     python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/w/onnxruntime_gpu-*.whl &&
     export PYTHONPATH=/tmp/site:$PWD && python3 scripts/gpu_check.py .gpu/runtime

   It prints the table and writes ``$OUT/gpu.md`` (about 1-3 minutes there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # onnxstitch from this checkout
sys.path.insert(0, str(HERE / "bench"))  # the architecture lives with the CPU benchmark

GPU_ARCH = {
    "size": 224,
    "widths": [32, 64, 128, 256],
    "blocks": 2,
    "large_stem": True,
    "hidden": 256,
    "classes": 10,
}
SMALL_ARCH = {"size": 32, "widths": [8, 16], "blocks": 1, "large_stem": False, "hidden": 16, "classes": 10}
NHWC = {"prefer_nhwc": "1"}  # onnxruntime CUDA: channels-last conv kernels (our backbone is NHWC)
FP32_RTOL, FP32_ATOL = 2e-3, 2e-3  # TF32 math is the CUDA provider's default
FP16_RTOL, FP16_ATOL = 5e-2, 5e-2


# ----------------------------------------------------------------------------- prepare (here, with TF)


def prepare(folder: Path, *, small: bool = False) -> None:
    import bench_runtime as br  # imports TF/keras/torch lazily, inside its functions
    import torch

    import onnxstitch as ox

    folder.mkdir(parents=True, exist_ok=True)
    spec = SMALL_ARCH if small else GPU_ARCH
    arch = br.Arch(**spec)
    backbone, head = br.keras_backbone(arch), br.torch_head(arch)
    k_onnx = ox.from_keras(backbone)
    t_onnx = ox.from_torch(head, (torch.zeros(2, arch.widths[-1]),))
    merged = ox.chain({"backbone": k_onnx, "head": t_onnx})

    def native(x: np.ndarray) -> np.ndarray:
        feats = np.array(backbone.predict_on_batch(x))
        with torch.inference_mode():
            return head(torch.from_numpy(feats)).numpy()

    report = ox.verify(merged, native, batch_sizes=(2,), rtol=1e-3, atol=1e-4)
    print(report)
    report.raise_for_mismatch()
    ox.save(merged, folder / "hybrid.onnx")
    x = np.random.default_rng(0).standard_normal((4, arch.size, arch.size, 3)).astype(np.float32)
    np.savez(folder / "reference.npz", x=x, y=native(x))
    (folder / "arch.json").write_text(json.dumps({"arch": spec, "input": merged.graph.input[0].name}))
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"wrote {folder}: {sorted(p.name for p in folder.iterdir())}, {size:.1f} MiB")


# ----------------------------------------------------------------------------- run (there)


def _sync(torch: Any, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn: Callable[[], Any], sync: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _compare(got: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> tuple[bool, float, float]:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    rel = float((diff / np.maximum(np.abs(ref), 1e-12)).max())
    return bool(np.all(diff <= atol + rtol * np.abs(ref))), float(diff.max()), rel


def _variants(
    torch: Any, folder: Path, device: str, meta: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Build what is measured; a part that fails to build is reported, not fatal."""
    import bench_runtime as br

    from onnxstitch.runtime.session import Session

    built: dict[str, Any] = {}
    errors: list[str] = []
    model = folder / "hybrid.onnx"
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("session", lambda: Session(model, device=device)),
        ("session_cpu", lambda: Session(model, device="cpu")),
        ("session_fp16", lambda: Session(model, device=device, fp16=True)),
        ("session_nhwc", lambda: Session(model, device=device, cuda_options=NHWC)),
        ("session_fp16_nhwc", lambda: Session(model, device=device, fp16=True, cuda_options=NHWC)),
        ("twin", lambda: br.torch_twin(br.Arch(**meta["arch"])).to(device)),
    ]
    for name, build in steps:
        started = time.perf_counter()
        try:
            built[name] = build()
            print(f"built {name} in {time.perf_counter() - started:.1f} s", flush=True)
        except Exception as exc:  # report and carry on: one GPU run must tell as much as it can
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    if "twin" in built:
        try:
            built["twin_fp16"] = br.torch_twin(br.Arch(**meta["arch"])).to(device).half()
        except Exception as exc:
            errors.append(f"twin_fp16: {type(exc).__name__}: {exc}")
    return built, errors


def _first(outputs: dict[str, Any]) -> Any:
    return next(iter(outputs.values()))


def _parity(torch: Any, built: dict[str, Any], folder: Path, device: str, input_name: str) -> list[str]:
    """Markdown rows: CUDA (or CPU) outputs vs onnxruntime CPU and vs the native chain's output."""
    ref = np.load(folder / "reference.npz")
    x, y_native = ref["x"], ref["y"]
    feeds = {input_name: x}
    y_cpu = _first(built["session_cpu"].run(feeds)) if "session_cpu" in built else y_native
    checks: list[tuple[str, Callable[[], Any], np.ndarray, float, float]] = []
    if "session_cpu" in built:
        checks.append(("ORT CPU vs native chain", lambda: y_cpu, y_native, 1e-3, 1e-4))
    if "session" in built:
        sess = built["session"]
        checks.append(
            (f"ORT {device} numpy vs ORT CPU", lambda: _first(sess.run(feeds)), y_cpu, FP32_RTOL, FP32_ATOL)
        )
        if sess.on_cuda:
            bound = {input_name: torch.from_numpy(x).cuda()}

            def via_binding() -> Any:
                return _first(sess.run(bound, output_device="cuda")).cpu().numpy()

            checks.append(("ORT CUDA IO binding vs ORT CPU", via_binding, y_cpu, FP32_RTOL, FP32_ATOL))
        checks.append(
            (f"ORT {device} vs native chain", lambda: _first(sess.run(feeds)), y_native, FP32_RTOL, FP32_ATOL)
        )
    for key, label in (("session_nhwc", "NHWC kernels"), ("session_fp16_nhwc", "fp16 NHWC kernels")):
        if key in built:
            fp16 = "fp16" in key
            checks.append(
                (
                    f"ORT {device} {label} vs ORT CPU fp32",
                    lambda s=built[key]: _first(s.run(feeds)),
                    y_cpu,
                    FP16_RTOL if fp16 else FP32_RTOL,
                    FP16_ATOL if fp16 else FP32_ATOL,
                )
            )
    if "session_fp16" in built:
        half = built["session_fp16"]
        checks.append(
            (
                f"ORT {device} fp16 vs ORT CPU fp32",
                lambda: _first(half.run(feeds)),
                y_cpu,
                FP16_RTOL,
                FP16_ATOL,
            )
        )
    lines = []
    for label, get, expected, rtol, atol in checks:
        try:
            ok, max_abs, max_rel = _compare(np.asarray(get()), expected, rtol, atol)
            mark = "✓" if ok else "✗"
            lines.append(
                f"| {label} | {max_abs:.2e} | {max_rel:.2e} | rtol={rtol:g} atol={atol:g} | {mark} |"
            )
        except Exception as exc:  # report and carry on
            lines.append(f"| {label} | - | - | - | ✗ ({type(exc).__name__}: {exc}) |")
    return lines


def _plan(
    torch: Any, built: dict[str, Any], device: str, input_name: str, x: np.ndarray
) -> list[tuple[str, str | None, Callable[[], Any]]]:
    """(variant, what it needs built or None when not applicable, the call) for one input batch."""
    on_cuda = device == "cuda"
    xt = torch.from_numpy(x).to(device)
    xt_nchw = xt.permute(0, 3, 1, 2).contiguous()
    xt_half = xt_nchw.half()
    host, bound = {input_name: x}, {input_name: xt}
    session, half = built.get("session"), built.get("session_fp16")
    nhwc, half_nhwc = built.get("session_nhwc"), built.get("session_fp16_nhwc")
    twin, twin_half = built.get("twin"), built.get("twin_fp16")
    return [
        ("ort_numpy", "session", lambda: session.run(host)),
        ("ort_iobinding", "session" if on_cuda else None, lambda: session.run(bound, output_device="cuda")),
        (
            "ort_fp16_iobinding",
            "session_fp16" if on_cuda else None,
            lambda: half.run(bound, output_device="cuda"),
        ),
        ("ort_fp16_numpy", "session_fp16", lambda: half.run(host)),
        (
            "ort_iobinding_nhwc",
            "session_nhwc" if on_cuda else None,
            lambda: nhwc.run(bound, output_device="cuda"),
        ),
        (
            "ort_fp16_iobinding_nhwc",
            "session_fp16_nhwc" if on_cuda else None,
            lambda: half_nhwc.run(bound, output_device="cuda"),
        ),
        ("torch_fp32", "twin", lambda: _eager(torch, twin, xt_nchw)),
        ("torch_fp16", "twin_fp16" if on_cuda else None, lambda: _eager(torch, twin_half, xt_half)),
    ]


def _timings(
    torch: Any,
    built: dict[str, Any],
    device: str,
    input_name: str,
    size: int,
    batches: Sequence[int],
    repeats: int,
) -> dict[int, dict[str, float | str]]:
    results: dict[int, dict[str, float | str]] = {}

    def sync() -> None:
        _sync(torch, device)

    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, size, size, 3)).astype(np.float32)
        row: dict[str, float | str] = {}
        for name, needs, fn in _plan(torch, built, device, input_name, x):
            if needs is None or needs not in built:
                row[name] = "n/a"
                continue
            try:
                row[name] = _median_ms(fn, sync, warmup=3, repeats=repeats)
            except Exception as exc:  # report and carry on
                row[name] = f"error: {type(exc).__name__}"
                traceback.print_exc()
        results[batch] = row
        print(f"batch {batch}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()), flush=True)
    return results


def _eager(torch: Any, model: Any, x: Any) -> Any:
    with torch.inference_mode():
        return model(x)


def _fmt(value: float | str) -> str:
    return f"{value:.2f}" if isinstance(value, float) else value


def _targets(results: dict[int, dict[str, float | str]]) -> list[str]:
    lines = []
    big = max(results)
    row = results[big]
    for label, ours, theirs in (
        (f"IO binding beats eager torch fp32 at batch {big}", "ort_iobinding", "torch_fp32"),
        (
            f"fp16 session at least as fast as eager torch fp16 at batch {big}",
            "ort_fp16_iobinding",
            "torch_fp16",
        ),
    ):
        candidates = {k: v for k, v in row.items() if k.startswith(ours) and isinstance(v, float)}
        if candidates:  # the best onnxruntime configuration (NCHW or NHWC kernels), named
            ours = min(candidates, key=lambda k: candidates[k])
            label = f"{label} ({ours})"
        a, b = row.get(ours), row.get(theirs)
        if isinstance(a, float) and isinstance(b, float):
            met = a < b if "beats" in label else a <= b
            lines.append(f"| {label} | {a:.2f} vs {b:.2f} ms ({b / a:.2f}×) | {'yes' if met else 'NO'} |")
        else:
            lines.append(f"| {label} | not measured ({_fmt(a or 'n/a')}, {_fmt(b or 'n/a')}) | - |")
    return lines


def run(folder: Path, device: str, quick: bool) -> int:
    import importlib

    import torch  # before onnxruntime, so the CUDA libraries torch brings are found

    ort = importlib.import_module("onnxruntime")

    meta = json.loads((folder / "arch.json").read_text())
    if quick:  # the files fix the architecture; --quick only cuts batches and repeats
        batches, repeats = (1, 4), 3
    else:
        batches, repeats = (1, 64, 256), 20
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    head = (
        f"device {device}; card: {card}; torch {torch.__version__}; onnxruntime {ort.__version__} "
        f"providers {ort.get_available_providers()}"
    )
    print(head, flush=True)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    built, errors = _variants(torch, folder, device, meta)
    input_name = meta["input"]
    parity = _parity(torch, built, folder, device, input_name)
    results = (
        _timings(torch, built, device, input_name, meta["arch"]["size"], batches, repeats)
        if "session" in built
        else {}
    )
    names = [
        "ort_numpy",
        "ort_iobinding",
        "ort_fp16_iobinding",
        "ort_fp16_numpy",
        "ort_iobinding_nhwc",
        "ort_fp16_iobinding_nhwc",
        "torch_fp32",
        "torch_fp16",
    ]
    md = [
        "## GPU: merged hybrid on onnxruntime CUDA vs eager torch (scripts/gpu_check.py)",
        "",
        head + ".",
        f"Model: Keras ResNet-18-like backbone {meta['arch']} + torch MLP head, merged with onnxstitch; "
        f"median ms per batch of {repeats} repeats after 3 warm-ups.",
        "",
        "| batch | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for batch, row in results.items():
        md.append(f"| {batch} | " + " | ".join(_fmt(row.get(n, "n/a")) for n in names) + " |")
    md += [
        "",
        "| parity check | max abs | max rel | tolerance | ok |",
        "| --- | --- | --- | --- | --- |",
        *parity,
    ]
    if results:
        md += ["", "| target (issue 4) | measured | met |", "| --- | --- | --- |", *_targets(results)]
    if errors:
        md += ["", "Errors:", *[f"- {e}" for e in errors]]
    text = "\n".join(md)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu.md").write_text(text + "\n")
        print(f"wrote {Path(out) / 'gpu.md'}")
    ok = bool(parity) and all(line.rstrip().endswith("✓ |") for line in parity) and not errors
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", help="folder written by --prepare (run mode)")
    parser.add_argument(
        "--prepare", type=Path, metavar="DIR", help="build the ONNX files into DIR (needs TF)"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="batches 1 and 4, 3 repeats (a smoke run)")
    parser.add_argument("--small", action="store_true", help="with --prepare: a tiny 32x32 model (for tests)")
    args = parser.parse_args(argv)
    if args.prepare is not None:
        prepare(args.prepare, small=args.small)
        return 0
    if args.folder is None:
        parser.error("give the folder written by --prepare, or --prepare DIR")
    return run(args.folder, args.device, args.quick)


if __name__ == "__main__":
    sys.exit(main())
