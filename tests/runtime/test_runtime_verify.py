"""verify / VerifyReport / random_feeds: passing and failing reports, reference forms, feeds."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import parser

from onnxstitch.errors import InputError, StitchError, ValidationError
from onnxstitch.runtime.verification import VerifyReport, random_feeds, verify


def _add_ref(x: np.ndarray, y: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x + y, t


def test_random_feeds_follow_signature(add_model: onnx.ModelProto, add_path: Any) -> None:
    feeds = random_feeds(add_model, 5, seed=3)
    assert list(feeds) == ["x", "y", "t"]
    assert feeds["x"].shape == (5, 3) and feeds["x"].dtype == np.float32
    assert feeds["t"].shape == (5, 3) and feeds["t"].dtype == np.int64  # "seq" gets the fixed size 3
    assert feeds["t"].min() >= 0 and feeds["t"].max() <= 3
    again = random_feeds(add_path, 5, seed=3)
    for name in feeds:
        np.testing.assert_array_equal(feeds[name], again[name])
    other = random_feeds(add_model, 5, seed=4)
    assert not np.array_equal(feeds["x"], other["x"])


def test_random_feeds_bool_and_static() -> None:
    model = parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 18]> g (bool[2, 6] m, int32[N] k) => (bool[2, 6] o) '
        "{ o = Not(m) }"
    )
    feeds = random_feeds(model, 4)
    assert feeds["m"].dtype == np.bool_ and feeds["m"].shape == (2, 6)
    assert feeds["m"].any() and not feeds["m"].all()
    assert feeds["k"].dtype == np.int32 and feeds["k"].shape == (4,)


def test_random_feeds_string_input_refused() -> None:
    model = parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 18]> g (string[batch] s) => (string[batch] o) '
        "{ o = Identity(s) }"
    )
    with pytest.raises(InputError, match="input 's': cannot generate random data"):
        random_feeds(model, 2)


def test_verify_passes_with_sequence_reference(add_model: onnx.ModelProto) -> None:
    report = verify(add_model, _add_ref)
    assert report and report.passed
    assert isinstance(report, VerifyReport)
    assert [(r.output, r.batch) for r in report.rows] == [("z", 1), ("u", 1), ("z", 7), ("u", 7)]
    assert all(r.shape_ok and r.max_abs == 0 for r in report.rows)
    u = report.rows[1]
    assert (u.rtol, u.atol) == (0.0, 0.0)  # integers compared exactly
    text = str(report)
    assert "all outputs match" in text
    assert "output  feeds  batch  shape  max abs err  max rel err  tolerance" in text
    assert "(per output: max|err| <= atol + rtol * max|ref|)" in text
    assert "feeds #2: seeded random inputs (seed 1), batch 7: x float32[7,3] in [" in text
    assert text.count("✓") == 4 and "✗" not in text
    assert "exact" in text and "rtol=0.0001 atol=1e-05" in text
    report.raise_for_mismatch()  # does not raise


def test_verify_reference_returning_array_and_dict(
    mlp_model: onnx.ModelProto, mlp_path: Any, mlp_ref: Any
) -> None:
    assert verify(mlp_model, mlp_ref, batch_sizes=(1, 3, 8))
    report = verify(mlp_path, lambda x: {"y": mlp_ref(x)}, rtol=1e-5, atol=1e-6)
    assert report and [r.batch for r in report.rows] == [1, 7]


def test_verify_reference_returning_torch(mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    torch = pytest.importorskip("torch")
    assert verify(mlp_model, lambda x: torch.from_numpy(mlp_ref(x)))


def test_verify_fails_with_table(add_model: onnx.ModelProto) -> None:
    def wrong(x: np.ndarray, y: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        z = x + y
        z[0, 0] += 0.5
        return {"z": z, "u": t + 1, "extra": t}

    report = verify(add_model, wrong, batch_sizes=(2,))
    assert not report
    by_name = {r.output: r for r in report.rows}
    assert set(by_name) == {"z", "u", "extra"}
    z = by_name["z"]
    assert not z.passed and z.shape_ok
    assert z.max_abs == pytest.approx(0.5, rel=1e-5)
    assert "max abs err 0.5 > atol + rtol * max|ref|" in z.note and "1 of 6 elements beyond it" in z.note
    elementwise = {r.output: r for r in verify(add_model, wrong, batch_sizes=(2,), metric="elementwise").rows}
    assert "1 of 6 elements out of tolerance" in elementwise["z"].note
    assert not by_name["u"].passed and by_name["u"].max_abs == 1.0
    assert not by_name["extra"].passed and "model has no output 'extra'" in by_name["extra"].note
    text = str(report)
    assert "3 of 3 row(s) FAIL" in text and text.count("✗") == 3
    with pytest.raises(ValidationError) as info:
        report.raise_for_mismatch()
    assert info.value.report is report
    assert text in str(info.value)


def test_verify_tolerance_rule(mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    def off(x: np.ndarray) -> np.ndarray:
        return mlp_ref(x) * (1 + 1e-3)

    assert not verify(mlp_model, off, rtol=1e-4, atol=0)
    passed = verify(mlp_model, off, rtol=2e-3, atol=0)
    assert passed
    assert all(r.max_rel is not None and r.max_rel <= 1.1e-3 for r in passed.rows)
    assert verify(mlp_model, off, rtol=0, atol=1.0)  # an absolute tolerance alone can also pass it


def test_verify_shape_and_missing_output(mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    report = verify(mlp_model, lambda x: mlp_ref(x)[:, :4], batch_sizes=(2,))
    (row,) = report.rows
    assert not row.passed and row.note == "shape mismatch"
    assert "2x5" not in str(report) and "(2,5) vs ref (2,4)" in str(report)
    report = verify(mlp_model, lambda x: {"logits": mlp_ref(x)}, batch_sizes=(2,))
    notes = sorted(r.note for r in report.rows)
    assert any("reference gave no output 'y'" in n for n in notes)
    assert any("model has no output 'logits'" in n for n in notes)


def test_verify_dtype_mismatch(add_model: onnx.ModelProto) -> None:
    report = verify(add_model, lambda x, y, t: (x + y, t.astype(np.float32)), batch_sizes=(2,))
    u = next(r for r in report.rows if r.output == "u")
    assert not u.passed and "dtype mismatch: model int64, reference float32" in u.note


def test_verify_given_feeds(mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    x = np.random.default_rng(9).standard_normal((4, 4)).astype(np.float32)
    seen: list[np.ndarray] = []

    def ref(a: np.ndarray) -> np.ndarray:
        seen.append(a)
        return mlp_ref(a)

    report = verify(mlp_model, ref, {"x": x})
    assert report and [r.batch for r in report.rows] == [4]
    np.testing.assert_array_equal(seen[0], x)
    report = verify(mlp_model, ref, [{"x": x}, {"x": x[:2]}])
    assert [r.batch for r in report.rows] == [4, 2]
    with pytest.raises(InputError, match="feeds must be a dict"):
        verify(mlp_model, ref, [x])  # type: ignore[list-item]
    with pytest.raises(InputError, match="missing input 'x'"):
        verify(mlp_model, ref, {"image": x})


def test_verify_seed_changes_feeds(mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    seen: list[np.ndarray] = []

    def ref(a: np.ndarray) -> np.ndarray:
        seen.append(a)
        return mlp_ref(a)

    verify(mlp_model, ref, batch_sizes=(2,), seed=1)
    verify(mlp_model, ref, batch_sizes=(2,), seed=1)
    verify(mlp_model, ref, batch_sizes=(2,), seed=2)
    np.testing.assert_array_equal(seen[0], seen[1])
    assert not np.array_equal(seen[0], seen[2])


def test_reference_exception_wrapped(mlp_model: onnx.ModelProto) -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("native model exploded")

    with pytest.raises(StitchError, match="'broken' raised RuntimeError: native model exploded") as info:
        verify(mlp_model, broken)
    assert "inputs ['x'] of shapes [(1, 4)]" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_reference_cannot_mutate_model_feeds(mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    x = np.random.default_rng(10).standard_normal((3, 4)).astype(np.float32)
    before = x.copy()

    def mutating(a: np.ndarray) -> np.ndarray:
        out = mlp_ref(a)
        a[:] = 0
        return out

    assert verify(mlp_model, mutating, {"x": x})
    np.testing.assert_array_equal(x, before)


def test_report_to_dict(add_model: onnx.ModelProto) -> None:
    data = verify(add_model, _add_ref, batch_sizes=(2,)).to_dict()
    assert data["passed"] is True
    assert data["rows"][0] == {
        "output": "z",
        "batch": 2,
        "shape": [2, 3],
        "expected_shape": [2, 3],
        "max_abs": 0.0,
        "max_rel": 0.0,
        "rtol": 1e-4,
        "atol": 1e-5,
        "passed": True,
        "note": "",
        "metric": "scaled",
        "scale": data["rows"][0]["scale"],
        "feeds": "#1",
    }
    assert data["rows"][0]["scale"] > 0 and data["feeds"][0].startswith(
        "seeded random inputs (seed 0), batch 2"
    )


def test_empty_report_is_falsy() -> None:
    assert not VerifyReport(())
    with pytest.raises(StitchError, match="at least one batch size"):
        verify(parser.parse_model(
            '<ir_version: 8, opset_import: ["" : 18]> g (float[N] a) => (float[N] b) { b = Neg(a) }'
        ), lambda a: -a, batch_sizes=())  # fmt: skip


def test_public_names_callable_whatever_the_import_order(mlp_path: Any) -> None:
    """`verify` / `bench` stay the functions however the runtime modules were imported before."""
    code = (
        "import numpy as np\n"
        "from onnxstitch.runtime.verification import random_feeds\n"
        "from onnxstitch.runtime.benchmark import BenchResult\n"
        "from onnxstitch.runtime import verify, bench\n"
        "import onnxstitch as ox\n"
        f"path = {str(mlp_path)!r}\n"
        "ref = lambda x: ox.Session(path, device='cpu').run({'x': x})['y']\n"
        "assert verify(path, ref) and ox.verify(path, ref)\n"
        "r = bench(path, batch_sizes=(1,), repeats=1, warmup=0)\n"
        "assert isinstance(r, BenchResult)\n"
        "assert isinstance(ox.bench(path, batch_sizes=(1,), repeats=1), BenchResult)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_verify_bad_tolerance_and_device(mlp_model: onnx.ModelProto, mlp_ref: Any) -> None:
    from onnxstitch.errors import DeviceError

    with pytest.raises(StitchError, match="tolerances must not be negative"):
        verify(mlp_model, mlp_ref, rtol=-1)
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        verify(mlp_model, mlp_ref, device="gpu0")


def test_bool_outputs_compared_exactly() -> None:
    model = parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 18]> g (bool[batch, 4] m) => (bool[batch, 4] o) { o = Not(m) }'
    )
    good = verify(model, lambda m: ~m)
    assert good and all((r.rtol, r.atol) == (0.0, 0.0) for r in good.rows)
    bad = verify(model, lambda m: m, batch_sizes=(3,))
    (row,) = bad.rows
    assert not row.passed and row.max_abs == 1.0 and "12 of 12 elements" in row.note
