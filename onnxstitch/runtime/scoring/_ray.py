"""The Ray engine of ``ox.score``: Ray Data ``read_parquet`` -> ``map_batches`` over actors that each
hold one session -> ``write_parquet``. Imported only for ``engine="ray"`` (ray is the ``ray`` extra).

Order: the dataset runs with ``preserve_order`` (set on this dataset's own ``DataContext`` copy, not
the process's), so write task *i* holds the *i*-th blocks of the source, and the files are named
``part-<task index>-<write uuid>.parquet``: read back sorted by name (pyarrow and Ray Data both do),
the rows are
in the source's order.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
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
_BATCHES_PER_BLOCK = 8  # rows per Ray block (and per output file) = batch_size * this


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

        return score_batch(self.session, self.plan, table, Where(self.source, None, None))


def _ordered_filenames() -> Any:
    from ray.data.datasource import FilenameProvider

    class _Ordered(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:06d}-{write_uuid}.parquet"

    return _Ordered(file_format="parquet")


def _runtime_env() -> dict[str, Any]:
    """Ship this onnxstitch to the workers (they need only onnxruntime, numpy and pyarrow)."""
    package = Path(__file__).resolve().parents[2]
    return {"py_modules": [str(package)], "excludes": ["__pycache__", "*.pyc"]}


def _start(address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray unless this process already has; ``True`` when we must shut it down."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        # a fresh local Ray for this call; Ray resolves the node address itself (see docs/scale.md)
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


def _swap_into_place(tmp: Path, output: Path) -> None:
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.old")
        output.replace(old)
    tmp.replace(output)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def run_ray(
    model: onnx.ModelProto | str | os.PathLike[str],
    plan: Plan,
    source: Source,
    output: Path,
    *,
    batch_size: int,
    device: str,
    threads: int | None,
    address: str | None,
    actors: int,
    num_cpus: int | None,
) -> int:
    """Score ``source`` on Ray into the folder ``output``; returns the rows written.

    Raises:
        DatasetError: the source is not Parquet, or a row fails in an actor (named by its id).
    """
    import pyarrow.parquet as pq
    import ray

    if source.kind != "parquet":
        raise DatasetError(
            f"engine='ray' reads Parquet; {source.path} is a folder of .{source.kind} files",
            file=str(source.path),
            hint="score it with engine='local', or write it as Parquet first",
        )
    started_here = _start(address, num_cpus)
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        model_arg = _model_for_actors(model, local=started_here and address is None)
        ds = ray.data.read_parquet([str(f) for f in source.files]).select_columns(plan.columns)
        ds.context.execution_options.preserve_order = True
        ds.context.raise_original_map_exception = True  # our DatasetError, not Ray's wrapper
        # blocks of a bounded number of rows (streamed, order kept): work for every actor
        ds = ds.repartition(target_num_rows_per_block=batch_size * _BATCHES_PER_BLOCK)
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
        try:
            ds.write_parquet(str(tmp), filename_provider=_ordered_filenames())
        except Exception as exc:  # Ray wraps what the actors raised
            cause = _cause(exc)
            if cause is None:
                raise
            if isinstance(cause, DatasetError):
                raise DatasetError(
                    str(cause), file=cause.file, row_group=cause.row_group, column=cause.column, row=cause.row
                ) from exc
            raise StitchError(str(cause)) from exc
        if not tmp.is_dir():  # no rows: Ray writes nothing
            tmp.mkdir()
        rows = int(sum(pq.ParquetFile(f).metadata.num_rows for f in tmp.glob("*.parquet")))
        _swap_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
    return rows
