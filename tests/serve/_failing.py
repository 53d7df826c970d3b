"""An MLServer runtime whose model never loads, and a script that serves it (run in a subprocess:
MLServer's protobuf messages clash with tritonclient.grpc's in the test process)."""

from __future__ import annotations

import sys

from mlserver import MLModel


class NeverLoads(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        raise RuntimeError("this model never loads")


def main(path: str, port: int, grpc_port: int) -> int:
    import asyncio

    from onnxstitch.errors import ServeError
    from onnxstitch.files import load
    from onnxstitch.runtime.serve._mlserver import run_server
    from onnxstitch.runtime.serve._server import model_signature
    from onnxstitch.runtime.serve._source import resolve_target

    served = resolve_target(path)
    inputs, _ = model_signature(load(served.path))
    options = {
        "host": "127.0.0.1",
        "port": port,
        "grpc_port": grpc_port,
        "workers": 0,
        "max_body_bytes": 2**20,
        "max_batch_size": 0,
        "max_batch_time": 0.0,
        "extra": {},
        "inputs": [],
        "outputs": [],
    }
    announced: list[object] = []
    runtime = f"{__name__}.NeverLoads"
    try:
        asyncio.run(
            run_server(served, inputs, options, runtime=runtime, platform="x", on_ready=announced.append)
        )
    except ServeError as exc:
        print(f"ServeError: {exc}; announced: {len(announced)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
