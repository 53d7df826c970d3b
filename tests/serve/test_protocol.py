"""Request checks and binary-data helpers of ``serve``, without a server."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from onnxstitch.errors import InputError
from onnxstitch.runtime._feeds import TensorInfo
from onnxstitch.runtime.serve._middleware import parse_infer_body
from onnxstitch.runtime.serve._protocol import (
    RequestTensor,
    check_raw_sizes,
    decode_binary,
    decode_inputs,
    encode_binary,
    numpy_to_v2,
    v2_to_numpy,
)

SIGNATURE = [
    TensorInfo("x", np.dtype(np.float32), ("batch", 4)),
    TensorInfo("n", np.dtype(np.int64), ("batch", 1)),
]


def _good() -> list[RequestTensor]:
    return [
        RequestTensor("x", "FP32", [2, 4], list(range(8))),
        RequestTensor("n", "INT64", [2, 1], [[3], [4]]),
    ]


def test_decode_valid_request() -> None:
    arrays = decode_inputs(SIGNATURE, _good())
    np.testing.assert_array_equal(arrays["x"], np.arange(8, dtype=np.float32).reshape(2, 4))
    assert arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(arrays["n"], np.array([[3], [4]], dtype=np.int64))


BAD = {
    "unknown name": ([RequestTensor("q", "FP32", [2, 4], [0.0] * 8)], ["'q'", "'x'"]),
    "dtype": ([RequestTensor("x", "FP64", [2, 4], [0.0] * 8)], ["'x'", "FP64", "FP32"]),
    "static dim": ([RequestTensor("x", "FP32", [2, 5], [0.0] * 10)], ["'x'", "dim 1"]),
    "rank": ([RequestTensor("x", "FP32", [8], [0.0] * 8)], ["'x'", "rank"]),
    "count": ([RequestTensor("x", "FP32", [2, 4], [0.0] * 6)], ["'x'", "8 elements", "6"]),
    "strings": ([RequestTensor("x", "FP32", [2, 4], ["a"] * 8)], ["'x'", "non-numeric"]),
    "ragged": ([RequestTensor("x", "FP32", [2, 4], [[1.0, 2.0], [3.0]])], ["'x'", "rectangular"]),
    "negative shape": ([RequestTensor("x", "FP32", [-1, 4], [0.0] * 4)], ["'x'", "non-negative"]),
    "batch disagrees": ([RequestTensor("n", "INT64", [3, 1], [1, 2, 3])], ["'n'", "batch"]),
    "float into int": ([RequestTensor("n", "INT64", [2, 1], [1.5, 2.0])], ["'n'", "float64"]),
    "duplicate": ([RequestTensor("n", "INT64", [2, 1], [1, 2])] * 2, ["'n'", "twice"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_name_the_input(case: str) -> None:
    replacement, needles = BAD[case]
    names = {t.name for t in replacement}
    tensors = replacement + [t for t in _good() if t.name not in names and case != "unknown name"]
    if case == "unknown name":
        tensors = [*replacement, _good()[1]]
    with pytest.raises(InputError) as info:
        decode_inputs(SIGNATURE, tensors)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_every_problem_of_a_request_is_reported_at_once() -> None:
    tensors = [
        RequestTensor("x", "FP64", [2, 5], [0.0] * 10),  # datatype and static dim both wrong
        RequestTensor("n", "INT64", [3, 1], [1, 2, 3]),  # batch disagrees with x's
    ]
    with pytest.raises(InputError) as info:
        decode_inputs(SIGNATURE, tensors)
    message = str(info.value)
    assert message.startswith("3 problem(s) with the request:"), message
    for needle in ("'x': datatype 'FP64'", "'x': dim 1 is 5", "'n': dim 0 ('batch') is 3"):
        assert needle in message, (needle, message)
    with pytest.raises(InputError, match=r"^1 problem\(s\) with the request:\n  - input 'x': dim 1 is 5"):
        decode_inputs(SIGNATURE, [RequestTensor("x", "FP32", [2, 5], [0.0] * 10), _good()[1]])


def test_missing_input_is_named() -> None:
    with pytest.raises(InputError, match="missing input 'n'"):
        decode_inputs(SIGNATURE, _good()[:1])


def test_int_range_is_checked() -> None:
    signature = [TensorInfo("b", np.dtype(np.int8), (2,))]
    with pytest.raises(InputError, match="'b': values outside the range of INT8"):
        decode_inputs(signature, [RequestTensor("b", "INT8", [2], [1, 300])])
    assert decode_inputs(signature, [RequestTensor("b", "INT8", [2], [1, -128])])["b"].tolist() == [1, -128]


def test_datatype_names_round_trip() -> None:
    for name in ("BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64"):
        dtype = v2_to_numpy(name)
        assert dtype is not None and numpy_to_v2(dtype) == name
    assert v2_to_numpy("BYTES") is None
    assert numpy_to_v2(np.dtype(object)) == "BYTES"


def test_binary_round_trip_and_size_check() -> None:
    values = np.arange(6, dtype=np.float32) / 3
    raw = encode_binary("FP32", values.tolist())
    assert raw == values.tobytes()
    assert decode_binary("x", "FP32", [2, 3], raw) == values.tolist()
    with pytest.raises(InputError, match="'x': shape \\[2, 4\\] of FP32 needs 32 bytes, got 24"):
        decode_binary("x", "FP32", [2, 4], raw)
    with pytest.raises(InputError, match="'s'"):
        decode_binary("s", "BYTES", [1], b"\x01\x00\x00\x00a")


def _binary_body(x: np.ndarray, n: np.ndarray, *, claim: int | None = None) -> tuple[bytes, int]:
    head = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": claim or x.nbytes},
            },
            {
                "name": "n",
                "datatype": "INT64",
                "shape": list(n.shape),
                "parameters": {"binary_data_size": n.nbytes},
            },
        ],
        "parameters": {"binary_data_output": True},
    }
    text = json.dumps(head).encode()
    return text + x.tobytes() + n.tobytes(), len(text)


def test_parse_binary_body() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    n = np.array([[5], [6]], dtype=np.int64)
    body, length = _binary_body(x, n)
    out, binary = parse_infer_body(body, length)
    request = json.loads(out)
    assert binary is True
    assert request["inputs"][0]["data"] == x.reshape(-1).tolist()
    assert request["inputs"][1]["data"] == [5, 6]
    assert "binary_data_size" not in request["inputs"][0]["parameters"]


@pytest.mark.parametrize(
    ("body", "length", "needle"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty 'inputs'"),
        (b'{"inputs": [{"name": "x", "shape": [1]}]}', None, "input 'x': 'datatype'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None, "input 'x': no 'data'"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
            999,
            "larger than the body",
        ),
    ],
)
def test_parse_malformed_body(body: bytes, length: int | None, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        parse_infer_body(body, length)


def test_parse_binary_size_mismatch_names_input() -> None:
    x = np.zeros((2, 4), dtype=np.float32)
    n = np.zeros((2, 1), dtype=np.int64)
    body, length = _binary_body(x, n, claim=16)
    with pytest.raises(InputError, match="'x'"):
        parse_infer_body(body, length)
    body, length = _binary_body(x, n)
    with pytest.raises(InputError, match="4 bytes of binary data"):
        parse_infer_body(body + b"\x00" * 4, length)


def test_gzip_is_not_a_json_body() -> None:
    with pytest.raises(InputError, match="not valid JSON"):
        parse_infer_body(gzip.compress(b'{"inputs": []}'), None)


def test_raw_sizes_are_checked_per_input() -> None:
    inputs = [("x", "FP32", [2, 4]), ("n", "INT64", [2, 1])]
    check_raw_sizes(inputs, [32, 16])
    with pytest.raises(InputError) as info:
        check_raw_sizes(inputs, [24, 8])
    assert "'x': shape [2, 4] of FP32 needs 32 bytes, got 24" in str(info.value)
    assert "'n': shape [2, 1] of INT64 needs 16 bytes, got 8" in str(info.value)
    with pytest.raises(InputError, match="2 input\\(s\\) but 1 raw content"):
        check_raw_sizes(inputs, [32])
    with pytest.raises(InputError, match="'s': raw data of datatype 'BYTES'"):
        check_raw_sizes([("s", "BYTES", [1])], [5])
