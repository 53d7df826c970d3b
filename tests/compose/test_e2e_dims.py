"""Sequence symbols flow through a real part (issue 10 item 5).

A GPT-2-like torch model (embedding + linear, dynamic ``batch`` and ``seq``) chained into a per-token
Keras ``Dense`` head: the Keras converter names the head's unknown dims on its own
(``hidden_dim1``, ``token_logits_dim1``), and the merged output used to say
``['batch', 'token_logits_dim1', 5]``. Symbols now flow through each part by shape inference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import onnxstitch as ox  # noqa: E402


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 16)
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(self.embed(tokens)))


def _token_head() -> Any:
    hidden = keras.Input((None, 16), name="hidden")
    dense = keras.layers.Dense(
        5, name="token_logits", kernel_initializer=keras.initializers.GlorotUniform(seed=1)
    )
    return keras.Model(hidden, dense(hidden))


def shape(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in vi.type.tensor_type.shape.dim
    ]


@pytest.fixture(scope="module")
def natives() -> tuple[Any, Any]:
    return TinyLM().eval(), _token_head()


@pytest.fixture(scope="module")
def merged(natives: tuple[Any, Any]) -> onnx.ModelProto:
    lm, head = natives
    lm_onnx = ox.from_torch(lm, torch.randint(0, 50, (2, 7)), dynamic_dims={"tokens": {0: "batch", 1: "seq"}})
    return ox.chain({"lm": lm_onnx, "head": ox.from_keras(head)})


def test_merged_output_carries_seq(merged: onnx.ModelProto) -> None:
    assert shape(merged.graph.input[0]) == ["batch", "seq"]
    assert shape(merged.graph.output[0]) == ["batch", "seq", 5]


def test_merged_model_computes_the_native_chain_at_other_lengths(
    merged: onnx.ModelProto, natives: tuple[Any, Any]
) -> None:
    lm, head = natives

    def reference(tokens: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            hidden = lm(torch.from_numpy(tokens)).numpy()
        return np.asarray(head(hidden))

    tokens = np.random.default_rng(0).integers(0, 50, size=(3, 11), dtype=np.int64)
    report = ox.verify(merged, reference, {"tokens": tokens}, rtol=1e-4, atol=1e-5)
    assert report, str(report)
