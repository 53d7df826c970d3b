"""Start ``onnxstitch serve`` as a real subprocess on 127.0.0.1 and stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A running ``onnxstitch serve`` process and how to reach it."""

    def __init__(
        self, process: subprocess.Popen[bytes], host: str, port: int, grpc_port: int, log: Path
    ) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.grpc_port = grpc_port
        self.log = log
        self.url = f"{host}:{port}"
        self.grpc_url = f"{host}:{grpc_port}"

    def live(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/live", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise


@contextlib.contextmanager
def running(
    target: Path, log: Path, *args: str, host: str = "127.0.0.1", ready_timeout: float = 90.0
) -> Iterator[Server]:
    """Run ``onnxstitch serve TARGET ARGS`` until ready; always stop it afterwards.

    ``host`` is where the server is reached; pass ``--host`` in ``args`` too when it is not the default.
    """
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "onnxstitch", "serve", str(target), "--port", str(port)]
    command += ["--grpc-port", str(grpc_port), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    server = Server(process, host, port, grpc_port, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                url = f"http://{server.url}/v2/health/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {ready_timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
