"""The Ray engine of ``ox.score``: Ray Data reads the row groups -> ``map_batches`` over actors that
each hold one session -> the output batches streamed back to the driver, written to one Parquet file.
Imported only for ``engine="ray"`` (ray is the ``ray`` extra).

Order: the source's row groups are listed in order (file, row group, index of the first row) and
read by Ray tasks that tag each row with its index; the actors carry the tag through; the driver puts
the batches that come back in order (holding only those that arrive early) and writes one file.
Not ``read_parquet`` / ``write_parquet``: with Ray 2.60 neither keeps the source's order, even with
``preserve_order`` (measured: one 1 M-row file read as two tasks came back second half first, and
``write_parquet``'s file names follow its task indices, not the rows).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxstitch.errors import DatasetError, StitchError
from onnxstitch.runtime.scoring._arrow import Plan, Where

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import pyarrow as pa

    from onnxstitch.runtime.scoring._sources import Source

__all__ = ["ScoreActor", "run_ray"]

logger = logging.getLogger(__name__)

_PROTOBUF_LIMIT = 2**31 - 1
ROW = "__onnxstitch_row"  # each row's index in the source, carried through the actors


class ScoreActor:
    """A Ray Data callable class: one session per actor, opened once, then one run per batch.

    Args:
        model: ``[object ref]`` of the serialised model (in a list, so Ray hands the ref over
            unresolved), or the path of the model file (it must be readable on every node).
        plan: which columns feed which inputs, and what to carry through.
        source: the source's name, for messages.
    """

    def __init__(self, model: list[Any] | str, plan: Plan, source: str, device: str, threads: int) -> None:
        import onnx
        import ray

        from onnxstitch.runtime.session import Session

        loaded: onnx.ModelProto | str = (
            model if isinstance(model, str) else onnx.load_from_string(ray.get(model[0]))
        )
        self.session = Session(loaded, device=device, threads=threads)
        self.plan = plan
        self.source = source

    def __call__(self, table: pa.Table) -> pa.Table:
        from onnxstitch.runtime.scoring import score_batch

        out = score_batch(self.session, self.plan, table.drop_columns([ROW]), Where(self.source, None, None))
        return out.append_column(ROW, table.column(ROW))


def read_row_groups(descriptors: pa.Table, columns: list[str]) -> pa.Table:
    """A Ray Data task: read the row groups named in ``descriptors`` (file, row group, index of
    its first row in the source) with their rows' source index in the column ``ROW``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for file, group, first in zip(
        *(descriptors.column(c).to_pylist() for c in ("file", "group", "first")), strict=True
    ):
        table = pq.ParquetFile(file).read_row_group(group, columns=columns)
        tables.append(
            table.append_column(ROW, pa.array(np.arange(first, first + table.num_rows, dtype=np.int64)))
        )
    return pa.concat_tables(tables)


class _InOrder:
    """Puts batches that arrive out of order back in the source's order (by their ``ROW`` index),
    holding only those that arrived early."""

    def __init__(self) -> None:
        self.next = 0
        self.early: dict[int, pa.Table] = {}

    def push(self, table: pa.Table) -> list[pa.Table]:
        import numpy as np
        import pyarrow.compute as pc

        table = table.take(pc.sort_indices(table.column(ROW)))
        rows = np.asarray(table.column(ROW))
        starts = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]
        for a, b in itertools.pairwise(starts):
            if b > a:
                self.early[int(rows[a])] = table.slice(a, b - a)
        ready = []
        while self.next in self.early:
            run = self.early.pop(self.next)
            self.next += run.num_rows
            ready.append(run.drop_columns([ROW]))
        return ready


def _runtime_env() -> dict[str, Any]:
    """Ship this onnxstitch to the workers (they need only onnxruntime, numpy and pyarrow)."""
    package = Path(__file__).resolve().parents[2]
    return {"py_modules": [str(package)], "excludes": ["__pycache__", "*.pyc"]}


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While a local Ray starts: keep ``127.0.0.1`` as the node's address, so that its processes
    listen on the loopback interface only.

    Ray 2.60's ``ray.init`` turns ``_node_ip_address="127.0.0.1"`` into the machine's own address
    (``ray/_private/worker.py``: ``services.resolve_ip_for_localhost``), because
    ``services.get_node_ip_address`` returns the loopback address only where
    ``ray_constants.ENABLE_RAY_CLUSTER`` is false (Ray's setting on macOS and Windows); its servers
    (GCS, raylet, workers, agents) listen on all interfaces unless the node address is exactly
    ``127.0.0.1``. So ``ENABLE_RAY_CLUSTER`` is false in this process for the duration of
    ``ray.init`` and restored afterwards: a side effect a concurrent thread calling
    ``ray.util.get_node_ip_address()`` in that window sees (it then gets ``127.0.0.1``, which is
    also what it gets once this Ray is up). Ray's own processes inherit nothing from it.
    """
    from ray._private import ray_constants

    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if before is None:  # another Ray: it binds as it does (see docs/scale.md, Binding)
        logger.warning("this Ray has no ENABLE_RAY_CLUSTER: its local processes may listen on all interfaces")
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _start(address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray unless this process already has; ``True`` when we must shut it down.

    A local Ray (no ``address``) listens on ``127.0.0.1`` only (see :func:`_loopback_node`).
    """
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        # a fresh local Ray for this call, reachable from this machine only
        with _loopback_node():
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                runtime_env=_runtime_env(),
                log_to_driver=False,
            )
    else:
        ray.init(address=address, runtime_env=_runtime_env(), log_to_driver=False)
    return True


