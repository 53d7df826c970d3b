"""Offline scoring: run a model over a dataset, streamed on one machine or on a Ray cluster.

``ox.score(model, "data.parquet", output="preds.parquet")`` reads the source in batches (never the
whole table), runs one :class:`~onnxstitch.runtime.session.Session` over them and writes one Parquet
file: the source's id columns, then one column per model output, rows in the source's order.
``engine="ray"`` runs the same batches in Ray Data actors (one session per actor); their outputs
come back to this process in the source's order and are written to the same one file.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxstitch.errors import DatasetError, MissingDependencyError, StitchError
from onnxstitch.runtime.scoring._arrow import Plan, Where, make_plan, outputs_table
from onnxstitch.runtime.scoring._sources import Source, open_source

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import pyarrow as pa

__all__ = ["ScoreResult", "score", "score_batch"]

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
DEFAULT_BATCH_SIZE = 1024


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring run did.

    The time is split in two, so that a small input does not show a rate that is mostly set-up:
    ``seconds = setup_seconds + score_seconds``.

    Attributes:
        output: the Parquet file written.
        engine: ``"local"`` or ``"ray"``.
        rows: rows scored.
        batches: model runs (local engine; Ray's batches are counted by its actors, so ``None``).
        seconds: wall time of the whole call, from opening the source to the renamed output.
        columns: the output's columns (kept ones first, then the model's outputs).
        setup_seconds: the part of ``seconds`` that is not scoring: opening the source and the
            session, checking the first batch, starting (and stopping) a local Ray.
        score_seconds: the part of ``seconds`` spent scoring: reading, running and writing every
            batch (Ray: from handing the dataset to Ray to the last row written, the actors' start
            included).
    """

    output: Path
    engine: str
    rows: int
    batches: int | None
    seconds: float
    columns: tuple[str, ...]
    setup_seconds: float = 0.0
    score_seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        """Rows scored per second of scoring time (``score_seconds``; set-up excluded). A result
        made without ``score_seconds`` counts the whole ``seconds``."""
        seconds = self.score_seconds or self.seconds
        return self.rows / seconds if seconds > 0 else 0.0


def score_batch(session: Any, plan: Plan, table: pa.Table, where: Where) -> pa.Table:
    """Score one batch: feeds from ``table``, one model run, the output batch.

    A run that fails is retried row by row to name the first row that fails.

    Raises:
        DatasetError: a row's data does not fit, or the model fails on a row (named by its id).
    """
    feeds = plan.feeds_of(table, where)
    try:
        outputs = session.run(feeds)
    except DatasetError:
        raise
    except StitchError as exc:
        for i in range(table.num_rows):
            try:
                session.run({k: v[i : i + 1] for k, v in feeds.items()})
            except StitchError as row_exc:
                row = plan.row_id(table, i, where)
                raise DatasetError(
                    f"the model fails on {row}: {row_exc}",
                    file=where.file,
                    row_group=where.row_group,
                    row=row,
                ) from row_exc
        raise DatasetError(
            f"the model fails on a batch of {where} (each row alone runs): {exc}", file=where.file
        ) from exc
    return outputs_table(plan, table, outputs)


def _check_output(output: Path) -> None:
    if not output.parent.is_dir():
        raise DatasetError(
            f"output folder {str(output.parent)!r} does not exist",
            hint=f"create it first: mkdir -p {output.parent}",
        )
    if output.is_dir():
        raise DatasetError(
            f"--output {str(output)!r} is a folder; score writes one Parquet file",
            hint=f"name the file, e.g. {output / 'preds.parquet'}",
        )


def _prepare(
    session: Any,
    source: Source,
    *,
    columns: Mapping[str, str] | None,
    keep: Sequence[str] | None,
    batch_size: int,
) -> tuple[Plan, pa.Table]:
    """Plan the feeds and check the first batch end to end (nothing is written yet)."""
    plan = make_plan(
        session.inputs,
        session.output_names,
        source.schema,
        file=str(source.files[0]),
        columns=columns,
        keep=keep,
    )
    table, where = source.first_batch(plan.columns, batch_size)
    first = score_batch(session, plan, table, where)
    return plan, first


def _temporary(output: Path) -> Path:
    return output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.partial")


