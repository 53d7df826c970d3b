"""Which TensorFlow ops a graph may hold before we load or run it, and what to say about ops tf2onnx
cannot convert.

The policy is a **deny-list by capability**: an op is refused when it can read or write files, reach
the network, or call back into Python. Why not an allow-list of pure ops: measured on TensorFlow 2.21,
the op registry holds 1,908 ops; every SavedModel also holds the load-time machinery (variable and
table creation and restore, ``StringJoin``, ``ShardedFilename`` ...) and a user's graph holds any of
the ~1,800 ops that touch no file, so an allow-list would refuse sound models for reasons that have
nothing to do with safety and would need a review of every op each release. The capabilities, on the
other hand, show in the registry: 60 of them name an argument or attribute that is a file, folder or
URL (:data:`FILE_ARGUMENT`: ``filename``, ``path``, ``prefix``, ``logdir``, ``debug_urls`` ...); the
test ``test_every_registered_file_op_is_denied_or_reviewed`` walks the registry of the installed
TensorFlow and fails when an op with a file-like argument is neither denied here nor reviewed in
:data:`REVIEWED_NO_FILE_ACCESS`, so a new TensorFlow release cannot open a hole silently.

Checkpoint ops (``SaveV2``, ``RestoreV2``, ``MergeV2Checkpoints``) are in every SavedModel's save and
restore functions, which loading does not run (TensorFlow 2 restores variables from Python); they are
allowed there only, see :func:`scan_saved_model`.

TensorFlow is imported lazily.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from onnxstitch.errors import ModelFileError

__all__ = [
    "CHECKPOINT_OPS",
    "FILE_ARGUMENT",
    "REVIEWED_NO_FILE_ACCESS",
    "UNSAFE_FAMILIES",
    "UNSAFE_TF_OPS",
    "scan_graph_def",
    "scan_saved_model",
    "unsupported_op_hint",
]

# queue readers that open the files named by their work queue
_READERS = ("WholeFileReader", "TextLineReader", "FixedLengthRecordReader", "TFRecordReader")

UNSAFE_FAMILIES: Mapping[str, frozenset[str]] = {
    "reads files": frozenset(
        {
            "ReadFile",
            "MatchingFiles",
            "ImmutableConst",  # memory-maps a file named by an attribute
            "Skipgram",
            "FixedUnigramCandidateSampler",  # vocab_file
            "LoadAndRemapMatrix",
            "GenerateVocabRemapping",
            "RecordInput",
            "DTensorRestoreV2",
            "Restore",
            "RestoreSlice",
            "RestoreV2",
            "ImportEvent",
            "LMDBReader",
            *_READERS,
            *(f"{r}V2" for r in _READERS),
        }
    ),
    "reads files at load (table initializers)": frozenset(
        {"InitializeTableFromTextFile", "InitializeTableFromTextFileV2"}
    ),
    "writes or deletes files": frozenset(
        {
            "WriteFile",
            "Save",
            "SaveSlices",
            "SaveV2",
            "MergeV2Checkpoints",  # deletes the merged shards and, with delete_old_dirs, folders
            "DumpTensor",
            "CalibrationStatisticsSaver",
            "PrintV2",  # only with output_stream "file://<path>" (tf.print to stderr is allowed)
            "DebugIdentity",  # debug_urls may be "file://<dir>"
            "DebugIdentityV2",
            "DebugIdentityV3",
            "DebugNanCount",
            "DebugNumericSummary",
            "FileSystemSetConfiguration",
        }
    ),
    "summary writers (write event files or databases)": frozenset(
        {
            "CreateSummaryFileWriter",
            "CreateSummaryDbWriter",
            "SummaryWriter",
            "WriteSummary",
            "WriteScalarSummary",
            "WriteHistogramSummary",
            "WriteImageSummary",
            "WriteAudioSummary",
            "WriteGraphSummary",
            "WriteRawProtoSummary",
            "FlushSummaryWriter",
            "CloseSummaryWriter",
            "StatsAggregatorSetSummaryWriter",
        }
    ),
    "datasets that read or write files or databases": frozenset(
        {
            "TextLineDataset",
            "TFRecordDataset",
            "TFRecordDatasetV2",
            "FixedLengthRecordDataset",
            "FixedLengthRecordDatasetV2",
            "CSVDataset",
            "CSVDatasetV2",
            "ExperimentalCSVDataset",
            "LMDBDataset",
            "ExperimentalLMDBDataset",
            "SqlDataset",
            "ExperimentalSqlDataset",
            "MatchingFilesDataset",
            "ExperimentalMatchingFilesDataset",
            "LoadDataset",
            "SaveDataset",
            "SaveDatasetV2",
            "DistributedSave",
            "DatasetToTFRecord",
            "ExperimentalDatasetToTFRecord",
            "CacheDataset",
            "CacheDatasetV2",
            "SnapshotDataset",
            "SnapshotDatasetV2",
            "SnapshotDatasetReader",
            "SnapshotNestedDatasetReader",
            "SnapshotChunkDataset",
            "ListSnapshotChunksDataset",
        }
    ),
    "network": frozenset(
        {
            "RpcServer",
            "RpcServerRegister",
            "RpcServerStart",
            "RpcClient",
            "RpcCall",
            "DataServiceDataset",
            "DataServiceDatasetV2",
            "DataServiceDatasetV3",
            "DataServiceDatasetV4",
            "RegisterDataset",
            "RegisterDatasetV2",
        }
    ),
    "calls Python": frozenset(
        {
            "PyFunc",
            "PyFuncStateless",
            "EagerPyFunc",
            "XlaCallModule",  # a serialized module whose host callbacks call into Python (jax2tf)
        }
    ),
}

UNSAFE_TF_OPS: frozenset[str] = frozenset().union(*UNSAFE_FAMILIES.values())

# Ops of every SavedModel's save/restore functions (never run by loading): allowed only there.
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "Save", "SaveSlices", "Restore"})

# An op argument or attribute whose name says it is a file, folder, path or URL (registry audit).
FILE_ARGUMENT = re.compile(
    r"^(file(name)?s?|file_pattern|patterns?|path|prefix(es)?|checkpoint_prefixes|destination_prefix|"
    r"directory|dir|logdir|log_dir_path|db_uri|data_source_name|output_stream|memory_region_name|"
    r"[a-z_]*_(file|path|dir|url|urls)|debug_urls|.*_path_prefix|chunk_file|shard_dir)$"
)

# Registered ops whose argument names look like a file but that open none (reviewed by hand).
REVIEWED_NO_FILE_ACCESS: Mapping[str, str] = {
    "ShardedFilename": "formats a string",
    "ShardedFilespec": "formats a string",
    "RegexFullMatch": "regular expression on strings",
    "RegexReplace": "regular expression on strings",
    "StaticRegexFullMatch": "regular expression on strings",
    "StaticRegexReplace": "regular expression on strings",
    "TensorSliceDataset": "is_files only tags in-memory strings as file names for tracking",
    "SetStatsAggregatorDataset": "counter_prefix names statistics",
    "ExperimentalSetStatsAggregatorDataset": "counter_prefix names statistics",
}


def op_family(op: str) -> str | None:
    """The capability family ``op`` is denied for, or ``None`` for an op that is not denied."""
    for family, ops in UNSAFE_FAMILIES.items():
        if op in ops:
            return family
    return None


# ---------------------------------------------------------------------------------------- scanning
def _called(attrs: Mapping[str, Any]) -> set[str]:
    """Names of the functions a node calls (``f``, ``then_branch``, ``body``, ``branches`` ...)."""
    out: set[str] = set()
    for value in attrs.values():
        if value.HasField("func") and value.func.name:
            out.add(value.func.name)
        out.update(f.name for f in value.list.func)
    return out


def _closure(roots: Iterable[str], calls: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(calls.get(name, ()))
    return seen


def scan_graph_def(graph_def: Any, *, saver_nodes: Iterable[str] = ()) -> dict[str, list[str]]:
    """``{op: [where]}`` of denied ops in a ``GraphDef`` and every function of its library.

    ``saver_nodes`` name the top-level nodes of the save/restore machinery (a SavedModel's
    ``saver_def``): the functions reachable **only** from them may hold :data:`CHECKPOINT_OPS`.
    """
    calls = {
        f.signature.name: set().union(*(_called(n.attr) for n in f.node_def))
        for f in graph_def.library.function
    }
    saver = set(saver_nodes)
    saver_roots = set().union(*(_called(n.attr) for n in graph_def.node if n.name in saver))
    other_roots = set().union(*(_called(n.attr) for n in graph_def.node if n.name not in saver))
    saver_fns = _closure(saver_roots, calls)
    other_roots |= set(calls) - saver_fns  # a function nothing calls may still be called: scanned fully
    checkpoint_only = saver_fns - _closure(other_roots, calls)
    found: dict[str, list[str]] = {}

    def check(node: Any, where: str, exempt: bool) -> None:
        if _denied(node) and not (exempt and node.op in CHECKPOINT_OPS):
            found.setdefault(node.op, []).append(where)

    for node in graph_def.node:
        check(node, f"graph/{node.name}", exempt=False)
    for function in graph_def.library.function:
        name = function.signature.name
        for node in function.node_def:
            check(node, f"{name}/{node.name}", exempt=name in checkpoint_only)
    return found


def _denied(node: Any) -> bool:
    """Whether a ``NodeDef`` is denied; ``tf.print`` to stderr/stdout/a log (its default) is not."""
    if node.op not in UNSAFE_TF_OPS:
        return False
    if node.op == "PrintV2" and "output_stream" in node.attr:
        stream: bytes = node.attr["output_stream"].s
        return stream.startswith(b"file://")
    return True


def scan_saved_model(path: Path) -> dict[str, list[str]]:
    """``{op: [function/node]}`` of denied ops in a SavedModel, read without loading it.

    Checkpoint ops are allowed in the functions reachable only from the ``saver_def``'s save and
    restore nodes; anywhere else (a serving function, a resource initializer run at load) they are
    reported like every other denied op.

    Raises:
        ModelFileError: ``saved_model.pb`` is not a readable SavedModel protobuf.
    """
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        binary = path / "saved_model.pb"
        if binary.is_file():
            proto.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse((path / "saved_model.pbtxt").read_text(), proto)
    except (OSError, UnicodeDecodeError, message.DecodeError, text_format.ParseError) as exc:
        raise ModelFileError(f"SavedModel {str(path)!r}: saved_model.pb is not readable: {exc}") from exc
    found: dict[str, list[str]] = {}
    for meta in proto.meta_graphs:
        saver = {
            meta.saver_def.save_tensor_name.lstrip("^").split(":")[0],
            meta.saver_def.restore_op_name.lstrip("^").split(":")[0],
        } - {""}
        if any(n.name in saver and not _called(n.attr) for n in meta.graph_def.node):
            saver = set()  # a TF1 saver (plain nodes, run at load): no exemption
        for op, where in scan_graph_def(meta.graph_def, saver_nodes=saver).items():
            found.setdefault(op, []).extend(where)
    return found


# ---------------------------------------------------------------------------------- unsupported ops
def unsupported_op_hint(ops: Iterable[str], *, opset: int, max_opset: int) -> str:
    """A fix that fits the ops tf2onnx could not convert: preprocessing for files, strings and lookup
    tables, inlining for function calls, another opset or a handler for math."""
    names = sorted({op.split("::")[-1] for op in ops})
    files = [op for op in names if op_family(op) is not None]
    tables = [op for op in names if op not in files and ("Table" in op or "Lookup" in op)]
    strings = [op for op in names if op not in files + tables and _handles_strings(op)]
    calls = [op for op in names if op in ("PartitionedCall", "StatefulPartitionedCall")]
    math = [op for op in names if op not in files + tables + strings + calls]
    parts = []
    if files:
        parts.append(f"{', '.join(files)} {op_family(files[0])}: do that work outside the model")
    if strings:
        parts.append(
            f"{', '.join(strings)} handle strings: move that work into preprocessing and feed the model "
            "numbers"
        )
    if tables:
        parts.append(
            f"{', '.join(tables)}: tf2onnx converts only string-to-integer lookup tables (StringLookup); "
            "do other lookups in preprocessing"
        )
    if calls:
        parts.append(
            f"{', '.join(calls)}: a nested tf.function TensorFlow would not inline; call its ops directly"
        )
    if math:
        newer = f"try opset={max_opset} (this conversion used {opset}), or " if opset < max_opset else ""
        parts.append(
            f"{', '.join(math)}: tf2onnx has no handler for these at opset {opset}: {newer}pass "
            "op_handlers={op: handler} (tf2onnx custom op handlers), or rewrite them with supported ops"
        )
    return "; ".join(parts)


def _handles_strings(op: str) -> bool:
    """Whether the registered op takes or returns strings (a ``DT_STRING`` argument)."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(op)
    if op_def is None:
        return False
    string = 7  # types_pb2.DT_STRING
    return any(a.type == string for a in [*op_def.input_arg, *op_def.output_arg])
