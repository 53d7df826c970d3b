#!/usr/bin/env python3
"""Prove a repository written by ``onnxstitch deploy triton`` against the REAL Triton core.

No Triton server with the onnxruntime backend installs from PyPI, but ``nvidia-pytriton`` ships the
Triton server binary with its python backend. This script

1. writes the model with :func:`onnxstitch.deploy_triton` (the config under test),
2. copies that repository and swaps only the backend: ``backend: "python"`` plus a generic
   onnxruntime ``model.py`` that runs ``model.onnx`` (every batch the dynamic batcher forms is run
   as ONE onnxruntime call), keeping the inputs, outputs, dims, ``max_batch_size`` and the
   ``dynamic_batching`` block as written; only its queue delay is raised to 20 ms
   (``QUEUE_DELAY_US``), so that the batcher's grouping of a concurrent burst is observable on a
   loaded 2-core machine instead of depending on requests landing within 100 us of each other,
3. starts the ``tritonserver`` binary on 127.0.0.1 (its parser, scheduler and batcher are the real
   ones), and
4. sends requests with ``tritonclient`` (HTTP, binary tensors; sequential and concurrent) and checks
   each answer equals a local ``ox.Session``, and that the batcher really formed batches: the
   server's statistics count fewer model executions than requests.

The server runs in its own virtualenv (``--venv``, default ``.venv-deploy``; created when missing):
PyTriton 0.7 needs ``numpy<2``. Usage::

    python3 scripts/triton_check.py [MODEL.onnx] [--venv DIR] [--json]

Without MODEL a small batched two-input model is built. Exit 0 when every check passed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.parser

import onnxstitch as ox

ROOT = Path(__file__).resolve().parents[1]
# one venv for both real-server checks: Triton core (PyTriton, numpy<2) and the KServe SDK
VENV_REQUIREMENTS = ["nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime", "kserve==0.21.0", "pyyaml"]

MODEL_PY = '''
"""Generic onnxruntime model for Triton's python backend (written by scripts/triton_check.py)."""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in self.config["input"]]
        self.outputs = [o["name"] for o in self.config["output"]]
        self.batched = self.config.get("max_batch_size", 0) > 0

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
                 for r in requests]
        if self.batched and len(requests) > 1:
            sizes = [next(iter(f.values())).shape[0] for f in feeds]
            merged = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            outs = self.session.run(self.outputs, merged)
            bounds = np.cumsum(sizes)[:-1]
            per_request = [[np.split(o, bounds)[i] for o in outs] for i in range(len(requests))]
        else:
            per_request = [self.session.run(self.outputs, f) for f in feeds]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(v))
                                            for n, v in zip(self.outputs, outs)])
                for outs in per_request]
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_venv(venv: Path) -> Path:
    """Create ``venv`` with PyTriton and its numpy<2 when missing; return its site-packages."""
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating {venv} with {' '.join(VENV_REQUIREMENTS)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *VENV_REQUIREMENTS], check=True)
    out = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def demo_model() -> onnx.ModelProto:
    """A small batched model with two inputs and two outputs of different dtypes."""
    return onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 18]>
        g (float[batch, 4] x, int64[batch, 2] k) => (float[batch, 3] y, int64[batch] s) {
            w = Constant <value = float[4, 3] {0.5, -1, 2, 0.25, 1, -0.5, 3, 0, 1, -2, 0.5, 1}> ()
            m = MatMul (x, w)
            y = Tanh (m)
            axes_1 = Constant <value = int64[1] {1}> ()
            s = ReduceSum <keepdims = 0> (k, axes_1)
        }"""
    )


QUEUE_DELAY_US = 20_000


def python_backend_copy(repository: Path, name: str, dest: Path, queue_delay_us: int | None = None) -> Path:
    """Copy REPOSITORY/NAME to DEST/NAME with ``backend: "python"`` and the generic model.py.

    With QUEUE_DELAY_US the copy's ``max_queue_delay_microseconds`` is set to it (the written config
    must have a ``dynamic_batching`` block with that field).
    """
    target = dest / name
    shutil.copytree(repository / name, target)
    config = (target / "config.pbtxt").read_text()
    if 'backend: "onnxruntime"' not in config:
        raise SystemExit("config.pbtxt does not name the onnxruntime backend")
    config = config.replace('backend: "onnxruntime"', 'backend: "python"')
    if queue_delay_us is not None:
        config, found = re.subn(
            r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {queue_delay_us}", config
        )
        if found != 1:
            raise SystemExit("config.pbtxt has no dynamic_batching max_queue_delay_microseconds to set")
    (target / "config.pbtxt").write_text(config.replace("KIND_GPU", "KIND_CPU"))
    for version_dir in (p for p in target.iterdir() if p.is_dir()):
        (version_dir / "model.py").write_text(MODEL_PY)
    return target


def start_server(
    site: Path, venv_bin: Path, repo: Path, work: Path, http_port: int, grpc_port: int
) -> subprocess.Popen[bytes]:
    """Start the tritonserver binary shipped in PyTriton's wheel on 127.0.0.1."""
    dist = site / "pytriton" / "tritonserver"
    server_root = work / "tritonserver"
    shutil.copytree(dist, server_root, ignore=shutil.ignore_patterns("python_backend_stubs"))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copy(stub, server_root / "backends" / "python" / "triton_python_backend_stub")
    env = dict(os.environ)
    libs = [str(site / "nvidia_pytriton.libs"), str(sysconfig.get_config_var("LIBDIR"))]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    # the python backend's stub embeds the first python3 on PATH: the venv's, with numpy<2
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"
    cmd = [
        str(server_root / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={server_root / 'backends'}",
        f"--cache-directory={server_root / 'caches'}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--log-verbose=0",
    ]
    log = (work / "tritonserver.log").open("wb")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(client: object, proc: subprocess.Popen[bytes], name: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tritonserver exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if client.is_server_ready() and client.is_model_ready(name):  # type: ignore[attr-defined]
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit(f"tritonserver not ready after {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def check(
    model_path: Path | None, venv: Path, name: str = "hybrid", variants: dict[str, Path] | None = None
) -> dict[str, object]:
    """Run every check; return a summary dict (``ok`` True when everything passed).

    With ``variants`` (same signature, e.g. an int8 twin) the repository holds them as the next
    versions of the model (``deploy_triton(variants_as="versions")``): every version must be ready
    and answer like a local session of its own file.
    """
    import tritonclient.http as httpclient

    site = ensure_venv(venv)
    model = ox.load(model_path) if model_path else demo_model()
    session = ox.Session(model, device="cpu")
    variant_sessions = {key: ox.Session(path, device="cpu") for key, path in (variants or {}).items()}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="triton-check-") as tmp:
        work = Path(tmp)
        deployment = ox.deploy_triton(model, work / "repo", name=name, variants=variants)
        sessions = {str(deployment.version): session}
        sessions.update({str(deployment.variants[k].version): s for k, s in variant_sessions.items()})
        repo = work / "served"
        python_backend_copy(deployment.repository, name, repo, QUEUE_DELAY_US)
        http_port, grpc_port = _free_port(), _free_port()
        proc = start_server(site, venv / "bin", repo, work, http_port, grpc_port)
        log = work / "tritonserver.log"
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", concurrency=16)
            wait_ready(client, proc, name, log, timeout=120)
            served = client.get_model_config(name)
            info = {i.name: i for i in session.inputs}
            local_clients = threading.local()
            reshaped = {o["name"] for o in served["output"] if "reshape" in o}

            def one(batch: int, seed: int, version: str = "") -> float:
                local = np.random.default_rng(seed)
                feeds = {}
                for n, ti in info.items():
                    shape = [batch, *[d if isinstance(d, int) else 3 for d in ti.shape[1:]]]
                    if np.issubdtype(ti.dtype, np.floating):
                        feeds[n] = local.standard_normal(shape).astype(ti.dtype)
                    else:
                        feeds[n] = local.integers(0, 10, shape).astype(ti.dtype)
                reqs = []
                for n, v in feeds.items():
                    dtype = next(i for i in served["input"] if i["name"] == n)["data_type"][5:]
                    inp = httpclient.InferInput(n, list(v.shape), dtype)
                    inp.set_data_from_numpy(v, binary_data=True)
                    reqs.append(inp)
                if not hasattr(local_clients, "c"):  # tritonclient.http is not thread-safe
                    local_clients.c = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
                result = local_clients.c.infer(name, reqs, model_version=version)
                expected = sessions[version or max(sessions, key=int)].run(feeds)
                worst = 0.0
                for out_name, want in expected.items():
                    got = result.as_numpy(out_name)
                    if got is not None and out_name in reshaped and got.shape == (*want.shape, 1):
                        got = got.reshape(want.shape)  # Triton's [batch] idiom: dims [1], reshape []
                    if got is None or got.shape != want.shape:
                        raise SystemExit(f"output {out_name}: got {None if got is None else got.shape}")
                    if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
                        raise SystemExit(f"output {out_name} differs from ox.Session")
                    worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
                return worst

            sequential = [one(b, int(rng.integers(1 << 30))) for b in (1, 2, 5)]
            for version in sessions:
                if not client.is_model_ready(name, version):
                    raise SystemExit(f"version {version} of {name!r} is not ready")
                sequential += [one(b, int(rng.integers(1 << 30)), version) for b in (1, 3)]
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                seeds = [int(s) for s in rng.integers(1 << 30, size=64)]
                concurrent_errs = list(pool.map(lambda s: one(1 + s % 4, s), seeds))
            newest = max(sessions, key=int)  # requests that name no version go to the newest served
            stats = client.get_inference_statistics(name, newest)["model_stats"][0]
            batch_sizes = sorted(int(b["batch_size"]) for b in stats.get("batch_stats", []))
            requests = int(stats["inference_stats"]["success"]["count"])
            executions = int(stats["execution_count"])
            return {
                "ok": True,
                "server": client.get_server_metadata()["version"],
                "config_max_batch_size": served.get("max_batch_size", 0),
                "versions_served": sorted(int(v) for v in sessions),
                "requests": len(sequential) + len(concurrent_errs),
                "server_requests": requests,
                "server_executions": executions,
                "max_abs_error": max(sequential + concurrent_errs),
                "executed_batch_sizes": batch_sizes,
                # several requests ran as one model execution: the dynamic batcher grouped them
                "batcher_formed_batches": executions < requests,
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="an .onnx model (default: a built-in one)")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-deploy")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    summary = check(args.model, args.venv)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>24}: {value}")
    return 0 if summary["ok"] and summary["batcher_formed_batches"] else 1


if __name__ == "__main__":
    sys.exit(main())
