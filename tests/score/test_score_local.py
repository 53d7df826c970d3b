"""ox.score / `onnxstitch score` with the local engine: same outputs, in the same order, as one
Session.run over the whole data; streamed; every bad input named before anything is written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import scoredata
from scoredata import make_data, pa, pq, table_of, tensor, write_folder
from typer.testing import CliRunner

import onnxstitch as ox
from onnxstitch.cli import app
from onnxstitch.errors import DatasetError

runner = CliRunner()


def _expected(
    model: onnx.ModelProto, data: dict[str, np.ndarray[Any, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    return ox.Session(model).run({"x": data["x"], "img": data["img"], "k": data["k"]})


def _check(
    path: Path, data: dict[str, np.ndarray[Any, Any]], expected: dict[str, Any], *, ids: bool = True
) -> None:
    out = pq.read_table(path)
    assert out.column_names == (["id"] if ids else []) + ["y", "pooled", "act", "k2"]
    if ids:
        np.testing.assert_array_equal(out["id"].to_numpy(), data["id"])
    for name in ("y", "pooled", "act", "k2"):
        np.testing.assert_array_equal(tensor(out[name]), expected[name])


def _no_leftovers(folder: Path, *, allowed: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == allowed


@pytest.mark.parametrize("layout", ["tensor", "nested", "flat", "list"])
def test_local_matches_one_session_run_in_order(model: onnx.ModelProto, tmp_path: Path, layout: str) -> None:
    data = make_data(700)
    src = write_folder(table_of(data, layout), tmp_path / "src", files=3, row_group_size=90)
    result = ox.score(model, src, output=tmp_path / "preds.parquet", batch_size=64)
    assert result.rows == 700 and result.engine == "local"
    assert result.columns == ("id", "y", "pooled", "act", "k2")
    _check(tmp_path / "preds.parquet", data, _expected(model, data))
    out = pq.read_table(tmp_path / "preds.parquet")
    assert pa.types.is_fixed_size_list(out.schema.field("y").type)  # [N, 3]
    assert isinstance(out.schema.field("act").type, pa.FixedShapeTensorType)  # [N, 3, 4, 4]
    assert list(out.schema.field("act").type.shape) == [3, 4, 4]


def test_streams_in_batches(model: onnx.ModelProto, tmp_path: Path) -> None:
    data = make_data(1000)
    pq.write_table(table_of(data), tmp_path / "d.parquet", row_group_size=250)
    seen: list[tuple[int, int]] = []
    result = ox.score(
        model,
        tmp_path / "d.parquet",
        output=tmp_path / "p.parquet",
        batch_size=64,
        progress=lambda d, t: seen.append((d, t)),
    )
    # 4 row groups of 250 rows, each read as 64 + 64 + 64 + 58: never more than a batch at a time
    assert result.batches == 16
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}) and seen[-1] == (1000, 1000)
    assert {d - p for (d, _), (p, _) in zip(seen[1:], seen, strict=False)} <= {64, 58}
    # the time is split: set-up (session, first-batch check) and scoring; the rate counts scoring only
    assert result.score_seconds > 0 and result.setup_seconds > 0
    assert result.setup_seconds + result.score_seconds == pytest.approx(result.seconds)
    assert result.rows_per_second == pytest.approx(1000 / result.score_seconds)


def test_rows_per_second_of_a_result_without_the_split_counts_the_whole_time(tmp_path: Path) -> None:
    result = ox.ScoreResult(tmp_path / "p.parquet", "local", 100, 1, 2.0, ("y",))
    assert result.setup_seconds == result.score_seconds == 0.0 and result.rows_per_second == 50.0
    split = ox.ScoreResult(tmp_path / "p.parquet", "local", 100, 1, 2.0, ("y",), 1.5, 0.5)
    assert split.rows_per_second == 200.0


def test_numpy_folders(model: onnx.ModelProto, tmp_path: Path) -> None:
    data = make_data(300)
    expected = _expected(model, data)
    npy = tmp_path / "npy"
    npy.mkdir()
    for name, array in data.items():
        np.save(npy / f"{name}.npy", array)
    ox.score(model, npy, output=tmp_path / "a.parquet", batch_size=128)
    _check(tmp_path / "a.parquet", data, expected)
    npz = tmp_path / "npz"
    npz.mkdir()
    for i, start in enumerate(range(0, 300, 120)):
        np.savez(npz / f"chunk-{i}.npz", **{k: v[start : start + 120] for k, v in data.items()})
    ox.score(model, npz, output=tmp_path / "b.parquet", batch_size=50)
    _check(tmp_path / "b.parquet", data, expected)


def test_column_map_and_keep(model: onnx.ModelProto, tmp_path: Path) -> None:
    data = make_data(50)
    table = table_of(data).rename_columns(["id", "features", "pixels", "k"])
    table = table.append_column("note", pa.array([f"row{i}" for i in range(50)]))
    pq.write_table(table, tmp_path / "d.parquet")
    expected = _expected(model, data)
    ox.score(
        model,
        tmp_path / "d.parquet",
        output=tmp_path / "p.parquet",
        columns={"features": "x", "pixels": "img"},
        keep=["id"],
    )
    _check(tmp_path / "p.parquet", data, expected)
    ox.score(
        model,
        tmp_path / "d.parquet",
        output=tmp_path / "q.parquet",
        columns={"features": "x", "pixels": "img"},
        keep=[],
    )
    _check(tmp_path / "q.parquet", data, expected, ids=False)
    every = ox.score(
        model,
        tmp_path / "d.parquet",
        output=tmp_path / "r.parquet",
        columns={"features": "x", "pixels": "img"},
    )
    assert every.columns[:2] == ("id", "note")  # default: every column that feeds no input


def _bad(table: Any, tmp_path: Path, model: onnx.ModelProto, **kw: Any) -> DatasetError:
    pq.write_table(table, tmp_path / "bad.parquet", row_group_size=40)
    with pytest.raises(DatasetError) as info:
        ox.score(model, tmp_path / "bad.parquet", output=tmp_path / "p.parquet", batch_size=16, **kw)
    _no_leftovers(tmp_path, allowed={"bad.parquet"})
    return info.value


def test_missing_column(model: onnx.ModelProto, tmp_path: Path) -> None:
    err = _bad(table_of(make_data(20)).drop_columns(["img"]), tmp_path, model)
    assert err.column == "img" and err.file and err.file.endswith("bad.parquet")
    assert "input 'img': no column 'img'" in str(err) and "--map" in str(err)


def test_mistyped_columns(model: onnx.ModelProto, tmp_path: Path) -> None:
    data = make_data(20)
    table = table_of(data).set_column(1, "x", pa.array([f"s{i}" for i in range(20)]))
    err = _bad(table, tmp_path, model)
    assert err.column == "x" and "holds no numbers" in str(err)
    wide = scoredata.fixed_list(data["x"].astype(np.float64))  # float64 -> float32 would lose precision
    err = _bad(table_of(data).set_column(1, "x", wide), tmp_path, model)
    assert err.column == "x" and "do not cast safely to float32" in str(err)


def test_wrong_inner_shape(model: onnx.ModelProto, tmp_path: Path) -> None:
    data = make_data(20)
    table = table_of(data).set_column(1, "x", scoredata.fixed_list(np.zeros((20, 4), np.float32)))
    err = _bad(table, tmp_path, model)
    assert err.column == "x" and "wrong inner shape: dim 1 is 4, the model wants 3" in str(err)
    table = table_of(data).set_column(2, "img", scoredata.fixed_list(np.zeros((20, 3, 5, 4), np.float32)))
    err = _bad(table, tmp_path, model)
    assert err.column == "img" and "dim 2 is 5, the model wants 4" in str(err)


def test_bad_row_in_a_later_row_group_names_its_id(model: onnx.ModelProto, tmp_path: Path) -> None:
    data = make_data(100)
    flat = list(data["img"].reshape(100, -1))
    flat[93] = flat[93][:40]  # row group 2 (rows 80-99), past the first batch that is checked up front
    table = table_of(data).set_column(2, "img", pa.array(flat, type=pa.list_(pa.float32())))
    err = _bad(table, tmp_path, model)
    assert err.row_group == 2 and err.column == "img"
    assert err.row == "id=937 (row 93 of " + str(tmp_path / "bad.parquet") + ", row group 2)"
    assert "40 values in a list instead of 48" in str(err)


def test_null_row(model: onnx.ModelProto, tmp_path: Path) -> None:
    data = make_data(20)
    k = pa.array([None if i == 5 else int(v) for i, v in enumerate(data["k"])], type=pa.int64())
    err = _bad(table_of(data).set_column(3, "k", k), tmp_path, model)
    assert (
        err.column == "k"
        and err.row is not None
        and err.row.startswith("id=57 ")
        and "a null value" in str(err)
    )


def test_not_parquet(model: onnx.ModelProto, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("id,x\n1,2\n")
    with pytest.raises(DatasetError, match=r"data.csv is not a Parquet file \(it looks like text") as info:
        ox.score(model, tmp_path / "data.csv", output=tmp_path / "p.parquet")
    assert info.value.file == str(tmp_path / "data.csv")
    _no_leftovers(tmp_path, allowed={"data.csv"})


def test_model_failing_on_a_row_names_its_id(lookup_model: onnx.ModelProto, tmp_path: Path) -> None:
    idx = np.arange(60) % 5
    idx[47] = 9  # out of the table's bounds
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(60)], "idx": idx}), tmp_path / "d.parquet")
    with pytest.raises(DatasetError) as info:
        ox.score(lookup_model, tmp_path / "d.parquet", output=tmp_path / "p.parquet", batch_size=16)
    assert info.value.row is not None and info.value.row.startswith("key='k47' (row 47 of")
    assert "the model fails on key='k47'" in str(info.value)
    _no_leftovers(tmp_path, allowed={"d.parquet"})


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_run_leaves_no_output(model: onnx.ModelProto, tmp_path: Path, interrupt: type) -> None:
    pq.write_table(table_of(make_data(500)), tmp_path / "d.parquet", row_group_size=100)
    (tmp_path / "p.parquet").write_bytes(b"the previous results")

    def stop(done: int, total: int) -> None:
        if done >= 200:
            raise interrupt("stop")

    with pytest.raises(interrupt):
        ox.score(model, tmp_path / "d.parquet", output=tmp_path / "p.parquet", batch_size=50, progress=stop)
    _no_leftovers(tmp_path, allowed={"d.parquet", "p.parquet"})
    assert (tmp_path / "p.parquet").read_bytes() == b"the previous results"  # untouched


def test_bad_options(model: onnx.ModelProto, tmp_path: Path) -> None:
    pq.write_table(table_of(make_data(5)), tmp_path / "d.parquet")
    with pytest.raises(ox.StitchError, match="unknown engine 'spark'"):
        ox.score(model, tmp_path / "d.parquet", output=tmp_path / "p.parquet", engine="spark")
    with pytest.raises(DatasetError, match="is a folder"):
        ox.score(model, tmp_path / "d.parquet", output=tmp_path)
    with pytest.raises(DatasetError, match=r"output folder .* does not exist"):
        ox.score(model, tmp_path / "d.parquet", output=tmp_path / "nowhere" / "p.parquet")
    with pytest.raises(DatasetError, match=r"--map x=nope: the model has no input 'nope'"):
        ox.score(model, tmp_path / "d.parquet", output=tmp_path / "p.parquet", columns={"x": "nope"})


def test_cli_round_trip(model: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    onnx.save(model, "m.onnx")
    data = make_data(120)
    pq.write_table(table_of(data).rename_columns(["id", "features", "img", "k"]), "d.parquet")
    result = runner.invoke(
        app,
        [
            "score",
            "m.onnx",
            "--input",
            "d.parquet",
            "--output",
            "p.parquet",
            "--map",
            "features=x",
            "--batch-size",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    # the rate is the scoring's; the set-up (opening the session, checking the first batch) apart
    assert re.search(
        r"scored 120 rows in \d+\.\d\d s \(setup \d+\.\d\d s; [\d,]+ rows/s scoring, local\) -> p\.parquet",
        result.output,
    ), result.output
    _check(tmp_path / "p.parquet", data, _expected(model, data))
    result = runner.invoke(
        app, ["score", "m.onnx", "-i", "d.parquet", "-o", "j.parquet", "--map", "features=x", "--json"]
    )
    summary = json.loads(result.output)
    assert summary["rows"] == 120 and summary["score_seconds"] > 0 and summary["setup_seconds"] > 0
    assert summary["setup_seconds"] + summary["score_seconds"] == pytest.approx(summary["seconds"])
    assert summary["rows_per_second"] == pytest.approx(120 / summary["score_seconds"])
    result = runner.invoke(app, ["score", "m.onnx", "-i", "m.onnx", "-o", "q.parquet"])
    assert result.exit_code == 1 and "error: m.onnx is not a Parquet file" in result.output
    assert "Traceback" not in result.output and not Path("q.parquet").exists()
    result = runner.invoke(
        app, ["score", "m.onnx", "-i", "d.parquet", "-o", "q.parquet", "--map", "features"]
    )
    assert result.exit_code == 1 and "expected column=input" in result.output


def test_batches_coming_back_out_of_order_are_put_back_in_source_order() -> None:
    # the Ray engine's driver side (no Ray needed): rows tagged with their index in the source
    from onnxstitch.runtime.scoring._ray import ROW, _InOrder

    def rows(a: int, b: int) -> Any:
        return pa.table({"v": np.arange(a, b) * 2, ROW: np.arange(a, b)})

    order = _InOrder()
    arrivals = [
        rows(5, 9),
        rows(9, 12).take([2, 0, 1]),
        pa.concat_tables([rows(14, 16), rows(12, 14)]),
        rows(0, 5),
    ]
    written = [order.push(batch) for batch in arrivals]
    assert [len(w) for w in written] == [0, 0, 0, 4]  # nothing leaves before row 0 has come
    out = pa.concat_tables([t for w in written for t in w])
    assert out.column_names == ["v"] and out["v"].to_pylist() == list(range(0, 32, 2))
    assert not order.early and order.next == 16