def _model_for_actors(model: onnx.ModelProto | str | os.PathLike[str], local: bool) -> list[Any] | str:
    """The model as the actors get it: a path on a local Ray, else bytes in the object store."""
    import onnx
    import ray

    if not isinstance(model, onnx.ModelProto):
        if local:
            return str(Path(model).resolve())
        from onnxstitch.files import as_model

        model = as_model(Path(model))
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        raise DatasetError(
            "the model is past 2 GB: it cannot travel through Ray's object store",
            hint="put the model where every node reads it and pass that path with a local Ray, or shrink it",
        )
    return [ray.put(model.SerializeToString())]


def _actor_cpus(actors: int) -> float:
    """CPUs each actor reserves: one, or less where the actors would leave no CPU for Ray Data's
    own read and write tasks (which would then wait forever)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
    return max(min(1.0, (total - 1.0) / actors), 0.01) if total > 1 else 0.01


def _cause(exc: BaseException) -> StitchError | None:
    """Our error inside Ray's wrappers (RayTaskError, UserCodeException), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StitchError):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


def _row_groups(source: Source) -> pa.Table:
    """One row per row group of the source, in order: file, row group, index of its first row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, groups, firsts = [], [], []
    first = 0
    for file in source.files:
        meta = pq.ParquetFile(file).metadata
        for group in range(meta.num_row_groups):
            files.append(str(file))
            groups.append(group)
            firsts.append(first)
            first += meta.row_group(group).num_rows
    return pa.table({"file": files, "group": groups, "first": firsts})


def _execute(
    source: Source,
    plan: Plan,
    model_arg: list[Any] | str,
    tmp: Path,
    empty: pa.Table,
    *,
    batch_size: int,
    device: str,
    threads: int | None,
    actors: int,
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    ds: Any = ray.data.from_arrow(_row_groups(source))
    ds.context.execution_options.preserve_order = True  # blocks mostly in the source's order
    ds.context.raise_original_map_exception = True  # the actors' own errors, not Ray's wrapper
    # one read task per row group, each row tagged with its index in the source
    ds = ds.map_batches(
        read_row_groups, batch_size=1, batch_format="pyarrow", fn_kwargs={"columns": plan.columns}
    )
    ds = ds.map_batches(
        ScoreActor,
        fn_constructor_kwargs={
            "model": model_arg,
            "plan": plan,
            "source": str(source.path),
            "device": device,
            "threads": threads or 1,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=_actor_cpus(actors),
    )
    writer = None
    rows = 0
    try:
        # back to the driver, put in the source's order, written to one file as they come
        order = _InOrder()
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            assert isinstance(batch, pa.Table)
            for table in order.push(batch):
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += table.num_rows
        if order.early or rows != source.num_rows:
            raise StitchError(f"Ray returned {rows} of {source.num_rows} rows in order (a bug in onnxstitch)")
        if writer is None:
            writer = pq.ParquetWriter(tmp, empty.schema)
    except Exception as exc:  # Ray wraps what the actors raised
        cause = _cause(exc)
        if cause is None:
            raise
        if isinstance(cause, DatasetError):
            raise DatasetError(
                str(cause), file=cause.file, row_group=cause.row_group, column=cause.column, row=cause.row
            ) from exc
        raise StitchError(str(cause)) from exc
    finally:
        if writer is not None:
            writer.close()
    return rows


def run_ray(
    model: onnx.ModelProto | str | os.PathLike[str],
    plan: Plan,
    source: Source,
    output: Path,
    empty: pa.Table,
    *,
    batch_size: int,
    device: str,
    threads: int | None,
    address: str | None,
    actors: int,
    num_cpus: int | None,
) -> tuple[int, float]:
    """Score ``source`` on Ray into the Parquet file ``output``.

    Returns:
        The rows written, and the seconds spent scoring them: from handing the dataset to Ray to
        the last row written (the actors and their sessions start in that time; starting and
        stopping a local Ray do not count).

    Raises:
        DatasetError: the source is not Parquet, or a row fails in an actor (named by its id).
    """
    import ray

    if source.kind != "parquet":
        raise DatasetError(
            f"engine='ray' reads Parquet; {source.path} is a folder of .{source.kind} files",
            file=str(source.path),
            hint="score it with engine='local', or write it as Parquet first",
        )
    environ = dict(os.environ)
    started_here = _start(address, num_cpus)
    # ray.init sets RAY_AUTH_MODE, RAY_USAGE_STATS_ENABLED and PYTHONBREAKPOINT (Ray 2.60) in this
    # process and leaves them after ray.shutdown: put back what it changed once it is shut down
    set_by_ray = {k: environ.get(k) for k in {*environ, *os.environ} if os.environ.get(k) != environ.get(k)}
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        model_arg = _model_for_actors(model, local=started_here and address is None)
        started = time.perf_counter()
        rows = _execute(
            source,
            plan,
            model_arg,
            tmp,
            empty,
            batch_size=batch_size,
            device=device,
            threads=threads,
            actors=actors,
        )
        seconds = time.perf_counter() - started
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
            _restore_environ(set_by_ray)
    return rows, seconds


def _restore_environ(values: dict[str, str | None]) -> None:
    """Put environment variables back to ``values`` (``None``: unset)."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
