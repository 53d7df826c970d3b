"""Arrow columns <-> model tensors: which column feeds which input, with what shape, and back.

A tensor input of shape ``[batch, d1, ..., dk]`` is read from a column of one of these types:
a fixed-size list (flat, ``d1 * ... * dk`` values per row, or nested, one level per dim), a
variable-size list whose rows all hold the same number of values, or Arrow's canonical
``fixed_shape_tensor`` extension type. A scalar input (``[batch]``) is read from a plain column.
Outputs are written back as plain columns (``[batch]``), fixed-size lists (``[batch, d]``) or
``fixed_shape_tensor`` columns (rank 3 and more).

Everything here is picklable: a :class:`Plan` travels to Ray actors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxstitch.errors import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from onnxstitch.runtime._feeds import TensorInfo

__all__ = ["Feed", "Plan", "Where", "make_plan", "outputs_table"]


@dataclass(frozen=True)
class Where:
    """Where a batch comes from, for error messages: a file, its row group, its first row."""

    file: str
    row_group: int | None = None
    first_row: int | None = 0  # None: the batch's place in its file is not known (Ray)

    def __str__(self) -> str:
        group = "" if self.row_group is None else f", row group {self.row_group}"
        return f"{self.file}{group}"


@dataclass(frozen=True)
class Feed:
    """One model input read from one column.

    Attributes:
        input: the model input's name.
        column: the source column.
        dtype: the model input's numpy dtype (the column's values are cast to it, safely).
        dims: the input's dims after the batch: an int where known, ``None`` where the data says.
        levels: how many list levels the column has (0: scalar; an extension tensor counts 1).
        tensor_ext: the column is a ``fixed_shape_tensor`` extension column.
    """

    input: str
    column: str
    dtype: str
    dims: tuple[int | None, ...]
    levels: int
    tensor_ext: bool


@dataclass(frozen=True)
class Plan:
    """What to read and how: the feeds, the columns carried through, the model's outputs."""

    feeds: tuple[Feed, ...]
    keep: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        """The source columns to read (feeds and kept columns, each once)."""
        return list(dict.fromkeys([*(f.column for f in self.feeds), *self.keep]))

    def row_id(self, table: pa.Table, index: int, where: Where) -> str:
        """A row's id for a message: its kept columns' values and its row number in the file."""
        ids = ", ".join(
            f"{c}={table.column(c)[index].as_py()!r}" for c in self.keep if _is_scalar_type(table, c)
        )
        number = (
            f"a row of {where}" if where.first_row is None else f"row {where.first_row + index} of {where}"
        )
        return f"{ids} ({number})" if ids else number

    def feeds_of(self, table: pa.Table, where: Where) -> dict[str, np.ndarray[Any, Any]]:
        """The model's feeds from one batch of the source.

        Raises:
            DatasetError: a null, or a row whose list holds the wrong number of values (named by its id).
        """
        return {
            f.input: _to_numpy(f, table.column(f.column), lambda i: self.row_id(table, i, where), where)
            for f in self.feeds
        }


def _is_scalar_type(table: pa.Table, column: str) -> bool:
    import pyarrow as pa

    t = table.schema.field(column).type
    return bool(pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t))


# ------------------------------------------------------------------------------------- planning
def _layout(arrow_type: pa.DataType) -> tuple[pa.DataType, tuple[int | None, ...], bool] | None:
    """``(leaf type, dims per list level, is tensor extension)``; ``None`` for an unusable type."""
    import pyarrow as pa

    if isinstance(arrow_type, pa.FixedShapeTensorType):
        perm = arrow_type.permutation
        if perm is not None and list(perm) != sorted(perm):
            return None
        return arrow_type.value_type, tuple(int(d) for d in arrow_type.shape), True
    dims: list[int | None] = []
    t = arrow_type
    while True:
        if pa.types.is_fixed_size_list(t):
            dims.append(int(t.list_size))
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            dims.append(None)
        else:
            break
        t = t.value_type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        return None
    return t, tuple(dims), False


