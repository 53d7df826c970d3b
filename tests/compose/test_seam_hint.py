"""A SeamError's fix line promises an adapter only when one is suggested."""

from __future__ import annotations

import pytest
from test_merge_seams import _consumer, _producer

import onnxstitch as ox
from onnxstitch.errors import SeamError


def test_static_dim_mismatch_promises_no_adapter() -> None:
    with pytest.raises(SeamError) as info:
        ox.chain({"p": _producer(shape="batch, 5"), "c": _consumer(shape="batch, 4")})
    assert "static dim(s) [1] differ" in str(info.value)
    assert "suggested adapter" not in (info.value.hint or "")
    assert "no adapter fits" in (info.value.hint or "")


def test_rank_mismatch_keeps_the_suggested_adapter() -> None:
    with pytest.raises(SeamError) as info:
        ox.chain({"p": _producer(shape="batch, 2, 2"), "c": _consumer(shape="batch, 4")})
    assert "ox.adapters.flatten(rank=3)" in str(info.value)  # flatten() alone takes rank 4
    assert "suggested adapter" in (info.value.hint or "")
