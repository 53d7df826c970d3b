"""The speed line: the converted model timed against float32, recorded, shown, and warned about.

No timed assertions: the numbers must be positive and consistent; the warning path is driven by
given numbers, not by a model that happens to be slow.
"""

from __future__ import annotations

import logging

import pytest
from _precision_models import Hybrid, images

import onnxstitch as ox
from onnxstitch.precision import PrecisionReport, read_precision
from onnxstitch.precision._speed import MAX_BATCH, speed_line, speed_note, timing_batch, warn_speed


def test_the_record_holds_the_speed_and_the_report_shows_it(hybrid: Hybrid) -> None:
    q = ox.quantize(hybrid.model, {hybrid.input: images(64, 1)})
    record = read_precision(q)
    assert record is not None
    speed = record["speed"]
    assert speed["float32_ms"] > 0 and speed["quantized_ms"] > 0 and speed["runs"] >= 3
    assert speed["ratio"] == pytest.approx(speed["float32_ms"] / speed["quantized_ms"], rel=1e-2)
    assert speed["batch"] == 16 and speed["precision"] == "int8"  # the hold-out: 1 sample in 4 of 64
    report = PrecisionReport.from_dict(record)
    assert report.speed == speed and speed_line(speed) in str(report)
    assert "speed (batch 16, this machine's CPU" in str(report)


def test_nothing_converted_means_nothing_timed(hybrid: Hybrid) -> None:
    q = ox.quantize(hybrid.model, {hybrid.input: images(16, 1)}, parts={"backbone": "fp32"})
    record = read_precision(q)
    assert record is not None and "speed" not in record
    assert "speed" not in str(PrecisionReport.from_dict(record))


def test_the_timing_batch_is_at_most_64_hold_out_samples(hybrid: Hybrid) -> None:
    feeds = [{hybrid.input: images(48, i)} for i in range(3)]
    batch = timing_batch(hybrid.model, feeds)
    assert batch[hybrid.input].shape[0] == MAX_BATCH
    assert (batch[hybrid.input][:48] == feeds[0][hybrid.input]).all()


SLOW = {"batch": 64, "float32_ms": 22.6, "quantized_ms": 28.6, "ratio": 0.79, "runs": 9, "device": "cpu"}


def test_slower_int8_warns_and_says_what_to_do(caplog: pytest.LogCaptureFixture) -> None:
    speed = {**SLOW, "precision": "int8"}
    parts = {"backbone": "int8", "head": "fp32"}
    with caplog.at_level(logging.WARNING, logger="onnxstitch.precision._speed"):
        note = warn_speed(speed, parts)
    assert note is not None and note.startswith(
        "int8 is 0.79x the float32 speed at batch 64 on this machine: it does not pay here"
    )
    assert "parts={'backbone': 'fp32'}" in note
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and caplog.records[0].message == note
    cli = speed_note(speed, parts, cli=True)
    assert cli is not None and "(--part backbone=fp32)" in cli and "parts=" not in cli


def test_faster_int8_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    speed = {**SLOW, "quantized_ms": 11.3, "ratio": 2.0, "precision": "int8"}
    with caplog.at_level(logging.INFO, logger="onnxstitch.precision._speed"):
        assert warn_speed(speed, {"backbone": "int8"}) is None
    assert not caplog.records


def test_slower_fp16_on_cpu_is_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    speed = {**SLOW, "precision": "float16"}
    with caplog.at_level(logging.INFO, logger="onnxstitch.precision._speed"):
        note = warn_speed(speed, {"backbone": "fp16"})
    assert note == (
        "float16 is 0.79x the float32 speed at batch 64 on this machine (on CPU; fp16 is meant for GPUs)"
    )
    assert [r.levelno for r in caplog.records] == [logging.INFO]
