"""``onnxstitch serve``: serve a model over the KServe v2 / Open Inference Protocol (REST + gRPC)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from onnxstitch.cli._common import err_console

if TYPE_CHECKING:  # pragma: no cover
    from onnxstitch.runtime.serve import ServedModel

__all__ = ["register", "serve_command"]


def serve_command(
    target: Annotated[
        Path, typer.Argument(help="A model.onnx file, or a Triton model repository folder (deploy triton).")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind. Loopback by default; 0.0.0.0 exposes it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="REST (HTTP) port.")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="gRPC port.")] = 8001,
    name: Annotated[
        str | None,
        typer.Option(help="Model name clients use (default: the repository's model or the file's stem)."),
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            "--max-batch-size",
            help="Run up to this many concurrent requests as one batch (0: off). "
            "Default: the repository's config (its dynamic_batching), off for a file.",
        ),
    ] = None,
    max_batch_time: Annotated[
        float | None,
        typer.Option(
            "--max-batch-time",
            help="Seconds a request waits for others to batch with. "
            "Default: the repository's max_queue_delay_microseconds, else 0.0001.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Inference worker processes (0: in the server process).")] = 1,
    timeout: Annotated[
        float, typer.Option(help="Seconds before a run is cancelled and answered 504 (0: no timeout).")
    ] = 60.0,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", help="Largest request body in MiB (413 beyond).")
    ] = 64.0,
    device: Annotated[str, typer.Option(help="onnxruntime device: cpu, cuda, cuda:N, tensorrt.")] = "cpu",
    threads: Annotated[
        int | None, typer.Option(help="Intra-op threads per worker (default: onnxruntime's).")
    ] = None,
) -> None:
    """Serve a model over the KServe v2 / Open Inference Protocol until SIGTERM or Ctrl-C.

    Speaks REST and gRPC, so NVIDIA's tritonclient works unchanged (binary tensors included).
    """
    from onnxstitch.runtime.serve import serve

    def announce(served: ServedModel) -> None:
        versions = [version for version, _ in served.served_versions()]
        which = f"versions {', '.join(versions)}" if len(versions) > 1 else f"version {served.version}"
        err_console.print(
            f"serving [bold]{served.name}[/] ({which}) on http://{host}:{port} and grpc {host}:{grpc_port}",
            highlight=False,
        )

    code = serve(
        target,
        name=name,
        host=host,
        port=port,
        grpc_port=grpc_port,
        max_batch_size=max_batch_size,
        max_batch_time=max_batch_time,
        workers=workers,
        timeout=timeout if timeout > 0 else None,
        max_body_bytes=int(max_body_mb * 2**20),
        device=device,
        threads=threads,
        on_start=announce,
    )
    raise typer.Exit(code=code)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``onnxstitch`` app."""
    app.command("serve")(serve_command)
