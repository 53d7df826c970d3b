"""The TensorFlow op policy: a deny-list by capability, audited against the installed op registry,
one test per family, and SavedModels refused before TensorFlow loads them.

Without TensorFlow these tests skip, and fail in CI (``ONNXSTITCH_REQUIRE_FRAMEWORKS``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from onnxstitch.converters import from_keras
from onnxstitch.converters._tf_ops import (
    FILE_ARGUMENT,
    REVIEWED_NO_FILE_ACCESS,
    UNSAFE_FAMILIES,
    UNSAFE_TF_OPS,
    op_family,
    scan_graph_def,
    scan_saved_model,
)
from onnxstitch.errors import UnsafeModelError

tf = pytest.importorskip("tensorflow")

SPEC = tf.TensorSpec((None, 2), tf.float32, name="x")


def registry() -> dict[str, Any]:
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    ops = op_def_pb2.OpList()
    ops.ParseFromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList()))
    return {op.name: op for op in ops.op}


def test_every_registered_file_op_is_denied_or_reviewed() -> None:
    """A TensorFlow release that adds an op with a file/path/URL argument fails here until reviewed."""
    ops = registry()
    assert len(ops) > 1000
    flagged = {
        name: [a.name for a in [*op.input_arg, *op.attr] if FILE_ARGUMENT.match(a.name)]
        for name, op in ops.items()
    }
    flagged = {name: args for name, args in flagged.items() if args}
    assert len(flagged) >= 50  # the audit looks at something: 60 ops on TensorFlow 2.21
    unreviewed = {
        n: a for n, a in flagged.items() if n not in UNSAFE_TF_OPS and n not in REVIEWED_NO_FILE_ACCESS
    }
    assert unreviewed == {}
    assert {"InitializeTableFromTextFileV2", "SaveV2", "MergeV2Checkpoints", "CSVDatasetV2"} <= set(flagged)


def test_every_denied_op_exists() -> None:
    assert sorted(UNSAFE_TF_OPS - set(registry())) == []


def traced_graph(fn: Callable[..., Any], *specs: Any) -> Any:
    return tf.function(fn).get_concrete_function(*specs).graph.as_graph_def()


def _csv(folder: str) -> Any:
    data = tf.data.experimental.CsvDataset([folder + "/a.csv"], record_defaults=[tf.float32])
    return data.reduce(0.0, lambda s, v: s + v)


def _sql(folder: str) -> Any:
    data = tf.data.experimental.SqlDataset("sqlite", folder + "/db", "SELECT a FROM t", (tf.string,))
    return data.reduce(0, lambda s, v: s + 1)


def _load(folder: str) -> Any:
    spec = tf.TensorSpec((), tf.float32)
    return tf.data.Dataset.load(folder + "/ds", element_spec=spec).reduce(0.0, lambda s, v: s + v)


def _text_table(folder: str) -> Any:
    init = tf.lookup.TextFileInitializer(
        folder + "/vocab.txt",
        tf.string,
        tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER,
    )
    return tf.lookup.StaticHashTable(init, -1).lookup(tf.constant("a"))


def _data_service(folder: str) -> Any:
    service = tf.data.experimental.service.distribute(
        processing_mode="parallel_epochs", service="grpc://localhost:5000"
    )
    return tf.data.Dataset.range(3).apply(service).reduce(tf.constant(0, tf.int64), lambda s, v: s + v)


FAMILY_CASES: dict[str, tuple[Callable[[str], Any], str]] = {
    "ReadFile": (lambda d: tf.io.read_file(d + "/secret"), "reads files"),
    "MatchingFiles": (lambda d: tf.io.matching_files(d + "/*"), "reads files"),
    "InitializeTableFromTextFileV2": (_text_table, "reads files at load (table initializers)"),
    "WriteFile": (lambda d: tf.io.write_file(d + "/out", "x"), "writes or deletes files"),
    "SaveV2": (
        lambda d: tf.raw_ops.SaveV2(
            prefix=d + "/ck", tensor_names=["a"], shape_and_slices=[""], tensors=[tf.constant(1.0)]
        ),
        "writes or deletes files",
    ),
    "MergeV2Checkpoints": (
        lambda d: tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[d + "/a"], destination_prefix=d + "/b"),
        "writes or deletes files",
    ),
    "PrintV2": (lambda d: tf.print("x", output_stream="file://" + d + "/log"), "writes or deletes files"),
    "CreateSummaryFileWriter": (
        lambda d: tf.raw_ops.CreateSummaryFileWriter(
            writer=tf.raw_ops.SummaryWriter(), logdir=d, max_queue=1, flush_millis=1, filename_suffix=""
        ),
        "summary writers (write event files or databases)",
    ),
    "CSVDatasetV2": (_csv, "datasets that read or write files or databases"),
    "SqlDataset": (_sql, "datasets that read or write files or databases"),
    "LoadDataset": (_load, "datasets that read or write files or databases"),
    "EagerPyFunc": (lambda d: tf.py_function(lambda: 1.0, [], tf.float32), "calls Python"),
    "DataServiceDatasetV4": (_data_service, "network"),
}


@pytest.mark.filterwarnings("ignore:To make it possible to preserve tf.data options")  # data service
@pytest.mark.parametrize("op", sorted(FAMILY_CASES))
def test_each_family_is_found_in_a_traced_graph(op: str, tmp_path: Path) -> None:
    build, family = FAMILY_CASES[op]

    def fn() -> Any:
        build(str(tmp_path))  # stateful ops stay in the graph through automatic control dependencies
        return tf.constant(0.0)

    found = scan_graph_def(traced_graph(fn))
    assert op in found, sorted(found)
    assert op_family(op) == family
    assert list(tmp_path.iterdir()) == []  # tracing ran nothing


def test_save_dataset_found(tmp_path: Path) -> None:
    def save() -> Any:
        tf.data.Dataset.range(3).save(str(tmp_path / "ds"))
        return tf.constant(0)

    assert {"SaveDatasetV2", "SaveDataset"} & set(scan_graph_def(traced_graph(save)))


def test_every_family_has_a_case() -> None:
    covered = {family for _, family in FAMILY_CASES.values()}
    assert covered == set(UNSAFE_FAMILIES)


def test_print_to_stderr_is_allowed() -> None:
    def log(x: Any) -> Any:
        tf.print("x is", x)
        return x + 1.0

    assert scan_graph_def(traced_graph(log, SPEC)) == {}


def test_pure_graph_passes() -> None:
    assert scan_graph_def(traced_graph(lambda x: tf.nn.relu(x) @ tf.ones((2, 2)), SPEC)) == {}


# ------------------------------------------------------------------------------------ SavedModels
def save(module: tf.Module, folder: Path, fn: Any) -> Path:
    tf.saved_model.save(module, str(folder), signatures={"serving_default": fn})
    return folder


@pytest.fixture(scope="module")
def table_from_file_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel whose lookup table is initialized from a text file when it is loaded."""
    folder = tmp_path_factory.mktemp("table")
    (folder / "vocab.txt").write_text("a\nb\n")

    class Vocab(tf.Module):
        def __init__(self) -> None:
            init = tf.lookup.TextFileInitializer(
                str(folder / "vocab.txt"),
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self.table = tf.lookup.StaticHashTable(init, -1)

        @tf.function(input_signature=[tf.TensorSpec((None,), tf.string, name="words")])
        def serve(self, words: Any) -> Any:
            return {"ids": self.table.lookup(words)}

    module = Vocab()
    return save(module, folder / "saved", module.serve)


@pytest.fixture(scope="module")
def checkpoint_writer_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A SavedModel whose serving function writes a checkpoint and merges (deletes) shards."""
    folder = tmp_path_factory.mktemp("ckpt")
    target = folder / "stolen"

    class Saver(tf.Module):
        @tf.function(input_signature=[SPEC])
        def serve(self, x: Any) -> Any:
            tf.raw_ops.SaveV2(prefix=str(target), tensor_names=["x"], shape_and_slices=[""], tensors=[x])
            tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[str(target)], destination_prefix=str(target))
            return {"y": x + 1.0}

    module = Saver()
    return save(module, folder / "saved", module.serve), target


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("TensorFlow loaded a SavedModel that should have been refused")

    monkeypatch.setattr(tf.saved_model, "load", refuse)


def test_table_from_text_file_refused_before_loading(table_from_file_model: Path, no_loading: None) -> None:
    with pytest.raises(UnsafeModelError) as info:
        from_keras(table_from_file_model)
    assert "InitializeTableFromTextFileV2 (reads files at load" in str(info.value)
    assert "trusted=True" in str(info.value)


def test_trusted_table_from_text_file_loads(table_from_file_model: Path) -> None:
    from_keras(table_from_file_model, trusted=True, validate=False)  # loading reads vocab.txt


def test_checkpoint_ops_outside_the_saver_are_refused(
    checkpoint_writer_model: tuple[Path, Path], no_loading: None
) -> None:
    path, target = checkpoint_writer_model
    found = scan_saved_model(path)
    assert {"SaveV2", "MergeV2Checkpoints"} <= set(found)
    assert all("traced_save" not in where for spots in found.values() for where in spots)
    with pytest.raises(UnsafeModelError, match="SaveV2"):
        from_keras(path)
    assert not list(target.parent.glob("stolen*"))


def test_checkpoint_ops_of_the_saver_itself_are_allowed(tmp_path: Path) -> None:
    """Every SavedModel's own save/restore functions hold SaveV2/RestoreV2/MergeV2Checkpoints."""

    class Plain(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable([[1.0, 2.0], [3.0, 4.0]])

        @tf.function(input_signature=[SPEC])
        def serve(self, x: Any) -> Any:
            return {"y": x @ self.w}

    module = Plain()
    path = save(module, tmp_path / "saved", module.serve)
    proto = (path / "saved_model.pb").read_bytes()
    assert b"SaveV2" in proto and b"MergeV2Checkpoints" in proto and b"RestoreV2" in proto
    assert scan_saved_model(path) == {}