def _fit_dims(
    model: tuple[int | str | None, ...], column: tuple[int | None, ...], ext: bool
) -> tuple[int | None, ...] | str:
    """The dims to reshape to, or a message saying why the column's shape cannot fit the model's."""
    known = [d if isinstance(d, int) else None for d in model]
    if len(column) == len(model):  # one level per dim (nested lists, or a tensor of that rank)
        for i, (m, c) in enumerate(zip(known, column, strict=True)):
            if m is not None and c is not None and m != c:
                return f"dim {i + 1} is {c}, the model wants {m}"
        return tuple(m if m is not None else c for m, c in zip(known, column, strict=True))
    if len(column) == 1 and not ext and len(model) > 1:  # one flat list per row
        unknown = known.count(None)
        static = int(np.prod([d for d in known if d is not None]))
        flat = column[0]
        if unknown > 1:
            return f"a flat list cannot be reshaped to {len(model)} dims with {unknown} unknown"
        if flat is not None and (flat % static if unknown else flat != static):
            return f"{flat} values per row cannot be reshaped to {list(model)}"
        return tuple(known)
    return f"{len(column)} level(s) per row, the model wants {len(model)} dim(s) after the batch"


def _dtype_ok(leaf: pa.DataType, want: np.dtype[Any]) -> bool:
    try:
        have = np.dtype(leaf.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        return False
    return bool(np.can_cast(have, want, casting="safe"))


def make_plan(
    inputs: Sequence[TensorInfo],
    outputs: Sequence[str],
    schema: pa.Schema,
    *,
    file: str,
    columns: Mapping[str, str] | None = None,
    keep: Sequence[str] | None = None,
) -> Plan:
    """Match the model's inputs with ``schema``'s columns; collect every problem and raise once.

    Args:
        columns: source column -> model input, for columns not named after their input.
        keep: columns to carry to the output (default: every column that feeds no input).

    Raises:
        DatasetError: a missing or mistyped column, a shape that cannot fit, a name clash.
    """
    mapping = dict(columns or {})
    names = list(schema.names)
    input_names = [i.name for i in inputs]
    problems: list[str] = []
    for col, inp in mapping.items():
        if inp not in input_names:
            problems.append(
                f"--map {col}={inp}: the model has no input {inp!r} (inputs: {', '.join(input_names)})"
            )
        if col not in names:
            problems.append(f"--map {col}={inp}: no column {col!r} in {file}")
    by_input = {inp: col for col, inp in mapping.items()}
    feeds: list[Feed] = []
    first_bad: str | None = None
    for info in inputs:
        col = by_input.get(info.name, info.name)
        if col not in names:
            if info.name not in by_input:
                problems.append(f"input {info.name!r}: no column {col!r} (columns: {', '.join(names)})")
                first_bad = first_bad or col
            continue
        feed = _feed(info, col, schema.field(col).type, problems)
        if feed is None:
            first_bad = first_bad or col
        else:
            feeds.append(feed)
    fed = {f.column for f in feeds} | set(by_input.values())
    kept = [n for n in names if n not in fed] if keep is None else list(keep)
    for name in kept:
        if name not in names:
            problems.append(f"--keep {name}: no column {name!r} (columns: {', '.join(names)})")
        if name in outputs:
            problems.append(f"column {name!r} is kept and is also a model output; drop it from --keep")
    if problems:
        raise DatasetError(
            f"{file} cannot feed the model:\n" + "\n".join(f"  - {p}" for p in problems),
            file=file,
            column=first_bad,
            hint="name each column after its input, or map it (--map col=input / columns={col: input})",
        )
    return Plan(tuple(feeds), tuple(kept), tuple(outputs))


def _feed(info: TensorInfo, col: str, arrow_type: pa.DataType, problems: list[str]) -> Feed | None:
    layout = _layout(arrow_type)
    where = f"column {col!r} (input {info.name!r}, {info})"
    if layout is None:
        problems.append(f"{where}: type {arrow_type} holds no numbers (want {info.dtype} values)")
        return None
    leaf, col_dims, ext = layout
    if not _dtype_ok(leaf, info.dtype):
        problems.append(
            f"{where}: values are {leaf}, which do not cast safely to {info.dtype}; cast the column"
        )
        return None
    if len(info.shape) == 0:
        problems.append(f"{where}: the input has no batch dim, score feeds rows along dim 0")
        return None
    if isinstance(info.shape[0], int) and info.shape[0] != 1:
        problems.append(f"{where}: dim 0 is fixed at {info.shape[0]}; export the model with a dynamic batch")
        return None
    fitted = _fit_dims(info.shape[1:], col_dims, ext)
    if isinstance(fitted, str):
        problems.append(f"{where}: wrong inner shape: {fitted} (column type {arrow_type})")
        return None
    return Feed(info.name, col, str(info.dtype), fitted, 1 if ext else len(col_dims), ext)


# ----------------------------------------------------------------------------------- conversion
def _to_numpy(feed: Feed, column: Any, row_id: Any, where: Where) -> np.ndarray[Any, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)

    def fail(message: str, index: int) -> DatasetError:
        return DatasetError(
            f"{where}, column {feed.column!r}: {message} at {row_id(index)}",
            file=where.file,
            row_group=where.row_group,
            column=feed.column,
            row=row_id(index),
            hint="fix or drop that row",
        )

    if arr.null_count:
        raise fail("a null value", int(np.flatnonzero(~np.asarray(arr.is_valid()))[0]))
    if feed.tensor_ext:
        values = arr.to_numpy_ndarray()
        dims = list(values.shape[1:])
    else:
        level, per_row, actual = arr, 1, []
        for _ in range(feed.levels):
            if pa.types.is_fixed_size_list(level.type):
                actual.append(int(level.type.list_size))
            else:
                lengths = np.asarray(pc.list_value_length(level))
                odd = np.flatnonzero(lengths != lengths[0]) if len(lengths) else lengths
                if len(odd):
                    raise fail(
                        f"{lengths[odd[0]]} values in a list instead of {lengths[0]}", int(odd[0]) // per_row
                    )
                actual.append(int(lengths[0]) if len(lengths) else 0)
            per_row *= actual[-1] or 1
            level = level.flatten()
            if level.null_count:
                raise fail(
                    "a null inside a list", int(np.flatnonzero(~np.asarray(level.is_valid()))[0]) // per_row
                )
        values = level.to_numpy(zero_copy_only=False)
        dims = actual if feed.levels == len(feed.dims) else [-1 if d is None else d for d in feed.dims]
    try:
        shaped = values.reshape(n, *dims) if n else values.reshape(0, *[max(d, 0) for d in dims])
    except ValueError:
        raise fail(
            f"{values.size // max(n, 1)} values per row do not fit dims {list(feed.dims)}", 0
        ) from None
    for axis, (want, got) in enumerate(zip(feed.dims, shaped.shape[1:], strict=True)):
        if want is not None and want != got:
            raise fail(f"dim {axis + 1} is {got}, the model wants {want}", 0)
    result: np.ndarray[Any, Any] = shaped.astype(feed.dtype, copy=False)
    return result


def _column(array: np.ndarray[Any, Any]) -> Any:
    import pyarrow as pa

    if array.ndim == 1:
        return pa.array(array)
    if array.ndim == 2:
        flat = pa.array(np.ascontiguousarray(array).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, array.shape[1])
    flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    storage = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(array.shape[1:])))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(flat.type, list(array.shape[1:])), storage)


def outputs_table(plan: Plan, source: pa.Table, outputs: Mapping[str, np.ndarray[Any, Any]]) -> pa.Table:
    """The output batch: the kept columns of ``source``, then one column per model output."""
    import pyarrow as pa

    arrays = [source.column(c) for c in plan.keep]
    names = list(plan.keep)
    for name in plan.outputs:
        value = outputs[name]
        if value.ndim == 0 or value.shape[0] != source.num_rows:
            raise DatasetError(
                f"output {name!r} has shape {list(value.shape)}, not one row per input row "
                f"({source.num_rows})",
                column=name,
                hint="score needs a model whose outputs keep the batch in dim 0",
            )
        arrays.append(_column(value))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)
