"""The hybrid demo: a Keras part and a PyTorch part, each trained natively, shipped as one ONNX model.

``run_demo(out_dir)`` is what ``onnxstitch demo`` runs; see ``docs/tutorial.md`` for the same steps
written out by hand. Importing this package imports neither torch nor TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxstitch._lazy import lazy_exports

__all__ = ["DEFAULT_EPOCHS", "FLAVOURS", "DemoResult", "LatencyRow", "ProgressEvent", "run_demo", "stages"]

#: the two pairings: a Keras backbone feeding a PyTorch head, or a PyTorch trunk feeding a Keras head
FLAVOURS = ("keras-torch", "torch-keras")
#: training epochs of each part by default (the whole demo takes about a minute on 2 cores)
DEFAULT_EPOCHS = 15

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DemoResult": "_run:DemoResult",
        "LatencyRow": "_run:LatencyRow",
        "ProgressEvent": "_run:ProgressEvent",
        "run_demo": "_run:run_demo",
        "stages": "_run:stages",
    },
)

if TYPE_CHECKING:  # pragma: no cover
    from onnxstitch.demo._run import DemoResult, LatencyRow, ProgressEvent, run_demo, stages
