"""Sources of rows to score: Parquet files or folders, and folders of ``.npy`` / ``.npz`` files.

Every source is read in batches, never whole: Parquet row group by row group
(``ParquetFile.iter_batches``), ``.npy`` files memory-mapped, ``.npz`` files one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxstitch.errors import DatasetError
from onnxstitch.runtime.scoring._arrow import Where, _column

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["Source", "open_source"]

_PARQUET_MAGIC = b"PAR1"
_NUMPY_SUFFIXES = (".npy", ".npz")


@dataclass
class Source:
    """A source opened and checked: its kind, its files (in reading order), schema and row count."""

    path: Path
    kind: str  # "parquet" | "npy" | "npz"
    files: list[Path]
    schema: pa.Schema
    num_rows: int
    _npy: dict[str, Any] = field(default_factory=dict, repr=False)

    def batches(self, columns: list[str], batch_size: int) -> Iterator[tuple[pa.Table, Where]]:
        """The rows, ``batch_size`` at a time (fewer at the end of a row group or file)."""
        if self.kind == "parquet":
            yield from self._parquet_batches(columns, batch_size)
        elif self.kind == "npy":
            yield from _array_batches(self._npy, columns, batch_size, str(self.path))
        else:
            for file in self.files:
                with _load_npz(file) as arrays:
                    loaded = _check_arrays({k: arrays[k] for k in arrays.files}, file)
                    _check_schema(self.schema, _schema_of(loaded), file)
                    yield from _array_batches(loaded, columns, batch_size, str(file))

    def _parquet_batches(self, columns: list[str], batch_size: int) -> Iterator[tuple[pa.Table, Where]]:
        import pyarrow as pa

        for file in self.files:
            pf = _parquet_file(file)
            offset = 0
            for group in range(pf.metadata.num_row_groups):
                for batch in pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns):
                    yield pa.Table.from_batches([batch]), Where(str(file), group, offset)
                    offset += batch.num_rows

    def first_batch(self, columns: list[str], batch_size: int) -> tuple[pa.Table, Where]:
        """The first batch (read again later: checking it writes nothing); an empty one if none."""
        for table, where in self.batches(columns, batch_size):
            return table, where
        return self.schema.empty_table().select(columns), Where(str(self.path))


def _looks_like(head: bytes) -> str:
    from onnxstitch.files.sniff import looks_like_text

    if not head:
        return "it is empty"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive"
    return (
        "it looks like text (CSV? convert it to Parquet)"
        if looks_like_text(head)
        else "its bytes are not Parquet's"
    )


def _parquet_file(file: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(file, "rb") as fh:
        head = fh.read(4096)
        fh.seek(max(file.stat().st_size - 4, 0))
        tail = fh.read(4)
    if not (head.startswith(_PARQUET_MAGIC) and tail == _PARQUET_MAGIC):
        why = "it is truncated" if head.startswith(_PARQUET_MAGIC) else _looks_like(head)
        raise DatasetError(
            f"{file} is not a Parquet file ({why})",
            file=str(file),
            hint="give a Parquet file or folder, or a folder of .npy/.npz files",
        )
    try:
        return pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{file} is not a readable Parquet file: {exc}", file=str(file)) from exc


def _check_schema(first: pa.Schema, schema: pa.Schema, file: Path) -> None:
    if not schema.remove_metadata().equals(first.remove_metadata()):
        raise DatasetError(
            f"{file} has other columns than the source's first file:\n"
            f"  first: {first.to_string(show_schema_metadata=False)}\n"
            f"  here:  {schema.to_string(show_schema_metadata=False)}",
            file=str(file),
            hint="every file of a source folder needs the same columns and types",
        )


def _files_of(folder: Path) -> list[Path]:
    # like pyarrow's dataset discovery: hidden and "_"-prefixed entries (_SUCCESS, .crc) are skipped
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    ]
    return sorted(found)


def open_source(source: str | os.PathLike[str]) -> Source:
    """Open ``source`` and read what it holds without reading its rows (only footers and headers).

    Raises:
        DatasetError: it does not exist, is empty, mixes kinds, or a file is not Parquet / NumPy.
    """
    path = Path(source)
    if not path.exists():
        raise DatasetError(f"source {str(path)!r} does not exist", file=str(path))
    files = _files_of(path) if path.is_dir() else [path]
    if not files:
        raise DatasetError(f"source folder {str(path)!r} holds no files", file=str(path))
    numpy_files = [f for f in files if f.suffix in _NUMPY_SUFFIXES]
    if numpy_files:
        if len(numpy_files) != len(files):
            other = next(f for f in files if f.suffix not in _NUMPY_SUFFIXES)
            raise DatasetError(
                f"{path} mixes NumPy files with {other.name}",
                file=str(other),
                hint="one kind of file per source",
            )
        return _numpy_source(path, files)
    first_schema = None
    rows = 0
    for file in files:
        pf = _parquet_file(file)
        schema = pf.schema_arrow
        if first_schema is None:
            first_schema = schema
        else:
            _check_schema(first_schema, schema, file)
        rows += pf.metadata.num_rows
    assert first_schema is not None
    return Source(path, "parquet", files, first_schema, rows)


# ----------------------------------------------------------------------------------------- numpy
def _load_npz(file: Path) -> Any:
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{file} is not a readable .npz file: {exc}", file=str(file)) from exc


def _check_arrays(arrays: dict[str, Any], file: Path) -> dict[str, Any]:
    sizes = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
    if not arrays or None in sizes.values() or len(set(sizes.values())) > 1:
        raise DatasetError(
            f"{file}: every array must have one row per sample along dim 0, got dim 0 sizes {sizes}",
            file=str(file),
        )
    return arrays


def _schema_of(arrays: dict[str, Any]) -> pa.Schema:
    import pyarrow as pa

    return pa.table({k: _column(np.asarray(a[:0])) for k, a in arrays.items()}).schema


def _numpy_source(path: Path, files: list[Path]) -> Source:
    if all(f.suffix == ".npy" for f in files):
        arrays: dict[str, Any] = {}
        for f in files:
            try:
                arrays[f.stem] = np.load(f, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{f} is not a readable .npy file: {exc}", file=str(f)) from exc
        arrays = _check_arrays(arrays, path)
        rows = next(iter(arrays.values())).shape[0]
        return Source(path, "npy", files, _schema_of(arrays), rows, _npy=arrays)
    if not all(f.suffix == ".npz" for f in files):
        raise DatasetError(
            f"{path} mixes .npy and .npz files", file=str(path), hint="one kind of file per source"
        )
    rows = 0
    schema = None
    for f in files:
        with _load_npz(f) as npz:
            # headers only: each array's shape comes from its .npy header inside the zip
            shapes = {k: _npz_shape(npz, k) for k in npz.files}
        if len({s[0] for s in shapes.values()}) != 1:
            raise DatasetError(f"{f}: arrays differ in dim 0: {shapes}", file=str(f))
        rows += next(iter(shapes.values()))[0]
        if schema is None:
            with _load_npz(f) as npz:
                schema = _schema_of(_check_arrays({k: npz[k] for k in npz.files}, f))
    assert schema is not None
    return Source(path, "npz", files, schema, rows)


def _npz_shape(npz: Any, key: str) -> tuple[int, ...]:
    from numpy.lib import format as npformat

    with npz.zip.open(f"{key}.npy") as fh:
        version = npformat.read_magic(fh)
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _, _ = read(fh)
    return tuple(int(d) for d in shape) or (0,)


def _array_batches(
    arrays: dict[str, Any], columns: list[str], batch_size: int, file: str
) -> Iterator[tuple[pa.Table, Where]]:
    import pyarrow as pa

    rows = next(iter(arrays.values())).shape[0]
    for start in range(0, rows, batch_size):
        table = pa.table({c: _column(np.asarray(arrays[c][start : start + batch_size])) for c in columns})
        yield table, Where(file, None, start)
