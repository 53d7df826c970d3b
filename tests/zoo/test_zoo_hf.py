"""Hugging Face BERT, GPT-2 and ViT from tiny configs (random init, no downloads), converted with
default validation, merged with a Keras head (ViT also behind a Keras preprocessing model), and
checked against the native chain.

Dynamic batch for all three and dynamic sequence for the text models: the merged model is run at
two batch sizes and two sequence lengths. Text feeds are what a tokenizer gives: token ids within
the vocabulary and 0/1 attention masks with right padding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from zoo_helpers import assert_order_one, check, dims, inserted_adapters, keras_call, torch_call

import onnxstitch as ox
from onnxstitch.errors import SeamError

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

HIDDEN, VOCAB = 32, 100
TINY = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
SEQ_DIMS = {0: "batch", 1: "seq"}


class Encoder(torch.nn.Module):
    """A Hugging Face model as users export it: tensors in, ``last_hidden_state`` out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class VisionEncoder(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state


def _tokens(rng: np.random.Generator, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Token ids and a 0/1 mask; every row but the first is right-padded."""
    lengths = np.concatenate([[seq], rng.integers(2, seq + 1, batch - 1)])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, VOCAB, (batch, seq)), 0).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def _text_feeds() -> list[dict[str, np.ndarray]]:
    return [_tokens(np.random.default_rng(10), 1, 5), _tokens(np.random.default_rng(11), 4, 13)]


def _keras_pool_head(tokens: int | None, name: str) -> Any:
    """(batch, tokens, HIDDEN) -> 3 scores."""
    inp = keras.Input((tokens, HIDDEN), name="hidden")
    x = keras.layers.GlobalAveragePooling1D()(inp)
    return keras.Model(inp, keras.layers.Dense(3, name=name)(x))


def _keras_token_head() -> Any:
    """(batch, seq, HIDDEN) -> per-token logits over the vocabulary (an LM head)."""
    inp = keras.Input((None, HIDDEN), name="hidden")
    x = keras.layers.Dense(HIDDEN, activation="tanh")(inp)
    return keras.Model(inp, keras.layers.Dense(VOCAB, name="token_logits")(x))


def _text_case(encoder: torch.nn.Module, head: Any) -> None:
    example = _tokens(np.random.default_rng(0), 2, 8)
    converted = ox.from_torch(  # default validation on
        encoder,
        tuple(torch.from_numpy(example[k]) for k in ("input_ids", "attention_mask")),
        dynamic_dims={"input_ids": SEQ_DIMS, "attention_mask": SEQ_DIMS},
        output_names=["hidden"],
    )
    merged = ox.chain({"encoder": converted, "head": ox.from_keras(head)})
    assert [v.name for v in merged.graph.input] == ["input_ids", "attention_mask"]
    assert all(dims(v) == ["batch", "seq"] for v in merged.graph.input)
    assert dims(merged.graph.output[0])[0] == "batch"

    def reference(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return keras_call(head, torch_call(encoder, input_ids, attention_mask))

    feeds = _text_feeds()
    assert_order_one("encoder", torch_call(encoder, *feeds[1].values()))
    check(merged, reference, feeds)


def test_bert_into_keras_head() -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **TINY)
    encoder = Encoder(transformers.BertModel(config, add_pooling_layer=False)).eval()
    keras.utils.set_random_seed(0)
    _text_case(encoder, _keras_pool_head(None, "scores"))


def test_gpt2_into_keras_lm_head() -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=HIDDEN, n_layer=2, n_head=2, use_cache=False
    )
    encoder = Encoder(transformers.GPT2Model(config)).eval()
    keras.utils.set_random_seed(0)
    _text_case(encoder, _keras_token_head())


def _keras_preprocessing() -> Any:
    """Pixels 0..255 (NHWC) -> normalized pixels, as a Keras input pipeline does it."""
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(image)
    out = keras.layers.Normalization(mean=[0.5, 0.5, 0.5], variance=[0.25, 0.25, 0.25], name="pixels")(x)
    return keras.Model(image, out)


def test_vit_between_keras_preprocessing_and_keras_head() -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, **TINY)
    encoder = VisionEncoder(transformers.ViTModel(config, add_pooling_layer=False)).eval()
    example = torch.randn(2, 3, 32, 32)
    converted = ox.from_torch(encoder, (example,), output_names=["hidden"])  # default validation on
    keras.utils.set_random_seed(0)
    pre, head = _keras_preprocessing(), _keras_pool_head(17, "scores")  # 16 patches + the class token
    parts = {"pre": ox.from_keras(pre), "vit": converted, "head": ox.from_keras(head)}
    # a Normalization is no evidence of a layout: the NHWC -> NCHW seam is ambiguous until declared
    with pytest.raises(SeamError, match=r"layouts=\{'pre:pixels': 'NHWC'\}"):
        ox.chain(parts)
    merged = ox.chain(parts, layouts={"pre:pixels": "NHWC"})
    assert inserted_adapters(merged) == [("Transpose", [0, 3, 1, 2])]
    assert dims(merged.graph.input[0]) == ["batch", 32, 32, 3]
    assert dims(merged.graph.output[0]) == ["batch", 3]

    def reference(image: np.ndarray) -> np.ndarray:
        pixels = keras_call(pre, image).transpose(0, 3, 1, 2)  # the user's own permute
        return keras_call(head, torch_call(encoder, pixels))

    rng = np.random.default_rng(12)
    feeds = [{"image": rng.uniform(0, 255, (b, 32, 32, 3)).astype(np.float32)} for b in (1, 6)]
    assert_order_one("vit", torch_call(encoder, keras_call(pre, feeds[1]["image"]).transpose(0, 3, 1, 2)))
    check(merged, reference, feeds)