def _run_local(
    session: Any,
    plan: Plan,
    source: Source,
    output: Path,
    batch_size: int,
    empty: pa.Table,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    import pyarrow.parquet as pq

    tmp = _temporary(output)
    writer = None
    rows = batches = 0
    try:
        for table, where in source.batches(plan.columns, batch_size):
            out = score_batch(session, plan, table, where)
            if writer is None:
                writer = pq.ParquetWriter(tmp, out.schema)
            elif not out.schema.equals(writer.schema):
                raise DatasetError(
                    f"{where}: the outputs' types changed from the first batch's:\n  first: "
                    f"{writer.schema}\n  here: {out.schema}",
                    file=where.file,
                    row_group=where.row_group,
                    hint="score writes fixed-size columns: pad the inputs to one shape",
                )
            writer.write_table(out)
            rows += out.num_rows
            batches += 1
            if progress is not None:
                progress(rows, source.num_rows)
        if writer is None:  # a source with no rows: an empty file with the output's columns
            writer = pq.ParquetWriter(tmp, empty.schema)
        writer.close()
        tmp.replace(output)
    except BaseException:  # KeyboardInterrupt too: an interrupted run leaves no file behind
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return rows, batches


def score(
    model: onnx.ModelProto | str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str],
    engine: str = "local",
    batch_size: int = DEFAULT_BATCH_SIZE,
    columns: Mapping[str, str] | None = None,
    keep: Sequence[str] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    address: str | None = None,
    actors: int = 1,
    num_cpus: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Score every row of ``source`` with ``model`` and write the outputs as Parquet.

    The source is a Parquet file or folder (one column per model input; tensors as fixed-size
    lists, flat or nested, lists of one length, or ``fixed_shape_tensor`` columns, reshaped to the
    input's dims), or a folder of ``.npy`` files (one per column, memory-mapped) or of ``.npz``
    files (each a chunk of rows). The output has the kept columns, then one column per model output
    (a plain column for ``[batch]``, a fixed-size list for ``[batch, d]``, a ``fixed_shape_tensor``
    above), in the source's row order. The schema and the first batch are checked, and run, before
    anything is written; the output appears only when every row is scored (written to a temporary
    name in the same folder, then renamed): an error or Ctrl-C leaves no output behind.

    Args:
        model: an ``onnx.ModelProto`` or the path of an ``.onnx`` file.
        source: a Parquet file or folder, or a folder of ``.npy`` / ``.npz`` files.
        output: the Parquet file to write (both engines). An existing file is replaced only once
            the new one is complete.
        engine: ``"local"`` (stream through one session in this process) or ``"ray"``.
        batch_size: rows per model run.
        columns: source column -> model input, for columns not named after the input they feed.
        keep: columns carried to the output (default: every column that feeds no input; ``[]``: none).
        device: the sessions' device (``"cpu"``, ``"cuda"``, ``"auto"``...).
        threads: intra-op threads per session (default: onnxruntime's, one per core; Ray: the
            CPUs each actor reserves).
        address: Ray only: the cluster to join (``"auto"``, ``"ray://host:10001"``...); default: start
            a local Ray for this call (listening on 127.0.0.1 only) and shut it down afterwards.
            Ignored when Ray is already initialised in this process (that Ray is used as it is).
        actors: Ray only: the number of actors, each with one session.
        num_cpus: Ray only, local Ray: the CPUs it may use (default: all).
        progress: local engine: called as ``progress(rows_done, rows_total)`` after each batch.

    Returns:
        A :class:`ScoreResult`: rows, output columns, and the time split into set-up and scoring
        (``rows_per_second`` counts the scoring only).

    Raises:
        DatasetError: the source cannot feed the model (missing or mistyped column, wrong inner
            shape, a file that is not Parquet / NumPy), a row fails (named by its id), or the output
            path is unusable. Checked before anything is written, except for rows past the first batch.
        MissingDependencyError: pyarrow (or, for ``engine="ray"``, ray) is not installed.
        StitchError: a bad option; the model cannot be loaded.
    """
    if engine not in ENGINES:
        raise StitchError(f"unknown engine {engine!r}", hint=f"use one of {', '.join(ENGINES)}")
    if batch_size < 1:
        raise StitchError(f"batch_size must be a positive number, got {batch_size}")
    if actors < 1:
        raise StitchError(f"actors must be a positive number, got {actors}")
    _require("pyarrow", extra="score", purpose="ox.score")
    started = time.perf_counter()
    out = Path(output)
    _check_output(out)
    src = open_source(source)
    from onnxstitch.runtime.session import Session

    session = Session(model, device=device, threads=threads)
    plan, first = _prepare(session, src, columns=columns, keep=keep, batch_size=batch_size)
    if engine == "ray":
        _require("ray", extra="ray", purpose="ox.score(engine='ray')")
        from onnxstitch.runtime.scoring._ray import run_ray

        del session  # the actors open their own
        rows, score_seconds = run_ray(
            model, plan, src, out, first.slice(0, 0), batch_size=batch_size, device=device, threads=threads,
            address=address, actors=actors, num_cpus=num_cpus,
        )  # fmt: skip
        batches = None
    else:
        scoring = time.perf_counter()
        rows, batches = _run_local(session, plan, src, out, batch_size, first.slice(0, 0), progress)
        score_seconds = time.perf_counter() - scoring
    seconds = time.perf_counter() - started
    setup_seconds = max(seconds - score_seconds, 0.0)
    logger.info(
        "scored %d rows in %.2f s (set-up %.2f s, scoring %.2f s; %s engine) -> %s",
        rows, seconds, setup_seconds, score_seconds, engine, out,
    )  # fmt: skip
    return ScoreResult(
        out, engine, rows, batches, seconds, tuple(first.schema.names), setup_seconds, score_seconds
    )


def _require(module: str, *, extra: str, purpose: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(module, extra=extra, purpose=purpose)
